"""Learned affine data augmentation (invariance learning, paper Sec. 4.6 / Supplement D.6).

Each training image is warped by ``T = matrix_exp(sum_i eps_i lam_i G_i)`` with
``eps_i ~ U[-1, 1]`` drawn per image, ``G_i`` the 3x3 Lie-algebra generators of the affine
group, applied with ``affine_grid`` / ``grid_sample`` so the loss is differentiable in
``lam``. ``lam_i`` is the learned range of transformation ``i``, kept inside
``(0, BOUNDS[i])`` by ``lam_i = BOUNDS[i] * sigmoid(raw_i)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import BoundHyperparameter, Hyperparameter, as_tensor

__all__ = ["AffineAugmentation", "GENERATORS", "BOUNDS", "INIT_FRACTION"]

# Generators acting on grid_sample's normalised coordinates (x, y, 1) in [-1, 1]^2.
GENERATORS = {
    "tx": ((0, 0, 1), (0, 0, 0), (0, 0, 0)),      # x-translation
    "ty": ((0, 0, 0), (0, 0, 1), (0, 0, 0)),      # y-translation
    "rot": ((0, -1, 0), (1, 0, 0), (0, 0, 0)),    # rotation
    "sx": ((1, 0, 0), (0, 0, 0), (0, 0, 0)),      # x-scaling (log scale)
    "sy": ((0, 0, 0), (0, 1, 0), (0, 0, 0)),      # y-scaling
    "shear": ((0, 1, 0), (1, 0, 0), (0, 0, 0)),   # shear (symmetric)
}

# Largest range of each generator. Rotation by pi * eps covers every angle; a shift of one
# half-width moves the image's centre to its edge; scales and the symmetric shear (a
# stretch by exp(+-lam) along the diagonals) are log-units, bounded at a factor of 2.
BOUNDS = {"tx": 1.0, "ty": 1.0, "rot": math.pi, "sx": math.log(2.0), "sy": math.log(2.0),
          "shear": math.log(2.0)}

# A range of exactly 0 (or the bound) has an infinite raw value: clip the fraction of the
# bound to [_FLOOR, 1 - _FLOOR] (a range of 0 then warps by ~1e-15, i.e. not at all).
_FLOOR = 1e-15

# init="auto": every range starts at this fraction of its bound, where a warp is visible
# (27 degrees of rotation) but mild, and the hypergradient is not the zero of range 0.
INIT_FRACTION = 0.15


class AffineAugmentation(Hyperparameter):
    """Learned ranges of random affine transformations of image inputs.

    Parameters
    ----------
    generators : tuple of str, default=("tx", "ty", "rot", "sx", "sy", "shear")
        Which transformations to learn, from ``GENERATORS``.
    init : "auto", float or dict, default="auto"
        Initial range per generator (one float for all, or dict generator -> float), in
        the units below and within ``[0, bound]``. ``"auto"`` starts every range at
        ``INIT_FRACTION`` (0.15) of its bound: 0.47 rad of rotation, 0.15 half-widths of
        shift, 0.10 log-units of scale and shear. 0 is "no augmentation", but also a
        stationary point: ``eps`` is symmetric, so the expected loss is even in each
        ``lam_i`` and its expected hypergradient vanishes at 0; the search never leaves it.
    image_shape : tuple, optional
        ``(H, W)`` or ``(C, H, W)`` to reshape flat rows (e.g. ``(8, 8)`` for digits); when
        ``None`` the inputs must already be ``(N, C, H, W)`` or ``(N, H, W)``.
    n_samples : int, default=1
        Monte Carlo draws per image: the module output is averaged over them (the paper's
        ``g_bar``; it used 31).
    rho : float, default=0.01
        Adds ``-rho * ||lam||^2`` to the outer loss to favour wide invariances (paper D.6).
        Bounded, since every range is. With ``rho=0`` the validation loss alone decides,
        and for a small net it prefers no augmentation even on rotated data (measured:
        ``benchmarks/invariance.py``).
    bounds : dict, optional
        Largest range per generator, overriding ``BOUNDS`` for the generators it names.

    Notes
    -----
    Transform: ``lam_i = bound_i * sigmoid(raw_i)``, so each range stays in
    ``(0, bound_i)`` however far the reward pushes it. Default bounds (``BOUNDS``):
    rotation ``pi`` radians (every angle); translations ``tx``, ``ty`` one half-width of
    the image (the centre may move to the edge); scales ``sx``, ``sy`` and ``shear``
    ``log 2`` log-units (at most a factor 2 either way; the symmetric shear stretches by
    ``exp(+-lam)`` along the diagonals). For small ranges the raw scale is a log scale:
    an outer step changes a range by a relative amount, so it never lands on 0.
    Applied in training (and in the outer loss when the tuner asks for
    ``augment_outer``); prediction uses un-warped inputs. ``to_public`` gives a dict
    ``generator -> float`` (the ranges); ``summary`` is ``mean lam_i``.
    """

    transforms_inputs = True
    transforms_validation_inputs = True
    # A range has to cross most of its (log-like) raw scale to find an invariance within
    # the default n_outer, hence 10x the outer step (measured: docs/experiments.md,
    # benchmarks/invariance.py).
    outer_lr_scale = 10.0

    def __init__(self, generators=("tx", "ty", "rot", "sx", "sy", "shear"), init="auto",
                 image_shape=None, n_samples=1, rho=0.01, bounds=None):
        self.generators = generators
        self.init = init
        self.image_shape = image_shape
        self.n_samples = n_samples
        self.rho = rho
        self.bounds = bounds

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        gens = (self.generators,) if isinstance(self.generators, str) else tuple(self.generators)
        unknown = [g for g in gens if g not in GENERATORS]
        if not gens or unknown or len(set(gens)) != len(gens):
            raise ValueError(f"AffineAugmentation: generators must be distinct names from "
                             f"{list(GENERATORS)}, got {self.generators!r}")
        if int(self.n_samples) != self.n_samples or self.n_samples < 1:
            raise ValueError(f"AffineAugmentation: n_samples must be an int >= 1, "
                             f"got {self.n_samples!r}")
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ValueError(f"AffineAugmentation: rho must be >= 0, got {self.rho!r}")
        image_shape = self._image_shape(tuple(input_shape))
        bound = _BoundAffine(self, gens, image_shape, int(self.n_samples), float(self.rho),
                             self._bounds(gens))
        auto = isinstance(self.init, str) and self.init == "auto"
        if isinstance(self.init, str) and not auto:
            raise ValueError(f"AffineAugmentation: init must be 'auto', a float or a dict, "
                             f"got {self.init!r}")
        bound.init = bound.public_dict(
            [INIT_FRACTION * b for b in bound.bounds] if auto else self.init)
        bound.check_in_bounds(bound.init, "init")
        return bound

    def _bounds(self, gens):
        bounds = dict(BOUNDS)
        extra = dict(self.bounds or {})
        unknown = [g for g in extra if g not in GENERATORS]
        bad = [g for g, b in extra.items()
               if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0)]
        if unknown or bad:
            raise ValueError(f"AffineAugmentation: bounds must map generator names from "
                             f"{list(GENERATORS)} to finite floats > 0, got {self.bounds!r}")
        bounds.update(extra)
        return [float(bounds[g]) for g in gens]

    def _image_shape(self, input_shape):
        shape = self.image_shape
        if shape is None:
            if len(input_shape) == 3:
                return input_shape
            if len(input_shape) == 2:
                return (1,) + input_shape
            raise ValueError(
                f"AffineAugmentation: inputs of row shape {input_shape} are not images; "
                "pass image_shape=(H, W) or (C, H, W) to reshape flat rows")
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or math.prod(shape) != math.prod(input_shape):
            raise ValueError(f"AffineAugmentation: image_shape={self.image_shape!r} does not "
                             f"fit input rows of shape {input_shape}")
        return shape


class _BoundAffine(BoundHyperparameter):
    def __init__(self, spec, gens, image_shape, n_samples, rho, bounds):
        super().__init__(spec, [])
        self.gens = gens
        self.image_shape = image_shape
        self.n_samples = n_samples
        self.rho = rho
        self.bounds = bounds
        self.init = None

    def check_in_bounds(self, values: dict, what: str) -> None:
        # a little slack above the bound: float32 rounds b * sigmoid(raw) up to b or past it
        bad = {g: v for (g, v), b in zip(values.items(), self.bounds)
               if not (math.isfinite(v) and 0 <= v <= b * (1 + 1e-6))}
        if bad:
            limits = {g: round(b, 6) for g, b in zip(self.gens, self.bounds)}
            raise ValueError(f"AffineAugmentation: {what} ranges must lie in [0, bound]; got "
                             f"{bad} with bounds {limits} (see the bounds parameter)")

    def public_dict(self, value):
        if isinstance(value, dict):
            missing = [g for g in self.gens if g not in value]
            if missing:
                raise ValueError(f"AffineAugmentation: value lacks generators {missing}")
            return {g: float(value[g]) for g in self.gens}
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 1 and arr.shape == (len(self.gens),):
            return {g: float(v) for g, v in zip(self.gens, arr)}
        return {g: float(arr) for g in self.gens}

    def init_raw(self, device, dtype):
        return self.from_public(self.init, device, dtype)

    def value(self, raw):
        bounds = torch.as_tensor(self.bounds, dtype=raw.dtype, device=raw.device)
        return bounds * torch.sigmoid(raw)

    def transform_inputs(self, raw, X, generator):
        n = X.shape[0]
        k = self.n_samples
        imgs = X.reshape(n, *self.image_shape)
        if k > 1:
            imgs = imgs.repeat(k, 1, 1, 1)   # replica-major: rows [r*n:(r+1)*n] = replica r
        m = imgs.shape[0]
        eps = torch.rand(m, len(self.gens), generator=generator, device=generator.device,
                         dtype=X.dtype).to(X.device) * 2 - 1
        gmat = torch.tensor([GENERATORS[g] for g in self.gens], dtype=X.dtype, device=X.device)
        algebra = torch.einsum("mk,kij->mij", eps * self.value(raw), gmat)
        affine = torch.linalg.matrix_exp(algebra)[:, :2, :]
        grid = F.affine_grid(affine, list(imgs.shape), align_corners=False)
        out = F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.reshape(m, *X.shape[1:])

    def outer_penalty(self, raw):
        if self.rho == 0:
            return None
        return -self.rho * (self.value(raw) ** 2).sum()

    def to_public(self, raw):
        lam = self.value(raw.detach()).cpu().tolist()
        return {g: float(v) for g, v in zip(self.gens, lam)}

    def from_public(self, value, device, dtype):
        d = self.public_dict(value)
        self.check_in_bounds(d, "public")
        # logit in float64 so a range near its bound stays finite in float32
        frac = np.array([d[g] / b for g, b in zip(self.gens, self.bounds)], dtype=np.float64)
        frac = np.clip(frac, _FLOOR, 1.0 - _FLOOR)
        return as_tensor(np.log(frac) - np.log1p(-frac), device, dtype)

    def summary(self, raw):
        return float(self.value(raw.detach()).double().mean())
