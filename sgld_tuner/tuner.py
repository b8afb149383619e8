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
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from joblib import hash as joblib_hash
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier, is_regressor
from sklearn.metrics import check_scoring
from sklearn.metrics._scorer import _check_multimetric_scoring
from sklearn.model_selection import check_cv
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .core.engine import InterruptGate, warn_at_caller
from .hyperparams import Hyperparameter
from .learned_net import make_learned_net
from .results import build_cv_results, build_history
from .search import state as saved_search
from .search.context import FitContext
from .search.diagnostics import (DivergenceWarning, OverfittingWarning, SearchInterrupted,
                                 UndertrainedWarning, UnmovedSearchWarning,
                                 warn_if_chains_degraded, warn_if_refit_undertrained,
                                 warn_if_unmoved)
from .search.lane import SNAPSHOT_ALL_MAX_NUMEL
from .search.schedules import LaneFactory, PlainSearch, Schedule
from .search.settings import MOVED_PARAMETERS, OuterSettings, SamplerSettings, moved_error
from .search.state import SearchState, fingerprint
from .skorch_adapter import ModuleRNG, takes_ids

__all__ = ["SGLDHyperTuner", "SearchInterrupted", "UnmovedSearchWarning", "DivergenceWarning",
           "OverfittingWarning", "UndertrainedWarning"]

#: saves written before the search had rooms of its own unpickle their state through this
_SearchState = SearchState


def _estimator_has(attr):
    """Delegate to the refit estimator, as GridSearchCV does."""

    def check(self):
        if hasattr(self, "best_estimator_"):
            getattr(self.best_estimator_, attr)
            return True
        getattr(self.estimator, attr)
        return bool(self.refit)

    return check


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



