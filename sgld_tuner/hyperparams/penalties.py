"""Separable weight penalties: L1 (paper Sec. 4.2) and weight decay, at any granularity.

Both enter the inner loss only through ``sum_j s(r_g(j)) * phi(theta_j)`` with
``s = softplus``, raw value ``r`` and ``g(j)`` the strength that weight ``j`` shares with
others (itself, its unit, its input feature, its tensor, or one global strength). The
mixed derivative ``d2 L_T / (d theta_j d r_g) = sigmoid(r_g) * phi'(theta_j)`` is therefore
known in closed form; a vector-Jacobian product sums it over the weights of each group
(no double backward needed).

Granularities (one strength ...):

============  =================================================  ===================  =============
granularity   one strength per                                   stored raw shape     public value
============  =================================================  ===================  =============
``weight``    weight                                             parameter's shape    ndarray, same
``unit``      output unit: row of a weight (dim 0; conv: out     ``(out, 1, ...)``    ndarray (out,)
              channel; bias: element)
``feature``   input feature: column of the FIRST matched         ``(1, in)``          ndarray (in,)
              tensor (2-D only); other matched tensors are
              not penalised
``tensor``    matched tensor                                     ``()``               float
``global``    all matched tensors together                       ``()`` (no dict)     float
============  =================================================  ===================  =============
"""
from __future__ import annotations

import abc
import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import (BoundHyperparameter, Hyperparameter, as_tensor, check_finite_nonneg,
                   inv_softplus, mean_of, per_name_values, to_numpy)

__all__ = ["PerWeightL1", "WeightDecay", "GRANULARITIES"]

GRANULARITIES = ("weight", "unit", "feature", "tensor", "global")


def strength_shapes(shape: tuple, granularity: str) -> tuple[tuple, tuple]:
    """``(stored, public)`` shapes of the strengths of one tensor of ``shape``.

    The stored shape broadcasts against ``shape`` (so the penalty is ``lam * phi(theta)``);
    the public shape drops the broadcast dimensions.
    """
    if granularity == "weight":
        return shape, shape
    if granularity == "unit":
        if not shape:
            return (), ()
        return (shape[0],) + (1,) * (len(shape) - 1), (shape[0],)
    if granularity == "feature":
        return (1, shape[1]), (shape[1],)
    return (), ()   # tensor (and each tensor's share of "global")


def _feature_columns(module, name: str, shape: tuple) -> bool:
    """Whether the columns of parameter ``name`` are input features: a 2-D weight (a
    Linear layer's, or a raw matrix for ``F.linear``), but not an embedding's, whose
    columns are embedding dimensions."""
    owner = module.get_submodule(name.rpartition(".")[0])
    return len(shape) == 2 and not isinstance(owner, (torch.nn.Embedding,
                                                      torch.nn.EmbeddingBag))


class _GranularPenalty(Hyperparameter):
    """Specification shared by the separable penalties: validation and binding."""

    uses_params = True
    #: the bound class, set by each kind
    _bound_class: type

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        kind = type(self).__name__
        if self.granularity != "auto" and self.granularity not in GRANULARITIES:
            raise ValueError(f"{kind}: granularity must be 'auto' or one of {GRANULARITIES}, "
                             f"got {self.granularity!r}")
        shapes = {n: tuple(p.shape) for n, p in module.named_parameters() if n in names}
        granularity = self.granularity
        if granularity == "auto":
            # Measured (benchmarks/search_effect.py): one strength per input feature is
            # what a search on tabular MLPs can learn from a small validation fold; a
            # first layer that is not a Linear weight (conv, embedding) gets per weight.
            first = names[0]
            granularity = "feature" if _feature_columns(module, first, shapes[first]) \
                else "weight"
        if granularity == "feature":
            # Feature relevance lives in the first layer's columns: later layers' columns
            # are hidden units, not input features.
            names = names[:1]
            if len(shapes[names[0]]) != 2:
                raise ValueError(
                    f"{kind}: granularity='feature' needs the first matched parameter to be "
                    f"2-D (a Linear weight, columns = input features); {names[0]!r} has shape "
                    f"{shapes[names[0]]}. Select the first layer's weight with params=")
        if isinstance(self.init, str):
            if self.init != "auto":
                raise ValueError(f"{kind}: init must be 'auto', a number >= 0 or a dict, "
                                 f"got {self.init!r}")
        elif granularity == "global":
            if isinstance(self.init, dict):
                raise ValueError(f"{kind}: granularity='global' needs a scalar init")
            check_finite_nonneg(self.init, kind)
        else:
            for v in per_name_values(self.init, names, kind).values():
                check_finite_nonneg(v, kind)
        return self._bound_class(self, names, {n: shapes[n] for n in names},
                                 granularity, self.init)


