"""Scoring as scikit-learn's searches do it: scorers from ``scoring``, the refit metric,
and every metric of a chain's position with failures reported through ``error_score``."""
from __future__ import annotations

import warnings

from sklearn.metrics import check_scoring
from sklearn.metrics._scorer import _check_multimetric_scoring

from ..skorch_adapter import ModuleRNG


def make_scorers(estimator, scoring) -> tuple[dict, bool]:
    """``scoring`` as ``{name: scorer}``, and whether it is multi-metric."""
    if isinstance(scoring, (list, tuple, set, dict)):
        return _check_multimetric_scoring(estimator, scoring), True
    return {"score": check_scoring(estimator, scoring=scoring)}, False


def callable_metrics(scoring, scorers: dict, multimetric: bool, folds) -> tuple[dict, bool]:
    """Metric names of a callable ``scoring`` that returns a dict.

    As in ``GridSearchCV``, such a callable makes the search multi-metric; a call on a
    fold's net (not yet trained) tells the names, so that ``refit`` is checked before any
    training step. ``folds`` are tried in turn until one call succeeds; a callable that
    fails on all is left to the search's ``error_score`` handling.
    """
    if multimetric or not callable(scoring):
        return scorers, multimetric
    for fold in folds:
        try:
            with ModuleRNG.isolated():
                probe = scoring(fold.scored, fold.X_val, fold.y_val)
            break
        except Exception:  # noqa: BLE001 - reported at scoring time through error_score
            continue
    else:
        return scorers, multimetric
    if not isinstance(probe, dict):
        return scorers, False
    return {name: scoring for name in probe}, True


def check_refit(refit, metric_names: list, multimetric: bool) -> None:
    """Refuse a ``refit`` that cannot pick one metric of a multi-metric search."""
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


def refit_metric(refit, metric_names: list) -> str:
    """The metric that ranks the points: ``refit``'s name, else the first metric."""
    if isinstance(refit, str) and refit in metric_names:
        return refit
    return metric_names[0]


class MetricsMismatch(ValueError):
    """A dict-returning scoring callable whose keys are not the search's metrics (not a
    failed evaluation: ``error_score`` does not absorb it)."""


def scores_on(estimator, X, y, scorers: dict, error_score, errors: list | None = None,
              params: dict | None = None) -> dict:
    """Every metric of ``scorers`` for ``estimator`` on ``X, y``.

    A scorer that raises scores ``error_score`` with a warning naming the exception (or
    raises with ``"raise"``), and the failure is appended to ``errors``; a non-finite
    score is kept as it is (``fit`` warns once about it, as scikit-learn's searches do).
    ``params``: per metric, keyword arguments for its scorer (routed metadata).
    """
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
                        outputs[id(scorer)] = scorer(estimator, X, y,
                                                     **(params or {}).get(name, {}))
                except Exception as exc:  # noqa: BLE001 - re-raised below, per metric
                    outputs[id(scorer)] = exc
            value = outputs[id(scorer)]
            if isinstance(value, Exception):
                raise value
            if isinstance(value, dict) and name not in value:
                raise MetricsMismatch(
                    f"the scoring callable returned the metrics {sorted(value)}, not "
                    f"{name!r}: a multi-metric callable must return the same keys on every "
                    "call")
            value = float(value[name] if isinstance(value, dict) else value)
        except MetricsMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - reported through error_score like sklearn
            if error_score == "raise":
                raise
            if errors is not None:
                errors.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"scoring {name!r} failed ({type(exc).__name__}: {exc}); using "
                          f"error_score={error_score}", RuntimeWarning, stacklevel=4)
            value = float(error_score)
        scores[name] = value
    return scores
