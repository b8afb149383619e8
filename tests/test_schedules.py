"""The seam a schedule plugs into: lanes of chains run and compared inside one fit."""
import numpy as np
import torch
import pytest
from sklearn.base import clone

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.search import PlainSearch, Schedule
from test_tuner import digits4, grouped, tiny_classifier  # noqa: F401 - fixture
from sgld_tuner.hyperparams import PerWeightL1


class BetterOfTwoLanes(Schedule):
    """Two lanes at two inner learning rates (the net's ``lr``, which the chains step
    with); after one outer iteration each, the better one by its mean cv score goes on
    to ``n_outer``. One class on the seam: no change to the tuner."""

    def __init__(self, lrs=(0.01, 0.3)):
        self.lrs = lrs

    def run(self, context, new_lane):
        lanes = [new_lane({"lr": lr}) for lr in self.lrs]
        for lane in lanes:
            lane.run(1)
        best = max(lanes, key=lambda lane: lane.state.best_value)
        best.run(context.n_outer)
        return best


def _tuner(schedule=None, estimator=None, sampler=(), **kwargs):
    return SGLDHyperTuner(estimator if estimator is not None else tiny_classifier(),
                          {"l1": PerWeightL1(init=1e-3)},
                          **grouped({"n_outer": 3, "cv": 2, "random_state": 0,
                                     "schedule": schedule, **kwargs},
                                    sampler={"burn_in": 2, "n_samples": 2, **dict(sampler)},
                                    outer={"eval_every": 1}))


def test_a_schedule_of_two_lanes_keeps_the_better_one_and_refits_with_its_lr(digits4):
    X, y = digits4
    lrs = (0.001, 0.3)
    tuner = _tuner(BetterOfTwoLanes(lrs)).fit(X, y)
    # Each lane alone, one outer iteration, on the same folds and seeds: the truth of
    # which one scores better after one iteration.
    alone = {lr: _tuner(n_outer=1, refit=False, estimator=tiny_classifier(lr=lr))
             .fit(X, y).best_score_ for lr in lrs}
    winner = max(lrs, key=alone.get)
    assert alone[0.3] != alone[0.001]
    assert tuner.best_params_["lr"] == winner
    assert tuner.best_estimator_.lr == winner  # the refit trains at the winning lr
    assert list(tuner.history_["iteration"]) == [0, 1, 2]  # the kept lane continued warm
    assert tuner.cv_results_["mean_test_score"][0] == alone[winner]
    assert np.isfinite(tuner.best_score_)


def test_the_race_is_the_default_schedule_and_n_outer_1_races_nothing(digits4):
    X, y = digits4
    default = _tuner(refit=False).fit(X, y)
    lrs = default.cv_results_["param_lr"].astype(float)
    assert len(set(lrs)) >= 5 and default.best_params_["lr"] in set(lrs)
    # n_outer=1 is the no-search control: one lane, the net's lr, as PlainSearch.
    control = _tuner(n_outer=1, refit=False).fit(X, y)
    plain = _tuner(PlainSearch(), n_outer=1, refit=False).fit(X, y)
    np.testing.assert_array_equal(control.cv_results_["mean_test_score"],
                                  plain.cv_results_["mean_test_score"])
    assert "lr" not in control.best_params_
    # without a race: one iteration of one candidate, at the steps the lane ran
    assert (plain.n_candidates_, plain.n_iterations_) == ([1], 1)
    assert plain.n_resources_ == [max(plain.cv_results_["n_resources"])]
    assert default.n_candidates_[0] >= 5 and default.n_iterations_ == len(set(
        default.cv_results_["iter"]))


def _fake_lanes(scores, errors=None, lrs=(0.01, 0.1, 1.0)):
    from types import SimpleNamespace

    errors = errors or [0.0] * len(scores)
    return [SimpleNamespace(state=SimpleNamespace(net_params={"lr": lr}), rung_score=s,
                            rung_error=e, ran_net_params=lambda lr=lr: {"lr": lr})
            for lr, s, e in zip(lrs, scores, errors)]


