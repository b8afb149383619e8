"""From a skorch net to functional bilevel losses, and back to a net that trains with
learned hyperparameters.

:class:`NetProblem` evaluates one initialized skorch net at arbitrary parameters with
``torch.func.functional_call`` (the net is never trained in place), giving the inner
(training) and outer (validation) losses the core solver needs.

:func:`make_learned_net` returns a fresh skorch net (:class:`LearnedNet`,
:class:`LearnedNetClassifier` or :class:`LearnedNetRegressor`) whose ``get_loss`` and
training-time forward apply the learned values, so ``fit`` retrains with them and
``sklearn.base.clone`` keeps them.

Both share :func:`_training_loss`, so tuning and refitting optimise the same objective:

    mean_i [ w_i * l_i ] + sum(inner penalties)

where ``l_i`` is the per-sample training loss and ``w_i`` the product of class weights
(``class_weights`` hooks, e.g. :class:`~sgld_tuner.hyperparams.LossWeights`) and row
weights (``sample_weights`` hooks, e.g. :class:`~sgld_tuner.hyperparams.SampleWeights`).
``l_i`` starts as the net's criterion per sample; every kind with ``modifies_loss``
rewrites it with its ``per_sample_loss`` hook, in the order of the ``hyperparams`` dict,
each receiving the previous result (the learned
:class:`~sgld_tuner.hyperparams.TaylorLoss` ignores it: it replaces the loss so far).
Without per-sample features the criterion is used unchanged (same reduction as the
plain net). The adapter asks kinds what they do through capability flags, never by type.
"""
from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Mapping
from numbers import Integral
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils.metaestimators import available_if
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from skorch.dataset import get_len
from skorch.utils import to_tensor
from torch.func import functional_call

from .core import _tree
from .core.problem import BilevelProblem, SeparablePenalty
from .hyperparams.base import BoundHyperparameter, Hyperparameter
from .optimizers import with_weight_decay

__all__ = [
    "LearnedNet",
    "LearnedNetClassifier",
    "LearnedNetRegressor",
    "ModuleRNG",
    "NetProblem",
    "make_learned_net",
]

# Keys of the dict that LearnedNet.partial_fit wraps X in when row weights are learned:
# skorch's Dataset slices every value of a dict X with the batch indices, so the row
# index travels with its row through any train_split and shuffling.
ROW_KEY = "__sgld_row__"
WRAP_KEY = "__sgld_X__"
OUTER_BATCH = 1024


# ----------------------------------------------------------------------------------------
# loss plumbing shared by NetProblem and LearnedNet
# ----------------------------------------------------------------------------------------

class _Criterion:
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


def _training_loss(crit: _Criterion, bound: dict[str, BoundHyperparameter], raws: dict,
                   y_pred, y_true, rows, theta, without=()) -> torch.Tensor:
    """``mean_i w_i l_i + sum_k penalty_k`` (see module docstring), leaving out the
    penalties of the kinds named in ``without``."""
    per = None
    weights = None
    for name, b in bound.items():
        r = raws[name]
        if b.modifies_loss:
            # composition: each loss hook rewrites the per-sample loss left by the previous
            per = b.per_sample_loss(r, y_pred, y_true,
                                    crit.per_sample(y_pred, y_true) if per is None else per)
        cw = b.class_weights(r)
        if cw is not None:
            w = cw[y_true.long()]
            weights = w if weights is None else weights * w
        if rows is not None:
            sw = b.sample_weights(r, rows)
            if sw is not None:
                weights = sw if weights is None else weights * sw
    if per is None and weights is None:
        loss = crit.mean(y_pred, y_true)
    else:
        per = per if per is not None else crit.per_sample(y_pred, y_true)
        loss = (per * weights).mean() if weights is not None else per.mean()
    for name, b in bound.items():
        pen = None if name in without else b.inner_penalty(raws[name], theta)
        if pen is not None:
            loss = loss + pen
    return loss


class _ClosedFormPenalties(SeparablePenalty):
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


def _bind_all(hyperparams: dict[str, Hyperparameter], module, crit: _Criterion, *,
              n_train: int, n_classes, input_shape: tuple) -> dict[str, BoundHyperparameter]:
    """Bind every kind to ``module`` and tell each how the module outputs probabilities."""
    bound = {name: hp.bind(module, n_train=n_train, n_classes=n_classes,
                           input_shape=input_shape)
             for name, hp in hyperparams.items()}
    for b in bound.values():
        b.set_output_kind(crit.probabilities)
    return bound


def _transform(bound, raws, X, generator):
    for name, b in bound.items():
        X = b.transform_inputs(raws[name], X, generator)
    return X


def _average_replicas(out, n_rows):
    """Average module outputs over replicas stacked replica-major (MC average of g(Tx))."""
    if out.shape[0] == n_rows:
        return out
    k = out.shape[0] // n_rows
    return out.reshape(k, n_rows, *out.shape[1:]).mean(dim=0)


def _first_output(out):
    # skorch convention: with several module outputs the first one is the prediction
    return out[0] if isinstance(out, (tuple, list)) else out


