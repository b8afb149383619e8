"""Matplotlib helpers for a fitted :class:`~sgld_tuner.SGLDHyperTuner` (optional dependency).

Install with ``pip install sgld-tuner[plot]``. Every function draws on ``ax`` when given
(else on a new figure) and returns that Axes. The tuner is read by duck typing
(``cv_results_``, ``history_``, ``hyperparams_``, ``hyperparams``, ``granularities_``,
``best_index_``, ``best_estimator_``, ``scorer_``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .relevance import feature_relevance, feature_strengths, learned_values

__all__ = ["plot_trajectory", "plot_learned_values", "plot_feature_relevance"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("sgld_tuner.plotting needs matplotlib: "
                          "pip install sgld-tuner[plot]") from exc
    return plt


def _axes(ax):
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _score_key(tuner, results: dict) -> str:
    """The ``mean_test_*`` key to plot: the single metric, else the refit metric."""
    if "mean_test_score" in results:
        return "mean_test_score"
    refit = getattr(tuner, "refit", None)
    if isinstance(refit, str) and f"mean_test_{refit}" in results:
        return f"mean_test_{refit}"
    return sorted(k for k in results if k.startswith("mean_test_"))[0]


def _summaries(tuner, results: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Iterations and ``param_<name>`` summaries, every outer iteration when recorded."""
    history = getattr(tuner, "history_", None)
    if history is not None and len(history) and "iteration" in history:
        cols = [c for c in history.columns if c.startswith("param_")]
        return (history["iteration"].to_numpy(),
                {c[len("param_"):]: history[c].to_numpy(dtype=float) for c in cols})
    cols = [k for k in results if k.startswith("param_")]
    return (np.asarray(results["iteration"]),
            {c[len("param_"):]: np.ma.filled(results[c], np.nan).astype(float) for c in cols})


def _metric_scorer(tuner, metric: str):
    """The tuner's scorer of ``metric`` (its refit metric when multi-metric)."""
    scorer = getattr(tuner, "scorer_", None)
    if isinstance(scorer, dict):
        scorer = scorer.get(metric, scorer.get(getattr(tuner, "refit", None)))
    return scorer


def _test_score(scorer, metric: str, estimator, X_test, y_test) -> float:
    """``estimator`` scored on the test rows by ``scorer`` (else its own ``score``)."""
    if scorer is None:
        return float(estimator.score(X_test, y_test))
    value = scorer(estimator, X_test, y_test)
    return float(value[metric] if isinstance(value, dict) else value)


def _control_label(control) -> str:
    n_outer = getattr(control, "n_outer", None)
    if n_outer is not None:
        return f"control (n_outer={n_outer})"
    return "control" if np.isscalar(control) else type(control).__name__


