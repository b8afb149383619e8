"""sgld_tuner.plotting draws what a fitted tuner holds (Agg backend, one tiny fit)."""
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from sklearn.datasets import load_digits

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sgld_tuner import SGLDHyperTuner  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1  # noqa: E402
from sgld_tuner.plotting import (plot_feature_relevance, plot_learned_values,  # noqa: E402
                                 plot_trajectory)
from sgld_tuner.relevance import feature_relevance  # noqa: E402

N_FEATURES = 64


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(N_FEATURES, 6)
        self.out = torch.nn.Linear(6, 4)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def digits():
    X, y = load_digits(n_class=4, return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def tuner_of(n_outer, schedule="plain"):
    """A tiny search; one lane (``PlainSearch``) unless ``schedule=None`` (the race)."""
    from sgld_tuner.search import PlainSearch

    net = NeuralNetClassifier(TinyMLP, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                              max_epochs=10, batch_size=32, train_split=None, verbose=0)
    return SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-3, granularity="feature")},
                          n_outer=n_outer, cv=2, random_state=0,
                          schedule=PlainSearch() if schedule == "plain" else schedule)


@pytest.fixture(scope="module")
def fitted():
    X, y = digits()
    return tuner_of(3).fit(X[:80], y[:80])


@pytest.fixture(scope="module")
def control():
    """The no-search control: the same tuner with n_outer=1."""
    X, y = digits()
    return tuner_of(1).fit(X[:80], y[:80])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_trajectory_shows_scores_control_and_summaries(fitted):
    ax = plot_trajectory(fitted, control=0.5)
    res = fitted.cv_results_
    score, best, control = ax.lines
    np.testing.assert_allclose(score.get_xdata(), res["iteration"])
    np.testing.assert_allclose(score.get_ydata(), res["mean_test_score"])
    assert best.get_xdata()[0] == res["iteration"][fitted.best_index_]
    assert best.get_ydata()[0] == fitted.best_score_
    np.testing.assert_allclose(control.get_ydata(), [0.5, 0.5])
    assert ax.get_xlabel() == "outer iteration" and ax.get_ylabel() == "cv score"
    (twin,) = [a for a in ax.figure.axes if a is not ax]
    (summary,) = twin.lines
    np.testing.assert_allclose(summary.get_ydata(), fitted.history_["param_l1"])
    assert len(summary.get_xdata()) == fitted.n_outer
    assert twin.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["cv score", "selected", "control 0.500", "l1"]


def test_a_no_search_control_is_drawn_at_its_own_iteration(fitted, control):
    """Item 8: the control's cv score is that of a chain of its own length: drawn at its
    own outer iteration(s), not as a line across the whole search at its best_score_."""
    _, given = plt.subplots()
    ax = plot_trajectory(fitted, control=control, ax=given)
    assert ax is given
    line = ax.lines[-1]
    assert line.get_label() == "control (n_outer=1) cv score"
    np.testing.assert_allclose(line.get_xdata(), control.cv_results_["iteration"])
    np.testing.assert_allclose(line.get_ydata(), control.cv_results_["mean_test_score"])
    assert list(line.get_xdata()) == [0]   # one outer iteration: a short chain
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["cv score", "selected", "control (n_outer=1) cv score", "l1"]


def test_with_test_data_the_refits_are_compared_on_it(fitted, control):
    X, y = digits()
    X_test, y_test = X[200:320], y[200:320]
    ax = plot_trajectory(fitted, control=control, X_test=X_test, y_test=y_test)
    mine, theirs = ax.lines[-2:]
    assert np.all(np.asarray(mine.get_ydata()) == fitted.score(X_test, y_test))
    assert np.all(np.asarray(theirs.get_ydata()) == control.score(X_test, y_test))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[2] == f"SGLDHyperTuner refit test score {fitted.score(X_test, y_test):.3f}"
    assert labels[3] == (f"control (n_outer=1) refit test score "
                         f"{control.score(X_test, y_test):.3f}")
    assert "cv score" not in " ".join(labels[2:])   # no cv line of the control beside them
    assert ax.get_ylabel() == "score (cv; test)"
    with pytest.raises(ValueError, match="both X_test and y_test"):
        plot_trajectory(fitted, control=control, X_test=X_test)


def test_another_search_is_its_best_cv_score_labelled_as_such(fitted):
    grid = SimpleNamespace(best_score_=0.75)   # what GridSearchCV offers
    ax = plot_trajectory(fitted, control=grid, control_label="GridSearchCV")
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), [0.75, 0.75])
    assert ax.lines[-1].get_label() == "GridSearchCV best cv score 0.750"