def _probe(module, *args, **kwargs):
    """The module's prediction on a few rows, to read the output layout: in eval mode,
    so that batch norm takes a single row and neither its running statistics nor the
    dropout stream move; the module's mode is put back."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return _first_output(module(*args, **kwargs))
    finally:
        module.train(training)


def takes_ids(module) -> bool:
    """Whether ``module`` has an embedding layer, i.e. takes integer ids as input.

    One rule for integer input everywhere (the tuner's rows, the chains, the learned net's
    forward): ids stay int64 for such a module, any other gets them cast to its float
    dtype, as float64 rows are.
    """
    return any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
               for m in module.modules())


def _module_device(module):
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _module_dtype(module):
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


class ModuleRNG:
    """A private stream of torch's global RNG for one module's own draws (dropout).

    ``torch.func.functional_call`` cannot hand a ``torch.Generator`` to dropout and
    similar layers: they draw from torch's global RNG. :meth:`active` makes that RNG
    this stream for the length of a ``with`` block and puts the caller's stream back
    afterwards, so seeded chains are reproducible, parallel folds do not share draws,
    and the caller's RNG is not advanced. Blocks of different streams are serialised by
    one process-wide lock (the global RNG is one per process); keep them short (a
    forward pass).

    Parameters
    ----------
    seed : int
        Seeds the stream the first time it is activated.
    device : torch.device or str, default="cpu"
        Where the module runs; a CUDA device's generator is switched too.

    Attributes
    ----------
    states : tuple or None
        ``(cpu_state, cuda_state or None)`` after the first activation; assign a saved
        value to resume the stream (rollbacks, ``warm_start``).
    """

    _lock = threading.RLock()

    def __init__(self, seed: int, device="cpu", states=None):
        self.seed, self.device, self.states = int(seed), torch.device(device), states

    @classmethod
    @contextmanager
    def isolated(cls):
        """Run the block on a fork of torch's global (CPU) RNG, restored afterwards.

        For calls that draw from it without needing a stream of their own, such as
        skorch's ``predict`` (its ``DataLoader`` draws a seed per iteration); the lock
        keeps threads from restoring each other's states.
        """
        with cls._lock, torch.random.fork_rng(devices=[]):
            yield

    @contextmanager
    def active(self):
        """Run the block with torch's global RNG set to this stream."""
        cuda = self.device.type == "cuda"
        index = self.device.index if self.device.index is not None else \
            (torch.cuda.current_device() if cuda else None)
        with self._lock, torch.random.fork_rng(devices=[index] if cuda else []):
            if self.states is None:
                torch.default_generator.manual_seed(self.seed)
                if cuda:
                    torch.cuda.default_generators[index].manual_seed(self.seed)
            else:
                torch.set_rng_state(self.states[0])
                if cuda:
                    torch.cuda.set_rng_state(self.states[1], index)
            try:
                yield
            finally:
                self.states = (torch.get_rng_state(),
                               torch.cuda.get_rng_state(index) if cuda else None)


# ----------------------------------------------------------------------------------------
# NetProblem
# ----------------------------------------------------------------------------------------

