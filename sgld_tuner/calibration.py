"""Calibration of fitted classifiers: expected calibration error and a per-model report.

* :func:`expected_calibration_error` measures whether predicted confidences match the
  observed accuracies (the paper's Table 11 reports ECE);
* :func:`calibration_report` tabulates accuracy, NLL and ECE for a fitted tuner, a
  :class:`~sgld_tuner.ensemble.PosteriorEnsemble` or any classifiers with ``predict_proba``.

This module imports neither the tuner nor the ensemble: a tuner is recognised by its
fitted attributes (duck typing), so ``tuner.py -> ensemble.py`` has no cycle back.
See ``docs/ensemble.md`` for usage.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import is_regressor
from sklearn.metrics import accuracy_score, log_loss

__all__ = ["expected_calibration_error", "calibration_report"]


def _column_index(y, classes) -> np.ndarray:
    """Positions of the labels ``y`` in ``classes`` (the columns of a probability matrix)."""
    y = np.asarray(y)
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    pos = np.searchsorted(classes[order], y)
    pos = np.clip(pos, 0, len(classes) - 1)
    found = classes[order][pos] == y
    if not np.all(found):
        unknown = np.unique(y[~found])[:5]
        raise ValueError(f"labels {unknown.tolist()} are not among the classes {classes.tolist()}")
    return order[pos]


def expected_calibration_error(proba, y, n_bins: int = 15, *, classes=None) -> float:
    """Expected calibration error of the top-label confidence (Guo et al., 2017).

    Each row's confidence is its largest probability and its prediction the column of
    that probability. Rows are grouped into ``n_bins`` equal-width confidence bins
    ``(0, 1/n_bins], (1/n_bins, 2/n_bins], ..., ((n_bins-1)/n_bins, 1]`` (a confidence of
    exactly 0 goes to the first bin), and

        ECE = sum_b (|B_b| / n) * |accuracy(B_b) - mean confidence(B_b)|

    over the non-empty bins.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_classes) or (n_samples,)
        Predicted class probabilities. A 1-d array is read as the probability of the
        second (positive) class of a binary problem.
    y : array-like of shape (n_samples,)
        True labels: column indices ``0..n_classes-1``, or labels from ``classes``.
    n_bins : int, default=15
        Number of equal-width bins; 15 is the choice of Guo et al. (2017).
    classes : array-like of shape (n_classes,), optional
        The label of each column of ``proba`` (e.g. an estimator's ``classes_``); when
        given, ``y`` holds labels rather than column indices.

    Returns
    -------
    float
        ECE as a fraction in ``[0, 1]`` (multiply by 100 for the paper's percentages).

    Examples
    --------
    >>> expected_calibration_error([[0.9, 0.1], [0.2, 0.8]], [0, 0], n_bins=5)
    0.45
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:
        proba = np.column_stack([1.0 - proba, proba])
    if proba.ndim != 2 or proba.shape[0] == 0:
        raise ValueError(f"proba must have shape (n_samples, n_classes), got {proba.shape}")
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if classes is not None:
        y_idx = _column_index(y, classes)
    else:
        y_idx = np.asarray(y)
        if y_idx.dtype.kind not in "iub":
            raise ValueError("y must hold column indices (integers); pass classes= to use labels")
        y_idx = y_idx.astype(np.int64)
    if y_idx.shape != (proba.shape[0],):
        raise ValueError(f"y has shape {y_idx.shape}; expected ({proba.shape[0]},)")
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_idx).astype(np.float64)
    # Right-closed bins: searchsorted on the inner edges with side="left" counts the
    # edges strictly below the confidence, so a confidence equal to an edge k/n_bins lands
    # in the bin that ends there (and 1.0 in the last bin).
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=confidence, minlength=n_bins))
    # sum_b |B_b|/n * |acc_b - conf_b| = sum_b |sum_{i in B_b}(correct_i - conf_i)| / n
    return float(gap.sum() / counts.sum())