def plot_trajectory(tuner: Any, control: Any = None, ax=None, control_label: str | None = None,
                    X_test=None, y_test=None):
    """Cross-validated score and hyperparameter summaries along the search.

    A point's cv score depends on how long its chains have trained: the chains persist
    across outer iterations, so a later point scores nets trained for longer, whatever
    the hyperparameters did. The control is therefore drawn like with like, never as
    one horizontal line across the search (its ``best_score_``, the cv score of a short
    chain, is not comparable with the later points of a longer search):

    * a control with its own trajectory (``cv_results_["iteration"]``, e.g. the same
      tuner with ``n_outer=1``, the no-search control) is drawn as its cv scores at its
      own outer iterations, labelled ``"<control_label> cv score"``: compare it with the
      tuner's point at the same iteration (chains of the same length);
    * with ``X_test`` and ``y_test``, the outcome is compared instead: the tuner's refit
      (``best_estimator_``) and the control's refit (or the control itself), both
      trained on all training rows the same way, scored on the test rows by the tuner's
      scorer (``scorer_``, the refit metric), drawn as horizontal lines labelled
      ``"SGLDHyperTuner refit test score"`` and ``"<control_label> refit test score"``;
    * another search (``GridSearchCV``: a ``best_score_`` but no ``"iteration"``) without
      test data: its ``best_score_`` as a horizontal line labelled
      ``"<control_label> best cv score"``, comparable with the tuner's ``selected`` point
      (each the best of its own candidates), not with the trajectory;
    * a number: a horizontal line labelled ``"<control_label> <value>"``, as given.

    Parameters
    ----------
    tuner : fitted SGLDHyperTuner
        Read through ``cv_results_`` (scores at each evaluation point, with a +-1 std
        band across splits, and the selected point marked) and ``history_`` (the
        ``param_<name>`` summaries at every outer iteration).
    control : float or fitted estimator, optional
        The reference to compare with (see above), e.g. the same tuner fitted with
        ``n_outer=1``.
    ax : matplotlib Axes, optional
        Where to draw the scores; the summaries go on a twin Axes sharing its x-axis,
        on a log scale (symlog when a summary is not positive).
    control_label : str, optional
        Legend text of the control (e.g. "GridSearchCV"). Default:
        ``"control (n_outer=<k>)"`` for an object with ``n_outer``, else its class name,
        or ``"control"`` for a number.
    X_test, y_test : array-like, optional
        Held-out rows: the tuner's and the control's refits are scored on them (both
        needed; the tuner must have been fit with ``refit``).

    Returns
    -------
    matplotlib.axes.Axes
        The scores' Axes; its legend lists the cv score, the selected point, the
        control's entry, the test scores and every hyperparameter summary.

    Raises
    ------
    ValueError
        If only one of ``X_test`` and ``y_test`` is given.
    """
    if (X_test is None) != (y_test is None):
        raise ValueError("pass both X_test and y_test, or neither")
    ax = _axes(ax)
    results = tuner.cv_results_
    key = _score_key(tuner, results)
    metric = key[len("mean_test_"):]
    _draw_cv_scores(ax, tuner, results, key, metric)
    label = control_label if control_label is not None else (
        None if control is None else _control_label(control))
    if X_test is not None:
        _draw_test_scores(ax, tuner, control, label, metric, X_test, y_test)
    if control is not None and np.isscalar(control):
        value = float(control)
        ax.axhline(value, color="k", linestyle=":", label=f"{label} {value:.3f}")
    elif control is not None and X_test is None:
        _draw_control_cv(ax, control, label, key)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel(f"cv {metric}" if X_test is None else f"{metric} (cv; test)")
    _draw_summaries(ax, tuner, results)
    return ax


def _draw_cv_scores(ax, tuner, results, key, metric) -> None:
    """The tuner's cv scores along the trajectory (+-1 std band), the selected point."""
    it = np.asarray(results["iteration"])
    mean = np.asarray(results[key], dtype=float)
    std = np.asarray(results.get(f"std_test_{metric}", np.zeros_like(mean)), dtype=float)
    lanes = _race_lanes(results)
    best = getattr(tuner, "best_index_", None)
    # without a best point (several metrics, refit=False) the race's winner is the lane
    # that ran last: it continued after the race
    winner = lanes == lanes[best if best is not None else len(it) - 1]
    for lr in dict.fromkeys(lanes[~winner]):  # a race's other lanes, faint
        rows = lanes == lr
        ax.plot(it[rows], mean[rows], marker=".", color="0.6", alpha=0.6, linewidth=0.8,
                label="other raced lrs" if lr == lanes[~winner][0] else None)
    ax.plot(it[winner], mean[winner], marker="o", color="C0", label=f"cv {metric}")
    ax.fill_between(it[winner], (mean - std)[winner], (mean + std)[winner], color="C0",
                    alpha=0.2)
    if best is not None:
        ax.plot([it[best]], [mean[best]], linestyle="none", marker="*", markersize=14,
                color="C3", label="selected")


def _race_lanes(results: dict) -> np.ndarray:
    """Each row's lane: its ``param_lr`` when a race ran (one value per lane), else 0."""
    if "param_lr" not in results:
        return np.zeros(len(results["iteration"]))
    return np.ma.filled(np.ma.asarray(results["param_lr"], dtype=float), np.nan)


