"""The curvature guard for lam-dependent starts (``sgld_tuner.core.curvature``).

Truths: ``torch.linalg.eigvalsh`` of explicit float64 matrices for the power iteration; for
the guard, a quadratic inner loss ``0.5 (theta - c)^T A (theta - c)`` whose Hessian ``A``
is known, so ``eta * lambda_max`` is known exactly on either side of the bound.
"""
import math
import warnings

import pytest
import torch

from sgld_tuner.core import (BilevelProblem, ChainState, InnerSettings, hypergradient,
                             make_generator, minimize)
from sgld_tuner.core import _tree
from sgld_tuner.core.curvature import (DEFAULT_BOUND, CurvatureWarning, curvature_direction,
                                       inner_hvp, power_iteration, restore, top_eigenpair)

DT = torch.float64
DIM = 6


def _spd(seed, top=5.0):
    """Random symmetric positive definite matrix with eigenvalues in [0.1, 1] plus one ``top``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=DT))
    eig = torch.cat([torch.tensor([top], dtype=DT), 0.1 + 0.9 * torch.rand(DIM - 1, generator=g,
                                                                          dtype=DT)])
    return q @ torch.diag(eig) @ q.T


def _matrix_hvp(a):
    return lambda v: [a @ v[0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_matches_eigvalsh_spd(seed):
    g = torch.Generator().manual_seed(10 + seed)
    b = torch.randn(DIM, DIM, generator=g, dtype=DT)
    a = b @ b.T + 0.1 * torch.eye(DIM, dtype=DT)
    got = power_iteration(_matrix_hvp(a), [torch.zeros(DIM, dtype=DT)], n_iter=2000, tol=1e-14)
    assert got == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]), rel=1e-6)


def test_power_iteration_indefinite_returns_largest_magnitude():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=DT))
    a = q @ torch.diag(torch.tensor([-4.0, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=DT)) @ q.T
    got = power_iteration(_matrix_hvp(a), [torch.zeros(DIM, dtype=DT)], n_iter=2000, tol=1e-14)
    eig = torch.linalg.eigvalsh(a)
    assert got == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-6)


def test_power_iteration_few_steps_underestimates_only():
    """A Rayleigh quotient never exceeds lambda_max: a short budget errs on the low side."""
    a = _spd(4, top=5.0)
    top = float(torch.linalg.eigvalsh(a)[-1])
    for n_iter in (1, 2, 3, 10):
        got = power_iteration(_matrix_hvp(a), [torch.zeros(DIM, dtype=DT)], n_iter=n_iter, tol=0)
        assert got <= top * (1 + 1e-12)
    assert power_iteration(_matrix_hvp(a), [torch.zeros(DIM, dtype=DT)]) == pytest.approx(
        top, rel=2e-2)


def _quadratic(a):
    c = torch.linspace(-1.0, 1.0, DIM, dtype=DT)
    target = torch.linspace(0.5, -0.5, DIM, dtype=DT)

    def inner(lam, theta):
        d = theta - c
        return 0.5 * d @ a @ d

    def outer(lam, theta):
        return 0.5 * ((theta - target) ** 2).sum()

    return outer, inner


def test_inner_hvp_is_the_hessian_of_the_inner_loss():
    a = _spd(5)
    outer, inner = _quadratic(a)
    leaves, spec = _tree.flatten(torch.ones(DIM, dtype=DT, requires_grad=True))
    problem = BilevelProblem(outer, inner, spec, lambda l: l)
    problem.start(leaves)  # sets the theta structure (one tensor)
    hvp, like = inner_hvp(problem, leaves, [torch.zeros(DIM, dtype=DT)])
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(hvp([v])[0], a @ v)


def _run(a, lam_start=True, **settings):
    outer, inner = _quadratic(a)
    leaves, spec = _tree.flatten(torch.full((DIM,), 0.3, dtype=DT, requires_grad=True))
    theta0 = (lambda l: l.clone()) if lam_start else torch.zeros(DIM, dtype=DT)
    problem = BilevelProblem(outer, inner, spec, theta0)
    base = dict(method="sgld", burn_in=4, n_samples=2, temperature=1.0, noise_scale=0.1)
    return hypergradient(problem, leaves, ChainState(),
                         InnerSettings(**{**base, **settings}).validate(), make_generator(0))


def test_guard_acts_above_the_bound():
    a = _spd(6, top=5.0)
    top = float(torch.linalg.eigvalsh(a)[-1])
    eta = 3.0 / top  # eta * lambda_max = 3 > DEFAULT_BOUND
    with pytest.warns(CurvatureWarning, match="shrunk"):
        res = _run(a, inner_lr=eta)
    assert res.diagnostics["eta_lambda_max"] == pytest.approx(3.0, rel=2e-2)
    used = res.diagnostics["inner_lr_used"]
    assert used * top == pytest.approx(DEFAULT_BOUND, rel=2e-2)
    # The chain really ran with the shrunk step: same result as asking for it directly.
    ref = _run(a, inner_lr=used, curvature_bound=math.inf)
    for g, r in zip(res.grad, ref.grad):
        assert torch.equal(g, r)
    # A caller's bound is honoured too.
    with pytest.warns(CurvatureWarning):
        res = _run(a, inner_lr=eta, curvature_bound=2.0)
    assert res.diagnostics["inner_lr_used"] * top == pytest.approx(2.0, rel=2e-2)


@pytest.mark.parametrize("lam_start", [True, False])
def test_guard_silent_and_bit_identical_below_the_bound(lam_start):
    a = _spd(7, top=5.0)
    eta = 0.5 / float(torch.linalg.eigvalsh(a)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvatureWarning)
        res = _run(a, lam_start=lam_start, inner_lr=eta)
    off = _run(a, lam_start=lam_start, inner_lr=eta, curvature_bound=math.inf)
    for g, r in zip(res.grad, off.grad):
        assert torch.equal(g, r)
    assert res.outer_loss == off.outer_loss
    # Measured (and reported) only for a lam-dependent start by default.
    assert ("eta_lambda_max" in res.diagnostics) == lam_start
    if lam_start:
        assert res.diagnostics["inner_lr_used"] == eta


def test_lam_independent_start_not_guarded_by_default():
    a = _spd(8, top=5.0)
    eta = 3.0 / float(torch.linalg.eigvalsh(a)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvatureWarning)
        res = _run(a, lam_start=False, inner_lr=eta)
    assert "eta_lambda_max" not in res.diagnostics


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_curvature_bound_validated(bad):
    with pytest.raises(ValueError, match="curvature_bound"):
        InnerSettings(curvature_bound=bad).validate()


def test_minimize_with_callable_start_warns():
    a = _spd(9, top=5.0)
    outer, inner = _quadratic(a)
    eta = 3.0 / float(torch.linalg.eigvalsh(a)[-1])
    with pytest.warns(CurvatureWarning):
        res = minimize(outer, inner, torch.zeros(DIM, dtype=DT), lambda l: l.clone(),
                       n_outer=3, inner_lr=eta, burn_in=4, n_samples=1, temperature=0.0,
                       random_state=0)
    assert torch.isfinite(res.lam).all()


def test_restoring_direction_is_the_gradient_of_lambda_max():
    """Inner loss ``sum a_i theta_i^4 / 4``: ``H = diag(3 a_i theta_i^2)``, so at a start
    whose top eigenvalue is coordinate k, ``d lambda_max / d theta_0 = 6 a_k theta_k e_k``."""
    a = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=DT)
    lam = torch.tensor([0.5, 0.9, 0.3, -0.2], dtype=DT, requires_grad=True)
    leaves, spec = _tree.flatten(lam)
    problem = BilevelProblem(lambda l, t: (t ** 2).sum(), lambda l, t: (a * t ** 4).sum() / 4,
                             spec, lambda l: 2.0 * l)  # J0 = 2 I
    start = problem.start(leaves)
    hvp, like = inner_hvp(problem, leaves, start)
    top, vec = top_eigenpair(hvp, like, n_iter=200, tol=0.0)
    theta0 = 2.0 * lam.detach()
    assert top == pytest.approx(float((3 * a * theta0 ** 2).max()), rel=1e-8)
    got = curvature_direction(problem, leaves, start, vec)[0]
    want = torch.zeros(4, dtype=DT)
    want[1] = 6 * a[1] * theta0[1] * 2.0  # chain rule through theta_0 = 2 lam
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)
    # The restoring term: norm ||h|| * (excess) along d, so a descent step lowers lambda_max.
    h = [torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=DT)]
    out = restore(h, [got], scaled=3.0, bound=1.0)[0]
    torch.testing.assert_close(out - h[0], 2.0 * 2 ** 0.5 * got / got.norm())