@pytest.mark.parametrize("scores, errors, margin, own, winner", [
    ((0.80, 0.86, 0.90), (0.02, 0.02, 0.02), 1.0, 0.1, 1.0),    # beats 0.1 by 2 errors
    ((0.80, 0.89, 0.90), (0.02, 0.02, 0.02), 1.0, 0.1, 0.1),    # a tie: the net's own lr
    ((0.89, 0.85, 0.90), (0.02, 0.02, 0.02), 1.0, 0.2, 1.0),    # 0.01 and 1.0 tied: the
    ((0.89, 0.85, 0.90), (0.02, 0.02, 0.02), 1.0, 0.05, 0.01),  # nearer in ratio
    ((0.80, 0.89, 0.90), (0.02, 0.02, 0.02), 0.0, 0.1, 1.0),    # margin 0: the best mean
])
def test_the_last_rung_refits_the_tied_lr_nearest_the_nets_own(scores, errors, margin, own,
                                                                winner):
    from sgld_tuner.search import Race

    lanes = _fake_lanes(scores, errors)
    assert Race(margin=margin)._winner(lanes, own).state.net_params["lr"] == winner


def test_a_rung_keeps_the_best_third_and_the_next_smaller_lr():
    from sgld_tuner.search import Race

    lrs = (0.01, 0.03, 0.1, 0.3, 0.9)
    lanes = _fake_lanes((0.2, 0.3, 0.5, 0.8, 0.7), lrs=lrs)
    kept = {lane.state.net_params["lr"] for lane in Race()._promoted(lanes)}
    assert kept == {0.3, 0.9, 0.1}
    kept = {lane.state.net_params["lr"] for lane in Race(hedge=False)._promoted(lanes)}
    assert kept == {0.3, 0.9}


def test_a_user_stop_ends_the_race_with_its_results_kept(digits4):
    """A callback's stop (as Ctrl-C or the timeout) in the third lane ends the whole
    race: no further lane is run, the best lane so far is reported and refit."""
    X, y = digits4
    seen = set()

    def stop_in_third_lane(record):
        seen.add(id(record))
        return len(seen) == 3

    tuner = _tuner(callbacks=[stop_in_third_lane]).fit(X, y)
    assert "callback" in tuner.stop_reason_
    assert len(set(tuner.cv_results_["param_lr"].astype(float))) == 3
    assert tuner.best_estimator_.lr == tuner.best_params_["lr"]


def test_the_timeout_counts_across_the_races_lanes(digits4):
    tuner = _tuner(outer={"eval_every": 1, "timeout": 1e-9}, refit=False).fit(*digits4)
    assert "timeout" in tuner.stop_reason_
    assert len(set(tuner.cv_results_["param_lr"].astype(float))) == 1


def test_a_race_whose_every_candidate_diverges_keeps_the_start(digits4):
    from test_reliability import FlakyMLP

    from sgld_tuner.search import RaceWarning, SearchInterrupted

    FlakyMLP.calls, FlakyMLP.nan_calls = 0, range(1, 10**9)
    tuner = _tuner(estimator=tiny_classifier(module=FlakyMLP), refit=False, error_score=0.0)
    with pytest.warns(RaceWarning, match="diverged"), pytest.warns(SearchInterrupted):
        tuner.fit(*digits4)
    for arr in tuner.best_params_["l1"].values():
        np.testing.assert_allclose(arr, 1e-3, rtol=1e-5)


