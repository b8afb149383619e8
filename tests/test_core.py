"""The core against independent truths: finite differences of the unrolled problem (float64),
closed-form ridge hypergradients, and the paper's 1D optimum."""
import math
import warnings

import pytest
import torch

from sgld_tuner.core import (BilevelProblem, ChainState, InnerSettings, NonFiniteWarning,
                             UnusedHyperparameterWarning, hypergradient, make_generator, minimize)
from sgld_tuner.core import _tree

DT = torch.float64


def ridge_data(n=40, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    w_true = torch.randn(d, generator=g, dtype=DT)
    y = X @ w_true + 0.3 * torch.randn(n, generator=g, dtype=DT)
    Xv = torch.randn(n, d, generator=g, dtype=DT)
    yv = Xv @ w_true + 0.3 * torch.randn(n, generator=g, dtype=DT)
    return X, y, Xv, yv


def ridge_losses(X, y, Xv, yv):
    def inner(lam, w):  # per-feature penalties, lam on a log scale
        return 0.5 * ((X @ w - y) ** 2).mean() + 0.5 * (torch.exp(lam) * w ** 2).sum()

    def outer(lam, w):
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    return outer, inner


def ridge_exact(X, y, Xv, yv, lam):
    """Implicit-function hypergradient of the ridge optimum, in closed form."""
    n = X.shape[0]
    H = X.T @ X / n + torch.diag(torch.exp(lam))
    w = torch.linalg.solve(H, X.T @ y / n)
    grad_w = Xv.T @ (Xv @ w - yv) / Xv.shape[0]
    # d w*/d lam_j = -H^-1 e_j exp(lam_j) w_j
    return -torch.exp(lam) * w * torch.linalg.solve(H, grad_w)


def unrolled_value(outer, inner, lam, theta0, steps, eta):
    # Values only (finite differences): the start's graph to lam is not needed here.
    start = theta0(lam) if callable(theta0) else theta0
    theta = start.detach().clone().requires_grad_(True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(inner(lam, theta), theta, create_graph=True)
        theta = theta - eta * g
    return outer(lam, theta)


def finite_difference(fn, lam, h=1e-5):
    out = torch.zeros_like(lam)
    for j in range(lam.numel()):
        e = torch.zeros_like(lam)
        e.view(-1)[j] = h
        out.view(-1)[j] = (fn(lam + e) - fn(lam - e)) / (2 * h)
    return out


def one_hypergradient(outer, inner, lam, theta0, **settings):
    lam_leaves, spec = _tree.flatten(lam.clone().requires_grad_(True))
    problem = BilevelProblem(outer, inner, spec, theta0)
    settings = InnerSettings(**settings).validate()
    return hypergradient(problem, lam_leaves, ChainState(), settings, make_generator(0))


@pytest.fixture
def ridge():
    X, y, Xv, yv = ridge_data()
    outer, inner = ridge_losses(X, y, Xv, yv)
    lam = torch.tensor([-1.0, 0.0, -2.0, 0.5], dtype=DT)
    return outer, inner, lam, (X, y, Xv, yv)


@pytest.mark.parametrize("method", ["rmd", "fmd"])
def test_unrolled_methods_equal_finite_differences(ridge, method):
    outer, inner, lam, _ = ridge
    theta0 = torch.zeros(4, dtype=DT)
    steps, eta = 15, 0.1
    res = one_hypergradient(outer, inner, lam, theta0, method=method, n_inner=steps, inner_lr=eta)
    fd = finite_difference(
        lambda l: unrolled_value(outer, inner, l, theta0, steps, eta).detach(), lam)
    torch.testing.assert_close(res.grad[0], fd, rtol=1e-6, atol=1e-9)


def test_fmd_handles_lam_dependent_start(ridge):
    outer, inner, lam, _ = ridge
    start = lambda l: 0.3 * torch.tanh(l)  # noqa: E731  (a start that depends on lam)
    res = one_hypergradient(outer, inner, lam, start, method="fmd", n_inner=5, inner_lr=0.1)
    fd = finite_difference(lambda l: unrolled_value(outer, inner, l, start, 5, 0.1).detach(), lam)
    torch.testing.assert_close(res.grad[0], fd, rtol=1e-6, atol=1e-9)


def test_rmd_fo_keeps_only_direct_and_start_terms(ridge):
    outer, inner, lam, _ = ridge
    res = one_hypergradient(outer, inner, lam, torch.zeros(4, dtype=DT), method="rmd-fo",
                            n_inner=10, inner_lr=0.1)
    # The outer loss has no direct lam term and the start is independent of lam.
    assert torch.count_nonzero(res.grad[0]) == 0


@pytest.mark.parametrize("method,options", [
    ("ift-cg", {"cg_iters": 20, "cg_damping": 0.0}),
    ("ift-neumann", {"neumann_iters": 300, "neumann_alpha": 0.5}),
])
def test_ift_approaches_closed_form_ridge(ridge, method, options):
    outer, inner, lam, data = ridge
    res = one_hypergradient(outer, inner, lam, torch.zeros(4, dtype=DT), method=method,
                            n_inner=2000, inner_lr=0.3, **options)
    exact = ridge_exact(*data, lam)
    torch.testing.assert_close(res.grad[0], exact, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("recursion", ["paper", "damped"])
def test_sgld_without_noise_matches_unrolled_derivative_to_first_order(ridge, recursion):
    """Noise off, small eta * m: the recursion is the unrolled derivative up to O((eta m)^2)."""
    outer, inner, lam, _ = ridge
    theta0 = torch.tensor([0.5, -0.3, 0.8, 0.1], dtype=DT)
    errors = []
    for eta in (0.01, 0.005, 0.0025):
        m = 5
        res = one_hypergradient(outer, inner, lam, theta0, method="sgld", recursion=recursion,
                                burn_in=m - 1, n_samples=1, inner_lr=eta, temperature=0.0,
                                chain="restart")
        fd = finite_difference(
            lambda l: unrolled_value(outer, inner, l, theta0, m, eta).detach(), lam)
        errors.append(float((res.grad[0] - fd).norm() / fd.norm()))
    # Measured: paper 6.0%, 2.9%, 1.4%; damped 2.7%, 1.3%, 0.65%.
    assert errors[0] < (0.07 if recursion == "paper" else 0.03)
    # First order: halving eta * m halves the relative error.
    assert errors[1] < 0.6 * errors[0] and errors[2] < 0.6 * errors[1]


def test_sgld_maml_start_matches_finite_differences_to_first_order(ridge):
    outer, inner, lam, _ = ridge
    start = lambda l: l.clone()  # noqa: E731  theta0 = lam, the MAML-type start (J0 = I)
    errors = []
    for eta in (0.02, 0.01):
        res = one_hypergradient(outer, inner, lam, start, method="sgld", recursion="paper",
                                burn_in=2, n_samples=1, inner_lr=eta, temperature=0.0)
        fd = finite_difference(lambda l: unrolled_value(outer, inner, l, start, 3, eta).detach(), lam)
        errors.append(float((res.grad[0] - fd).norm() / fd.norm()))
    assert errors[0] < 0.02 and errors[1] < 0.6 * errors[0]


def test_damped_persistent_chain_approaches_exact_ridge_hypergradient(ridge):
    outer, inner, lam, data = ridge
    lam_leaves, spec = _tree.flatten(lam.clone().requires_grad_(True))
    problem = BilevelProblem(outer, inner, spec, torch.zeros(4, dtype=DT))
    settings = InnerSettings(method="sgld", inner_lr=0.1, burn_in=0, n_samples=50,
                             temperature=0.0).validate()
    state, gen = ChainState(), make_generator(0)
    for _ in range(20):  # warm the persistent chain and its tangent at fixed lam
        res = hypergradient(problem, lam_leaves, state, settings, gen)
    exact = ridge_exact(*data, lam)
    cosine = torch.nn.functional.cosine_similarity(res.grad[0], exact, dim=0)
    assert cosine > 0.95
    assert float((res.grad[0] - exact).norm() / exact.norm()) < 0.35


def test_damped_recursion_is_exact_in_one_dimension():
    outer = lambda l, t: (l - t) ** 2 + (t - 0.5) ** 2  # noqa: E731
    inner = lambda l, t: t ** 3 / 3 - (1 - l ** 2) * t  # noqa: E731
    lam = torch.tensor(0.6, dtype=DT)
    lam_leaves, spec = _tree.flatten(lam.clone().requires_grad_(True))
    problem = BilevelProblem(outer, inner, spec, torch.tensor(0.5, dtype=DT))
    settings = InnerSettings(inner_lr=0.05, burn_in=0, n_samples=100, temperature=0.0)
    state, gen = ChainState(), make_generator(0)
    for _ in range(10):
        res = hypergradient(problem, lam_leaves, state, settings, gen)
    theta = math.sqrt(1 - 0.6 ** 2)
    exact = 2 * (0.6 - theta) + (4 * theta - 1.2 - 1) * (-0.6 / theta)
    assert abs(float(res.grad[0]) - exact) < 1e-3 * abs(exact) + 1e-6


@pytest.mark.parametrize("method", ["sgld", "ift-cg"])
def test_paper_1d_optimum(method):
    outer = lambda l, t: (l - t) ** 2 + (t - 0.5) ** 2  # noqa: E731
    inner = lambda l, t: t ** 3 / 3 - (1 - l ** 2) * t  # noqa: E731
    res = minimize(outer, inner, torch.tensor(0.5, dtype=DT), torch.tensor(0.5, dtype=DT),
                   method=method, n_outer=60, outer_lr=0.02, inner_lr=0.02, burn_in=10,
                   n_samples=10, temperature=1e-6, random_state=0)
    assert abs(float(res.lam) - 0.748936) < 2e-3
    assert len(res.history) == 60 and {"outer_loss", "hypergrad_norm", "time_s"} <= set(res.history)


def test_million_hyperparameters_never_form_a_matrix():
    n = 1_000_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)

    def inner(lam, theta):
        return 0.5 * ((theta - x) ** 2).mean() + (torch.nn.functional.softplus(lam) * theta.abs()).sum() / n

    def outer(lam, theta):
        return 0.5 * ((theta - 0.5 * x) ** 2).mean()

    res = minimize(outer, inner, torch.zeros(n), torch.zeros(n), n_outer=1, burn_in=1,
                   n_samples=1, inner_lr=0.1, temperature=1e-6, random_state=0)
    assert res.lam.shape == (n,) and bool(torch.isfinite(res.lam).all())


def test_structured_lam_and_theta():
    def inner(lam, theta):
        return ((theta["w"] - 1) ** 2).sum() + lam[0] * (theta["w"] ** 2).sum() + lam[1] * theta["b"] ** 2

    def outer(lam, theta):
        return ((theta["w"] - 0.5) ** 2).sum() + theta["b"] ** 2

    res = minimize(outer, inner, (torch.tensor(0.1), torch.tensor(0.2)),
                   {"w": torch.zeros(3), "b": torch.tensor(1.0)}, n_outer=3, burn_in=2,
                   n_samples=2, inner_lr=0.1, random_state=0)
    assert isinstance(res.lam, tuple) and set(res.theta) == {"w", "b"}


def test_same_seed_same_result_different_seed_differs():
    outer = lambda l, t: ((t - 1) ** 2).sum()  # noqa: E731
    inner = lambda l, t: (l * t ** 2).sum() - t.sum()  # noqa: E731
    kwargs = dict(n_outer=3, burn_in=2, n_samples=2, inner_lr=0.05, temperature=0.5)
    a = minimize(outer, inner, torch.ones(3), torch.zeros(3), random_state=1, **kwargs)
    b = minimize(outer, inner, torch.ones(3), torch.zeros(3), random_state=1, **kwargs)
    c = minimize(outer, inner, torch.ones(3), torch.zeros(3), random_state=2, **kwargs)
    assert torch.equal(a.lam, b.lam) and not torch.equal(a.lam, c.lam)


def test_callback_stops_and_bounds_project():
    outer = lambda l, t: (t - 2.0) ** 2  # noqa: E731
    inner = lambda l, t: (t - l) ** 2  # noqa: E731
    seen = []
    res = minimize(outer, inner, torch.tensor(0.0), torch.tensor(0.0), n_outer=50, outer_lr=1.0,
                   burn_in=2, n_samples=2, inner_lr=0.2, temperature=0.0, bounds=(0.0, 0.3),
                   callback=lambda rec: seen.append(rec["iteration"]) or rec["iteration"] >= 4)
    assert seen == [0, 1, 2, 3, 4] and res.n_iter == 5
    assert 0.0 <= float(res.lam) <= 0.3 + 1e-6  # float32 rounding of the bound


def test_bounds_per_leaf_hold_every_leaf_and_bad_bounds_are_named():
    """Each leaf is clamped to its own pair (the outer loss pushes both past them), the
    per-leaf form works for a single leaf, and a wrong number of pairs or low > high is
    refused before any step."""
    outer = lambda l, t: -(l[0] + l[1]).sum() + (t ** 2).sum()  # noqa: E731
    inner = lambda l, t: ((t - 1.0) ** 2).sum()  # noqa: E731
    kw = dict(n_outer=20, burn_in=1, n_samples=1, temperature=0.0, outer_lr=1.0,
              random_state=0)
    lam0 = (torch.zeros(1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    res = minimize(outer, inner, lam0, torch.zeros(2, dtype=torch.float64),
                   bounds=[(-1.0, 1.0), (None, 2.5)], **kw)
    assert float(res.lam[0]) == 1.0 and res.lam[1].tolist() == [2.5, 2.5]
    one = minimize(lambda l, t: -l.sum() + (t ** 2).sum(), inner,
                   torch.zeros(1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                   bounds=[(0.0, 0.5)], **kw)
    assert float(one.lam) == 0.5
    box = (torch.tensor([-1.0, 0.0], dtype=torch.float64),
           torch.tensor([1.0, 0.25], dtype=torch.float64))  # elementwise, as before
    boxed = minimize(lambda l, t: -l.sum() + (t ** 2).sum(), inner,
                     torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                     bounds=box, **kw)
    assert boxed.lam.tolist() == [1.0, 0.25]
    open_second = minimize(outer, inner, lam0, torch.zeros(2, dtype=torch.float64),
                           bounds=[(-1.0, 1.0), None], **kw)
    assert float(open_second.lam[0]) == 1.0 and float(open_second.lam[1].min()) > 2.5
    for bad, match in [([(-1.0, 1.0)], "2 leaves and bounds 1 pairs"),
                       ((1.0, -1.0), "low must be <= high"),
                       ([(0.0, 1.0), (0.0,)], r"\(low, high\) pair")]:
        with pytest.raises(ValueError, match=match):
            minimize(outer, inner, lam0, torch.zeros(2, dtype=torch.float64), bounds=bad, **kw)


def test_ift_neumann_steps_at_the_inner_lr_and_warns_when_its_series_grows():
    """Ridge regression, whose hypergradient has a closed form: the Neumann series at its
    default step (the inner lr, stable where the inner descent is) lands within 3% of
    it; a step of 0.99, above 2 / lambda_max (about 4.6 here), diverges and says so."""
    from sgld_tuner.core.baselines import NeumannWarning

    g = torch.Generator().manual_seed(0)
    n, d = 60, 5
    X, w = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g,
                                                                          dtype=torch.float64)
    y = X @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    Xv = torch.randn(n, d, generator=g, dtype=torch.float64)
    yv = Xv @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    inner = lambda l, t: ((X @ t - y) ** 2).mean() + 0.5 * torch.exp(l) * (t ** 2).sum()  # noqa: E731
    outer = lambda l, t: ((Xv @ t - yv) ** 2).mean()  # noqa: E731

    def closed(lam):
        eye = torch.eye(d, dtype=torch.float64)
        theta = torch.linalg.solve(X.T @ X / n + 0.5 * torch.exp(lam) * eye, X.T @ y / n)
        return ((Xv @ theta - yv) ** 2).mean()

    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    exact = float(torch.autograd.grad(closed(lam), lam)[0])

    def hypergradient(**options):
        res = minimize(outer, inner, torch.tensor(0.5, dtype=torch.float64),
                       torch.zeros(d, dtype=torch.float64), method="ift-neumann", n_outer=1,
                       outer_lr=1.0, inner_lr=0.1, n_inner=300, temperature=0.0,
                       random_state=0, method_options=options or None)
        return 0.5 - float(res.lam)

    with warnings.catch_warnings():
        warnings.simplefilter("error", NeumannWarning)
        assert hypergradient() == pytest.approx(exact, rel=0.03)
    with pytest.warns(NeumannWarning, match="neumann_alpha=0.99"):
        hypergradient(neumann_alpha=0.99)


def test_non_scalar_loss_names_the_iteration():
    with pytest.raises(ValueError, match="outer iteration 0.*scalar"):
        minimize(lambda l, t: t, lambda l, t: (t ** 2).sum(), torch.tensor(1.0), torch.zeros(3),
                 n_outer=1, burn_in=1, n_samples=1)


def test_unused_lam_warns():
    with pytest.warns(UnusedHyperparameterWarning, match="outer iteration 0"):
        minimize(lambda l, t: ((t - 1) ** 2).sum(), lambda l, t: (t ** 2).sum(),
                 torch.tensor(1.0), torch.zeros(2), n_outer=1, burn_in=1, n_samples=1)


def test_first_order_rmd_says_when_it_cannot_move_lam():
    """A lam that reaches the outer loss only through the inner loss gets a zero
    first-order hypergradient (its only path is the dropped mixed derivative): a warning
    says so; through the chain's start (first-order MAML) it moves, without one."""
    outer = lambda l, t: ((t - 1.0) ** 2).sum()  # noqa: E731
    inner = lambda l, t: ((t - l) ** 2).sum()  # noqa: E731
    kw = dict(method="rmd-fo", n_outer=2, n_inner=3, inner_lr=0.1, outer_lr=0.5,
              temperature=0.0)
    with pytest.warns(UnusedHyperparameterWarning, match="rmd-fo.*will not move"):
        res = minimize(outer, inner, torch.tensor(0.0), torch.zeros(2), **kw)
    assert float(res.lam) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedHyperparameterWarning)
        moved = minimize(outer, lambda l, t: (t ** 2).sum(), torch.tensor(0.0),
                         lambda l: l * torch.ones(2), **kw)
    assert float(moved.lam) != 0.0


def test_non_finite_loss_keeps_last_finite_lam():
    calls = {"n": 0}

    def inner(lam, t):
        calls["n"] += 1
        bad = calls["n"] > 12  # finite through the probe and the first outer iterations
        return (t - lam) ** 2 + (float("nan") if bad else 0.0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = minimize(lambda l, t: (t - 1.0) ** 2, inner, torch.tensor(0.0), torch.tensor(0.0),
                       n_outer=20, outer_lr=0.1, burn_in=2, n_samples=2, inner_lr=0.1,
                       temperature=0.0)
    assert any(issubclass(w.category, NonFiniteWarning) and "outer iteration" in str(w.message)
               for w in caught)
    assert not res.success and math.isfinite(float(res.lam)) and float(res.lam) != 0.0
    assert res.n_iter >= 1


def test_a_chain_that_blows_up_without_nan_stops_like_one():
    """Inner curvature exp(lam) grows with lam; past exp(lam) = 1/inner_lr (lam = 0 here)
    gradient descent on it multiplies (t - lam) by |1 - 2 exp(lam) inner_lr| > 1 every
    step: the outer loss climbs by orders of magnitude while staying finite. The run
    stops there like at a NaN (it ran on to 1e32 and beyond before)."""
    def inner(lam, t):
        return torch.exp(lam) * (t - lam) ** 2

    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = minimize(lambda l, t: (t - 3.0) ** 2, inner, torch.tensor(-1.0),
                       torch.tensor(0.0), n_outer=60, outer_lr=0.3, outer_optimizer="sgd",
                       burn_in=10, n_samples=10, inner_lr=1.0, temperature=0.0,
                       callback=lambda r: seen.append(r["outer_loss"]))
    assert any(issubclass(w.category, NonFiniteWarning) and "blown up" in str(w.message)
               for w in caught)
    assert not res.success and 0 < res.n_iter < 60
    assert max(seen) < 1e3 * (9.0 + 1e-3)  # no accepted iteration past the limit
    assert math.isfinite(float(res.lam))


@pytest.mark.parametrize("bad", [{"method": "adam"}, {"temperature": -1.0}, {"n_samples": 0},
                                 {"burn_in": -1}, {"chain": "forever"}, {"n_outer": 0}])
def test_invalid_knobs_raise(bad):
    kwargs = dict(n_outer=1, burn_in=1, n_samples=1)
    kwargs.update(bad)
    with pytest.raises(ValueError):
        minimize(lambda l, t: t ** 2, lambda l, t: (t - l) ** 2, torch.tensor(1.0),
                 torch.tensor(0.0), **kwargs)


def _ridge_mixed_vjp(lam, w, v):
    # d/dlam of grad_w [0.5 * sum exp(lam) w^2] = exp(lam) * w, elementwise
    return torch.exp(lam) * w * v


def _warm_ridge_hypergradient(ridge, mixed_vjp, curvature_every, rounds=15):
    outer, inner, lam, _ = ridge
    lam_leaves, spec = _tree.flatten(lam.clone().requires_grad_(True))
    problem = BilevelProblem(outer, inner, spec, torch.zeros(4, dtype=DT), mixed_vjp=mixed_vjp)
    settings = InnerSettings(inner_lr=0.1, burn_in=0, n_samples=20, temperature=0.0,
                             curvature_every=curvature_every).validate()
    state, gen = ChainState(), make_generator(0)
    for _ in range(rounds):
        res = hypergradient(problem, lam_leaves, state, settings, gen)
    return res.grad[0]


def test_closed_form_mixed_derivative_equals_autograd_in_the_damped_recursion(ridge):
    with_closed = _warm_ridge_hypergradient(ridge, _ridge_mixed_vjp, curvature_every=1)
    with_autograd = _warm_ridge_hypergradient(ridge, None, curvature_every=1)
    torch.testing.assert_close(with_closed, with_autograd, rtol=1e-10, atol=1e-12)


def test_sparse_curvature_refresh_stays_close_to_every_step(ridge):
    every = _warm_ridge_hypergradient(ridge, _ridge_mixed_vjp, curvature_every=1)
    sparse = _warm_ridge_hypergradient(ridge, _ridge_mixed_vjp, curvature_every=20)
    cosine = torch.nn.functional.cosine_similarity(every, sparse, dim=0)
    assert cosine > 0.99 and float((every - sparse).norm() / every.norm()) < 0.1


def test_tracked_recursion_reaches_the_exact_ridge_hypergradient(ridge):
    """The adjoint variant has no one-direction floor: it converges to the IFT answer."""
    outer, inner, lam, data = ridge
    lam_leaves, spec = _tree.flatten(lam.clone().requires_grad_(True))
    problem = BilevelProblem(outer, inner, spec, torch.zeros(4, dtype=DT))
    settings = InnerSettings(inner_lr=0.1, burn_in=0, n_samples=50, temperature=0.0,
                             recursion="tracked").validate()
    state, gen = ChainState(), make_generator(0)
    for _ in range(20):
        res = hypergradient(problem, lam_leaves, state, settings, gen)
    exact = ridge_exact(*data, lam)
    assert float((res.grad[0] - exact).norm() / exact.norm()) < 1e-3


def test_tracked_recursion_refuses_a_lam_dependent_start(ridge):
    outer, inner, lam, _ = ridge
    with pytest.raises(ValueError, match="tracked"):
        one_hypergradient(outer, inner, lam, lambda l: l.clone(), recursion="tracked",
                          burn_in=1, n_samples=1)


def test_projection_callable_is_applied_after_each_step():
    def onto_simplex_like(lam):  # keep the two weights positive and summing to one
        clipped = lam.clamp(min=1e-6)
        return clipped / clipped.sum()

    res = minimize(lambda l, t: ((t - torch.tensor([1.0, 0.0])) ** 2).sum(),
                   lambda l, t: ((t - 3 * l) ** 2).sum(), torch.tensor([0.5, 0.5]),
                   torch.zeros(2), n_outer=5, outer_lr=0.1, burn_in=1, n_samples=1,
                   inner_lr=0.2, temperature=0.0, projection=onto_simplex_like)
    assert float(res.lam.sum()) == pytest.approx(1.0) and bool((res.lam > 0).all())


def test_minimize_lr_warmup_ramps_the_outer_step():
    """A deterministic inner problem (temperature 0): the first outer SGD step with
    lr_warmup=4 is a quarter of the unramped one (same first hypergradient)."""
    def outer(lam, theta):
        return ((theta - 1.0) ** 2).sum()

    def inner(lam, theta):
        return ((theta - lam) ** 2).sum()

    kw = dict(n_outer=1, outer_lr=0.1, inner_lr=0.1, burn_in=2, n_samples=2,
              temperature=0.0, random_state=0)
    full = minimize(outer, inner, torch.tensor([0.0]), torch.tensor([0.0]), **kw)
    ramped = minimize(outer, inner, torch.tensor([0.0]), torch.tensor([0.0]), lr_warmup=4,
                      **kw)
    assert float(full.lam) != 0.0
    assert float(ramped.lam) == pytest.approx(0.25 * float(full.lam), rel=1e-6)
    with pytest.raises(ValueError, match="lr_warmup"):
        minimize(outer, inner, torch.tensor([0.0]), torch.tensor([0.0]), lr_warmup=-1, **kw)
