"""MAML-type start (theta0 = lam) on a pure few-shot problem, against finite differences.

The hyperparameters are only the initial weights of a tiny tanh regression net: neither loss
depends on ``lam`` except through the start, which is the MAML / first-order MAML / HPO-SGLD
setting of the few-shot benchmark (``benchmarks/fewshot_sinusoid.py``). The truth is a
central finite difference (float64) of the unrolled objective

    F(lam) = (1/M) sum_{m=B+1}^{B+M} f(theta_m(lam)),   theta_0 = lam,
    theta_m = theta_{m-1} - eta grad L_T(theta_{m-1})          (noise off: temperature = 0)

* ``rmd`` differentiates exactly that unroll (M = 1): agreement to 1e-6.
* ``sgld`` (eq. 22 with J0 = I) is a first-order expansion in ``eta * m``: small relative error at
  ``eta * m = 0.05`` and an error that shrinks as ``eta * m`` shrinks. First-order MAML (``rmd-fo``)
  drops the whole ``prod (I - eta H)`` factor, so its error is O(eta m); the recursion must beat it.
"""
import pytest
import torch

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient, make_generator
from sgld_tuner.core import _tree

DT = torch.float64
HIDDEN = 4


def _task():
    """One sinusoid task: 6 support points (inner loss) and 7 query points (outer loss)."""
    xs = torch.linspace(-2.0, 2.0, 6, dtype=DT).unsqueeze(1)
    xq = torch.linspace(-2.2, 2.1, 7, dtype=DT).unsqueeze(1)
    return xs, torch.sin(1.3 * xs + 0.4), xq, torch.sin(1.3 * xq + 0.4)


