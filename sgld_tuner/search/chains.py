"""The cv folds' chains, stacked or one by one, behind one interface.

:class:`FoldChain` is one fold: its net, its functional losses and its persistent SGLD
chain. :class:`FoldChains` runs one outer iteration's hypergradient (and a fresh chain's
warm-up) over all folds, as one stacked computation where that is exact
(:class:`~sgld_tuner.search.stacked.FoldBatch`) or fold by fold through joblib, checkpoints
and restores them for rollbacks, and scores their current positions.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from joblib import delayed
from torch.optim.swa_utils import update_bn

from ..core import BilevelProblem, ChainState, InnerSettings, _tree, hypergradient
from ..core.hypergrad import advance_chain
from ..skorch_adapter import OUTER_CHUNK, ModuleRNG, NetProblem
from .scoring import scores_on
from .stacked import FoldBatch

#: training rows whose forward passes recompute a chain's batch norm statistics before
#: each outer iteration and each scoring (:meth:`FoldChain.refresh_batch_norm`), in
#: passes of ``OUTER_CHUNK`` rows
BATCH_NORM_ROWS = 2048
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
                torch.nn.SyncBatchNorm)


@dataclass
class FoldChain:
    """One cv fold: its net, its functional losses and its persistent SGLD chain.

    ``scored`` is what the scorers see: the net, or (estimator a ``Pipeline``) the
    fold's fitted preprocessing followed by the net; ``X_val``/``X_train`` are the
    fold's rows as given (``X_train`` only with ``return_train_score``), with the
    original labels.
    """

    net: object
    problem: NetProblem
    bilevel: BilevelProblem
    state: ChainState
    generator: torch.Generator
    X_val: object
    y_val: np.ndarray
    scored: object = None
    X_train: object = None
    y_train: np.ndarray | None = None
    start_loss: float = math.nan
    fit_time: float = 0.0
    warm_up_steps: int = 0
    budget_steps: int = 0  # the net's own training run in steps on this fold's rows
    _batch_norm: bool | None = field(default=None, repr=False)

    def generator_states(self) -> tuple:
        """The fold's two generators' states: the chain's (noise, minibatches) and the
        outer-loss row draws'."""
        return self.generator.get_state(), self.problem.outer_generator.get_state()

    def set_generator_states(self, states, fresh: bool = False) -> None:
        """Put :meth:`generator_states` back; ``fresh``: into new generator objects (so
        that a worker thread still finishing an interrupted step cannot advance them)."""
        problem = self.problem
        if fresh:
            self.generator = torch.Generator(device=self.generator.device)
            problem.outer_generator = torch.Generator(device=problem.outer_generator.device)
            problem.generator = self.generator
        if isinstance(states, torch.Tensor):  # saved before the outer rows had a generator
            states = (states, problem.outer_generator.get_state())
        self.generator.set_state(states[0])
        problem.outer_generator.set_state(states[1])

    @property
    def module_rng_states(self):
        """The states of the fold's module stream (None before its first draw)."""
        return getattr(getattr(self.problem, "module_rng", None), "states", None)

    def load_chain(self) -> None:
        """Put the chain's position into the net, for scoring. A chain that never
        completed a step (e.g. rolled back at once) sits at theta0."""
        leaves = self.state.theta if self.state.theta is not None else self.bilevel.theta0_leaves
        self.problem.load_theta(_tree.unflatten(leaves, self.bilevel.theta_spec))
        if self.batch_norm:
            recompute_batch_norm(self.problem)

    def resume_minibatches(self) -> None:
        """The fold's minibatches continue from the chain's step count (after a
        rollback, a resume or steps the chain's state did not count)."""
        self.problem.minibatches.position = self.state.n_steps

    def refresh_batch_norm(self) -> None:
        """Batch norm statistics recomputed at the chain's position, where the module has
        them (:func:`recompute_batch_norm`): before each outer iteration, so that the
        outer loss (eval mode) reads statistics of the weights it evaluates. The module
        then holds the chain's parameters."""
        if self.batch_norm:
            self.load_chain()

    @property
    def batch_norm(self) -> bool:
        """:func:`tracks_batch_norm` of the fold's problem (decided once)."""
        if self._batch_norm is None:
            self._batch_norm = tracks_batch_norm(self.problem)
        return self._batch_norm