def _proba_rows(model, X):
    """``(proba, classes)`` of a fitted classifier, its rows renormalised in float64."""
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    if proba.ndim == 1:
        proba = np.column_stack([1.0 - proba, proba])
    proba = proba / proba.sum(axis=1, keepdims=True)
    classes = getattr(model, "classes_", None)
    if classes is None:
        classes = np.arange(proba.shape[1])
    return proba, np.asarray(classes)


def calibration_report(tuner_or_models, X_test, y_test, *, n_bins: int = 15):
    """Accuracy, negative log-likelihood and ECE of fitted classifiers on held-out data.

    Parameters
    ----------
    tuner_or_models : SGLDHyperTuner, classifier, dict or list of classifiers
        A fitted :class:`~sgld_tuner.SGLDHyperTuner` (recognised as any object with
        ``best_estimator_`` or ``cv_results_``) gives the rows ``"refit net"``
        (``best_estimator_``) and, when it has one, ``"posterior ensemble"``
        (``ensemble_``). A dict maps row names to fitted classifiers; a list (or a single
        classifier) is named by class name. Every model needs ``predict_proba``; its
        ``classes_`` (if any) maps ``y_test`` to columns.
    X_test : array-like
        Held-out inputs, as the models expect them (a tuner's are cast to float32 as in
        its ``predict``).
    y_test : array-like of shape (n_samples,)
        Held-out labels in the original encoding.
    n_bins : int, default=15
        Bins of :func:`expected_calibration_error`.

    Returns
    -------
    pandas.DataFrame
        One row per model with columns ``model``, ``accuracy``, ``nll`` (mean negative log
        probability of the true class, natural log) and ``ece`` (fraction, not percent).
    """
    import pandas as pd

    models = _as_named_models(tuner_or_models)
    regressors = [name for name, (model, _, _) in models.items() if is_regressor(model)]
    if regressors:
        raise ValueError(f"calibration_report needs classifiers (class probabilities); "
                         f"{regressors} are regressors")
    y_test = np.asarray(y_test)
    rows = []
    for name, (model, as_float32, classes) in models.items():
        X = np.asarray(X_test, dtype=np.float32) if as_float32 else X_test
        proba, model_classes = _proba_rows(model, X)
        classes = model_classes if classes is None else np.asarray(classes)
        y_idx = _column_index(y_test, classes)
        rows.append({
            "model": name,
            "accuracy": float(accuracy_score(y_idx, proba.argmax(axis=1))),
            "nll": float(log_loss(y_idx, proba, labels=np.arange(proba.shape[1]))),
            "ece": expected_calibration_error(proba, y_idx, n_bins=n_bins),
        })
    return pd.DataFrame(rows, columns=["model", "accuracy", "nll", "ece"])


def _is_search(obj) -> bool:
    """Whether ``obj`` is a fitted search estimator such as ``SGLDHyperTuner``.

    Duck typing instead of ``isinstance``: importing the tuner here would close the
    import cycle this module exists to break. A fitted search has ``cv_results_``, and
    ``best_estimator_`` too unless it was fitted with ``refit=False``.
    """
    return hasattr(obj, "best_estimator_") or hasattr(obj, "cv_results_")


def _as_named_models(obj) -> dict:
    """``{name: (model, cast X to float32?, classes override or None)}``."""
    if _is_search(obj):
        if not hasattr(obj, "best_estimator_"):
            raise ValueError("the tuner has no refit net: fit it with refit=True or "
                             "refit='ensemble' (or pass the models themselves)")
        # Its nets were trained on float32 inputs and on labels encoded 0..C-1, so cast X
        # as its predict does and map the user's labels through the tuner's classes_
        # rather than the nets' own.
        classes = getattr(obj, "classes_", None)
        out = {"refit net": (obj.best_estimator_, True, classes)}
        if getattr(obj, "ensemble_", None) is not None:
            out["posterior ensemble"] = (obj.ensemble_, True, classes)
        return out
    if isinstance(obj, Mapping):
        return {str(k): (m, False, None) for k, m in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        named = {}
        for m in obj:
            base = type(m).__name__
            name, k = base, 2
            while name in named:
                name, k = f"{base} ({k})", k + 1
            named[name] = (m, False, None)
        return named
    return {type(obj).__name__: (obj, False, None)}
