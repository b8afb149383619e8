"""What a notebook user and a fault study hit on the newer features: nothing silent,
nothing lost (each test names the fault it guards against)."""
import signal
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import skorch
import torch
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetBinaryClassifier, NeuralNetRegressor

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.hyperparams import PerWeightL1, TaylorLoss
from sgld_tuner.search.diagnostics import DivergenceWarning
from test_tuner import TinyMLP, digits4, tiny_classifier, tiny_tuner  # noqa: F401 - fixture


# -- 1. saves ---------------------------------------------------------------------------------
def test_a_save_gets_the_mode_a_plain_open_gives(digits4, tmp_path):
    """Readable as the umask allows, as joblib.dump or torch.save would leave it (the
    temporary file's 0600 used to be kept by the rename); a file saved over keeps its
    mode; no temporary file is left."""
    import os
    import stat

    tuner = tiny_tuner(n_outer=1, refit=False).fit(*digits4)
    tuner.save(tmp_path / "tuner.sgld")
    with open(tmp_path / "plain.bin", "wb"):
        pass
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)  # noqa: E731
    assert mode("tuner.sgld") == mode("plain.bin")
    os.chmod(tmp_path / "tuner.sgld", 0o600)  # saved over, a file keeps its mode
    tuner.save(tmp_path / "tuner.sgld")
    assert mode("tuner.sgld") == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_interrupted_save_leaves_the_previous_save_whole(digits4, tmp_path, monkeypatch):
    """save() used to truncate the file and then stream the pickle: a Ctrl-C mid-write
    left a stub that load() failed on with an unrelated parse error."""
    path = tmp_path / "tuner.sgld"
    tuner = tiny_tuner(refit=False).fit(*digits4)
    tuner.save(path)
    before = path.read_bytes()

    def interrupted(obj, fh, *args, **kwargs):
        fh.write(b"\x80\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(joblib, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuner.save(path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "tuner.sgld"]  # no temp left
    monkeypatch.undo()
    SGLDHyperTuner.load(path, trusted=True)


def test_a_truncated_save_is_named_as_such(digits4, tmp_path):
    path = tmp_path / "tuner.sgld"
    tiny_tuner(refit=False).fit(*digits4).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SGLDHyperTuner.load(path, trusted=True)


# -- 2. non-finite results --------------------------------------------------------------------
def test_a_refit_that_diverges_is_retried_then_reported_never_silent(digits4):
    """The chains at a small inner step, the refit at the net's lr of 1000 on an MSE: its
    weights end NaN at every lr tried (1000 down to 62.5). It used to be returned in
    silence, predicting NaN."""
    X, y = digits4
    y = y.astype(np.float32)

    def tuner(**kwargs):
        net = NeuralNetRegressor(TinyMLP, module__n_in=64, module__n_out=1, lr=1000.0,
                                 max_epochs=5, batch_size=32, train_split=None, verbose=0)
        return tiny_tuner(net, sampler=dict(inner_lr=0.01), **kwargs)

    with pytest.warns(DivergenceWarning, match="non-finite at lr=1000;.*lr=62.5;.*not finite"):
        fitted = tuner().fit(X, y)
    assert "best_estimator_ is not finite" in fitted.stop_reason_
    with pytest.warns(RuntimeWarning, match="weights are not finite"):
        fitted.predict(X)
    with pytest.raises(FloatingPointError, match="not finite"):
        tuner(error_score="raise").fit(X, y)


class _Linear(torch.nn.Module):
    def __init__(self, n_in=3):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, 1)

    def forward(self, X):
        return self.lin(X)


def _least_squares_on_the_edge():
    """Rows, targets and the lr 1.1 x 2 / lambda_max of full-batch descent on their mean
    squared error (the Hessian's top eigenvalue, in float64)."""
    rng = np.random.RandomState(0)
    X = (rng.standard_normal((60, 3)) * [3.0, 1.0, 0.5]).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(60)).astype(np.float32)
    design = np.hstack([X, np.ones((60, 1))]).astype(np.float64)
    top = np.linalg.eigvalsh(2.0 / 60 * design.T @ design)[-1]  # Hessian of the mean MSE
    return X, y, 1.1 * 2.0 / top


def _edge_net(lr, callbacks=None):
    return NeuralNetRegressor(_Linear, lr=lr, max_epochs=8, batch_size=60, train_split=None,
                              verbose=0, callbacks=callbacks)