def tracks_batch_norm(problem: NetProblem) -> bool:
    """Whether the problem's module has batch norm layers with running statistics (and
    tensor inputs to recompute them from)."""
    return torch.is_tensor(problem.X_train) and any(
        isinstance(m, _BATCH_NORMS) and m.track_running_stats
        for m in problem.module.modules())


def recompute_batch_norm(problem: NetProblem) -> None:
    """Recompute the running statistics of the module's batch norm layers at the weights
    it holds, from up to ``BATCH_NORM_ROWS`` training rows spread evenly over the fold
    (``torch.optim.swa_utils.update_bn``).

    A chain's running statistics trail its weights by the layers' momentum, and under an
    adaptive optimizer's preconditioned noise the weights that feed a batch norm (whose
    loss does not see their scale) grow fast enough that eval mode (the outer loss, the
    scores) read them against statistics of much smaller weights: the chains of an Adam
    net with batch norm scored far below the net, and the race ranked lrs by it
    (``docs/reliability.md``, the fifth sweep). Dropout's draws in the pass come from a
    forked stream (the chain's streams do not move)."""
    X = problem.X_train
    rows = X[::max(1, -(-X.shape[0] // BATCH_NORM_ROWS))]
    devices = [problem.device] if problem.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        update_bn(rows.split(OUTER_CHUNK), problem.module)


def fold_hypergradient(fold: FoldChain, lam_values, settings: InnerSettings):
    """One outer iteration's hypergradient on one fold (runs in a joblib worker); a fresh
    chain first runs its ``warm_up_steps`` at these values.

    Returns the fold too: with process-based backends it comes back as an updated copy.
    """
    started = time.perf_counter()
    lam = [t.detach().clone().requires_grad_(True) for t in lam_values]
    fold.refresh_batch_norm()
    fold.resume_minibatches()
    if fold.state.n_steps == 0 and fold.warm_up_steps:
        advance_chain(fold.bilevel, lam, fold.state, settings, fold.generator,
                      fold.warm_up_steps)
    result = hypergradient(fold.bilevel, lam, fold.state, settings, fold.generator)
    fold.fit_time += time.perf_counter() - started
    return fold, result


class FoldChains:
    """All folds' chains: one interface whether they run stacked or one by one.

    Parameters
    ----------
    folds : list of FoldChain
    batch : FoldBatch or None
        The folds stacked into one computation (``None``: fold by fold).
    """

    def __init__(self, folds: list, batch: FoldBatch | None = None):
        self.folds, self.batch = folds, batch

    @property
    def stacked(self) -> bool:
        return self.batch is not None

    def hypergradient(self, lam, settings: InnerSettings, parallel):
        """The folds' mean hypergradient, mean outer loss and inner loss(es) at ``lam``
        (stacked where the states stack now, else one joblib task per fold)."""
        stacked = self._stacked(lam, settings) if self.batch is not None else None
        if stacked is not None:
            return stacked
        outputs = parallel(delayed(fold_hypergradient)(fold, [t.detach() for t in lam],
                                                       settings) for fold in self.folds)
        results = [res for _, res in outputs]
        self.folds = [fold for fold, _ in outputs]
        grad = [torch.stack([r.grad[i] for r in results]).mean(0) for i in range(len(lam))]
        return (grad, float(np.mean([r.outer_loss for r in results])),
                [r.inner_loss for r in results])

    def _stacked(self, lam, settings):
        """As :meth:`hypergradient` from one stacked chain, or ``None`` when the chains'
        states cannot be stacked now (the sequential path then runs)."""
        started = time.perf_counter()
        lam = [t.detach().clone().requires_grad_(True) for t in lam]
        for fold in self.folds:
            fold.resume_minibatches()
        self._warm_up_stacked(lam, settings)
        out = self.batch.hypergradient([f.state for f in self.folds], lam, settings)
        if out is None:
            return None
        result, states = out
        k = len(self.folds)
        share = (time.perf_counter() - started) / k
        for fold, state in zip(self.folds, states):
            fold.state = state
            fold.fit_time += share
        # The stacked losses and hypergradient are sums over the folds.
        return [g / k for g in result.grad], result.outer_loss / k, [result.inner_loss / k]

    def _warm_up_stacked(self, lam, settings) -> None:
        """Fresh chains' ``warm_up_steps``: stacked when every fold starts fresh with the
        same count (as the first outer iteration has it), else fold by fold."""
        fresh = [f for f in self.folds if f.state.n_steps == 0 and f.warm_up_steps]
        if not fresh:
            return
        steps = {f.warm_up_steps for f in self.folds}
        states = None
        if len(fresh) == len(self.folds) and len(steps) == 1:
            states = self.batch.warm_up([f.state for f in self.folds], lam, settings,
                                        steps.pop())
        if states is not None:
            for fold, state in zip(self.folds, states):
                fold.state = state
            return
        for fold in fresh:
            advance_chain(fold.bilevel, lam, fold.state, settings, fold.generator,
                          fold.warm_up_steps)

    # -- rollbacks ----------------------------------------------------------------------
    def checkpoint(self) -> tuple:
        """What a rollback needs of the chains. Chains and strategies replace (never
        mutate) their tensors and states, which the core enforces
        (:func:`~sgld_tuner.core.hypergrad.sgld_hypergrad`), so a shallow copy of each
        whole ``ChainState`` suffices; generator states are copied."""
        return ([copy.copy(f.state) for f in self.folds],
                [f.generator_states() for f in self.folds],
                [f.module_rng_states for f in self.folds],
                [f.fit_time for f in self.folds])

    def restore(self, checkpoint: tuple) -> None:
        """Roll back to ``checkpoint``. New fold, state and generator objects, so that a
        worker thread still finishing an interrupted step cannot write into them."""
        chains, gen_states, module_states, fit_times = checkpoint
        restored = []
        for fold, chain, gen_state, module_state, fit_time in zip(
                self.folds, chains, gen_states, module_states, fit_times):
            old = getattr(fold.problem, "module_rng", None)
            if old is not None:
                fold.problem.module_rng = ModuleRNG(old.seed, old.device, module_state)
            fold = copy.copy(fold)
            fold.set_generator_states(gen_state, fresh=True)
            fold.state, fold.fit_time = copy.copy(chain), fit_time
            restored.append(fold)
        self.folds = restored

    # -- scoring ------------------------------------------------------------------------
    def score(self, scorers: dict, error_score, parallel, params=None) -> list:
        """Each fold's ``(test scores, train scores or None, score time, errors)`` at
        its chain's current position (:func:`score_fold`); ``params``: per fold, the
        scorers' routed metadata."""
        params = params or [None] * len(self.folds)
        return parallel(delayed(score_fold)(fold, scorers, error_score, p)
                        for fold, p in zip(self.folds, params))

def score_fold(fold: FoldChain, scorers: dict, error_score, params: dict | None = None):
    """Scores of the fold's current chain position on its validation split, on its
    training rows too when the fold keeps them (``return_train_score``), the time the
    validation scores took, and the validation scorers' failures.

    ``params``: ``{"test": {metric: kwargs}, "train": {...}}``, the scorers' metadata
    sliced to the fold's rows.
    """
    started = time.perf_counter()
    fold.load_chain()
    params, errors = params or {}, []
    test = scores_on(fold.scored, fold.X_val, fold.y_val, scorers, error_score, errors,
                     params.get("test"))
    score_time = time.perf_counter() - started
    on_train = None
    if fold.X_train is not None:
        on_train = scores_on(fold.scored, fold.X_train, fold.y_train, scorers, error_score,
                             None, params.get("train"))
    return test, on_train, score_time, errors
