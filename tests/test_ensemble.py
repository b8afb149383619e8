"""Posterior ensembles from SGLD at the learned hyperparameters, and their calibration."""
import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.datasets import load_digits

from sgld_tuner import SGLDHyperTuner
from sgld_tuner import SamplerSettings, OuterSettings
from sgld_tuner.calibration import calibration_report, expected_calibration_error
from sgld_tuner.ensemble import PosteriorEnsemble, collect_posterior_samples
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.learned_net import make_learned_net

HP = {"l1": PerWeightL1(init=1e-3)}
VALUES = {"l1": 1e-3}


from test_tuner import TinyMLP  # noqa: E402  (the shared tiny test module)


def tiny_net(**kwargs):
    params = dict(module__n_in=64, module__n_out=4, criterion=torch.nn.CrossEntropyLoss,
                  lr=0.1, max_epochs=3, batch_size=32, train_split=None, verbose=0)
    params.update(kwargs)
    return NeuralNetClassifier(TinyMLP, **params)


@pytest.fixture(scope="module")
def digits4():
    X, y = load_digits(n_class=4, return_X_y=True)
    # 32 rows of each class, 128 in all (a power of two): the zero-gradient test relies on it
    rows = np.concatenate([np.flatnonzero(y == c)[:32] for c in range(4)])
    return (X[rows] / 16.0).astype(np.float32), y[rows].astype(np.int64)


@pytest.fixture(scope="module")
def fitted_net(digits4):
    torch.manual_seed(0)
    return make_learned_net(tiny_net(), HP, VALUES).fit(*digits4)


def chain(net, X, y, **kwargs):
    params = dict(n_samples=4, burn_in=3, thin=2, temperature=1e-2, noise_scale=1.0,
                  random_state=0)
    params.update(kwargs)
    return collect_posterior_samples(net, HP, VALUES, X, y, **params)


def same_samples(a, b):
    return len(a) == len(b) and all(
        sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        for sa, sb in zip(a, b))


# ---------------------------------------------------------------------------- ECE

def test_ece_matches_hand_computation():
    proba = np.array([[0.90, 0.05, 0.05],   # conf .90, correct
                      [0.10, 0.85, 0.05],   # conf .85, wrong
                      [0.50, 0.30, 0.20],   # conf .50, correct
                      [0.30, 0.45, 0.25]])  # conf .45, wrong
    y = np.array([0, 0, 0, 2])
    # 5 bins of width .2: (.8, 1] holds rows 0-1 (acc .5, conf .875), (.4, .6] rows 2-3
    # (acc .5, conf .475): ECE = .5 * .375 + .5 * .025 = .2
    assert expected_calibration_error(proba, y, n_bins=5) == pytest.approx(0.2)
    # one bin: |accuracy - mean confidence| = |.5 - .675|
    assert expected_calibration_error(proba, y, n_bins=1) == pytest.approx(0.175)
    # labels through classes=
    labels = np.array(["a", "b", "c"])
    assert expected_calibration_error(proba, labels[y], n_bins=5, classes=labels) \
        == pytest.approx(0.2)


def test_ece_bins_are_right_closed_and_binary_1d_works():
    # confidence .6 sits on an edge of 5 bins: it belongs to (.4, .6], apart from .7
    proba = np.array([[0.6, 0.4], [0.3, 0.7]])
    y = np.array([1, 1])  # first wrong, second right
    assert expected_calibration_error(proba, y, n_bins=5) == pytest.approx((0.6 + 0.3) / 2)
    # a 1-d array is P(class 1)
    assert expected_calibration_error(np.array([0.4, 0.7]), y, n_bins=5) \
        == pytest.approx((0.6 + 0.3) / 2)
    # calibrated: ten rows at confidence .8, eight of them right
    proba = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(proba, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match="column indices"):
        expected_calibration_error([[0.5, 0.5]], ["a"])
    with pytest.raises(ValueError, match="not among"):
        expected_calibration_error([[0.5, 0.5]], ["z"], classes=["a", "b"])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([[0.5, 0.5]], [0], n_bins=0)


# ---------------------------------------------------------------------------- ensemble