class NetProblem:
    """Functional inner/outer losses of one initialized skorch net on one train/validation split.

    Parameters
    ----------
    net : skorch.NeuralNet
        Initialized net (``module_``, ``criterion_`` and ``device`` exist). Its module is
        only evaluated with :func:`torch.func.functional_call`; :meth:`load_theta` is the
        one method that writes into it.
    hyperparams : dict of str -> Hyperparameter
        The kinds to learn, bound here against ``net.module_``.
    X_train, y_train, X_val, y_val : ndarray
        Split data. ``X`` is cast to the module's floating dtype; ``y`` holds int labels
        ``0..C-1`` for classifiers, floats for regressors (a 1-d regression target is
        reshaped to ``(n, 1)`` when the module outputs one column).
    train_rows : array of int, optional
        Indices of the training rows into the full training set, used by
        :class:`~sgld_tuner.hyperparams.SampleWeights`; default ``arange(len(X_train))``.
    batch_size : int, optional
        Inner minibatch size; ``None`` uses ``net.batch_size``; ``-1`` or ``>= n`` gives full
        batch. Rows are drawn without replacement with ``generator``.
    generator : torch.Generator
        Source of all randomness here (minibatches, augmentation draws). It should live on
        ``net.device``; draws are made on the generator's device and moved.
    augment_outer : bool, default=False
        Also apply input transforms (augmentation) in the outer loss, as in paper D.6.
    n_train_total : int, optional
        Size of the full training set (length of :class:`SampleWeights`' weight vector);
        default ``max(train_rows) + 1``. Pass it when the last rows may fall in validation.
    outer_batch_size : int, optional
        Validation rows drawn per outer-loss evaluation; ``None`` uses them all.
    outer_generator : torch.Generator, optional
        Where those validation rows (and, with ``augment_outer``, their warps) are drawn
        from; default ``generator``. A stream of its own keeps the chain's noise and
        minibatches independent of ``outer_batch_size`` and of how often the chain
        evaluates its outer loss (the tuner gives one).
    n_classes : int, optional
        Number of classes in the whole training set (classifiers). A module with fewer
        outputs fails here, before any training step, instead of deep inside the loss.
    module_rng : ModuleRNG, optional
        The stream that the module's own random layers (dropout) draw from in the
        training loss. ``None`` leaves them on torch's global RNG.

    Attributes
    ----------
    bound : dict of str -> BoundHyperparameter
    output_shape : tuple of int
        Shape of one row of the module's (first) output, from a forward on two rows.

    Notes
    -----
    The inner loss runs the module in train mode and the outer loss in eval mode, as
    skorch's training and validation steps do. Dropout inside the module draws from
    torch's global RNG, not from ``generator`` (``functional_call`` cannot reroute it):
    pass ``module_rng`` to give it a seeded stream of its own. BatchNorm running statistics are buffers of ``net.module_`` and are updated in place
    by inner evaluations.
    """

    def __init__(self, net, hyperparams: dict[str, Hyperparameter], X_train, y_train, X_val,
                 y_val, *, train_rows=None, batch_size=None, generator: torch.Generator,
                 augment_outer: bool = False, n_train_total: int | None = None,
                 outer_batch_size: int | None = None, n_classes: int | None = None,
                 module_rng: ModuleRNG | None = None,
                 outer_generator: torch.Generator | None = None):
        if not getattr(net, "initialized_", False):
            raise ValueError("NetProblem needs an initialized net (call net.initialize())")
        self.net = net
        # where the parameters actually are (net.device may be None: "leave as is")
        self.device = _module_device(self.module)
        self.dtype = _module_dtype(self.module)
        self.generator = generator
        self.outer_generator = generator if outer_generator is None else outer_generator
        self.augment_outer = augment_outer
        self.module_rng = module_rng
        self.crit = _Criterion(net)
        self._tied = _has_shared_parameters(self.module)

        self.X_train = self._as_x(X_train)
        self.X_val = self._as_x(X_val)
        self.y_train = self._as_y(y_train)
        self.y_val = self._as_y(y_val)
        n = self.X_train.shape[0]
        if train_rows is None:
            train_rows = np.arange(n)
        train_rows = np.asarray(train_rows, dtype=np.int64)
        if train_rows.shape != (n,):
            raise ValueError(f"train_rows must have one index per training row ({n}), "
                             f"got shape {train_rows.shape}")
        self.train_rows = torch.as_tensor(train_rows, device=self.device)
        if batch_size is None:
            batch_size = getattr(net, "batch_size", -1)
        self.batch_size = n if batch_size is None or batch_size < 0 or batch_size >= n \
            else int(batch_size)
        # None: the whole validation split at every step (exact). An int draws that many
        # validation rows per call with the generator: a stochastic outer loss, which the
        # method allows and which cuts the per-step cost when the split is large.
        n_val = self.X_val.shape[0]
        self.outer_batch_size = (None if outer_batch_size is None or outer_batch_size < 0
                                 or outer_batch_size >= n_val else int(outer_batch_size))

        # One forward on two rows tells the number of classes and the output layout.
        probe = _probe(self.module, self.X_train[:2])
        self.output_shape = tuple(probe.shape[1:])
        _check_output_shape(self.output_shape, self.y_train, self.crit.is_classifier,
                            n_classes)
        n_classes = int(probe.shape[-1]) if self.crit.is_classifier else None
        if not self.crit.is_classifier and probe.dim() == 2 and probe.shape[1] == 1:
            if self.y_train.dim() == 1:
                self.y_train = self.y_train[:, None]
            if self.y_val.dim() == 1:
                self.y_val = self.y_val[:, None]
        if n_train_total is None:
            n_train_total = int(train_rows.max()) + 1 if n else 0
        self.hyperparams = dict(hyperparams)
        self.bound: dict[str, BoundHyperparameter] = _bind_all(
            self.hyperparams, self.module, self.crit, n_train=n_train_total,
            n_classes=n_classes, input_shape=tuple(self.X_train.shape[1:]))
        self._calibrate()

    def _calibrate(self):
        """Data-derived starts (``init="auto"``): one gradient of the net's own criterion
        on the training rows at the initial weights, handed to the kinds that ask."""
        asking = [b for b in self.bound.values() if b.needs_calibration]
        if not asking:
            return
        theta = self.theta0()
        leaves = {n: t.requires_grad_(True) for n, t in theta.items()}
        with torch.enable_grad():
            loss = self.crit.mean(self._forward({}, leaves, self.X_train, transform=False),
                                  self.y_train)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        data_grads = {n: torch.zeros_like(t) if g is None else g
                      for (n, t), g in zip(leaves.items(), grads)}
        for b in asking:
            b.calibrate(data_grads, {n: t.detach() for n, t in theta.items()})

    @property
    def module(self):
        # Always the net's own module: skorch's unpickling (e.g. in a Dask or loky worker)
        # rebuilds ``module_``, so a cached reference would go stale and load_theta would
        # write into a module that predict never uses.
        return self.net.module_

    def _as_x(self, X):
        X = torch.as_tensor(np.asarray(X), device=self.device)
        return X if not X.is_floating_point() and takes_ids(self.module) else X.to(self.dtype)

    def _as_y(self, y):
        y = torch.as_tensor(np.asarray(y), device=self.device)
        if self.crit.binary:
            return y.to(self.dtype)
        if self.crit.is_classifier or not y.is_floating_point():
            return y.long()
        return y.to(self.dtype)

    # -- values ---------------------------------------------------------------------------
    def init_lam(self) -> dict:
        """Raw initial values keyed by hyperparameter name, on ``net.device``."""
        return {name: b.init_raw(self.device, self.dtype) for name, b in self.bound.items()}

    def theta0(self) -> dict[str, torch.Tensor]:
        """Detached copies of ``net.module_``'s parameters (``named_parameters`` order)."""
        return {n: p.detach().clone() for n, p in self.module.named_parameters()}

    def load_theta(self, theta) -> NeuralNet:
        """Copy ``theta`` into ``net.module_`` and return the net (ready to predict)."""
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, t in theta.items():
                params[n].copy_(t)
        return self.net

    # -- losses ---------------------------------------------------------------------------
    def _forward(self, lam, theta, X, transform: bool, generator=None):
        n = X.shape[0]
        if transform:
            X = _transform(self.bound, lam, X, self.generator if generator is None else generator)
        # Untying shared parameters costs a walk over the module per call: only pay it
        # when the module has any (decided once, in __init__).
        out = _first_output(functional_call(self.module, theta, (X,),
                                            tie_weights=self._tied))
        return _average_replicas(out, n)

    def _set_mode(self, training: bool):
        """Put the module in train/eval mode, only when it is not in it already.

        ``Module.train`` walks every submodule; a chain asks for the same mode again on
        every step whose inner loss follows an inner loss (no outer loss in between)."""
        if self.module.training != training:
            self.module.train(training)

    def _draw_rows(self, n=None, size=None, generator=None):
        """Row indices of one minibatch (training rows unless told otherwise), or None
        for the full set."""
        n = self.X_train.shape[0] if n is None else n
        size = self.batch_size if size is None else size
        generator = self.generator if generator is None else generator
        if size >= n:
            return None
        perm = torch.randperm(n, generator=generator, device=generator.device)
        return perm[:size].to(self.device)

    def inner_loss(self, lam, theta, without=()) -> torch.Tensor:
        """Training loss on one minibatch (module in train mode): learned transforms,
        learned loss, class/sample weights and inner penalties applied (but those of the
        kinds named in ``without``)."""
        idx = self._draw_rows()
        if idx is None:
            X, y, rows = self.X_train, self.y_train, self.train_rows
        else:
            X, y, rows = self.X_train[idx], self.y_train[idx], self.train_rows[idx]
        self._set_mode(True)
        if self.module_rng is None:
            y_pred = self._forward(lam, theta, X, transform=True)
        else:
            with self.module_rng.active():
                y_pred = self._forward(lam, theta, X, transform=True)
        return _training_loss(self.crit, self.bound, lam, y_pred, y, rows, theta, without)

    def inner_data_loss(self, lam, theta) -> torch.Tensor:
        """:meth:`inner_loss` without the penalties that :meth:`separable_penalty` gives."""
        return self.inner_loss(lam, theta, without=self._closed_form_names)

    @property
    def _closed_form_names(self) -> tuple:
        return tuple(n for n, b in self.bound.items() if b.closed_form_penalty)

    def separable_penalty(self) -> SeparablePenalty | None:
        """The penalties with closed-form derivatives, or ``None`` if no kind has one."""
        names = self._closed_form_names
        return _ClosedFormPenalties({n: self.bound[n] for n in names}) if names else None

    def bilevel(self, weight_decay: float = 0.0) -> BilevelProblem:
        """This split as the core's :class:`~sgld_tuner.core.problem.BilevelProblem`.

        Closed-form penalties go apart (``penalty``) so that the chain's double backward
        runs through the data loss only; ``weight_decay`` (the net's own
        ``optimizer__weight_decay``) is added to the training loss.
        """
        penalty = self.separable_penalty()
        inner = self.inner_data_loss if penalty is not None else self.inner_loss
        lam = self.init_lam()
        return BilevelProblem(self.outer_loss, with_weight_decay(inner, weight_decay),
                              _tree.flatten(lam)[1], self.theta0(), mixed_vjp=self.mixed_vjp(),
                              penalty=penalty,
                              outer_depends_on_lam=self._outer_depends_on_lam(lam))

    def _outer_depends_on_lam(self, lam) -> bool:
        """Whether :meth:`outer_loss` reads ``lam``: through warped validation inputs or
        a kind's outer penalty."""
        return self.augment_outer or any(b.outer_penalty(lam[name]) is not None
                                         for name, b in self.bound.items())

    def outer_loss(self, lam, theta) -> torch.Tensor:
        """The net's own criterion on the validation split (module in eval mode), over
        chunks of at most 1024 rows weighted by size, plus outer penalties."""
        self._set_mode(False)
        X_val, y_val = self.X_val, self.y_val
        if self.outer_batch_size is not None:
            idx = self._draw_rows(X_val.shape[0], self.outer_batch_size,
                                  self.outer_generator)
            X_val, y_val = X_val[idx], y_val[idx]
        # Validation warps draw from the outer stream, like the validation rows: how
        # often the chain evaluates its outer loss never moves the chain's own stream.
        total = self._criterion_on(lam, theta, X_val, y_val, self.augment_outer,
                                   self.outer_generator)
        for name, b in self.bound.items():
            pen = b.outer_penalty(lam[name])
            if pen is not None:
                total = total + pen
        return total

    def _criterion_on(self, lam, theta, X_val, y_val, transform: bool,
                      generator=None) -> torch.Tensor:
        """The criterion's mean over ``X_val`` in chunks of at most 1024 rows."""
        n = X_val.shape[0]
        total = None
        for start in range(0, n, OUTER_BATCH):
            X = X_val[start:start + OUTER_BATCH]
            y = y_val[start:start + OUTER_BATCH]
            y_pred = self._forward(lam, theta, X, transform=transform, generator=generator)
            term = self.crit.mean(y_pred, y) * (X.shape[0] / n)
            total = term if total is None else total + term
        return total

    def start_loss(self) -> float:
        """The criterion on the whole validation split at the initial weights (eval
        mode, no input transforms, no random draws): the scale a diverging chain's
        outer loss is compared with."""
        self.module.eval()
        with torch.no_grad():
            return float(self._criterion_on({}, self.theta0(), self.X_val, self.y_val, False))

    def mixed_vjp(self):
        """Closed-form ``(lam, theta, v) -> v^T d2 L_T/(d theta d lam)`` when every
        hyperparameter is a separable penalty, else ``None``."""
        if not self.bound or not all(b.closed_form_mixed for b in self.bound.values()):
            return None
        bound = self.bound

        def mixed(lam, theta, v):
            with torch.no_grad():
                lam = {k: _detach_tree(x) for k, x in lam.items()}
                theta = {k: t.detach() for k, t in theta.items()}
                return {name: b.mixed_vjp(lam[name], theta, v) for name, b in bound.items()}

        return mixed


