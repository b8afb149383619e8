"""``SGLDHyperTuner``: HPO-SGLD as a scikit-learn meta-estimator over skorch nets.

A thin shell: scikit-learn does validation, cross-validation and scoring; joblib runs the
folds; ``sgld_tuner.core`` computes hypergradients; ``skorch_adapter`` turns the net into
functional inner/outer losses and builds the refit net with the learned values.
"""
from __future__ import annotations

import copy
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real

import joblib
import numpy as np
import scipy.sparse as sp
import torch
from joblib import Parallel, delayed
from joblib import hash as joblib_hash
from sklearn.base import (
    BaseEstimator,
    MetaEstimatorMixin,
    clone,
    is_classifier,
    is_regressor,
)
from sklearn.metrics import check_scoring
from sklearn.metrics._scorer import _check_multimetric_scoring
from sklearn.model_selection import check_cv
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .core import (
    METHODS,
    BilevelProblem,
    ChainState,
    InnerSettings,
    _tree,
    hypergradient,
    make_generator,
    make_outer_optimizer,
)
from .core.engine import (
    BLOWUP_FACTOR,
    Callbacks,
    Listener,
    OracleResult,
    OuterLoop,
    ProgressBar,
    RollbackOnNonFinite,
    Timeout,
    all_finite,
    blowup_limit,
    warn_at_caller,
)
from .core.hypergrad import advance_chain
from .core.recursions import RECURSIONS, resolve_recursion
from .fold_batch import AUTO_MAX_WEIGHTS, FoldBatch
from .hyperparams import Hyperparameter
from .optimizers import chain_dynamics, net_weight_decay
from .results import build_cv_results, build_history
from .skorch_adapter import ModuleRNG, NetProblem, make_learned_net, takes_ids


class SearchInterrupted(RuntimeWarning):
    """The search ended early (KeyboardInterrupt, timeout or divergence); results so far are kept."""


class UnmovedSearchWarning(UserWarning):
    """The search ended with its hyperparameters where they started."""


class DivergenceWarning(RuntimeWarning):
    """A non-finite loss or hypergradient; the step was rolled back and shrunk."""


class OverfittingWarning(UserWarning):
    """The chains fit their training rows ever closer while the validation loss rises."""


class UndertrainedWarning(UserWarning):
    """The refit net, trained for the net's own budget, scores below the longer-trained
    chains the search scored: the net's ``max_epochs`` or ``lr`` leaves it undertrained."""


def _rule(name: str) -> Interval:
    """scikit-learn's constraint for an inner setting, from its one rule in
    :attr:`InnerSettings.BOUNDS <sgld_tuner.core.problem.InnerSettings.BOUNDS>`."""
    kind, low, high, closed = InnerSettings.BOUNDS[name]
    return Interval(kind, low, high, closed=closed)


def _estimator_has(attr):
    """Delegate to the refit estimator, as GridSearchCV does."""

    def check(self):
        if hasattr(self, "best_estimator_"):
            getattr(self.best_estimator_, attr)
            return True
        getattr(self.estimator, attr)
        return bool(self.refit)

    return check


@dataclass
class _SearchState:
    """Everything a search needs to continue exactly where it stopped (pickles as is)."""

    data_hash: str
    splits: list
    seeds: np.ndarray
    refit_seed: int
    chain_states: list
    generator_states: list
    fit_times: list
    last_fit_times: list
    lam: list | None = None
    lam_spec: object = None
    optimizer_state: dict | None = None
    iteration: int = 0
    outer_lr_scale: float = 1.0
    inner_lr_scale: float = 1.0
    best_value: float = -np.inf
    points: list = field(default_factory=list)
    records: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    module_rng_states: list | None = None
    settings_hash: dict | None = None


@dataclass
class _FoldChain:
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


def tuner_recursion(recursion: str, bound: dict) -> str:
    """``recursion``, with ``"auto"`` resolved where the tuner knows better than the core.

    A kind that rewrites the training loss itself (``TaylorLoss``) gets ``"damped"``: a
    learned loss need not have a minimum, nor a positive Hessian, which the tracked
    adjoint's implicit-function hypergradient assumes. On ``benchmarks/loss_learning.py``
    the tracked adjoint led the search to losses that train a warm chain but not a fresh
    net (80-90% test error after the refit on digits), the damped recursion to 5.1-5.4%.
    ``bound``: the bound kinds by name (``NetProblem.bound``).
    """
    if recursion == "auto" and any(b.modifies_loss for b in bound.values()):
        return "damped"
    return recursion


def _fold_hypergradient(fold: _FoldChain, lam_values, settings: InnerSettings):
    """One outer iteration's hypergradient on one fold (runs in a joblib worker); a fresh
    chain first runs its ``warm_up_steps`` at these values.

    Returns the fold too: with process-based backends it comes back as an updated copy.
    """
    started = time.perf_counter()
    lam = [t.detach().clone().requires_grad_(True) for t in lam_values]
    if fold.state.n_steps == 0 and fold.warm_up_steps:
        advance_chain(fold.bilevel, lam, fold.state, settings, fold.generator,
                      fold.warm_up_steps)
    result = hypergradient(fold.bilevel, lam, fold.state, settings, fold.generator)
    fold.fit_time += time.perf_counter() - started
    return fold, result


def _score_fold(fold: _FoldChain, scorers: dict, error_score):
    """Scores of the fold's current chain position on its validation split, on its
    training rows too when the fold keeps them (``return_train_score``), and the time
    the validation scores took.

    Returns
    -------
    test_scores, train_scores or None, score_time
    """
    started = time.perf_counter()
    _load_chain(fold)
    test = _scores_on(fold.scored, fold.X_val, fold.y_val, scorers, error_score)
    score_time = time.perf_counter() - started
    train = None
    if fold.X_train is not None:
        train = _scores_on(fold.scored, fold.X_train, fold.y_train, scorers, error_score)
    return test, train, score_time


def _load_chain(fold: _FoldChain) -> None:
    """Put the fold's chain position into its net, for scoring. A chain that never
    completed a step (e.g. rolled back at once) sits at theta0."""
    leaves = fold.state.theta if fold.state.theta is not None else fold.bilevel.theta0_leaves
    fold.problem.load_theta(_tree.unflatten(leaves, fold.bilevel.theta_spec))


def _score_fold_rows(fold: _FoldChain, X, y, scorers: dict) -> dict:
    """Scores of the fold's chain, where it is now, on rows ``X, y`` (NaN on failure)."""
    _load_chain(fold)
    return _scores_on(fold.scored, X, y, scorers, np.nan)


def _scores_on(estimator, X, y, scorers: dict, error_score) -> dict:
    """Every metric of ``scorers`` for ``estimator`` on ``X, y``; a failing or non-finite
    score is ``error_score`` (with a warning), or raises with ``"raise"``."""
    scores, outputs = {}, {}
    for name, scorer in scorers.items():
        try:
            # A callable returning a dict serves all its metrics from one call (and its
            # failure fails them all, as in GridSearchCV).
            if id(scorer) not in outputs:
                try:
                    # skorch's predict draws a DataLoader seed from torch's global RNG:
                    # leave the caller's stream untouched.
                    with ModuleRNG.isolated():
                        outputs[id(scorer)] = scorer(estimator, X, y)
                except Exception as exc:  # noqa: BLE001 - re-raised below, per metric
                    outputs[id(scorer)] = exc
            value = outputs[id(scorer)]
            if isinstance(value, Exception):
                raise value
            value = float(value[name] if isinstance(value, dict) else value)
            if not math.isfinite(value):
                raise ValueError(f"scorer {name!r} returned {value}")
        except Exception as exc:  # noqa: BLE001 - reported through error_score like sklearn
            if error_score == "raise":
                raise
            warnings.warn(f"scoring {name!r} failed ({exc}); using error_score={error_score}",
                          RuntimeWarning, stacklevel=4)
            value = float(error_score)
        scores[name] = value
    return scores


def _derived_seed(seed) -> int:
    """Seed of one of a fold's side streams (dropout; outer-loss rows), derived from
    its seeds without drawing from any generator (so the chain's stream is unaffected)."""
    return int(np.random.SeedSequence([int(v) for v in seed]).generate_state(1)[0])


def _fingerprint(value) -> str:
    """``joblib.hash`` of ``value``, or its type's name where that is not stable."""
    if isinstance(value, np.random.RandomState) or \
            isinstance(getattr(value, "random_state", None), np.random.RandomState):
        return type(value).__name__
    try:
        return joblib_hash(value)
    except Exception:  # noqa: BLE001 - e.g. a generator of splits cannot be pickled
        return type(value).__name__


@contextmanager
def _watch_sigint(interrupted: list):
    """Append to ``interrupted`` when SIGINT (Ctrl-C) arrives in the block, then let it
    act as before (a ``KeyboardInterrupt``), so that a fit loop that swallows it (skorch's)
    cannot hide it. Outside the main thread (no signal handlers there) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return

    def handler(signum, frame):
        interrupted.append(signum)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _publish(state, fields: dict) -> None:
    """Set ``fields`` on the search state: the commit of an iteration's bookkeeping,
    built aside so that a Ctrl-C before it leaves the state untouched."""
    for name, value in fields.items():
        setattr(state, name, value)


def _generator_states(fold) -> tuple:
    """The fold's two generators' states: the chain's (noise, minibatches) and the
    outer-loss row draws'."""
    return fold.generator.get_state(), fold.problem.outer_generator.get_state()


