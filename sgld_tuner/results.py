"""``cv_results_`` and ``history_`` in the formats scikit-learn and pandas users expect."""
from __future__ import annotations

import re
import warnings
from numbers import Integral

import numpy as np
import pandas as pd


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """GridSearchCV's ranking: 1 is best, ties share the lowest rank, NaN ranks last."""
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).all():
        return np.ones(len(scores), dtype=np.int32)
    # As sklearn's _format_results: NaN ties with (just below) the worst score.
    filled = np.where(np.isnan(scores), np.nanmin(scores) - 1.0, scores)
    # pandas' rank(method="min") is scipy's rankdata(method="min"); scipy is not a
    # declared dependency of this package.
    return pd.Series(-filled).rank(method="min").to_numpy().astype(np.int32)


def build_cv_results(points: list[dict], metric_names: list[str], n_splits: int,
                     single_metric: bool) -> dict:
    """Assemble ``cv_results_`` from evaluation points of the hyperparameter trajectory.

    Parameters
    ----------
    points : list of dict
        One per evaluation point: ``iteration``, ``params`` (name -> scalar summary),
        ``scores`` (metric -> list of per-split scores), ``fit_times`` and
        ``score_times`` (per split, seconds); optionally ``train_scores`` (as ``scores``,
        on the training rows: ``split<k>_train_*``, ``mean_/std_train_*`` columns).
    metric_names : list of str
        Metric keys; a single metric is reported under the name ``score``.
    n_splits : int
    single_metric : bool
        Whether to use GridSearchCV's single-metric names (``mean_test_score``...).

    Returns
    -------
    dict of numpy arrays (``param_*`` as masked arrays, like GridSearchCV).
    """
    n = len(points)
    results: dict = {}
    fit = np.array([p["fit_times"] for p in points], dtype=float).reshape(n, n_splits)
    score = np.array([p["score_times"] for p in points], dtype=float).reshape(n, n_splits)
    results["mean_fit_time"], results["std_fit_time"] = fit.mean(axis=1), fit.std(axis=1)
    results["mean_score_time"], results["std_score_time"] = score.mean(axis=1), score.std(axis=1)
    names = sorted({key for p in points for key in p["params"]})
    for name in names:
        given = [p["params"].get(name) for p in points]
        numeric = all(v is None or isinstance(v, (int, float, np.number)) for v in given)
        values = np.ma.MaskedArray(np.empty(n, dtype=float if numeric else object), mask=True)
        for i, value in enumerate(given):
            if name in points[i]["params"]:
                values[i] = value
        results[f"param_{name}"] = values
    results["params"] = [dict(p["params"]) for p in points]
    results["iteration"] = np.array([p["iteration"] for p in points], dtype=int)
    # as scikit-learn's successive-halving searches: the rung and the resources (inner
    # steps per fold the point's chains had run)
    results["iter"] = np.array([p.get("iter", 0) for p in points], dtype=int)
    results["n_resources"] = np.array([p.get("n_resources", 0) for p in points], dtype=int)
    for metric in metric_names:
        key = "score" if single_metric else metric
        for kind, field in (("test", "scores"), ("train", "train_scores")):
            if field not in points[0]:
                continue
            table = np.array([p[field][metric] for p in points], dtype=float).reshape(n, n_splits)
            for k in range(n_splits):
                results[f"split{k}_{kind}_{key}"] = table[:, k]
            results[f"mean_{kind}_{key}"] = table.mean(axis=1)
            results[f"std_{kind}_{key}"] = table.std(axis=1)
        results[f"rank_test_{key}"] = rank_scores(results[f"mean_test_{key}"])
    return results


def build_history(records: list[dict]) -> pd.DataFrame:
    """One row per outer iteration (columns vary with what was recorded)."""
    return pd.DataFrame.from_records(records)


