"""Base classes shared by every hyperparameter kind.

A :class:`Hyperparameter` is a scikit-learn style specification (``__init__`` only stores
its arguments, so ``clone`` and ``get_params`` work). :meth:`Hyperparameter.bind` turns it
into a :class:`BoundHyperparameter` for one concrete ``torch.nn.Module``: the glob in
``params`` is resolved to parameter names and all shapes are fixed.

A bound hyperparameter is stateless with respect to its value: the value lives in an
unconstrained *raw* tensor (or dict of tensors) that the bilevel solver differentiates and
updates; every hook receives that raw value explicitly. This keeps the hyperparameter
usable inside ``torch.func`` style functional code and lets several cv folds share one kind.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Iterable

import numpy as np
import torch
from sklearn.base import BaseEstimator

__all__ = ["Hyperparameter", "BoundHyperparameter", "resolve_params"]


def resolve_params(module: torch.nn.Module, patterns: str | Iterable[str] | None,
                   kind: str) -> list[str]:
    """Names of ``module``'s parameters matched by glob ``patterns`` (in module order).

    A pattern starting with ``"*."`` also matches top-level names (``"*.weight"`` matches
    ``"weight"`` of a bare ``nn.Linear``), since a module used directly has no prefix.

    Raises
    ------
    ValueError
        If the patterns match no parameter; the message lists the available names.
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    names = [n for n, _ in module.named_parameters()]
    matched = [n for n in names
               if any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase("." + n, p)
                      for p in patterns)]
    if not matched:
        raise ValueError(
            f"{kind}: params={patterns!r} matches no parameter of the module; "
            f"available names: {names}"
        )
    return matched


def inv_softplus(value: torch.Tensor) -> torch.Tensor:
    """Inverse of ``softplus``, stable for tiny and large values.

    ``log(exp(v) - 1) = v + log(1 - exp(-v))``; values are clamped to ``>= 1e-30`` so a
    strength of exactly zero maps to a finite raw value whose softplus is ~1e-30.
    """
    value = value.clamp_min(1e-30)
    return value + torch.log(-torch.expm1(-value))


def as_tensor(value: Any, device, dtype) -> torch.Tensor:
    """``value`` (float, list, ndarray or tensor) as a tensor on ``device`` / ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


class Hyperparameter(BaseEstimator):
    """A kind of hyperparameter to learn by hypergradient descent.

    Subclasses store their constructor arguments unchanged (scikit-learn convention) and
    implement :meth:`_make_bound`. Validation happens in :meth:`bind`, never in
    ``__init__``.
    """

    #: kinds whose ``params`` glob selects module parameters
    _uses_params = False

    def bind(self, module: torch.nn.Module, *, n_train: int, n_classes: int | None,
             input_shape: tuple) -> "BoundHyperparameter":
        """Resolve this specification against ``module`` and the data's dimensions.

        Parameters
        ----------
        module : torch.nn.Module
            The (initialized) network whose parameters the hyperparameter acts on.
        n_train : int
            Number of training rows (one weight per row for :class:`SampleWeights`).
        n_classes : int or None
            Number of classes for classifiers, ``None`` for regressors.
        input_shape : tuple
            Shape of one input row (without the batch dimension).

        Returns
        -------
        BoundHyperparameter

        Raises
        ------
        ValueError
            If ``params`` matches no parameter (the message lists the names), or the
            kind does not fit the task (e.g. class weights on a regressor).
        """
        names = resolve_params(module, getattr(self, "params", None),
                               type(self).__name__) if self._uses_params else []
        return self._make_bound(module, names, n_train=int(n_train), n_classes=n_classes,
                                input_shape=tuple(input_shape))

    def _make_bound(self, module, names, *, n_train, n_classes, input_shape):
        raise NotImplementedError


class BoundHyperparameter:
    """A hyperparameter attached to one module and data shape.

    Hooks not relevant to a kind keep the neutral defaults below (``None`` / identity /
    ``NotImplemented``), so the adapter can simply ask every bound hyperparameter.

    Attributes
    ----------
    spec : Hyperparameter
        The specification it was made from.
    name_targets : list of str
        Matched parameter names (empty for loss, augmentation and weight kinds).
    """

    #: True when the hyperparameter enters the inner loss only through a separable
    #: penalty whose mixed derivative :meth:`mixed_vjp` gives in closed form.
    closed_form_mixed = False

    def __init__(self, spec: Hyperparameter, name_targets: list[str]):
        self.spec = spec
        self.name_targets = list(name_targets)

    # -- representation -------------------------------------------------------------
    def init_raw(self, device, dtype):
        """Unconstrained initial value (tensor or dict of tensors)."""
        raise NotImplementedError

    def value(self, raw):
        """Constrained value from the raw representation."""
        raise NotImplementedError

    def to_public(self, raw):
        """Value on the constrained scale as python float / ndarray / dict."""
        raise NotImplementedError

    def from_public(self, value, device, dtype):
        """Inverse of :meth:`to_public`: a public value back to a raw tensor structure."""
        raise NotImplementedError

    def summary(self, raw) -> float:
        """One scalar for ``cv_results_['param_<name>']``."""
        raise NotImplementedError

    # -- hooks used by the adapter ------------------------------------------------------
    def inner_penalty(self, raw, theta: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def outer_penalty(self, raw) -> torch.Tensor | None:
        return None

    def transform_inputs(self, raw, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Identity by default. A kind may return ``k * len(X)`` rows (``k`` replicas,
        replica-major); the adapter then averages the module outputs over replicas."""
        return X

    def per_sample_loss(self, raw, y_pred, y_true, default_loss) -> torch.Tensor | None:
        return None

    def class_weights(self, raw) -> torch.Tensor | None:
        return None

    def sample_weights(self, raw, rows: torch.Tensor) -> torch.Tensor | None:
        return None

    def mixed_vjp(self, raw, theta, v):
        """``v^T d2 P / (d theta d raw)`` in closed form, or ``NotImplemented``."""
        return NotImplemented

    #: True when the start value is derived from the data (``init="auto"``): the adapter
    #: then calls :meth:`calibrate` once, before :meth:`init_raw`.
    needs_calibration = False

    def calibrate(self, data_grads: dict[str, torch.Tensor],
                  theta: dict[str, torch.Tensor]) -> None:
        """Set a data-derived start from the gradient of the unpenalised training loss.

        Parameters
        ----------
        data_grads : dict of str -> Tensor
            ``d L_data / d theta`` at the initial weights, keyed by parameter name.
        theta : dict of str -> Tensor
            The initial weights.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, targets={len(self.name_targets)})"


# -- helpers shared by the kinds --------------------------------------------------------

def per_name_values(init, names: list[str], kind: str) -> dict[str, Any]:
    """Broadcast ``init`` (scalar, or dict name -> scalar/array) to every name."""
    if isinstance(init, dict):
        missing = [n for n in names if n not in init]
        if missing:
            raise ValueError(f"{kind}: init dict lacks values for {missing}")
        return {n: init[n] for n in names}
    return {n: init for n in names}


def check_finite_nonneg(value, kind: str, what: str = "init") -> None:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{kind}: {what} must be finite and >= 0, got {value!r}")


def mean_of(tensors: Iterable[torch.Tensor]) -> float:
    tensors = [t.detach().reshape(-1) for t in tensors]
    if not tensors:
        return math.nan
    return float(torch.cat(tensors).double().mean())
