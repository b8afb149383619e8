"""Separable weight penalties: per-weight L1 (paper Sec. 4.2) and weight decay.

Both enter the inner loss only through ``sum_j s(r_j) * phi(theta_j)`` with
``s = softplus`` and raw value ``r``, so the mixed derivative
``d2 L_T / (d theta_j d r_j) = sigmoid(r_j) * phi'(theta_j)`` is elementwise and known in
closed form (no double backward needed).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import (BoundHyperparameter, Hyperparameter, as_tensor, check_finite_nonneg,
                   inv_softplus, mean_of, per_name_values, to_numpy)

__all__ = ["PerWeightL1", "WeightDecay"]


def _shaped(value, shape, device, dtype, kind) -> torch.Tensor:
    t = as_tensor(value, device, dtype)
    try:
        return t.expand(shape).clone() if t.dim() <= len(shape) else t.reshape(shape).clone()
    except RuntimeError as exc:
        raise ValueError(f"{kind}: value of shape {tuple(t.shape)} does not fit parameter "
                         f"shape {tuple(shape)}") from exc


class PerWeightL1(Hyperparameter):
    """One L1 strength per weight: ``R(lam, theta) = sum_j lam_j |theta_j|`` (paper Sec. 4.2).

    Parameters
    ----------
    init : float or dict, default=1e-4
        Initial strength, either one float for all weights or a dict mapping parameter
        names to floats/arrays shaped like the parameter. Must be >= 0.
    params : str or list of str, default="*.weight"
        Glob(s) over ``module.named_parameters()`` selecting the penalised tensors
        (``"*.weight"`` also matches a top-level ``"weight"``).

    Notes
    -----
    Transform: ``lam = softplus(raw)`` elementwise, so strengths stay positive while the
    solver moves freely in ``raw``. Note ``d lam / d raw = sigmoid(raw) ~ lam`` for small
    strengths, i.e. the raw scale behaves like a log scale there: outer steps change a
    strength of 1e-4 by a relative, not absolute, amount.
    The penalty is added as-is (not divided by the number of rows) to the mean minibatch
    loss, both during tuning and when the learned net is refit.
    ``to_public`` gives a dict ``name -> ndarray`` shaped like each parameter;
    ``summary`` is the mean strength over all penalised weights.
    """

    _uses_params = True

    def __init__(self, init=1e-4, params="*.weight"):
        self.init = init
        self.params = params

    def _make_bound(self, module, names, *, n_train, n_classes, input_shape):
        shapes = dict(module.named_parameters())
        inits = per_name_values(self.init, names, "PerWeightL1")
        for v in inits.values():
            check_finite_nonneg(v, "PerWeightL1")
        return _BoundPerWeightL1(self, names, {n: tuple(shapes[n].shape) for n in names}, inits)


class _BoundPerWeightL1(BoundHyperparameter):
    closed_form_mixed = True

    def __init__(self, spec, names, shapes, inits):
        super().__init__(spec, names)
        self.shapes = shapes
        self.inits = inits

    def init_raw(self, device, dtype):
        return self.from_public(self.inits, device, dtype)

    def value(self, raw):
        return {n: F.softplus(r) for n, r in raw.items()}

    def inner_penalty(self, raw, theta):
        total = None
        for n, r in raw.items():
            term = (F.softplus(r) * theta[n].abs()).sum()
            total = term if total is None else total + term
        return total

    def mixed_vjp(self, raw, theta, v):
        # d/dtheta_j [s(r_j)|theta_j|] = s(r_j) sign(theta_j); sign(0) = 0 matches
        # autograd's subgradient of abs at 0.
        return {n: v[n] * torch.sign(theta[n]) * torch.sigmoid(r) for n, r in raw.items()}

    def to_public(self, raw):
        return {n: to_numpy(F.softplus(r)) for n, r in raw.items()}

    def from_public(self, value, device, dtype):
        values = per_name_values(value, self.name_targets, "PerWeightL1")
        out = {}
        for n in self.name_targets:
            check_finite_nonneg(values[n], "PerWeightL1", "value")
            out[n] = inv_softplus(_shaped(values[n], self.shapes[n], device, dtype, "PerWeightL1"))
        return out

    def summary(self, raw):
        return mean_of(F.softplus(r) for r in raw.values())


_GRANULARITIES = ("weight", "tensor", "global")


class WeightDecay(Hyperparameter):
    """L2 penalty ``0.5 * lam * theta**2`` with strengths per weight, per tensor or global.

    Parameters
    ----------
    init : float or dict, default=1e-4
        Initial strength (>= 0): one float, or for ``granularity`` ``"weight"``/``"tensor"``
        a dict mapping parameter names to floats (or arrays, per weight).
    params : str or list of str, default="*.weight"
        Glob(s) over ``module.named_parameters()`` selecting the penalised tensors.
    granularity : {"weight", "tensor", "global"}, default="weight"
        One strength per weight, one per matched tensor, or one shared scalar.

    Notes
    -----
    Transform: ``lam = softplus(raw)``. Penalty ``sum 0.5 * lam * theta**2`` added to the
    mean minibatch loss (not divided by the number of rows). ``to_public`` gives a dict
    ``name -> ndarray`` ("weight"), ``name -> float`` ("tensor") or a float ("global");
    ``summary`` is the mean strength (over weights, tensors, or the scalar itself).
    """

    _uses_params = True

    def __init__(self, init=1e-4, params="*.weight", granularity="weight"):
        self.init = init
        self.params = params
        self.granularity = granularity

    def _make_bound(self, module, names, *, n_train, n_classes, input_shape):
        if self.granularity not in _GRANULARITIES:
            raise ValueError(f"WeightDecay: granularity must be one of {_GRANULARITIES}, "
                             f"got {self.granularity!r}")
        shapes = dict(module.named_parameters())
        if self.granularity == "global":
            if isinstance(self.init, dict):
                raise ValueError("WeightDecay: granularity='global' needs a scalar init")
            check_finite_nonneg(self.init, "WeightDecay")
        else:
            for v in per_name_values(self.init, names, "WeightDecay").values():
                check_finite_nonneg(v, "WeightDecay")
        return _BoundWeightDecay(self, names, {n: tuple(shapes[n].shape) for n in names},
                                 self.granularity, self.init)


class _BoundWeightDecay(BoundHyperparameter):
    closed_form_mixed = True

    def __init__(self, spec, names, shapes, granularity, init):
        super().__init__(spec, names)
        self.shapes = shapes
        self.granularity = granularity
        self.init = init

    def init_raw(self, device, dtype):
        return self.from_public(self.init, device, dtype)

    def _strengths(self, raw):
        """Strength broadcastable to each target, keyed by name."""
        if self.granularity == "global":
            lam = F.softplus(raw)
            return {n: lam for n in self.name_targets}
        return {n: F.softplus(raw[n]) for n in self.name_targets}

    def value(self, raw):
        if self.granularity == "global":
            return F.softplus(raw)
        return {n: F.softplus(r) for n, r in raw.items()}

    def inner_penalty(self, raw, theta):
        total = None
        for n, lam in self._strengths(raw).items():
            term = 0.5 * (lam * theta[n].pow(2)).sum()
            total = term if total is None else total + term
        return total

    def mixed_vjp(self, raw, theta, v):
        # d/dtheta [0.5 s(r) theta^2] = s(r) theta, so d/dr = sigmoid(r) theta, summed
        # over the weights sharing one strength.
        if self.granularity == "weight":
            return {n: v[n] * theta[n] * torch.sigmoid(raw[n]) for n in self.name_targets}
        if self.granularity == "tensor":
            return {n: torch.sigmoid(raw[n]) * (v[n] * theta[n]).sum() for n in self.name_targets}
        total = sum((v[n] * theta[n]).sum() for n in self.name_targets)
        return torch.sigmoid(raw) * total

    def to_public(self, raw):
        if self.granularity == "global":
            return float(F.softplus(raw))
        if self.granularity == "tensor":
            return {n: float(F.softplus(r)) for n, r in raw.items()}
        return {n: to_numpy(F.softplus(r)) for n, r in raw.items()}

    def from_public(self, value, device, dtype):
        if self.granularity == "global":
            v = float(np.asarray(value, dtype=np.float64))
            check_finite_nonneg(v, "WeightDecay", "value")
            return inv_softplus(as_tensor(v, device, dtype).reshape(()))
        values = per_name_values(value, self.name_targets, "WeightDecay")
        out = {}
        for n in self.name_targets:
            check_finite_nonneg(values[n], "WeightDecay", "value")
            shape = self.shapes[n] if self.granularity == "weight" else ()
            out[n] = inv_softplus(_shaped(values[n], shape, device, dtype, "WeightDecay"))
        return out

    def summary(self, raw):
        if self.granularity == "global":
            return float(F.softplus(raw))
        return mean_of(F.softplus(r) for r in raw.values())
