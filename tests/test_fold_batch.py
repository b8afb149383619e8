"""Folds stacked into one chain (sgld_tuner.fold_batch) against the folds one by one."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sgld_tuner import SGLDHyperTuner
from sgld_tuner import SamplerSettings, OuterSettings
from sgld_tuner.core import ChainState, InnerSettings, SliceGenerators, sgld_hypergrad
from sgld_tuner.core import _tree
from sgld_tuner.core.sgld import NOISES, draw_noise
from sgld_tuner.search.stacked import FoldBatch
from test_tuner import grouped
from sgld_tuner.hyperparams import (AffineAugmentation, LossWeights, PerWeightL1, SampleWeights,
                                    TaylorLoss, WeightDecay)
from sgld_tuner.skorch_adapter import NetProblem

N, K = 90, 3
SETTINGS = InnerSettings(inner_lr=0.1, burn_in=2, n_samples=3, temperature=1e-3)


class MLP(torch.nn.Module):
    def __init__(self, n_in=16, n_out=3, extra=None):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, 8)
        self.out = torch.nn.Linear(8, n_out)
        self.extra = extra  # a layer the stacking must refuse

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        if self.extra is not None:
            h = self.extra(h)
        return self.out(h)


class Flattening(MLP):
    """Flattens by the row count, as image nets do (``x.view(x.size(0), -1)``)."""

    def forward(self, x):
        return super().forward(x.view(x.size(0), -1)).reshape(x.shape[0], -1)


class Reversing(MLP):
    """Reverses the rows' order: row i's output comes from row n - 1 - i."""

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)).flip(0))


class Centring(MLP):
    """Subtracts the batch mean: each row's output depends on the other rows."""

    def forward(self, x):
        out = super().forward(x)
        return out - out.mean(dim=-2, keepdim=True)


def _data():
    rng = np.random.RandomState(0)
    X = rng.rand(N, 16).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0.8).astype(np.int64) + (X[:, 2] > 0.7).astype(np.int64)
    return X, y


def _folds(kinds, module=MLP, augment_outer=False, n=N, batch_size=16, outer_batch_size=20,
           **module_kw):
    """K folds of about 60 / 30 rows (``n`` rows in all), each with its own net and
    seeded generators."""
    X, y = _data()
    X, y = X[:n], y[:n]
    folds = []
    for k, val in enumerate(np.array_split(np.arange(n), K)):
        train = np.setdiff1d(np.arange(n), val)
        net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                                  batch_size=batch_size, train_split=None, verbose=0,
                                  **{f"module__{k_}": v for k_, v in module_kw.items()})
        torch.manual_seed(k)
        net.initialize()
        problem = NetProblem(net, kinds(), X[train], y[train], X[val], y[val],
                             train_rows=train, n_train_total=N, batch_size=batch_size,
                             generator=torch.Generator().manual_seed(10 + k),
                             outer_batch_size=outer_batch_size, augment_outer=augment_outer,
                             outer_generator=torch.Generator().manual_seed(20 + k))
        folds.append(SimpleNamespace(problem=problem, bilevel=problem.bilevel()))
    return folds


def _lam(folds):
    return [t.detach().requires_grad_(True)
            for t in _tree.flatten(folds[0].problem.init_lam())[0]]


KINDS = {
    "PerWeightL1": lambda: {"l1": PerWeightL1()},
    "WeightDecay": lambda: {"wd": WeightDecay(granularity="tensor")},
    "LossWeights": lambda: {"cw": LossWeights()},
    "TaylorLoss": lambda: {"tl": TaylorLoss()},
    "SampleWeights": lambda: {"sw": SampleWeights()},
    "L1+LossWeights": lambda: {"l1": PerWeightL1(), "cw": LossWeights()},
    "AffineAugmentation": lambda: {"aug": AffineAugmentation(image_shape=(4, 4))},
}


MOMENTUM = InnerSettings(inner_lr=0.05, burn_in=2, n_samples=3, temperature=1e-3,
                         sampler="momentum", momentum=0.9)
ADAM = InnerSettings(inner_lr=0.01, burn_in=2, n_samples=3, temperature=1e-3, sampler="psgld")
ADAM_MOMENTUM = InnerSettings(inner_lr=0.01, burn_in=2, n_samples=3, temperature=1e-3,
                              sampler="psgld", momentum=0.9)