def _set_generators(fold, states, fresh: bool = False) -> None:
    """Put :func:`_generator_states` back; ``fresh``: into new generator objects (so that
    a worker thread still finishing an interrupted step cannot advance them)."""
    problem = fold.problem
    if fresh:
        fold.generator = torch.Generator(device=fold.generator.device)
        problem.outer_generator = torch.Generator(device=problem.outer_generator.device)
        problem.generator = fold.generator
    if isinstance(states, torch.Tensor):  # saved before the outer rows had a generator
        states = (states, problem.outer_generator.get_state())
    fold.generator.set_state(states[0])
    problem.outer_generator.set_state(states[1])


def _regrouped(saved: dict, optimizer) -> dict:
    """``saved`` (an outer optimizer's ``state_dict``) fitted to ``optimizer``'s groups.

    A search saved before each kind had a group of its own has one group over all
    leaves, in the same leaf order: its per-leaf state (Adam's moments) carries over, and
    each new group keeps its own ``lr`` (the kind's scale) times the saved shrink factor.
    """
    groups = optimizer.state_dict()["param_groups"]
    if len(saved["param_groups"]) == len(groups):
        return saved
    (old,) = saved["param_groups"]
    base = optimizer.defaults["lr"]
    regrouped = [{**old, "params": g["params"], "lr": g["lr"] * old["lr"] / base}
                 for g in groups]
    return {"state": saved["state"], "param_groups": regrouped}


def _module_rng_states(problem):
    """The states of a fold's module stream (None before its first draw, or without one)."""
    return getattr(getattr(problem, "module_rng", None), "states", None)


def _net_takes_ids(net) -> bool:
    """:func:`~sgld_tuner.skorch_adapter.takes_ids` for a net whose ``module`` may be a
    class or a factory: then the module alone is built as skorch builds it (with the
    net's ``module__`` parameters, on the CPU), with an RNG of its own (the caller's
    stream is left alone)."""
    module = net.module
    if not isinstance(module, torch.nn.Module):
        with torch.random.fork_rng(devices=[]):
            module = net.initialized_instance(module, net.get_params_for("module"))
    return takes_ids(module)