def test_identical_samples_give_the_single_net(fitted_net, digits4):
    X, y = digits4
    state = {k: v.detach().cpu().clone() for k, v in fitted_net.module_.state_dict().items()}
    ens = PosteriorEnsemble(copy.deepcopy(fitted_net), [state] * 3)
    np.testing.assert_allclose(ens.predict_proba(X), fitted_net.predict_proba(X), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_array_equal(ens.predict(X), fitted_net.predict(X))
    assert ens.score(X, y) == pytest.approx(fitted_net.score(X, y))
    assert ens.n_members_ == 3 and is_classifier(ens)
    np.testing.assert_array_equal(ens.classes_, np.arange(4))


def test_predict_proba_is_the_mean_of_the_members(fitted_net, digits4):
    X, y = digits4
    ens = chain(fitted_net, X, y)
    proba = ens.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # independent of the ensemble's own loop: load each sample into a fresh copy
    members = []
    for state in ens.samples:
        net = copy.deepcopy(fitted_net)
        net.module_.load_state_dict(state)
        members.append(net.predict_proba(X))
    np.testing.assert_allclose(proba, np.mean(members, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ens.predict_members(X), np.stack(members), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ens.predict(X), ens.classes_[proba.argmax(axis=1)])
    assert ens.score(X, y) == pytest.approx(np.mean(ens.predict(X) == y))


def test_pickle_round_trip_and_clone(fitted_net, digits4):
    X, y = digits4
    ens = chain(fitted_net, X, y)
    assert all(t.device.type == "cpu" for s in ens.samples for t in s.values())
    back = pickle.loads(pickle.dumps(ens))
    np.testing.assert_array_equal(back.predict_proba(X), ens.predict_proba(X))
    assert back.n_members_ == ens.n_members_ == 4
    np.testing.assert_array_equal(back.classes_, ens.classes_)
    # clone gives an unfitted net; the ensemble initialises it and loads the samples
    np.testing.assert_allclose(clone(ens).predict_proba(X), ens.predict_proba(X), rtol=1e-6)
    assert "n_members=4" in repr(ens)


def test_regressor_averages_outputs():
    rng = np.random.RandomState(0)
    X = rng.randn(60, 5).astype(np.float32)
    y = (X @ rng.randn(5, 1)).astype(np.float32)
    torch.manual_seed(0)
    net = NeuralNetRegressor(torch.nn.Linear, module__in_features=5, module__out_features=1,
                             lr=0.05, max_epochs=5, batch_size=20, train_split=None,
                             verbose=0).fit(X, y)
    ens = collect_posterior_samples(net, None, None, X, y, n_samples=3, burn_in=2, thin=2,
                                    temperature=1e-2, random_state=0)
    assert is_regressor(ens) and not hasattr(ens, "predict_proba")
    mean, std = ens.predict(X, return_std=True)
    np.testing.assert_allclose(mean, ens.predict_members(X).mean(axis=0), rtol=1e-6)
    assert std.shape == mean.shape and np.all(std > 0)
    assert np.isfinite(ens.score(X, y.ravel()))


# ---------------------------------------------------------------------------- the chain

def test_user_net_is_left_alone(fitted_net, digits4):
    X, y = digits4
    before = {k: v.clone() for k, v in fitted_net.module_.state_dict().items()}
    ens = chain(fitted_net, X, y)
    after = fitted_net.module_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert ens.net is not fitted_net


def test_reproducible_with_random_state(fitted_net, digits4):
    X, y = digits4
    a, b = chain(fitted_net, X, y), chain(fitted_net, X, y)
    assert same_samples(a.samples, b.samples)
    c = chain(fitted_net, X, y, random_state=1)
    assert not same_samples(a.samples, c.samples)
    # the caller's global torch stream is not consumed
    torch.manual_seed(5)
    chain(fitted_net, X, y)
    after_chain = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after_chain, torch.rand(1))


def test_samples_spread_with_temperature_and_collapse_without_noise(digits4):
    X, y = digits4
    # All weights zero, balanced classes, full batch: the cross-entropy gradient is exactly
    # zero (uniform softmax; hidden units tanh(0) = 0; with 128 rows every per-row term is
    # a power-of-two fraction, so float32 sums it to 0 without rounding) and so is the L1
    # subgradient sign(0): only the Langevin noise can move the chain.
    net = tiny_net(classes=[0, 1, 2, 3]).initialize()
    with torch.no_grad():
        for p in net.module_.parameters():
            p.zero_()
    common = dict(batch_size=-1, n_samples=3, burn_in=1, thin=2)
    cold = chain(net, X, y, temperature=0.0, noise_scale=0.0, **common)
    first = cold.samples[0]
    assert all(torch.equal(s[k], first[k]) for s in cold.samples for k in first)
    assert all(torch.count_nonzero(v) == 0 for v in first.values())

    hot = chain(net, X, y, temperature=1e-2, **common)
    pairs = [(hot.samples[i], hot.samples[j]) for i in range(3) for j in range(i + 1, 3)]
    assert all(not torch.equal(a["out.weight"], b["out.weight"]) for a, b in pairs)

    # and on a trained net, noise on vs off changes the draws (minibatches are the same)
    warm = tiny_net(classes=[0, 1, 2, 3], max_epochs=2)
    torch.manual_seed(0)
    warm.fit(X, y)
    quiet = chain(warm, X, y, noise_scale=0.0)
    noisy = chain(warm, X, y)
    assert not same_samples(quiet.samples, noisy.samples)


def test_chain_settings_are_checked(fitted_net, digits4):
    X, y = digits4
    with pytest.raises(ValueError, match="thin=0"):
        chain(fitted_net, X, y, thin=0)
    with pytest.raises(ValueError, match="temperature"):
        chain(fitted_net, X, y, temperature=-1.0)
    with pytest.raises(ValueError, match="initialised"):
        chain(tiny_net(), X, y)
    with pytest.raises(ValueError, match="lacks values"):
        collect_posterior_samples(fitted_net, HP, {}, X, y, random_state=0)


def test_divergence_is_reported(fitted_net, digits4):
    X, y = digits4
    X = X.copy()
    X[0, 0] = np.nan  # full batch: the loss, the gradients and then theta turn NaN
    with pytest.raises(FloatingPointError, match="diverged"):
        chain(fitted_net, X, y, batch_size=-1)


# ---------------------------------------------------------------------------- report

def test_calibration_report_on_models_and_on_a_tuner(fitted_net, digits4):
    X, y = digits4
    ens = chain(fitted_net, X, y)
    table = calibration_report({"net": fitted_net, "ensemble": ens}, X, y)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["model", "accuracy", "nll", "ece"]
    assert list(table["model"]) == ["net", "ensemble"]
    proba = ens.predict_proba(X)
    row = table.set_index("model").loc["ensemble"]
    assert row["ece"] == pytest.approx(expected_calibration_error(proba, y))
    assert row["nll"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(y)), y])), rel=1e-4)
    assert row["accuracy"] == pytest.approx(ens.score(X, y))

    # a tuner: its nets train on encoded labels but (since best_estimator_ keeps the user's
    # classes_) predict the user's labels, here 10..13; the report maps them to columns
    labels = y + 10
    tuner = SGLDHyperTuner(tiny_net(max_epochs=2), HP, n_outer=2, cv=2, random_state=0,
                           sampler=SamplerSettings(burn_in=1, n_samples=1),
                           outer=OuterSettings(eval_every=1)).fit(X, labels)
    tuner.ensemble_ = collect_posterior_samples(
        tuner.best_estimator_, tuner.hyperparams, tuner.best_params_, X,
        np.searchsorted(tuner.classes_, labels), n_samples=2, burn_in=1, thin=1,
        random_state=0)
    table = calibration_report(tuner, X, labels)
    assert list(table["model"]) == ["refit net", "posterior ensemble"]
    assert table["accuracy"].iloc[0] == pytest.approx(
        np.mean(tuner.best_estimator_.predict(X) == labels))
    assert table["accuracy"].iloc[1] == pytest.approx(tuner.ensemble_.score(X, labels))
    assert table[["accuracy", "nll", "ece"]].notna().all().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chain_runs_on_the_nets_device(digits4):
    X, y = digits4
    torch.manual_seed(0)
    net = make_learned_net(tiny_net(device="cuda"), HP, VALUES).fit(X, y)
    ens = chain(net, X, y)
    # the chain ran on the GPU; the kept samples are CPU copies, loaded back for predicting
    assert all(t.device.type == "cpu" for s in ens.samples for t in s.values())
    assert next(ens.net.module_.parameters()).device.type == "cuda"
    np.testing.assert_allclose(ens.predict_proba(X).sum(axis=1), 1.0, rtol=1e-5)
    assert same_samples(ens.samples, chain(net, X, y).samples)


