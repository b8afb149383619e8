"""Hyperparameters of the training loss: per-class weights and the learned Taylor loss
(paper Sec. 4.3, Supplement D.3 eq. 53)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import BoundHyperparameter, Hyperparameter, as_tensor, to_numpy

__all__ = ["LossWeights", "TaylorLoss"]


def _need_classes(kind, n_classes):
    if n_classes is None:
        raise ValueError(f"{kind} needs one output per class (a skorch NeuralNetClassifier "
                         "with a cross-entropy or NLL criterion); the net given is a "
                         "regressor or a one-logit binary classifier")
    return int(n_classes)


class LossWeights(Hyperparameter):
    """Per-class weights of the training criterion (classifiers only).

    Parameters
    ----------
    init : float or array of shape (n_classes,), default=1.0
        Initial weights (> 0). They are normalised to mean 1, so a scalar means uniform.

    Notes
    -----
    Transform: ``w = n_classes * softmax(raw)``: weights are positive and their mean over
    classes is exactly 1, so the outer problem can shift emphasis between classes but
    cannot rescale the whole loss (which would act as a learning-rate knob). The training
    loss becomes ``mean_i w[y_i] * l_i`` over the minibatch (a plain mean, not skorch's
    ``sum w l / sum w``). ``to_public`` gives the ndarray ``w``; ``summary`` is the standard
    deviation of ``w`` over classes (0 means uniform; the mean is always 1).
    """

    def __init__(self, init=1.0):
        self.init = init

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        c = _need_classes("LossWeights", n_classes)
        init = np.broadcast_to(np.asarray(self.init, dtype=np.float64), (c,)).copy() \
            if np.ndim(self.init) == 0 else np.asarray(self.init, dtype=np.float64)
        if init.shape != (c,) or not np.all(np.isfinite(init)) or np.any(init <= 0):
            raise ValueError(f"LossWeights: init must be > 0, scalar or of shape ({c},), "
                             f"got {self.init!r}")
        return _BoundLossWeights(self, c, init)


class _BoundLossWeights(BoundHyperparameter):
    def __init__(self, spec, n_classes, init):
        super().__init__(spec, [])
        self.n_classes = n_classes
        self.init = init

    def init_raw(self, device, dtype):
        return self.from_public(self.init, device, dtype)

    def value(self, raw):
        return self.n_classes * torch.softmax(raw, dim=0)

    def class_weights(self, raw):
        return self.value(raw)

    def to_public(self, raw):
        return to_numpy(self.value(raw))

    def from_public(self, value, device, dtype):
        w = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.n_classes,))
        if np.any(w <= 0):
            raise ValueError(f"LossWeights: weights must be > 0, got {value!r}")
        raw = np.log(w)
        return as_tensor(raw - raw.mean(), device, dtype)

    def summary(self, raw):
        return float(self.value(raw).double().std(unbiased=False))


def taylor_brier_init(n_classes: int) -> np.ndarray:
    """Coefficients of eq. 53 giving ``||p - y||^2 - 1`` (Brier score minus one)."""
    lam = np.zeros(8)
    lam[3] = -2.0 * n_classes   # -(1/C) * (lam3/2) p^2    ->  p^2
    lam[5] = 2.0 * n_classes    # -(1/C) * lam5 p y        -> -2 p y
    return lam


class TaylorLoss(Hyperparameter):
    """Learned third-order polynomial training loss (paper eq. 53; classifiers only).

    With class probabilities ``p`` (softmax of the logits, or the module's output when the
    criterion is ``NLLLoss``), one-hot labels ``y`` and ``a = p - lam1``, ``b = y - lam0``::

        l(p, y) = -(1/C) sum_j ( lam2 a + lam3/2 a^2 + lam4/6 a^3
                                 + lam5 a b + lam6/2 a^2 b + lam7/2 a b^2 )

    It replaces the training criterion, and any loss-modifying kind placed before it in
    ``hyperparams`` (kinds after it modify the polynomial loss); the outer (validation)
    loss stays the net's own criterion, as in eqs. 55-56.

    Parameters
    ----------
    init : None or array of shape (8,), default=None
        ``None`` starts from the Brier score: ``lam3 = -2C``, ``lam5 = 2C``, all others 0,
        which makes ``l = ||p - y||^2 - 1`` (a proper scoring rule, so training at the
        initial value is sensible and the gradient in ``p`` is not vanishing).

    Notes
    -----
    Transform: identity (the 8 coefficients are unconstrained). ``to_public`` gives the
    ndarray of 8 coefficients; ``summary`` is their mean.
    """

    # Unbounded polynomial coefficients (the start has entries of -6 and 6): they move
    # 10x as far as a log-scale strength for a comparable change of the loss (see
    # docs/experiments.md).
    replaces_loss = True
    outer_lr_scale = 10.0

    def __init__(self, init=None):
        self.init = init

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        c = _need_classes("TaylorLoss", n_classes)
        init = taylor_brier_init(c) if self.init is None else np.asarray(self.init, np.float64)
        if init.shape != (8,) or not np.all(np.isfinite(init)):
            raise ValueError(f"TaylorLoss: init must be None or 8 finite numbers, got {self.init!r}")
        return _BoundTaylorLoss(self, c, init)


class _BoundTaylorLoss(BoundHyperparameter):
    def __init__(self, spec, n_classes, init):
        super().__init__(spec, [])
        self.n_classes = n_classes
        self.init = init

    def init_raw(self, device, dtype):
        return as_tensor(self.init, device, dtype)

    def value(self, raw):
        return raw

    def per_sample_loss(self, raw, y_pred, y_true, loss):
        # the polynomial replaces the loss so far: it ignores ``loss``
        p = self.probabilities(y_pred)
        y = F.one_hot(y_true.long(), p.shape[-1]).to(p.dtype)
        lam = raw
        a = p - lam[1]
        b = y - lam[0]
        poly = (lam[2] * a + lam[3] / 2 * a ** 2 + lam[4] / 6 * a ** 3
                + lam[5] * a * b + lam[6] / 2 * a ** 2 * b + lam[7] / 2 * a * b ** 2)
        return -poly.mean(dim=-1)

    def to_public(self, raw):
        return to_numpy(raw)

    def from_public(self, value, device, dtype):
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (8,):
            raise ValueError(f"TaylorLoss: expected 8 coefficients, got shape {value.shape}")
        return as_tensor(value, device, dtype)

    def summary(self, raw):
        return float(raw.detach().double().mean())