@pytest.mark.parametrize("kind, n, settings, module",
                         [(kind, N, SETTINGS, MLP) for kind in KINDS]
                         + [("PerWeightL1", 89, SETTINGS, MLP), ("LossWeights", 89, SETTINGS, MLP),
                            ("PerWeightL1", N, MOMENTUM, MLP), ("L1+LossWeights", 89, ADAM, MLP),
                            ("PerWeightL1", 89, ADAM_MOMENTUM, MLP),
                            ("PerWeightL1", 89, SETTINGS, Flattening)],
                         ids=lambda v: (v.sampler if isinstance(v, InnerSettings) else
                                        v.__name__ if isinstance(v, type) else str(v)))
def test_stacked_chain_equals_the_folds_one_by_one(kind, n, settings, module):
    """Two outer iterations: the stacked hypergradient is the sum of the folds' own, and
    every fold's weights and tracked adjoint are what its own chain reaches (n=89, each
    fold's whole split at every step: 59, 59 and 60 training rows, 30, 30 and 29
    validation rows, stacked with padding). Momentum and Adam (pSGLD) chains carry
    their sampler's buffers and cap the adjoint's step per fold; a forward that flattens
    by the row count sees the folds' rows as one batch."""
    augment = kind == "AffineAugmentation"
    sizes = {} if n == N else {"batch_size": 64, "outer_batch_size": None}
    sequential = _folds(KINDS[kind], module=module, augment_outer=augment, n=n, **sizes)
    stacked = _folds(KINDS[kind], module=module, augment_outer=augment, n=n, **sizes)
    batch = FoldBatch.build(stacked, settings, weight_decay=0.0, max_weights=None)
    assert batch is not None
    if n != N:
        assert len({f.problem.X_val.shape[0] for f in stacked}) == 2
        assert len({f.problem.X_train.shape[0] for f in stacked}) == 2
    lam = _lam(sequential)
    seq_states = [ChainState() for _ in range(K)]
    states = [ChainState() for _ in range(K)]
    for _ in range(2):
        results = [sgld_hypergrad(f.bilevel, lam, s, settings, f.problem.generator)
                   for f, s in zip(sequential, seq_states)]
        result, states = batch.hypergradient(states, lam, settings)
        for i, g in enumerate(result.grad):
            torch.testing.assert_close(g, sum(r.grad[i] for r in results),
                                       rtol=1e-4, atol=1e-6)
        assert result.outer_loss == pytest.approx(sum(r.outer_loss for r in results),
                                                  rel=1e-5)
        assert result.inner_loss == pytest.approx(sum(r.inner_loss for r in results),
                                                  rel=1e-5)
        for mine, own in zip(states, seq_states):
            assert mine.n_steps == own.n_steps
            for a, b in zip(mine.theta, own.theta):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            for key in own.recursion.tensors:
                for a, b in zip(mine.recursion.tensors[key], own.recursion.tensors[key]):
                    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
            assert mine.sampler.keys() == own.sampler.keys()
            for key, value in own.sampler.items():
                for a, b in zip(*((v if isinstance(v, list) else [v])
                                  for v in (mine.sampler[key], value))):
                    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b),
                                               rtol=1e-3, atol=1e-6)


def test_net_weight_decay_is_kept_per_fold():
    sequential, stacked = _folds(KINDS["PerWeightL1"]), _folds(KINDS["PerWeightL1"])
    for f in sequential:
        f.bilevel = f.problem.bilevel(weight_decay=0.01)
    batch = FoldBatch.build(stacked, SETTINGS, weight_decay=0.01, max_weights=None)
    lam = _lam(sequential)
    results = [sgld_hypergrad(f.bilevel, lam, ChainState(), SETTINGS, f.problem.generator)
               for f in sequential]
    result, _ = batch.hypergradient([ChainState() for _ in range(K)], lam, SETTINGS)
    assert result.inner_loss == pytest.approx(sum(r.inner_loss for r in results), rel=1e-5)


@pytest.mark.parametrize("why, folds, settings", [
    ("dropout draws from the global RNG",
     lambda: _folds(KINDS["PerWeightL1"], extra=torch.nn.Dropout(0.5)), SETTINGS),
    ("batch norm keeps running statistics",
     lambda: _folds(KINDS["PerWeightL1"], extra=torch.nn.BatchNorm1d(8)), SETTINGS),
    ("rows trade places (each row's output depends on the batch's order)",
     lambda: _folds(KINDS["PerWeightL1"], module=Reversing), SETTINGS),
    ("rows interact (centred over the batch)",
     lambda: _folds(KINDS["PerWeightL1"], module=Centring), SETTINGS),
    ("the damped recursion's rho sums over the whole chain",
     lambda: _folds(KINDS["PerWeightL1"]), InnerSettings(recursion="damped")),
    ("a baseline method", lambda: _folds(KINDS["PerWeightL1"]), InnerSettings(method="rmd")),
])
def test_no_stacking_where_it_would_not_be_exact(why, folds, settings):
    assert FoldBatch.build(folds(), settings, 0.0, max_weights=None) is None, why


