"""NetProblem (skorch net -> functional losses) and the learned nets used for refit."""
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from skorch.utils import to_tensor

from sgld_tuner.core import _tree
from sgld_tuner.hyperparams import (AffineAugmentation, LossWeights, PerWeightL1, SampleWeights,
                                    TaylorLoss, WeightDecay)
from sgld_tuner.learned_net import (ROW_KEY, WRAP_KEY, LearnedNet, LearnedNetClassifier,
                                    LearnedNetRegressor, make_learned_net)
from sgld_tuner.search.chains import recompute_batch_norm, tracks_batch_norm
from sgld_tuner.skorch_adapter import NetProblem


class Classifier(torch.nn.Module):
    def __init__(self, n_in=16, n_out=3, softmax=True):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, 8)
        self.out = torch.nn.Linear(8, n_out)
        self.softmax = softmax

    def forward(self, x):
        z = self.out(torch.relu(self.hidden(x)))
        return torch.softmax(z, dim=-1) if self.softmax else z


def _data(n=60, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 16).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    return X, y


def _nets():
    """The three criterion paths: skorch's default NLLLoss on probabilities, CE on logits,
    MSE regression."""
    return {
        "nll_proba": NeuralNetClassifier(Classifier, max_epochs=2, verbose=0, lr=0.1,
                                         train_split=None),
        "ce_logits": NeuralNetClassifier(Classifier, module__softmax=False, max_epochs=2,
                                         criterion=torch.nn.CrossEntropyLoss, verbose=0, lr=0.1,
                                         train_split=None),
        "mse": NeuralNetRegressor(torch.nn.Linear, module__in_features=16, module__out_features=1,
                                  max_epochs=2, verbose=0, lr=0.05, train_split=None),
    }


def _targets(kind, y, X):
    return X[:, :1].sum(1).astype(np.float32) if kind == "mse" else y


