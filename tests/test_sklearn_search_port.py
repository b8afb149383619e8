"""More of scikit-learn's search contract, ported to ``SGLDHyperTuner``.

Continues ``test_sklearn_search_contract.py`` (same conventions, same tiny net and data):
each test re-states one test of scikit-learn 1.9's
``sklearn/model_selection/tests/test_search.py`` and its docstring names it. The tuner is
not a grid search: a row of ``cv_results_`` is a point on one hyperparameter trajectory,
and its "candidates" are those evaluation points (``make_tuner`` scores every outer
iteration, so point ``k`` is scored right after outer iteration ``k``).

Failing fits. scikit-learn's ``FailingClassifier`` raises in ``fit`` for one parameter
value. A net whose training raises cannot run a chain at all, so here the failure sits
where the tuner evaluates a point on a fold: :class:`FailingNet` raises in
``predict_proba`` (hence ``predict``, hence every scorer that looks at the net) while the
search scores the chosen evaluation points. The net cannot see the hyperparameter values,
so a callback (run after each outer iteration, once its point is scored) tells it which
point comes next.
"""
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn import config_context
from sklearn.metrics import accuracy_score, make_scorer
from sklearn.model_selection import KFold
from skorch import NeuralNetClassifier
from test_sklearn_search_contract import Tiny, X, make_tuner, tiny_net, y

from sgld_tuner import SGLDHyperTuner

FAILING_MESSAGE = "Failing classifier failed as required"
# scikit-learn: "All the 15 fits failed ... ValueError: Failing classifier failed as
# required"; here in the tuner's words, with the underlying error named.
ALL_FAILED = rf"(?s)every evaluation failed.+ValueError.+{FAILING_MESSAGE}"


class Points:
    """Which evaluation point the search is scoring: callbacks run after each outer
    iteration, once its point is scored, so ``callback`` moves ``current`` on to the next.
    """

    current = 0

    @staticmethod
    def callback(record):
        Points.current = record["iteration"] + 1


def tracking_tuner(net=None, **kwargs):
    """``make_tuner`` whose ``Points.current`` follows the evaluation points."""
    Points.current = 0
    return make_tuner(net, callbacks=[Points.callback], **kwargs)


class FailingNet(NeuralNetClassifier):
    """A classifier whose predictions fail at the evaluation points in ``failing``."""

    failing: frozenset = frozenset()

    def predict_proba(self, X_):
        if Points.current in FailingNet.failing:
            raise ValueError(FAILING_MESSAGE)
        return super().predict_proba(X_)


def failing_tuner(failing, **kwargs):
    FailingNet.failing = frozenset(failing)
    return tracking_tuner(tiny_net(FailingNet), **kwargs)


EVERY_POINT = range(100)


def failure_warnings(record, error_score):
    """The warnings that report a failed evaluation scored as ``error_score``."""
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)
            and f"error_score={error_score}" in str(w.message)]


def assert_failures_reported(messages, n_failed, n_total):
    """Either one warning per failed evaluation, or one summary naming both counts
    (scikit-learn: "5 fits failed out of a total of 15")."""
    summary = [m for m in messages
               if re.search(rf"(?s)\b{n_failed}\b.*failed.*\b{n_total}\b", m)]
    assert len(messages) == n_failed or summary, messages


# -------------------------------------------------------------------- refit
class AllMethodsNet(NeuralNetClassifier):
    """A classifier with every method a search delegates that a net can have."""

    def decision_function(self, X_):
        return self.forward(X_).numpy()

    def score_samples(self, X_):
        return self.forward(X_).max(dim=1).values.numpy()