def _has_shared_parameters(module) -> bool:
    """Whether one parameter tensor is registered under several names (tied weights)."""
    named = list(module.named_parameters(remove_duplicate=False))
    return len({id(p) for _, p in named}) != len(named)


def _check_output_shape(output_shape, y, is_classifier, n_classes=None):
    """Fail before training when the module's output cannot fit the targets.

    Parameters
    ----------
    output_shape : tuple of int
        One row of the module's output.
    y : torch.Tensor
        Training targets (class codes for classifiers).
    is_classifier : bool
    n_classes : int, optional
        Classes in the whole training set; default ``max(y) + 1``.

    Raises
    ------
    ValueError
        Naming the module's output width, the width the targets need and the fix.
    """
    width = int(output_shape[-1]) if output_shape else 1
    if is_classifier:
        if n_classes is None:
            n_classes = int(y.max()) + 1 if y.numel() else 0
        if width < n_classes:
            raise ValueError(
                f"the module outputs {width} values per row but y has {n_classes} classes: "
                f"build the module with at least {n_classes} outputs (the size of its last "
                "layer, usually a module__ parameter of the net)")
        return
    targets = int(y.shape[1]) if y.dim() == 2 else 1
    if y.dim() <= 2 and len(output_shape) <= 1 and width != targets:
        raise ValueError(
            f"the module outputs {width} value(s) per row but y has {targets} target "
            f"column(s): build the module with {targets} output(s), or pass y with "
            f"{width} column(s)")


