"""One lane: an HPO-SGLD search over the folds, resumable, run in stretches.

A :class:`Lane` owns one :class:`~sgld_tuner.search.state.SearchState`, the folds' chains
at that state's position and the outer loop that moves its hyperparameters. Schedules
(:mod:`sgld_tuner.search.schedules`) create lanes, run them for as many outer iterations
as they decide (:meth:`Lane.run` continues where the last stretch ended) and keep one.
"""
from __future__ import annotations

import math

import numpy as np
from joblib import Parallel

from ..core import InnerSettings, _tree, make_outer_optimizer
from ..core.outer_step import OuterStep
from ..core.engine import (Callbacks, Listener, OuterLoop, ProgressBar, RollbackOnNonFinite,
                           Timeout)
from ..optimizers import net_weight_decay
from .chains import FoldChains
from .context import FitContext
from .diagnostics import DivergenceWarning
from .oracle import FoldOracle
from .stacked import AUTO_MAX_WEIGHTS, FoldBatch
from .state import SearchState, regrouped

#: divergence: rollbacks with halved steps before the search stops
MAX_RETRIES = 3
#: full per-weight arrays are kept for every point while they are this small, otherwise
#: just the running best's (bounded memory)
SNAPSHOT_ALL_MAX_NUMEL = 100_000


