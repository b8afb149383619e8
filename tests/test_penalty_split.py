"""Closed-form penalties apart from the data loss (``BilevelProblem(penalty=...)``):
the chain, the hypergradient and the other solvers equal what autograd gives on the
whole inner loss (float64), and the outer-row draws leave the chain's stream alone."""
import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, _tree, hypergradient
from sgld_tuner.hyperparams import AffineAugmentation, PerWeightL1, TaylorLoss, WeightDecay
from sgld_tuner.skorch_adapter import NetProblem


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def _net_problem(hyperparams, **kwargs):
    torch.manual_seed(0)
    net = NeuralNetClassifier(_MLP, criterion=torch.nn.CrossEntropyLoss, verbose=0).initialize()
    net.module_.double()
    rng = np.random.RandomState(0)
    X, y = rng.randn(30, 6), np.arange(30) % 3
    return NetProblem(net, hyperparams, X[:20], y[:20], X[20:], y[20:], batch_size=8,
                      generator=torch.Generator().manual_seed(1), **kwargs)


def _solve(problem: NetProblem, bilevel: BilevelProblem, settings):
    problem.generator.manual_seed(1)
    lam = [t.detach().clone().requires_grad_(True)
           for t in _tree.flatten(problem.init_lam())[0]]
    state, out = ChainState(), []
    for _ in range(2):  # a persistent chain: the second call continues the first
        out.append(hypergradient(bilevel, lam, state, settings, torch.Generator().manual_seed(2)))
    return out


HYPERPARAMS = {
    "l1 per feature": lambda: {"l1": PerWeightL1(init=0.05, granularity="feature")},
    "wd per unit": lambda: {"wd": WeightDecay(init=0.05, granularity="unit")},
    "l1 + wd on one tensor": lambda: {"l1": PerWeightL1(init=0.05, granularity="weight"),
                                      "wd": WeightDecay(init=0.05, granularity="global")},
    "l1 + learned loss": lambda: {"l1": PerWeightL1(init=0.05, granularity="tensor"),
                                  "loss": TaylorLoss()},
}


@pytest.mark.parametrize("recursion", ["paper", "damped", "tracked", "gibbs"])
@pytest.mark.parametrize("case", sorted(HYPERPARAMS))
def test_split_penalty_equals_autograd_on_the_whole_loss(case, recursion):
    problem = _net_problem(HYPERPARAMS[case]())
    split = problem.bilevel()
    assert split.penalty is not None
    # The same outer-loss declaration, so that both chains evaluate f on the same steps.
    whole = BilevelProblem(problem.outer_loss, problem.inner_loss, split.lam_spec,
                           problem.theta0(), outer_depends_on_lam=split.outer_depends_on_lam)
    settings = InnerSettings(inner_lr=0.05, burn_in=3, n_samples=4, temperature=1e-3,
                             recursion=recursion).validate()
    for got, expected in zip(_solve(problem, split, settings),
                             _solve(problem, whole, settings)):
        for a, b in zip(got.theta + got.grad, expected.theta + expected.grad):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert got.inner_loss == pytest.approx(expected.inner_loss, rel=1e-12)
        assert got.outer_loss == pytest.approx(expected.outer_loss, rel=1e-12)


@pytest.mark.parametrize("method", ["rmd", "ift-cg"])
def test_baselines_see_the_whole_inner_loss(method):
    """The unrolled and implicit baselines differentiate ``inner`` (data + penalty)."""
    problem = _net_problem(HYPERPARAMS["l1 + wd on one tensor"]())
    split = problem.bilevel()
    whole = BilevelProblem(problem.outer_loss, problem.inner_loss, split.lam_spec,
                           problem.theta0())
    settings = InnerSettings(method=method, inner_lr=0.05, n_inner=5).validate()
    for got, expected in zip(_solve(problem, split, settings),
                             _solve(problem, whole, settings)):
        for a, b in zip(got.grad, expected.grad):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_no_closed_form_kind_keeps_one_inner_loss():
    problem = _net_problem({"loss": TaylorLoss()})
    assert problem.separable_penalty() is None
    assert problem.bilevel().penalty is None


@pytest.mark.parametrize("hyperparams, options", [
    ({"wd": WeightDecay(init=0.1)}, {"outer_batch_size": 4}),
    ({"rot": AffineAugmentation(image_shape=(2, 3))}, {"augment_outer": True})])
def test_outer_draws_come_from_their_own_generator(hyperparams, options):
    """Drawing validation rows (``outer_batch_size``) or warping them (``augment_outer``)
    does not advance the chain's generator, so its noise and minibatches depend neither
    on those settings nor on how often the chain evaluates its outer loss (the tracked
    adjoint's schedule)."""
    outer = torch.Generator().manual_seed(9)
    problem = _net_problem(hyperparams, outer_generator=outer, **options)
    theta, lam = problem.theta0(), problem.init_lam()
    chain_before, outer_before = problem.generator.get_state(), outer.get_state()
    first = problem.outer_loss(lam, theta)
    assert torch.equal(problem.generator.get_state(), chain_before)
    assert not torch.equal(outer.get_state(), outer_before)
    outer.set_state(outer_before)
    torch.testing.assert_close(problem.outer_loss(lam, theta), first, rtol=0, atol=0)


def test_partial_derivatives_fill_what_a_hook_leaves_out():
    """A hook may return a dict with some keys, None, or an empty dict for a leaf."""
    leaves, spec = _tree.flatten({"a": torch.zeros(2), "b": {"c": torch.zeros(1)}})
    a = torch.ones(2)
    assert _tree.flatten_partial({"a": a}, spec) == [a, None]
    assert _tree.flatten_partial(None, spec) == [None, None]
    assert _tree.flatten_partial({}, _tree.flatten(torch.zeros(1))[1]) == [None]
    total = _tree.add_partial(leaves, _tree.flatten_partial({"b": {"c": torch.ones(1)}}, spec))
    assert torch.equal(total[0], leaves[0]) and torch.equal(total[1], torch.ones(1))
