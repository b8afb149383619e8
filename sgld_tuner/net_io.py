"""The estimator's side that faces the data and the net: which net it wraps, the checks
on it and on the inputs, the rows the net takes, the cv splits, and the delegation of
``predict``, ``predict_proba``, ``score``... to the refit net, as ``GridSearchCV`` does.

:class:`NetIO` is a mixin of :class:`~sgld_tuner.SGLDHyperTuner`; it reads the tuner's
parameters (``estimator``, ``hyperparams``, ``cv``, ``refit``, ``scorer_``...).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import is_classifier, is_regressor
from sklearn.model_selection import check_cv
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import _safe_indexing
from sklearn.utils.metadata_routing import _raise_for_params
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .hyperparams import Hyperparameter
from .search.refit import weights_finite
from .search.routing import metadata_router
from .search.scoring import refit_metric
from .search.settings import SamplerSettings, is_learning_rate
from .skorch_adapter import takes_ids


def _estimator_has(attr, method=None):
    """Delegate to the refit estimator, as ``GridSearchCV`` does: without ``refit`` the
    ``AttributeError`` says so (``available_if`` chains it as the cause)."""

    def check(self):
        if not self.refit:
            raise AttributeError(
                f"This {type(self).__name__} instance was initialized with `refit=False`. "
                f"{method or attr} is available only after refitting on the best "
                "parameters. You can refit an estimator manually using the `best_params_` "
                "attribute")
        if hasattr(self, "best_estimator_"):
            getattr(self.best_estimator_, attr)
            return True
        getattr(self.estimator, attr)
        return True

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


def _plain_labels(y):
    """A pandas nullable column without missing values (``Int64``, ``boolean``) as the
    numpy array of its own kind (scikit-learn's validation would make it float)."""
    dtype = getattr(y, "dtype", None)
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    if numpy_dtype is not None and hasattr(y, "isna") and not bool(y.isna().any()):
        return y.to_numpy(dtype=numpy_dtype)
    return y


def _cast_finite(values, dtype, name: str) -> np.ndarray:
    """``values`` cast to the net's ``dtype``, refused where a finite value becomes
    infinite in it (beyond float32's range, about 3.4e38), as infinity is."""
    with np.errstate(over="ignore"):
        cast = np.asarray(values, dtype=dtype)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        raise ValueError(f"Input {name} contains values that are infinite in the net's "
                         f"dtype {np.dtype(dtype).name} (|value| above "
                         f"{np.finfo(dtype).max:.3g}): rescale them")
    return cast


class NetIO:
    """Mixin: the tuner's estimator, input checks, rows, splits and delegation."""

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
        if self.__sklearn_tags__().input_tags.pairwise:
            raise ValueError("a pairwise estimator (precomputed kernel input) is not "
                             "supported: the tuner's folds do not slice kernel columns")
        if not self.hyperparams:
            raise ValueError("hyperparams is empty: give at least one, e.g. "
                             "{'l1': PerWeightL1(init=1e-4)}")
        bad = {k: type(v).__name__ for k, v in self.hyperparams.items()
               if not isinstance(v, Hyperparameter)}
        if bad:
            raise TypeError(f"hyperparams values must be sgld_tuner.hyperparams kinds; got {bad}")
        names = list(self.hyperparams)
        nested = [k for k in names if not isinstance(k, str) or "__" in k]
        if nested:
            # get_params/set_params address a kind's settings as hyperparams__<name>__<key>
            raise ValueError(f"hyperparams names must be strings without '__', got {nested}")
        replacing = [i for i, k in enumerate(names) if self.hyperparams[k].replaces_loss]
        if replacing and replacing[-1] > 0:
            # what the kinds before the last replacing one do to the loss is discarded
            shadowed = [k for k in names[:replacing[-1]] if self.hyperparams[k].replaces_loss]
            if shadowed:
                warnings.warn(
                    f"hyperparams {shadowed} rewrite the training loss but "
                    f"{names[replacing[-1]]!r} after them replaces it: they never move; "
                    "keep one loss-replacing kind", UserWarning, stacklevel=3)
        device = str(self._net().device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"the net's device is {device!r} but torch sees no CUDA device "
                             "(torch.cuda.is_available() is False): pass device='cpu', or "
                             "run where a GPU and a CUDA build of torch are")
        lr = self._net().lr
        if not is_learning_rate(lr):
            raise ValueError(f"the net's lr must be a finite number > 0, got {lr!r}")
        batch_size = sampler.batch_size if sampler.batch_size is not None else self._net().batch_size
        if batch_size is None or not (batch_size == -1 or batch_size >= 1):
            raise ValueError(
                f"the net's batch_size={batch_size!r} leaves no rows per training step: pass "
                "batch_size=-1 (full batch) or a positive int, to the net or to SamplerSettings")
        if sampler.method == "fmd":
            warnings.warn("method='fmd' stores a dim(theta) x dim(lam) Jacobian; it is only "
                          "practical for a handful of hyperparameters", UserWarning, stacklevel=3)
        if sampler.method == "rmd-fo":
            warnings.warn("method='rmd-fo' drops the second derivatives through which the "
                          "kinds, in the training loss, reach the validation loss: their "
                          "hypergradients are zero and the search will not move them; use "
                          "'sgld' or 'rmd'", UserWarning, stacklevel=3)

    def _validate_inputs(self, X, y):
        if y is None:
            # scikit-learn's own "requires y to be passed" error for classifiers/regressors
            validate_data(self, X, y, accept_sparse=False, dtype=None, allow_nd=True)
            raise ValueError("SGLDHyperTuner requires y: the outer loss is the net's "
                             "criterion on the validation targets")
        given, y = X, _plain_labels(y)
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
            y = _cast_finite(y, np.float32, "y")
        else:  # a plain NeuralNet: the user's criterion decides what y must be
            y = np.asarray(y)
        return X, y

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
        try:
            splits = [tuple(_safe_indexing(rows, np.asarray(part)) if len(part) else rows[:0]
                            for part in split) for split in cv.split(X, y, groups)]
        except IndexError as exc:
            raise ValueError(f"cv gives row indices outside the {len(X)} rows of X "
                             f"({exc}): check the cv splits against X") from exc
        if splits and len(splits) != n_splits:
            raise ValueError("cv.split and cv.get_n_splits return inconsistent results. "
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            from sklearn.utils import get_tags

            inner = get_tags(self.estimator)
            tags.estimator_type = inner.estimator_type
            tags.classifier_tags = inner.classifier_tags
            tags.regressor_tags = inner.regressor_tags
            tags.target_tags.required = inner.target_tags.required
            tags.input_tags.pairwise = inner.input_tags.pairwise
        except Exception:  # noqa: BLE001 - a non-estimator fails later with a clear TypeError
            pass
        tags.input_tags.sparse = False
        tags.non_deterministic = self.random_state is None
        return tags

    def _check_X(self, X):
        check_is_fitted(self, "best_estimator_")
        if self._is_pipeline:
            # The fitted Pipeline checks its own input: it takes what it accepts (a
            # DataFrame's columns reordered or extra columns, as GridSearchCV does).
            return X
        given = X
        X = validate_data(self, X, reset=False, accept_sparse=False, dtype=None, allow_nd=True)
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
        X = _cast_finite(X, np.int64 if self._keeps_ids(X) else np.float32, "X")
        if not X.flags.writeable:  # torch warns on read-only arrays (e.g. from DataFrames)
            X = X.copy()
        return X

    def _predictor(self):
        """The posterior ensemble when ``refit="ensemble"``, else ``best_estimator_``;
        a warning when the refit net's weights are not finite (its outputs are NaN)."""
        ensemble = getattr(self, "ensemble_", None)
        if ensemble is not None:
            return ensemble
        if not weights_finite(self.best_estimator_):
            warnings.warn("best_estimator_'s weights are not finite (the refit diverged, "
                          f"see stop_reason_: {self.stop_reason_!r}): its predictions are "
                          "NaN or arbitrary", RuntimeWarning, stacklevel=3)
        return self.best_estimator_

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Predict with ``best_estimator_`` (class labels in the original encoding)."""
        X = self._check_X(X)
        predicted = self._predictor().predict(X)
        if self._is_classifier and not self._net_takes_classes:
            # A binary net predicts 0/1: the labels are classes_ (e.g. False/True).
            return self._classes[np.asarray(predicted).astype(np.int64).reshape(-1)]
        # The refit net (and the ensemble) predict classes_ labels already.
        return predicted

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
        fitted = "cv_results_" in self.__dict__
        if not (fitted and self._is_classifier and "_classes" in self.__dict__):
            # an AttributeError, so that hasattr(tuner, "classes_") is False
            raise AttributeError(
                "classes_ is available after fit, for a classifier: this "
                f"{type(self).__name__} " + ("wraps a regressor" if fitted else
                                             "is not fitted yet"))
        return self._classes

    @available_if(_estimator_has("score_samples"))
    def score_samples(self, X):
        """``best_estimator_.score_samples`` (when the net's class has one)."""
        return self.best_estimator_.score_samples(self._check_X(X))

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """``best_estimator_.decision_function`` (when the net's class has one)."""
        return self.best_estimator_.decision_function(self._check_X(X))

    @available_if(_estimator_has("predict_proba", "predict_log_proba"))
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def get_metadata_routing(self):
        """The routing of ``fit``'s metadata: to the net's ``fit`` (the refit) and to
        the scorers (``score``), as in ``GridSearchCV``."""
        return metadata_router(self, self.estimator, self.scoring)

    def score(self, X, y=None, **params):
        """Score of ``best_estimator_`` with ``scorer_`` (the refit metric if multi-metric).

        Labels are compared in their original encoding, so labels unseen during ``fit``
        count as errors rather than failing (as in ``GridSearchCV``).
        """
        _raise_for_params(params, self, "score")
        X = self._check_X(X)
        if is_regressor(self.estimator):
            y = np.asarray(y, dtype=np.float32)
        names = [k[len("mean_test_"):] for k in self.cv_results_ if k.startswith("mean_test_")]
        metric = refit_metric(self.refit, names) if self.multimetric_ else None
        scorer = self.scorer_[metric] if isinstance(self.scorer_, dict) else self.scorer_
        value = scorer(self._predictor(), X, y)
        return value[metric] if isinstance(value, dict) else value