def _draw_test_scores(ax, tuner, control, label, metric, X_test, y_test) -> None:
    """The tuner's refit and the control's, scored on the test rows by the same scorer."""
    scorer = _metric_scorer(tuner, metric)
    value = float(tuner.score(X_test, y_test))
    ax.axhline(value, color="C0", linestyle="--",
               label=f"{type(tuner).__name__} refit test score {value:.3f}")
    if control is not None and not np.isscalar(control):
        value = _test_score(scorer, metric, control, X_test, y_test)
        ax.axhline(value, color="k", linestyle="--", label=f"{label} refit test score {value:.3f}")


def _draw_control_cv(ax, control, label, key) -> None:
    """A control's cv scores: at its own outer iterations when it has a trajectory,
    else its best cv score as a line."""
    own = getattr(control, "cv_results_", None)
    if own is not None and "iteration" in own:
        own_key = key if key in own else _score_key(control, own)
        ax.plot(np.asarray(own["iteration"]), np.asarray(own[own_key], dtype=float),
                marker="s", linestyle=":", color="k", label=f"{label} cv score")
    else:
        value = float(control.best_score_)
        ax.axhline(value, color="k", linestyle=":", label=f"{label} best cv score {value:.3f}")


def _draw_summaries(ax, tuner, results) -> None:
    """The hyperparameter summaries on a twin Axes, and one legend for both."""
    twin = ax.twinx()
    iterations, summaries = _summaries(tuner, results)
    for i, (name, values) in enumerate(summaries.items()):
        twin.plot(iterations, values, linestyle="--", color=f"C{i + 4}", label=name)
    finite = np.concatenate([v[np.isfinite(v)] for v in summaries.values()] or [np.ones(1)])
    twin.set_yscale("log" if np.all(finite > 0) else "symlog")
    twin.set_ylabel("hyperparameter summary")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = twin.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="best")


def _flat_values(values: Any) -> np.ndarray:
    if isinstance(values, dict):
        parts = [np.ravel(np.asarray(v, dtype=float)) for v in values.values()]
        return np.concatenate(parts) if parts else np.empty(0)
    return np.ravel(np.asarray(values, dtype=float))


def plot_learned_values(tuner_or_values: Any, name: str, ax=None, bins: int = 30):
    """Histogram of ``log10`` of a hyperparameter's learned values (e.g. strengths).

    Parameters
    ----------
    tuner_or_values : fitted tuner, dict or public value
        A fitted tuner (its ``hyperparams_[name]``), a dict of public values by name
        (``hyperparams_``, ``best_params_``), or the public value itself.
    name : str
        The hyperparameter's name (also the title).
    ax : matplotlib Axes, optional
    bins : int, default=30

    Returns
    -------
    matplotlib.axes.Axes
        With one bar per bin; a vertical line marks the start value when the tuner's
        specification has a scalar ``init``. Values <= 0 have no log and are left out
        (the title counts them).

    Raises
    ------
    ValueError
        If no learned value is positive.
    """
    values = _flat_values(learned_values(tuner_or_values, name))
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        raise ValueError(f"{name}: no positive learned value to show on a log scale")
    ax = _axes(ax)
    logs = np.log10(positive)
    ax.hist(logs, bins=bins, color="C0")
    spec = (getattr(tuner_or_values, "hyperparams", None) or {}).get(name)
    init = getattr(spec, "init", None)
    if isinstance(init, (int, float)) and init > 0:
        ax.axvline(np.log10(init), color="k", linestyle=":", label=f"start {init:g}")
        ax.legend(loc="best")
    left_out = values.size - positive.size
    title = f"{name}: {values.size} values, median {np.median(positive):.2e}"
    ax.set_title(title + (f" ({left_out} <= 0 left out)" if left_out else ""))
    ax.set_xlabel("log10 learned value")
    ax.set_ylabel("count")
    return ax