def _problem(net, hps, X, y, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return NetProblem(net, hps, X[:40], y[:40], X[40:], y[40:], **kw)


@pytest.mark.parametrize("kind", ["nll_proba", "ce_logits", "mse"])
def test_theta0_losses_and_load_theta(kind):
    torch.manual_seed(0)
    net = _nets()[kind].initialize()
    X, y = _data()
    y = _targets(kind, y, X)
    problem = _problem(net, {"l1": PerWeightL1(init=1e-3)}, X, y, batch_size=8)

    theta = problem.theta0()
    params = dict(net.module_.named_parameters())
    assert list(theta) == list(params)
    for n, t in theta.items():
        assert not t.requires_grad and t.data_ptr() != params[n].data_ptr()
        torch.testing.assert_close(t, params[n].detach())

    # outer loss = the net's own criterion (incl. skorch's log of probabilities for NLLLoss)
    lam = problem.init_lam()
    with torch.no_grad():
        net.module_.eval()
        y_val = y[40:] if kind != "mse" else y[40:, None]
        expected = net.get_loss(net.infer(X[40:]), to_tensor(y_val, "cpu"))
    assert float(problem.outer_loss(lam, theta)) == pytest.approx(float(expected), rel=1e-6)

    # the inner loss is a minibatch estimate that depends on lam
    first = problem.inner_loss(lam, theta)
    assert first.shape == ()
    problem.generator.manual_seed(3)
    a = problem.inner_loss(lam, theta)
    problem.generator.manual_seed(3)
    lam_big = {"l1": {n: r + 5.0 for n, r in lam["l1"].items()}}
    b = problem.inner_loss(lam_big, theta)
    assert float(b) > float(a)

    # load_theta writes into the module; predictions follow
    moved = {n: t + 0.5 for n, t in theta.items()}
    returned = problem.load_theta(moved)
    assert returned is net
    torch.testing.assert_close(dict(net.module_.named_parameters())["out.weight" if kind != "mse"
                                                                     else "weight"].detach(),
                               moved["out.weight" if kind != "mse" else "weight"])
    pred = net.predict(X[:5])
    assert pred.shape[0] == 5


def test_minibatch_sizes():
    net = _nets()["ce_logits"].initialize()
    X, y = _data()
    full = _problem(net, {}, X, y, batch_size=-1)
    assert full.batch_size == 40 and full.minibatches.next(full.generator) is None
    assert _problem(net, {}, X, y, batch_size=1000).batch_size == 40
    assert _problem(net, {}, X, y).batch_size == 40          # net.batch_size = 128
    small = _problem(net, {}, X, y, batch_size=8)
    rows = small.minibatches.next(small.generator)
    assert rows.shape == (8,) and len(set(rows.tolist())) == 8
    assert small.training_batch()[0].shape[0] == 8


def test_mixed_vjp_only_for_separable_penalties():
    net = _nets()["ce_logits"].initialize()
    X, y = _data()
    assert _problem(net, {"l1": PerWeightL1(), "wd": WeightDecay()}, X, y).mixed_vjp() is not None
    assert _problem(net, {"l1": PerWeightL1(), "cw": LossWeights()}, X, y).mixed_vjp() is None
    assert _problem(net, {}, X, y).mixed_vjp() is None


def test_the_outer_loss_reads_lam_only_through_warps_and_outer_penalties():
    """What ``bilevel()`` declares (the chain skips outer losses that do not read lam):
    checked against autograd on the outer loss itself."""
    net = _nets()["ce_logits"].initialize()
    X, y = _data(n=80)
    X = np.hstack([X, X[:, :16] * 0 + 1.0, X[:, :16] * 0 - 1.0, X[:, :16]]).astype(np.float32)
    cases = [({"l1": PerWeightL1(), "cw": LossWeights()}, {}),
             ({"rot": AffineAugmentation(image_shape=(8, 8))}, {"augment_outer": True}),
             ({"rot": AffineAugmentation(image_shape=(8, 8), rho=0.0)}, {})]
    declared = []
    for hps, kw in cases:
        net = NeuralNetClassifier(Classifier, module__n_in=64, module__softmax=False,
                                  criterion=torch.nn.CrossEntropyLoss, max_epochs=1,
                                  verbose=0, train_split=None).initialize()
        problem = _problem(net, hps, X, y, **kw)
        leaves, spec = _tree.flatten(problem.init_lam())
        leaves = [t.requires_grad_(True) for t in leaves]
        outer = problem.outer_loss(_tree.unflatten(leaves, spec), problem.theta0())
        grads = torch.autograd.grad(outer, leaves, allow_unused=True) \
            if outer.requires_grad else []
        reads = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        declared.append(problem.bilevel().outer_depends_on_lam)
        assert declared[-1] == reads
    assert declared == [False, True, False]


def test_sample_weights_use_global_rows():
    net = _nets()["ce_logits"].initialize()
    X, y = _data()
    rows = np.arange(20, 60)   # the fold's training rows are rows 20..59 of the full set
    problem = NetProblem(net, {"w": SampleWeights()}, X[20:60], y[20:60], X[:20], y[:20],
                         train_rows=rows, batch_size=-1, generator=torch.Generator())
    lam = problem.init_lam()
    assert lam["w"].shape == (60,)
    theta = problem.theta0()
    g = torch.autograd.grad(problem.inner_loss({"w": lam["w"].requires_grad_(True)}, theta),
                            lam["w"])[0]
    assert torch.all(g[:20] == 0) and torch.all(g[20:] != 0)


HPS_ALL = {
    "l1": PerWeightL1(init=1e-3),
    "wd": WeightDecay(init=1e-3, granularity="global", params="*"),
    "cw": LossWeights(init=[1.0, 2.0, 3.0]),
    "aug": AffineAugmentation(init=0.1, image_shape=(4, 4), n_samples=2),
    "sw": SampleWeights(),
}


def _learned_values(net, hps, X, y):
    problem = _problem(net, hps, X, y, n_train_total=len(X))
    lam = problem.init_lam()
    return {k: b.to_public(lam[k]) for k, b in problem.bound.items()}


@pytest.mark.parametrize("kind", ["nll_proba", "ce_logits", "mse"])
def test_make_learned_net_fits_pickles_and_clones(kind):
    torch.manual_seed(0)
    X, y = _data()
    y = _targets(kind, y, X)
    user_net = _nets()[kind]
    hps = {k: v for k, v in HPS_ALL.items() if kind != "mse" or k != "cw"}
    values = _learned_values(clone(user_net).initialize(), hps, X, y)

    learned = make_learned_net(user_net, hps, values)
    expected_cls = LearnedNetRegressor if kind == "mse" else LearnedNetClassifier
    assert type(learned) is expected_cls
    assert not getattr(learned, "initialized_", False)
    assert learned.get_params()["max_epochs"] == 2
    y_fit = y[:, None] if kind == "mse" else y
    learned.fit(X, y_fit)
    assert np.isfinite(learned.history[-1, "train_loss"])
    pred = learned.predict(X)
    assert pred.shape[0] == len(X)

    restored = pickle.loads(pickle.dumps(learned))
    np.testing.assert_allclose(restored.predict(X), pred)
    restored.partial_fit(X, y_fit)    # training again after unpickling rebinds lazily

    refit = clone(learned)
    assert refit.hyperparams.keys() == hps.keys()
    _assert_values_equal(refit.learned_values, values)
    refit.fit(X, y_fit)
    assert refit.predict(X).shape == pred.shape
    # the user's net is untouched
    assert not getattr(user_net, "initialized_", False)


def _assert_values_equal(a, b):
    if isinstance(b, dict):
        assert set(a) == set(b)
        for k in b:
            _assert_values_equal(a[k], b[k])
    else:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


def test_plain_neural_net_gets_learned_net():
    net = NeuralNet(Classifier, criterion=torch.nn.NLLLoss, max_epochs=1, verbose=0)
    learned = make_learned_net(net, {"l1": PerWeightL1()}, {"l1": 0.0})
    assert type(learned) is LearnedNet
    X, y = _data()
    learned.fit(X, y)
    assert learned.predict_proba(X).shape == (60, 3)


@pytest.mark.parametrize("kind", ["nll_proba", "ce_logits", "mse"])
def test_no_effect_values_reproduce_plain_loss(kind):
    torch.manual_seed(0)
    X, y = _data()
    y = _targets(kind, y, X)
    user_net = _nets()[kind].initialize()
    no_effect = {"l1": 0.0, "wd": 0.0, "sw": 1.0, "aug": 0.0}
    hps = {"l1": PerWeightL1(), "wd": WeightDecay(params="*"), "sw": SampleWeights(),
           "aug": AffineAugmentation(image_shape=(4, 4))}
    if kind != "mse":
        no_effect["cw"] = 1.0
        hps["cw"] = LossWeights()
    learned = make_learned_net(user_net, hps, no_effect).initialize()
    learned.module_.load_state_dict(user_net.module_.state_dict())
    learned.hp_n_train_ = len(X)

    idx = torch.arange(10, 30)
    xb = {WRAP_KEY: torch.as_tensor(X[10:30]), ROW_KEY: idx}
    yb = torch.as_tensor(y[10:30] if kind != "mse" else y[10:30, None])
    learned.module_.train()
    user_net.module_.train()
    y_pred = learned.infer(xb)
    plain_pred = user_net.infer(torch.as_tensor(X[10:30]))
    torch.testing.assert_close(y_pred, plain_pred, rtol=1e-5, atol=1e-6)
    loss = learned.get_loss(y_pred, yb, X=xb, training=True)
    plain = user_net.get_loss(plain_pred, yb, training=True)
    assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-5, abs=1e-7)


