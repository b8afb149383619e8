"""The chain's warm-up (``advance_chain``; ``SGLDHyperTuner(warm_up=...)``): plain steps
at fixed lam before the first outer step."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings
from sgld_tuner.core.hypergrad import advance_chain
from sgld_tuner.problems import RidgePerFeature
from test_tuner import tiny_classifier, tiny_tuner


def test_a_noiseless_warm_up_is_gradient_descent_on_the_inner_loss():
    """temperature 0: the warm-up is gradient descent, checked against the ridge
    loss's closed-form gradient ``2/n X^T (X w - y) + 2 lam * w``-style recursion done by
    hand (autograd of the problem's own inner loss, step by step)."""
    prob = RidgePerFeature(n=30, d=4, random_state=0)
    problem = BilevelProblem(prob.outer_loss, prob.inner_loss, None, prob.theta0)
    settings = InnerSettings(inner_lr=0.05, temperature=0.0).validate()
    lam = [torch.full((4,), -1.0, dtype=torch.float64)]
    state = ChainState()
    advance_chain(problem, lam, state, settings, torch.Generator().manual_seed(0), 25)
    theta = prob.theta0.clone()
    for _ in range(25):
        theta = theta.requires_grad_(True)
        (grad,) = torch.autograd.grad(prob.inner_loss(lam[0], theta), theta)
        theta = (theta - 0.05 * grad).detach()
    torch.testing.assert_close(state.theta[0], theta, rtol=1e-12, atol=1e-12)
    assert state.n_steps == 25
    assert state.recursion is None  # the strategy's state is not touched


def test_a_warm_up_refuses_a_restarting_chain():
    prob = RidgePerFeature(n=10, d=2, random_state=0)
    problem = BilevelProblem(prob.outer_loss, prob.inner_loss, None, prob.theta0)
    settings = InnerSettings(chain="restart").validate()
    with pytest.raises(ValueError, match="persistent"):
        advance_chain(problem, [torch.zeros(2, dtype=torch.float64)], ChainState(),
                      settings, torch.Generator(), 3)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(n_class=4, return_X_y=True)
    return (X[:160] / 16.0).astype(np.float32), y[:160]


def test_epochs_warm_up_runs_the_nets_budget_before_the_first_scored_point(digits):
    """warm_up="epochs": max_epochs passes over the fold's 80 training rows in batches of
    32 (3 batches), so the chain holds 6 * 3 warm-up steps plus the search's; the first
    scored point is then a trained net (its validation loss is below the cold chain's).
    The search's 2 outer iterations then span the budget once more (9 steps each: the
    burn-in grows from 1 to 8)."""
    net = tiny_classifier(max_epochs=6)
    warm = tiny_tuner(net, n_outer=2, warm_start=True, refit=False,
                      sampler=dict(warm_up="epochs")).fit(*digits)
    cold = tiny_tuner(net, n_outer=2, refit=False).fit(*digits)
    assert all(c.n_steps == 6 * 3 + 2 * 9 for c in warm._search_state.chain_states)
    assert warm.history_["outer_loss"].iloc[0] < cold.history_["outer_loss"].iloc[0]
    assert warm.cv_results_["mean_test_score"][0] >= cold.cv_results_["mean_test_score"][0]


def test_warm_up_steps_are_counted_in_the_chain(digits):
    # max_epochs=1 (3 steps) fits in n_outer * (1 + 1) steps: the burn-in is as given
    tuner = tiny_tuner(tiny_classifier(max_epochs=1), n_outer=2, warm_start=True,
                       refit=False, sampler=dict(warm_up=7)).fit(*digits)
    assert all(c.n_steps == 7 + 2 * 2 for c in tuner._search_state.chain_states)
    # a resumed search does not warm up again
    tuner.set_params(n_outer=3).fit(*digits)
    assert all(c.n_steps == 7 + 3 * 2 for c in tuner._search_state.chain_states)


def test_warm_up_true_is_not_one_step(digits):
    with pytest.raises(ValueError, match="warm_up"):
        tiny_tuner(sampler=dict(warm_up=True)).fit(*digits)


@pytest.mark.parametrize("params", [{"method": "rmd"}, {"chain": "restart"}])
def test_warm_up_with_a_method_that_has_no_chain_fails_naming_the_fix(digits, params):
    with pytest.raises(ValueError, match="warm_up=0"):
        tiny_tuner(sampler=dict(warm_up=5, **params)).fit(*digits)