def plot_feature_relevance(tuner_or_values: Any, name: str | None = None,
                           feature_names: Sequence[str] | None = None, top: int = 20, ax=None):
    """Bar chart of the ``top`` most relevant features by learned per-feature strength.

    Parameters
    ----------
    tuner_or_values : fitted tuner, dict or public value
        As for :func:`sgld_tuner.relevance.feature_relevance`; the hyperparameter must
        be per input feature (``granularity="feature"``, or ``"auto"`` resolved to it).
    name : str, optional
        The hyperparameter's name; for a tuner, ``None`` picks its only per-feature kind
        (see :func:`sgld_tuner.relevance.learned_values`). Also the title (the Series
        name when not given).
    feature_names : sequence of str, optional
        Defaults as in :func:`sgld_tuner.relevance.feature_strengths`: for a tuner over a
        ``Pipeline``, the names its fitted preprocessing gives (e.g. one per one-hot
        column); else the tuner's ``feature_names_in_``; else ``x0, x1, ...``.
    top : int, default=20
        How many features to show, most relevant (smallest strength) at the top.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One horizontal bar per shown feature, of length
        ``log10(median strength / strength)``: decades of penalty below the median over
        all features (positive = more relevant than the typical feature).
    """
    strengths = feature_strengths(tuner_or_values, feature_names, name=name)
    name = strengths.name
    table = feature_relevance(strengths.to_numpy(), list(strengths.index))
    shown = table.head(int(top))
    ax = _axes(ax)
    median = float(table["strength"].median())
    positions = np.arange(len(shown))[::-1]
    ax.barh(positions, np.log10(median / shown["strength"].to_numpy()), color="C0")
    ax.set_yticks(positions, labels=list(shown["feature"]))
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel(f"log10(median strength / strength); median of {len(table)}: {median:.2e}")
    ax.set_title(f"{name}: {len(shown)} most relevant of {len(table)} features")
    return ax


def anytime_curve(search: Any) -> tuple[np.ndarray, np.ndarray]:
    """A fitted search's best cross-validated score so far against the seconds its
    candidates took so far (fit and score time summed over the splits, from
    ``cv_results_``, rows in their order there; the refit's ``refit_time_`` last).

    Works for scikit-learn's searches (``GridSearchCV``, ``RandomizedSearchCV``, the
    Halving ones) and for ``SGLDHyperTuner``, whose rows are its scored points (a race's
    losing lanes first, then the winner's). Returns ``(seconds, best score so far)``.
    """
    results = getattr(search, "cv_results_", None)
    if results is None:
        raise TypeError(f"{type(search).__name__} has no cv_results_: fit it first, or "
                        "give a scikit-learn style search")
    key = _score_key(search, results)
    n_splits = sum(1 for k in results if k.startswith("split") and
                   k.endswith(key[len("mean"):]))
    per_row = (np.asarray(results["mean_fit_time"], dtype=float)
               + np.asarray(results["mean_score_time"], dtype=float)) * max(1, n_splits)
    scores = np.nan_to_num(np.asarray(results[key], dtype=float), nan=-np.inf)
    seconds = np.cumsum(per_row)
    best = np.maximum.accumulate(scores)
    refit_time = getattr(search, "refit_time_", None)
    if refit_time is not None:
        seconds = np.append(seconds, seconds[-1] + refit_time)
        best = np.append(best, best[-1])
    return seconds, best


def plot_anytime(searches: dict, ax=None):
    """Best cv score so far against seconds, one step line per search (the anytime
    picture: what each search would have had if stopped earlier).

    Parameters
    ----------
    searches : dict
        ``{label: fitted search}``: ``SGLDHyperTuner``, ``GridSearchCV``,
        ``RandomizedSearchCV``, ``HalvingGridSearchCV``... (:func:`anytime_curve`).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    for label, search in searches.items():
        seconds, best = anytime_curve(search)
        ax.step(seconds, best, where="post", label=label)
    ax.set_xlabel("seconds (fit + score over the splits, from cv_results_)")
    ax.set_ylabel("best cv score so far")
    ax.legend(fontsize="small")
    return ax