def test_refit_loss_matches_netproblem_inner_loss():
    """Tuning and refitting optimise the same training objective."""
    torch.manual_seed(0)
    X, y = _data()
    net = _nets()["nll_proba"].initialize()
    hps = {"l1": PerWeightL1(init=0.01), "cw": LossWeights(init=[1.0, 2.0, 3.0]),
           "sw": SampleWeights(init=np.linspace(0.2, 1.8, 60)), "taylor": TaylorLoss()}
    problem = NetProblem(net, hps, X, y, X[:5], y[:5], batch_size=-1,
                         generator=torch.Generator())
    lam = problem.init_lam()
    values = {k: b.to_public(lam[k]) for k, b in problem.bound.items()}
    expected = problem.inner_loss(lam, problem.theta0())

    learned = make_learned_net(net, hps, values).initialize()
    learned.module_.load_state_dict(net.module_.state_dict())
    learned.hp_n_train_ = len(X)
    xb = {WRAP_KEY: torch.as_tensor(X), ROW_KEY: torch.arange(60)}
    learned.module_.train()
    loss = learned.get_loss(learned.infer(xb), torch.as_tensor(y), X=xb, training=True)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)


class OneLogit(torch.nn.Module):
    def __init__(self, column=True):
        super().__init__()
        self.hidden = torch.nn.Linear(16, 8)
        self.out = torch.nn.Linear(8, 1)
        self.column = column

    def forward(self, x):
        z = self.out(torch.relu(self.hidden(x)))
        return z if self.column else z.squeeze(-1)