def _detach_tree(x):
    if isinstance(x, dict):
        return {k: _detach_tree(v) for k, v in x.items()}
    return x.detach()


# ----------------------------------------------------------------------------------------
# Learned nets
# ----------------------------------------------------------------------------------------

class _LearnedMixin:
    """Training with learned hyperparameter values; see :func:`make_learned_net`."""

    def __init__(self, module, *args, hyperparams=None, learned_values=None, tta=0, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.hyperparams = hyperparams
        self.learned_values = learned_values
        self.tta = tta

    # transient state, rebuilt lazily (e.g. after unpickling or set_params)
    _HP_STATE = ("hp_bound_", "hp_raw_", "hp_generator_", "hp_rows_", "hp_crit_")

    def __getstate__(self):
        state = super().__getstate__()
        for key in self._HP_STATE:
            state.pop(key, None)
        return state

    def __reduce_ex__(self, protocol):
        # A class made by learned_class() cannot be found by name: rebuild it from the
        # user's class (found by name) instead.
        if type(self) not in (LearnedNet, LearnedNetClassifier, LearnedNetRegressor) \
                and _LEARNED_CLASSES.get(_user_class(type(self))) is type(self):
            return _rebuild_learned, (_user_class(type(self)),), self.__getstate__()
        return super().__reduce_ex__(protocol)

    def set_params(self, **kwargs):
        out = super().set_params(**kwargs)
        self._hp_reset()
        return out

    # -- classifiers: labels as given in ``classes``, one probability column per class ----
    def _n_label_classes(self):
        """``len(classes)`` for a classifier given ``classes``, else None."""
        if not isinstance(self, NeuralNetClassifier) or self.classes is None:
            return None
        return len(self.classes)

    def _encode_labels(self, y):
        """Codes ``0..C-1`` of the labels ``y`` in ``classes`` (any label type).

        Integer ``y`` that are not all labels in ``classes`` but lie in ``0..C-1`` are
        taken as codes already (skorch's own convention for ``classes``).
        """
        if self._n_label_classes() is None or y is None or torch.is_tensor(y):
            return y
        y = np.asarray(y)
        if y.ndim != 1:
            return y
        classes = np.asarray(self.classes)
        order = np.argsort(classes, kind="stable")
        pos = np.clip(np.searchsorted(classes, y, sorter=order), 0, len(classes) - 1)
        codes = order[pos]
        unknown = classes[codes] != y
        if unknown.any() and y.dtype.kind in "iu" and y.min() >= 0 and y.max() < len(classes):
            return y  # skorch's own convention: integer codes into classes
        if unknown.any():
            raise ValueError(f"y holds labels not in classes={classes.tolist()}: "
                             f"{sorted(set(y[unknown].tolist()))[:5]}")
        return codes.astype(np.int64)

    @available_if(lambda self: _user_class_has(self, "predict_proba"))
    def predict_proba(self, X):
        """As skorch's, restricted to (and renormalised over) the first ``len(classes)``
        columns when the module has more outputs than classes."""
        proba = super().predict_proba(X)
        n_classes = self._n_label_classes()
        if n_classes is not None and proba.ndim == 2 and proba.shape[1] > n_classes:
            proba = proba[:, :n_classes]
            proba = proba / proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X):
        """As skorch's; a classifier given ``classes`` returns those labels (not codes)."""
        if self._n_label_classes() is None or \
                getattr(_user_class(type(self)), "predict") is not NeuralNetClassifier.predict:
            return super().predict(X)
        return np.asarray(self.classes)[self.predict_proba(X).argmax(axis=1)]

    def _hp_reset(self):
        for key in self._HP_STATE:
            self.__dict__.pop(key, None)

    def initialize(self):
        self._hp_reset()
        return super().initialize()

    def _hp_ensure(self, x_batch: torch.Tensor):
        """Bind the hyperparameters to ``module_`` once, at the first training batch."""
        if getattr(self, "hp_bound_", None) is not None:
            return
        hps = self.hyperparams or {}
        values = self.learned_values or {}
        missing = [k for k in hps if k not in values]
        if missing:
            raise ValueError(f"learned_values lacks values for hyperparameters {missing}")
        crit = _Criterion(self)
        dtype = _module_dtype(self.module_)
        device = _module_device(self.module_)
        n_classes = None
        if crit.is_classifier:
            probe = (_probe(self.module_, **{k: v[:1] for k, v in x_batch.items()})
                     if isinstance(x_batch, Mapping) else _probe(self.module_, x_batch[:1]))
            n_classes = int(probe.shape[-1])
        input_shape = () if isinstance(x_batch, Mapping) else tuple(x_batch.shape[1:])
        n_train = getattr(self, "hp_n_train_", None)
        if n_train is None:
            n_train = 0
        bound = _bind_all(hps, self.module_, crit, n_train=n_train, n_classes=n_classes,
                          input_shape=input_shape)
        self.hp_crit_ = crit
        self.hp_raw_ = {name: b.from_public(values[name], device, dtype)
                        for name, b in bound.items()}
        self.hp_bound_ = bound
        gen = torch.Generator(device=device)
        # seeded from torch's global RNG so torch.manual_seed makes refits reproducible
        gen.manual_seed(int(torch.randint(0, 2**62, (1,))))
        self.hp_generator_ = gen

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        y = self._encode_labels(y)
        n_train = int(get_len(X)) if not _is_wrapped(X) else int(get_len(X[ROW_KEY]))
        if n_train != getattr(self, "hp_n_train_", None):
            self._hp_reset()   # row weights are bound to the number of rows
        self.hp_n_train_ = n_train
        if self.hyperparams and not _is_wrapped(X) and any(
                hp.needs_row_indices for hp in self.hyperparams.values()):
            X = _wrap_rows(X)
        return super().partial_fit(X, y, classes=classes, **fit_params)

    def infer(self, x, **fit_params):
        x, rows = _unwrap(x)
        if rows is not None:
            rows = to_tensor(rows, device=self.device).long()
        training = self.module_.training
        self.hp_rows_ = rows if training else None
        x = to_tensor(x, device=self.device)
        if torch.is_tensor(x) and (x.is_floating_point() or not takes_ids(self.module_)):
            # e.g. float64 or integer rows from a Pipeline's preprocessing: the module's
            # dtype (token ids for an embedding stay integers)
            x = x.to(_module_dtype(self.module_))
        # getattr: a net pickled before ``tta`` existed has no such attribute.
        tta = getattr(self, "tta", 0)
        if not training and tta:
            if isinstance(tta, bool) or not isinstance(tta, Integral) or tta < 0:
                raise ValueError(f"tta must be a non-negative int, got {tta!r}")
            if self._transforms_inputs() and torch.is_tensor(x):
                return self._test_time_average(x, int(tta), **fit_params)
        if not training or not self.hyperparams:
            return super().infer(x, **fit_params)
        if isinstance(x, Mapping):
            transforming = [type(hp).__name__ for hp in self.hyperparams.values()
                            if hp.transforms_inputs]
            if transforming:
                raise TypeError(f"{transforming}: kinds that transform the inputs need "
                                "array inputs, not a dict X")
            self._hp_ensure(x)
            return super().infer(x, **fit_params)
        self._hp_ensure(x)
        n = x.shape[0]
        x = _transform(self.hp_bound_, self.hp_raw_, x, self.hp_generator_)
        return _average_replicas(_first_output(self.module_(x, **fit_params)), n)

    def _transforms_inputs(self) -> bool:
        return any(hp.transforms_inputs for hp in (self.hyperparams or {}).values())

    def _test_time_average(self, x, draws: int, **fit_params):
        """The module's output averaged over ``x`` itself and ``draws`` draws of the
        learned input transforms (test-time augmentation); outputs (logits or
        probabilities, whatever the module returns) are averaged.

        The draws come from a generator seeded the same on every call (every batch), so
        predicting the same batch twice gives the same result; a row's warps depend on
        its position in its batch, so predictions depend (slightly) on how rows are
        batched (``batch_size``)."""
        self._hp_ensure(x)
        n = x.shape[0]
        generator = torch.Generator(device=x.device).manual_seed(0)
        total = _first_output(self.module_(x, **fit_params))
        for _ in range(draws):
            warped = _transform(self.hp_bound_, self.hp_raw_, x, generator)
            total = total + _average_replicas(_first_output(self.module_(warped, **fit_params)),
                                              n)
        return total / (draws + 1)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Training loss with the learned values when ``training``, else the plain criterion.

        The validation loss that skorch reports stays the net's own criterion, the same
        quantity the tuner's outer loss optimised.
        """
        if not training or not self.hyperparams:
            return super().get_loss(y_pred, y_true, X=X, training=training)
        if getattr(self, "hp_bound_", None) is None:
            self._hp_ensure(to_tensor(_unwrap(X)[0], device=self.device))
        y_true = to_tensor(y_true, device=self.device)
        if self.hp_crit_.is_classifier:
            y_true = y_true.long()
        elif self.hp_crit_.binary:
            # as NeuralNetBinaryClassifier.infer, which the learned forward bypasses
            if y_pred.dim() == 2 and y_pred.shape[1] == 1 and y_true.dim() == 1:
                y_pred = y_pred.reshape(-1)
            y_true = y_true.to(y_pred.dtype)
        theta = dict(self.module_.named_parameters())
        return _training_loss(self.hp_crit_, self.hp_bound_, self.hp_raw_, y_pred, y_true,
                              getattr(self, "hp_rows_", None), theta)


def _user_class(cls: type) -> type:
    """The class right after ``_LearnedMixin`` in ``cls``'s MRO (the user's net class)."""
    mro = cls.__mro__
    return mro[mro.index(_LearnedMixin) + 1]


def _user_class_has(net, name: str) -> bool:
    """Whether the user's class offers ``name`` on ``net`` (a subclass may hide a method
    of skorch's, e.g. ``predict_proba``; the learned net must not bring it back)."""
    return hasattr(super(_LearnedMixin, net), name)