def _net(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def _losses():
    xs, ys, xq, yq = _task()

    def inner(lam, theta):  # support MSE; lam enters only through the start
        return ((_net(theta, xs) - ys) ** 2).mean()

    def outer(lam, theta):  # query MSE
        return ((_net(theta, xq) - yq) ** 2).mean()

    return outer, inner


def _lam0():
    g = torch.Generator().manual_seed(0)
    return [0.7 * torch.randn(HIDDEN, 1, generator=g, dtype=DT),
            0.1 * torch.randn(HIDDEN, generator=g, dtype=DT),
            0.5 * torch.randn(1, HIDDEN, generator=g, dtype=DT),
            torch.zeros(1, dtype=DT)]


def _maml_start(lam):
    return [t.clone() for t in lam]  # theta0 = lam: J0 = I


def _unrolled(outer, inner, lam, steps, eta, n_samples=1):
    theta = [t.clone().requires_grad_(True) for t in lam]
    total = 0.0
    for m in range(1, steps + 1):
        grads = torch.autograd.grad(inner(None, theta), theta, create_graph=True)
        theta = [t - eta * g for t, g in zip(theta, grads)]
        if m > steps - n_samples:
            total = total + outer(None, theta)
    return float(total.detach() / n_samples)


def _finite_difference(fn, lam, h=1e-5):
    out = []
    for i, leaf in enumerate(lam):
        for j in range(leaf.numel()):
            plus = [t.clone() for t in lam]
            minus = [t.clone() for t in lam]
            plus[i].view(-1)[j] += h
            minus[i].view(-1)[j] -= h
            out.append((fn(plus) - fn(minus)) / (2 * h))
    return torch.tensor(out, dtype=DT)


def _hypergradient(outer, inner, **settings):
    leaves, spec = _tree.flatten([t.clone().requires_grad_(True) for t in _lam0()])
    problem = BilevelProblem(outer, inner, spec, _maml_start)
    result = hypergradient(problem, leaves, ChainState(), InnerSettings(**settings).validate(),
                           make_generator(0))
    return torch.cat([g.reshape(-1) for g in result.grad])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps,eta", [(5, 0.01), (10, 0.05)])
def test_rmd_maml_start_is_exact(steps, eta):
    outer, inner = _losses()
    got = _hypergradient(outer, inner, method="rmd", n_inner=steps, inner_lr=eta)
    fd = _finite_difference(lambda l: _unrolled(outer, inner, l, steps, eta), _lam0())
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("recursion,shrink", [("paper", 0.35), ("damped", 0.6)])
def test_sgld_maml_start_matches_unroll_to_first_order(recursion, shrink):
    """(B, M) = (4, 1) as in the paper's few-shot setting; eta * m = 0.05, 0.025, 0.0125.

    Eq. 22 (``paper``) drops only O((eta m)^2) terms here, so halving eta * m should cut
    the error about 4x (asserted: < 0.35x). The ``damped`` recursion replaces the
    ``-eta H_T J0`` term by a scalar Rayleigh-quotient contraction, which is exact only
    along one direction: its error is first order, so halving should cut it about 2x
    (asserted: < 0.6x).
    """
    outer, inner = _losses()
    lam0, m = _lam0(), 5
    errors, fo_errors = [], []
    for eta in (0.01, 0.005, 0.0025):
        fd = _finite_difference(lambda l: _unrolled(outer, inner, l, m, eta), lam0)
        got = _hypergradient(outer, inner, method="sgld", recursion=recursion, burn_in=m - 1,
                             n_samples=1, inner_lr=eta, temperature=0.0)
        fo = _hypergradient(outer, inner, method="rmd-fo", n_inner=m, inner_lr=eta)
        errors.append(_rel(got, fd))
        fo_errors.append(_rel(fo, fd))
    assert errors[0] < 0.05, errors
    assert errors[1] < shrink * errors[0] and errors[2] < shrink * errors[1], errors
    # The second-order start terms (J0) must help: first-order MAML is worse at every eta.
    assert all(e < 0.5 * f for e, f in zip(errors, fo_errors)), (errors, fo_errors)


def test_sgld_maml_start_averages_retained_samples():
    """M > 1: h averages (grad_lam f + g_m) over the last M steps of the unroll."""
    outer, inner = _losses()
    lam0, burn_in, n_samples, eta = _lam0(), 2, 3, 0.01
    fd = _finite_difference(
        lambda l: _unrolled(outer, inner, l, burn_in + n_samples, eta, n_samples), lam0)
    got = _hypergradient(outer, inner, method="sgld", recursion="paper", burn_in=burn_in,
                         n_samples=n_samples, inner_lr=eta, temperature=0.0)
    assert _rel(got, fd) < 0.05


@pytest.mark.parametrize("steps,eta", [(5, 0.1), (20, 0.05)])
def test_damped_maml_start_is_exact_on_an_isotropic_quadratic(steps, eta):
    """Inner ``h/2 |theta - a|^2`` from ``theta_0 = lam``, outer ``|theta - b|^2 / 2``,
    plain gradient descent: ``theta_m = a + (1 - eta h)^m (lam - a)`` and the exact
    hypergradient is ``(1 - eta h)^m (theta_m - b)``. The damped recursion's Rayleigh
    quotient is exactly ``h`` here, so its contraction is the chain's; it used to damp each
    telescoped start term by the contractions after it, which is not that product (and
    shrank ``grad f(theta_0) J0`` by rho every step)."""
    h, a, b = 2.0, torch.tensor([1.0, -2.0, 0.5], dtype=DT), torch.tensor([0.3, 0.1, -1.0], dtype=DT)

    def inner(lam, theta):
        return 0.5 * h * ((theta[0] - a) ** 2).sum()

    def outer(lam, theta):
        return 0.5 * ((theta[0] - b) ** 2).sum()

    lam = torch.tensor([2.0, 1.0, -1.5], dtype=DT)
    leaves, spec = _tree.flatten([lam.clone().requires_grad_(True)])
    problem = BilevelProblem(outer, inner, spec, _maml_start)
    settings = InnerSettings(method="sgld", recursion="damped", burn_in=steps - 1, n_samples=1,
                             inner_lr=eta, temperature=0.0, curvature_every=1).validate()
    got = hypergradient(problem, leaves, ChainState(), settings, make_generator(0)).grad[0]
    shrink = (1.0 - eta * h) ** steps
    theta_m = a + shrink * (lam - a)
    torch.testing.assert_close(got, shrink * (theta_m - b), rtol=1e-10, atol=1e-12)
