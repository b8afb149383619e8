"""Matplotlib helpers the benchmark scripts share (headless backend, saving, method bars)."""
from __future__ import annotations

import numpy as np


def subplots(ncols: int = 1, figsize=(6, 4), dpi: int = 110, **kwargs):
    """A figure with ``ncols`` axes side by side, on the file-only ``Agg`` backend.

    Parameters
    ----------
    ncols : int, default=1
    figsize : tuple of float, default=(6, 4)
    dpi : int, default=110
        Kept on the figure: :func:`save_figure` writes the PNG at this resolution.
    **kwargs
        Passed to :func:`matplotlib.pyplot.subplots` (``gridspec_kw``, ``squeeze``...).

    Returns
    -------
    (Figure, Axes or ndarray of Axes)
    """
    import matplotlib

    # Benchmarks run on headless machines and in tests: never ask for a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize, dpi=dpi, **kwargs)


def save_figure(fig, path: str) -> None:
    """Lay out ``fig``, write it to ``path`` at the figure's dpi, and close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi="figure")
    # Closed here: pyplot keeps every open figure alive until the process ends.
    plt.close(fig)


def method_bars(ax, labels, mean, std, *, xlabel: str, title: str | None = None,
                fontsize: int = 8, **bar_kwargs) -> None:
    """Horizontal bars of a per-method mean with a +-std error bar, first method on top.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    labels : sequence of str
        One per bar (the method names).
    mean, std : array-like
        Bar lengths and error-bar half widths.
    xlabel : str
    title : str, optional
    fontsize : int, default=8
        Of the method labels (they are long).
    **bar_kwargs
        Passed to :meth:`~matplotlib.axes.Axes.barh` (``color``, ``alpha``...).
    """
    y = np.arange(len(labels))
    ax.barh(y, mean, xerr=std, **bar_kwargs)
    ax.set_yticks(y, list(labels), fontsize=fontsize)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title is not None:
        ax.set_title(title)