def test_no_refit():
    """Mirrors ``test_no_refit``: with ``refit=False`` the search keeps best_index_ and
    best_params_ (one metric; with several, none of best_index_, best_score_ and
    best_params_, as ``GridSearchCV``'s fit does: no metric names the best) but has no
    best_estimator_, and every delegated method raises an AttributeError whose cause
    (chained, as ``available_if`` chains it) says that ``refit=False`` is why. An
    invalid multi-metric ``refit`` is refused.

    Design difference: ``transform``/``inverse_transform`` are not checked; a skorch net
    has neither, so the tuner does not delegate them.
    """
    for scoring in (None, ["accuracy", "f1_macro"]):
        tuner = make_tuner(tiny_net(AllMethodsNet), scoring=scoring, refit=False).fit(X, y)
        single = scoring is None
        assert not hasattr(tuner, "best_estimator_")
        assert [hasattr(tuner, name) for name in ("best_index_", "best_score_",
                                                  "best_params_")] == [single] * 3
        for fn_name in ("predict", "predict_proba", "predict_log_proba",
                        "decision_function", "score_samples"):
            outer_msg = f"has no attribute '{fn_name}'"
            inner_msg = (f"`refit=False`. {fn_name} is available only after refitting on "
                         "the best parameters")
            with pytest.raises(AttributeError, match=outer_msg) as exc_info:
                getattr(tuner, fn_name)(X)
            assert isinstance(exc_info.value.__cause__, AttributeError), fn_name
            assert inner_msg in str(exc_info.value.__cause__)

    error_msg = "For multi-metric scoring, the parameter refit must be set to a scorer key"
    for refit in (True, "recall", "accuracy"):
        with pytest.raises(ValueError, match=error_msg):
            make_tuner(refit=refit, scoring={"acc": "accuracy", "f1": "f1_macro"}).fit(X, y)


# -------------------------------------------------------------------- scoring
class NoScoreNet(NeuralNetClassifier):
    """A classifier without a ``score`` method."""

    @property
    def score(self):
        raise AttributeError("NoScoreNet has no score")


def test_grid_search_no_score():
    """Mirrors ``test_grid_search_no_score``: a net without ``score`` is searched with an
    explicit ``scoring`` (and scores as the net with ``score`` does); a one-point search
    with the net's own score has ``cv_results_``. Without either it is refused."""
    with_score = make_tuner(scoring="accuracy").fit(X, y)
    no_score = make_tuner(tiny_net(NoScoreNet), scoring="accuracy").fit(X, y)
    assert hasattr(no_score, "cv_results_")
    np.testing.assert_allclose(no_score.cv_results_["mean_test_score"],
                               with_score.cv_results_["mean_test_score"])
    assert hasattr(make_tuner(n_outer=1, cv=2).fit(X, y), "cv_results_")
    with pytest.raises(TypeError, match="score"):
        make_tuner(tiny_net(NoScoreNet)).fit(X, y)


class TinyTakingSampleWeight(Tiny):
    """Tiny whose forward accepts ``sample_weight`` (skorch hands fit params to it)."""

    def forward(self, X, sample_weight=None):
        return super().forward(X)


def test_unsupported_sample_weight_scorer():
    """Mirrors ``test_unsupported_sample_weight_scorer``: fitting with sample_weight warns
    when the scoring does not support sample_weight: a scoring function, a scorer, and
    (naming it) the one scorer of a multi-metric dict that does not.

    Adapted: the scoring function is a callable ``(estimator, X, y)`` without a
    ``sample_weight`` parameter (what the search calls); the net's module takes
    ``sample_weight`` so that the refit's fit can receive it.
    """
    def fake_score_func(est, X_, y_):
        return 0.5

    fake_scorer = make_scorer(lambda y_true, y_pred: 0.5)
    sw = np.ones(len(y))
    net = NeuralNetClassifier(TinyTakingSampleWeight, criterion=torch.nn.CrossEntropyLoss,
                              lr=0.1, max_epochs=2, batch_size=32, train_split=None,
                              verbose=0)
    for scoring in (fake_score_func, fake_scorer):
        with pytest.warns(UserWarning, match="does not support sample_weight"):
            make_tuner(net, scoring=scoring).fit(X, y, sample_weight=sw)
    multi_warning = r"The scoring fake=.* does not support sample_weight"
    with pytest.warns(UserWarning, match=multi_warning):
        make_tuner(net, scoring=dict(fake=fake_scorer, accuracy="accuracy"),
                   refit=False).fit(X, y, sample_weight=sw)


# Two folds of 40 training and 20 validation rows: a scorer tells them apart by length.
UNEVEN_SPLITS = [(np.arange(0, 40), np.arange(40, 60)), (np.arange(20, 60), np.arange(0, 20))]