def _skorch_base(cls: type) -> type:
    """skorch's own class that ``cls`` derives from."""
    for base in (NeuralNetClassifier, NeuralNetBinaryClassifier, NeuralNetRegressor, NeuralNet):
        if issubclass(cls, base):
            return base
    raise TypeError(f"expected a skorch NeuralNet class, got {cls.__name__}")


def _unwrap(X):
    """``(X as the user gave it, row indices or None)`` from a possibly wrapped batch."""
    if isinstance(X, Mapping) and ROW_KEY in X:
        x = {k: v for k, v in X.items() if k != ROW_KEY}
        if set(x) == {WRAP_KEY}:
            x = x[WRAP_KEY]
        return x, X[ROW_KEY]
    return X, None


def _is_wrapped(X) -> bool:
    return isinstance(X, Mapping) and ROW_KEY in X


def _wrap_rows(X):
    rows = np.arange(get_len(X), dtype=np.int64)
    if isinstance(X, Mapping):
        out = dict(X)
        out[ROW_KEY] = rows
        return out
    return {WRAP_KEY: X, ROW_KEY: rows}


class LearnedNet(_LearnedMixin, NeuralNet):
    """``skorch.NeuralNet`` that trains with learned hyperparameter values.

    Parameters
    ----------
    module, *args, **kwargs
        As for :class:`skorch.NeuralNet`.
    hyperparams : dict of str -> Hyperparameter
        The kinds that were tuned.
    learned_values : dict of str -> value
        Their learned values in public form (``BoundHyperparameter.to_public``).
    tta : int, default=0
        Test-time augmentation with learned input transforms (``AffineAugmentation``):
        in evaluation, average the module's output over the input and ``tta`` warps
        drawn from the learned ranges (seeded the same for every batch, so a batch
        predicted twice gives the same result; a row's warps depend on its position in
        its batch). 0: off. Set it on a tuner's refit net with
        ``tuner.best_estimator_.set_params(tta=8)``, or ``<step>__tta=8`` when the
        estimator is a ``Pipeline``.

    Notes
    -----
    During training (``module_.training``) the forward applies learned input transforms
    and ``get_loss`` returns ``mean_i w_i l_i + penalties`` (see the module docstring);
    in evaluation (validation, ``predict``) the net behaves like the plain one (but for
    ``tta``). Floating
    array inputs are cast to the module's dtype first (a ``Pipeline``'s preprocessing
    may hand over float64 rows).

    :class:`~sgld_tuner.hyperparams.SampleWeights` are indexed by row position: weight
    ``k`` belongs to row ``k`` of the ``X`` passed to ``fit`` (the full training set, in
    order). ``fit`` therefore wraps ``X`` in a dict ``{"__sgld_X__": X, "__sgld_row__":
    arange(n)}`` (or adds the row key to a dict ``X``); skorch slices it with every batch and
    ``infer`` unwraps it before calling the module, so internal ``train_split`` and
    shuffling keep rows and weights aligned. ``len(X)`` must equal the number of learned
    weights.
    """


