"""The net's training and validation losses, written once.

:class:`Objective` is what the per-fold problem (:class:`~sgld_tuner.skorch_adapter.NetProblem`),
the stacked folds (:class:`~sgld_tuner.search.stacked.FoldBatch`) and the refit net
(:class:`~sgld_tuner.learned_net.LearnedNet`) all evaluate, so tuning and refitting optimise
the same objective:

    training:    mean_i [ w_i * l_i ] + sum(inner penalties)
    validation:  the net's own criterion (mean over rows) + sum(outer penalties)

where ``l_i`` is the per-sample training loss and ``w_i`` the product of class weights
(``class_weights`` hooks, e.g. :class:`~sgld_tuner.hyperparams.LossWeights`) and row
weights (``sample_weights`` hooks, e.g. :class:`~sgld_tuner.hyperparams.SampleWeights`).
``l_i`` starts as the net's criterion per sample; every kind with ``modifies_loss``
rewrites it with its ``per_sample_loss`` hook, in the order of the ``hyperparams`` dict,
each receiving the previous result (the learned
:class:`~sgld_tuner.hyperparams.TaylorLoss` ignores it: it replaces the loss so far).
Without per-sample features the criterion is used unchanged (same reduction as the
plain net). Kinds are asked what they do through capability flags, never by type.
"""
from __future__ import annotations

import copy

import torch
from skorch import NeuralNetClassifier

from .core.problem import SeparablePenalty
from .hyperparams.base import BoundHyperparameter, Hyperparameter

class Criterion:
    """The net's criterion as a batch-mean and as a per-sample function.

    Mirrors ``NeuralNetClassifier.get_loss``: with ``NLLLoss`` the module outputs
    probabilities and skorch takes ``log(p + eps)`` first.
    """

    def __init__(self, net):
        self.criterion = net.criterion_
        # A plain NeuralNet with a classification criterion is a classifier too (class
        # weights and TaylorLoss apply), but only NeuralNetClassifier logs probabilities.
        self.is_classifier = isinstance(net, NeuralNetClassifier) or isinstance(
            self.criterion, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss))
        self.log_proba = isinstance(net, NeuralNetClassifier) and isinstance(
            self.criterion, torch.nn.NLLLoss)
        # skorch's NeuralNetBinaryClassifier: one logit (or probability) per row and
        # float 0/1 targets, whatever dtype the labels came in.
        self.binary = isinstance(self.criterion, (torch.nn.BCEWithLogitsLoss,
                                                  torch.nn.BCELoss))
        self._per_sample = None

    def _prep(self, y_pred):
        if self.log_proba:
            return torch.log(y_pred + torch.finfo(y_pred.dtype).eps)
        return y_pred

    def mean(self, y_pred, y_true):
        return self.criterion(self._prep(y_pred), y_true)

    def probabilities(self, y_pred):
        """Class probabilities from the module output (for TaylorLoss)."""
        return y_pred if self.log_proba else torch.softmax(y_pred, dim=-1)

    def per_sample(self, y_pred, y_true):
        if self._per_sample is None:
            if not hasattr(self.criterion, "reduction"):
                raise TypeError(
                    f"criterion {type(self.criterion).__name__} has no 'reduction' attribute; "
                    "class/sample weights and learned losses need a per-sample loss "
                    "(a torch.nn loss with reduction='none')")
            crit = copy.copy(self.criterion)
            crit.reduction = "none"
            self._per_sample = crit
        out = self._per_sample(self._prep(y_pred), y_true)
        # Multi-output regression gives (n, d): one number per row is the mean over outputs,
        # which keeps mean-reduction semantics of the plain criterion.
        return out.reshape(out.shape[0], -1).mean(dim=1) if out.dim() > 1 else out