def test_tuner_refit_ensemble_hook(digits4):
    X, y = digits4
    labels = y + 10  # original labels differ from the encoded ones the nets see
    tuner = SGLDHyperTuner(tiny_net(max_epochs=2), HP, n_outer=2, cv=2, random_state=0,
                           refit="ensemble",
                           sampler=SamplerSettings(burn_in=1, n_samples=1),
                           outer=OuterSettings(eval_every=1)).fit(X, labels)
    if getattr(tuner, "ensemble_", None) is None:
        pytest.skip("SGLDHyperTuner has no refit='ensemble' hook yet")
    assert isinstance(tuner.ensemble_, PosteriorEnsemble) and tuner.ensemble_.n_members_ >= 1
    # predictions come from the ensemble, best_estimator_ stays the refit net
    np.testing.assert_allclose(tuner.predict_proba(X), tuner.ensemble_.predict_proba(X),
                               rtol=1e-6)
    assert set(np.unique(tuner.predict(X))) <= set(np.unique(labels))
    assert tuner.score(X, labels) == pytest.approx(
        np.mean(tuner.predict(X) == labels))
    assert not isinstance(tuner.best_estimator_, PosteriorEnsemble)
    again = SGLDHyperTuner(tiny_net(max_epochs=2), HP, n_outer=2, cv=2, random_state=0,
                           refit="ensemble",
                           sampler=SamplerSettings(burn_in=1, n_samples=1),
                           outer=OuterSettings(eval_every=1)).fit(X, labels)
    assert same_samples(tuner.ensemble_.samples, again.ensemble_.samples)
    # refitting with refit=True drops the ensemble of the earlier fit
    tuner.set_params(refit=True).fit(X, labels)
    assert getattr(tuner, "ensemble_", None) is None
    assert list(calibration_report(tuner, X, labels)["model"]) == ["refit net"]