class LearnedNetClassifier(_LearnedMixin, NeuralNetClassifier):
    """``skorch.NeuralNetClassifier`` that trains with learned hyperparameter values.

    See :class:`LearnedNet` for the parameters and the training-time behaviour.
    """


class LearnedNetRegressor(_LearnedMixin, NeuralNetRegressor):
    """``skorch.NeuralNetRegressor`` that trains with learned hyperparameter values.

    See :class:`LearnedNet` for the parameters and the training-time behaviour.
    """


_LEARNED_CLASSES: dict[type, type] = {NeuralNet: LearnedNet,
                                       NeuralNetClassifier: LearnedNetClassifier,
                                       NeuralNetRegressor: LearnedNetRegressor}


def learned_class(net_class: type) -> type:
    """The class of a net of class ``net_class`` that trains with learned values.

    Parameters
    ----------
    net_class : type
        A skorch ``NeuralNet`` class, possibly the user's own subclass.

    Returns
    -------
    type
        ``LearnedNet``/``LearnedNetClassifier``/``LearnedNetRegressor`` for skorch's own
        classes, ``net_class`` itself when it already trains with learned values, else a
        subclass ``Learned<Name>(_LearnedMixin, net_class)`` created once and cached, so
        that the user's own methods (e.g. ``score_samples``) and ``isinstance`` checks
        carry over. Such instances pickle by rebuilding the class from ``net_class``,
        which must therefore be importable.
    """
    if issubclass(net_class, _LearnedMixin):
        return net_class
    cls = _LEARNED_CLASSES.get(net_class)
    if cls is None:
        name = f"Learned{net_class.__name__}"
        cls = type(name, (_LearnedMixin, net_class), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"``{net_class.__name__}`` that trains with learned hyperparameter "
                       "values (see :class:`LearnedNet`)."})
        _LEARNED_CLASSES[net_class] = cls
    return cls


