"""Matplotlib helpers for a fitted :class:`~sgld_tuner.SGLDHyperTuner` (optional dependency).

Install with ``pip install sgld-tuner[plot]``. Every function draws on ``ax`` when given
(else on a new figure) and returns that Axes. The tuner is read by duck typing
(``cv_results_``, ``history_``, ``hyperparams_``, ``hyperparams``, ``best_index_``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .relevance import feature_relevance, learned_values

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


def plot_trajectory(tuner: Any, control: Any = None, ax=None,
                    control_label: str = "control (no search)"):
    """Cross-validated score and hyperparameter summaries along the search.

    Parameters
    ----------
    tuner : fitted SGLDHyperTuner
        Read through ``cv_results_`` (scores at each evaluation point, with a +-1 std
        band across splits, and the selected point marked) and ``history_`` (the
        ``param_<name>`` summaries at every outer iteration).
    control : float or fitted estimator, optional
        Score of a no-search control (e.g. the same tuner with ``n_outer=1``), drawn as a
        horizontal line; an object with ``best_score_`` is read through it.
    ax : matplotlib Axes, optional
        Where to draw the scores; the summaries go on a twin Axes sharing its x-axis,
        on a log scale (symlog when a summary is not positive).
    control_label : str, default="control (no search)"
        Legend text of the control line (e.g. "GridSearchCV best cv").

    Returns
    -------
    matplotlib.axes.Axes
        The scores' Axes; its legend lists the score, selected point, control and every
        hyperparameter summary.
    """
    ax = _axes(ax)
    results = tuner.cv_results_
    key = _score_key(tuner, results)
    metric = key[len("mean_test_"):]
    it = np.asarray(results["iteration"])
    mean = np.asarray(results[key], dtype=float)
    std = np.asarray(results.get(f"std_test_{metric}", np.zeros_like(mean)), dtype=float)
    ax.plot(it, mean, marker="o", color="C0", label=f"cv {metric}")
    ax.fill_between(it, mean - std, mean + std, color="C0", alpha=0.2)
    best = getattr(tuner, "best_index_", None)
    if best is not None:
        ax.plot([it[best]], [mean[best]], linestyle="none", marker="*", markersize=14,
                color="C3", label="selected")
    if control is not None:
        value = float(getattr(control, "best_score_", control))
        ax.axhline(value, color="k", linestyle=":", label=f"{control_label} {value:.3f}")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel(f"cv {metric}")

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
    return ax


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


def plot_feature_relevance(tuner_or_values: Any, name: str,
                           feature_names: Sequence[str] | None = None, top: int = 20, ax=None):
    """Bar chart of the ``top`` most relevant features by learned per-feature strength.

    Parameters
    ----------
    tuner_or_values : fitted tuner, dict or public value
        As for :func:`sgld_tuner.relevance.feature_relevance`; the hyperparameter must
        have ``granularity="feature"``.
    name : str
        The hyperparameter's name.
    feature_names : sequence of str, optional
        Defaults to the tuner's ``feature_names_in_``, else ``x0, x1, ...``.
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
    table = feature_relevance(tuner_or_values, feature_names, name=name)
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