class Objective:
    """The training and validation losses of one net with its bound hyperparameters.

    Parameters
    ----------
    crit : Criterion
        The net's criterion.
    bound : dict of str -> BoundHyperparameter
        The kinds bound to the net's module, in the user's order.
    """

    def __init__(self, crit: Criterion, bound: dict[str, BoundHyperparameter]):
        self.crit, self.bound = crit, bound
        #: the kinds whose inner penalty has closed-form derivatives (added apart)
        self.closed_form_names = tuple(n for n, b in bound.items() if b.closed_form_penalty)

    def transform(self, raws, X, generator):
        """Training inputs through the learned input transforms."""
        return transform_inputs(self.bound, raws, X, generator)

    def training_loss(self, raws, y_pred, y_true, rows, theta, without=()) -> torch.Tensor:
        """``mean_i w_i l_i + sum_k penalty_k``, leaving out the penalties of the kinds
        named in ``without``; ``rows``: the batch's indices into the whole training set
        (row weights), or None."""
        crit, per, weights = self.crit, None, None
        for name, b in self.bound.items():
            r = raws[name]
            if b.modifies_loss:
                # composition: each loss hook rewrites the per-sample loss left by the previous
                per = b.per_sample_loss(r, y_pred, y_true,
                                        crit.per_sample(y_pred, y_true) if per is None else per)
            if b.reweights_rows:
                weights = _times(weights, b.class_weights(r), y_true)
                if rows is not None:
                    weights = _times(weights, b.sample_weights(r, rows))
        if per is None and weights is None:
            loss = crit.mean(y_pred, y_true)
        else:
            per = per if per is not None else crit.per_sample(y_pred, y_true)
            loss = (per * weights).mean() if weights is not None else per.mean()
        for name, b in self.bound.items():
            pen = None if name in without else b.inner_penalty(raws[name], theta)
            if pen is not None:
                loss = loss + pen
        return loss

    def validation_loss(self, y_pred, y_true) -> torch.Tensor:
        """The net's own criterion (the outer loss's data term)."""
        return self.crit.mean(y_pred, y_true)

    def outer_penalties(self, raws) -> list:
        """The kinds' outer penalties (those that have one), in the user's order."""
        terms = (b.outer_penalty(raws[name]) for name, b in self.bound.items())
        return [t for t in terms if t is not None]

    def validation_objective(self, data_loss, raws) -> torch.Tensor:
        """The outer loss: the validation ``data_loss`` plus the outer penalties."""
        for pen in self.outer_penalties(raws):
            data_loss = data_loss + pen
        return data_loss

    @property
    def plain_mean(self) -> bool:
        """Whether the training loss (closed-form penalties apart) is the criterion's
        plain mean: no kind rewrites the per-sample loss, weighs rows or adds a penalty
        that must be differentiated through autograd."""
        return not any(b.modifies_loss or b.reweights_rows
                       or (b.adds_inner_penalty and name not in self.closed_form_names)
                       for name, b in self.bound.items())

    def separable_penalty(self) -> "ClosedFormPenalties | None":
        """The penalties with closed-form derivatives, or ``None`` if no kind has one."""
        names = self.closed_form_names
        return ClosedFormPenalties({n: self.bound[n] for n in names}) if names else None


def _times(weights, factor, y_true=None):
    """``weights * factor`` (class weights are indexed by ``y_true``); None is 1."""
    if factor is None:
        return weights
    if y_true is not None:
        factor = factor[y_true.long()]
    return factor if weights is None else weights * factor


class ClosedFormPenalties(SeparablePenalty):
    """The inner penalties of the kinds with ``closed_form_penalty``, as one
    :class:`~sgld_tuner.core.problem.SeparablePenalty` over ``{name: raw}`` and the
    module's ``{parameter name: tensor}``."""

    def __init__(self, bound: dict[str, BoundHyperparameter]):
        self.bound = bound

    def value(self, lam, theta):
        return sum(b.inner_penalty(lam[name], theta) for name, b in self.bound.items())

    def grad_theta(self, lam, theta):
        return self._sum_over_kinds(b.penalty_grad(lam[name], theta)
                                    for name, b in self.bound.items())

    def hvp(self, lam, theta, u):
        return self._sum_over_kinds(b.penalty_hvp(lam[name], theta, u)
                                    for name, b in self.bound.items())

    def mixed(self, lam, theta, u):
        return {name: b.mixed_vjp(lam[name], theta, u) for name, b in self.bound.items()}

    def grad_lam(self, lam, theta):
        return {name: b.penalty_grad_raw(lam[name], theta) for name, b in self.bound.items()}

    @staticmethod
    def _sum_over_kinds(per_kind) -> dict | None:
        """Per-parameter sum of the kinds' dicts (two kinds may penalise one tensor)."""
        total = {}
        for part in per_kind:
            for n, t in (part or {}).items():
                total[n] = total[n] + t if n in total else t
        return total or None


def bind_all(hyperparams: dict[str, Hyperparameter], module, crit: Criterion, *,
              n_train: int, n_classes, input_shape: tuple) -> dict[str, BoundHyperparameter]:
    """Bind every kind to ``module`` and tell each how the module outputs probabilities."""
    bound = {name: hp.bind(module, n_train=n_train, n_classes=n_classes,
                           input_shape=input_shape)
             for name, hp in hyperparams.items()}
    for b in bound.values():
        b.set_output_kind(crit.probabilities)
    return bound


def transform_inputs(bound, raws, X, generator):
    """``X`` through every kind's learned input transform, in the dict's order."""
    for name, b in bound.items():
        X = b.transform_inputs(raws[name], X, generator)
    return X


def average_replicas(out, n_rows):
    """Average module outputs over replicas stacked replica-major (MC average of g(Tx))."""
    if out.shape[0] == n_rows:
        return out
    k = out.shape[0] // n_rows
    return out.reshape(k, n_rows, *out.shape[1:]).mean(dim=0)


def first_output(out):
    # skorch convention: with several module outputs the first one is the prediction
    return out[0] if isinstance(out, (tuple, list)) else out


def module_device(module):
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def module_dtype(module):
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
