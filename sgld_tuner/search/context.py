"""What one ``fit`` searches with, built once: data, folds, net factory, scorers, settings.

:class:`FitContext` is the seam between the scikit-learn plumbing (``SGLDHyperTuner``
validates and builds it) and the search (lanes and schedules read it). The tuner
completes it before the search starts (the final scorers, the refit metric, the
scorers' routed metadata); during the search only :attr:`FitContext.recursion` is set
(once, from the first fold's bound kinds) and user callbacks' errors are collected.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from joblib import hash as joblib_hash
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing
from torch.utils.data import DataLoader

from ..core import ChainState, InnerSettings, make_generator
from ..core.recursions import TrackedRecursion, resolve_recursion
from ..learned_net import make_learned_net
from ..optimizers import chain_dynamics, net_weight_decay
from ..skorch_adapter import ModuleRNG, NetProblem
from .chains import FoldChain
from .settings import OuterSettings, SamplerSettings

# InnerSettings fields the sampler's own fields set (and keep_samples: the search keeps
# no samples); every other field is a valid ``SamplerSettings.options`` key.
SET_BY_SAMPLER = ("method", "inner_lr", "burn_in", "n_samples", "temperature",
                  "noise_scale", "noise", "chain", "recursion", "keep_samples")


#: net settings that change how a net trains but neither its start nor its criterion:
#: lanes that differ only in them share a fold's ``init="auto"`` calibration
TRAINING_ONLY = ("lr", "max_epochs", "batch_size", "optimizer")
TRAINING_ONLY_PREFIXES = ("optimizer__", "iterator_train__")


def derived_seed(seed) -> int:
    """Seed of one of a fold's side streams (dropout; outer-loss rows), derived from
    its seeds without drawing from any generator (so the chain's stream is unaffected)."""
    return int(np.random.SeedSequence([int(v) for v in seed]).generate_state(1)[0])


def net_input(X, ids: bool = False) -> np.ndarray:
    """A Pipeline's transformed rows as the net takes them: dense float32 (int64 when
    they are token ids for a module with an embedding)."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.ascontiguousarray(X, dtype=np.int64 if ids else np.float32)


#: Tracked-adjoint steps per outer iteration at most, where the burn-in grows to span the
#: net's training run: what a chain of ``B + M = 50`` steps takes at the default period.
MAX_ADJOINT_STEPS = 10


def spanning_adjoint_period(steps: int) -> int:
    """The tracked adjoint's period (``curvature_every``) on outer iterations of
    ``steps`` inner steps that grew to span the net's training run: the core's default,
    or longer so that it steps at most :data:`MAX_ADJOINT_STEPS` times per iteration.
    The adjoint carries over the persistent chain's ``n_outer`` iterations, so its steps
    per iteration need not grow with the data, while a step every 5th made its double
    backward and outer gradient a fixed share of every chain step. Period 10 searched
    as period 5 on small data (``benchmarks/results/search_effect_curvature_every_k10.md``).
    """
    return TrackedRecursion.default_period(steps, MAX_ADJOINT_STEPS)


@dataclass
class FitContext:
    """Everything a search reads, built once per ``fit``.

    ``X`` and ``y`` are validated (``y`` holds class codes ``0..C-1`` for classifiers,
    ``classes`` their labels); ``keeps_ids(X)`` says whether integer rows stay token ids.
    """

    estimator: object
    hyperparams: dict
    X: object
    y: np.ndarray
    classes: np.ndarray | None
    net_takes_classes: bool
    sampler: SamplerSettings
    outer: OuterSettings
    n_outer: int
    scorers: dict
    best_key: str
    multimetric: bool
    keeps_ids: Callable
    n_jobs: int | None = None
    error_score: object = np.nan
    return_train_score: bool = False
    verbose: int = 0
    callbacks: list = field(default_factory=list)
    recursion: str = "auto"
    callback_errors: list = field(default_factory=list)
    #: per fold, the scorers' routed metadata sliced to its rows (or None)
    score_params: list | None = None
    #: ``time.perf_counter()`` when the fit began: ``outer.timeout`` counts from it
    #: across all the fit's lanes
    started: float = field(default_factory=time.perf_counter)
    #: each split's rows (and fitted preprocessing), shared by every lane of a race: a
    #: copy per lane held the data set once per candidate (benchmarks/results/scale.md)
    fold_rows: dict = field(default_factory=dict, repr=False)
    #: each fold's ``init="auto"`` calibration gradient, shared by the lanes whose nets
    #: start alike (a race's lr candidates): a pass over the fold's rows per lane saved
    calibrations: dict = field(default_factory=dict, repr=False)
    #: the messages of the chains' warnings already given in this fit (every lane, and
    #: every rollback's shrunken step, reads the net's optimizer again)
    warned: set = field(default_factory=set, repr=False)

    @property
    def is_pipeline(self) -> bool:
        return isinstance(self.estimator, Pipeline)

    @property
    def net(self):
        """The skorch net: ``estimator`` itself, or the last step of a ``Pipeline``."""
        return self.estimator.steps[-1][1] if self.is_pipeline else self.estimator

    def labels(self, codes):
        """Original class labels of codes ``0..C-1`` (classifiers); ``codes`` otherwise."""
        return self.classes[codes] if self.classes is not None else codes

    def callback_failure(self, engine):
        """The exception a user callback raised (the search then ended after that
        iteration, its results kept), with the engine's stop reason saying so; else
        None."""
        if not self.callback_errors:
            return None
        iteration, exc = self.callback_errors[0]
        engine.stop_reason = (f"a callback raised {type(exc).__name__}: {exc} after outer "
                              f"iteration {iteration}")
        return exc

    def lane_net(self, net_params: dict | None = None):
        """The user's net with a lane's ``net_params`` (e.g. ``{"lr": 0.3}``) set."""
        net = self.net
        return net if not net_params else clone(net).set_params(**net_params)

    def inner_settings(self, inner_lr_scale: float = 1.0, net_params: dict | None = None,
                       budget_steps: int = 0, train_rows: int = 0) -> InnerSettings:
        """The chains' settings; the inner step defaults to the lane's net's ``lr``.

        Where the net's own training run (``budget_steps`` per fold) is longer than
        ``n_outer`` outer iterations of ``burn_in + n_samples`` steps, each iteration's
        burn-in grows so that ``n_outer`` iterations span it: the chains reach the
        horizon the refit trains at, and a training budget takes ``n_outer`` outer steps
        at any number of rows (not one per ``burn_in + n_samples`` steps, which let the
        hyperparameters drift many times further on large data than on small). Only
        for persistent SGLD chains (the unrolled baselines keep every step's graph) and
        a search (``n_outer=1``, the no-search control, refits the start values).
        A grown iteration keeps the tracked adjoint's steps per outer iteration as
        they are on small data (:func:`spanning_adjoint_period`).
        ``train_rows``: the fewest training rows of a lane's folds (``"auto"``
        temperature)."""
        sampler, net = self.sampler, self.lane_net(net_params)
        burn_in = sampler.burn_in
        if sampler.method == "sgld" and sampler.chain == "persistent" and self.n_outer > 1:
            burn_in = max(burn_in, math.ceil(budget_steps / max(1, self.n_outer))
                          - sampler.n_samples)
        inner_lr = sampler.inner_lr if sampler.inner_lr is not None else net.get_params()["lr"]
        # The chains train like the net: its optimizer picks the sampler (options may
        # still override it).
        dynamics = self._chain_dynamics(net)
        if sampler.method != "sgld":  # no sampler: AdamW's decay stays an L2 term
            dynamics.pop("decoupled_decay", None)
        options = {**dynamics, **InnerSettings.check_options(sampler.options, SET_BY_SAMPLER)}
        if burn_in > sampler.burn_in and self.recursion == "tracked":
            options.setdefault("curvature_every",
                               spanning_adjoint_period(burn_in + sampler.n_samples))
        return InnerSettings(method=sampler.method, inner_lr=float(inner_lr) * inner_lr_scale,
                             burn_in=burn_in, n_samples=sampler.n_samples,
                             temperature=sampler.temperature_for(train_rows),
                             noise_scale=sampler.noise_scale, noise=sampler.noise,
                             chain=sampler.chain, recursion=self.recursion,
                             **options).validate()

    def _chain_dynamics(self, net) -> dict:
        """:func:`~sgld_tuner.optimizers.chain_dynamics` of a lane's net, each of its
        warnings once per fit."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dynamics, _ = chain_dynamics(net)
        for w in caught:
            if str(w.message) not in self.warned:
                self.warned.add(str(w.message))
                warnings.warn(w.message, stacklevel=4)
        return dynamics

    def resolve_recursion(self, fold: FoldChain) -> None:
        """Resolve ``recursion="auto"`` once, from the kinds bound to the first fold."""
        rewrites = any(b.modifies_loss for b in fold.problem.bound.values())
        self.recursion = resolve_recursion(self.sampler.recursion, False, rewrites)

    def make_fold(self, train, val, seed, net_params: dict | None = None) -> FoldChain:
        """One fold's chain: a seeded net, the rows it sees, its losses and streams."""
        # The user's class with learned-net plumbing and no hyperparameters: it predicts
        # the original labels, one probability column per class, so that scorers see
        # what GridSearchCV's would (the chains train on codes 0..C-1).
        net = make_learned_net(self.lane_net(net_params), {}, {})
        overrides, n_classes = {"verbose": 0}, None
        if self.classes is not None and self.net_takes_classes:
            overrides["classes"] = list(self.classes)
            n_classes = len(self.classes)
        net.set_params(**overrides)
        X_train, X_val, net_train, net_val, scored = self._fold_inputs(train, val, net)
        device = getattr(net, "device", "cpu") or "cpu"
        generator = make_generator(int(seed[1]), device)
        # The paper transforms validation images too when learning invariances.
        augments = any(h.transforms_validation_inputs for h in self.hyperparams.values())
        batch_size, batch_order, drop_last = training_iterator(net)
        if self.sampler.batch_size is not None:
            batch_size = self.sampler.batch_size
        y = self.y
        # skorch initialises the module from torch's global RNG (lazy modules only on the
        # first forward, inside NetProblem): seed it without disturbing the caller's stream.
        calibration_key = self._calibration_key(train, seed, net_params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed[0]))
            net.initialize()
            shareable = not list(net.module_.buffers())
            problem = NetProblem(net, self.hyperparams, net_train, y[train], net_val, y[val],
                                 train_rows=np.asarray(train), n_train_total=len(y),
                                 batch_size=batch_size, generator=generator,
                                 augment_outer=augments, n_classes=n_classes,
                                 outer_batch_size=self.sampler.outer_batch_size,
                                 module_rng=ModuleRNG(derived_seed(seed), device),
                                 outer_generator=make_generator(derived_seed((*seed, 1)),
                                                                device),
                                 data_grads=self.calibrations.get(calibration_key),
                                 batch_order=batch_order, drop_last=drop_last)
        if shareable and problem.data_grads is not None:
            self.calibrations[calibration_key] = problem.data_grads
        # The net's own optimizer__weight_decay stays in the chain's training loss.
        bilevel = problem.bilevel(weight_decay=net_weight_decay(
            net, decoupled_in_sampler=self.sampler.method == "sgld"))
        keep_train = self.return_train_score
        # One training run of the net on this fold: max_epochs passes in batches.
        budget = int(net.max_epochs) * problem.minibatches.steps_per_pass
        return FoldChain(net=net, problem=problem, bilevel=bilevel, state=ChainState(),
                         generator=generator, X_val=X_val, y_val=self.labels(y[val]),
                         scored=scored, X_train=X_train if keep_train else None,
                         y_train=self.labels(y[train]) if keep_train else None,
                         start_loss=problem.start_loss(),
                         warm_up_steps=self._warm_up_steps(budget), budget_steps=budget)

    @staticmethod
    def _calibration_key(train, seed, net_params: dict | None) -> tuple:
        """What a fold's calibration gradient depends on: its rows, its seeds (the module's
        start) and the raced settings other than those of the training run alone."""
        shaping = {name: value for name, value in (net_params or {}).items()
                   if name not in TRAINING_ONLY and not name.startswith(TRAINING_ONLY_PREFIXES)}
        return _rows_key(train), tuple(int(v) for v in seed), joblib_hash(shaping)

    def _warm_up_steps(self, budget: int) -> int:
        """``warm_up`` in inner steps for a fold whose net trains ``budget`` steps."""
        warm_up = self.sampler.warm_up
        if not warm_up:
            return 0
        return budget if warm_up == "epochs" else int(warm_up)

    def lr_ramp_iterations(self, folds, settings: InnerSettings) -> int:
        """``outer.lr_ramp`` in outer iterations (``"auto"``: until the chains have run
        one training budget of the net, at most ``n_outer``)."""
        if self.outer.lr_ramp != "auto":
            return int(self.outer.lr_ramp)
        budget = max(fold.budget_steps for fold in folds)
        return min(self.n_outer, math.ceil(budget / max(1, settings.steps)))

    def _fold_inputs(self, train, val, net):
        """The fold's rows as given and as the net sees them, and what scorers see.

        For a ``Pipeline``, a clone of its preprocessing steps is fit on the fold's
        training rows only and transforms both splits, as in
        ``GridSearchCV(Pipeline(...))``; the scorers see that fitted preprocessing
        followed by the fold's net. Rows and preprocessing are made once per split and
        shared by the lanes that train on it.

        Returns
        -------
        X_train, X_val, net_train, net_val, scored
        """
        key = (_rows_key(train), _rows_key(val))
        if key not in self.fold_rows:
            self.fold_rows[key] = self._split_rows(train, val)
        X_train, X_val, net_train, net_val, preprocess = self.fold_rows[key]
        if preprocess is None:
            return X_train, X_val, net_train, net_val, net
        scored = Pipeline([*preprocess.steps, (self.estimator.steps[-1][0], net)])
        return X_train, X_val, net_train, net_val, scored

    def _split_rows(self, train, val) -> tuple:
        """One split's rows, as given and as the net sees them, and the preprocessing
        fitted on its training rows (None without a ``Pipeline``)."""
        X_train, X_val = _safe_indexing(self.X, train), _safe_indexing(self.X, val)
        if not self.is_pipeline:
            return X_train, X_val, X_train, X_val, None
        preprocess = clone(self.estimator[:-1])
        net_train = preprocess.fit_transform(X_train, self.labels(self.y[train]))
        net_val = preprocess.transform(X_val)
        net_train = net_input(net_train, self.keeps_ids(net_train))
        net_val = net_input(net_val, self.keeps_ids(net_val))
        return X_train, X_val, net_train, net_val, preprocess