def test_a_refit_that_blows_up_in_its_last_epochs_is_refit_at_half_the_lr():
    """Full-batch gradient descent on a least-squares loss grows along the Hessian's top
    eigenvector iff lr > 2 / lambda_max: at 1.1 x that bound the refit's loss dips, then
    climbs for good (finite: 8 epochs), at half of it (0.55 x) it converges. The chains
    run at a small inner step. The refit at half the lr is kept, and said so. It used to
    be returned as it ended (an 8k-row search whose refit blew up in its last epoch
    tested 0.58 where refits at the same values reach 0.84)."""
    X, y, lr = _least_squares_on_the_edge()
    with pytest.warns(DivergenceWarning, match="ended its training above its best epoch's"):
        tuner = tiny_tuner(_edge_net(lr), sampler=dict(inner_lr=0.01)).fit(X, y)
    refit = tuner.best_estimator_
    assert refit.lr == pytest.approx(lr / 2)
    losses = refit.history[:, "train_loss"]
    # below 2 / lambda_max every step of gradient descent lowers a quadratic loss
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert "above its best epoch's loss" in tuner.stop_reason_


class _SigintInRetry(skorch.callbacks.Callback):
    """A real SIGINT (Ctrl-C) at the end of epoch 3 of a net trained below ``lr``."""

    def __init__(self, lr):
        self.lr = lr

    def on_epoch_end(self, net, **kwargs):
        if net.lr < self.lr and len(net.history) == 3:
            signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_in_the_retry_of_a_blown_up_refit_keeps_the_first_and_says_so():
    X, y, lr = _least_squares_on_the_edge()
    net = _edge_net(lr, callbacks=[_SigintInRetry(lr)])
    with pytest.warns(DivergenceWarning, match=r"retry at lr=.* was interrupted"):
        tuner = tiny_tuner(net, sampler=dict(inner_lr=0.01)).fit(X, y)
    assert tuner.best_estimator_.lr == pytest.approx(lr)
    assert len(tuner.best_estimator_.history) == 8


def test_a_finite_value_beyond_float32_is_refused_like_infinity(digits4):
    """1e39 is finite in float64 but infinite once cast to the net's float32."""
    X, y = digits4
    X = X.astype(np.float64)
    X[3, 5] = 1e39
    with pytest.raises(ValueError, match="infinite in the net's dtype float32"):
        tiny_tuner().fit(X, y)
    fitted = tiny_tuner().fit(digits4[0], y)
    with pytest.raises(ValueError, match="infinite in the net's dtype float32"):
        fitted.predict(X)


# -- 3. warm_start ----------------------------------------------------------------------------
@pytest.mark.parametrize("change, named", [
    ({"scoring": "neg_log_loss"}, "scoring"),
    ({"estimator__lr": 0.05}, "net training settings"),
    ({"sampler__temperature": 1e-2}, "sampler"),
])
def test_warm_start_refuses_a_change_that_changes_what_the_search_means(digits4, change,
                                                                        named):
    tuner = tiny_tuner(refit=False, warm_start=True, n_outer=1).fit(*digits4)
    tuner.set_params(n_outer=2, **change)
    with pytest.raises(ValueError, match=f"{named} changed since it started"):
        tuner.fit(*digits4)


def test_warm_start_refuses_new_groups(digits4):
    X, y = digits4
    groups = np.arange(len(y)) % 4
    tuner = tiny_tuner(refit=False, warm_start=True, n_outer=1, cv=GroupKFold(2))
    tuner.fit(X, y, groups=groups)
    with pytest.raises(ValueError, match="groups changed"):
        tuner.set_params(n_outer=2).fit(X, y, groups=(groups + 1) % 4)


# -- 4. fit parameters ------------------------------------------------------------------------
def test_fit_parameters_the_refit_cannot_take_are_refused_before_the_search(digits4):
    """A bare net hands fit parameters to its module's forward: it used to fail only in
    the refit, after the whole search, leaving an untrained best_estimator_."""
    calls = []
    tuner = tiny_tuner(callbacks=[lambda record: calls.append(record) and False])
    with pytest.raises(TypeError, match="sample_weight.*module.forward.*before the search"):
        tuner.fit(*digits4, sample_weight=np.ones(len(digits4[1])))
    assert calls == [] and not hasattr(tuner, "best_estimator_")