def point_scorer(est, X_, y_):
    """Fixed test and train scores per evaluation point: points 0 and 1 tie, 2 does not."""
    table = (0.7, 0.7, 0.4) if len(X_) == 40 else (0.5, 0.5, 0.2)
    return table[min(Points.current, 2)]


def test_search_cv_results_rank_tie_breaking():
    """Mirrors ``test_search_cv_results_rank_tie_breaking``: points 0 and 1 tie (test and
    train means), point 2 does not; the tied points share the 'min' rank: [1, 1, 3]."""
    tuner = tracking_tuner(scoring=point_scorer, n_outer=3, return_train_score=True,
                           refit=False, cv=UNEVEN_SPLITS).fit(X, y)
    res = tuner.cv_results_
    np.testing.assert_almost_equal(res["mean_test_score"][0], res["mean_test_score"][1])
    np.testing.assert_almost_equal(res["mean_train_score"][0], res["mean_train_score"][1])
    assert not np.allclose(res["mean_test_score"][1], res["mean_test_score"][2])
    assert not np.allclose(res["mean_train_score"][1], res["mean_train_score"][2])
    np.testing.assert_almost_equal(res["rank_test_score"], [1, 1, 3])


# -------------------------------------------------------------------- failing evaluations
def test_grid_search_failing_classifier():
    """Mirrors ``test_grid_search_failing_classifier`` (which also holds scikit-learn's
    failure-warning checks; 1.9 has no separate ``..._failing_classifier_warning``): the
    evaluations of point 2 (``FAILING_PARAMETER``) fail on both folds; a RuntimeWarning
    (scikit-learn's FitFailedWarning is one) reports the 2 failures of 6 evaluations, the
    error_score used and the error (type and message); their scores are error_score; with
    NaN they rank last and are not best.

    Failures are emulated in the net's predictions (see the module docstring): a net that
    raises in training cannot run a chain, and scoring is where the tuner evaluates a
    point on a fold, as ``_fit_and_score`` is where GridSearchCV evaluates a candidate.
    """
    failing = 2
    for error_score in (0.0, np.nan):
        with pytest.warns(RuntimeWarning) as record:
            tuner = failing_tuner({failing}, n_outer=3, scoring="accuracy", refit=False,
                                  error_score=error_score).fit(X, y)
        messages = failure_warnings(record, error_score)
        assert_failures_reported(messages, n_failed=2, n_total=6)
        assert any(re.search(rf"(?s)ValueError.+{FAILING_MESSAGE}", m) for m in messages), \
            messages
        res = tuner.cv_results_
        scores = np.stack([res[f"split{s}_test_score"] for s in range(tuner.n_splits_)])
        np.testing.assert_array_equal(scores[:, failing], error_score)
        assert np.isfinite(scores[:, :failing]).all()
    ranks = res["rank_test_score"]
    assert ranks[0] <= 2 and ranks[1] <= 2
    assert ranks[failing] == 3
    assert tuner.best_index_ != failing


def test_grid_search_classifier_all_fits_fail():
    """Mirrors ``test_grid_search_classifier_all_fits_fail``: when every evaluation fails
    the search raises (whatever the error_score, 0.0 here) with the underlying error."""
    with pytest.raises(ValueError, match=ALL_FAILED), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        failing_tuner(EVERY_POINT, error_score=0.0).fit(X, y)


def test_callable_multimetric_error_failing_clf():
    """Mirrors ``test_callable_multimetric_error_failing_clf``: a dict-returning callable
    on a net failing at point 2 warns (2 of 6 evaluations, error_score=0.1) and gives
    mean_test_acc [1, 1, 0.1]. The scorer calls predict so that the failure reaches it."""
    def custom_scorer(est, X_, y_):
        est.predict(X_)
        return {"acc": 1}

    with pytest.warns(RuntimeWarning) as record:
        tuner = failing_tuner({2}, n_outer=3, scoring=custom_scorer, refit=False,
                              error_score=0.1).fit(X, y)
    assert_failures_reported(failure_warnings(record, 0.1), n_failed=2, n_total=6)
    np.testing.assert_allclose(tuner.cv_results_["mean_test_acc"], [1, 1, 0.1])


