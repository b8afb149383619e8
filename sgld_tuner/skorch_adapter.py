"""From a skorch net to the functional bilevel losses the core solver needs.

:class:`NetProblem` evaluates one initialized skorch net at arbitrary parameters with
``torch.func.functional_call`` (the net is never trained in place), giving the inner
(training) and outer (validation) losses of :class:`~sgld_tuner.objective.Objective`.
The way back, a net that trains with learned values, is :mod:`sgld_tuner.learned_net`.

"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch
from skorch import NeuralNet
from torch.func import functional_call

from .core import _tree
from .core.problem import BilevelProblem, SeparablePenalty
from .hyperparams.base import BoundHyperparameter, Hyperparameter
from .minibatches import Minibatches, draw_rows
from .objective import (Criterion, Objective, average_replicas, bind_all, first_output,
                        module_device, module_dtype)
from .optimizers import with_weight_decay

__all__ = ["ModuleRNG", "NetProblem", "takes_ids"]

# Keys of the dict that LearnedNet.partial_fit wraps X in when row weights are learned:
#: validation rows per forward pass of the outer loss (the loss is their size-weighted
#: mean); distinct from ``outer_batch_size``, how many rows one evaluation draws
OUTER_CHUNK = 1024
#: training rows per forward and backward pass of the ``init="auto"`` calibration
CALIBRATION_ROWS = 4096
def probe_output(module, *args, **kwargs):
    """The module's prediction on a few rows, to read the output layout: in eval mode,
    so that batch norm takes a single row and neither its running statistics nor the
    dropout stream move; the module's mode is put back."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return first_output(module(*args, **kwargs))
    finally:
        module.train(training)


def _probe_rows(module, X):
    """:func:`probe_output` on the first training rows, with a mismatch between the rows and
    the module's input named as the user's mistake (not torch's shape error)."""
    try:
        return probe_output(module, X)
    except RuntimeError as exc:
        if "shape" not in str(exc) and "size" not in str(exc):
            raise
        raise ValueError(
            f"the net's module cannot take the rows it is given: one row has shape "
            f"{tuple(X.shape[1:])} ({exc}). Check X's shape against the module's input "
            "(its number of columns; after a Pipeline's preprocessing, which a step may "
            "change, e.g. SimpleImputer drops all-NaN columns and OneHotEncoder adds some)"
        ) from exc