def _rebuild_learned(net_class: type):
    """Unpickling helper: an empty instance of ``learned_class(net_class)``."""
    cls = learned_class(net_class)
    return cls.__new__(cls)


def make_learned_net(estimator, hyperparams: dict[str, Hyperparameter], values: dict[str, object]):
    """Fresh unfitted clone of the user's net whose training uses the learned values.

    Parameters
    ----------
    estimator : skorch.NeuralNet
        The user's net (fitted or not; only its parameters are read).
    hyperparams : dict of str -> Hyperparameter
        The tuned kinds (cloned into the new net).
    values : dict of str -> object
        Learned values in public form (``to_public``); deep-copied.

    Returns
    -------
    skorch.NeuralNet
        An instance of ``learned_class(type(estimator))``: a subclass of the user's own
        class, so its methods and ``isinstance`` checks carry over. During training the
        learned ``get_loss`` and ``infer`` take precedence over the user's overrides of
        those two; a warning says so when the class has them.
    """
    if not isinstance(estimator, NeuralNet):
        raise TypeError(f"expected a skorch NeuralNet, got {type(estimator).__name__}")
    cls = learned_class(type(estimator))
    overridden = [name for name in ("get_loss", "infer")
                  if getattr(type(estimator), name) is not getattr(_skorch_base(cls), name)
                  and not issubclass(type(estimator), _LearnedMixin)]
    if overridden and hyperparams:
        warnings.warn(
            f"{type(estimator).__name__} overrides {overridden}; while training, the learned "
            f"net's own {overridden} apply the learned values instead", UserWarning,
            stacklevel=2)
    params = {k: v for k, v in estimator.get_params(deep=False).items()
              if not k.startswith("_") and k not in ("hyperparams", "learned_values")}
    params = {k: clone(v, safe=False) for k, v in params.items()}
    return cls(hyperparams={k: clone(v) for k, v in hyperparams.items()},
               learned_values=copy.deepcopy(dict(values)), **params)