# -- 5. scoring that always fails -------------------------------------------------------------
def test_scoring_that_fails_on_every_fold_stops_at_the_first_scored_point(digits4):
    def broken(estimator, X, y):
        raise RuntimeError("no metric here")

    tuner = tiny_tuner(n_outer=20, scoring=broken, error_score=0.0)
    with pytest.raises(ValueError, match="every evaluation failed.*no metric here"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner.fit(*digits4)
    assert len(tuner.history_) == 1  # not 20 iterations for nothing


def test_a_pandas_output_pipeline_hands_the_net_an_array(digits4):
    """``set_output(transform="pandas")`` used to hand the scorers' net a DataFrame, whose
    columns skorch passes to forward as keyword arguments: every evaluation failed."""
    X, y = digits4
    pipe = make_pipeline(StandardScaler().set_output(transform="pandas"), tiny_classifier())
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    tuner = tiny_tuner(pipe).fit(frame, y)
    assert np.isfinite(tuner.cv_results_["mean_test_score"]).all()
    assert tuner.predict(frame).shape == (len(y),)


# -- 6. lazy modules --------------------------------------------------------------------------
class LazyRegressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.LazyLinear(8)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def test_a_lazy_module_regressor_is_refit(digits4):
    """A LazyLinear regressor used to crash in the refit ("Can't access the shape of an
    uninitialized parameter") after the whole search."""
    X, y = digits4
    net = NeuralNetRegressor(LazyRegressor, lr=0.05, max_epochs=2, batch_size=32,
                             train_split=None, verbose=0)
    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-3)}, n_outer=1, cv=2,
                           random_state=0)
    tuner.fit(X, y.astype(np.float32))
    assert np.isfinite(tuner.predict(X)).all()


# -- 9. valid input, clear errors -------------------------------------------------------------
def test_predict_takes_what_the_fitted_pipeline_takes(digits4):
    """A ColumnTransformer selects its columns by name: reordered and extra columns are
    fine for it (and for GridSearchCV); the tuner used to refuse them."""
    X, y = digits4
    columns = [f"px{i}" for i in range(64)]
    frame = pd.DataFrame(X, columns=columns)
    pipe = Pipeline([("cols", ColumnTransformer([("scale", StandardScaler(), columns)])),
                     ("net", tiny_classifier())])
    tuner = tiny_tuner(pipe).fit(frame, y)
    shuffled = frame[columns[::-1]].assign(extra=1.0)
    np.testing.assert_array_equal(tuner.predict(shuffled), tuner.predict(frame))


def test_cv_indices_out_of_range_are_named(digits4):
    X, y = digits4
    bad = [(np.arange(60), np.arange(60, 200))]
    with pytest.raises(ValueError, match="outside the 120 rows"):
        tiny_tuner(cv=bad).fit(X, y)


def test_rows_the_module_cannot_take_are_named(digits4):
    X, y = digits4
    with pytest.raises(ValueError, match="cannot take the rows it is given.*shape"):
        tiny_tuner().fit(X.reshape(len(X), 8, 8), y)


# -- 10. the smaller ones ---------------------------------------------------------------------
def test_a_second_loss_replacing_kind_says_the_first_never_moves(digits4):
    tuner = SGLDHyperTuner(tiny_classifier(), {"a": TaylorLoss(), "b": TaylorLoss()},
                           n_outer=1, cv=2, random_state=0, refit=False)
    with pytest.warns(UserWarning, match=r"\['a'\].*'b' after them replaces it"):
        tuner.fit(*digits4)


def test_nullable_integer_labels_keep_integer_classes(digits4):
    X, y = digits4
    tuner = tiny_tuner().fit(X, pd.Series(y, dtype="Int64"))
    assert tuner.classes_.dtype.kind == "i"
    assert tuner.predict(X).dtype.kind == "i"


class Logit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(64, 1)

    def forward(self, X):
        return self.out(X).squeeze(-1)


def test_boolean_labels_of_a_binary_net_are_predicted_as_booleans(digits4):
    X, y = digits4
    labels = y % 2 == 1
    net = NeuralNetBinaryClassifier(Logit, lr=0.1, max_epochs=2, batch_size=32,
                                    train_split=None, verbose=0)
    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-3)}, n_outer=1, cv=2,
                           random_state=0).fit(X, labels)
    assert tuner.classes_.tolist() == [False, True]
    assert tuner.predict(X).dtype == bool


def test_a_refit_that_diverges_once_is_refit_at_a_smaller_step(digits4):
    """At lr 10 the refit's weights blow up, at 5 (or below) not: the refit at the
    smaller step is kept, and the halving is reported, never silent."""
    X, y = digits4
    net = NeuralNetRegressor(TinyMLP, module__n_in=64, module__n_out=1, lr=10.0,
                             max_epochs=5, batch_size=32, train_split=None, verbose=0)
    with pytest.warns(DivergenceWarning, match="non-finite at lr=10"):
        tuner = tiny_tuner(net, sampler=dict(inner_lr=0.01)).fit(X, y.astype(np.float32))
    assert "not finite" not in tuner.stop_reason_
    assert tuner.best_estimator_.lr < 10 and np.isfinite(tuner.predict(X)).all()
    # the note names the lr kept, not only the one that failed
    assert f"best_estimator_ is the refit at lr={tuner.best_estimator_.lr:g}" \
        in tuner.stop_reason_
