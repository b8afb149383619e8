"""The recursion strategies: one interface, state that survives copies, rollbacks and
pickles, and estimates checked against closed forms (float64)."""
import math
import pickle
from types import SimpleNamespace

import pytest
import torch

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient
from sgld_tuner.core import recursions
from sgld_tuner.core.recursions import RECURSIONS, StepProducts, make_recursion
from sgld_tuner.problems import RidgePerFeature
from sgld_tuner.search.chains import FoldChain, FoldChains

from _ridge import warm_chain_relative_error

DT = torch.float64


def _ridge_setup(recursion, seed=0):
    prob = RidgePerFeature(n=40, d=5, random_state=seed)
    problem = BilevelProblem(prob.outer_loss, prob.inner_loss, None, prob.theta0,
                             mixed_vjp=prob.mixed_vjp)
    settings = InnerSettings(inner_lr=0.1, burn_in=3, n_samples=3, temperature=1e-3,
                             recursion=recursion).validate()
    lam = [torch.zeros(5, dtype=DT, requires_grad=True)]
    return problem, settings, lam


@pytest.mark.parametrize("recursion", sorted(RECURSIONS))
@pytest.mark.parametrize("how", ["copy", "pickle"])
def test_strategy_state_survives_a_copy_and_a_pickle(recursion, how):
    """Continuing from a copied (or pickled, as ``save``/``load`` do) chain state gives the
    same next hypergradient as the uninterrupted chain, for every strategy."""
    problem, settings, lam = _ridge_setup(recursion)
    gen = torch.Generator().manual_seed(0)
    state = ChainState()
    for _ in range(3):
        hypergradient(problem, lam, state, settings, gen)
    saved = state.copy() if how == "copy" else pickle.loads(pickle.dumps(state))
    gen_state = gen.get_state()
    straight = hypergradient(problem, lam, state, settings, gen).grad[0]
    gen.set_state(gen_state)
    resumed = hypergradient(problem, lam, saved, settings, gen).grad[0]
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)
    if recursion in ("damped", "tracked"):  # these carry state: losing it must show
        gen.set_state(gen_state)
        fresh = ChainState(theta=saved.theta, n_steps=saved.n_steps)
        assert not torch.equal(hypergradient(problem, lam, fresh, settings, gen).grad[0], straight)