def test_callable_multimetric_clf_all_fits_fail():
    """Mirrors ``test_callable_multimetric_clf_all_fits_fail``: a dict-returning callable
    on a net failing everywhere raises, with error_score=0.1, naming the error."""
    def custom_scorer(est, X_, y_):
        est.predict(X_)
        return {"acc": 1}

    with pytest.raises(ValueError, match=ALL_FAILED), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        failing_tuner(EVERY_POINT, scoring=custom_scorer, refit=False,
                      error_score=0.1).fit(X, y)


class FailsOnFirstCall:
    """A dict-returning callable whose first call (whichever it is) raises."""

    def __init__(self):
        self.calls = 0

    def __call__(self, est, X_, y_):
        self.calls += 1
        if self.calls == 1:
            raise ValueError("first call fails")
        return {"acc": accuracy_score(y_, est.predict(X_)), "one": 1.0}


def test_callable_dict_scoring_is_not_silently_replaced_by_error_score():
    """No test of this name exists in scikit-learn 1.9; the contract it names, as
    GridSearchCV keeps it (``_insert_error_scores``): a callable returning a dict is
    multi-metric even when its first call fails; the failed call scores error_score for
    each of its metrics, and every later call gives its real values (not error_score
    because the result is a dict)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tuner = make_tuner(scoring=FailsOnFirstCall(), refit="acc",
                           error_score=0.0).fit(X, y)
    assert tuner.multimetric_
    res = tuner.cv_results_
    assert "mean_test_acc" in res and "mean_test_one" in res
    assert "mean_test_score" not in res
    ones = np.stack([res[f"split{s}_test_one"] for s in range(tuner.n_splits_)])
    assert np.isin(ones, [0.0, 1.0]).all()
    assert (ones == 1.0).sum() >= ones.size - 1  # at most the first evaluation failed
    assert tuner.best_score_ == res["mean_test_acc"][tuner.best_index_]


@pytest.mark.parametrize("return_train_score", [False, True])
def test_searchcv_raise_warning_with_non_finite_score(return_train_score):
    """Mirrors ``test_searchcv_raise_warning_with_non_finite_score``: a scorer returning
    NaN on every 5th call; one UserWarning per kind of score (test, train) says that some
    scores are non-finite, and nothing else warns; non-finite points rank last, equally,
    and finite ones above them."""
    class FailingScorer:
        def __init__(self):
            self.n_counts = 0

        def __call__(self, estimator, X_, y_):
            self.n_counts += 1
            return np.nan if self.n_counts % 5 == 0 else 1

    tuner = make_tuner(scoring=FailingScorer(), n_outer=3,
                       return_train_score=return_train_score)
    with pytest.warns(UserWarning) as warn_msg:
        tuner.fit(X, y)
    set_with_warning = ["test", "train"] if return_train_score else ["test"]
    assert len(warn_msg) == len(set_with_warning), [str(w.message) for w in warn_msg]
    for msg, dataset in zip(warn_msg, set_with_warning):
        assert f"One or more of the {dataset} scores are non-finite" in str(msg.message)
    ranks = tuner.cv_results_["rank_test_score"]
    non_finite = np.isnan(tuner.cv_results_["mean_test_score"])
    assert non_finite.any() and not non_finite.all()
    np.testing.assert_array_equal(ranks[non_finite], ranks.max())
    assert np.all(ranks[~non_finite] < ranks.max())


# -------------------------------------------------------------------- cv
def test_random_search_bad_cv():
    """Mirrors ``test_random_search_bad_cv``: get_n_splits says 1, split yields 3."""
    class BrokenKFold(KFold):
        def get_n_splits(self, *args, **kw):
            return 1

    with pytest.raises(ValueError, match="cv.split and cv.get_n_splits return "
                                         "inconsistent results. Expected \\d+ "
                                         "splits, got \\d+"):
        make_tuner(cv=BrokenKFold(n_splits=3), n_jobs=2).fit(X, y)


# -------------------------------------------------------------------- tags, verbosity
@pytest.mark.parametrize("pairwise", [True, False])
def test_search_cv_pairwise_property_delegated_to_base_estimator(pairwise):
    """Mirrors ``test_search_cv_pairwise_property_delegated_to_base_estimator``: the
    search's pairwise tag is the net's."""
    class PairwiseNet(NeuralNetClassifier):
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.input_tags.pairwise = pairwise
            return tags

    tuner = make_tuner(tiny_net(PairwiseNet))
    assert pairwise == tuner.__sklearn_tags__().input_tags.pairwise, \
        "the search's pairwise tag must match the estimator's"


@pytest.mark.parametrize("return_train_score", [False, True])
def test_search_cv_verbose_3(capsys, return_train_score):
    """Mirrors ``test_search_cv_verbose_3``: verbose > 2 prints each evaluation's score
    on stdout, one line per point and fold (``score=...``, or ``score=(train=...,
    test=...)`` with train scores): 2 points x 2 folds here."""
    make_tuner(scoring="accuracy", verbose=3, n_outer=2, cv=2,
               return_train_score=return_train_score).fit(X, y)
    captured = capsys.readouterr().out
    if return_train_score:
        match = re.findall(r"score=\(train=[\d\.]+, test=[\d.]+\)", captured)
    else:
        match = re.findall(r"score=[\d\.]+", captured)
    assert len(match) == 4, captured


# -------------------------------------------------------------------- metadata routing
def test_multi_metric_search_forwards_metadata():
    """Mirrors ``test_multi_metric_search_forwards_metadata``: with metadata routing on,
    a scorer's requested metadata reach it, split to the rows it scores."""
    from sklearn.tests.metadata_routing_common import (
        ConsumingScorer,
        _Registry,
        check_recorded_metadata,
    )

    rng = np.random.RandomState(0)
    score_weights, score_metadata = rng.rand(len(X)), rng.rand(len(X))
    with config_context(enable_metadata_routing=True):
        registry = _Registry()
        scorer = ConsumingScorer(registry=registry).set_score_request(
            sample_weight="score_weights", metadata="score_metadata")
        scoring = dict(my_scorer=scorer, accuracy="accuracy")
        make_tuner(refit="accuracy", cv=2, scoring=scoring).fit(
            X, y, score_weights=score_weights, score_metadata=score_metadata)
        assert len(registry)
        for _scorer in registry:
            check_recorded_metadata(obj=_scorer, method="consuming_metric", parent="fit",
                                    split_params=("sample_weight", "metadata"),
                                    sample_weight=score_weights, metadata=score_metadata)