@pytest.mark.parametrize("column", [True, False], ids=["n_by_1", "n"])
def test_binary_classifier_losses_are_skorchs_bce(column):
    """NeuralNetBinaryClassifier (one logit per row, BCE on float 0/1 targets, integer
    labels accepted): the chain's losses and the refit's training loss are BCE with
    logits computed by hand, whether the module outputs (n, 1) or (n,)."""
    X, y = _data()
    y = (y > 0).astype(np.int64)
    net = NeuralNetBinaryClassifier(OneLogit, module__column=column, max_epochs=2, lr=0.1,
                                    train_split=None, verbose=0).initialize()
    hps = {"l1": PerWeightL1(init=0.01, granularity="weight")}
    problem = NetProblem(net, hps, X, y, X[:20], y[:20], batch_size=-1,
                         generator=torch.Generator())
    lam, theta = problem.init_lam(), problem.theta0()
    with torch.no_grad():
        logits = net.module_(torch.as_tensor(X)).reshape(-1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    target = torch.as_tensor(y, dtype=torch.float32)
    assert float(problem.outer_loss(lam, theta)) == pytest.approx(
        float(bce(logits[:20], target[:20])), rel=1e-5)
    penalty = sum(0.01 * p.abs().sum() for p in theta.values() if p.dim() > 1)
    expected = bce(logits, target) + penalty
    assert float(problem.inner_loss(lam, theta)) == pytest.approx(float(expected), rel=1e-5)

    values = {k: b.to_public(lam[k]) for k, b in problem.bound.items()}
    learned = make_learned_net(net, hps, values).initialize()
    learned.module_.load_state_dict(net.module_.state_dict())
    learned.module_.train()
    loss = learned.get_loss(learned.infer(torch.as_tensor(X)), torch.as_tensor(y),
                            X=torch.as_tensor(X), training=True)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_integer_rows_are_cast_for_a_linear_module_and_kept_for_an_embedding():
    """NetProblem takes integer rows as its module does: floats for a Linear layer (as
    float64 rows are cast), int64 ids for an embedding."""
    X, y = _data()
    counts = np.rint(X * 4).astype(np.int64)
    linear = _nets()["ce_logits"].initialize()
    problem = NetProblem(linear, {}, counts, y, counts[:20], y[:20],
                         generator=torch.Generator())
    assert problem.X_train.dtype == torch.float32
    assert torch.equal(problem.X_train, torch.as_tensor(counts, dtype=torch.float32))
    embedding = NeuralNetClassifier(
        torch.nn.Sequential(torch.nn.Embedding(40, 3), torch.nn.Flatten(),
                            torch.nn.Linear(48, 3)),
        criterion=torch.nn.CrossEntropyLoss, max_epochs=2, train_split=None,
        verbose=0).initialize()
    ids = counts - counts.min()
    problem = NetProblem(embedding, {}, ids, y, ids[:20], y[:20], generator=torch.Generator())
    assert problem.X_train.dtype == torch.int64


def test_the_output_probe_leaves_batch_norm_and_the_mode_alone():
    """The one forward that reads the output layout runs in eval mode: batch norm takes
    the single row a refit probes with, its running statistics stay where they were, and
    the module's mode is put back."""
    module = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8),
                                 torch.nn.Linear(8, 3))
    net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                              lr=0.1, train_split=None, verbose=0).initialize()
    X, y = _data()
    stats = net.module_[1].running_mean.clone()
    hps = {"l1": PerWeightL1(init=0.01)}
    problem = NetProblem(net, hps, X, y, X[:20], y[:20], generator=torch.Generator())
    assert torch.equal(net.module_[1].running_mean, stats) and net.module_.training
    lam = problem.init_lam()
    learned = make_learned_net(net, hps, {k: b.to_public(lam[k])
                                          for k, b in problem.bound.items()})
    learned.fit(X, y)  # its probe used to run one row through batch norm in train mode
    assert learned.predict(X).shape == (60,)


