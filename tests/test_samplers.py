"""The chain's samplers against torch's own optimizers (noise off), their stationary
distribution (noise on), and the tracked adjoint under a preconditioner (float64)."""
import pytest
import torch

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient
from sgld_tuner.core.sgld import NOISES, draw_noise, make_sampler
from sgld_tuner.problems import RidgePerFeature

from _ridge import warm_chain_relative_error

DT = torch.float64


def _quadratic_grad(theta):
    A = torch.diag(torch.tensor([1.0, 4.0, 0.25], dtype=DT))
    return A @ (theta - torch.tensor([1.0, -2.0, 3.0], dtype=DT))


@pytest.mark.parametrize("sampler, momentum, decay, optimizer", [
    ("momentum", 0.9, 0.0, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("psgld", 0.0, 0.0, lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.0, 0.99), eps=1e-8)),
    ("psgld", 0.9, 0.0, lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.9, 0.99), eps=1e-8)),
    ("psgld", 0.9, 0.3, lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.9, 0.99), eps=1e-8,
                                                    weight_decay=0.3)),
    ("sgld", 0.0, 0.3, lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.3)),
])
def test_noise_free_sampler_is_the_torch_optimizer(sampler, momentum, decay, optimizer):
    """Without noise the momentum sampler is torch's SGD(momentum) and pSGLD is Adam
    (its first moment's beta1 the momentum; 0: RMSprop's step with Adam's bias
    correction), with a decoupled decay AdamW (and plain SGLD SGD's L2 decay, the same
    step there): the chain moves as the net's own optimizer would."""
    settings = InnerSettings(inner_lr=0.05, temperature=0.0, sampler=sampler,
                             momentum=momentum, beta2=0.99,
                             decoupled_decay=decay).validate()
    chain = make_sampler(settings)
    theta = [torch.zeros(3, dtype=DT)]
    param = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = optimizer([param])
    for _ in range(50):
        theta = chain.step(theta, [_quadratic_grad(theta[0])], torch.Generator())
        opt.zero_grad()
        param.grad = _quadratic_grad(param.detach())
        opt.step()
    torch.testing.assert_close(theta[0], param.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("sampler, momentum", [("sgld", 0.0), ("momentum", 0.5),
                                               ("psgld", 0.0), ("psgld", 0.5),
                                               ("psgld", 0.9)])
def test_sampler_draws_the_gibbs_distribution(sampler, momentum, noise):
    """``L = (theta - 1)^2 / 2`` at tau = 0.5: the samples' mean is 1 and their variance
    0.5 (up to the discretisation bias of a small step), with or without Adam's first
    moment in pSGLD, from normal increments and from random signs (the weak Euler
    scheme: only the increments' mean and variance reach the samples' distribution)."""
    settings = InnerSettings(inner_lr=0.01, temperature=0.5, sampler=sampler,
                             momentum=momentum, beta2=0.999, noise=noise).validate()
    chain = make_sampler(settings)
    gen = torch.Generator().manual_seed(0)
    theta, draws = [torch.zeros(500, dtype=DT)], []
    for k in range(3000):
        theta = chain.step(theta, [theta[0] - 1.0], gen)
        if k >= 1500:
            draws.append(theta[0])
    draws = torch.stack(draws)
    assert float(draws.mean()) == pytest.approx(1.0, abs=0.02)
    assert float(draws.var()) == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("sampler, momentum", [("momentum", 0.5), ("psgld", 0.0),
                                               ("psgld", 0.9)])
def test_tracked_adjoint_under_the_sampler_reaches_the_exact_ridge_hypergradient(
        sampler, momentum):
    """The implicit-function hypergradient does not depend on the dynamics: the tracked
    adjoint, stepping with the sampler's preconditioner, reaches it for each sampler
    (pSGLD as RMSprop's step, and as Adam's with its default beta1)."""
    # pSGLD's steps are sign-like (Adam's): the chain itself rattles around the optimum
    # by about lr, which floors the agreement at ~lr; 0.005 keeps that near 1% (1.5%
    # without the first moment, 0.06% with Adam's 0.9; 2.1% at beta1 = 0.5).
    lr = 0.005 if sampler == "psgld" else 0.05
    settings = InnerSettings(inner_lr=lr, burn_in=5, n_samples=5, temperature=1e-10,
                             sampler=sampler, momentum=momentum, beta2=0.99,
                             recursion="tracked").validate()
    assert warm_chain_relative_error(settings, rounds=300) < 0.02


@pytest.mark.parametrize("sampler", ["momentum", "psgld"])
def test_sampler_buffers_survive_a_chain_state_copy(sampler):
    prob = RidgePerFeature(n=30, d=4, random_state=0)
    problem = BilevelProblem(prob.outer_loss, prob.inner_loss, None, prob.theta0)
    settings = InnerSettings(inner_lr=0.02, burn_in=2, n_samples=2, temperature=1e-3,
                             sampler=sampler, momentum=0.9).validate()
    lam = [torch.zeros(4, dtype=DT, requires_grad=True)]
    state, gen = ChainState(), torch.Generator().manual_seed(0)
    for _ in range(3):
        hypergradient(problem, lam, state, settings, gen)
    saved, gen_state = state.copy(), gen.get_state()
    straight = hypergradient(problem, lam, state, settings, gen).grad[0]
    gen.set_state(gen_state)
    torch.testing.assert_close(hypergradient(problem, lam, saved, settings, gen).grad[0],
                               straight, rtol=0, atol=0)


def test_psgld_noise_where_the_gradient_vanishes_is_that_of_a_typical_weight():
    """One pSGLD step from 0 on one tensor, half its gradients 0 and half 1 (``r = |g|``
    at the first step, mean 0.5). Where the gradient is 0, ``P = 1 / eps`` and the noise
    ``sqrt(2 eta tau / eps)`` (about 9 here) would throw the weight far off: it diffuses
    as at the tensor's mean, ``sqrt(2 eta tau / 0.5)``. Where the gradient is 1
    (``P = 1``, above the mean) the noise is the Langevin one, ``sqrt(2 eta tau)``."""
    eta, tau, n = 0.01, 4e-5, 20_000
    settings = InnerSettings(inner_lr=eta, temperature=tau, sampler="psgld",
                             precond_eps=1e-8).validate()
    chain = make_sampler(settings)
    grads = torch.cat([torch.zeros(n, dtype=DT), torch.ones(n, dtype=DT)])
    (theta,) = chain.step([torch.zeros(2 * n, dtype=DT)], [grads],
                          torch.Generator().manual_seed(0))
    flat, steep = theta[:n], theta[n:] + eta  # the drift moved the steep half by -eta
    assert float(flat.std()) == pytest.approx((2 * eta * tau / 0.5) ** 0.5, rel=0.03)
    assert float(steep.std()) == pytest.approx((2 * eta * tau) ** 0.5, rel=0.03)
    torch.testing.assert_close(chain.precond()[0][:n], torch.full((n,), 1e8, dtype=DT))


def test_psgld_noise_of_a_tensor_without_any_gradient_is_that_of_the_chain():
    """A tensor whose gradient is zero throughout (a layer of dead units, an unused
    parameter) has no typical weight of its own: its noise is that of a weight at the
    mean over the chain's weights, here (0 + 1 + 0) / 3 per third."""
    eta, tau, n = 0.01, 4e-5, 20_000
    settings = InnerSettings(inner_lr=eta, temperature=tau, sampler="psgld",
                             precond_eps=1e-8).validate()
    theta = [torch.zeros(n, dtype=DT), torch.zeros(2 * n, dtype=DT)]
    grads = [torch.zeros(n, dtype=DT),
             torch.cat([torch.zeros(n, dtype=DT), torch.ones(n, dtype=DT)])]
    dead, live = make_sampler(settings).step(theta, grads, torch.Generator().manual_seed(0))
    assert float(dead.std()) == pytest.approx((2 * eta * tau / (1 / 3)) ** 0.5, rel=0.03)
    assert float(live[:n].std()) == pytest.approx((2 * eta * tau / 0.5) ** 0.5, rel=0.03)


def test_random_signs_are_fair_coins_in_every_bit_position():
    """Each weight's sign is +-1 with probability 1/2, whichever of a 64-bit word's bits
    it comes from (torch's ``random_()`` leaves an int64's sign bit 0: a weight fed by
    it would always move the same way), and the leaves take disjoint draws."""
    gen = torch.Generator().manual_seed(0)
    like = [torch.empty(40, dtype=DT), torch.empty(3, 8, dtype=DT)]  # 64 weights a draw
    draws = torch.stack([torch.cat([z.reshape(-1) for z in draw_noise(like, gen,
                                                                       "rademacher")])
                         for _ in range(4000)])
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    # 4000 coins per position: the std of a position's mean is 1 / sqrt(4000) = 0.016
    assert float(draws.mean(0).abs().max()) < 0.07
    assert float(draws.var()) == pytest.approx(1.0, abs=0.01)
    # neighbouring positions independent (the signs of one byte come from one lookup)
    assert float((draws[:, :-1] * draws[:, 1:]).mean(0).abs().max()) < 0.07


def test_unknown_noise_is_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        InnerSettings(noise="uniform").validate()


@pytest.mark.parametrize("recursion", ["tracked", "damped"])
def test_decoupled_decay_under_plain_sgld_is_an_l2_term_for_the_hypergradient(recursion):
    """Under plain SGLD (``P = 1``) a decoupled decay ``c`` steps exactly as an L2 term
    ``c ||theta||^2 / 2`` in the training loss; the decay's curvature the recursions add
    (``c u``) must then give the hypergradient autograd gives through that term."""
    prob = RidgePerFeature(n=30, d=4, random_state=0)
    decay = 0.7

    def with_l2(lam, theta):
        return prob.inner_loss(lam, theta) + 0.5 * decay * sum((t * t).sum() for t in theta)

    results = []
    for inner, extra in ((with_l2, {}), (prob.inner_loss, {"decoupled_decay": decay})):
        problem = BilevelProblem(prob.outer_loss, inner, None, prob.theta0)
        settings = InnerSettings(inner_lr=0.02, burn_in=4, n_samples=4, temperature=1e-3,
                                 recursion=recursion, curvature_every=2, **extra).validate()
        lam = [torch.full((4,), -1.0, dtype=DT, requires_grad=True)]
        state, gen = ChainState(), torch.Generator().manual_seed(0)
        for _ in range(5):
            res = hypergradient(problem, lam, state, settings, gen)
        results.append(res.grad[0])
    torch.testing.assert_close(results[1], results[0], rtol=1e-9, atol=1e-12)


def test_decoupled_decay_is_refused_where_there_is_no_sampler():
    with pytest.raises(ValueError, match="decoupled_decay"):
        InnerSettings(method="rmd", decoupled_decay=0.1).validate()
    with pytest.raises(ValueError, match="decoupled_decay"):
        InnerSettings(decoupled_decay=-0.1).validate()