def takes_ids(module) -> bool:
    """Whether ``module`` has an embedding layer, i.e. takes integer ids as input.

    One rule for integer input everywhere (the tuner's rows, the chains, the learned net's
    forward): ids stay int64 for such a module, any other gets them cast to its float
    dtype, as float64 rows are.
    """
    return any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
               for m in module.modules())


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
        batch.
    batch_order : {"draws", "ordered", "shuffled"}, default="draws"
        How the minibatches come (:class:`~sgld_tuner.minibatches.Minibatches`): each an
        independent draw of distinct rows with ``generator``, or passes over the rows as
        a ``DataLoader`` gives them, in order or shuffled per pass, each ending with its
        partial batch unless ``drop_last``.
    drop_last : bool, default=False
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
    data_grads : dict of str -> Tensor, optional
        The ``init="auto"`` calibration's gradient (:attr:`data_grads` of a problem on
        the same training rows, module start and criterion, whose module has no
        buffers), so that it is not computed again; ``None`` computes it here.

    Attributes
    ----------
    bound : dict of str -> BoundHyperparameter
    data_grads : dict of str -> Tensor or None
        The net criterion's mean gradient over the training rows at the initial weights,
        which the kinds with ``init="auto"`` started from (None when none asks).
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
                 outer_generator: torch.Generator | None = None, data_grads: dict | None = None,
                 batch_order: str = "draws", drop_last: bool = False):
        if not getattr(net, "initialized_", False):
            raise ValueError("NetProblem needs an initialized net (call net.initialize())")
        self.net = net
        # where the parameters actually are (net.device may be None: "leave as is")
        self.device = module_device(self.module)
        self.dtype = module_dtype(self.module)
        self.generator = generator
        self.outer_generator = generator if outer_generator is None else outer_generator
        self.augment_outer = augment_outer
        self.module_rng = module_rng
        self.crit = Criterion(net)
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
        self.minibatches = Minibatches(n, self.batch_size, batch_order, drop_last,
                                       generator.initial_seed(), self.device)
        # None: the whole validation split at every step (exact). An int draws that many
        # validation rows per call with the generator: a stochastic outer loss, which the
        # method allows and which cuts the per-step cost when the split is large.
        n_val = self.X_val.shape[0]
        self.outer_batch_size = (None if outer_batch_size is None or outer_batch_size < 0
                                 or outer_batch_size >= n_val else int(outer_batch_size))

        # One forward on two rows tells the number of classes and the output layout.
        probe = _probe_rows(self.module, self.X_train[:2])
        self.output_shape = tuple(probe.shape[1:])
        _check_output_shape(self.output_shape, self.y_train, self.crit.is_classifier,
                            n_classes)
        if self.crit.log_proba:
            _check_probabilities(probe)
        n_classes = int(probe.shape[-1]) if self.crit.is_classifier else None
        if not self.crit.is_classifier and probe.dim() == 2 and probe.shape[1] == 1:
            if self.y_train.dim() == 1:
                self.y_train = self.y_train[:, None]
            if self.y_val.dim() == 1:
                self.y_val = self.y_val[:, None]
        if n_train_total is None:
            n_train_total = int(train_rows.max()) + 1 if n else 0
        self.hyperparams = dict(hyperparams)
        self.bound: dict[str, BoundHyperparameter] = bind_all(
            self.hyperparams, self.module, self.crit, n_train=n_train_total,
            n_classes=n_classes, input_shape=tuple(self.X_train.shape[1:]))
        self.objective = Objective(self.crit, self.bound)
        self.data_grads = self._calibrate(data_grads)

    def _calibrate(self, data_grads: dict | None = None) -> dict | None:
        """Data-derived starts (``init="auto"``): one gradient of the net's own criterion
        on the training rows at the initial weights, handed to the kinds that ask
        (``data_grads`` when given: the same gradient, from another problem). Returns it.

        The rows go through in chunks of ``CALIBRATION_ROWS`` (their mean gradients
        weighted by their share of the rows), so that the pass's peak memory does not
        grow with the data (the whole-set pass set the search's peak memory on large
        training sets)."""
        asking = [b for b in self.bound.values() if b.needs_calibration]
        if not asking:
            return None
        theta = self.theta0()
        if data_grads is None:
            data_grads = self._data_gradient(theta)
        for b in asking:
            b.calibrate(data_grads, {n: t.detach() for n, t in theta.items()})
        return data_grads

    def _data_gradient(self, theta: dict) -> dict:
        """The mean gradient of the net's criterion over the training rows at ``theta``."""
        leaves = {n: t.requires_grad_(True) for n, t in theta.items()}
        data_grads = {n: torch.zeros_like(t) for n, t in leaves.items()}
        n = self.X_train.shape[0]
        for start in range(0, n, CALIBRATION_ROWS):
            rows = slice(start, start + CALIBRATION_ROWS)
            with torch.enable_grad():
                loss = self.crit.mean(self._forward({}, leaves, self.X_train[rows],
                                                    transform=False), self.y_train[rows])
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            share = min(CALIBRATION_ROWS, n - start) / n
            for name, g in zip(leaves, grads):
                if g is not None:
                    data_grads[name] += g if share == 1 else share * g
        return data_grads

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
            X = self.objective.transform(lam, X,
                                         self.generator if generator is None else generator)
        # Untying shared parameters costs a walk over the module per call: only pay it
        # when the module has any (decided once, in __init__).
        out = first_output(functional_call(self.module, theta, (X,),
                                            tie_weights=self._tied))
        return average_replicas(out, n)

    def _set_mode(self, training: bool):
        """Put the module in train/eval mode, only when it is not in it already.

        ``Module.train`` walks every submodule; a chain asks for the same mode again on
        every step whose inner loss follows an inner loss (no outer loss in between)."""
        if self.module.training != training:
            self.module.train(training)

    def training_batch(self):
        """One minibatch of training rows ``(X, y, rows)`` (``rows``: their indices into
        the whole training set): the next of the chain's :attr:`minibatches`."""
        idx = self.minibatches.next(self.generator)
        if idx is None:
            return self.X_train, self.y_train, self.train_rows
        return self.X_train[idx], self.y_train[idx], self.train_rows[idx]

    def validation_batch(self):
        """The validation rows one outer-loss evaluation uses ``(X, y)``: all of them,
        or ``outer_batch_size`` drawn with the outer generator."""
        if self.outer_batch_size is None:
            return self.X_val, self.y_val
        idx = draw_rows(self.X_val.shape[0], self.outer_batch_size, self.outer_generator,
                        self.device)
        return self.X_val[idx], self.y_val[idx]

    def inner_loss(self, lam, theta, without=()) -> torch.Tensor:
        """Training loss on one minibatch (module in train mode): learned transforms,
        learned loss, class/sample weights and inner penalties applied (but those of the
        kinds named in ``without``)."""
        X, y, rows = self.training_batch()
        self._set_mode(True)
        if self.module_rng is None:
            y_pred = self._forward(lam, theta, X, transform=True)
        else:
            with self.module_rng.active():
                y_pred = self._forward(lam, theta, X, transform=True)
        return self.objective.training_loss(lam, y_pred, y, rows, theta, without)

    def inner_data_loss(self, lam, theta) -> torch.Tensor:
        """:meth:`inner_loss` without the penalties that :meth:`separable_penalty` gives."""
        return self.inner_loss(lam, theta, without=self.objective.closed_form_names)

    def separable_penalty(self) -> SeparablePenalty | None:
        """The penalties with closed-form derivatives, or ``None`` if no kind has one."""
        return self.objective.separable_penalty()

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
        return self.augment_outer or bool(self.objective.outer_penalties(lam))

    def outer_loss(self, lam, theta) -> torch.Tensor:
        """The net's own criterion on the validation split (module in eval mode), over
        chunks of at most 1024 rows weighted by size, plus outer penalties."""
        self._set_mode(False)
        X_val, y_val = self.validation_batch()
        # Validation warps draw from the outer stream, like the validation rows: how
        # often the chain evaluates its outer loss never moves the chain's own stream.
        total = self._criterion_on(lam, theta, X_val, y_val, self.augment_outer,
                                   self.outer_generator)
        return self.objective.validation_objective(total, lam)

    def _criterion_on(self, lam, theta, X_val, y_val, transform: bool,
                      generator=None) -> torch.Tensor:
        """The criterion's mean over ``X_val`` in chunks of at most 1024 rows."""
        n = X_val.shape[0]
        total = None
        for start in range(0, n, OUTER_CHUNK):
            X = X_val[start:start + OUTER_CHUNK]
            y = y_val[start:start + OUTER_CHUNK]
            y_pred = self._forward(lam, theta, X, transform=transform, generator=generator)
            term = self.objective.validation_loss(y_pred, y) * (X.shape[0] / n)
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


def _check_probabilities(probe: torch.Tensor) -> None:
    """Fail before training when a ``NeuralNetClassifier`` with ``NLLLoss`` (skorch's
    default criterion) gets a module whose outputs are not probabilities.

    skorch feeds ``NLLLoss`` the log of the module's output, so a module that ends in a
    linear layer (logits) gives the log of negative numbers: every training step is
    non-finite, which would otherwise surface as a divergence at the first outer
    iteration with no word about the criterion.
    """
    if probe.numel() and not bool(((probe >= 0) & (probe <= 1)).all()):
        lo, hi = float(probe.min()), float(probe.max())
        raise ValueError(
            f"the net's criterion is NLLLoss (skorch's default for NeuralNetClassifier), "
            f"which skorch applies to the log of the module's output, so the module must "
            f"output class probabilities; it output values in [{lo:.3g}, {hi:.3g}] "
            "(logits?). Pass criterion=torch.nn.CrossEntropyLoss to the net for a module "
            "that outputs logits, or end the module with a softmax")


def _detach_tree(x):
    if isinstance(x, dict):
        return {k: _detach_tree(v) for k, v in x.items()}
    return x.detach()