def test_learned_values_histogram_counts_every_strength(fitted):
    ax = plot_learned_values(fitted, "l1", bins=10)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 10
    assert sum(heights) == N_FEATURES   # one strength per input feature
    (start,) = ax.lines
    assert start.get_xdata()[0] == pytest.approx(-3.0)   # log10 of init=1e-3
    assert ax.get_xlabel() == "log10 learned value"
    assert ax.get_title().startswith(f"l1: {N_FEATURES} values")
    # a public dict gives the same histogram
    again = plot_learned_values(fitted.hyperparams_, "l1", bins=10)
    assert [p.get_height() for p in again.patches] == heights
    with pytest.raises(ValueError, match="no positive"):
        plot_learned_values({"w": np.zeros(3)}, "w")


def test_feature_relevance_needs_no_name_for_an_auto_granularity():
    """Item 7a: PerWeightL1() (granularity='auto') resolved per feature in fit."""
    X, y = digits()
    net = NeuralNetClassifier(TinyMLP, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                              max_epochs=2, batch_size=32, train_split=None, verbose=0)
    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1()}, n_outer=1, cv=2, random_state=0,
                           refit=False).fit(X[:60], y[:60])
    ax = plot_feature_relevance(tuner, top=3)
    assert len(ax.patches) == 3
    assert ax.get_title() == f"l1: 3 most relevant of {N_FEATURES} features"


def test_feature_relevance_bars_are_the_top_of_the_table(fitted):
    table = feature_relevance(fitted)
    (learned,) = fitted.hyperparams_["l1"].values()
    np.testing.assert_allclose(table["strength"], np.sort(learned))
    names = [f"pixel{i}" for i in range(N_FEATURES)]
    ax = plot_feature_relevance(fitted, "l1", feature_names=names, top=5)
    top = feature_relevance(fitted, names).head(5)
    assert len(ax.patches) == 5
    widths = sorted((p.get_y(), p.get_width()) for p in ax.patches)[::-1]  # top bar first
    median = np.median(learned)
    np.testing.assert_allclose([w for _, w in widths], np.log10(median / top["strength"]))
    assert all(w >= 0 for _, w in widths)   # the most relevant are at or below the median
    ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert [label for _, label in ticks[::-1]] == list(top["feature"])
    assert "median of 64" in ax.get_xlabel()


def test_missing_matplotlib_names_the_extra(monkeypatch, fitted):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install sgld-tuner\[plot\]"):
        plot_trajectory(fitted)


def test_the_anytime_curve_is_the_best_score_so_far_against_summed_split_seconds(fitted):
    from sgld_tuner.plotting import anytime_curve, plot_anytime

    search = SimpleNamespace(cv_results_={
        "mean_fit_time": np.array([1.0, 2.0, 0.5]), "mean_score_time": np.array([0.5, 0.0, 0.0]),
        "split0_test_score": np.zeros(3), "split1_test_score": np.zeros(3),
        "mean_test_score": np.array([0.5, np.nan, 0.7])}, refit_time_=4.0)
    seconds, best = anytime_curve(search)
    np.testing.assert_allclose(seconds, [3.0, 7.0, 8.0, 12.0])  # 2 splits each, then refit
    np.testing.assert_allclose(best, [0.5, 0.5, 0.7, 0.7])
    ax = plot_anytime({"fake": search, "tuner": fitted})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fake", "tuner"]
    tuner_x, tuner_y = ax.lines[1].get_data()
    assert tuner_y[-1] == np.nanmax(fitted.cv_results_["mean_test_score"])
    with pytest.raises(TypeError, match="cv_results_"):
        anytime_curve(object())
    plt.close("all")


def test_a_races_other_lanes_are_drawn_apart_from_the_winners_trajectory():
    from sgld_tuner.search import Race

    X, y = digits()
    raced = tuner_of(3, schedule=Race(n_lrs=3, extend=0)).fit(X[:80], y[:80])
    ax = plot_trajectory(raced)
    lrs = raced.cv_results_["param_lr"].astype(float)
    winner = lrs == raced.best_params_["lr"]
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_array_equal(lines["cv score"].get_ydata(),
                                  raced.cv_results_["mean_test_score"][winner])
    grey = [line for line in ax.lines if line.get_color() == "0.6"]
    assert len(grey) == len(set(lrs[~winner])) >= 1
    # several metrics, refit=False: no best point; the winner is the lane that ran last
    unpicked = tuner_of(3, schedule=Race(n_lrs=3, extend=0)).set_params(
        refit=False, scoring=["accuracy", "f1_macro"]).fit(X[:80], y[:80])
    assert not hasattr(unpicked, "best_index_")
    lines = {line.get_label(): line for line in plot_trajectory(unpicked).lines}
    lrs = unpicked.cv_results_["param_lr"].astype(float)
    np.testing.assert_array_equal(lines["cv accuracy"].get_ydata(),
                                  unpicked.cv_results_["mean_test_accuracy"][lrs == lrs[-1]])