def test_score_rejects_params_with_no_routing_enabled():
    """Mirrors ``test_score_rejects_params_with_no_routing_enabled``: score(**params)
    without metadata routing is refused with scikit-learn's error."""
    tuner = make_tuner(cv=2).fit(X, y)
    with pytest.raises(ValueError, match="is only supported if"):
        tuner.score(X, y, metadata=1)


# -------------------------------------------------------------------- best point
def _summary(value):
    """cv_results_' scalar summary of a per-weight value (the mean over all weights)."""
    if isinstance(value, dict):
        return float(np.concatenate([np.ravel(v) for v in value.values()]).mean())
    return float(np.mean(value))


def _assert_best_consistent(tuner, key):
    res = tuner.cv_results_
    best = tuner.best_index_
    assert best == int(np.argmin(res[f"rank_test_{key}"]))
    assert res[f"rank_test_{key}"][best] == 1
    assert tuner.best_score_ == res[f"mean_test_{key}"][best]
    assert tuner.best_score_ == np.nanmax(res[f"mean_test_{key}"])
    assert _summary(tuner.best_params_["l1"]) == pytest.approx(res["params"][best]["l1"],
                                                                rel=1e-5)
    assert res["param_l1"][best] == res["params"][best]["l1"]
    history = tuner.history_
    row = history[(history["iteration"] == res["iteration"][best]) & ~history["diverged"]]
    assert len(row) == 1
    assert row[f"mean_test_{key}"].item() == pytest.approx(tuner.best_score_)
    assert row["param_l1"].item() == pytest.approx(res["params"][best]["l1"])