def test_auto_leaves_large_nets_alone():
    folds = _folds(KINDS["PerWeightL1"])
    n_weights = sum(t.numel() for t in folds[0].bilevel.theta0_leaves)
    assert FoldBatch.build(folds, SETTINGS, 0.0, max_weights=n_weights - 1) is None
    assert FoldBatch.build(folds, SETTINGS, 0.0, max_weights=n_weights) is not None


@pytest.mark.parametrize("noise", NOISES)
def test_slice_generators_draw_what_each_generator_draws_alone(noise):
    gens = SliceGenerators(torch.Generator().manual_seed(s) for s in (1, 2, 3))
    stacked = [torch.empty(3, 4, 5, dtype=torch.float64), torch.empty(3, 7, dtype=torch.float64)]
    drawn = list(draw_noise(stacked, gens, noise))
    for k, seed in enumerate((1, 2, 3)):
        alone = list(draw_noise([t[k] for t in stacked], torch.Generator().manual_seed(seed),
                                noise))
        for z, z_alone in zip(drawn, alone):
            torch.testing.assert_close(z[k], z_alone, rtol=0, atol=0)
    if noise == "gaussian":  # the stream of torch.randn, leaf after leaf
        torch.testing.assert_close(drawn[0][1], torch.randn(
            (4, 5), generator=torch.Generator().manual_seed(2), dtype=torch.float64))


def _tuner(**kw):
    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss, lr=0.1, batch_size=16,
                              max_epochs=3, train_split=None, verbose=0)
    return SGLDHyperTuner(net, {"l1": PerWeightL1(), "cw": LossWeights()},
                          **grouped({"n_outer": 4, "cv": 3, "random_state": 0, **kw},
                                    sampler={"burn_in": 2, "n_samples": 2},
                                    outer={"eval_every": 2}))


def _values(params: dict) -> np.ndarray:
    """Every learned number of ``best_params_``, flat."""
    out = []
    for v in params.values():
        out += [np.ravel(x) for x in (v.values() if isinstance(v, dict) else [v])]
    return np.concatenate(out)


@pytest.mark.parametrize("warm_up", [0, 7])
def test_tuner_search_is_the_same_stacked_or_not(warm_up):
    """With and without a warm-up of the chains (stacked as well)."""
    X, y = _data()
    apart = _tuner(sampler=dict(batch_folds=False, warm_up=warm_up)).fit(X, y)
    stacked = _tuner(sampler=dict(batch_folds=True, warm_up=warm_up)).fit(X, y)
    assert not apart.folds_stacked_ and stacked.folds_stacked_
    np.testing.assert_allclose(stacked.cv_results_["mean_test_score"],
                               apart.cv_results_["mean_test_score"], atol=1e-12)
    np.testing.assert_allclose(_values(stacked.best_params_), _values(apart.best_params_),
                               rtol=1e-3, atol=1e-7)
    # "auto" stacks this small net; n_jobs > 1 asks for parallel folds instead
    assert _tuner().fit(X, y).folds_stacked_
    assert not _tuner(n_jobs=2).fit(X, y).folds_stacked_


def test_batch_folds_is_validated():
    X, y = _data()
    with pytest.raises(ValueError, match="batch_folds"):
        _tuner(sampler=dict(batch_folds="always")).fit(X, y)


def test_stacked_chain_follows_generators_replaced_by_a_rollback():
    """A rollback gives each fold new generator objects (the tuner's ``_restore``): the
    stacked chain must draw from those, as each fold's own chain does."""
    sequential, stacked = _folds(KINDS["PerWeightL1"]), _folds(KINDS["PerWeightL1"])
    batch = FoldBatch.build(stacked, SETTINGS, 0.0, max_weights=None)
    lam = _lam(sequential)
    seq_states = [ChainState() for _ in range(K)]
    states = [ChainState() for _ in range(K)]
    for k, (a, b) in enumerate(zip(sequential, stacked)):
        for f in (a, b):
            f.problem.generator = torch.Generator().manual_seed(100 + k)
    results = [sgld_hypergrad(f.bilevel, lam, s, SETTINGS, f.problem.generator)
               for f, s in zip(sequential, seq_states)]
    result, states = batch.hypergradient(states, lam, SETTINGS)
    for i, g in enumerate(result.grad):
        torch.testing.assert_close(g, sum(r.grad[i] for r in results), rtol=1e-4, atol=1e-6)
    for mine, own in zip(states, seq_states):
        for a, b in zip(mine.theta, own.theta):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
