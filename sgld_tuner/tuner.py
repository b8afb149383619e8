"""``SGLDHyperTuner``: HPO-SGLD as a scikit-learn meta-estimator over skorch nets.

scikit-learn plumbing over :mod:`sgld_tuner.search`, as ``BaseSearchCV.fit`` is over
``_run_search``: here parameters are validated, inputs checked, cv splits and scorers
made, a :class:`~sgld_tuner.search.FitContext` built; a
:class:`~sgld_tuner.search.Schedule` runs the search; the results are formatted like
``GridSearchCV``'s and the best point is refit.
"""
from __future__ import annotations

import inspect
import math
import warnings
from numbers import Integral, Real

import numpy as np
from joblib import hash as joblib_hash
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from .core.engine import warn_at_caller
from .net_io import NetIO
from .results import (build_cv_results, build_history, check_evaluations, halving_attributes,
                      select_best)
from .search import state as saved_search
from .search.context import FitContext
from .search.diagnostics import (DivergenceWarning, OverfittingWarning, RowOrderWarning,
                                 SearchInterrupted, UndertrainedWarning,
                                 UnmovedSearchWarning, warn_if_chains_degraded,
                                 warn_if_in_label_order, warn_if_refit_undertrained,
                                 warn_if_unmoved)
from .search.refit import best_point_steps, check_refit_params, refit_best, refit_targets
from .search.routing import fold_score_params, route_fit_params
from .search.race import Race, run_by
from .search.schedules import LaneFactory, Schedule
from .search.scoring import callable_metrics, check_refit, make_scorers, refit_metric
from .search.settings import GroupedParams, OuterSettings, SamplerSettings
from .search.state import SearchState, draw_seeds, settings_fingerprints

__all__ = ["SGLDHyperTuner", "SearchInterrupted", "UnmovedSearchWarning", "DivergenceWarning",
           "OverfittingWarning", "RowOrderWarning", "UndertrainedWarning"]

#: saves written before the search had rooms of its own unpickle their state through this
_SearchState = SearchState