class SGLDHyperTuner(MetaEstimatorMixin, BaseEstimator):
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
        parameters are reachable as ``hyperparams__<name>__<param>`` (``set_params``,
        ``GridSearchCV``).
    n_outer : int, default=50
        Outer (hyperparameter) iterations.
    sampler : SamplerSettings, optional
        The chains' settings (burn-in, samples, temperature, noise, inner lr and batch
        size, method, recursion, chain, warm-up, stacking); default ``SamplerSettings()``.
        Its fields are ``sampler__<name>`` for ``set_params`` and ``GridSearchCV``.
    outer : OuterSettings, optional
        The outer loop's settings (step size, optimizer, ramp, evaluation period,
        timeout); default ``OuterSettings()``; fields ``outer__<name>``.
    schedule : Schedule, optional
        How lanes of chains are run and compared (:mod:`sgld_tuner.search.schedules`);
        default :class:`~sgld_tuner.search.PlainSearch`, one lane of ``n_outer``
        iterations.
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
        ``best_params_`` holds the full learned values (arrays for per-weight kinds).
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

    def __new__(cls, *args, **kwargs):
        # Parameters that moved into a settings group are named with their new place
        # (in __new__, so that __init__'s signature stays the parameters themselves).
        moved = set(kwargs) & set(MOVED_PARAMETERS)
        if moved:
            raise moved_error(moved)
        return super().__new__(cls)

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

    # ------------------------------------------------------------------ sklearn plumbing
    _GROUPS = {"sampler": SamplerSettings, "outer": OuterSettings}

    def get_params(self, deep=True):
        """As scikit-learn's, plus each kind's parameters as
        ``hyperparams__<name>__<param>`` (with ``deep``)."""
        params = super().get_params(deep=deep)
        if deep and isinstance(self.hyperparams, dict):
            for name, kind in self.hyperparams.items():
                if hasattr(kind, "get_params"):
                    params.update({f"hyperparams__{name}__{k}": v
                                   for k, v in kind.get_params(deep=False).items()})
        return params

    def set_params(self, **params):
        """As scikit-learn's; ``sampler__<name>`` and ``outer__<name>`` work on the
        default (``None``) groups too, and ``hyperparams__<name>__<param>`` sets a
        kind's parameter on a copy of the dict (the caller's kinds are left alone)."""
        moved = {k.split("__")[0] for k in params} & set(MOVED_PARAMETERS)
        if moved:
            raise moved_error(moved, ValueError)
        for group, cls in self._GROUPS.items():
            if (group not in params and getattr(self, group) is None
                    and any(k.startswith(group + "__") for k in params)):
                setattr(self, group, cls())
        kinds = {k: params.pop(k) for k in list(params) if k.startswith("hyperparams__")}
        if kinds:
            hyperparams = {**params.pop("hyperparams", self.hyperparams)}
            for key, value in kinds.items():
                _, name, param = key.split("__", 2)
                if name not in hyperparams:
                    raise ValueError(f"set_params: no hyperparameter {name!r} in "
                                     f"hyperparams (names: {sorted(hyperparams)})")
                hyperparams[name] = clone(hyperparams[name]).set_params(**{param: value})
            params["hyperparams"] = hyperparams
        return super().set_params(**params)

    def __setstate__(self, state):
        # A tuner pickled before the settings were grouped: its flat settings move into
        # the groups (their defaults were those of the groups' fields).
        sampler = {("options" if k == "method_options" else k): state.pop(k)
                   for k in list(state)
                   if k in MOVED_PARAMETERS and MOVED_PARAMETERS[k].startswith("sampler")}
        outer_names = {"outer_lr": "lr", "outer_optimizer": "optimizer",
                       "outer_warmup": "lr_ramp", "eval_every": "eval_every",
                       "timeout": "timeout"}
        outer = {outer_names[k]: state.pop(k) for k in list(state) if k in outer_names}
        if sampler:
            outer.setdefault("lr_ramp", 0)  # no ramp: the behaviour it was fitted with
            state.setdefault("sampler", SamplerSettings(**sampler))
            state.setdefault("outer", OuterSettings(**outer))
            state.setdefault("schedule", None)
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

    def _check_estimator_and_hyperparams(self, sampler: SamplerSettings):
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
        batch_size = sampler.batch_size if sampler.batch_size is not None else self._net().batch_size
        if batch_size is None or not (batch_size == -1 or batch_size >= 1):
            raise ValueError(
                f"the net's batch_size={batch_size!r} leaves no rows per training step: pass "
                "batch_size=-1 (full batch) or a positive int, to the net or to SamplerSettings")
        if sampler.method == "fmd":
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
        sampler = clone(self.sampler if self.sampler is not None else SamplerSettings()).check()
        outer = clone(self.outer if self.outer is not None else OuterSettings()).check()
        self._check_estimator_and_hyperparams(sampler)
        if fit_params:
            warnings.warn(f"fit parameters {sorted(fit_params)} reach the refit's fit only; "
                          "the search's chains do not use them", UserWarning, stacklevel=2)
        X, y = self._validate_inputs(X, y)
        context = self._context(X, y, sampler, outer)
        lanes = self._lanes(context, groups)
        self._set_up_scoring(context, lanes)
        schedule = self.schedule if self.schedule is not None else PlainSearch()
        lane = schedule.run(context, lanes)
        self.recursion_ = context.recursion if sampler.method == "sgld" else sampler.method
        self.folds_stacked_ = lane.chains.stacked
        failure = self._callback_failure(context, lane.engine)
        self._end_search(lane)
        self._format_results(lane)
        for name in ("ensemble_", "best_estimator_", "refit_time_"):
            self.__dict__.pop(name, None)  # never keep what an earlier fit refit
        if failure is not None:
            raise failure
        if self.refit:
            self._refit_and_check(context, lane, fit_params)
        return self

    def _context(self, X, y, sampler, outer) -> FitContext:
        scorers, multimetric = self._scorers()
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
        settings_hash = self._settings_hash()
        resumed = self._resumable(data_hash, settings_hash)
        splits = resumed.splits if resumed is not None else \
            self._splits(context.X, context.y, groups)
        self.n_splits_ = len(splits)

        def fresh(net_params):
            # Re-seeded for every lane: lanes share their nets' starts and noise.
            return SearchState.fresh(data_hash, settings_hash, splits,
                                     check_random_state(self.random_state), net_params)
        return LaneFactory(context, fresh, resumed)

    def _resumable(self, data_hash, settings_hash) -> SearchState | None:
        """The saved search state when warm-starting on the same data and settings."""
        previous = getattr(self, "_search_state", None)
        if not (self.warm_start and previous is not None):
            return None
        if previous.data_hash != data_hash:
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
        return {name: fingerprint(value) for name, value in values.items()}

    def _set_up_scoring(self, context: FitContext, lanes: LaneFactory) -> None:
        """Final scorers (a dict-returning callable is multi-metric: one call on the
        first fold's untrained net tells its keys), ``refit`` checked against them,
        ``scorer_`` and ``multimetric_`` set, and the context told."""
        scorers, multimetric = context.scorers, context.multimetric
        if not multimetric and callable(self.scoring):
            state = lanes.first_state()
            (train, val), seed = state.splits[0], state.seeds[0]
            scorers, multimetric = self._callable_metrics(
                scorers, multimetric, context.make_fold(train, val, seed, state.net_params))
        metric_names = list(scorers)
        self._check_refit(metric_names, multimetric)
        self.multimetric_ = multimetric
        # As GridSearchCV: the callable itself, the dict of scorers, or the one scorer.
        self.scorer_ = (scorers["score"] if not multimetric
                        else self.scoring if callable(self.scoring) else scorers)
        context.scorers, context.multimetric = scorers, multimetric
        context.best_key = self._refit_metric(metric_names)

    def _callback_failure(self, context: FitContext, engine):
        """The exception a user callback raised (the search then ended after that
        iteration, its results kept), with the stop reason saying so; else None."""
        if not context.callback_errors:
            return None
        iteration, exc = context.callback_errors[0]
        engine.stop_reason = (f"a callback raised {type(exc).__name__}: {exc} after outer "
                              f"iteration {iteration}")
        return exc

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
            # Stopped before the first scheduled evaluation: score where the chains are
            # (the starting point if nothing finite was ever reached). For these results
            # only: a resume must not start with a point its trajectory never scored.
            published, _ = lane.scored_point(state.iteration - 1, lam)
            points, snapshots = published["points"], published["snapshots"]
        metric_names = list(lane.context.scorers)
        self.cv_results_ = build_cv_results(points, metric_names, self.n_splits_,
                                            not self.multimetric_)
        self.history_ = build_history(state.records)
        self.hyperparams_ = lane.public_values(lam)
        for key in [k for k in self.cv_results_ if k.startswith("mean_test_")]:
            if np.isnan(self.cv_results_[key]).all():
                raise ValueError(f"every evaluation failed ({key} is all NaN); see the warnings, "
                                 "or pass error_score='raise' to see the first error")
        self._select_best(snapshots, metric_names, lane)

    def _select_best(self, snapshots, metric_names, lane) -> None:
        key = "score" if not self.multimetric_ else self._refit_metric(metric_names)
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
                f"(more than {SNAPSHOT_ALL_MAX_NUMEL} hyperparameters: only the best "
                "point by the first metric is stored)")
        self.best_params_ = lane.public_values(snapshots[self.best_index_])
        self.best_params_.update(lane.state.net_params or {})

    # ------------------------------------------------------------------ refit
    def _refit_and_check(self, context: FitContext, lane, fit_params) -> None:
        """The refit, then the undertrained check (skipped for an interrupted refit,
        which is reported as such already, and for the ensemble, whose predictions come
        from a chain run after the refit)."""
        y = context.y
        # skorch broadcasts 1-D regression targets against an (n, 1) output into an
        # (n, n) loss; the chains take y as a column there, and so does the refit.
        column = (not self._is_classifier and y.ndim == 1
                  and lane.folds[0].problem.output_shape == (1,))
        trained = self._refit(context, lane, y[:, None] if column else y, fit_params)
        best = getattr(self, "best_score_", math.nan)
        if not trained or self.refit == "ensemble" or not math.isfinite(best):
            return
        # The best point's chains: a persistent chain has run its warm-up and every
        # iteration up to the point; a restarted one, one iteration's steps.
        steps = lane.settings.steps
        if context.sampler.chain == "persistent":
            iteration = int(self.cv_results_["iteration"][self.best_index_])
            steps = max(f.warm_up_steps for f in lane.folds) + (iteration + 1) * steps
        best_key = context.best_key
        warn_if_refit_undertrained(self.best_estimator_, context.X, y, context.labels,
                                   {best_key: context.scorers[best_key]}, lane.folds,
                                   lane.state.splits, best, steps,
                                   context.lane_net(lane.state.net_params))

    def _refit(self, context: FitContext, lane, y, fit_params) -> bool:
        """Train ``best_estimator_`` on all rows at the best values (and the ensemble);
        False when a Ctrl-C cut the training short (reported as such).

        The refit net is the user's net class with the learned values built in; a
        classifier gets ``classes=classes_`` and the original labels, so it is a drop-in
        for the tuner (same ``classes_``, ``predict`` returns the original labels). A
        ``Pipeline`` is cloned with that net as its last step and fit on all rows.
        """
        refit_started = time.perf_counter()
        kinds = {k: v for k, v in self.best_params_.items() if k in self.hyperparams}
        net = make_learned_net(context.lane_net(lane.state.net_params), self.hyperparams, kinds)
        labels = context.labels(y)
        if self._is_classifier and self._net_takes_classes:
            net.set_params(classes=list(self._classes))
        elif self._is_classifier:  # binary: skorch's BCE loss wants float 0/1 targets
            labels = np.asarray(y, dtype=np.float32)
        # A Pipeline is refit whole (its preprocessing on all rows) around the learned net.
        self.best_estimator_ = (clone(self.estimator).set_params(
            **{self.estimator.steps[-1][0]: net}) if self._is_pipeline else net)
        # skorch draws initial weights and batch order from torch's global RNG: seed it
        # (without disturbing the caller's stream) so that random_state fixes the refit.
        # skorch's fit ends quietly on Ctrl-C: the gate tells whether one arrived.
        with torch.random.fork_rng(devices=[]), InterruptGate.watch() as gate:
            torch.manual_seed(lane.state.refit_seed)
            self.best_estimator_.fit(context.X, labels, **fit_params)
        if gate.seen:
            self._report_refit_interrupted(net)
        if isinstance(self.refit, str) and self.refit == "ensemble":
            from .ensemble import collect_posterior_samples

            # The chain trains on codes 0..C-1; the ensemble predicts classes_ labels.
            sampler = context.sampler
            self.ensemble_ = collect_posterior_samples(
                self.best_estimator_, self.hyperparams, kinds, context.X, y,
                inner_lr=lane.settings.inner_lr, temperature=sampler.temperature,
                noise_scale=sampler.noise_scale, batch_size=sampler.batch_size,
                random_state=lane.state.refit_seed)
        self.refit_time_ = time.perf_counter() - refit_started
        return not gate.seen

    def _report_refit_interrupted(self, net):
        """skorch's fit ends quietly on Ctrl-C: say that the refit net is undertrained."""
        reason = (f"refit interrupted (KeyboardInterrupt) after {len(net.history)} of "
                  f"{net.max_epochs} epochs: best_estimator_ is undertrained (fit again, "
                  "with warm_start=True to keep the search)")
        self.stop_reason_ = reason if not self.stop_reason_ else f"{self.stop_reason_}; {reason}"
        warn_at_caller(reason, SearchInterrupted)

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

    # ------------------------------------------------------------------ helpers
    def _refit_metric(self, metric_names):
        if callable(self.refit) or self.refit is False:
            return metric_names[0]
        if isinstance(self.refit, str) and self.refit in metric_names:
            return self.refit
        return metric_names[0]

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
        names = [k[len("mean_test_"):] for k in self.cv_results_ if k.startswith("mean_test_")]
        metric = self._refit_metric(names) if self.multimetric_ else None
        scorer = self.scorer_[metric] if isinstance(self.scorer_, dict) else self.scorer_
        value = scorer(self._predictor(), X, y)
        return value[metric] if isinstance(value, dict) else value