def test_tuner_rollback_restores_the_tracked_adjoint():
    """A rollback restores the whole chain state, the tracked adjoint included (it used to
    keep only theta, the damped tangent and the step count)."""
    problem, settings, lam = _ridge_setup("tracked")
    gen = torch.Generator().manual_seed(0)
    state = ChainState()
    hypergradient(problem, lam, state, settings, gen)
    fold = FoldChain(net=None, problem=SimpleNamespace(outer_generator=torch.Generator()),
                     bilevel=problem, state=state, generator=gen, X_val=None, y_val=None)
    chains = FoldChains([fold])
    checkpoint = chains.checkpoint()
    adjoint = [t.clone() for t in state.recursion.tensors["w"]]
    hypergradient(problem, lam, state, settings, gen)  # the step that gets rolled back
    assert not torch.equal(state.recursion.tensors["w"][0], adjoint[0])
    chains.restore(checkpoint)
    (restored,) = chains.folds
    torch.testing.assert_close(restored.state.recursion.tensors["w"][0], adjoint[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("recursion", ["tracked", "gibbs"])
def test_strategies_without_start_terms_refuse_a_lam_dependent_start(recursion):
    settings = InnerSettings(recursion=recursion).validate()
    with pytest.raises(ValueError, match="independent of lam"):
        make_recursion(settings, [torch.zeros(2)], start_depends_on_lam=True)


@pytest.mark.parametrize("recursion, expected_factor", [("tracked", 1.0), ("gibbs", 1 / 0.9)])
def test_gaussian_location_hypergradient(recursion, expected_factor):
    """``L_T = (theta - lam)^2 / 2`` at temperature 1: SGLD with step ``eta`` samples
    ``N(lam, 1 / (1 - eta/2))``, so ``E[theta^2 / 2]`` has derivative ``lam / (1 - eta/2)``,
    which the Gibbs identity estimates; the adjoint estimates the continuous-time
    (implicit-function) answer ``lam``. Both closed forms, eta = 0.2."""
    problem = BilevelProblem(lambda lam, th: 0.5 * (th ** 2).sum(),
                             lambda lam, th: 0.5 * ((th - lam) ** 2).sum(), None,
                             torch.zeros(1, dtype=DT))
    settings = InnerSettings(inner_lr=0.2, burn_in=100, n_samples=20000, temperature=1.0,
                             recursion=recursion).validate()
    lam = [torch.full((1,), 1.5, dtype=DT, requires_grad=True)]
    gen = torch.Generator().manual_seed(0)
    got = hypergradient(problem, lam, ChainState(), settings, gen).grad[0]
    assert abs(float(got) - 1.5 * expected_factor) < 0.1


def test_tracked_refreshed_every_k_steps_still_reaches_the_exact_ridge_hypergradient():
    """The lazy adjoint (double backward every 5th step only) converges to the same
    implicit-function answer along a persistent chain, only more slowly."""
    settings = InnerSettings(inner_lr=0.2, burn_in=5, n_samples=5, temperature=1e-8,
                             recursion="tracked", curvature_every=5).validate()
    assert warm_chain_relative_error(settings, rounds=200) < 0.02


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("recursion, every", [("tracked", 5), ("tracked", 2), ("gibbs", None)])
def test_steps_that_do_not_need_the_outer_gradient_skip_it_and_change_nothing(
        monkeypatch, recursion, every, closed_form):
    """The tracked adjoint reads ``grad_theta f`` only when it steps (every ``k``-th step)
    and the mixed product only on retained samples; the Gibbs identity reads neither.
    The steps in between evaluate the outer loss only on retained samples (Gibbs on every
    step, for its value), take no gradient in theta, skip the mixed product (and, without
    a closed form, the inner graph), and the hypergradient is exactly what the chain gives
    when every step takes them all."""
    prob = RidgePerFeature(n=40, d=5, random_state=0)
    calls = []

    def outer(lam, theta):
        calls.append(1)
        return prob.outer_loss(lam, theta)

    problem = BilevelProblem(outer, prob.inner_loss, None, prob.theta0,
                             mixed_vjp=prob.mixed_vjp if closed_form else None)
    settings = InnerSettings(inner_lr=0.1, burn_in=5, n_samples=5, temperature=1e-3,
                             recursion=recursion, curvature_every=every).validate()
    lam = [torch.full((5,), 0.1, dtype=DT, requires_grad=True)]

    def run():
        calls.clear()
        state, gen = ChainState(), torch.Generator().manual_seed(0)
        return [hypergradient(problem, lam, state, settings, gen) for _ in range(3)], len(calls)

    lazy, lazy_calls = run()
    monkeypatch.setattr(RECURSIONS[recursion], "needs_outer_gradient", lambda self, m: True)
    if recursion == "tracked":
        monkeypatch.setattr(RECURSIONS[recursion], "needs_mixed_at", lambda self, m: True)
    eager, eager_calls = run()
    for a, b in zip(lazy, eager):
        torch.testing.assert_close(a.grad[0], b.grad[0], rtol=0, atol=0)
        assert a.outer_loss == b.outer_loss
    assert eager_calls == 30
    # per outer iteration: the refresh steps in burn-in (m = 1, 3, 5 for k = 2) plus the
    # five retained steps; Gibbs reads f on every step.
    assert lazy_calls == {5: 3 * 6, 2: 3 * 8, None: 30}[every]


def test_an_outer_loss_declared_free_of_lam_is_evaluated_only_where_needed():
    """``outer_depends_on_lam=False``: the tracked chain evaluates ``f`` only on its
    adjoint steps and on its last step; the hypergradient is exactly the one of the same
    chain evaluating ``f`` on every retained sample, and the reported outer loss is the
    mean of the retained samples it evaluated."""
    prob = RidgePerFeature(n=40, d=5, random_state=0)
    values = []

    def outer(lam, theta):
        value = prob.outer_loss(lam, theta)
        values.append(float(value))
        return value

    settings = InnerSettings(inner_lr=0.1, burn_in=5, n_samples=5, temperature=1e-3,
                             recursion="tracked").validate()
    lam = [torch.full((5,), 0.1, dtype=DT, requires_grad=True)]
    results = {}
    for declared in (True, False):
        problem = BilevelProblem(outer, prob.inner_loss, None, prob.theta0,
                                 mixed_vjp=prob.mixed_vjp, outer_depends_on_lam=declared)
        values.clear()
        results[declared] = hypergradient(problem, lam, ChainState(), settings,
                                           torch.Generator().manual_seed(0))
        results[declared, "values"] = list(values)
    torch.testing.assert_close(results[False].grad[0], results[True].grad[0], rtol=0, atol=0)
    # default refresh every 5th step: m = 1 and 6, plus the last step m = 10
    assert len(results[True, "values"]) == 6 and len(results[False, "values"]) == 3
    evaluated = results[False, "values"][1:]  # m = 6 and m = 10, both retained
    assert results[False].outer_loss == pytest.approx(sum(evaluated) / 2)
    assert results[True].outer_loss == pytest.approx(sum(results[True, "values"][1:]) / 5)


@pytest.mark.parametrize("burn_in, n_samples, every, expected", [
    (5, 5, None, 5), (50, 50, None, 5), (1, 1, None, 1), (2, 2, None, 2), (3, 3, None, 3),
    (0, 1, None, 1), (1, 1, 4, 4), (5, 5, 1, 1)])
def test_the_tracked_adjoint_steps_every_5th_step_but_twice_per_outer_iteration(
        burn_in, n_samples, every, expected):
    settings = InnerSettings(inner_lr=0.1, burn_in=burn_in, n_samples=n_samples,
                             recursion="tracked", curvature_every=every).validate()
    recursion = make_recursion(settings, [torch.zeros(2)], start_depends_on_lam=False)
    assert recursion.refresh_every == expected
    steps = [m for m in range(1, burn_in + n_samples + 1) if recursion.needs_hessian(m)]
    assert steps[0] == 1 and (every is not None or len(steps) >= min(2, burn_in + n_samples))


def _adjoint_iterates(hessian, v, eta, steps, adjoint="accelerated"):
    """The tracked adjoint's updates fed directly: ``H w`` of a fixed matrix each step."""
    settings = InnerSettings(inner_lr=eta, burn_in=0, n_samples=1, recursion="tracked",
                             curvature_every=1, adjoint=adjoint).validate()
    recursion = make_recursion(settings, [torch.zeros(1, dtype=DT)], start_depends_on_lam=False)
    recursion.begin(None, [torch.zeros(len(v), dtype=DT)])
    for m in range(1, steps + 1):
        hess_w = [hessian @ recursion.w[0]]
        recursion.update(StepProducts(m=m, v=[v], mixed=None, hess_u=hess_w,
                                      outer_value=None))
    return recursion.w[0]


def test_the_tracked_adjoint_is_plain_gradient_descent_on_a_convex_problem():
    """No negative curvature and eta * h <= 1: the safeguard changes nothing, and the
    adjoint converges to H^-1 v (``adjoint="gradient"``: exactly the plain iteration;
    the accelerated default: to the same point)."""
    hessian, v = torch.diag(torch.tensor([2.0, 0.5], dtype=DT)), torch.tensor([1.0, 1.0], dtype=DT)
    w = torch.zeros(2, dtype=DT)
    for _ in range(300):
        w = w - 0.1 * (hessian @ w - v)
    got = _adjoint_iterates(hessian, v, 0.1, 300, adjoint="gradient")
    torch.testing.assert_close(got, w, rtol=0, atol=0)
    torch.testing.assert_close(got, torch.tensor([0.5, 2.0], dtype=DT), rtol=1e-5, atol=0)
    accelerated = _adjoint_iterates(hessian, v, 0.1, 300)
    torch.testing.assert_close(accelerated, torch.tensor([0.5, 2.0], dtype=DT), rtol=1e-8, atol=0)


@pytest.mark.parametrize("adjoint", ["accelerated", "gradient"])
@pytest.mark.parametrize("hessian", [[2.0, -1.0], [30.0, 1.0]])
def test_the_tracked_adjoint_stays_bounded_where_plain_iteration_diverges(hessian, adjoint):
    """Negative curvature (a learned loss) or eta * h > 2 (a chain the noise keeps
    stable): the plain iteration on ``H w = v`` blows up, the safeguarded one does not."""
    hessian, v = torch.diag(torch.tensor(hessian, dtype=DT)), torch.tensor([1.0, 1.0], dtype=DT)
    w = torch.zeros(2, dtype=DT)
    for _ in range(300):
        w = w - 0.1 * (hessian @ w - v)
    assert float(w.norm()) > 1e6
    got = _adjoint_iterates(hessian, v, 0.1, 300, adjoint=adjoint)
    assert torch.isfinite(got).all() and float(got.norm()) < 10.0


def _ill_conditioned_quadratic(d=10, kappa=1e3, seed=0):
    """``L_T = theta^T A theta / 2 - b^T theta + sum_j exp(lam_j) theta_j^2 / 2`` with ``A``'s
    spectrum log-spaced over ``[1 / kappa, 1]`` and penalties about ``0.1 / kappa``, outer
    ``f = |theta - t|^2 / 2``; the exact implicit-function hypergradient and ``lambda_max``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
    A = q @ torch.diag(torch.logspace(0, -float(torch.log10(torch.tensor(kappa))), d,
                                      dtype=DT)) @ q.T
    b, target = torch.randn(d, generator=gen, dtype=DT), torch.randn(d, generator=gen, dtype=DT)
    lam = (torch.log(torch.full((d,), 0.1 / kappa, dtype=DT))
           + torch.rand(d, generator=gen, dtype=DT) - 0.5)
    hessian = A + torch.diag(torch.exp(lam))
    star = torch.linalg.solve(hessian, b)
    problem = BilevelProblem(lambda lam_, th: 0.5 * ((th - target) ** 2).sum(),
                             lambda lam_, th: (0.5 * th @ (A @ th) - b @ th
                                               + 0.5 * (torch.exp(lam_) * th ** 2).sum()),
                             None, star,  # the chain starts at the optimum
                             mixed_vjp=lambda lam_, th, u: torch.exp(lam_) * th * u)
    exact = -torch.exp(lam) * star * torch.linalg.solve(hessian, star - target)
    return problem, lam, exact, float(torch.linalg.eigvalsh(hessian)[-1])


@pytest.mark.parametrize("adjoint", ["accelerated", "gradient"])
def test_the_accelerated_adjoint_converges_on_an_ill_conditioned_problem(adjoint):
    """Condition number about 1e3, the adjoint refreshed every 5th of 20 x 50 inner steps
    (200 refreshes): the plain iteration (the default) needs about kappa refreshes and
    is still at a fifth of the exact hypergradient's size (issue 23); the accelerated
    one (Nesterov with adaptive restart, about sqrt(kappa) refreshes) is within 5%."""
    problem, lam_value, exact, lambda_max = _ill_conditioned_quadratic()
    options = {"adjoint": adjoint}
    settings = InnerSettings(inner_lr=1.0 / lambda_max, burn_in=25, n_samples=25,
                             temperature=1e-10, **options).validate()
    lam = [lam_value.clone().requires_grad_(True)]
    state, gen = ChainState(), torch.Generator().manual_seed(0)
    for _ in range(20):
        got = hypergradient(problem, lam, state, settings, gen).grad[0]
    error = float((got - exact).norm() / exact.norm())
    if adjoint == "accelerated":
        assert error < 0.05
    else:  # the default: the test tells the two apart
        assert error > 0.5


def _adjoint_under_low_rank_minibatch_hessians(ratio, adjoint, steps=2000, dim=50, rank=10):
    """The tracked adjoint fed minibatch-like Hessians ``H_k = A_k^T A_k / dim`` (``A_k``:
    ``rank`` Gaussian rows, a new draw every step, as a net's Gauss-Newton over a
    minibatch), ``E[H_k] = rank / dim * I``, at ``eta = 0.5``; ``ratio`` is the runaway
    test's (``inf``: off). Returns the adjoint's mean over the later half of the steps
    (the hypergradient averages ``w`` over its samples), whether it was dropped, and
    ``E[H]^-1 v``."""
    settings = InnerSettings(inner_lr=0.5, burn_in=0, n_samples=steps, curvature_every=1,
                             adjoint=adjoint).validate()
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(dim, generator=gen, dtype=DT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recursions, "RUNAWAY_RATIO", ratio)
        recursion = make_recursion(settings, [torch.zeros(1, dtype=DT)],
                                   start_depends_on_lam=False)
        recursion.begin(None, [torch.zeros(dim, dtype=DT)])
        later = torch.zeros(dim, dtype=DT)
        for m in range(1, steps + 1):
            rows = torch.randn(rank, dim, generator=gen, dtype=DT)
            w = recursion.vector([v])[0]
            recursion.update(StepProducts(m=m, v=[v], mixed=None,
                                          hess_u=[rows.T @ (rows @ w) / dim],
                                          outer_value=None))
            if m > steps // 2:
                later += recursion.w[0] / (steps - steps // 2)
    return later, bool(recursion.plain), v * dim / rank


def test_a_runaway_accelerated_adjoint_is_dropped_for_the_plain_iteration():
    """Under minibatch Hessians that change every step (each curvature ``a h`` within the
    step cap on average, but not step by step) Nesterov's momentum grows the adjoint
    without bound while the plain iteration settles near ``E[H]^-1 v``; the runaway
    test drops the accelerated adjoint, which then lands near it as the plain one does. A
    plain iteration that settles is never dropped."""
    runaway, dropped, exact = _adjoint_under_low_rank_minibatch_hessians(math.inf, "accelerated")
    assert not dropped and not float(runaway.norm()) < 1e6 * float(exact.norm())
    guarded, dropped, _ = _adjoint_under_low_rank_minibatch_hessians(100.0, "accelerated")
    assert dropped
    plain, plain_dropped, _ = _adjoint_under_low_rank_minibatch_hessians(100.0, "gradient")
    assert not plain_dropped
    for got in (guarded, plain):
        assert float((got - exact).norm() / exact.norm()) < 0.1


def test_an_adjoint_that_already_overflowed_is_dropped_too():
    """A ``w`` that is no longer finite (a state saved before the runaway test, whose
    adjoint had overflowed) gives a NaN ``w^T H w``, which no ratio exceeds: it counts as
    a runaway, so after ``RUNAWAY_STEPS`` steps it restarts from zero and is finite."""
    settings = InnerSettings(inner_lr=0.1, burn_in=0, n_samples=10, curvature_every=1
                             ).validate()
    recursion = make_recursion(settings, [torch.zeros(1, dtype=DT)], start_depends_on_lam=False)
    recursion.begin(None, [torch.zeros(2, dtype=DT)])
    recursion.w = recursion.x = [torch.tensor([math.inf, 1.0], dtype=DT)]
    v = torch.tensor([1.0, 1.0], dtype=DT)
    for m in range(1, recursions.RUNAWAY_STEPS + 2):
        w = recursion.vector([v])[0]
        recursion.update(StepProducts(m=m, v=[v], mixed=None, hess_u=[2.0 * w],
                                      outer_value=None))
    assert bool(recursion.plain) and torch.isfinite(recursion.w[0]).all()
