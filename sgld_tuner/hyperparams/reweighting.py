"""One learned weight per training row (to down-weight noisy or mislabelled rows)."""
from __future__ import annotations

import numpy as np
import torch

from .base import BoundHyperparameter, Hyperparameter, as_tensor, to_numpy

__all__ = ["SampleWeights"]

_EPS = 1e-6


class SampleWeights(Hyperparameter):
    """A weight in ``(0, 2)`` for every row of the training set.

    Parameters
    ----------
    init : float or array of shape (n_train,), default=1.0
        Initial weights, each in ``(0, 2)``; 1 means "as unweighted training".

    Notes
    -----
    Transform: ``w = 2 * sigmoid(raw)``, so ``raw = 0`` is weight 1, a row can be switched
    off (``w -> 0``) but not blown up (``w < 2``), which keeps the training loss bounded.
    The training loss is ``mean_i w_i l_i`` over the minibatch. Weights are indexed by
    position in the full training set: in the tuner ``train_rows`` maps a fold's rows to
    those positions; a refit net applies weight ``k`` to row ``k`` of ``X`` given to
    ``fit``. ``to_public`` gives the ndarray of weights; ``summary`` is their mean.
    """

    needs_row_indices = True
    # A logit per row: the weight 2 * sigmoid(raw) changes half as fast as a log-scale
    # strength near the start, hence a scale of 2 (see docs/experiments.md).
    outer_lr_scale = 2.0

    def __init__(self, init=1.0):
        self.init = init

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        init = np.asarray(self.init, dtype=np.float64)
        if init.ndim not in (0, 1) or (init.ndim == 1 and init.shape != (n_train,)):
            raise ValueError(f"SampleWeights: init must be a scalar or of shape ({n_train},), "
                             f"got shape {init.shape}")
        if np.any(init <= 0) or np.any(init >= 2) or not np.all(np.isfinite(init)):
            raise ValueError("SampleWeights: init must lie in (0, 2)")
        return _BoundSampleWeights(self, n_train, init)


class _BoundSampleWeights(BoundHyperparameter):
    def __init__(self, spec, n_train, init):
        super().__init__(spec, [])
        self.n_train = n_train
        self.init = init

    def init_raw(self, device, dtype):
        return self.from_public(self.init, device, dtype)

    def value(self, raw):
        return 2.0 * torch.sigmoid(raw)

    def sample_weights(self, raw, rows):
        return self.value(raw)[rows]

    def to_public(self, raw):
        return to_numpy(self.value(raw))

    def from_public(self, value, device, dtype):
        w = np.asarray(value, dtype=np.float64)
        if w.ndim == 0:
            w = np.full(self.n_train, float(w))
        if w.shape != (self.n_train,):
            raise ValueError(f"SampleWeights: expected {self.n_train} weights (one per "
                             f"training row), got shape {w.shape}")
        half = np.clip(w / 2.0, _EPS, 1.0 - _EPS)
        return as_tensor(np.log(half) - np.log1p(-half), device, dtype)

    def summary(self, raw):
        return float(self.value(raw).detach().double().mean())
