"""``SGLDHyperTuner``: HPO-SGLD as a scikit-learn meta-estimator over skorch nets.

A thin shell: scikit-learn does validation, cross-validation and scoring; joblib runs the
folds; ``sgld_tuner.core`` computes hypergradients; ``skorch_adapter`` turns the net into
functional inner/outer losses and builds the refit net with the learned values.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier, is_regressor
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .core import (BilevelProblem, ChainState, InnerSettings, hypergradient, make_generator,
                   make_outer_optimizer)
from .core import _tree
from .hyperparams import Hyperparameter
from .results import build_cv_results, build_history
from .skorch_adapter import NetProblem, make_learned_net


class SearchInterrupted(RuntimeWarning):
    """The search ended early (KeyboardInterrupt, timeout or divergence); results so far are kept."""


class DivergenceWarning(RuntimeWarning):
    """A non-finite loss or hypergradient; the step was rolled back and shrunk."""


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
class _FoldChain:
    """One cv fold: its net, its functional losses and its persistent SGLD chain."""

    net: object
    problem: NetProblem
    bilevel: BilevelProblem
    state: ChainState
    generator: torch.Generator
    X_val: np.ndarray
    y_val: np.ndarray
    fit_time: float = 0.0


def _fold_hypergradient(fold: _FoldChain, lam_values, settings: InnerSettings):
    """One outer iteration's hypergradient on one fold (runs in a joblib worker).

    Returns the fold too: with process-based backends it comes back as an updated copy.
    """
    started = time.perf_counter()
    lam = [t.detach().clone().requires_grad_(True) for t in lam_values]
    result = hypergradient(fold.bilevel, lam, fold.state, settings, fold.generator)
    fold.fit_time += time.perf_counter() - started
    return fold, result


def _score_fold(fold: _FoldChain, scorers: dict, error_score):
    """Scores of the fold's current chain position on its validation split."""
    started = time.perf_counter()
    theta = _tree.unflatten(fold.state.theta, fold.bilevel.theta_spec)
    net = fold.problem.load_theta(theta)
    scores = {}
    for name, scorer in scorers.items():
        try:
            value = float(scorer(net, fold.X_val, fold.y_val))
            if not math.isfinite(value):
                raise ValueError(f"scorer {name!r} returned {value}")
        except Exception as exc:  # noqa: BLE001 - reported through error_score like sklearn
            if error_score == "raise":
                raise
            warnings.warn(f"scoring {name!r} failed ({exc}); using error_score={error_score}",
                          RuntimeWarning, stacklevel=3)
            value = float(error_score)
        scores[name] = value
    return scores, time.perf_counter() - started


