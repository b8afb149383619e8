"""Faults a long search meets: divergence, Ctrl-C, timeouts, resume, load, parallel folds.

Each test here backs one row of docs/reliability.md.
"""
import os
import signal
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import skorch
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import PredefinedSplit
from test_tuner import TinyMLP, tiny_classifier, tiny_tuner

from sgld_tuner.search.diagnostics import UNDERTRAINED_GAP
from sgld_tuner.search.state import SAVE_HEADER
from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.search import PlainSearch, Race
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.tuner import (DivergenceWarning, OverfittingWarning, SearchInterrupted,
                              UndertrainedWarning)


class FlakyMLP(TinyMLP):
    """Outputs NaN on chosen forward calls: a chain that blows up, on demand."""

    calls = 0
    nan_calls = range(0)

    def forward(self, X):
        type(self).calls += 1
        out = super().forward(X)
        return out * float("nan") if type(self).calls in self.nan_calls else out


class InterruptingMLP(TinyMLP):
    """Raises KeyboardInterrupt on one forward call, as Ctrl-C would mid-step."""

    calls = 0
    interrupt_at = -1

    def forward(self, X):
        type(self).calls += 1
        if type(self).calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().forward(X)


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(n_class=4, return_X_y=True)
    return (X[:120] / 16.0).astype(np.float32), y[:120]


def assert_no_nan(tuner):
    assert np.isfinite(tuner.best_score_)
    for values in (tuner.best_params_, tuner.hyperparams_):
        for arr in values["l1"].values():
            assert np.isfinite(arr).all()


def test_transient_divergence_rolls_back_shrinks_and_continues(data):
    FlakyMLP.calls, FlakyMLP.nan_calls = 0, range(30, 34)
    tuner = tiny_tuner(tiny_classifier(module=FlakyMLP), n_outer=6,
                       outer=dict(eval_every=2))
    with pytest.warns(DivergenceWarning, match="rolled"):
        tuner.fit(*data)
    hist = tuner.history_
    assert hist["diverged"].any() and (~hist["diverged"]).sum() == 6
    assert hist.loc[hist["diverged"], "inner_lr"].iloc[0] == pytest.approx(0.05)
    assert_no_nan(tuner)
    # The chains now step below the net's lr: the points scored after the rollback
    # (param_lr), best_params_ and the refit read that lr, not the one that diverged (a
    # race ranked, reported and refit such a lane at its candidate's lr, and the refit
    # at it went non-finite).
    ran = hist.loc[hist["diverged"], "inner_lr"].iloc[-1]
    lrs = tuner.cv_results_["param_lr"]
    assert lrs[-1] == pytest.approx(ran) and lrs.mask[0]  # the first point: as given
    assert tuner.best_params_["lr"] == pytest.approx(ran)
    assert tuner.best_estimator_.lr == pytest.approx(ran)