def test_a_diverging_candidates_warnings_name_it(digits4):
    """A candidate far above the net's lr diverges: the warnings say which candidate (not
    "the net's lr ... see history_", whose records are the winner's), and the lane the
    race keeps is refit at its own lr."""
    import warnings

    from sgld_tuner.search import DivergenceWarning, Race

    tuner = _tuner(schedule=Race(param_grid={"lr": [0.1, 1e6]}), refit=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(*digits4)
    diverged = [str(w.message) for w in caught if w.category is DivergenceWarning]
    assert diverged and all(m.startswith("the race's candidate {'lr': 1000000.0}: ")
                            for m in diverged), diverged
    assert tuner.best_params_["lr"] == 0.1 and not tuner.history_["diverged"].any()


def test_a_schedule_is_a_parameter_like_any_other():
    tuner = _tuner(BetterOfTwoLanes((0.1, 0.2)))
    assert tuner.get_params()["schedule__lrs"] == (0.1, 0.2)
    tuner.set_params(schedule__lrs=(0.05, 0.5))
    assert clone(tuner).schedule.lrs == (0.05, 0.5)


def test_the_race_keeps_the_lr_that_scores_best_at_the_refits_horizon(digits4):
    """Five lrs around the net's (0.1), one rung (factor 5): every lane runs to the
    refit's horizon, the net's own budget (2 epochs of 2 batches = 4 inner steps = one
    outer iteration of 2 + 2 steps here) and is scored there; the best goes on warm to
    n_outer and is refit with its lr."""
    from sgld_tuner.search import Race

    X, y = digits4
    tuner = _tuner(Race(factor=5, extend=0, after=None, margin=0, incumbent=False),
                   n_outer=3).fit(X, y)
    rows = tuner.cv_results_
    lrs = rows["param_lr"].astype(float)
    np.testing.assert_allclose(sorted(set(lrs)), [0.1 / 9, 0.1 / 3, 0.1, 0.3, 0.9])
    at_horizon = rows["iteration"] == 0  # one row per lane, its chains at the budget
    assert at_horizon.sum() == 5 and set(rows["n_resources"][at_horizon]) == {4}
    winner = tuner.best_params_["lr"]
    scores = dict(zip(lrs[at_horizon], rows["mean_test_score"][at_horizon]))
    assert scores[winner] == max(scores.values())
    assert tuner.best_estimator_.lr == winner
    assert lrs[tuner.best_index_] == winner  # chosen among the winning lane's rows
    assert list(rows["iteration"][lrs == winner]) == [0, 1, 2]  # it continued warm


@pytest.mark.parametrize("n_lanes, horizon, eval_every, rungs", [
    (5, 32, 5, 2),   # small data: the first rung at a third of the horizon
    (5, 44, 5, 2),   # a ninth of it would be 4.9 outer iterations: too short to judge
    (5, 45, 5, 3),   # a ninth spans eval_every: down to one lane (and the hedge)
    (5, 50, 5, 3),   # a training run spanning n_outer=50 (large data)
    (9, 50, 5, 3),   # 9 -> 3 -> 1
    (3, 50, 5, 2),   # 3 -> 1
    (5, 10, 1, 3),
    (1, 50, 5, 1)])
def test_a_long_training_run_races_down_to_one_lane_in_one_more_rung(n_lanes, horizon,
                                                                    eval_every, rungs):
    from sgld_tuner.search import Race

    assert Race()._n_rungs(n_lanes, horizon, eval_every) == rungs


def test_three_rungs_run_at_a_ninth_a_third_and_all_of_the_horizon(digits4):
    """Nine outer iterations of 2 + 2 steps span the net's budget (18 epochs of 2
    batches), scored every iteration: rungs end at 1, 3 and 9 iterations, with 5, 3 and
    at most 2 lanes (the best third, and the hedge)."""
    from sgld_tuner.search import Race

    X, y = digits4
    tuner = _tuner(Race(extend=0, after=0, incumbent=False), n_outer=9, refit=False,
                   estimator=tiny_classifier(max_epochs=18)).fit(X, y)
    rows = tuner.cv_results_
    lanes_per_rung = {rung: len(set(rows["param_lr"][rows["iter"] == rung].astype(float)))
                      for rung in (0, 1, 2)}
    # the last rung: the best lane, and the hedge unless the best has the smallest lr
    assert lanes_per_rung[0] == 5 and lanes_per_rung[1] == 3 and lanes_per_rung[2] in (1, 2)
    assert max(rows["iteration"][rows["iter"] == 0]) == 0
    assert max(rows["iteration"][rows["iter"] == 1]) == 2
    assert max(rows["iteration"][rows["iter"] == 2]) == 8
    # as scikit-learn's successive-halving searches report them: lanes per rung, and the
    # inner steps per fold each rung judged them at (4 an iteration; budget 36)
    assert tuner.n_candidates_ == [5, 3, lanes_per_rung[2]] and tuner.n_iterations_ == 3
    assert tuner.n_resources_ == [4, 12, 36] == [
        max(rows["n_resources"][rows["iter"] == rung]) for rung in (0, 1, 2)]
    assert (tuner.min_resources_, tuner.max_resources_, tuner.n_remaining_candidates_) \
        == (4, 36, 1)


@pytest.mark.parametrize("grid, error, match", [
    ({"lr": []}, ValueError, "non-empty list"),
    ({"lr": 0.1}, TypeError, "list of candidates"),
    ({"lr": [0.1, -1.0]}, ValueError, r"invalid candidates \[-1.0\].*finite number > 0"),
    ({"lr": [float("inf")]}, ValueError, "finite number > 0"),
    ({"lr": ["0.1"]}, ValueError, "finite number > 0"),
    ({"max_epochs": [0, 5]}, ValueError, r"invalid candidates \[0\].*int >= 1"),
    ({"max_epochs": [2.5]}, ValueError, "int >= 1"),
    ({"batch_size": [0, 8]}, ValueError, r"int >= 1, or -1"),
    ({"colour": [1, 2]}, ValueError, "not a parameter of the net"),
    ({"hyperparams__l1__init": [1e-3]}, ValueError, "not a parameter of the net|differentiable"),
    ({}, ValueError, "non-empty dict"),
])
def test_a_bad_race_declaration_is_refused_before_training(digits4, grid, error, match):
    from sgld_tuner.search import Race

    calls = []
    tuner = _tuner(Race(param_grid=grid), callbacks=[lambda r: calls.append(r) and False])
    with pytest.raises(error, match=match):
        tuner.fit(*digits4)
    assert calls == []


def test_a_kind_named_like_the_raced_lr_is_refused_before_training(digits4):
    """The default race tunes the net's ``lr``: a kind of that name would share its key in
    ``best_params_`` (and the refit would read the lr as the kind's value)."""
    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.search import PlainSearch

    with pytest.raises(ValueError, match="kind is named 'lr'.*PlainSearch"):
        SGLDHyperTuner(tiny_classifier(), {"lr": PerWeightL1()}, n_outer=3).fit(*digits4)
    tuner = SGLDHyperTuner(tiny_classifier(), {"lr": PerWeightL1()}, n_outer=2,
                           schedule=PlainSearch(), cv=2, refit=False).fit(*digits4)
    assert isinstance(tuner.best_params_["lr"], dict)  # the kind's strengths, by name


def test_a_race_over_a_discrete_knob_refits_with_the_winner(digits4):
    from sgld_tuner.search import Race

    X, y = digits4
    tuner = _tuner(Race(param_grid={"module__hidden": [2, 8]}, factor=2), n_outer=4)
    tuner.fit(X, y)
    assert tuner.best_params_["module__hidden"] in (2, 8)
    assert tuner.best_estimator_.module__hidden == tuner.best_params_["module__hidden"]
    assert set(tuner.cv_results_["param_module__hidden"].compressed()) == {2, 8}


def test_after_the_race_the_winner_continues_for_its_budgets_only(digits4):
    """``after=2``: two of the winner's budgets (one outer iteration each here) beyond
    the race, whatever n_outer allows."""
    from sgld_tuner.search import Race

    X, y = digits4
    tuner = _tuner(Race(factor=5, extend=0, after=2, incumbent=False), n_outer=50,
                   refit=False).fit(X, y)
    winner = tuner.best_params_["lr"]
    rows = tuner.cv_results_["param_lr"].astype(float) == winner
    assert list(tuner.cv_results_["iteration"][rows]) == [0, 1, 2]


def test_the_nets_own_lr_is_refit_unless_the_winner_beats_it_where_the_search_ends(
        digits4):
    """The net's own lr (0.1) loses the race to 0.9 at the refit's horizon (one outer
    iteration here); with ``incumbent`` its lane continues to where the winner's search
    ends (n_outer), and the better of the two there (its mean over the later half of
    the stretch) is refit. The incumbent's lane is exactly the search without a race."""
    from sgld_tuner.search import Race

    X, y = digits4
    grid = {"lr": [0.1, 0.9]}
    # the stream on which 0.9 wins the race on these 24 rows (the scenario under test)
    gaussian = {"noise": "gaussian"}
    # margin=0: 0.9 wins the race outright (the tie rule is tested on its own)
    race = _tuner(Race(param_grid=grid, after=None, margin=0), n_outer=4,
                  sampler=gaussian).fit(X, y)
    without = _tuner(Race(param_grid=grid, after=None, margin=0, incumbent=False),
                     n_outer=4, refit=False, sampler=gaussian).fit(X, y)
    plain = _tuner(PlainSearch(), n_outer=4, refit=False, sampler=gaussian).fit(X, y)
    assert without.best_params_["lr"] == 0.9  # the race alone moves the lr
    rows = race.cv_results_
    lrs = rows["param_lr"].astype(float)
    for lr in (0.1, 0.9):  # both lanes ran to n_outer
        assert list(rows["iteration"][lrs == lr])[-1] == 3
    assert rows["mean_test_score"][lrs == 0.1][-1] == plain.cv_results_["mean_test_score"][-1]
    window = rows["iteration"] >= 2
    mean = {lr: rows["mean_test_score"][window & (lrs == lr)].mean() for lr in (0.1, 0.9)}
    winner = 0.9 if mean[0.9] > mean[0.1] else 0.1
    assert race.best_params_["lr"] == winner and race.best_estimator_.lr == winner


def test_an_unbeatable_margin_keeps_the_nets_own_lr_as_the_search_without_a_race(digits4):
    from sgld_tuner.search import Race

    X, y = digits4
    race = _tuner(Race(param_grid={"lr": [0.1, 0.9]}, margin=1e9, after=None),
                  n_outer=4).fit(X, y)
    plain = _tuner(PlainSearch(), n_outer=4).fit(X, y)
    assert race.best_params_["lr"] == 0.1 and race.best_estimator_.lr == 0.1
    for name, values in plain.best_params_["l1"].items():
        np.testing.assert_array_equal(race.best_params_["l1"][name], values)
    np.testing.assert_array_equal(race.predict_proba(X), plain.predict_proba(X))


def test_a_race_whose_grid_leaves_out_the_nets_own_settings_has_no_incumbent(digits4):
    from sgld_tuner.search import Race

    X, y = digits4
    tuner = _tuner(Race(param_grid={"lr": [0.3, 0.9]}, after=None), n_outer=4,
                   refit=False).fit(X, y)
    lrs = tuner.cv_results_["param_lr"].astype(float)
    loser = ({0.3, 0.9} - {tuner.best_params_["lr"]}).pop()
    assert list(tuner.cv_results_["iteration"][lrs == loser]) == [0]  # not continued


class _TwoLanesSeen(Schedule):
    """Two lanes at two lrs, one outer iteration each; keeps them for the test."""

    def run(self, context, new_lane):
        self.lanes = [new_lane({"lr": lr}) for lr in (0.05, 0.1)]
        for lane in self.lanes:
            lane.run(1)
        return self.lanes[1]


@pytest.mark.parametrize("pipeline", [False, True])
def test_the_lanes_of_a_race_share_each_splits_rows(digits4, pipeline):
    """A race holds one copy of each split's rows and fitted preprocessing, not one per
    candidate (the data set once per lane made the race's peak memory grow with its
    lanes); each lane still scores through its own net."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits4
    net = tiny_classifier()
    schedule = _TwoLanesSeen()
    _tuner(schedule, estimator=make_pipeline(StandardScaler(), net) if pipeline else net,
           n_outer=1, refit=False).fit(X, y)
    one, two = schedule.lanes
    for a, b in zip(one.folds, two.folds):
        assert a.X_val is b.X_val
        assert a.problem.X_train.data_ptr() == b.problem.X_train.data_ptr()
        if pipeline:
            assert a.scored.steps[0][1] is b.scored.steps[0][1]
            assert a.scored.steps[-1][1] is not b.scored.steps[-1][1]
        else:
            assert a.scored is not b.scored


class _LanesSeen(Schedule):
    """One lane per given net setting, one outer iteration each; keeps them."""

    def __init__(self, settings):
        self.settings = settings

    def run(self, context, new_lane):
        self.lanes = [new_lane(params) for params in self.settings]
        for lane in self.lanes:
            lane.run(1)
        return self.lanes[0]


def test_lanes_whose_nets_start_alike_share_each_folds_calibration(digits4):
    """The ``init="auto"`` start is one gradient pass over a fold's rows at the initial
    weights: lanes that differ in training settings only (lr, batch size) take it from
    the first, and start where each would alone; a lane whose module differs computes
    its own."""
    X, y = digits4
    settings = [{"lr": 0.05}, {"lr": 0.3, "batch_size": 16}, {"module__hidden": 12}]
    schedule = _LanesSeen(settings)

    def tuner(schedule, **net):
        return SGLDHyperTuner(tiny_classifier(**net), {"l1": PerWeightL1()},
                              **grouped({"n_outer": 1, "cv": 2, "random_state": 0,
                                         "schedule": schedule, "refit": False},
                                        sampler={"burn_in": 2, "n_samples": 2}))

    tuner(schedule).fit(X, y)
    first, second, wider = schedule.lanes
    for a, b, c in zip(first.folds, second.folds, wider.folds):
        assert a.problem.data_grads is b.problem.data_grads
        assert c.problem.data_grads is not a.problem.data_grads
    for lane, params in zip(schedule.lanes, settings):
        alone = _LanesSeen([params])
        tuner(alone).fit(X, y)
        for x, y_ in zip(lane.state.lam, alone.lanes[0].state.lam):
            assert torch.equal(x, y_)