class _BoundGranularPenalty(BoundHyperparameter):
    """``sum_n sum(softplus(r_n) * phi(theta_n))`` with compact, broadcast strengths ``r_n``.

    Subclasses give ``phi`` and its derivative ``dphi``. ``raw`` is a dict name -> tensor
    of the stored strength shape, or one scalar tensor for ``granularity="global"``.
    """

    closed_form_mixed = True
    closed_form_penalty = True

    def __init__(self, spec, names, shapes, granularity, init):
        super().__init__(spec, names)
        self.shapes = shapes
        self.granularity = granularity
        self.init = init
        self._kind = type(spec).__name__
        layouts = {n: strength_shapes(shapes[n], granularity) for n in names}
        self.stored_shapes = {n: s for n, (s, _) in layouts.items()}
        self.public_shapes = {n: p for n, (_, p) in layouts.items()}

    @staticmethod
    @abc.abstractmethod
    def phi(theta: torch.Tensor) -> torch.Tensor:
        """Elementwise penalty of each weight at strength 1."""

    @staticmethod
    @abc.abstractmethod
    def dphi(theta: torch.Tensor) -> torch.Tensor:
        """Derivative of :meth:`phi` (the subgradient autograd takes at kinks)."""

    @staticmethod
    @abc.abstractmethod
    def d2phi(theta: torch.Tensor):
        """Second derivative of :meth:`phi` (a number or a tensor), or ``None`` for zero."""

    @property
    def is_global(self) -> bool:
        return self.granularity == "global"

    @property
    def needs_calibration(self) -> bool:
        return isinstance(self.init, str)

    def calibrate(self, data_grads, theta):
        """``init="auto"``: start every strength at :meth:`auto_strength` of the targets."""
        if self.needs_calibration:
            self.init = self.auto_strength([data_grads[n] for n in self.name_targets],
                                           [theta[n] for n in self.name_targets])

    @staticmethod
    @abc.abstractmethod
    def auto_strength(grads: list, weights: list) -> float:
        """The start strength, from the data's pull on the initial weights."""

    def init_raw(self, device, dtype):
        if self.needs_calibration:
            raise ValueError(
                f"{self._kind}: init='auto' is derived from the training data by "
                "SGLDHyperTuner (calibrate() before init_raw()); give a number to bind it "
                "elsewhere")
        return self.from_public(self.init, device, dtype)

    def _strengths(self, raw) -> dict[str, torch.Tensor]:
        """Strength broadcastable to each target, keyed by name."""
        if self.is_global:
            lam = F.softplus(raw)
            return {n: lam for n in self.name_targets}
        return {n: F.softplus(raw[n]) for n in self.name_targets}

    def value(self, raw):
        if self.is_global:
            return F.softplus(raw)
        return {n: F.softplus(r).reshape(self.public_shapes[n]) for n, r in raw.items()}

    def inner_penalty(self, raw, theta):
        total = None
        for n, lam in self._strengths(raw).items():
            term = (lam * self.phi(theta[n])).sum()
            total = term if total is None else total + term
        return total

    def mixed_vjp(self, raw, theta, v):
        # d/dr [v . d/dtheta s(r) phi(theta)] = sigmoid(r) * sum over the group of v phi'
        if self.is_global:
            total = sum((v[n] * self.dphi(theta[n])).sum() for n in self.name_targets)
            return torch.sigmoid(raw) * total
        return {n: torch.sigmoid(raw[n])
                * (v[n] * self.dphi(theta[n])).sum_to_size(self.stored_shapes[n])
                for n in self.name_targets}

    def penalty_grad(self, raw, theta):
        return {n: lam * self.dphi(theta[n]) for n, lam in self._strengths(raw).items()}

    def penalty_hvp(self, raw, theta, u):
        curvature = {n: self.d2phi(theta[n]) for n in self.name_targets}
        if all(c is None for c in curvature.values()):
            return None
        return {n: lam * curvature[n] * u[n] for n, lam in self._strengths(raw).items()
                if curvature[n] is not None}

    def penalty_grad_raw(self, raw, theta):
        # d/dr softplus(r) = sigmoid(r), times phi summed over the weights sharing r
        if self.is_global:
            return torch.sigmoid(raw) * sum(self.phi(theta[n]).sum() for n in self.name_targets)
        return {n: torch.sigmoid(raw[n]) * self.phi(theta[n]).sum_to_size(self.stored_shapes[n])
                for n in self.name_targets}

    def to_public(self, raw):
        if self.is_global:
            return float(F.softplus(raw))
        if self.granularity == "tensor":
            return {n: float(F.softplus(r)) for n, r in raw.items()}
        return {n: to_numpy(F.softplus(r)).reshape(self.public_shapes[n])
                for n, r in raw.items()}

    def from_public(self, value, device, dtype):
        if self.is_global:
            if isinstance(value, dict):
                raise ValueError(f"{self._kind}: granularity='global' needs a scalar value")
            v = float(np.asarray(value, dtype=np.float64))
            check_finite_nonneg(v, self._kind, "value")
            return inv_softplus(as_tensor(v, device, dtype).reshape(()))
        values = per_name_values(value, self.name_targets, self._kind)
        out = {}
        for n in self.name_targets:
            check_finite_nonneg(values[n], self._kind, "value")
            public = self._fit_shape(as_tensor(values[n], device, dtype), n)
            out[n] = inv_softplus(public.reshape(self.stored_shapes[n]))
        return out

    def _fit_shape(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """``t`` (scalar, public-shaped, stored-shaped or broadcastable) in public shape."""
        shape = self.public_shapes[name]
        if t.numel() == math.prod(shape):
            return t.reshape(shape).clone()
        try:
            return t.expand(shape).clone()
        except RuntimeError as exc:
            raise ValueError(
                f"{self._kind}: value of shape {tuple(t.shape)} for {name!r} does not fit "
                f"granularity={self.granularity!r}, which has strengths of shape {shape}"
            ) from exc

    def summary(self, raw):
        if self.is_global:
            return float(F.softplus(raw))
        return mean_of(F.softplus(r) for r in raw.values())


def _mean_abs(tensors) -> float:
    return float(torch.cat([t.detach().abs().reshape(-1) for t in tensors]).double().mean())


class _BoundPerWeightL1(_BoundGranularPenalty):
    @staticmethod
    def phi(theta):
        return theta.abs()

    @staticmethod
    def auto_strength(grads, weights):
        # The L1 pull on a weight is lam itself: match the mean |data gradient|.
        return _mean_abs(grads)

    @staticmethod
    def dphi(theta):
        # sign(0) = 0 matches autograd's subgradient of abs at 0
        return torch.sign(theta)

    @staticmethod
    def d2phi(theta):
        return None  # |w| is piecewise linear: autograd's double backward gives zeros too


#: ``WeightDecay(init="auto")``: the decay's pull on the initial weights as a fraction of
#: the data's. Matching it in full (as the L1 start does) decays every weight of a net
#: whose first layer is not a Linear one (a CNN: granularity "weight" on all layers)
#: until the net trains below its plain fit, and the search, which moves a strength by
#: about 5% per outer step, cannot undo that within its budget (docs/reliability.md).
WEIGHT_DECAY_AUTO_FRACTION = 0.1


class _BoundWeightDecay(_BoundGranularPenalty):
    @staticmethod
    def phi(theta):
        return 0.5 * theta.pow(2)

    @staticmethod
    def auto_strength(grads, weights):
        # The L2 pull on a weight is lam * |w|: a tenth of the mean |data gradient|.
        return WEIGHT_DECAY_AUTO_FRACTION * _mean_abs(grads) / max(_mean_abs(weights), 1e-12)

    @staticmethod
    def dphi(theta):
        return theta

    @staticmethod
    def d2phi(theta):
        return 1.0


_GRANULARITY_DOC = """granularity : {"auto", "weight", "unit", "feature", "tensor", "global"}, default="auto"
        Which weights share one strength. ``"auto"``: ``"feature"`` when the first
        matched tensor is 2-D and not an embedding's (a Linear layer: an MLP on tabular
        data, where per-feature strengths learn relevance), else ``"weight"`` (conv,
        embedding).
        Otherwise: each weight its own; one per output unit (row, dim 0, of each matched
        tensor; per output channel for a conv weight); one per input feature (column of
        the first matched tensor in module order, which must be 2-D: the other matched
        tensors are then not penalised); one per matched tensor; one shared scalar."""


class PerWeightL1(_GranularPenalty):
    """Learned L1 strengths: ``R(lam, theta) = sum_j lam_g(j) |theta_j|`` (paper Sec. 4.2).

    Parameters
    ----------
    init : "auto", float or dict, default="auto"
        Initial strength (>= 0): one float for all, or a dict mapping parameter names to
        floats or arrays shaped like that parameter's strengths (see ``granularity``).
        ``"auto"`` starts where the penalty acts: at the mean absolute gradient of the
        net's unpenalised training loss over the penalised weights, at the initial
        weights (the L1 pull then equals the typical data pull). A fixed small start
        (1e-4 on the digits MLP) is inert: the search never leaves it.
    params : str or list of str, default="*.weight"
        Glob(s) over ``module.named_parameters()`` selecting the penalised tensors
        (``"*.weight"`` also matches a top-level ``"weight"``).
    {granularity}

    Notes
    -----
    Transform: ``lam = softplus(raw)`` elementwise, so strengths stay positive while the
    solver moves freely in ``raw``. Note ``d lam / d raw = sigmoid(raw) ~ lam`` for small
    strengths, i.e. the raw scale behaves like a log scale there: outer steps change a
    strength of 1e-4 by a relative, not absolute, amount.
    The penalty is added as-is (not divided by the number of rows) to the mean minibatch
    loss, both during tuning and when the learned net is refit.
    ``to_public`` gives a dict ``name -> ndarray`` shaped like each parameter ("weight"),
    ``(out,)`` ("unit"), ``(in,)`` ("feature", first matched tensor only),
    ``name -> float`` ("tensor") or one float ("global"); ``summary`` is the mean over the
    stored strengths. With ``granularity="feature"`` the learned values are a feature
    relevance (small strength = relevant): see :func:`sgld_tuner.relevance.feature_relevance`.
    """

    _bound_class = _BoundPerWeightL1

    def __init__(self, init="auto", params="*.weight", granularity="auto"):
        self.init = init
        self.params = params
        self.granularity = granularity


class WeightDecay(_GranularPenalty):
    """Learned L2 strengths: ``R(lam, theta) = sum_j 0.5 * lam_g(j) * theta_j**2``.

    Parameters
    ----------
    init : "auto", float or dict, default="auto"
        Initial strength (>= 0): one float, or (not for ``"global"``) a dict mapping
        parameter names to floats or arrays shaped like that parameter's strengths.
        ``"auto"``: a tenth of the mean absolute gradient of the unpenalised training
        loss over the penalised weights, divided by their mean absolute value, at the
        initial weights (the L2 pull ``lam * |w|`` then a tenth of the typical data pull:
        the full pull decayed a small CNN's every layer below its plain fit).
    params : str or list of str, default="*.weight"
        Glob(s) over ``module.named_parameters()`` selecting the penalised tensors.
    {granularity}

    Notes
    -----
    Transform: ``lam = softplus(raw)``. The penalty is added to the mean minibatch loss
    (not divided by the number of rows). ``to_public`` gives a dict ``name -> ndarray``
    ("weight": parameter's shape, "unit": ``(out,)``, "feature": ``(in,)``),
    ``name -> float`` ("tensor") or a float ("global"); ``summary`` is the mean over the
    stored strengths (over weights, units, features, tensors, or the scalar itself).
    """

    _bound_class = _BoundWeightDecay

    def __init__(self, init="auto", params="*.weight", granularity="auto"):
        self.init = init
        self.params = params
        self.granularity = granularity


PerWeightL1.__doc__ = PerWeightL1.__doc__.replace("{granularity}", _GRANULARITY_DOC)
WeightDecay.__doc__ = WeightDecay.__doc__.replace("{granularity}", _GRANULARITY_DOC)
