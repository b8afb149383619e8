"""The synthetic problems against truths computed independently of how they compute them."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from sgld_tuner.problems import RidgePerFeature, Synthetic1D, SyntheticQuadratic, ToyCubicRegression

torch.set_num_threads(1)


def test_synthetic_1d_exact_optimum_matches_line_search():
    lam_star, theta_star = Synthetic1D.exact_optimum()

    def response(lam):
        # Inner optimum straight from the cubic's stationarity condition, not theta_star().
        theta = np.roots([1.0, 0.0, -(1.0 - lam ** 2)]).max()
        return (lam - theta) ** 2 + (theta - 0.5) ** 2

    found = minimize_scalar(response, bounds=(0.0, 0.999), method="bounded",
                            options={"xatol": 1e-12})
    assert abs(found.x - lam_star) < 1e-6
    grid = np.linspace(0.0, 0.999, 1999)  # spacing 5e-4
    brute = grid[np.argmin([response(v) for v in grid])]
    assert abs(brute - lam_star) < 5e-4
    assert abs(theta_star - np.sqrt(1 - lam_star ** 2)) < 1e-12
    # The paper's 4-digit line search is close but not equal to the exact root.
    assert abs(lam_star - Synthetic1D.lam_star_paper) < 5e-4
    assert abs(theta_star - Synthetic1D.theta_star_paper) < 5e-4


def test_synthetic_1d_losses_and_noise():
    lam = torch.tensor([0.3], dtype=torch.float64)
    theta = torch.tensor([0.7], dtype=torch.float64)
    clean = Synthetic1D()
    assert float(clean.outer_loss(lam, theta)) == pytest.approx(0.4 ** 2 + 0.2 ** 2)
    assert float(clean.inner_loss(lam, theta)) == pytest.approx(0.7 ** 3 / 3 - 0.91 * 0.7)
    noisy_a = Synthetic1D(noisy=True, random_state=3)
    noisy_b = Synthetic1D(noisy=True, random_state=3)
    draws_a = [float(noisy_a.inner_loss(lam, theta)) for _ in range(200)]
    draws_b = [float(noisy_b.inner_loss(lam, theta)) for _ in range(200)]
    assert draws_a == draws_b                      # own seeded generator
    assert len(set(draws_a)) == 200                 # fresh noise every call
    # |eps1| theta^3 + |eps2| theta bounds the perturbation.
    bound = 0.3 * (0.7 ** 3 + 0.7)
    assert max(abs(d - float(clean.inner_loss(lam, theta))) for d in draws_a) <= bound + 1e-12


def test_ridge_exact_hypergradient_matches_finite_differences():
    problem = RidgePerFeature(n=40, d=6, random_state=0)
    lam = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    exact = problem.exact_hypergradient(lam)
    step = 1e-6
    fd = torch.empty(6, dtype=torch.float64)
    for j in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[j] = step
        fd[j] = (problem.response(lam + e) - problem.response(lam - e)) / (2 * step)
    assert torch.allclose(exact, fd, rtol=1e-6, atol=1e-10)
    # theta_star really is the inner minimiser: the inner gradient vanishes there.
    theta = problem.theta_star(lam).requires_grad_(True)
    grad = torch.autograd.grad(problem.inner_loss(lam, theta), theta)[0]
    assert float(grad.abs().max()) < 1e-12


def test_ridge_temperature_term_matches_gaussian_expectation():
    """At tau > 0 the objective is E_{N(theta*, tau H^-1)} f; differentiate that by FD."""
    problem = RidgePerFeature(n=30, d=4, random_state=1)
    lam = torch.tensor([0.2, -0.4, 0.1, 0.5], dtype=torch.float64)
    tau = 0.3
    gram_val = problem.X_val.T @ problem.X_val / problem.X_val.shape[0]

    def expected(lam):
        hinv = torch.linalg.inv(problem.hessian(lam))
        return problem.response(lam) + 0.5 * tau * torch.trace(gram_val @ hinv)

    fd = torch.stack([(expected(lam + 1e-6 * e) - expected(lam - 1e-6 * e)) / 2e-6
                      for e in torch.eye(4, dtype=torch.float64)])
    assert torch.allclose(problem.exact_hypergradient(lam, temperature=tau), fd,
                          rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("cond", [10.0, 1000.0])
def test_quadratic_optimum_is_optimal(cond):
    problem = SyntheticQuadratic(dim=8, condition_number=cond, random_state=0)
    eig = torch.linalg.eigvalsh(problem.A)
    assert float(eig.max() / eig.min()) == pytest.approx(cond, rel=1e-6)
    star = problem.optimum().requires_grad_(True)
    value = problem.response(star)
    grad = torch.autograd.grad(value, star)[0]
    assert float(grad.abs().max()) < 1e-10
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = star.detach() + 0.1 * torch.randn(8, generator=gen, dtype=torch.float64)
        assert float(problem.response(other)) > float(value.detach())
    assert problem.relative_error(star.detach()) == 0.0


def test_toy_cubic_every_enumerated_optimum_interpolates_training_data():
    toy = ToyCubicRegression()
    assert toy.training_table().shape == (21, 11)
    assert np.abs(toy.training_table()).max() < 1e-20
    # Independent check: fit the cubic through the training points by least squares with
    # lam and theta2 fixed; the residual must vanish for every grid point.
    for lam in toy.lam_grid[::5]:
        for t2 in toy.theta2_grid[::3]:
            theta = toy.inner_optimum(lam, t2)
            pred = lam * toy.x_train ** 3 + theta[2] * toy.x_train ** 2 + theta[1] * toy.x_train + theta[0]
            assert np.allclose(pred, toy.y_train, atol=1e-14)
    # The true quadratic (lam = 0, theta2 = -0.4) is on the grid and fits validation exactly.
    table = toy.validation_table()
    i, j = np.argmin(np.abs(toy.lam_grid)), np.argmin(np.abs(toy.theta2_grid + 0.4))
    assert table[i, j] < 1e-20
    assert toy.stochastic_choice(table) == 0.0


def test_toy_cubic_losses_accept_torch():
    toy = ToyCubicRegression()
    theta = torch.tensor(toy.inner_optimum(0.2, 0.4), requires_grad=True)
    value = toy.inner_loss(0.2, theta)
    assert float(value.detach()) < 1e-20
    assert torch.autograd.grad(toy.outer_loss(0.2, theta), theta)[0].shape == (3,)