class Lane:
    """One HPO-SGLD search over the context's folds, from ``state``.

    Parameters
    ----------
    context : FitContext
    state : SearchState
        Fresh or resumed; the lane updates it as it runs (the resumable state).
    """

    def __init__(self, context: FitContext, state: SearchState):
        self.context, self.state = context, state
        folds = [context.make_fold(train, val, seed, state.net_params)
                 for (train, val), seed in zip(state.splits, state.seeds)]
        if context.recursion == "auto":
            context.resolve_recursion(folds[0])
        if state.lam is None:
            lam, state.lam_spec = _tree.flatten(folds[0].problem.init_lam())
            state.lam = [t.detach() for t in lam]
        module_states = state.module_rng_states or [None] * len(folds)
        for fold, chain, gen_state, module_state, fit_time in zip(
                folds, state.chain_states, state.generator_states, module_states,
                state.fit_times):
            fold.state = chain
            if gen_state is not None:
                fold.set_generator_states(gen_state)
            fold.problem.module_rng.states = module_state
            fold.fit_time = fit_time
        self.settings = self._inner_settings(folds)
        self.chains = FoldChains(folds, self._fold_batch(folds))
        self.bound = folds[0].problem.bound
        self.engine = None
        #: the values the last committed iteration's chains ran at (None before one)
        self.last_evaluated = None
        #: the rung of a race this lane runs in (``iter`` in ``cv_results_``)
        self.rung = 0
        #: when set, :meth:`rung_scores` uses the points from this outer iteration on
        #: (any rung): two lanes compared over the same stretch of their chains
        self.window_start = None
        #: how warnings name the lane: a race's candidate by its settings
        self.where = (None if not state.net_params
                      else f"the race's candidate {dict(state.net_params)}")

    @property
    def folds(self) -> list:
        return self.chains.folds

    @property
    def steps_run(self) -> int:
        """Inner steps the lane's chains have run (the most of any fold)."""
        return max(fold.state.n_steps for fold in self.folds)

    @property
    def budget_iterations(self) -> int:
        """Outer iterations in which the chains run the net's own training budget
        (``max_epochs`` passes over a fold's rows): the horizon the refit trains at."""
        return max(1, math.ceil(self.budget_steps / max(1, self.settings.steps)))

    @property
    def budget_steps(self) -> int:
        """Inner steps per fold of one training run of the lane's net."""
        return self._budget_steps(self.folds)

    def _inner_settings(self, folds) -> InnerSettings:
        """The chains' settings at the lane's inner-step scale and net settings."""
        rows = min(len(fold.problem.train_rows) for fold in folds)
        return self.context.inner_settings(self.state.inner_lr_scale, self.state.net_params,
                                           self._budget_steps(folds), rows)

    @staticmethod
    def _budget_steps(folds) -> int:
        return max(fold.budget_steps for fold in folds)

    def rung_scores(self) -> np.ndarray:
        """The test scores (refit metric; points x folds) of the later half of the
        points scored in the lane's current rung: where a race compares lanes. One
        scored point is as noisy as the chain's last minibatches; the half-rung window
        averages that jitter out without reaching back to the rung's young chains."""
        key = self.context.best_key
        if self.window_start is not None:
            window = [p for p in self.state.points if p["iteration"] >= self.window_start]
        else:
            points = [p for p in self.state.points if p.get("iter") == self.rung]
            window = points[len(points) // 2:]
        if not window:
            return np.full((1, 1), math.nan)
        return np.asarray([p["scores"][key] for p in window], dtype=float)

    @property
    def rung_score(self) -> float:
        """The mean of :meth:`rung_scores` (NaN when any is NaN: the lane failed)."""
        return float(np.mean(self.rung_scores()))

    @property
    def rung_error(self) -> float:
        """The standard error of :attr:`rung_score`: the scores' spread over folds and
        the window's points, over the root of the number of folds (the window's points
        are one chain's successive states, not independent draws)."""
        scores = self.rung_scores()
        return float(np.std(scores) / math.sqrt(scores.shape[1]))

    def _fold_batch(self, folds) -> FoldBatch | None:
        """The folds' chains stacked into one computation, where ``batch_folds`` asks
        for it and stacking is exact (else ``None``: one chain after the other)."""
        batch_folds, n_jobs = self.context.sampler.batch_folds, self.context.n_jobs
        if batch_folds is False or (batch_folds == "auto" and n_jobs not in (None, 1)):
            return None
        limit = AUTO_MAX_WEIGHTS if batch_folds == "auto" else None
        return FoldBatch.build(folds, self.settings, net_weight_decay(folds[0].net), limit)

    def summaries(self, lam) -> dict:
        """One number per kind (``param_<name>`` columns) at the raw values ``lam``."""
        raw = _tree.unflatten([t.detach() for t in lam], self.state.lam_spec)
        return {name: float(b.summary(raw[name])) for name, b in self.bound.items()}

    def public_values(self, lam) -> dict:
        """The kinds' public values (``best_params_``) at the raw values ``lam``."""
        raw = _tree.unflatten([t.detach() for t in lam], self.state.lam_spec)
        return {name: b.to_public(raw[name]) for name, b in self.bound.items()}

    # -- running --------------------------------------------------------------------------
    def run(self, until: int) -> OuterLoop:
        """Run outer iterations until ``until`` have been done in all (or a stop); the
        last one is scored. Returns the engine (``stop_reason``, ``lam``, ``optimizer``)."""
        context, state = self.context, self.state
        lam = [t.detach().clone().requires_grad_(True) for t in state.lam]
        step = OuterStep(context.outer.lr, shrink=state.outer_lr_scale,
                         ramp=context.lr_ramp_iterations(self.folds, self.settings))
        optimizer = make_outer_optimizer(context.outer.optimizer, self._param_groups(lam, step),
                                         step.current)
        if state.optimizer_state is not None:
            optimizer.load_state_dict(regrouped(state.optimizer_state, optimizer))
        # One worker pool for the whole stretch (re-creating it every outer iteration
        # cost more than the folds' work on small nets).
        with Parallel(n_jobs=context.n_jobs, prefer="threads") as parallel:
            oracle = FoldOracle(self.chains, self.settings, parallel, self.where)
            policy = RollbackOnNonFinite(
                self._shrink(oracle, step), self._checkpoint(oracle, step),
                self._restore(oracle, step),
                max_retries=MAX_RETRIES, raise_on_failure=context.error_score == "raise",
                warning=DivergenceWarning, where=self.where)
            engine = OuterLoop(oracle, lam, optimizer, n_outer=until, start=state.iteration,
                               policy=policy, listeners=self._listeners(oracle),
                               records=state.records, on_interrupt="stop", step=step)
            engine.run()
        self.settings, self.engine = oracle.settings, engine
        state.outer_lr_scale = step.shrink
        state.keep(engine.lam, engine.optimizer, self.folds)
        return engine

    def _param_groups(self, lam, step: OuterStep) -> list[dict]:
        """One outer-optimizer group per kind, stepping at the kind's
        ``outer_lr_scale`` of the step (a rollback's shrinking then scales them alike)."""
        raws = _tree.unflatten(lam, self.state.lam_spec)
        hyperparams = self.context.hyperparams
        return step.groups((_tree.flatten(raws[name])[0], hyperparams[name].outer_lr_scale)
                           for name in raws)

    def _shrink(self, oracle, step: OuterStep):
        """A rollback's shrinking of the inner step (the engine shrinks ``step``)."""
        state = self.state

        def shrink(factor):
            state.inner_lr_scale *= factor
            oracle.settings = self._inner_settings(self.folds)
            return {"outer_lr": step.current, "inner_lr": oracle.settings.inner_lr}
        return shrink

    def ran_net_params(self) -> dict:
        """The lane's net settings as its chains ran them: where the chains step at the
        net's lr (no ``SamplerSettings(inner_lr=...)``) and a rollback shrank their step,
        the lr times that scale. Its scored points (``param_lr``), the race's ranking,
        ``best_params_`` and the refit read these, not the lr that diverged."""
        params = dict(self.state.net_params or {})
        scale = self.state.inner_lr_scale
        if scale != 1.0 and self.context.sampler.inner_lr is None:
            params["lr"] = float(self.context.lane_net(self.state.net_params).lr) * scale
        return params

    # Everything an iteration changes besides the optimizer (the policy copies it) and the
    # records and points (built aside until the commit): a rollback, on NaN or Ctrl-C,
    # puts it all back.
    def _checkpoint(self, oracle, step: OuterStep):
        state = self.state
        return lambda engine: (oracle.checkpoint(engine), (step.shrink, state.inner_lr_scale))

    def _restore(self, oracle, step: OuterStep):
        state = self.state

        def restore(engine, snapshot):
            oracle.restore(engine, snapshot[0])
            step.shrink, state.inner_lr_scale = snapshot[1]
        return restore

    def _listeners(self, oracle) -> list[Listener]:
        context = self.context
        listeners = [_Recorder(self, oracle)]
        if context.verbose:
            listeners.append(ProgressBar("SGLDHyperTuner"))
        listeners.append(Callbacks([_GuardedCallback(cb, context.callback_errors)
                                    for cb in context.callbacks]))
        if context.outer.timeout is not None:
            listeners.append(Timeout(context.outer.timeout, started=context.started))
        return listeners

    # -- scored points --------------------------------------------------------------------
    def scored_point(self, iteration: int, lam, parallel=None) -> tuple[dict, dict]:
        """Score the chains now; return the fields of the state with the point added
        (new objects: the state is left as it is) and the point's mean scores."""
        context, state = self.context, self.state
        parallel = parallel or Parallel(n_jobs=context.n_jobs, prefer="threads")
        per_fold = self.chains.score(context.scorers, context.error_score, parallel,
                                     context.score_params)
        scores = {m: [test[m] for test, _, _, _ in per_fold] for m in context.scorers}
        folds = self.folds
        net_params = self.ran_net_params()
        point = {"iteration": iteration,
                 "params": {**net_params, **self.summaries(lam)},
                 "scores": scores,
                 "fit_times": [f.fit_time - t for f, t in zip(folds, state.last_fit_times)],
                 "score_times": [t for _, _, t, _ in per_fold],
                 "errors": [e for _, _, _, e in per_fold], "iter": self.rung,
                 "n_resources": self.steps_run}
        if net_params:
            point["net_params"] = net_params
        if context.return_train_score:
            point["train_scores"] = {m: [train[m] for _, train, _, _ in per_fold]
                                     for m in context.scorers}
        if context.verbose > 2:
            _print_point(iteration, per_fold)
        mean_scores = {m: float(np.mean(v)) for m, v in scores.items()}
        snapshots = dict(state.snapshots)
        _keep_snapshot(snapshots, len(state.points), lam, mean_scores[context.best_key],
                       state.best_value)
        return {"points": [*state.points, point], "snapshots": snapshots,
                "best_value": max(state.best_value, mean_scores[context.best_key]),
                "last_fit_times": [f.fit_time for f in folds]}, mean_scores


def _print_point(iteration: int, per_fold: list) -> None:
    """One line per fold on stdout, as scikit-learn's searches print at ``verbose > 2``."""
    n = len(per_fold)
    for k, (test, train, _, _) in enumerate(per_fold):
        if train is None:
            text = ", ".join(f"{v:.3f}" for v in test.values())
        else:
            text = "(" + ", ".join(f"train={train[m]:.3f}, test={v:.3f}"
                                   for m, v in test.items()) + ")"
        print(f"[CV {k + 1}/{n}] END point at outer iteration {iteration}; score={text}")


def _keep_snapshot(snapshots: dict, index: int, lam, score: float, best: float) -> None:
    """Keep the full values of point ``index``: every point's while they are small,
    otherwise only the running best's."""
    copy = [t.detach().cpu().clone() for t in lam]
    if _tree.numel(lam) <= SNAPSHOT_ALL_MAX_NUMEL:
        snapshots[index] = copy
    elif score > best or not snapshots:
        snapshots.clear()
        snapshots[index] = copy


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


class _Recorder(Listener):
    """The lane's columns of each record, its evaluation schedule and its resumable state.

    Adds ``diverged``, ``param_<name>`` (scalar summaries) and, every ``eval_every``
    iterations and at the stretch's last, the mean test scores of the chains' current
    positions (a new point of ``cv_results_``). What the iteration adds to the state (the
    point, its snapshot, the best value, ``lam`` and the iteration count) is built aside
    in ``on_record`` and published in ``on_commit``, so that a Ctrl-C before the commit
    leaves the state exactly as it was and one after it leaves the whole iteration.
    """

    def __init__(self, lane: Lane, oracle: FoldOracle):
        self.lane, self.oracle = lane, oracle
        self._pending = self._evaluated = None

    def on_iteration_begin(self, engine):
        self._pending = None
        # The values the iteration's chains run at: its record and its scored point
        # carry these, not the values after its outer step (with n_outer=1 the refit
        # then gets the start values, and best_params_ the values that earned the score).
        self._evaluated = [t.detach().clone() for t in engine.lam]

    def on_record(self, engine, record):
        lane, k, lam = self.lane, record["iteration"], self._evaluated
        every = lane.context.outer.eval_every
        record["diverged"] = False
        record.update({f"param_{name}": v for name, v in lane.summaries(lam).items()})
        pending = {"iteration": k + 1, "lam": [t.detach().clone() for t in engine.lam]}
        if k % every == every - 1 or k == engine.n_outer - 1:
            published, mean_scores = lane.scored_point(k, lam, self.oracle.parallel)
            pending.update(published)
            errors = published["points"][-1]["errors"]
            if not lane.state.points and all(errors):
                # Scoring that fails on every fold will fail at every point: stop now,
                # not after n_outer iterations (fit then reports it, as GridSearchCV).
                engine.stop(f"every fold's scoring failed at the first scored point "
                            f"({errors[0][0]})", failed=True)
            multimetric = lane.context.multimetric
            record.update({f"mean_test_{m if multimetric else 'score'}": v
                           for m, v in mean_scores.items()})
        self._pending = pending

    def on_commit(self, engine, record):
        self.lane.state.publish(self._pending)
        self.lane.last_evaluated = self._evaluated