def _net_input(X, ids: bool = False) -> np.ndarray:
    """A Pipeline's transformed rows as the net takes them: dense float32 (int64 when
    they are token ids for a module with an embedding)."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.ascontiguousarray(X, dtype=np.int64 if ids else np.float32)


class _FoldOracle:
    """The tuner's hypergradient oracle: the mean over the folds' chains, one joblib task
    per fold. Holds the folds (replaced by the workers' copies after each call) and the
    inner settings (replaced when a rollback shrinks the inner step).

    A chain can blow up without a NaN (a step far too large: losses of 1e20 and more).
    An outer loss above :func:`~sgld_tuner.core.engine.blowup_limit` of the folds'
    validation loss at the initial weights counts as not finite, so the engine's policy
    rolls it back like a NaN.
    """

    def __init__(self, folds: list, settings: InnerSettings, parallel: Parallel,
                 batch: FoldBatch | None = None):
        self.folds, self.settings, self.parallel = folds, settings, parallel
        self.batch = batch
        self.limit = blowup_limit(float(np.mean([f.start_loss for f in folds])))
        self.warned = False

    def _blown_up(self, outer_loss: float) -> bool:
        """Whether a finite ``outer_loss`` is a divergence (warns the first time)."""
        if not outer_loss > self.limit:
            return False
        if not self.warned:
            warn_at_caller(
                f"the outer loss reached {outer_loss:.3g}, more than {BLOWUP_FACTOR:g} times "
                "the validation loss at the initial weights: treated as a divergence (a "
                "step too large for the net, e.g. its lr or the tuner's inner_lr)",
                DivergenceWarning)
            self.warned = True
        return True

    def __call__(self, lam) -> OracleResult:
        stacked = self._stacked(lam) if self.batch is not None else None
        if stacked is not None:
            grad, outer_loss, inner_losses = stacked
        else:
            outputs = self.parallel(
                delayed(_fold_hypergradient)(fold, [t.detach() for t in lam], self.settings)
                for fold in self.folds)
            results = [res for _, res in outputs]
            self.folds = [fold for fold, _ in outputs]
            grad = [torch.stack([r.grad[i] for r in results]).mean(0) for i in range(len(lam))]
            outer_loss = float(np.mean([r.outer_loss for r in results]))
            inner_losses = [r.inner_loss for r in results]
        # Every fold's inner loss must be finite, not just their mean.
        finite = (math.isfinite(outer_loss) and all(math.isfinite(v) for v in inner_losses)
                  and all_finite(grad) and not self._blown_up(outer_loss))
        inner_loss = float(np.mean(inner_losses)) if finite else math.nan
        return OracleResult(grad, outer_loss, inner_loss, finite)

    def _stacked(self, lam):
        """The folds' hypergradient mean, outer loss mean and inner loss(es) from one
        stacked chain (:class:`~sgld_tuner.fold_batch.FoldBatch`), or ``None`` when the
        chains' states cannot be stacked now (the sequential path then runs)."""
        started = time.perf_counter()
        lam = [t.detach().clone().requires_grad_(True) for t in lam]
        self._warm_up_stacked(lam)
        out = self.batch.hypergradient([f.state for f in self.folds], lam, self.settings)
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

    def _warm_up_stacked(self, lam) -> None:
        """Fresh chains' ``warm_up_steps``: stacked when every fold starts fresh with the
        same count (as the first outer iteration has it), else fold by fold."""
        fresh = [f for f in self.folds if f.state.n_steps == 0 and f.warm_up_steps]
        if not fresh:
            return
        steps = {f.warm_up_steps for f in self.folds}
        states = None
        if len(fresh) == len(self.folds) and len(steps) == 1:
            states = self.batch.warm_up([f.state for f in self.folds], lam, self.settings,
                                        steps.pop())
        if states is not None:
            for fold, state in zip(self.folds, states):
                fold.state = state
            return
        for fold in fresh:
            advance_chain(fold.bilevel, lam, fold.state, self.settings, fold.generator,
                          fold.warm_up_steps)

    def checkpoint(self, engine):
        """``lam``, the chains and their streams, and the inner settings (a rollback
        after a shrink must put the inner step back too)."""
        return SGLDHyperTuner._checkpoint(engine.lam, self.folds), self.settings

    def restore(self, engine, snapshot) -> None:
        chains, self.settings = snapshot
        self.folds = SGLDHyperTuner._restore(chains, engine.lam, self.folds)


class _GuardedCallback:
    """A user callback whose exception ends the search like a truthy return (so that
    the results so far and the resumable state are kept); ``fit`` re-raises it after
    recording them."""

    def __init__(self, callback, errors: list):
        self.callback, self.errors = callback, errors

    def __call__(self, record):
        try:
            return self.callback(record)
        except Exception as exc:  # noqa: BLE001 - re-raised by fit once results are kept
            self.errors.append((record["iteration"], exc))
            return True


class _SearchRecorder(Listener):
    """The tuner's columns of each record, its evaluation schedule and its resumable state.

    Adds ``diverged``, ``param_<name>`` (scalar summaries) and, every ``eval_every``
    iterations and at the last, the mean test scores of the chains' current positions
    (a new point of ``cv_results_``). What the iteration adds to the search state (the
    point, its snapshot, the best value, ``lam`` and the iteration count) is built aside
    in ``on_record`` and published in ``on_commit``, so that a Ctrl-C before the commit
    leaves the state exactly as it was and one after it leaves the whole iteration.
    """

    def __init__(self, tuner, state, oracle: _FoldOracle, scorers: dict, best_key: str):
        self.tuner, self.state, self.oracle = tuner, state, oracle
        self.scorers, self.best_key = scorers, best_key
        self._pending = None

    def on_iteration_begin(self, engine):
        self._pending = None

    def on_record(self, engine, record):
        tuner, k, folds = self.tuner, record["iteration"], self.oracle.folds
        public = tuner._summaries(folds[0].problem, engine.lam)
        record["diverged"] = False
        record.update({f"param_{name}": v for name, v in public.items()})
        pending = {"iteration": k + 1, "lam": [t.detach().clone() for t in engine.lam]}
        if k % tuner.eval_every == tuner.eval_every - 1 or k == tuner.n_outer - 1:
            published, mean_scores = tuner._scored_point(
                self.state, folds, self.scorers, public, k, engine.lam, self.best_key,
                self.oracle.parallel)
            pending.update(published)
            record.update({f"mean_test_{m if tuner.multimetric_ else 'score'}": v
                           for m, v in mean_scores.items()})
        self._pending = pending

    def on_commit(self, engine, record):
        _publish(self.state, self._pending)


class SGLDHyperTuner(MetaEstimatorMixin, BaseEstimator):
    """Tune continuous hyperparameters of a skorch net by HPO-SGLD, like ``GridSearchCV``.

    Each cv fold runs its own SGLD chain over the net's weights; every outer iteration
    averages the folds' hypergradients and takes one step on the hyperparameters. Points
    of the hyperparameter trajectory are scored every ``eval_every`` iterations and
    reported in ``cv_results_``; the best one is refit on all data.

    Parameters
    ----------
    estimator : skorch NeuralNet, NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor
        Unfitted net, or a ``Pipeline`` ending in one; never modified (cloned per fold
        and for the refit). A ``NeuralNetBinaryClassifier`` takes the labels 0 and 1.
    hyperparams : dict of str -> Hyperparameter
        The differentiable hyperparameters, e.g. ``{"l1": PerWeightL1(init=1e-4)}``.
    n_outer : int, default=50
        Outer (hyperparameter) iterations.
    outer_lr : float, default=0.05
        Step size of the outer optimizer on the unconstrained hyperparameters. Strengths
        (L1, weight decay) are softplus-scaled: near 1e-4 an Adam step of 0.05 changes
        them by about 5% (like a log scale), so ``n_outer * outer_lr`` bounds how many
        e-folds a strength can travel; raise ``outer_lr`` for short searches. Each kind
        steps at ``outer_lr`` times its ``outer_lr_scale`` (one optimizer parameter group
        per kind: 10 for ``TaylorLoss``'s coefficients, 2 for ``SampleWeights``' logits,
        1 for the log-scale kinds), so one value serves every kind.
    outer_optimizer : {"adam", "sgd"} or callable, default="adam"
        A callable is called as ``factory(param_groups, lr=...)`` with one group per kind.
    burn_in, n_samples : int, default=5, 5
        SGLD steps per outer iteration discarded (``B``) and averaged (``M``).
    temperature : float, default=1e-4
        ``tau`` of ``p(theta | lam) ∝ exp(-L_T / tau)``.
    noise_scale : float, default=1.0
        ``kappa``: noise std per step is ``sqrt(2 * inner_lr * tau) * kappa``.
    inner_lr : float, optional
        Inner step size; defaults to the net's ``lr``.
    batch_size : int, optional
        Inner minibatch size; defaults to the net's ``batch_size``.
    method : {"sgld", "rmd", "rmd-fo", "fmd", "ift-cg", "ift-neumann"}, default="sgld"
    recursion : {"auto", "tracked", "damped", "paper", "gibbs"}, default="auto"
        The hypergradient strategy along each fold's chain; ``"auto"`` is ``"tracked"``
        (an adjoint tracked along the chain, chosen by measurement against exact
        references: ``docs/bias.md``), or ``"damped"`` when a kind rewrites the training
        loss itself (``TaylorLoss``: a learned loss need not have a minimum, which the
        adjoint assumes). ``"paper"`` is eq. 22 as published.
    chain : {"persistent", "restart"}, default="persistent"
    cv : int, cv splitter or iterable, default=5
    scoring : str, callable, list, tuple or dict, optional
        As in ``GridSearchCV``; ``None`` uses the net's ``score`` (accuracy / R^2). A
        callable returning a dict is multi-metric (one metric per key); it is called once
        more at the start of ``fit``, on the first fold's untrained net, to learn the keys.
        Scorers see the original class labels.
    refit : bool, str or callable, default=True
        As in ``GridSearchCV``; ``"ensemble"`` also runs an SGLD chain on all data at the
        learned values after the refit and predicts with the average over its samples
        (``ensemble_``, see ``docs/ensemble.md``).
    eval_every : int, default=5
        Score the trajectory every this many outer iterations (and at the last one).
    n_jobs : int, optional
        Folds run in parallel through joblib (any joblib backend, e.g. Dask).
    batch_folds : "auto" or bool, default="auto"
        Run the folds' chains as one computation over stacked weights
        (:mod:`sgld_tuner.fold_batch`): on a small net a step's cost is kernel dispatch,
        paid once for all folds instead of once per fold. Each fold keeps its own
        minibatches, validation rows and noise, so the result equals the sequential
        chains' up to float rounding. Only where stacking is exact (the tracked or
        paper recursion, with any of the chain's samplers: plain, momentum, Adam or
        RMSprop; a module without buffers, tied weights or random layers, whose rows do
        not interact); elsewhere the folds run one by one. ``"auto"``: when ``n_jobs``
        is None or 1 and the net has at most
        ``sgld_tuner.fold_batch.AUTO_MAX_WEIGHTS`` weights (where it measured
        faster, ``benchmarks/fold_batching.py``); ``True``: whatever the size and
        ``n_jobs``; ``False``: never.
    random_state : int, RandomState or None
        Seeds the nets' initialisations and one torch generator per fold.
    verbose : int, default=0
        ``1`` shows a tqdm progress bar with the current validation score.
    callbacks : list of callable, optional
        Each gets the record of every outer iteration (a dict); a truthy return stops.
    timeout : float, optional
        Seconds of search after which it ends; checked after each outer iteration, so
        the last iteration and the refit come on top.
    error_score : "raise" or float, default=nan
        Score of an evaluation that fails. With ``"raise"``, a divergence that persists
        after the rollbacks raises ``FloatingPointError`` instead of ending the search.
    warm_start : bool, default=False
        Continue the previous search on the same data (after an interruption, a
        timeout, :meth:`load`, or with a larger ``n_outer``) instead of starting over.
        The chains' state is kept after ``fit`` only when ``warm_start=True`` or when the
        search ended early, so a finished search holds no per-fold weight copies.
    warm_up : int or "epochs", default=0
        Inner steps each fold's chain runs at the initial values before the first outer
        step (plain Langevin steps, about one training step each). ``"epochs"``: the
        net's own budget, ``max_epochs`` passes over the fold's training rows in batches
        of ``batch_size``, so that the first scored point is a net trained as the refit
        will be. Only for the persistent SGLD chain. The warm-up belongs to the first
        outer iteration: a rollback of that iteration (divergence, Ctrl-C) runs it
        again, and ``timeout`` is checked only after it.
    outer_warmup : int or "auto", default="auto"
        Outer iterations over which the outer step ramps up linearly from
        ``outer_lr / outer_warmup`` to ``outer_lr``. ``"auto"``: until the chains have run
        one training budget of the net (``max_epochs`` passes over a fold's rows), at
        most ``n_outer``. A young chain's hypergradient estimates the sensitivity of a
        trained net, not of the one the chain holds, and can point the other way
        (``benchmarks/chain_age.py``: opposite signs on 2-3 of 3 seeds after 50 steps,
        the same signs after 300); the ramp keeps those first estimates from steering the
        search. 0: no ramp.
    outer_batch_size : int or None, default=128
        Validation rows per evaluation of the outer loss inside the chain (drawn anew
        each step); a split of at most this many rows is used whole. ``None`` uses the
        whole split at every step (exact, the dominant cost on large splits; 128 rows
        kept the test score within noise on digits with 400 validation rows, see
        ``docs/performance.md``). Scoring for ``cv_results_`` always uses the whole split.
    method_options : dict, optional
        Options of the baselines: ``n_inner``, ``cg_iters``, ``cg_damping``,
        ``neumann_iters``, ``neumann_alpha``; and ``curvature_every`` for the tracked
        (default 5) and damped recursions (see ``sgld_tuner.core.InnerSettings``).
    return_train_score : bool, default=False
        As in ``GridSearchCV``: also score each point on the folds' training rows
        (``split<k>_train_<metric>``, ``mean_/std_train_<metric>`` in ``cv_results_``).
        Scoring the training rows costs time, and keeps them per fold during the search.

    Attributes
    ----------
    cv_results_ : dict of numpy arrays
        One row per evaluation point on the hyperparameter trajectory, in
        ``GridSearchCV``'s format; ``param_<name>`` holds a scalar summary.
    best_index_, best_score_, best_params_ : int, float, dict
        ``best_params_`` holds the full learned values (arrays for per-weight kinds).
    best_estimator_ : skorch net
        A fresh net trained on all data with the learned values built in: an instance of
        a subclass of the user's net class (see ``skorch_adapter.learned_class``), with
        the tuner's ``classes_``, predicting the original labels.
    hyperparams_ : dict
        The values at the end of the search.
    history_ : pandas.DataFrame
        One row per outer iteration.
    folds_stacked_ : bool
        Whether the search ran the folds' chains stacked into one computation
        (``batch_folds``).
    granularities_ : dict of str -> str
        The granularity each penalty kind was bound with (``"auto"`` resolved), e.g.
        ``{"l1": "feature"}``; kinds without one are left out.
    recursion_ : str
        The hypergradient strategy the chains used (``recursion``, with ``"auto"``
        resolved), or the baseline's name for another ``method``.
    refit_time_, n_splits_, scorer_, n_features_in_, multimetric_
    classes_ : ndarray
        Class labels (classifiers, and only with ``refit``, as in ``GridSearchCV``).
    """

    _parameter_constraints: dict = {
        # The skorch net (or Pipeline ending in one) is checked in fit, with a short
        # message naming the fix.
        "estimator": [HasMethods(["fit"])],
        "hyperparams": [dict],
        "n_outer": [Interval(Integral, 1, None, closed="left")],
        "outer_lr": [Interval(Real, 0, None, closed="neither")],
        "outer_optimizer": [StrOptions({"adam", "sgd"}), callable],
        "burn_in": [_rule("burn_in")],
        "n_samples": [_rule("n_samples")],
        "temperature": [_rule("temperature")],
        "noise_scale": [_rule("noise_scale")],
        "inner_lr": [_rule("inner_lr"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
        "method": [StrOptions(set(METHODS))],
        "recursion": [StrOptions({"auto", *RECURSIONS})],
        "chain": [StrOptions({"persistent", "restart"})],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set()), callable, list, tuple, dict, str, None],
        "refit": ["boolean", str, callable],
        "eval_every": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "timeout": [Interval(Real, 0, None, closed="neither"), None],
        "error_score": [StrOptions({"raise"}), Real],
        "warm_start": ["boolean"],
        "method_options": [dict, None],
        "outer_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "return_train_score": ["boolean"],
        "warm_up": [Interval(Integral, 0, None, closed="left"), StrOptions({"epochs"})],
        "outer_warmup": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "batch_folds": [StrOptions({"auto"}), "boolean"],
    }

    def __init__(self, estimator, hyperparams, *, n_outer=50, outer_lr=0.05,
                 outer_optimizer="adam", burn_in=5, n_samples=5, temperature=1e-4,
                 noise_scale=1.0, inner_lr=None, batch_size=None, method="sgld",
                 recursion="auto", chain="persistent", cv=5, scoring=None, refit=True,
                 eval_every=5, n_jobs=None, random_state=None, verbose=0, callbacks=None,
                 timeout=None, error_score=np.nan, warm_start=False, method_options=None,
                 outer_batch_size=128, return_train_score=False, warm_up=0,
                 outer_warmup="auto", batch_folds="auto"):
        self.estimator = estimator
        self.hyperparams = hyperparams
        self.n_outer = n_outer
        self.outer_lr = outer_lr
        self.outer_optimizer = outer_optimizer
        self.burn_in = burn_in
        self.n_samples = n_samples
        self.temperature = temperature
        self.noise_scale = noise_scale
        self.inner_lr = inner_lr
        self.batch_size = batch_size
        self.method = method
        self.recursion = recursion
        self.chain = chain
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.eval_every = eval_every
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.timeout = timeout
        self.error_score = error_score
        self.warm_start = warm_start
        self.method_options = method_options
        self.outer_batch_size = outer_batch_size
        self.return_train_score = return_train_score
        self.warm_up = warm_up
        self.outer_warmup = outer_warmup
        self.batch_folds = batch_folds

    # ------------------------------------------------------------------ sklearn plumbing
    def __setstate__(self, state):
        # A tuner pickled before these parameters existed gets their defaults.
        state.setdefault("warm_up", 0)
        state.setdefault("outer_warmup", 0)  # the behaviour it was fitted with
        state.setdefault("batch_folds", "auto")
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            from sklearn.utils import get_tags

            inner = get_tags(self.estimator)
            tags.estimator_type = inner.estimator_type
            tags.classifier_tags = inner.classifier_tags
            tags.regressor_tags = inner.regressor_tags
            tags.target_tags.required = inner.target_tags.required
        except Exception:  # noqa: BLE001 - a non-estimator fails later with a clear TypeError
            pass
        tags.input_tags.sparse = False
        tags.non_deterministic = self.random_state is None
        return tags

    @property
    def _is_classifier(self) -> bool:
        return is_classifier(self.estimator)

    @property
    def _net_takes_classes(self) -> bool:
        """Whether the net has skorch's ``classes`` (NeuralNetClassifier); a binary
        classifier (NeuralNetBinaryClassifier) has not, and wants labels 0 and 1."""
        return "classes" in self._net().get_params(deep=False)

    @property
    def _is_pipeline(self) -> bool:
        return isinstance(self.estimator, Pipeline)

    def _net(self):
        """The skorch net: ``estimator`` itself, or the last step of a ``Pipeline``."""
        return self.estimator.steps[-1][1] if self._is_pipeline else self.estimator

    def _check_estimator_and_hyperparams(self):
        from skorch import NeuralNet

        if self._is_pipeline and not isinstance(self._net(), NeuralNet):
            name, last = self.estimator.steps[-1]
            raise TypeError(
                f"estimator is a Pipeline whose last step {name!r} is a "
                f"{type(last).__name__}; the last step must be a skorch net, e.g. "
                "NeuralNetClassifier(MyModule, lr=0.1)")
        if not isinstance(self._net(), NeuralNet):
            raise TypeError(
                "estimator must be a skorch NeuralNet, NeuralNetClassifier or "
                f"NeuralNetRegressor (or a Pipeline ending in one), got "
                f"{type(self.estimator).__name__}; wrap your torch.nn.Module in one, e.g. "
                "NeuralNetClassifier(MyModule, lr=0.1)")
        if self._is_pipeline and isinstance(self.refit, str) and self.refit == "ensemble":
            raise ValueError("refit='ensemble' needs estimator to be a skorch net, not a "
                             "Pipeline: use refit=True, or preprocess X before the tuner")
        if not self.hyperparams:
            raise ValueError("hyperparams is empty: give at least one, e.g. "
                             "{'l1': PerWeightL1(init=1e-4)}")
        bad = {k: type(v).__name__ for k, v in self.hyperparams.items()
               if not isinstance(v, Hyperparameter)}
        if bad:
            raise TypeError(f"hyperparams values must be sgld_tuner.hyperparams kinds; got {bad}")
        batch_size = self.batch_size if self.batch_size is not None else self._net().batch_size
        if batch_size is None or not (batch_size == -1 or batch_size >= 1):
            raise ValueError(
                f"the net's batch_size={batch_size!r} leaves no rows per training step: pass "
                "batch_size=-1 (full batch) or a positive int, to the net or to the tuner")
        if self.method == "fmd":
            warnings.warn("method='fmd' stores a dim(theta) x dim(lam) Jacobian; it is only "
                          "practical for a handful of hyperparameters", UserWarning, stacklevel=3)

    def _scorers(self):
        """Normalise ``scoring`` into ``{name: scorer}`` and whether it is multi-metric."""
        if isinstance(self.scoring, (list, tuple, set, dict)):
            return _check_multimetric_scoring(self.estimator, self.scoring), True
        return {"score": check_scoring(self.estimator, scoring=self.scoring)}, False

    def _callable_metrics(self, scorers, multimetric, fold):
        """Metric names of a callable ``scoring`` that returns a dict.

        As in ``GridSearchCV``, such a callable makes the search multi-metric; one call on
        the first fold's net (not yet trained) tells the names, so that ``refit`` is
        checked before any training step. A callable that fails here is left to the
        search's ``error_score`` handling.
        """
        if multimetric or not callable(self.scoring):
            return scorers, multimetric
        try:
            with ModuleRNG.isolated():
                probe = self.scoring(fold.scored, fold.X_val, fold.y_val)
        except Exception:  # noqa: BLE001 - reported at scoring time through error_score
            return scorers, multimetric
        if not isinstance(probe, dict):
            return scorers, False
        return {name: self.scoring for name in probe}, True

    def _check_refit(self, metric_names, multimetric):
        refit = self.refit
        if multimetric and isinstance(refit, str) and refit == "ensemble":
            raise ValueError("refit='ensemble' ranks by a single metric; use one scorer")
        if multimetric and (refit is True or (isinstance(refit, str) and refit not in metric_names)):
            # GridSearchCV's wording, so that users (and its tests) recognise it.
            raise ValueError(
                "For multi-metric scoring, the parameter refit must be set to a scorer key "
                "or a callable to refit an estimator with the best parameter setting on "
                "the whole data and make the best_* attributes available for that metric. "
                "If this is not needed, refit should be set to False explicitly. "
                f"{refit!r} was passed (metrics: {metric_names}).")

    def _validate_inputs(self, X, y):
        if y is None:
            # scikit-learn's own "requires y to be passed" error for classifiers/regressors
            validate_data(self, X, y, accept_sparse=False, dtype=None, allow_nd=True)
            raise ValueError("SGLDHyperTuner requires y: the outer loss is the net's "
                             "criterion on the validation targets")
        given = X
        X, y = validate_data(self, X, y, accept_sparse=False, dtype=None, allow_nd=True,
                             multi_output=not self._is_classifier,
                             y_numeric=is_regressor(self.estimator),
                             ensure_all_finite=not self._is_pipeline)
        self._ids_input = None  # asked of the net when integer rows first reach it
        X = self._rows_for_estimator(given, X)
        if self._is_classifier:
            check_classification_targets(y)
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise ValueError(
                    f"y has 1 class only ({encoder.classes_[0]!r}); a classifier needs at "
                    "least 2 classes")
            if not self._net_takes_classes and (
                    len(encoder.classes_) != 2 or set(encoder.classes_.tolist()) != {0, 1}):
                raise ValueError(
                    f"{type(self._net()).__name__} takes the labels 0 and 1 only, got "
                    f"{encoder.classes_.tolist()[:5]}; encode y as 0/1, or use "
                    "NeuralNetClassifier with two outputs")
            self._classes = encoder.classes_
            self._label_encoder = encoder
            y = encoder.transform(y).astype(np.int64)
        elif is_regressor(self.estimator):
            y = np.asarray(y, dtype=np.float32)
        else:  # a plain NeuralNet: the user's criterion decides what y must be
            y = np.asarray(y)
        return X, y

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, groups=None, **fit_params):
        """Run the HPO-SGLD search, then refit the best point on all of ``X, y``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, ...)
            float64 input is accepted and cast to float32, the net's dtype.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels of any type for classifiers (encoded internally; predictions
            are mapped back), numbers for regressors.
        groups : array-like, optional
            Group labels for group-aware cv splitters.
        **fit_params
            Passed as they are to the refit's ``fit`` (``best_estimator_.fit(X, y,
            **fit_params)``; for a ``Pipeline`` as ``<step>__<param>``). The search's
            chains do not use them: they train on the net's criterion with the
            hyperparameters (learn row weights with ``SampleWeights``); a warning says so.

        Returns
        -------
        self

        Raises
        ------
        Exception
            What a callback raised: the search ends after that iteration, its results
            (``cv_results_``, ``best_params_``, ``history_``) and the state a
            ``warm_start`` resume needs are kept, ``stop_reason_`` names the exception,
            no refit is done, and the exception is re-raised.
        """
        self._validate_params()
        self._check_estimator_and_hyperparams()
        if fit_params:
            warnings.warn(f"fit parameters {sorted(fit_params)} reach the refit's fit only; "
                          "the search's chains do not use them", UserWarning, stacklevel=2)
        X, y = self._validate_inputs(X, y)
        scorers, multimetric = self._scorers()
        state = self._resume_or_start(X, y, groups)
        self.n_splits_ = len(state.splits)
        folds = self._start_folds(X, y, state)
        self._auto_recursion = tuner_recursion(self.recursion, folds[0].problem.bound)
        settings = self._settings(state.inner_lr_scale)
        self.recursion_ = (resolve_recursion(settings.recursion, False)
                           if self.method == "sgld" else self.method)
        scorers, best_key = self._set_up_scoring(scorers, multimetric, folds[0])
        engine, oracle = self._run_search(state, folds, settings, scorers, best_key)
        self.folds_stacked_ = oracle.batch is not None
        failure = self._callback_failure(engine)
        self._end_search(state, engine, oracle.folds)
        self._format_results(state, oracle.folds, engine.lam, scorers, best_key)
        for name in ("ensemble_", "best_estimator_", "refit_time_"):
            self.__dict__.pop(name, None)  # never keep what an earlier fit refit
        if failure is not None:
            raise failure
        if self.refit:
            # skorch broadcasts 1-D regression targets against an (n, 1) output into an
            # (n, n) loss; the chains take y as a column there, and so does the refit.
            column = (not self._is_classifier and y.ndim == 1
                      and folds[0].problem.output_shape == (1,))
            trained = self._refit(X, y[:, None] if column else y, state.refit_seed,
                                  oracle.settings.inner_lr, fit_params)
            if trained:  # an interrupted refit is reported as such already
                self._warn_if_refit_undertrained(X, y, {best_key: scorers[best_key]},
                                                 oracle.folds, oracle.settings.steps,
                                                 state.splits)
        return self

    def _callback_failure(self, engine):
        """The exception a user callback raised (the search then ended after that
        iteration, its results kept), with the stop reason saying so; else None."""
        if not self._callback_errors:
            return None
        iteration, exc = self._callback_errors[0]
        engine.stop_reason = (f"a callback raised {type(exc).__name__}: {exc} after outer "
                              f"iteration {iteration}")
        return exc

    def _set_up_scoring(self, scorers, multimetric, fold):
        """Final scorers (a dict-returning callable is multi-metric), ``refit`` checked
        against them, ``scorer_`` and ``multimetric_`` set; returns the refit metric too."""
        scorers, multimetric = self._callable_metrics(scorers, multimetric, fold)
        metric_names = list(scorers)
        self._check_refit(metric_names, multimetric)
        self.multimetric_, self._metric_names = multimetric, metric_names
        # As GridSearchCV: the callable itself, the dict of scorers, or the one scorer.
        self.scorer_ = (scorers["score"] if not multimetric
                        else self.scoring if callable(self.scoring) else scorers)
        return scorers, self._refit_metric(metric_names)

    def _run_search(self, state, folds, settings, scorers, best_key):
        """Run the outer loop (:class:`~sgld_tuner.core.engine.OuterLoop`) from ``state``."""
        lam = [t.detach().clone().requires_grad_(True) for t in state.lam]
        lr = self.outer_lr * state.outer_lr_scale
        optimizer = make_outer_optimizer(self.outer_optimizer, self._param_groups(lam, lr), lr)
        if state.optimizer_state is not None:
            optimizer.load_state_dict(_regrouped(state.optimizer_state, optimizer))

        def shrink(factor):
            state.outer_lr_scale *= factor
            state.inner_lr_scale *= factor
            oracle.settings = self._settings(state.inner_lr_scale)
            return {"outer_lr": self.outer_lr * state.outer_lr_scale,
                    "inner_lr": oracle.settings.inner_lr}

        # Everything an iteration changes besides the optimizer (the policy copies it) and
        # the records and points (built aside until the commit): a rollback, on NaN or
        # Ctrl-C, puts it all back.
        def checkpoint(engine):
            return oracle.checkpoint(engine), (state.outer_lr_scale, state.inner_lr_scale)

        def restore(engine, snapshot):
            oracle.restore(engine, snapshot[0])
            state.outer_lr_scale, state.inner_lr_scale = snapshot[1]

        # One worker pool for the whole search (re-creating it every outer iteration
        # cost more than the folds' work on small nets).
        with Parallel(n_jobs=self.n_jobs, prefer="threads") as parallel:
            oracle = _FoldOracle(folds, settings, parallel, self._fold_batch(folds, settings))
            policy = RollbackOnNonFinite(
                shrink, checkpoint, restore, max_retries=self._MAX_RETRIES,
                raise_on_failure=self.error_score == "raise", warning=DivergenceWarning)
            listeners = [_SearchRecorder(self, state, oracle, scorers, best_key)]
            if self.verbose:
                listeners.append(ProgressBar("SGLDHyperTuner"))
            self._callback_errors = []
            listeners.append(Callbacks([_GuardedCallback(cb, self._callback_errors)
                                        for cb in self.callbacks or []]))
            if self.timeout is not None:
                listeners.append(Timeout(self.timeout))
            engine = OuterLoop(oracle, lam, optimizer, n_outer=self.n_outer,
                               start=state.iteration, policy=policy, listeners=listeners,
                               records=state.records, on_interrupt="stop",
                               lr_warmup=self._outer_warmup_iterations(folds, settings)).run()
        return engine, oracle

    def _fold_batch(self, folds, settings: InnerSettings) -> FoldBatch | None:
        """The folds' chains stacked into one computation, where ``batch_folds`` asks
        for it and stacking is exact (else ``None``: one chain after the other)."""
        if self.batch_folds is False or (self.batch_folds == "auto"
                                         and self.n_jobs not in (None, 1)):
            return None
        limit = AUTO_MAX_WEIGHTS if self.batch_folds == "auto" else None
        return FoldBatch.build(folds, settings, net_weight_decay(folds[0].net), limit)

    def _param_groups(self, lam, lr: float) -> list[dict]:
        """One outer-optimizer group per kind, stepping at ``lr`` times the kind's
        ``outer_lr_scale`` (a rollback's shrinking then scales every group alike)."""
        raws = _tree.unflatten(lam, self._lam_spec)
        return [{"params": _tree.flatten(raws[name])[0],
                 "lr": lr * self.hyperparams[name].outer_lr_scale} for name in raws]

    def _end_search(self, state, engine, folds):
        """Warn about how the search ended and keep what a resume needs."""
        lam = engine.lam
        self._warn_if_chains_degraded(state.records)
        self._warn_if_unmoved(folds[0].problem, lam, state.iteration)
        if engine.stop_reason:
            warn_at_caller(f"search ended early: {engine.stop_reason}; keeping the results so "
                           "far (fit again with warm_start=True to continue)", SearchInterrupted)
        self.stop_reason_ = engine.stop_reason
        # The state the search can resume from (warm_start=True, save/load).
        state.lam = [t.detach().clone() for t in lam]
        state.optimizer_state = engine.optimizer.state_dict()
        state.chain_states = [fold.state for fold in folds]
        state.generator_states = [_generator_states(fold) for fold in folds]
        state.module_rng_states = [_module_rng_states(fold.problem) for fold in folds]
        state.fit_times = [fold.fit_time for fold in folds]
        # Each fold's chain is a full copy of the net's weights: keep them only where a
        # resume needs them (warm_start, or a search that ended early), so that a finished
        # tuner and its pickle stay small.
        self._search_state = state if (self.warm_start or engine.stop_reason) else None
        self._bound = folds[0].problem.bound
        self.granularities_ = {name: b.granularity for name, b in self._bound.items()
                               if getattr(b, "granularity", None) is not None}

    def _format_results(self, state, folds, lam, scorers, best_key):
        """``cv_results_``, ``history_``, ``hyperparams_`` and the best point."""
        points, snapshots = state.points, state.snapshots
        if not points:
            # Stopped before the first scheduled evaluation: score where the chains are
            # (the starting point if nothing finite was ever reached). For these results
            # only: a resume must not start with a point its trajectory never scored.
            public = self._summaries(folds[0].problem, lam)
            published, _ = self._scored_point(state, folds, scorers, public,
                                              state.iteration - 1, lam, best_key)
            points, snapshots = published["points"], published["snapshots"]
        metric_names, multimetric = self._metric_names, self.multimetric_
        self.cv_results_ = build_cv_results(points, metric_names, self.n_splits_,
                                            not multimetric)
        self.history_ = build_history(state.records)
        self.hyperparams_ = self._public_values(lam)
        for key in [k for k in self.cv_results_ if k.startswith("mean_test_")]:
            if np.isnan(self.cv_results_[key]).all():
                raise ValueError(f"every evaluation failed ({key} is all NaN); see the warnings, "
                                 "or pass error_score='raise' to see the first error")
        self._select_best(snapshots, metric_names, multimetric)

    def _refit(self, X, y, seed, inner_lr, fit_params) -> bool:
        """Train ``best_estimator_`` on all rows at the best values (and the ensemble);
        False when a Ctrl-C cut the training short (reported as such).

        The refit net is the user's net class with the learned values built in; a
        classifier gets ``classes=classes_`` and the original labels, so it is a drop-in
        for the tuner (same ``classes_``, ``predict`` returns the original labels). A
        ``Pipeline`` is cloned with that net as its last step and fit on all rows.
        """
        refit_started = time.perf_counter()
        net = make_learned_net(self._net(), self.hyperparams, self.best_params_)
        labels = self._labels(y)
        if self._is_classifier and self._net_takes_classes:
            net.set_params(classes=list(self._classes))
        elif self._is_classifier:  # binary: skorch's BCE loss wants float 0/1 targets
            labels = np.asarray(y, dtype=np.float32)
        # A Pipeline is refit whole (its preprocessing on all rows) around the learned net.
        self.best_estimator_ = (clone(self.estimator).set_params(
            **{self.estimator.steps[-1][0]: net}) if self._is_pipeline else net)
        # skorch draws initial weights and batch order from torch's global RNG: seed it
        # (without disturbing the caller's stream) so that random_state fixes the refit.
        interrupted = []
        with torch.random.fork_rng(devices=[]), _watch_sigint(interrupted):
            torch.manual_seed(seed)
            self.best_estimator_.fit(X, labels, **fit_params)
        if interrupted:
            self._report_refit_interrupted(net)
        if isinstance(self.refit, str) and self.refit == "ensemble":
            from .ensemble import collect_posterior_samples

            # The chain trains on codes 0..C-1; the ensemble predicts classes_ labels.
            self.ensemble_ = collect_posterior_samples(
                self.best_estimator_, self.hyperparams, self.best_params_, X, y,
                inner_lr=inner_lr, temperature=self.temperature,
                noise_scale=self.noise_scale, batch_size=self.batch_size,
                random_state=seed)
        self.refit_time_ = time.perf_counter() - refit_started
        return not interrupted

    def _report_refit_interrupted(self, net):
        """skorch's fit ends quietly on Ctrl-C: say that the refit net is undertrained."""
        reason = (f"refit interrupted (KeyboardInterrupt) after {len(net.history)} of "
                  f"{net.max_epochs} epochs: best_estimator_ is undertrained (fit again, "
                  "with warm_start=True to keep the search)")
        self.stop_reason_ = reason if not self.stop_reason_ else f"{self.stop_reason_}; {reason}"
        warn_at_caller(reason, SearchInterrupted)

    # ------------------------------------------------------------------ fit helpers
    _MAX_RETRIES = 3  # divergence: rollbacks with halved steps before the search stops

    # Validation loss at the end of the search over its start, above which the chains are
    # flagged: as overfitting when their training loss fell meanwhile, else as not training.
    _OVERFIT_RISE, _DEGRADED_RISE = 1.2, 1.5

    @classmethod
    def _warn_if_chains_degraded(cls, records):
        """A chain can go bad without a NaN, and the validation loss then climbs; say so,
        since the best point is then arbitrary, with advice that fits the cause: a
        training loss that fell meanwhile means overfitting (the chains have trained
        longer than the refit will), one that did not means chains that do not train."""
        kept = [r for r in records if not r.get("diverged")]
        if len(kept) < 4:
            return

        def trend(key):
            return np.mean([r[key] for r in kept[:2]]), np.mean([r[key] for r in kept[-2:]])

        (start, end), (train_start, train_end) = trend("outer_loss"), trend("inner_loss")
        if not (math.isfinite(start) and math.isfinite(end)):
            return
        fitting = math.isfinite(train_end) and train_end < train_start
        if fitting and end > cls._OVERFIT_RISE * start + 1e-8:
            warn_at_caller(
                f"the validation loss rose from {start:.4g} to {end:.4g} while the training "
                f"loss fell from {train_start:.4g} to {train_end:.4g}: the chains overfit "
                "their training rows, and later trajectory points score nets trained longer "
                "than the refit. Shorten the chains (n_outer, burn_in + n_samples), start "
                "the penalties stronger, or validate on more rows", OverfittingWarning)
        elif not fitting and end > cls._DEGRADED_RISE * start + 1e-8:
            warn_at_caller(
                f"the validation loss rose from {start:.4g} to {end:.4g} during the search "
                "without the training loss falling: the chains are likely not training "
                "(lower temperature, noise_scale or inner_lr); the selected point may be "
                "arbitrary", DivergenceWarning)

    # The refit's score on its own training rows below best_score_ by more than this
    # fraction of the larger of the two: trained as long, a net scores at least as well on
    # the rows it fit as the chains did on held-out rows.
    _UNDERTRAINED_GAP = 0.05

    def _warn_if_refit_undertrained(self, X, codes, scorer: dict, folds, steps: int,
                                    splits):
        """Warn when the refit, trained for the net's own budget, scores on its own
        training rows below ``best_score_`` and below the chains on theirs, while the
        chains of the best point had trained longer than that budget: then the net is
        undertrained (its ``max_epochs`` or ``lr``), ``best_score_`` scores longer-trained
        nets than ``best_estimator_``, and no penalty the search can learn makes up for it
        (a grid over ``lr`` can). One prediction pass over ``X``, and one per fold's
        training rows when the first comparison fails; ``steps``: chain steps per outer
        iteration."""
        if self.refit == "ensemble":  # predictions come from a chain run after the refit
            return
        best = getattr(self, "best_score_", math.nan)
        # The best point's chains: a persistent chain has run its warm-up and every
        # iteration up to the point; a restarted one, one iteration's steps.
        chain_steps = steps
        if self.chain == "persistent":
            iteration = int(self.cv_results_["iteration"][self.best_index_])
            chain_steps = max(f.warm_up_steps for f in folds) + (iteration + 1) * steps
        budget = max(fold.budget_steps for fold in folds)
        if not math.isfinite(best) or chain_steps <= budget:
            return
        with warnings.catch_warnings():  # a scorer failing here only skips the check
            warnings.simplefilter("ignore")
            train = next(iter(_scores_on(self.best_estimator_, X, self._labels(codes), scorer,
                                         np.nan).values()))
        if not train < best - self._UNDERTRAINED_GAP * max(abs(best), abs(train)):
            return
        # Like with like: the chains on their own training rows. Rows that cannot be fit
        # (noisy labels validated on clean rows) keep both low; an undertrained refit
        # falls short of chains that fit theirs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chains = float(np.mean([next(iter(_score_fold_rows(
                fold, _safe_indexing(X, train_rows), self._labels(codes[train_rows]),
                scorer).values())) for fold, (train_rows, _) in zip(folds, splits)]))
        if not train < chains - self._UNDERTRAINED_GAP * max(abs(chains), abs(train)):
            return
        net = self._net()
        warn_at_caller(
            f"best_estimator_ scores {train:.4g} on its own training rows, below the "
            f"{best:.4g} (best_score_) that the search's chains scored on held-out rows "
            f"after about {chain_steps} steps (and the {chains:.4g} they score on their own "
            f"training rows); the net's own budget (max_epochs="
            f"{net.max_epochs}, lr={net.lr:g}) is about {budget} steps per fold. The net "
            "is undertrained: best_score_ overstates best_estimator_, and the values were "
            "learned on longer-trained nets. Raise the net's max_epochs or lr (e.g. "
            "GridSearchCV over estimator__lr around the tuner)", UndertrainedWarning)

    _UNMOVED_RTOL = 0.01  # a search whose values all moved less than this ended where it began
    _UNMOVED_MIN_ITER = 5

    def _warn_if_unmoved(self, problem, lam, n_iter):
        """Warn when a search of several iterations left every hyperparameter (within 1%)
        where it started: the refit is then the untuned net, whatever the trajectory says."""
        if n_iter < self._UNMOVED_MIN_ITER:
            return
        start = _tree.flatten(problem.init_lam())[0]
        moved = [float(((t.detach() - s).abs() / s.abs().clamp_min(1e-12)).max())
                 for t, s in zip(lam, start)]
        if max(moved, default=0.0) < self._UNMOVED_RTOL:
            warn_at_caller(
                f"after {n_iter} outer iterations every hyperparameter is within "
                f"{self._UNMOVED_RTOL:.0%} of its start (raw scale): the search did not change the "
                "model. "
                "Start where the hyperparameter acts (e.g. init='auto' for penalties) or "
                "raise outer_lr / n_outer", UnmovedSearchWarning)

    def _settings(self, inner_lr_scale: float = 1.0) -> InnerSettings:
        inner_lr = self.inner_lr if self.inner_lr is not None else self._net().get_params()["lr"]
        # The chains train like the net: its optimizer picks the sampler (method_options
        # may still override it).
        dynamics, _ = chain_dynamics(self._net())
        options = {**dynamics, **InnerSettings.check_options(self.method_options,
                                                             self._SET_BY_PARAMETERS)}
        return InnerSettings(method=self.method, inner_lr=float(inner_lr) * inner_lr_scale,
                             burn_in=self.burn_in,
                             n_samples=self.n_samples, temperature=self.temperature,
                             noise_scale=self.noise_scale, chain=self.chain,
                             recursion=self._recursion(), **options).validate()

    def _recursion(self) -> str:
        """``recursion`` as :func:`tuner_recursion` resolves it for this fit's kinds."""
        return getattr(self, "_auto_recursion", self.recursion)

    # InnerSettings fields the tuner's own parameters set (and keep_samples: the
    # tuner keeps no samples); every other field is a valid method_options key.
    _SET_BY_PARAMETERS = ("method", "inner_lr", "burn_in", "n_samples", "temperature",
                          "noise_scale", "chain", "recursion", "keep_samples")

    def _start_folds(self, X, y, state) -> list:
        """One :class:`_FoldChain` per split, at ``state``'s position (fresh or resumed)."""
        folds = [self._make_fold(X, y, train, val, seed)
                 for (train, val), seed in zip(state.splits, state.seeds)]
        if state.lam is None:
            state.lam, self._lam_spec = _tree.flatten(folds[0].problem.init_lam())
            state.lam = [t.detach() for t in state.lam]
        else:
            self._lam_spec = state.lam_spec
        state.lam_spec = self._lam_spec
        module_states = getattr(state, "module_rng_states", None) or [None] * len(folds)
        for fold, chain, gen_state, module_state, fit_time in zip(
                folds, state.chain_states, state.generator_states, module_states,
                state.fit_times):
            fold.state = chain
            if gen_state is not None:
                _set_generators(fold, gen_state)
            fold.problem.module_rng.states = module_state
            fold.fit_time = fit_time
        return folds

    def _make_fold(self, X, y, train, val, seed) -> _FoldChain:
        """One fold's chain: a seeded net, the rows it sees, its losses and streams."""
        # The user's class with learned-net plumbing and no hyperparameters: it predicts
        # the original labels, one probability column per class, so that scorers see
        # what GridSearchCV's would (the chains train on codes 0..C-1).
        net = make_learned_net(self._net(), {}, {})
        overrides, n_classes = {"verbose": 0}, None
        if self._is_classifier and self._net_takes_classes:
            overrides["classes"] = list(self._classes)
            n_classes = len(self._classes)
        net.set_params(**overrides)
        X_train, X_val, net_train, net_val, scored = self._fold_inputs(X, y, train, val, net)
        device = getattr(net, "device", "cpu") or "cpu"
        generator = make_generator(int(seed[1]), device)
        # The paper transforms validation images too when learning invariances.
        augments = any(h.transforms_validation_inputs for h in self.hyperparams.values())
        batch_size = self.batch_size if self.batch_size is not None else net.batch_size
        # skorch initialises the module from torch's global RNG (lazy modules only on the
        # first forward, inside NetProblem): seed it without disturbing the caller's stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed[0]))
            net.initialize()
            problem = NetProblem(net, self.hyperparams, net_train, y[train], net_val, y[val],
                                 train_rows=np.asarray(train), n_train_total=len(y),
                                 batch_size=batch_size, generator=generator,
                                 augment_outer=augments, n_classes=n_classes,
                                 outer_batch_size=self.outer_batch_size,
                                 module_rng=ModuleRNG(_derived_seed(seed), device),
                                 outer_generator=make_generator(_derived_seed((*seed, 1)),
                                                                device))
        # The net's own optimizer__weight_decay stays in the chain's training loss.
        bilevel = problem.bilevel(weight_decay=net_weight_decay(net))
        keep_train = self.return_train_score
        # One training run of the net on this fold: max_epochs passes in batches.
        budget = int(net.max_epochs) * math.ceil(len(train) / problem.batch_size)
        return _FoldChain(net=net, problem=problem, bilevel=bilevel, state=ChainState(),
                          generator=generator, X_val=X_val, y_val=self._labels(y[val]),
                          scored=scored, X_train=X_train if keep_train else None,
                          y_train=self._labels(y[train]) if keep_train else None,
                          start_loss=problem.start_loss(),
                          warm_up_steps=self._warm_up_steps(budget),
                          budget_steps=budget)

    def _warm_up_steps(self, budget: int) -> int:
        """``warm_up`` in inner steps for a fold whose net trains ``budget`` steps."""
        if isinstance(self.warm_up, bool):
            raise ValueError(f"warm_up must be an int >= 0 or 'epochs', got {self.warm_up!r}")
        if not self.warm_up:
            return 0
        if self.method != "sgld" or self.chain != "persistent":
            raise ValueError(f"warm_up={self.warm_up!r} needs method='sgld' with "
                             f"chain='persistent' (got method={self.method!r}, "
                             f"chain={self.chain!r}); set warm_up=0")
        return budget if self.warm_up == "epochs" else int(self.warm_up)

    def _outer_warmup_iterations(self, folds, settings: InnerSettings) -> int:
        """``outer_warmup`` in outer iterations (``"auto"``: until the chains have run one
        training budget of the net, at most ``n_outer``)."""
        if self.outer_warmup != "auto":
            return int(self.outer_warmup)
        budget = max(fold.budget_steps for fold in folds)
        return min(self.n_outer, math.ceil(budget / max(1, settings.steps)))

    def _fold_inputs(self, X, y, train, val, net):
        """The fold's rows as given and as the net sees them, and what scorers see.

        For a ``Pipeline``, a clone of its preprocessing steps is fit on the fold's
        training rows only and transforms both splits, as in
        ``GridSearchCV(Pipeline(...))``; the scorers see that fitted preprocessing
        followed by the fold's net.

        Returns
        -------
        X_train, X_val, net_train, net_val, scored
        """
        X_train, X_val = _safe_indexing(X, train), _safe_indexing(X, val)
        if not self._is_pipeline:
            return X_train, X_val, X_train, X_val, net
        preprocess = clone(self.estimator[:-1])
        net_train = preprocess.fit_transform(X_train, self._labels(y[train]))
        net_val = preprocess.transform(X_val)
        net_train = _net_input(net_train, self._keeps_ids(net_train))
        net_val = _net_input(net_val, self._keeps_ids(net_val))
        scored = Pipeline([*preprocess.steps, (self.estimator.steps[-1][0], net)])
        return X_train, X_val, net_train, net_val, scored

    def _labels(self, codes):
        """Original class labels of codes ``0..C-1`` (classifiers); ``codes`` otherwise."""
        return self._classes[codes] if self._is_classifier else codes

    def _refit_metric(self, metric_names):
        if callable(self.refit) or self.refit is False:
            return metric_names[0]
        if isinstance(self.refit, str) and self.refit in metric_names:
            return self.refit
        return metric_names[0]

    def _summaries(self, problem: NetProblem, lam) -> dict:
        raw = _tree.unflatten([t.detach() for t in lam], self._lam_spec)
        return {name: float(bound.summary(raw[name])) for name, bound in problem.bound.items()}

    def _public_values(self, lam) -> dict:
        raw = _tree.unflatten([t.detach() for t in lam], self._lam_spec)
        return {name: bound.to_public(raw[name]) for name, bound in self._bound.items()}

    def _scored_point(self, state, folds, scorers, public, iteration, lam, best_key,
                      parallel=None):
        """Score the chains now; return the fields of ``state`` with the point added
        (new objects: ``state`` is left as it is) and the point's mean scores."""
        point, mean_scores = self._evaluate(folds, scorers, public, iteration,
                                            state.last_fit_times, parallel)
        snapshots = dict(state.snapshots)
        self._keep_snapshot(snapshots, len(state.points), lam, mean_scores, best_key,
                            state.best_value)
        best_value = state.best_value
        if mean_scores[best_key] > best_value:
            best_value = mean_scores[best_key]
        return {"points": [*state.points, point], "snapshots": snapshots,
                "best_value": best_value,
                "last_fit_times": [f.fit_time for f in folds]}, mean_scores

    @staticmethod
    def _checkpoint(lam, folds):
        """What a rollback needs. Chains and strategies replace (never mutate) their
        tensors and states, so a shallow copy of each whole ``ChainState`` suffices (and
        no field, such as a strategy's adjoint, can be left out); generator states are
        copied."""
        return ([t.detach().clone() for t in lam],
                [copy.copy(f.state) for f in folds],
                [_generator_states(f) for f in folds],
                [_module_rng_states(f.problem) for f in folds],
                [f.fit_time for f in folds])

    @staticmethod
    def _restore(checkpoint, lam, folds):
        """Roll back to ``checkpoint``. New state and generator objects, so that a worker
        thread still finishing an interrupted step cannot write into the restored ones."""
        lam_values, chains, gen_states, module_states, fit_times = checkpoint
        with torch.no_grad():
            for leaf, value in zip(lam, lam_values):
                leaf.copy_(value)
        restored = []
        for fold, chain, gen_state, module_state, fit_time in zip(
                folds, chains, gen_states, module_states, fit_times):
            old = getattr(fold.problem, "module_rng", None)
            if old is not None:
                fold.problem.module_rng = ModuleRNG(old.seed, old.device, module_state)
            fold = copy.copy(fold)
            _set_generators(fold, gen_state, fresh=True)
            fold.state, fold.fit_time = copy.copy(chain), fit_time
            restored.append(fold)
        return restored

    def _splits(self, X, y, groups) -> list:
        """``cv``'s (train, validation) index arrays, checked before any training step.

        Boolean masks are accepted and turned into indices, as scikit-learn's searches
        accept them (``_safe_indexing`` reads both).
        """
        cv = check_cv(self.cv, y, classifier=self._is_classifier)
        n_splits = cv.get_n_splits(X, y, groups)
        if len(X) < n_splits:
            raise ValueError(f"n_samples={len(X)} is fewer than the {n_splits} cv folds; "
                             "pass more data or a smaller cv")
        rows = np.arange(len(X))
        splits = [tuple(_safe_indexing(rows, np.asarray(part)) if len(part) else rows[:0]
                        for part in split) for split in cv.split(X, y, groups)]
        if splits and len(splits) != n_splits:
            raise ValueError("cv.split and cv.get_n_splits returned inconsistent results. "
                             f"Expected {n_splits} splits, got {len(splits)}")
        if not splits:
            # GridSearchCV's wording
            raise ValueError("No fits were performed. Was the CV iterator empty? "
                             "Were there no candidates?")
        for k, split in enumerate(splits):
            for name, part in zip(("training", "validation"), split):
                if len(part) == 0:
                    raise ValueError(
                        f"cv split {k} has an empty {name} fold: every split needs at "
                        f"least one {name} row (check the cv parameter)")
        return splits

    def _resume_or_start(self, X, y, groups) -> "_SearchState":
        """The saved search state when warm-starting on the same data, else a fresh one."""
        fingerprint = joblib_hash((X, y))
        settings_hash = self._settings_hash()
        previous = getattr(self, "_search_state", None)
        if self.warm_start and previous is not None:
            if previous.data_hash != fingerprint:
                raise ValueError("warm_start=True continues a search on the same X and y; "
                                 "this data differs. Fit with warm_start=False to start over.")
            saved = getattr(previous, "settings_hash", None) or settings_hash
            changed = [name for name in settings_hash if saved.get(name) != settings_hash[name]]
            if changed:
                raise ValueError(
                    f"warm_start=True continues the saved search, but {', '.join(changed)} "
                    "changed since it started: set them back, or fit with warm_start=False "
                    "to start over")
            return previous
        splits = self._splits(X, y, groups)
        rng = check_random_state(self.random_state)
        seeds = rng.randint(0, 2**31 - 1, size=(len(splits), 2))
        return _SearchState(data_hash=fingerprint, settings_hash=settings_hash,
                            splits=splits, seeds=seeds,
                            refit_seed=int(rng.randint(0, 2**31 - 1)),
                            chain_states=[ChainState() for _ in splits],
                            generator_states=[None] * len(splits),
                            fit_times=[0.0] * len(splits), last_fit_times=[0.0] * len(splits))

    def _settings_hash(self) -> dict:
        """Fingerprints (``joblib.hash``) of what a resumed search must share with the
        saved one: the hyperparameters, the net's module, ``cv`` and ``random_state``.

        A value that cannot be hashed reliably (a generator of splits, a ``RandomState``
        instance, whose state moves) is fingerprinted by its type only.
        """
        net = self._net()
        module = {k: v for k, v in net.get_params(deep=False).items()
                  if k == "module" or k.startswith("module__")}
        values = {"hyperparams": {k: clone(v) for k, v in self.hyperparams.items()},
                  "module": module, "cv": self.cv, "random_state": self.random_state}
        return {name: _fingerprint(value) for name, value in values.items()}

    def _evaluate(self, folds, scorers, public, iteration, last_fit_times, parallel=None):
        parallel = parallel or Parallel(n_jobs=self.n_jobs, prefer="threads")
        per_fold = parallel(
            delayed(_score_fold)(fold, scorers, self.error_score) for fold in folds)
        scores = {m: [test[m] for test, _, _ in per_fold] for m in scorers}
        point = {
            "iteration": iteration,
            "params": dict(public),
            "scores": scores,
            "fit_times": [f.fit_time - t for f, t in zip(folds, last_fit_times)],
            "score_times": [t for _, _, t in per_fold],
        }
        if self.return_train_score:
            point["train_scores"] = {m: [train[m] for _, train, _ in per_fold] for m in scorers}
        return point, {m: float(np.mean(v)) for m, v in scores.items()}

    # Full per-weight arrays are kept only where needed: every point while they are
    # small, otherwise just the running best (bounded memory, documented).
    _SNAPSHOT_ALL_MAX_NUMEL = 100_000

    def _keep_snapshot(self, snapshots, index, lam, mean_scores, best_key, best_value):
        numel = _tree.numel(lam)
        copy = [t.detach().cpu().clone() for t in lam]
        if numel <= self._SNAPSHOT_ALL_MAX_NUMEL:
            snapshots[index] = copy
        elif mean_scores[best_key] > best_value or not snapshots:
            snapshots.clear()
            snapshots[index] = copy

    def _select_best(self, snapshots, metric_names, multimetric):
        key = "score" if not multimetric else self._refit_metric(metric_names)
        if callable(self.refit):
            index = self.refit(self.cv_results_)
            # GridSearchCV's errors and wording
            if not isinstance(index, (Integral, np.integer)):
                raise TypeError("best_index_ returned is not an integer")
            if not 0 <= index < len(self.cv_results_["params"]):
                raise IndexError("best_index_ index out of range")
            self.best_index_ = int(index)
            # as GridSearchCV: no best_score_ with a callable refit (nor one left by an
            # earlier fit)
            self.__dict__.pop("best_score_", None)
        else:
            self.best_index_ = int(np.argmin(self.cv_results_[f"rank_test_{key}"]))
            self.best_score_ = float(self.cv_results_[f"mean_test_{key}"][self.best_index_])
        if self.best_index_ not in snapshots:
            raise ValueError(
                f"the full values at cv_results_ index {self.best_index_} were not kept "
                f"(more than {self._SNAPSHOT_ALL_MAX_NUMEL} hyperparameters: only the best "
                "point by the first metric is stored)")
        self.best_params_ = self._public_values(snapshots[self.best_index_])
        self._best_snapshot = snapshots[self.best_index_]

    # ------------------------------------------------------------------ persistence
    # The first bytes of every file save() writes: load() reads them before unpickling
    # anything, so a file that save() did not write is refused without running code.
    _SAVE_HEADER = b"sgld_tuner.SGLDHyperTuner save format 1\n"

    def save(self, path) -> None:
        """Write the tuner, fitted or stopped mid-search, to ``path``.

        The file is a format header followed by a joblib pickle. Load it with
        :meth:`load`; ``fit`` with ``warm_start=True`` then continues the search.

        Parameters
        ----------
        path : str or path-like
        """
        with open(path, "wb") as fh:
            fh.write(self._SAVE_HEADER)
            joblib.dump(self, fh)

    @classmethod
    def load(cls, path, *, trusted: bool = False) -> "SGLDHyperTuner":
        """Read a tuner written by :meth:`save`.

        .. warning::
            Loading unpickles: a crafted file runs arbitrary code on your machine. Only
            load files you wrote yourself or otherwise trust, and say so with
            ``trusted=True``.

        Parameters
        ----------
        path : str or path-like
        trusted : bool, default=False
            Must be ``True``: the caller's statement that the file is trusted.

        Returns
        -------
        SGLDHyperTuner

        Raises
        ------
        ValueError
            If ``trusted`` is not ``True``, or if the file does not start with the header
            that :meth:`save` writes (checked before anything is unpickled).
        """
        with open(path, "rb") as fh:
            header = fh.read(len(cls._SAVE_HEADER))
            if header != cls._SAVE_HEADER:
                raise ValueError(
                    f"{path} was not written by SGLDHyperTuner.save (no "
                    f"{cls._SAVE_HEADER.strip().decode()!r} header); refusing to unpickle it")
            if trusted is not True:
                raise ValueError(
                    "SGLDHyperTuner.load unpickles, which runs code from the file: pass "
                    "trusted=True if you trust it (e.g. you wrote it with save())")
            obj = joblib.load(fh)
        if not isinstance(obj, cls):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj

    # ------------------------------------------------------------------ delegation
    def _check_X(self, X):
        check_is_fitted(self, "best_estimator_")
        given = X
        X = validate_data(self, X, reset=False, accept_sparse=False, dtype=None, allow_nd=True,
                          ensure_all_finite=not self._is_pipeline)
        return self._rows_for_estimator(given, X)

    def _keeps_ids(self, X) -> bool:
        """Whether integer rows ``X`` stay integers: token ids for a net whose module has
        an embedding (asked once per fit)."""
        if not np.issubdtype(np.asarray(X).dtype, np.integer):
            return False
        if getattr(self, "_ids_input", None) is None:
            self._ids_input = _net_takes_ids(self._net())
        return self._ids_input

    def _rows_for_estimator(self, given, X):
        """``X`` (validated) as the estimator takes it.

        A net computes in float32 (skorch's default): float64 and integer input is cast,
        by design, except integer rows for a module with an embedding layer (token ids,
        kept as int64). A ``Pipeline``'s steps get the rows as given (a DataFrame keeps
        its columns; NaN is left to an imputer), and the net gets float32 after them.
        """
        if self._is_pipeline:
            return given if hasattr(given, "iloc") else X
        X = np.asarray(X, dtype=np.int64 if self._keeps_ids(X) else np.float32)
        if not X.flags.writeable:  # torch warns on read-only arrays (e.g. from DataFrames)
            X = X.copy()
        return X

    def _predictor(self):
        """The posterior ensemble when ``refit="ensemble"``, else ``best_estimator_``."""
        ensemble = getattr(self, "ensemble_", None)
        return self.best_estimator_ if ensemble is None else ensemble

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Predict with ``best_estimator_`` (class labels in the original encoding)."""
        X = self._check_X(X)
        # The refit net (and the ensemble) already predict classes_ labels.
        return self._predictor().predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities from ``best_estimator_`` (columns follow ``classes_``)."""
        X = self._check_X(X)
        return self._predictor().predict_proba(X)

    @property
    def classes_(self):
        """Class labels, as ``best_estimator_.classes_``; like ``GridSearchCV``, only
        with ``refit`` (an ``AttributeError`` otherwise)."""
        if not self.refit:
            raise AttributeError("classes_ is available only when refit is set (as in "
                                 "GridSearchCV); refit=False was passed")
        return self._classes

    @available_if(_estimator_has("score_samples"))
    def score_samples(self, X):
        """``best_estimator_.score_samples`` (when the net's class has one)."""
        return self.best_estimator_.score_samples(self._check_X(X))

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """``best_estimator_.decision_function`` (when the net's class has one)."""
        return self.best_estimator_.decision_function(self._check_X(X))

    @available_if(_estimator_has("predict_proba"))
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def score(self, X, y=None):
        """Score of ``best_estimator_`` with ``scorer_`` (the refit metric if multi-metric).

        Labels are compared in their original encoding, so labels unseen during ``fit``
        count as errors rather than failing (as in ``GridSearchCV``).
        """
        X = self._check_X(X)
        if is_regressor(self.estimator):
            y = np.asarray(y, dtype=np.float32)
        metric = self._refit_metric(self._metric_names) if self.multimetric_ else None
        scorer = self.scorer_[metric] if isinstance(self.scorer_, dict) else self.scorer_
        value = scorer(self._predictor(), X, y)
        return value[metric] if isinstance(value, dict) else value