def test_persistent_divergence_stops_with_best_so_far(data):
    FlakyMLP.calls, FlakyMLP.nan_calls = 0, range(45, 10**9)
    tuner = tiny_tuner(tiny_classifier(module=FlakyMLP), n_outer=10,
                       outer=dict(eval_every=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(*data)
    kinds = [w.category for w in caught]
    search = [w for w in caught if w.category is DivergenceWarning
              and "refit" not in str(w.message)]
    assert len(search) == 1 and SearchInterrupted in kinds
    assert "diverging" in tuner.stop_reason_
    # the module returns NaN from then on, in the refit too: said, not returned silently
    assert "best_estimator_ is not finite" in tuner.stop_reason_
    assert len(tuner.cv_results_["params"]) >= 1
    assert_no_nan(tuner)


def test_persistent_divergence_raises_with_error_score_raise(data):
    FlakyMLP.calls, FlakyMLP.nan_calls = 0, range(1, 10**9)
    tuner = tiny_tuner(tiny_classifier(module=FlakyMLP), n_outer=3, error_score="raise")
    with pytest.raises(FloatingPointError, match="diverging"):
        tuner.fit(*data)


def test_diverging_from_the_start_keeps_the_initial_values(data):
    FlakyMLP.calls, FlakyMLP.nan_calls = 0, range(1, 10**9)
    tuner = tiny_tuner(tiny_classifier(module=FlakyMLP), n_outer=3, refit=False,
                       error_score=0.0)
    with pytest.warns(SearchInterrupted):
        tuner.fit(*data)
    for arr in tuner.best_params_["l1"].values():
        np.testing.assert_allclose(arr, 1e-3, rtol=1e-5)


def test_ctrl_c_mid_step_keeps_results_and_refits(data):
    InterruptingMLP.calls, InterruptingMLP.interrupt_at = 0, 25
    tuner = tiny_tuner(tiny_classifier(module=InterruptingMLP), n_outer=20,
                       outer=dict(eval_every=1))
    with pytest.warns(SearchInterrupted, match="KeyboardInterrupt"):
        tuner.fit(*data)
    assert 0 < len(tuner.history_) < 20
    assert hasattr(tuner, "best_estimator_") and tuner.predict(data[0]).shape == (120,)
    assert_no_nan(tuner)


def test_ctrl_c_from_a_callback(data):
    def stop(record):
        if record["iteration"] == 1:
            raise KeyboardInterrupt

    tuner = tiny_tuner(n_outer=10, callbacks=[stop])
    with pytest.warns(SearchInterrupted):
        tuner.fit(*data)
    assert len(tuner.history_) == 2 and hasattr(tuner, "best_estimator_")


def test_timeout_ends_the_search_cleanly(data):
    tuner = tiny_tuner(n_outer=50, outer=dict(timeout=1e-6))
    with pytest.warns(SearchInterrupted, match="timeout"):
        tuner.fit(*data)
    assert len(tuner.history_) == 1 and len(tuner.cv_results_["params"]) == 1
    assert_no_nan(tuner)


def stop_after_second_iteration(record):
    return record["iteration"] == 1


def test_interrupted_then_resumed_ends_where_uninterrupted_ends(data, tmp_path):
    full = tiny_tuner(n_outer=4, sampler=dict(temperature=1e-2), outer=dict(eval_every=1)).fit(*data)

    stopper = tiny_tuner(n_outer=4, callbacks=[stop_after_second_iteration],
                         sampler=dict(temperature=1e-2), outer=dict(eval_every=1))
    with pytest.warns(SearchInterrupted):
        stopper.fit(*data)
    path = tmp_path / "search.joblib"
    stopper.save(path)
    resumed = SGLDHyperTuner.load(path, trusted=True)
    resumed.set_params(callbacks=None, warm_start=True)
    resumed.fit(*data)

    np.testing.assert_array_equal(resumed.cv_results_["mean_test_score"],
                                  full.cv_results_["mean_test_score"])
    for name, arr in full.hyperparams_["l1"].items():
        np.testing.assert_array_equal(resumed.hyperparams_["l1"][name], arr)
    np.testing.assert_array_equal(resumed.predict_proba(data[0]), full.predict_proba(data[0]))


def test_warm_start_with_more_outer_iterations_continues(data):
    tuner = tiny_tuner(n_outer=2, warm_start=True, outer=dict(eval_every=1)).fit(*data)
    tuner.set_params(n_outer=3).fit(*data)
    assert list(tuner.cv_results_["iteration"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="same X and y"):
        tuner.set_params(n_outer=4).fit(data[0][:100], data[1][:100])


def test_a_finished_search_keeps_no_chain_copies(data):
    tuner = tiny_tuner(n_outer=2).fit(*data)
    assert tuner._search_state is None  # no per-fold weight copies after a full search


def test_load_refuses_files_save_did_not_write_before_unpickling(tmp_path):
    """Issue 12 #19: a pickle without save()'s header is refused, even when trusted."""
    import joblib

    joblib.dump({"not": "a tuner"}, tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not written by SGLDHyperTuner.save"):
        SGLDHyperTuner.load(tmp_path / "x.joblib", trusted=True)


def test_load_requires_the_caller_to_trust_the_file(tmp_path):
    """Issue 12 #19: loading unpickles, so the caller opts in with trusted=True."""
    path = tmp_path / "t.joblib"
    tiny_tuner().save(path)
    with pytest.raises(ValueError, match="trusted=True"):
        SGLDHyperTuner.load(path)
    assert isinstance(SGLDHyperTuner.load(path, trusted=True), SGLDHyperTuner)
    assert "warning" in SGLDHyperTuner.load.__doc__


def test_load_refuses_other_objects(tmp_path):
    import joblib

    with open(tmp_path / "x.joblib", "wb") as fh:
        fh.write(SAVE_HEADER)
        joblib.dump({"not": "a tuner"}, fh)
    with pytest.raises(TypeError, match="not a SGLDHyperTuner"):
        SGLDHyperTuner.load(tmp_path / "x.joblib", trusted=True)


def test_parallel_folds_give_the_sequential_result(data):
    # batch_folds=False: the same per-fold computation as n_jobs=2 (stacked folds are
    # equal to it only up to rounding).
    one = tiny_tuner(n_jobs=1, refit=False,
                     sampler=dict(temperature=1e-2, batch_folds=False)).fit(*data)
    two = tiny_tuner(n_jobs=2, refit=False, sampler=dict(temperature=1e-2)).fit(*data)
    np.testing.assert_array_equal(one.cv_results_["mean_test_score"],
                                  two.cv_results_["mean_test_score"])


def _rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_fifty_fits_keep_memory_flat(data):
    X, y = data
    rss = []
    for i in range(50):
        tiny_tuner(n_outer=1, refit=False, random_state=i).fit(X, y)
        if i in (9, 49):
            rss.append(_rss_mb())
    # No graphs, chains or data retained between fits: 40 more fits add (almost) nothing.
    assert rss[1] - rss[0] < 25, rss


@pytest.mark.parametrize("make_bad,error,match", [
    (lambda X, y: (sp.csr_matrix(X), y), TypeError, "[Ss]parse"),
    (lambda X, y: (np.where(X > 0.9, np.inf, X), y), ValueError, "infinity"),
    (lambda X, y: (X[:1], y[:1]), ValueError, "1 class|fewer"),
])
def test_bad_input_fails_fast(data, make_bad, error, match):
    X, y = make_bad(*data)
    started = time.perf_counter()
    with pytest.raises(error, match=match):
        tiny_tuner().fit(X, y)
    assert time.perf_counter() - started < 1.0


def test_fewer_samples_than_folds(data):
    X, y = data
    with pytest.raises(ValueError, match="fewer than the 5 cv folds|n_splits=5"):
        tiny_tuner(cv=5).fit(X[:4], np.array([0, 1, 0, 1]))


def test_dask_backend_spreads_folds_and_matches_sequential(data):
    distributed = pytest.importorskip("distributed")
    import joblib

    from sgld_tuner.search import PlainSearch, Race

    # batch_folds=False: the same per-fold computation as the spread run, so that the
    # scores can be equal bit for bit (stacked folds are equal only up to rounding).
    # The plain search and a race (its lanes' folds on the workers too).
    schedules = [PlainSearch(), Race(n_lrs=3, extend=0)]
    sequential = [tiny_tuner(refit=False, schedule=schedule,
                             sampler=dict(temperature=1e-2, batch_folds=False)).fit(*data)
                  for schedule in schedules]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with joblib.parallel_config(backend="dask"):
            spread = [tiny_tuner(n_jobs=2, refit=False, schedule=schedule,
                                 sampler=dict(temperature=1e-2)).fit(*data)
                      for schedule in schedules]
    for one, other in zip(spread, sequential):
        np.testing.assert_array_equal(one.cv_results_["mean_test_score"],
                                      other.cv_results_["mean_test_score"])
    assert len(set(spread[1].cv_results_["param_lr"])) == 3


def test_chains_that_degrade_without_nan_are_flagged(data):
    # Far too much Langevin noise: the weights random-walk and validation loss climbs.
    tuner = tiny_tuner(n_outer=6, refit=False, sampler=dict(temperature=50.0))
    with pytest.warns(DivergenceWarning, match="validation loss rose"):
        tuner.fit(*data)


def test_healthy_search_does_not_warn_about_degraded_chains(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        warnings.simplefilter("error", OverfittingWarning)
        tiny_tuner(n_outer=6, refit=False).fit(*data)


def test_overfitting_chains_get_advice_of_their_own(data):
    """Random labels: the chains memorise their training rows (training loss falls) while
    the validation loss climbs. That is overfitting, not a chain that fails to train, and
    the advice says so (it used to say: lower temperature, noise or inner_lr)."""
    X, _ = data
    y = np.random.RandomState(0).randint(0, 4, len(X))
    tuner = tiny_tuner(tiny_classifier(lr=0.3), n_outer=8, refit=False,
                       sampler=dict(burn_in=5, n_samples=5, temperature=1e-4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(X[:60], y[:60])
    kinds = [type(w.message) for w in caught]
    assert OverfittingWarning in kinds and DivergenceWarning not in kinds
    message = str(next(w.message for w in caught if type(w.message) is OverfittingWarning))
    assert "overfit" in message and "training loss fell" in message


@pytest.mark.parametrize("max_epochs, refit, warns", [(1, True, True), (40, True, False),
                                                     (1, "ensemble", False)])
def test_an_undertrained_refit_is_flagged(data, max_epochs, refit, warns):
    """The chains train 100 steps; a net whose own budget is one epoch (2 steps) refits
    to a net that scores below the chains on its own training rows. The search cannot
    learn its way out of that (the net's lr or max_epochs can), and best_score_ then
    overstates best_estimator_: say so. Given 40 epochs the refit fits its rows and
    nothing is said; nor with refit="ensemble", whose predictions come from a chain run
    on after the refit."""
    net = tiny_classifier(lr=0.05, max_epochs=max_epochs, batch_size=64)
    tuner = tiny_tuner(net, n_outer=10, refit=refit, sampler=dict(burn_in=5, n_samples=5),
                       outer=dict(eval_every=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(*data)
    found = [str(w.message) for w in caught if type(w.message) is UndertrainedWarning]
    assert bool(found) is warns
    if warns:
        X, y = data
        train = tuner.best_estimator_.score(X, y)
        assert train < tuner.best_score_
        assert f"{train:.4g} on its own training rows" in found[0]
        assert "max_epochs=1" in found[0] and "undertrained" in found[0]


def test_an_undertrained_refit_at_a_raced_lr_names_the_race_and_the_budget_race(data):
    """Where the race refit an lr other than the net's own, "race them inside fit" is
    no advice (it did): the warning names the pick and the race of the budget."""
    from sgld_tuner.search import Race

    net = tiny_classifier(lr=0.05, max_epochs=1, batch_size=64)
    tuner = tiny_tuner(net, n_outer=10, sampler=dict(burn_in=5, n_samples=5),
                       outer=dict(eval_every=5), schedule=Race(param_grid={"lr": [0.0125]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(*data)
    found = [str(w.message) for w in caught if type(w.message) is UndertrainedWarning]
    assert tuner.best_estimator_.lr == 0.0125 and len(found) == 1
    assert "The search refit lr=0.0125 (the net's own: 0.05)" in found[0]
    assert "'max_epochs'" in found[0] and "schedule=Race()" not in found[0]


class ReluMLP(torch.nn.Module):
    def __init__(self, n_in=4, hidden=16, n_out=3):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(n_in, hidden), torch.nn.Linear(hidden, n_out)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def test_rows_sorted_by_label_are_named_as_the_cause_when_the_net_does_not_shuffle():
    """iris as load_iris gives it (50 rows of each class in turn) under skorch's default
    sequential batches: the net trains one class at a time, and so do the chains, which
    take their minibatches as the net does. A warning before the search names the order
    and the fix (not the budget, once the refit falls short); shuffling the batches is
    the fix."""
    from sgld_tuner.search import RowOrderWarning

    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)

    def fit(shuffle):
        net = tiny_classifier(ReluMLP, module__n_in=4, module__n_out=3, lr=0.1,
                              max_epochs=20, batch_size=32, iterator_train__shuffle=shuffle)
        tuner = SGLDHyperTuner(net, {"l1": PerWeightL1()}, n_outer=33, cv=3,
                               random_state=0, schedule=PlainSearch(),
                               sampler=SamplerSettings(burn_in=2, n_samples=1),
                               outer=OuterSettings(eval_every=33))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tuner.fit(X, y)
        return tuner, [str(w.message) for w in caught
                       if type(w.message) in (UndertrainedWarning, RowOrderWarning)]

    tuner, found = fit(shuffle=False)
    in_order = tuner.best_estimator_.score(X, y)
    assert len(found) == 1, found
    assert "sorted by label" in found[0] and "iterator_train__shuffle=True" in found[0]
    tuner, found = fit(shuffle=True)
    assert tuner.best_estimator_.score(X, y) > in_order + 0.1
    assert not [message for message in found if "sorted by label" in message]


def test_label_order_is_read_from_the_runs_of_the_targets():
    """Sorted class codes under a sequential iterator are in label order; the same codes
    shuffled, a shuffling or user-made iterator, or a regression target are not."""
    from sgld_tuner.search.diagnostics import in_label_order

    sorted_codes = np.repeat(np.arange(3), 50)
    shuffled = np.random.default_rng(0).permutation(sorted_codes)
    net = tiny_classifier()
    assert in_label_order(net, sorted_codes)
    assert not in_label_order(net, shuffled)
    assert not in_label_order(tiny_classifier(iterator_train__shuffle=True), sorted_codes)
    # a sampler of the user's, or an iterator class of their own: its order is unknown
    sampler = torch.utils.data.RandomSampler(range(150))
    assert not in_label_order(tiny_classifier(iterator_train__sampler=sampler), sorted_codes)
    assert not in_label_order(tiny_classifier(iterator_train=type(
        "MyLoader", (torch.utils.data.DataLoader,), {})), sorted_codes)
    assert not in_label_order(net, np.sort(np.random.default_rng(0).normal(size=150)))


def test_noisy_training_labels_validated_on_clean_rows_are_not_undertraining(data):
    """Half the training labels flipped, validation on clean rows (the noisy-labels
    set-up of SampleWeights): a well-trained refit then scores far below best_score_ on
    its own rows, but so do the chains on theirs. That is the labels, not the budget,
    and no UndertrainedWarning is given."""
    X, y = data
    rng = np.random.RandomState(0)
    y = y.copy()
    flipped = rng.rand(80) < 0.5
    y[:80][flipped] = (y[:80][flipped] + rng.randint(1, 4, flipped.sum())) % 4
    cv = PredefinedSplit(np.r_[np.full(80, -1), np.zeros(40)])
    net = tiny_classifier(lr=0.1, max_epochs=40, batch_size=32, module__hidden=32)  # 160 steps
    tuner = tiny_tuner(net, n_outer=20, cv=cv,
                       sampler=dict(burn_in=5, n_samples=5, warm_up="epochs"),
                       outer=dict(eval_every=5))  # every scored chain older than the budget
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(X, y)
    # the first comparison alone would warn: the refit is well below best_score_
    train, best = tuner.best_estimator_.score(X, y), tuner.best_score_
    assert train < best - UNDERTRAINED_GAP * best
    assert not [w for w in caught if type(w.message) is UndertrainedWarning]


# ---------------------------------------------------------------------------------------
# Issue 12 #15/#17: misconfigurations fail before the first training step, naming the fix
# ---------------------------------------------------------------------------------------
class CountingMLP(TinyMLP):
    """Counts forward calls: a training step would add many."""

    calls = 0

    def forward(self, X):
        type(self).calls += 1
        return super().forward(X)


def _fails_before_training(tuner, X, y, match):
    CountingMLP.calls = 0
    with pytest.raises(ValueError, match=match):
        tuner.fit(X, y)
    # at most one probe forward per fold, no training step
    assert CountingMLP.calls <= 2


@pytest.mark.parametrize("where", ["tuner", "net"])
def test_batch_size_zero_is_refused_naming_the_parameter(data, where):
    X, y = data
    net = tiny_classifier(module=CountingMLP, batch_size=0 if where == "net" else 32)
    tuner = tiny_tuner(net, sampler=dict(batch_size=0 if where == "tuner" else None))
    _fails_before_training(tuner, X, y, "batch_size")


@pytest.mark.parametrize("part,match", [(0, "empty training fold"),
                                        (1, "empty validation fold")])
def test_empty_fold_is_refused_naming_cv(data, part, match):
    X, y = data
    split = [np.arange(60), np.arange(60, 120)]
    split[part] = np.array([], dtype=int)
    tuner = tiny_tuner(tiny_classifier(module=CountingMLP), cv=[tuple(split)])
    _fails_before_training(tuner, X, y, match + ".*cv")


def test_class_count_above_module_outputs_is_refused(data):
    X, y = data
    tuner = tiny_tuner(tiny_classifier(module=CountingMLP, module__n_out=3))
    _fails_before_training(tuner, X, y, "outputs 3 values per row but y has 4 classes")


def test_regression_target_columns_must_match_module_outputs():
    from sklearn.datasets import make_regression
    from skorch import NeuralNetRegressor

    X, y = make_regression(n_samples=60, n_features=5, n_targets=3, random_state=0)
    net = NeuralNetRegressor(CountingMLP, module__n_in=5, module__n_out=1, lr=0.01,
                             max_epochs=1, train_split=None, verbose=0)
    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1()}, n_outer=2, cv=2, random_state=0)
    _fails_before_training(tuner, X.astype(np.float32), y, "1 value.* but y has 3 target")


class DropoutMLP(TinyMLP):
    """TinyMLP with dropout on the hidden layer: randomness inside the module."""

    def __init__(self, n_in=64, hidden=8, n_out=4, p=0.5):
        super().__init__(n_in, hidden, n_out)
        self.drop = torch.nn.Dropout(p)

    def forward(self, X):
        return self.out(self.drop(torch.tanh(self.hidden(X))))


def _dropout_fit(data, **kwargs):
    params = dict(n_outer=3, refit=False, sampler=dict(temperature=1e-2))
    params.update(kwargs)
    net = tiny_classifier(module=DropoutMLP, module__p=params.pop("p", 0.5))
    tuner = tiny_tuner(net, **params).fit(*data)
    return tuner.cv_results_["mean_test_score"], tuner.hyperparams_["l1"]


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key])


def test_dropout_is_seeded_parallel_safe_and_leaves_the_callers_rng_alone(data):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = _dropout_fit(data)
    # A fit draws nothing from the caller's torch RNG stream (dropout included).
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # another caller stream: the search must not depend on it
    _assert_same(first, _dropout_fit(data))
    _assert_same(first, _dropout_fit(data, n_jobs=2))
    # The dropout is really drawn (p=0 gives another trajectory), and from random_state.
    without = _dropout_fit(data, p=0.0)
    assert any(not np.array_equal(first[1][k], without[1][k]) for k in first[1])
    other = _dropout_fit(data, random_state=1)
    assert any(not np.array_equal(first[1][k], other[1][k]) for k in first[1])


def test_dropout_stream_is_resumed_with_the_chains(data):
    """Stopped after iteration 1 and resumed, a dropout search ends where an
    uninterrupted one ends (the module stream is part of the resumable state)."""
    def stop_after_one(record):
        return record["iteration"] == 1

    stopped = tiny_tuner(tiny_classifier(module=DropoutMLP), n_outer=4, refit=False,
                         callbacks=[stop_after_one], sampler=dict(temperature=1e-2))
    with pytest.warns(SearchInterrupted):
        stopped.fit(*data)
    resumed = stopped.set_params(callbacks=None, warm_start=True).fit(*data)
    full = _dropout_fit(data, n_outer=4)
    _assert_same(full, (resumed.cv_results_["mean_test_score"], resumed.hyperparams_["l1"]))


@pytest.mark.parametrize("change,name", [
    (dict(hyperparams={"l1": PerWeightL1(init=2e-3)}), "hyperparams"),
    (dict(estimator=tiny_classifier(module__hidden=16)), "module"),
    (dict(cv=3), "cv"),
    (dict(random_state=1), "random_state"),
    (dict(outer=OuterSettings(eval_every=1, lr=0.5)), "outer"),
    (dict(outer=OuterSettings(eval_every=1, optimizer="sgd")), "outer"),
    (dict(schedule=Race()), "schedule"),
])
def test_warm_start_refuses_changed_settings_before_training(data, change, name):
    tuner = tiny_tuner(n_outer=1, refit=False, warm_start=True).fit(*data)
    calls = []
    tuner.set_params(n_outer=2, callbacks=[calls.append], **change)
    with pytest.raises(ValueError, match=f"but {name} changed since it started"):
        tuner.fit(*data)
    assert calls == []  # refused before any outer iteration
    # Equal settings in new objects are the same search: it continues (a new timeout, a
    # budget, is not a new search).
    tuner.set_params(estimator=tiny_classifier(), hyperparams={"l1": PerWeightL1(init=1e-3)},
                     cv=2, random_state=0, schedule=PlainSearch(),
                     outer=OuterSettings(eval_every=1, timeout=600)).fit(*data)
    assert [c["iteration"] for c in calls] == [1]


def test_an_exception_in_a_callback_keeps_the_results_and_is_reraised(data):
    def boom(record):
        if record["iteration"] == 1:
            raise RuntimeError("boom")

    tuner = tiny_tuner(n_outer=4, callbacks=[boom])
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(*data)
    assert any(w.category is SearchInterrupted and "callback raised RuntimeError" in str(w.message)
               for w in caught)
    # The two points scored are kept; no refit; the search can be resumed.
    assert len(tuner.cv_results_["params"]) == 2 and len(tuner.history_) == 2
    assert "RuntimeError: boom" in tuner.stop_reason_ and not hasattr(tuner, "best_estimator_")
    assert_no_nan(tuner)
    tuner.set_params(callbacks=None, warm_start=True).fit(*data)
    full = tiny_tuner(n_outer=4).fit(*data)
    np.testing.assert_array_equal(tuner.cv_results_["mean_test_score"],
                                  full.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(tuner.predict_proba(data[0]), full.predict_proba(data[0]))


def test_a_blow_up_without_nan_is_treated_as_a_divergence(data):
    net = tiny_classifier(lr=1e6)  # losses of 1e5 and more, all finite
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner = tiny_tuner(net, n_outer=3, refit=False).fit(*data)
    assert any("more than 1000 times" in str(w.message) for w in caught)
    hist = tuner.history_
    assert hist["diverged"].all() and np.isfinite(hist["outer_loss"]).all()
    assert (hist["outer_loss"] > 1e3).all()
    np.testing.assert_allclose(hist["inner_lr"], [5e5, 2.5e5, 1.25e5, 6.25e4])
    assert "still diverging" in tuner.stop_reason_
    assert_no_nan(tuner)
    with pytest.raises(FloatingPointError, match="still diverging"):
        tiny_tuner(net, n_outer=3, refit=False, error_score="raise").fit(*data)


class SigintAtEpoch(skorch.callbacks.Callback):
    """Sends a real SIGINT (Ctrl-C) to the process at the end of one training epoch."""

    def __init__(self, epoch=3):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_during_the_refit_is_reported(data):
    handler = signal.getsignal(signal.SIGINT)
    net = tiny_classifier(max_epochs=20, callbacks=[SigintAtEpoch(3)])
    tuner = tiny_tuner(net)
    with pytest.warns(SearchInterrupted, match="refit interrupted"):
        tuner.fit(*data)
    assert "refit interrupted (KeyboardInterrupt) after 3 of 20 epochs" in tuner.stop_reason_
    assert len(tuner.best_estimator_.history) == 3
    assert signal.getsignal(signal.SIGINT) is handler
    # Without the Ctrl-C the refit runs all its epochs and reports nothing.
    tuner = tiny_tuner(tiny_classifier(max_epochs=20)).fit(*data)
    assert tuner.stop_reason_ is None and len(tuner.best_estimator_.history) == 20


class InterruptingAccuracy:
    """Accuracy, except a KeyboardInterrupt on its ``interrupt_at``-th call (1-based), as
    a Ctrl-C landing in the scoring of a point would."""

    def __init__(self, interrupt_at=-1):
        self.calls, self.interrupt_at = 0, interrupt_at

    def __call__(self, estimator, X, y):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return float(np.mean(estimator.predict(X) == y))


def _comparable(tuner):
    """What an interrupted-and-resumed search must reproduce exactly."""
    history = tuner.history_.drop(columns=[c for c in tuner.history_ if c.endswith("time_s")])
    return (tuner.hyperparams_, list(tuner.cv_results_["mean_test_score"]),
            tuner.cv_results_["params"], history.to_dict("list"))


def _assert_resumed_equals(resumed, full, X):
    got, want = _comparable(resumed), _comparable(full)
    for name, arr in want[0]["l1"].items():
        np.testing.assert_array_equal(got[0]["l1"][name], arr)
    assert got[1] == want[1]
    for a, b in zip(got[2], want[2]):
        assert a == b
    assert got[3].keys() == want[3].keys()
    for key in want[3]:
        np.testing.assert_array_equal(np.asarray(got[3][key]), np.asarray(want[3][key]))
    np.testing.assert_array_equal(resumed.predict_proba(X), full.predict_proba(X))


def _bookkeeping_interrupt(monkeypatch, at_call):
    """A KeyboardInterrupt in the bookkeeping after scoring (keeping the point's values)."""
    from sgld_tuner.search import lane

    keep = lane._keep_snapshot
    calls = []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return keep(*args, **kwargs)

    monkeypatch.setattr(lane, "_keep_snapshot", interrupting)


@pytest.mark.parametrize("where,kept", [("scoring", 3), ("bookkeeping", 3), ("after", 4)])
def test_ctrl_c_in_scoring_or_bookkeeping_is_atomic_and_resumes_exactly(
        data, tmp_path, monkeypatch, where, kept):
    """A Ctrl-C in the scoring of iteration 3 (the second point's second fold), in the
    bookkeeping after it, or after the iteration's commit (a callback): the iteration is
    rolled back whole (3 kept) or kept whole (4), the results so far and the refit are
    there, and a resume from ``save``/``load`` ends where the uninterrupted run ends."""
    params = dict(n_outer=6, outer=dict(eval_every=2), sampler=dict(temperature=1e-2))
    full = tiny_tuner(scoring=InterruptingAccuracy(), **params).fit(*data)

    # Call 1 is the probe at fit start, 2-3 score iteration 1, 4-5 iteration 3.
    scorer = InterruptingAccuracy(interrupt_at=5 if where == "scoring" else -1)
    callbacks = None
    if where == "bookkeeping":
        _bookkeeping_interrupt(monkeypatch, at_call=2)
    elif where == "after":
        def callbacks_stop(record):
            if record["iteration"] == 3:
                raise KeyboardInterrupt
        callbacks = [callbacks_stop]
    stopped = tiny_tuner(scoring=scorer, callbacks=callbacks, **params)
    with pytest.warns(SearchInterrupted, match="KeyboardInterrupt"):
        stopped.fit(*data)
    monkeypatch.undo()
    assert stopped.stop_reason_ == f"interrupted (KeyboardInterrupt) at outer iteration {kept}"
    assert len(stopped.history_) == kept
    assert len(stopped.cv_results_["params"]) == kept // 2 and hasattr(stopped, "best_estimator_")
    assert_no_nan(stopped)

    path = tmp_path / "search.joblib"
    stopped.set_params(callbacks=None).save(path)
    resumed = SGLDHyperTuner.load(path, trusted=True)
    resumed.set_params(warm_start=True).fit(*data)
    assert resumed.stop_reason_ is None
    _assert_resumed_equals(resumed, full, data[0])