def _batch_norm_net(track=True):
    module = torch.nn.Sequential(torch.nn.Linear(16, 8),
                                 torch.nn.BatchNorm1d(8, track_running_stats=track),
                                 torch.nn.Linear(8, 3))
    return NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                               lr=0.1, train_split=None, verbose=0).initialize()


def test_a_refit_probes_batch_norm_without_running_statistics():
    """Such a layer normalises by the batch's own spread in eval mode too: the probe that
    reads the output layout takes two rows (one has no spread)."""
    net = _batch_norm_net(track=False)
    X, y = _data()
    hps = {"l1": PerWeightL1(init=0.01)}
    problem = NetProblem(net, hps, X, y, X[:20], y[:20], generator=torch.Generator())
    lam = problem.init_lam()
    learned = make_learned_net(net, hps, {k: b.to_public(lam[k])
                                          for k, b in problem.bound.items()})
    learned.fit(X, y)
    assert learned.predict(X).shape == (60,) and not tracks_batch_norm(problem)


def test_batch_norm_statistics_are_recomputed_at_the_weights_the_module_holds():
    """After ``recompute_batch_norm`` the running mean and variance are the training rows'
    batch statistics of the layer's input at the current weights (the unbiased variance,
    as batch norm keeps it), whatever stale values they held; the module's mode and the
    global random stream are left as they were."""
    net = _batch_norm_net()
    X, y = _data()
    problem = NetProblem(net, {"l1": PerWeightL1(init=0.01)}, X, y, X[:20], y[:20],
                         generator=torch.Generator())
    linear, norm = net.module_[0], net.module_[1]
    with torch.no_grad():
        linear.weight.mul_(5.0)  # the scale a chain's noise can give the weights
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(0.01)
    net.module_.eval()
    rng = torch.get_rng_state()
    recompute_batch_norm(problem)
    with torch.no_grad():
        inputs = linear(torch.as_tensor(X))
    torch.testing.assert_close(norm.running_mean, inputs.mean(0))
    torch.testing.assert_close(norm.running_var, inputs.var(0, unbiased=True))
    assert not net.module_.training and torch.equal(torch.get_rng_state(), rng)
    plain = NetProblem(NeuralNetClassifier(Classifier, max_epochs=2, verbose=0, lr=0.1,
                                           train_split=None).initialize(),
                       {"l1": PerWeightL1(init=0.01)}, X, y, X[:20], y[:20],
                       generator=torch.Generator())
    assert tracks_batch_norm(problem) and not tracks_batch_norm(plain)


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_sample_weights_follow_rows_through_skorch_batching():
    """Row k of fit's X gets weight k even with train_split and shuffled batches."""
    torch.manual_seed(0)
    X, y = _data()
    weights = np.full(60, 1.0)
    weights[::2] = 1e-6
    net = NeuralNetClassifier(Classifier, max_epochs=1, verbose=0, batch_size=7,
                              iterator_train__shuffle=True)
    learned = make_learned_net(net, {"sw": SampleWeights()}, {"sw": weights})
    seen = []
    original = LearnedNetClassifier.get_loss

    def spy(self, y_pred, y_true, X=None, training=False):
        if training:
            seen.append((self.hp_rows_.clone(), to_tensor(X[WRAP_KEY], "cpu").clone()))
        return original(self, y_pred, y_true, X=X, training=training)

    learned.get_loss = spy.__get__(learned)
    learned.fit(X, y)
    assert seen
    for rows, xb in seen:
        torch.testing.assert_close(xb, torch.as_tensor(X)[rows])
    with pytest.raises(ValueError, match="one per training row"):
        make_learned_net(net, {"sw": SampleWeights()}, {"sw": weights}).fit(X[:30], y[:30])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_everything_on_cuda():
    X, y = _data()
    net = NeuralNetClassifier(Classifier, device="cuda", verbose=0, max_epochs=1).initialize()
    problem = NetProblem(net, HPS_ALL, X[:40], y[:40], X[40:], y[40:], n_train_total=60,
                         batch_size=8, generator=torch.Generator(device="cuda").manual_seed(0),
                         augment_outer=True)
    lam = problem.init_lam()
    theta = problem.theta0()
    for t in list(theta.values()):
        assert t.is_cuda
    assert problem.inner_loss(lam, theta).is_cuda
    assert problem.outer_loss(lam, theta).is_cuda
    values = {k: b.to_public(lam[k]) for k, b in problem.bound.items()}
    make_learned_net(net, HPS_ALL, values).fit(X, y)


class DictInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 3)

    def forward(self, data, scale):
        return torch.softmax(self.lin(data * scale), dim=-1)


def test_dict_inputs_with_sample_weights_and_penalties():
    X, y = _data()
    Xd = {"data": X, "scale": np.ones((60, 1), np.float32)}
    net = NeuralNetClassifier(DictInput, max_epochs=2, verbose=0, train_split=None, batch_size=16)
    learned = make_learned_net(net, {"sw": SampleWeights(), "l1": PerWeightL1()},
                               {"sw": np.linspace(0.1, 1.9, 60), "l1": 1e-3})
    learned.fit(Xd, y)
    assert np.isfinite(learned.history[-1, "train_loss"])
    assert learned.predict(Xd).shape == (60,)


def test_load_theta_reaches_the_net_after_pickling():
    """Process-based joblib backends (loky, Dask) pickle the problem: load_theta must still
    write into the module that predict uses."""
    import pickle

    import numpy as np
    import torch
    from skorch import NeuralNetClassifier

    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.skorch_adapter import NetProblem

    net = NeuralNetClassifier(torch.nn.Linear, module__in_features=5, module__out_features=3,
                              criterion=torch.nn.CrossEntropyLoss, train_split=None,
                              verbose=0).initialize()
    X = np.random.default_rng(0).random((12, 5), dtype=np.float32)
    y = np.arange(12) % 3
    problem = pickle.loads(pickle.dumps(NetProblem(net, {"l1": PerWeightL1()}, X, y, X, y,
                                                   generator=torch.Generator())))
    theta = {name: torch.zeros_like(t) for name, t in problem.theta0().items()}
    proba = problem.load_theta(theta).predict_proba(X)
    np.testing.assert_allclose(proba, 1.0 / 3.0, rtol=1e-6)


def test_outer_minibatch_is_an_unbiased_draw_of_the_full_outer_loss():
    import numpy as np
    import torch
    from skorch import NeuralNetClassifier

    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.skorch_adapter import NetProblem

    net = NeuralNetClassifier(torch.nn.Linear, module__in_features=4, module__out_features=3,
                              criterion=torch.nn.CrossEntropyLoss, train_split=None,
                              verbose=0).initialize()
    rng = np.random.default_rng(0)
    X = rng.random((60, 4), dtype=np.float32)
    y = np.arange(60) % 3
    full = NetProblem(net, {"l1": PerWeightL1()}, X, y, X, y, generator=torch.Generator())
    mini = NetProblem(net, {"l1": PerWeightL1()}, X, y, X, y,
                      generator=torch.Generator().manual_seed(0), outer_batch_size=10)
    lam, theta = full.init_lam(), full.theta0()
    exact = float(full.outer_loss(lam, theta))
    draws = [float(mini.outer_loss(lam, theta)) for _ in range(400)]
    assert len(set(draws)) > 1  # each call draws new rows
    assert abs(np.mean(draws) - exact) < 0.02 * abs(exact)