def _keep_only_the_best_snapshot(monkeypatch):
    """Lower the threshold above which only the running best point's full values are
    kept to 0 (wherever the constructor regrouping leaves it)."""
    import importlib

    patched = False
    if hasattr(SGLDHyperTuner, "_SNAPSHOT_ALL_MAX_NUMEL"):
        monkeypatch.setattr(SGLDHyperTuner, "_SNAPSHOT_ALL_MAX_NUMEL", 0)
        patched = True
    try:
        lane = importlib.import_module("sgld_tuner.search.lane")
    except ImportError:
        lane = None
    if lane is not None and hasattr(lane, "SNAPSHOT_ALL_MAX_NUMEL"):
        monkeypatch.setattr(lane, "SNAPSHOT_ALL_MAX_NUMEL", 0)
        patched = True
    assert patched, "the snapshot threshold moved: update _keep_only_the_best_snapshot"


@pytest.mark.parametrize("bounded_snapshots", [False, True])
def test_best_index_consistency(bounded_snapshots, monkeypatch):
    """No test of this name exists in scikit-learn 1.9; the contract it names, as
    GridSearchCV keeps it (``_select_best_index``, ``best_params_ =
    params[best_index_]``): best_index_ is the first point of rank 1 of the refit metric,
    best_score_ its mean test score (the highest, NaN points never chosen), best_params_
    its values (their summary is its ``params`` row), and ``history_``'s row of its
    iteration agrees. For a single metric, for a refit metric that is not the first, with
    a failed (NaN) point, after a warm-start resume, and (``bounded_snapshots``) when only
    the running best point's full values are kept (the large-net path; the threshold is
    lowered to reach it with the tiny net).
    """
    if bounded_snapshots:
        _keep_only_the_best_snapshot(monkeypatch)
    _assert_best_consistent(make_tuner(n_outer=3).fit(X, y), "score")
    multi = make_tuner(n_outer=3, scoring=["accuracy", "f1_macro"], refit="f1_macro")
    _assert_best_consistent(multi.fit(X, y), "f1_macro")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # (not the first point: scoring that fails on every fold there stops the search,
        # test_faults.py)
        failed = failing_tuner({1}, n_outer=3, scoring="accuracy").fit(X, y)
    assert np.isnan(failed.cv_results_["mean_test_score"][1]) and failed.best_index_ != 1
    _assert_best_consistent(failed, "score")
    resumed = make_tuner(n_outer=2, warm_start=True).fit(X, y)
    resumed.set_params(n_outer=3).fit(X, y)
    assert len(resumed.cv_results_["params"]) == 3
    _assert_best_consistent(resumed, "score")


# -------------------------------------------------------------------- torch's global RNG
class TinyDropout(Tiny):
    """Tiny with dropout on its hidden layer: its training draws from torch's RNG."""

    def __init__(self, n_in=8, n_out=3, p=0.5):
        super().__init__(n_in, n_out)
        self.drop = torch.nn.Dropout(p)

    def forward(self, X):
        return self.out(self.drop(torch.tanh(self.hidden(X.reshape(len(X), -1)))))


def test_fit_leaves_torch_global_rng_alone_and_random_state_fixes_results():
    """Not a scikit-learn test: ``fit`` (search and refit) leaves the caller's global
    torch RNG exactly as it found it, and ``random_state`` alone fixes every result, even
    with dropout drawing during training: two different global seeds before ``fit``, the
    same random_state, the same cv_results_, best_params_, history_ and predictions."""
    def run(global_seed):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state().clone()
        net = NeuralNetClassifier(TinyDropout, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                                  max_epochs=2, batch_size=32, train_split=None, verbose=0)
        tuner = make_tuner(net, random_state=0, n_outer=2).fit(X, y)
        assert torch.equal(torch.get_rng_state(), before), \
            f"fit moved torch's global RNG (global seed {global_seed})"
        return tuner

    a, b = run(1), run(2)
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(a.cv_results_[key], b.cv_results_[key], err_msg=key)
    np.testing.assert_array_equal(a.history_["outer_loss"], b.history_["outer_loss"])
    for name, value in a.best_params_["l1"].items():
        np.testing.assert_array_equal(value, b.best_params_["l1"][name], err_msg=name)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
