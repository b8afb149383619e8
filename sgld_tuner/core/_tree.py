"""Flatten tensors, tuples/lists and dicts of tensors to a list of leaves and back.

The solvers work on flat lists of tensors; users pass whatever structure suits their
problem. A tiny recursive spec keeps the two in step without private torch APIs.
"""
from __future__ import annotations

from typing import Any

import torch

Spec = Any  # None for a tensor leaf, ("seq", type, [specs]) or ("dict", keys, [specs])


def flatten(obj: Any) -> tuple[list[torch.Tensor], Spec]:
    """Return the tensor leaves of ``obj`` (depth first) and a spec to rebuild it."""
    if isinstance(obj, torch.Tensor):
        return [obj], None
    if isinstance(obj, (tuple, list)):
        leaves, specs = [], []
        for item in obj:
            sub, spec = flatten(item)
            leaves.extend(sub)
            specs.append(spec)
        return leaves, ("seq", type(obj), specs)
    if isinstance(obj, dict):
        leaves, specs = [], []
        keys = list(obj.keys())
        for key in keys:
            sub, spec = flatten(obj[key])
            leaves.extend(sub)
            specs.append(spec)
        return leaves, ("dict", keys, specs)
    raise TypeError(
        f"expected a tensor or a tuple/list/dict of tensors, got {type(obj).__name__}"
    )


def unflatten(leaves: list[torch.Tensor], spec: Spec) -> Any:
    """Inverse of :func:`flatten`."""
    obj, rest = _build(list(leaves), spec)
    if rest:
        raise ValueError(f"{len(rest)} leaves left over when rebuilding the structure")
    return obj


def _build(leaves: list[torch.Tensor], spec: Spec):
    if spec is None:
        return leaves[0], leaves[1:]
    kind, meta, specs = spec
    items = []
    for sub in specs:
        item, leaves = _build(leaves, sub)
        items.append(item)
    if kind == "dict":
        return dict(zip(meta, items)), leaves
    return meta(items), leaves


def flatten_partial(obj: Any, spec: Spec) -> list:
    """Leaves of ``obj`` in the order of ``spec``, ``None`` where ``obj`` leaves a part out.

    For derivatives given on part of a structure only (a dict with some of the keys, or
    ``None`` for a whole sub-structure): the missing leaves are zero to the caller.
    """
    if obj is None:
        return [None] * _count(spec)
    if spec is None:  # a leaf: a tensor, or nothing given (None, an empty dict)
        return [obj if isinstance(obj, torch.Tensor) else None]
    kind, meta, specs = spec
    items = [obj.get(key) for key in meta] if kind == "dict" else list(obj)
    out = []
    for item, sub in zip(items, specs):
        out.extend(flatten_partial(item, sub))
    return out


def _count(spec: Spec) -> int:
    return 1 if spec is None else sum(_count(sub) for sub in spec[2])


def numel(leaves: list[torch.Tensor]) -> int:
    return sum(t.numel() for t in leaves)


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Sum of elementwise products over matching leaves."""
    pairs = list(zip(a, b))
    if pairs and all(x.dtype == y.dtype and x.device == y.device and x.shape == y.shape
                     for x, y in pairs):
        # torch.dot reduces in one pass without materialising x * y (a full-size
        # temporary per leaf on million-weight nets); stacking keeps it on the device.
        return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in pairs]).sum()
    return sum((x * y).sum() for x, y in pairs)


def axpy_(ys: list[torch.Tensor], xs: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """``ys + alpha * xs``, in place in ``ys`` where dtypes and shapes allow.

    One fused ``torch._foreach_add_`` pass instead of a temporary per leaf; falls back to
    out-of-place (type-promoting, broadcasting) arithmetic otherwise. Returns the result
    list, which callers must use instead of ``ys``.
    """
    if ys and all(y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
                  for y, x in zip(ys, xs)):
        torch._foreach_add_(ys, xs, alpha=alpha)
        return ys
    return [y + alpha * x for y, x in zip(ys, xs)]


def zeros_like(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) for t in leaves]


def fill_none(grads, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replace the ``None`` that ``autograd.grad(allow_unused=True)`` returns with zeros."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def add_partial(leaves: list[torch.Tensor], extra: list) -> list[torch.Tensor]:
    """``leaves + extra`` leaf by leaf, where a ``None`` in ``extra`` adds nothing."""
    return [t if e is None else t + e for t, e in zip(leaves, extra)]