class _Tied(torch.nn.Module):
    """An autoencoder-style module whose two layers share one weight tensor."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(16, 16)
        self.dec = torch.nn.Linear(16, 3)
        self.head = self.dec  # the same parameters under two names

    def forward(self, x):
        return self.head(torch.relu(self.enc(x)))


def test_tied_weights_are_untied_only_when_the_module_has_them():
    X, y = _data()
    plain = _problem(_nets()["ce_logits"].initialize(), {}, X, y)
    tied_net = NeuralNetClassifier(_Tied, criterion=torch.nn.CrossEntropyLoss, verbose=0,
                                   train_split=None).initialize()
    tied = _problem(tied_net, {}, X, y)
    assert not plain._tied and tied._tied
    # functional_call's untying still applies: a value given for one name reaches both.
    theta = {n: p.detach() * 0 for n, p in tied_net.module_.named_parameters()}
    out = tied._forward({}, theta, tied.X_val, transform=False)
    assert torch.count_nonzero(out) == 0


def test_mode_is_switched_only_when_it_changes(monkeypatch):
    X, y = _data()
    problem = _problem(_nets()["ce_logits"].initialize(), {"wd": WeightDecay()}, X, y)
    lam, theta = problem.init_lam(), problem.theta0()
    calls = []
    original = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train",
                        lambda self, mode=True: calls.append(mode) or original(self, mode))
    problem.module.eval()
    calls.clear()
    problem.inner_loss(lam, theta)
    problem.inner_loss(lam, theta)
    problem.outer_loss(lam, theta)
    problem.outer_loss(lam, theta)
    assert problem.module.training is False
    # Two switches (to train, back to eval), each calling train() on the module and
    # on each of its children; none for the repeated calls.
    per_switch = 1 + len(list(problem.module.children()))
    assert calls == [True] * per_switch + [False] * per_switch


@pytest.mark.parametrize("X_type", ["array", "tensor"])
@pytest.mark.parametrize("extra", [{}, {"iterator_valid__batch_size": 7},
                                   {"iterator_valid__shuffle": False}])
def test_a_learned_nets_predictions_cut_rows_as_skorchs_loader_does(X_type, extra):
    """The direct batching of dense rows gives what skorch's Dataset + DataLoader path
    gives, bit for bit (same batches, same order); a customised loader keeps that path."""
    import skorch
    from sklearn.datasets import load_digits

    from sgld_tuner.learned_net import make_learned_net
    from test_tuner import tiny_classifier

    X, y = load_digits(n_class=4, return_X_y=True)
    X, y = (X[:100] / 16.0).astype(np.float32), y[:100]
    net = make_learned_net(tiny_classifier(**extra), {}, {})
    torch.manual_seed(0)
    net.fit(X, y)
    rows = torch.tensor(X) if X_type == "tensor" else X
    direct = torch.cat(list(net.forward_iter(rows)))
    through_skorch = torch.cat(list(skorch.NeuralNet.forward_iter(net, rows)))
    assert torch.equal(direct, through_skorch)
    assert net._slices_directly(rows) == ("iterator_valid__shuffle" not in extra)


def test_first_distinct_agrees_between_the_cpu_and_the_device_path():
    """The numpy path (CPU) and the torch-only path (any device) give the first ``size``
    distinct values in the order a plain loop meets them, and None when there are fewer."""
    from sgld_tuner.minibatches import _first_distinct_torch, first_distinct

    gen = torch.Generator().manual_seed(1)
    for n, length, size in [(5, 40, 5), (5, 40, 6), (1000, 160, 128), (10**6, 300, 300)]:
        values = torch.randint(n, (length,), generator=gen)
        expected = list(dict.fromkeys(values.tolist()))
        expected = expected[:size] if len(expected) >= size else None
        for path in (first_distinct, _first_distinct_torch):
            rows = path(values, size)
            assert (None if rows is None else rows.tolist()) == expected


def test_direct_minibatch_draws_are_distinct_and_uniform():
    """Every row equally likely (chi-square over 4000 draws of 5 of 12 rows), no row twice
    in a draw, and a 64-row draw out of a million does not touch a million."""
    from scipy.stats import chisquare

    from sgld_tuner.minibatches import distinct_rows

    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(12)
    for _ in range(4000):
        rows = distinct_rows(12, 5, gen)
        assert rows.unique().numel() == 5 and int(rows.max()) < 12
        counts[rows.numpy()] += 1
    assert chisquare(counts).pvalue > 1e-3
    # order within a draw is random too: the first position is uniform as well
    firsts = np.bincount([int(distinct_rows(12, 5, gen)[0]) for _ in range(2400)], minlength=12)
    assert chisquare(firsts).pvalue > 1e-3
    big = distinct_rows(10**6, 64, gen)
    assert big.unique().numel() == 64