def _rows_key(rows) -> tuple:
    rows = np.asarray(rows)
    return rows.shape, hashlib.sha1(np.ascontiguousarray(rows).tobytes()).hexdigest()


def training_iterator(net) -> tuple[int, str, bool]:
    """How the net's training iterator batches its rows: ``(batch_size, batch_order,
    drop_last)`` for :class:`~sgld_tuner.minibatches.Minibatches`. skorch's default, a
    ``DataLoader`` at ``batch_size`` (``iterator_train__batch_size`` where set), passes
    over the rows in order (``iterator_train__shuffle=True``: shuffled), ending each pass
    with its partial batch (unless ``iterator_train__drop_last``); another iterator or
    a custom sampler: independent draws at ``batch_size``."""
    params = net.get_params()
    batch_size = params.get("iterator_train__batch_size", params.get("batch_size", -1))
    if batch_size is None:
        batch_size = -1
    custom = {"iterator_train__sampler", "iterator_train__batch_sampler"} & set(params)
    iterator = params.get("iterator_train")
    if custom or not (isinstance(iterator, type) and issubclass(iterator, DataLoader)):
        return batch_size, "draws", False
    order = "shuffled" if params.get("iterator_train__shuffle", False) else "ordered"
    return batch_size, order, bool(params.get("iterator_train__drop_last", False))
