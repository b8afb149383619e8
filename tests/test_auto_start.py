"""``init="auto"``: penalties start where they act, from the training loss's gradient scale."""
import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sgld_tuner.hyperparams import PerWeightL1, WeightDecay
from sgld_tuner.skorch_adapter import NetProblem


class TwoLayer(torch.nn.Module):
    def __init__(self, n_in=5, hidden=7, n_out=3):
        super().__init__()
        self.a = torch.nn.Linear(n_in, hidden)
        self.b = torch.nn.Linear(hidden, n_out)

    def forward(self, X):
        return self.b(torch.tanh(self.a(X)))


def _problem(kind):
    rng = np.random.RandomState(0)
    X = rng.randn(30, 5).astype(np.float32)
    y = rng.randint(0, 3, size=30)
    torch.manual_seed(0)
    net = NeuralNetClassifier(TwoLayer, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                              train_split=None, verbose=0).initialize()
    problem = NetProblem(net, {"p": kind}, X, y, X[:10], y[:10],
                         generator=torch.Generator().manual_seed(0))
    # The independent truth: the data gradient of the net's own criterion, by autograd.
    module = net.module_
    loss = torch.nn.functional.cross_entropy(module(torch.tensor(X)), torch.tensor(y))
    grads = torch.autograd.grad(loss, [module.a.weight, module.b.weight])
    return problem, grads, [module.a.weight.detach(), module.b.weight.detach()]


def _mean_abs(ts):
    return float(torch.cat([t.abs().reshape(-1) for t in ts]).mean())


@pytest.mark.parametrize("granularity", ["weight", "unit", "feature", "tensor", "global"])
def test_auto_l1_start_is_the_mean_data_gradient(granularity):
    problem, grads, _ = _problem(PerWeightL1(init="auto", granularity=granularity))
    targets = grads[:1] if granularity == "feature" else grads
    values = problem.bound["p"].to_public(problem.init_lam()["p"])
    flat = np.concatenate([np.ravel(v) for v in (values.values() if isinstance(values, dict)
                                                 else [values])])
    np.testing.assert_allclose(flat, _mean_abs(targets), rtol=1e-4)


def test_auto_start_in_chunks_is_the_whole_sets_gradient(monkeypatch):
    """30 rows in chunks of 8 (the last of 6): the same start as one pass over all."""
    import sgld_tuner.skorch_adapter as adapter

    monkeypatch.setattr(adapter, "CALIBRATION_ROWS", 8)
    problem, grads, _ = _problem(PerWeightL1(init="auto", granularity="global"))
    value = problem.bound["p"].to_public(problem.init_lam()["p"])
    assert value == pytest.approx(_mean_abs(grads), rel=1e-5)


def test_auto_weight_decay_start_is_a_tenth_of_the_data_pull():
    problem, grads, weights = _problem(WeightDecay(init="auto", granularity="global"))
    value = problem.bound["p"].to_public(problem.init_lam()["p"])
    # lam * mean|w| = 0.1 * mean|g|: the decay pulls the initial weights a tenth as hard
    assert value * _mean_abs(weights) == pytest.approx(0.1 * _mean_abs(grads), rel=1e-4)


def test_auto_start_outside_the_tuner_says_how_to_bind():
    bound = PerWeightL1(init="auto").bind(TwoLayer(), n_train=10, n_classes=3,
                                          input_shape=(5,))
    with pytest.raises(ValueError, match="init='auto'"):
        bound.init_raw("cpu", torch.float32)


def test_unknown_init_string_is_refused():
    with pytest.raises(ValueError, match="init must be 'auto'"):
        PerWeightL1(init="big").bind(TwoLayer(), n_train=10, n_classes=3, input_shape=(5,))


def _digits4():
    from sklearn.datasets import load_digits

    X, y = load_digits(n_class=4, return_X_y=True)
    return (X[:120] / 16.0).astype(np.float32), y[:120]


def _tuner(hp, **kwargs):
    from sgld_tuner import SGLDHyperTuner

    net = NeuralNetClassifier(TwoLayer, module__n_in=64, module__hidden=8, module__n_out=4,
                              criterion=torch.nn.CrossEntropyLoss, lr=0.1, max_epochs=2,
                              batch_size=32, train_split=None, verbose=0)
    from test_tuner import grouped

    params = grouped({"n_outer": 6, "cv": 2, "random_state": 0, **kwargs},
                     sampler={"burn_in": 1, "n_samples": 1})
    return SGLDHyperTuner(net, {"l1": hp}, **params)


def test_a_search_that_never_moves_says_so():
    from sgld_tuner.tuner import UnmovedSearchWarning

    with pytest.warns(UnmovedSearchWarning, match="did not change the model"):
        _tuner(PerWeightL1(init=1e-3), outer=dict(lr=1e-7)).fit(*_digits4())


def test_a_search_with_defaults_moves_its_strengths_and_does_not_warn():
    import warnings

    from sgld_tuner.tuner import UnmovedSearchWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmovedSearchWarning)
        tuner = _tuner(PerWeightL1()).fit(*_digits4())
    first, last = tuner.history_["param_l1"].iloc[[0, -1]]
    assert abs(np.log(last / first)) > 0.05  # the mean strength travelled