def test_calibration_report_needs_a_refit_tuner(digits4):
    X, y = digits4
    tuner = SGLDHyperTuner(tiny_net(max_epochs=1), HP, n_outer=1, cv=2, random_state=0,
                           refit=False, sampler=SamplerSettings(burn_in=1, n_samples=1),
                           outer=OuterSettings(eval_every=1)).fit(X, y)
    with pytest.raises(ValueError, match="no refit net"):
        calibration_report(tuner, X, y)


def test_calibration_report_names_a_regressor(digits4):
    """Not "labels ... are not among the classes": a regressor has no class probabilities."""
    X, y = digits4
    torch.manual_seed(0)
    regressor = NeuralNetRegressor(TinyMLP, module__n_in=64, module__n_out=1, max_epochs=1,
                                   train_split=None, verbose=0).fit(X, y[:, None].astype(np.float32))
    with pytest.raises(ValueError, match=r"needs classifiers.*\['NeuralNetRegressor'\] are "
                                         "regressors"):
        calibration_report([regressor], X, y)


def test_a_module_class_defined_in_a_function_gets_its_posterior(fitted_net, digits4):
    """skorch copies a net by pickling it, which a local class cannot take: the chain then
    runs on a fresh clone given the net's module state, and gives the samples the
    picklable class gives (same weights, same seed)."""
    X, y = digits4

    class LocalMLP(TinyMLP):
        pass

    torch.manual_seed(0)
    local = make_learned_net(tiny_net().set_params(module=LocalMLP), HP, VALUES).initialize()
    local.module_.load_state_dict(fitted_net.module_.state_dict())
    with pytest.raises((AttributeError, pickle.PicklingError)):
        copy.deepcopy(local)
    np.testing.assert_allclose(chain(local, X, y).predict_proba(X),
                               chain(fitted_net, X, y).predict_proba(X), rtol=1e-5, atol=1e-6)
