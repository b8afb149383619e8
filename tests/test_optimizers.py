"""The chain follows the net's optimizer: the mapping, and chains that train."""
import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sgld_tuner.optimizers import (OptimizerFollowingWarning, chain_dynamics, net_weight_decay,
                                   with_weight_decay)
from sgld_tuner import SamplerSettings, OuterSettings


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def _net(optimizer, lr=0.1, **kwargs):
    return NeuralNetClassifier(Tiny, criterion=torch.nn.CrossEntropyLoss, optimizer=optimizer,
                               lr=lr, max_epochs=20, batch_size=32, train_split=None,
                               verbose=0, **kwargs)


@pytest.mark.parametrize("optimizer, kwargs, expected", [
    (torch.optim.SGD, {}, {"sampler": "sgld"}),
    (torch.optim.SGD, {"optimizer__momentum": 0.9}, {"sampler": "momentum", "momentum": 0.9}),
    (torch.optim.Adam, {"optimizer__betas": (0.8, 0.99)},
     {"sampler": "psgld", "momentum": 0.8, "beta2": 0.99, "precond_eps": 1e-8}),
    (torch.optim.AdamW, {"optimizer__weight_decay": 0.0},
     {"sampler": "psgld", "momentum": 0.9, "beta2": 0.999, "precond_eps": 1e-8}),
    (torch.optim.RMSprop, {"optimizer__alpha": 0.9, "optimizer__eps": 1e-6},
     {"sampler": "psgld", "beta2": 0.9, "precond_eps": 1e-6}),
])
def test_each_followed_optimizer_maps_to_its_sampler(optimizer, kwargs, expected):
    settings, weight_decay = chain_dynamics(_net(optimizer, **kwargs))
    assert settings == expected and weight_decay == 0.0


def test_weight_decay_is_read_and_kept_in_the_training_loss():
    _, weight_decay = chain_dynamics(_net(torch.optim.SGD, optimizer__weight_decay=1e-3))
    assert weight_decay == 1e-3
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    loss = with_weight_decay(lambda lam, th: torch.tensor(0.5), weight_decay)
    assert float(loss(None, theta)) == pytest.approx(0.5 + 0.5 * 1e-3 * 14.0)


@pytest.mark.parametrize("optimizer, kwargs, decay", [
    (torch.optim.AdamW, {}, 0.01),  # torch's default, unset in skorch's params
    (torch.optim.AdamW, {"optimizer__weight_decay": 0.3}, 0.3),
    (torch.optim.Adam, {"optimizer__weight_decay": 0.3,
                        "optimizer__decoupled_weight_decay": True}, 0.3),
])
def test_a_decoupled_decay_is_followed_by_the_sampler_not_the_loss(optimizer, kwargs, decay):
    """AdamW shrinks the weights outside Adam's preconditioner: the chain's sampler does
    the same (``decoupled_decay``) and no L2 term enters its loss (divided by Adam's
    ``sqrt(v)`` it would pull far harder)."""
    settings, weight_decay = chain_dynamics(_net(optimizer, **kwargs))
    assert settings["decoupled_decay"] == decay and weight_decay == 0.0
    assert net_weight_decay(_net(optimizer, **kwargs)) == 0.0


def test_an_optimizer_without_a_sampler_is_named_in_a_warning():
    with pytest.warns(OptimizerFollowingWarning, match="Adagrad"):
        settings, _ = chain_dynamics(_net(torch.optim.Adagrad))
    assert settings == {"sampler": "sgld"}


def test_a_race_names_an_optimizer_without_a_sampler_once():
    """Every lane (five lrs here) reads the net's optimizer: the warning comes once per
    fit, and says the chains run at each lr the race tries."""
    import warnings

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1

    X, y = _digits4()
    net = _net(torch.optim.Adagrad).set_params(max_epochs=1)
    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1()}, cv=2, n_outer=4, refit=False,
                           random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(X[:60], y[:60])
    named = [w for w in caught if issubclass(w.category, OptimizerFollowingWarning)]
    assert len(named) == 1 and "each lr a race tries" in str(named[0].message)
    assert len(set(tuner.cv_results_["param_lr"])) >= 5


def _digits4():
    from sklearn.datasets import load_digits

    X, y = load_digits(n_class=4, return_X_y=True)
    return (X[:240] / 16.0).astype(np.float32), y[:240]


def _trajectory_end(net, **method_options):
    import warnings

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.search import PlainSearch

    tuner = SGLDHyperTuner(net, {"l1": PerWeightL1()}, n_outer=12, cv=2, refit=False,
                           random_state=0, schedule=PlainSearch(),
                           sampler=SamplerSettings(options=method_options or None),
                           outer=OuterSettings(eval_every=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.fit(*_digits4())
    return float(tuner.cv_results_["mean_test_score"][-1])


@pytest.mark.parametrize("optimizer, lr, kwargs", [
    (torch.optim.Adam, 1e-3, {}),
    (torch.optim.SGD, 0.005, {"optimizer__momentum": 0.9}),
])
def test_chains_of_an_adam_and_a_momentum_net_train_like_the_net(optimizer, lr, kwargs):
    """120 chain steps per fold at the net's own lr: following its optimizer, the chain
    reaches what the net itself reaches in as many steps (cross-validated on the same
    2 folds); plain SGLD at that lr barely trains (the old behaviour)."""
    from sklearn.model_selection import cross_val_score

    net = _net(optimizer, lr=lr, **kwargs).set_params(max_epochs=40)  # 40 x 3 = 120 steps
    torch.manual_seed(0)
    reference = cross_val_score(net, *_digits4(), cv=2).mean()
    followed = _trajectory_end(_net(optimizer, lr=lr, **kwargs))
    plain = _trajectory_end(_net(optimizer, lr=lr, **kwargs), sampler="sgld", momentum=0.0)
    assert followed > reference - 0.1
    assert followed > plain + 0.15


def test_an_adamw_net_runs_under_an_unrolled_baseline():
    """The baselines have no sampler to shrink the weights: AdamW's decay stays an L2
    term in their training loss (a decoupled decay would be refused by InnerSettings)."""
    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1

    X = np.random.RandomState(0).standard_normal((40, 64)).astype(np.float32)
    y = np.arange(40) % 4
    tuner = SGLDHyperTuner(_net(torch.optim.AdamW, lr=0.01).set_params(max_epochs=2),
                           {"l1": PerWeightL1()}, n_outer=2, cv=2, random_state=0,
                           sampler=SamplerSettings(method="rmd", burn_in=1, n_samples=1))
    tuner.fit(X, y)
    assert np.isfinite(tuner.best_score_)