def select_best(cv_results: dict, refit, multimetric: bool, metric_names: list,
                eligible=None, kept=None):
    """``(best_index, best_score)`` as ``GridSearchCV`` picks them: a callable ``refit``
    chooses the index from ``cv_results`` (and there is no best score), otherwise the
    best rank of the refit metric among the ``eligible`` rows (all by default; a race's
    are its winning lane's, as scikit-learn's halving searches pick in the last rung).
    None for several metrics and ``refit=False``: no metric says which is best. ``kept``:
    the indices whose full values were kept (the best must be one of them)."""
    if multimetric and refit is False:
        return None
    if callable(refit):
        index = refit(cv_results)
        # GridSearchCV's errors and wording
        if not isinstance(index, (Integral, np.integer)):
            raise TypeError("best_index_ returned is not an integer")
        if not 0 <= index < len(cv_results["params"]):
            raise IndexError("best_index_ index out of range")
        index, score = int(index), None
    else:
        key = "score"
        if multimetric:
            key = refit if isinstance(refit, str) and refit in metric_names else metric_names[0]
        ranks = np.asarray(cv_results[f"rank_test_{key}"], dtype=float)
        if eligible is not None:
            ranks = np.where(eligible, ranks, np.inf)
        index = int(np.argmin(ranks))
        score = float(cv_results[f"mean_test_{key}"][index])
    if kept is not None and index not in kept:
        raise ValueError(
            f"the full values at cv_results_ index {index} were not kept (too many "
            "hyperparameters to keep every point's: only the best point by the first "
            "metric is stored)")
    return index, score


def check_evaluations(points: list, cv_results: dict) -> None:
    """As scikit-learn's searches after their fits: raise when every evaluation failed
    (whatever ``error_score`` stood in for them), and warn once when some scores are
    not finite."""
    errors = [fold_errors for p in points for fold_errors in p.get("errors", [])]
    if errors and all(errors):
        raise ValueError(
            f"every evaluation failed (all {len(errors)} fold scorings of "
            f"{len(points)} point(s)): the scoring or the net is likely misconfigured "
            f"(pass error_score='raise' to see the traceback). The first error: "
            f"{errors[0][0]}")
    for key in [k[len("mean_test_"):] for k in cv_results if k.startswith("mean_test_")]:
        # a point's mean is NaN when one fold's score is: only NaN in every fold of every
        # point is a search that measured nothing (some NaN folds: a warning, below)
        folds = [np.asarray(v, dtype=float) for k, v in cv_results.items()
                 if re.fullmatch(rf"split\d+_test_{re.escape(key)}", k)]
        if folds and all(np.isnan(f).all() for f in folds):
            raise ValueError(f"every evaluation failed (every fold's test_{key} is NaN); "
                             "see the warnings, or pass error_score='raise' to see the "
                             "first error")
    for kind in ("test", "train"):
        bad = {k: cv_results[k] for k in cv_results if k.startswith(f"mean_{kind}_")
               and not np.isfinite(np.asarray(cv_results[k], dtype=float)).all()}
        if bad:
            warnings.warn(f"One or more of the {kind} scores are non-finite: "
                          f"{ {k: v.tolist() for k, v in bad.items()} }", UserWarning,
                          stacklevel=4)


def halving_attributes(rungs: list[dict], steps_run: int, horizon: int) -> dict:
    """The fitted attributes of scikit-learn's successive-halving searches, for a race's
    rungs (resources: inner steps per fold, as ``cv_results_["n_resources"]``).

    Parameters
    ----------
    rungs : list of dict
        One per rung run: ``n_candidates`` (lanes it ran), ``n_resources`` (the steps it
        judged them at). Empty without a race: one iteration of one candidate.
    steps_run : int
        Inner steps per fold the refit lane ran in all.
    horizon : int
        Inner steps per fold of one training run of the refit's net (the last rung's).

    Returns
    -------
    dict
        ``n_candidates_``, ``n_resources_`` (lists, one entry per rung),
        ``n_iterations_``, ``n_remaining_candidates_`` (the one lane refit),
        ``min_resources_``, ``max_resources_``.
    """
    rungs = rungs or [{"n_candidates": 1, "n_resources": steps_run}]
    n_resources = [int(r["n_resources"]) for r in rungs]
    return {"n_candidates_": [int(r["n_candidates"]) for r in rungs],
            "n_resources_": n_resources, "n_iterations_": len(rungs),
            "n_remaining_candidates_": 1, "min_resources_": n_resources[0],
            "max_resources_": max(int(horizon), *n_resources)}