class SGLDHyperTuner(MetaEstimatorMixin, BaseEstimator):
    """Tune continuous hyperparameters of a skorch net by HPO-SGLD, like ``GridSearchCV``.

    Each cv fold runs its own SGLD chain over the net's weights; every outer iteration
    averages the folds' hypergradients and takes one step on the hyperparameters. Points
    of the hyperparameter trajectory are scored every ``eval_every`` iterations and
    reported in ``cv_results_``; the best one is refit on all data.

    Parameters
    ----------
    estimator : skorch NeuralNet, NeuralNetClassifier or NeuralNetRegressor
        Unfitted net; never modified (cloned per fold and for the refit).
    hyperparams : dict of str -> Hyperparameter
        The differentiable hyperparameters, e.g. ``{"l1": PerWeightL1(init=1e-4)}``.
    n_outer : int, default=50
        Outer (hyperparameter) iterations.
    outer_lr : float, default=0.05
        Step size of the outer optimizer on the unconstrained hyperparameters.
    outer_optimizer : {"adam", "sgd"} or callable, default="adam"
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
    recursion : {"damped", "paper"}, default="damped"
        See ``docs/bias.md``.
    chain : {"persistent", "restart"}, default="persistent"
    cv : int, cv splitter or iterable, default=5
    scoring : str, callable, list, tuple or dict, optional
        As in ``GridSearchCV``; ``None`` uses the net's ``score`` (accuracy / R^2).
    refit : bool, str or callable, default=True
        As in ``GridSearchCV``.
    eval_every : int, default=5
        Score the trajectory every this many outer iterations (and at the last one).
    n_jobs : int, optional
        Folds run in parallel through joblib (any joblib backend, e.g. Dask).
    random_state : int, RandomState or None
        Seeds the nets' initialisations and one torch generator per fold.
    verbose : int, default=0
        ``1`` shows a tqdm progress bar with the current validation score.
    callbacks : list of callable, optional
        Each gets the record of every outer iteration (a dict); a truthy return stops.
    timeout : float, optional
        Seconds after which the search ends at the next outer iteration.
    error_score : "raise" or float, default=nan
        Score of an evaluation that fails.

    Attributes
    ----------
    cv_results_ : dict of numpy arrays
        One row per evaluation point on the hyperparameter trajectory, in
        ``GridSearchCV``'s format; ``param_<name>`` holds a scalar summary.
    best_index_, best_score_, best_params_ : int, float, dict
        ``best_params_`` holds the full learned values (arrays for per-weight kinds).
    best_estimator_ : skorch net
        A fresh net trained on all data with the learned values built in.
    hyperparams_ : dict
        The values at the end of the search.
    history_ : pandas.DataFrame
        One row per outer iteration.
    refit_time_, n_splits_, scorer_, classes_, n_features_in_, multimetric_
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["initialize", "get_loss", "fit"])],
        "hyperparams": [dict],
        "n_outer": [Interval(Integral, 1, None, closed="left")],
        "outer_lr": [Interval(Real, 0, None, closed="neither")],
        "outer_optimizer": [StrOptions({"adam", "sgd"}), callable],
        "burn_in": [Interval(Integral, 0, None, closed="left")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "noise_scale": [Interval(Real, 0, None, closed="left")],
        "inner_lr": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, -1, None, closed="left"), None],
        "method": [StrOptions({"sgld", "rmd", "rmd-fo", "fmd", "ift-cg", "ift-neumann"})],
        "recursion": [StrOptions({"damped", "paper"})],
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
    }

    def __init__(self, estimator, hyperparams, *, n_outer=50, outer_lr=0.05,
                 outer_optimizer="adam", burn_in=5, n_samples=5, temperature=1e-4,
                 noise_scale=1.0, inner_lr=None, batch_size=None, method="sgld",
                 recursion="damped", chain="persistent", cv=5, scoring=None, refit=True,
                 eval_every=5, n_jobs=None, random_state=None, verbose=0, callbacks=None,
                 timeout=None, error_score=np.nan):
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

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            from sklearn.utils import get_tags

            inner = get_tags(self.estimator)
            tags.estimator_type = inner.estimator_type
            tags.classifier_tags = inner.classifier_tags
            tags.regressor_tags = inner.regressor_tags
        except Exception:  # noqa: BLE001 - a non-estimator fails later with a clear TypeError
            pass
        tags.input_tags.sparse = False
        tags.non_deterministic = self.random_state is None
        return tags

    @property
    def _is_classifier(self) -> bool:
        return is_classifier(self.estimator)

    def _check_estimator_and_hyperparams(self):
        from skorch import NeuralNet

        if not isinstance(self.estimator, NeuralNet):
            raise TypeError(
                "estimator must be a skorch NeuralNet, NeuralNetClassifier or "
                f"NeuralNetRegressor, got {type(self.estimator).__name__}; wrap your "
                "torch.nn.Module in one, e.g. NeuralNetClassifier(MyModule, lr=0.1)")
        if not self.hyperparams:
            raise ValueError("hyperparams is empty: give at least one, e.g. "
                             "{'l1': PerWeightL1(init=1e-4)}")
        bad = {k: type(v).__name__ for k, v in self.hyperparams.items()
               if not isinstance(v, Hyperparameter)}
        if bad:
            raise TypeError(f"hyperparams values must be sgld_tuner.hyperparams kinds; got {bad}")
        if self.method == "fmd":
            warnings.warn("method='fmd' stores a dim(theta) x dim(lam) Jacobian; it is only "
                          "practical for a handful of hyperparameters", UserWarning, stacklevel=3)

    def _scorers(self):
        """Normalise ``scoring`` into ``{name: scorer}`` and whether it is multi-metric."""
        scoring = self.scoring
        if scoring is None or isinstance(scoring, str) or (callable(scoring) and not isinstance(scoring, dict)):
            return {"score": check_scoring(self.estimator, scoring=scoring)}, False
        if isinstance(scoring, (list, tuple, set)):
            if not scoring or not all(isinstance(s, str) for s in scoring) or len(set(scoring)) != len(scoring):
                raise ValueError("scoring as a list/tuple must hold unique metric names (strings)")
            return {s: check_scoring(self.estimator, scoring=s) for s in scoring}, True
        if isinstance(scoring, dict):
            if not scoring:
                raise ValueError("scoring as a dict must not be empty")
            return {k: check_scoring(self.estimator, scoring=v) for k, v in scoring.items()}, True
        raise ValueError(f"unsupported scoring {scoring!r}")

    def _check_refit(self, metric_names, multimetric):
        refit = self.refit
        if multimetric and refit is True:
            raise ValueError(
                "For multi-metric scoring, refit must be a metric name, a callable or "
                f"False; metrics are {metric_names}")
        if isinstance(refit, str) and refit != "ensemble" and multimetric and refit not in metric_names:
            raise ValueError(f"refit={refit!r} is not one of the metrics {metric_names}")
        if isinstance(refit, str) and refit == "ensemble" and multimetric:
            raise ValueError("refit='ensemble' ranks by a single metric; use one scorer")

    def _validate_inputs(self, X, y):
        X, y = validate_data(self, X, y, accept_sparse=False, dtype=None, allow_nd=True,
                             multi_output=not self._is_classifier,
                             y_numeric=is_regressor(self.estimator))
        # The net computes in float32 (skorch's default); float64 input is cast, by design.
        X = np.asarray(X, dtype=np.float32)
        if not X.flags.writeable:  # torch warns on read-only arrays (e.g. from DataFrames)
            X = X.copy()
        if self._is_classifier:
            check_classification_targets(y)
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise ValueError(
                    f"y has 1 class only ({encoder.classes_[0]!r}); a classifier needs at "
                    "least 2 classes")
            self.classes_ = encoder.classes_
            self._label_encoder = encoder
            y = encoder.transform(y).astype(np.int64)
        elif is_regressor(self.estimator):
            y = np.asarray(y, dtype=np.float32)
        else:  # a plain NeuralNet: the user's criterion decides what y must be
            y = np.asarray(y)
        return X, y

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, groups=None):
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

        Returns
        -------
        self
        """
        self._validate_params()
        self._check_estimator_and_hyperparams()
        X, y = self._validate_inputs(X, y)
        scorers, multimetric = self._scorers()
        metric_names = list(scorers)
        self._check_refit(metric_names, multimetric)
        self.multimetric_ = multimetric
        self.scorer_ = scorers if multimetric else scorers["score"]

        cv = check_cv(self.cv, y, classifier=self._is_classifier)
        if len(X) < cv.get_n_splits(X, y, groups):
            raise ValueError(
                f"n_samples={len(X)} is fewer than the {cv.get_n_splits(X, y, groups)} cv "
                "folds; pass more data or a smaller cv")
        splits = list(cv.split(X, y, groups))
        self.n_splits_ = len(splits)
        rng = check_random_state(self.random_state)
        seeds = rng.randint(0, 2**31 - 1, size=(len(splits), 2))
        refit_seed = int(rng.randint(0, 2**31 - 1))

        settings = self._settings()
        folds = [self._make_fold(X, y, train, val, seed)
                 for (train, val), seed in zip(splits, seeds)]
        lam_init = folds[0].problem.init_lam()
        lam, lam_spec = _tree.flatten(lam_init)
        lam = [t.detach().clone().requires_grad_(True) for t in lam]
        self._lam_spec = lam_spec
        optimizer = make_outer_optimizer(self.outer_optimizer, lam, self.outer_lr)

        points, records, snapshots = [], [], {}
        best_key = self._refit_metric(metric_names)
        best_value, stop_reason = -np.inf, None
        started = time.perf_counter()
        progress = self._progress()
        parallel = Parallel(n_jobs=self.n_jobs, prefer="threads")
        last_fit_times = np.zeros(len(folds))
        try:
            for k in range(self.n_outer):
                it_started = time.perf_counter()
                outputs = parallel(delayed(_fold_hypergradient)(fold, [t.detach() for t in lam], settings)
                                   for fold in folds)
                folds = [fold for fold, _ in outputs]
                results = [res for _, res in outputs]
                grad = [torch.stack([r.grad[i] for r in results]).mean(0) for i in range(len(lam))]
                outer_loss = float(np.mean([r.outer_loss for r in results]))
                finite = math.isfinite(outer_loss) and all(bool(torch.isfinite(g).all()) for g in grad)
                record = {"iteration": k, "outer_loss": outer_loss,
                          "inner_loss": float(np.mean([r.inner_loss for r in results])),
                          "hypergrad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in grad))),
                          "diverged": not finite}
                if not finite:
                    warnings.warn(f"non-finite loss or hypergradient at outer iteration {k}; "
                                  "hyperparameters kept at their last finite value",
                                  DivergenceWarning, stacklevel=2)
                    stop_reason = f"diverged at outer iteration {k}"
                else:
                    optimizer.zero_grad(set_to_none=False)
                    for leaf, g in zip(lam, grad):
                        leaf.grad = g.to(leaf.dtype)
                    optimizer.step()
                public = self._summaries(folds[0].problem, lam)
                record.update({f"param_{name}": v for name, v in public.items()})
                if finite and (k % self.eval_every == self.eval_every - 1 or k == self.n_outer - 1):
                    point, mean_scores = self._evaluate(folds, scorers, public, k, last_fit_times)
                    last_fit_times = np.array([f.fit_time for f in folds])
                    points.append(point)
                    record.update({f"mean_test_{m if multimetric else 'score'}": s
                                   for m, s in mean_scores.items()})
                    self._keep_snapshot(snapshots, len(points) - 1, lam, mean_scores, best_key,
                                        best_value)
                    if best_key is not None and mean_scores[best_key] > best_value:
                        best_value = mean_scores[best_key]
                record["time_s"] = time.perf_counter() - it_started
                records.append(record)
                if progress is not None:
                    progress.update(1)
                    shown = {key: round(v, 4) for key, v in record.items() if key.startswith("mean_test")}
                    progress.set_postfix(outer_loss=round(outer_loss, 4), **shown)
                if stop_reason:
                    break
                if any(cb(dict(record)) for cb in (self.callbacks or [])):
                    stop_reason = f"stopped by a callback after outer iteration {k}"
                    break
                if self.timeout is not None and time.perf_counter() - started > self.timeout:
                    stop_reason = f"timeout of {self.timeout}s reached after outer iteration {k}"
                    break
        except KeyboardInterrupt:
            stop_reason = f"interrupted (KeyboardInterrupt) at outer iteration {len(records)}"
        finally:
            if progress is not None:
                progress.close()
        if stop_reason:
            warnings.warn(f"search ended early: {stop_reason}; keeping the results so far",
                          SearchInterrupted, stacklevel=2)
        self.stop_reason_ = stop_reason

        if not points and folds[0].state.theta is not None:
            # Nothing scored yet (early stop): score where the chains are now.
            public = self._summaries(folds[0].problem, lam)
            point, mean_scores = self._evaluate(folds, scorers, public, len(records) - 1, last_fit_times)
            points.append(point)
            self._keep_snapshot(snapshots, 0, lam, mean_scores, best_key, best_value)
        if not points:
            raise RuntimeError(f"the search ended before any hyperparameter was scored ({stop_reason})")

        self.cv_results_ = build_cv_results(points, metric_names, self.n_splits_, not multimetric)
        self.history_ = build_history(records)
        # Keep the chains' states (for warm starts), not the folds: those hold data copies.
        self._chain_states = [fold.state for fold in folds]
        self._bound = folds[0].problem.bound
        self.hyperparams_ = self._public_values(lam)
        self._select_best(snapshots, metric_names, multimetric)
        if self.refit:
            refit_started = time.perf_counter()
            self.best_estimator_ = make_learned_net(self.estimator, self.hyperparams, self.best_params_)
            # skorch draws initial weights and batch order from torch's global RNG: seed it
            # (without disturbing the caller's stream) so that random_state fixes the refit.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(refit_seed)
                self.best_estimator_.fit(X, y)
            self.refit_time_ = time.perf_counter() - refit_started
        return self

    # ------------------------------------------------------------------ fit helpers
    def _settings(self) -> InnerSettings:
        inner_lr = self.inner_lr if self.inner_lr is not None else self.estimator.get_params()["lr"]
        return InnerSettings(method=self.method, inner_lr=float(inner_lr), burn_in=self.burn_in,
                             n_samples=self.n_samples, temperature=self.temperature,
                             noise_scale=self.noise_scale, chain=self.chain,
                             recursion=self.recursion).validate()

    def _make_fold(self, X, y, train, val, seed) -> _FoldChain:
        net = clone(self.estimator)
        overrides = {"verbose": 0}
        if self._is_classifier:
            overrides["classes"] = list(range(len(self.classes_)))
        net.set_params(**overrides)
        device = getattr(net, "device", "cpu") or "cpu"
        generator = make_generator(int(seed[1]), device)
        batch_size = self.batch_size if self.batch_size is not None else net.batch_size
        # skorch initialises the module from torch's global RNG (lazy modules only on the
        # first forward, inside NetProblem): seed it without disturbing the caller's stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed[0]))
            net.initialize()
            problem = NetProblem(net, self.hyperparams, X[train], y[train], X[val], y[val],
                                 train_rows=np.asarray(train), batch_size=batch_size,
                                 generator=generator)
        lam_spec = _tree.flatten(problem.init_lam())[1]
        bilevel = BilevelProblem(problem.outer_loss, problem.inner_loss, lam_spec,
                                 problem.theta0(), mixed_vjp=problem.mixed_vjp())
        return _FoldChain(net=net, problem=problem, bilevel=bilevel, state=ChainState(),
                          generator=generator, X_val=X[val], y_val=y[val])

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

    def _evaluate(self, folds, scorers, public, iteration, last_fit_times):
        per_fold = Parallel(n_jobs=self.n_jobs, prefer="threads")(
            delayed(_score_fold)(fold, scorers, self.error_score) for fold in folds)
        scores = {m: [s[m] for s, _ in per_fold] for m in scorers}
        point = {
            "iteration": iteration,
            "params": dict(public),
            "scores": scores,
            "fit_times": [f.fit_time - t for f, t in zip(folds, last_fit_times)],
            "score_times": [t for _, t in per_fold],
        }
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
            if not isinstance(index, (Integral, np.integer)) or not 0 <= index < len(self.cv_results_["params"]):
                raise IndexError("refit callable must return an index into cv_results_['params']")
            self.best_index_ = int(index)
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

    def _progress(self):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.n_outer, desc="SGLDHyperTuner", unit="outer")

    # ------------------------------------------------------------------ delegation
    def _encode(self, y):
        if self._is_classifier:
            return self._label_encoder.transform(y)
        return np.asarray(y, dtype=np.float32) if is_regressor(self.estimator) else np.asarray(y)

    def _check_X(self, X):
        check_is_fitted(self, "best_estimator_")
        X = validate_data(self, X, reset=False, accept_sparse=False, dtype=None, allow_nd=True)
        return np.asarray(X, dtype=np.float32)

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Predict with ``best_estimator_`` (class labels in the original encoding)."""
        X = self._check_X(X)
        pred = self.best_estimator_.predict(X)
        if self._is_classifier:
            return self.classes_[np.asarray(pred, dtype=int)]
        return pred

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities from ``best_estimator_`` (columns follow ``classes_``)."""
        X = self._check_X(X)
        return self.best_estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def score(self, X, y=None):
        """Score of ``best_estimator_`` with ``scorer_`` (the refit metric if multi-metric)."""
        X = self._check_X(X)
        scorer = self.scorer_
        if self.multimetric_:
            scorer = self.scorer_[self._refit_metric(list(self.scorer_))]
        return scorer(self.best_estimator_, X, self._encode(y))