class SGLDHyperTuner(NetIO, GroupedParams, MetaEstimatorMixin, BaseEstimator):
    """Tune continuous hyperparameters of a skorch net by HPO-SGLD, like ``GridSearchCV``.

    Each cv fold runs its own SGLD chain over the net's weights; every outer iteration
    averages the folds' hypergradients and takes one step on the hyperparameters. Points
    of the hyperparameter trajectory are scored every ``outer.eval_every`` iterations and
    reported in ``cv_results_``; the best one is refit on all data.

    Parameters
    ----------
    estimator : skorch NeuralNet, NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor
        Unfitted net, or a ``Pipeline`` ending in one; never modified (cloned per fold
        and for the refit). A ``NeuralNetBinaryClassifier`` takes the labels 0 and 1.
    hyperparams : dict of str -> Hyperparameter
        The differentiable hyperparameters, e.g. ``{"l1": PerWeightL1()}``; each kind's
        parameters are reachable as ``hyperparams__<name>__<param>``, the kind itself as
        ``hyperparams__<name>`` (``set_params``, ``GridSearchCV``).
    n_outer : int, default=50
        Outer (hyperparameter) iterations, spanning at least the net's training run.
    sampler : SamplerSettings, optional
        The chains' settings (burn-in, samples, temperature, noise, inner lr and batch
        size, method, recursion, chain, warm-up, stacking); default ``SamplerSettings()``.
        Its fields are ``sampler__<name>`` for ``set_params`` and ``GridSearchCV``.
    outer : OuterSettings, optional
        The outer loop's settings (step size, optimizer, ramp, evaluation period,
        timeout); default ``OuterSettings()``; fields ``outer__<name>``.
    schedule : Schedule, optional
        How lanes of chains are run and compared (:mod:`sgld_tuner.search.schedules`).
        Default :class:`~sgld_tuner.search.Race` ``()``: the net's ``lr`` raced inside the
        fit (5 candidates around the net's own, successive halving of warm lanes on the
        same folds, each judged at the horizon the refit trains), HPO-SGLD tuning the
        hyperparameters inside every lane. ``schedule=PlainSearch()`` switches the race
        off: one lane, the net's ``lr`` as given, ``n_outer`` iterations. With
        ``n_outer=1`` nothing is searched or raced. Race settings are
        ``schedule__<name>`` (on ``None`` too).
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
    n_jobs : int, optional
        Folds run in parallel through joblib (any joblib backend, e.g. Dask).
    random_state : int, RandomState or None
        Seeds the nets' initialisations and one torch generator per fold.
    verbose : int, default=0
        ``1`` shows a tqdm progress bar with the current validation score.
    callbacks : list of callable, optional
        Each gets the record of every outer iteration (a dict); a truthy return stops.
    error_score : "raise" or float, default=nan
        Score of an evaluation that fails. With ``"raise"``, a divergence that persists
        after the rollbacks raises ``FloatingPointError`` instead of ending the search.
    warm_start : bool, default=False
        Continue the previous search on the same data (after an interruption, a
        timeout, :meth:`load`, or with a larger ``n_outer``) instead of starting over.
        The chains' state is kept after ``fit`` only when ``warm_start=True`` or when the
        search ended early, so a finished search holds no per-fold weight copies.
    return_train_score : bool, default=False
        As in ``GridSearchCV``: also score each point on the folds' training rows
        (``split<k>_train_<metric>``, ``mean_/std_train_<metric>`` in ``cv_results_``).

    Attributes
    ----------
    cv_results_ : dict of numpy arrays
        One row per evaluation point on the hyperparameter trajectory, in
        ``GridSearchCV``'s format; ``param_<name>`` holds a scalar summary.
    best_index_, best_score_, best_params_ : int, float, dict
        ``best_params_`` holds the full learned values (arrays for per-weight kinds) and
        the raced settings. As in ``GridSearchCV``: no ``best_score_`` with a callable
        ``refit``, and none of the three with several metrics and ``refit=False``.
    best_estimator_ : skorch net
        A fresh net trained on all data with the learned values built in: an instance of
        a subclass of the user's net class (see ``learned_net.learned_class``), with
        the tuner's ``classes_``, predicting the original labels.
    hyperparams_ : dict
        The values at the end of the search.
    history_ : pandas.DataFrame
        One row per outer iteration.
    folds_stacked_ : bool
        Whether the search ran the folds' chains stacked into one computation.
    granularities_ : dict of str -> str
        The granularity each penalty kind was bound with (``"auto"`` resolved), e.g.
        ``{"l1": "feature"}``; kinds without one are left out.
    recursion_ : str
        The hypergradient strategy the chains used (``recursion``, with ``"auto"``
        resolved), or the baseline's name for another ``method``.
    stop_reason_ : str or None
        Why the search (or the refit) ended early, if it did.
    n_candidates_, n_resources_ : list of int
        As scikit-learn's successive-halving searches: per rung of the race, the lanes it
        ran and the inner steps per fold it judged them at (one iteration of one
        candidate without a race). Also ``n_iterations_``, ``n_remaining_candidates_``,
        ``min_resources_`` and ``max_resources_`` (the refit's horizon).
    refit_time_, n_splits_, scorer_, n_features_in_, multimetric_
    classes_ : ndarray
        Class labels (classifiers, and only with ``refit``, as in ``GridSearchCV``).
    """

    _GROUPS = {**GroupedParams._GROUPS, "schedule": Race}  # schedule=None: a Race()

    _parameter_constraints: dict = {
        # a skorch net (or a Pipeline ending in one): checked in fit, naming the fix
        "estimator": [HasMethods(["fit"])],
        "hyperparams": [dict],
        "n_outer": [Interval(Integral, 1, None, closed="left")],
        "sampler": [SamplerSettings, None],
        "outer": [OuterSettings, None],
        "schedule": [Schedule, None],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set()), callable, list, tuple, dict, str, None],
        "refit": ["boolean", str, callable],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "error_score": [StrOptions({"raise"}), Real],
        "warm_start": ["boolean"],
        "return_train_score": ["boolean"],
    }

    def __init__(self, estimator, hyperparams, *, n_outer=50, sampler=None, outer=None,
                 schedule=None, cv=5, scoring=None, refit=True, n_jobs=None,
                 random_state=None, verbose=0, callbacks=None, error_score=np.nan,
                 warm_start=False, return_train_score=False):
        self.estimator = estimator
        self.hyperparams = hyperparams
        self.n_outer = n_outer
        self.sampler = sampler
        self.outer = outer
        self.schedule = schedule
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.error_score = error_score
        self.warm_start = warm_start
        self.return_train_score = return_train_score

    # The class's signature is __init__'s (not __new__'s), for inspect and scikit-learn.
    __signature__ = inspect.signature(__init__).replace(
        parameters=list(inspect.signature(__init__).parameters.values())[1:])


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
        sampler = clone(self.sampler if self.sampler is not None else SamplerSettings()).check()
        outer = clone(self.outer if self.outer is not None else OuterSettings()).check()
        self._check_estimator_and_hyperparams(sampler)
        X, y = self._validate_inputs(X, y)
        context = self._context(X, y, sampler, outer)
        lanes = self._lanes(context, groups)
        self._set_up_scoring(context, lanes)
        fit_params, score_params = route_fit_params(self, fit_params, context.scorers,
                                                    context.multimetric)
        context.score_params = fold_score_params(X, context.scorers, score_params,
                                                 lanes.splits)
        if fit_params and self.refit:
            check_refit_params(context, fit_params)  # before the search, not after it
            warnings.warn(f"fit parameters {sorted(fit_params)} reach the refit's fit only; "
                          "the search's chains do not use them", UserWarning, stacklevel=2)
        warn_if_in_label_order(context.net, context.y)
        lane = run_by(self.schedule).run(context, lanes)
        self.recursion_ = context.recursion if sampler.method == "sgld" else sampler.method
        self.folds_stacked_ = lane.chains.stacked
        failure = context.callback_failure(lane.engine)
        self._end_search(lane)
        self._format_results(lane)
        for name in ("ensemble_", "best_estimator_", "refit_time_"):
            self.__dict__.pop(name, None)  # never keep what an earlier fit refit
        if failure is not None:
            raise failure
        if self.refit:
            self._refit(context, lane, fit_params)
        return self

    def _context(self, X, y, sampler, outer) -> FitContext:
        scorers, multimetric = make_scorers(self.estimator, self.scoring)
        return FitContext(
            estimator=self.estimator, hyperparams=self.hyperparams, X=X, y=y,
            classes=self._classes if self._is_classifier else None,
            net_takes_classes=self._is_classifier and self._net_takes_classes,
            sampler=sampler, outer=outer, n_outer=self.n_outer, scorers=scorers,
            best_key=next(iter(scorers)), multimetric=multimetric, keeps_ids=self._keeps_ids,
            n_jobs=self.n_jobs, error_score=self.error_score,
            return_train_score=self.return_train_score, verbose=self.verbose,
            callbacks=list(self.callbacks or []))

    def _lanes(self, context: FitContext, groups) -> LaneFactory:
        """The fit's lane factory: it resumes the saved search when warm-starting on the
        same data, and starts every other lane fresh on the same splits and seeds."""
        data_hash = joblib_hash((context.X, context.y))
        settings_hash = settings_fingerprints(self._net(), self.hyperparams, self.cv,
                                              self.random_state, scoring=self.scoring,
                                              groups=groups, sampler=context.sampler,
                                              outer=context.outer,
                                              schedule=run_by(self.schedule))
        resumed = saved_search.resumable(
            getattr(self, "_search_state", None) if self.warm_start else None,
            data_hash, settings_hash)
        splits = resumed.splits if resumed is not None else \
            self._splits(context.X, context.y, groups)
        self.n_splits_ = len(splits)

        seeds, refit_seed = draw_seeds(check_random_state(self.random_state), len(splits))

        def fresh(net_params):
            # The same seeds for every lane: lanes share their nets' starts and noise.
            return SearchState.fresh(data_hash, settings_hash, splits, seeds, refit_seed,
                                     net_params)
        return LaneFactory(context, splits, fresh, resumed)

    def _set_up_scoring(self, context: FitContext, lanes: LaneFactory) -> None:
        """Final scorers (a dict-returning callable is multi-metric: one call on the
        first fold's untrained net tells its keys), ``refit`` checked against them,
        ``scorer_`` and ``multimetric_`` set, and the context told."""
        scorers, multimetric = context.scorers, context.multimetric
        if not multimetric and callable(self.scoring):
            state = lanes.first_state()
            folds = (context.make_fold(train, val, seed, state.net_params)
                     for (train, val), seed in zip(state.splits, state.seeds))
            scorers, multimetric = callable_metrics(self.scoring, scorers, multimetric, folds)
        metric_names = list(scorers)
        check_refit(self.refit, metric_names, multimetric)
        self.multimetric_ = multimetric
        # As GridSearchCV: the callable itself, the dict of scorers, or the one scorer.
        self.scorer_ = (scorers["score"] if not multimetric
                        else self.scoring if callable(self.scoring) else scorers)
        context.scorers, context.multimetric = scorers, multimetric
        context.best_key = refit_metric(self.refit, metric_names)

    def _end_search(self, lane) -> None:
        """Warn about how the search ended and keep what a resume needs."""
        state, engine = lane.state, lane.engine
        warn_if_chains_degraded(state.records)
        warn_if_unmoved(lane.folds[0].problem.init_lam(), engine.lam, state.iteration)
        if engine.stop_reason:
            warn_at_caller(f"search ended early: {engine.stop_reason}; keeping the results so "
                           "far (fit again with warm_start=True to continue)", SearchInterrupted)
        self.stop_reason_ = engine.stop_reason
        # Each fold's chain is a full copy of the net's weights: keep them only where a
        # resume needs them (warm_start, or a search that ended early), so that a finished
        # tuner and its pickle stay small.
        self._search_state = state if (self.warm_start or engine.stop_reason) else None
        self.granularities_ = {name: b.granularity for name, b in lane.bound.items()
                               if getattr(b, "granularity", None) is not None}

    def _format_results(self, lane) -> None:
        """``cv_results_``, ``history_``, ``hyperparams_`` and the best point."""
        state, lam = lane.state, lane.engine.lam
        points, snapshots = state.points, state.snapshots
        if not points:
            # Stopped before the first scheduled evaluation: score where the chains are,
            # at the values they ran at (the start if nothing finite was ever reached).
            # For these results only: a resume must not start with a point its trajectory
            # never scored.
            ran_at = lam if lane.last_evaluated is None else lane.last_evaluated
            published, _ = lane.scored_point(state.iteration - 1, ran_at)
            points, snapshots = published["points"], published["snapshots"]
        metric_names = list(lane.context.scorers)
        self.cv_results_ = build_cv_results(points, metric_names, self.n_splits_,
                                            not self.multimetric_)
        self.history_ = build_history(state.records)
        self.hyperparams_ = lane.public_values(lam)
        # (a state saved before rungs were kept has none)
        for name, value in halving_attributes(getattr(state, "rungs", []), lane.steps_run,
                                              lane.budget_steps).items():
            setattr(self, name, value)
        check_evaluations(points, self.cv_results_)
        self._select_best(snapshots, metric_names, lane)

    def _select_best(self, snapshots, metric_names, lane) -> None:
        """``best_index_``, ``best_score_``, ``best_params_`` (the kinds' full values and
        the lane's net parameters at the best point), where :func:`select_best` has them."""
        for name in ("best_index_", "best_score_", "best_params_"):
            self.__dict__.pop(name, None)  # never one left by an earlier fit
        eligible = [p.get("eligible", True) for p in lane.state.points] or None
        best = select_best(self.cv_results_, self.refit, self.multimetric_, metric_names,
                           eligible, kept=snapshots)
        if best is None:
            return
        self.best_index_, best_score = best
        if best_score is not None:
            self.best_score_ = best_score
        self.best_params_ = lane.public_values(snapshots[self.best_index_])
        self.best_params_.update(lane.ran_net_params())

    # ------------------------------------------------------------------ refit
    def _refit(self, context: FitContext, lane, fit_params) -> None:
        """``best_estimator_`` (and ``ensemble_``) trained on all rows at the best point,
        then the undertrained check (skipped for an interrupted refit, reported as such,
        and for the ensemble, whose predictions come from a chain run after the refit)."""
        ensemble = isinstance(self.refit, str) and self.refit == "ensemble"
        kinds = {k: v for k, v in self.best_params_.items() if k in self.hyperparams}
        try:
            made = refit_best(context, lane, kinds, fit_params, ensemble=ensemble)
        except Exception:
            self._search_state = lane.state  # a failed refit keeps the search resumable
            raise
        self.best_estimator_, self.refit_time_ = made.estimator, made.seconds
        if made.ensemble is not None:
            self.ensemble_ = made.ensemble
        for reason, category in ((made.interrupted, SearchInterrupted),
                                 (made.diverged, DivergenceWarning)):
            if reason:
                self.stop_reason_ = reason if not self.stop_reason_ else \
                    f"{self.stop_reason_}; {reason}"
                if not made.finite and self.error_score == "raise":
                    raise FloatingPointError(reason)
                warn_at_caller(reason, category)
        best = getattr(self, "best_score_", math.nan)
        if made.interrupted or made.diverged or ensemble or not math.isfinite(best):
            return
        best_key = context.best_key
        iteration = int(self.cv_results_["iteration"][self.best_index_])
        warn_if_refit_undertrained(
            self.best_estimator_, context.X, refit_targets(context, lane), context.labels,
            {best_key: context.scorers[best_key]}, lane.folds, lane.state.splits, best,
            best_point_steps(context, lane, iteration), context.lane_net(lane.ran_net_params()),
            own_lr=context.net.lr)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the tuner, fitted or stopped mid-search, to ``path``.

        The file is a format header followed by a joblib pickle, written atomically (to
        a temporary file beside ``path``, then renamed): an interrupted save leaves the
        previous file whole. Load it with :meth:`load`; ``fit`` with ``warm_start=True``
        then continues the search.

        Parameters
        ----------
        path : str or path-like
        """
        saved_search.save(self, path)

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
            If ``trusted`` is not ``True``, if the file does not start with the header
            that :meth:`save` writes (checked before anything is unpickled), or if it
            is truncated or corrupt.
        """
        return saved_search.load(path, cls, trusted)

