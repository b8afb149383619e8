"""The paper's synthetic bilevel problems as reusable objects.

Each problem exposes ``outer_loss(lam, theta)`` and ``inner_loss(lam, theta)`` returning
scalar tensors, plus a starting point ``lam0`` / ``theta0``, so it can be handed straight to
:func:`sgld_tuner.core.minimize`. Where the answer is known (in closed form or by a
one-dimensional root search) the problem also says what it is, so benchmarks and tests can
measure errors against an independent truth rather than against another solver.

Only torch and numpy are used here.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Synthetic1D", "ToyCubicRegression", "SyntheticQuadratic", "RidgePerFeature"]


def _seeded_generator(random_state) -> torch.Generator:
    gen = torch.Generator()
    if random_state is None:
        gen.seed()
    else:
        gen.manual_seed(int(random_state))
    return gen


class Synthetic1D:
    """The synthetic 1D bilevel problem of the paper's Sec. 4.1 (Tables 2 and 3).

    Outer loss ``L_V = (lam - theta)^2 + (theta - 1/2)^2`` and inner loss
    ``L_T = theta^3 / 3 - (1 - lam^2) theta`` on ``lam, theta in [0, 1]``; the inner
    minimiser is ``theta*(lam) = sqrt(1 - lam^2)``. With ``noisy=True`` the inner loss is
    eq. 27, ``(1/3 + eps1) theta^3 - (1 - lam^2 + eps2) theta`` with fresh
    ``eps1, eps2 ~ U(-noise, noise)`` on every call.

    Parameters
    ----------
    noisy : bool, default=False
        Perturb the inner loss at every call (eq. 27).
    noise : float, default=0.3
        Half-width of the uniform perturbations.
    random_state : int or None, default=None
        Seed of the problem's own ``torch.Generator`` for the perturbations, kept apart
        from the sampler's generator so the two streams do not interfere.
    dtype : torch.dtype, default=torch.float64

    Attributes
    ----------
    lam_star_paper, theta_star_paper : float
        The optimum quoted in the paper (0.7487, 0.6629), from its line search.
    lam0, theta0 : Tensor
        The start used in the paper's experiments, ``lam = theta = 0.5`` (shape ``(1,)``).
    """

    lam_star_paper = 0.7487
    theta_star_paper = 0.6629

    def __init__(self, noisy: bool = False, noise: float = 0.3, random_state=None,
                 dtype: torch.dtype = torch.float64):
        self.noisy = noisy
        self.noise = noise
        self.random_state = random_state
        self.dtype = dtype
        self.generator = _seeded_generator(random_state)

    @property
    def lam0(self) -> torch.Tensor:
        return torch.tensor([0.5], dtype=self.dtype)

    @property
    def theta0(self) -> torch.Tensor:
        return torch.tensor([0.5], dtype=self.dtype)

    @staticmethod
    def outer_loss(lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Validation loss ``(lam - theta)^2 + (theta - 1/2)^2`` (summed to a scalar)."""
        return ((lam - theta) ** 2 + (theta - 0.5) ** 2).sum()

    def inner_loss(self, lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Training loss; a fresh random perturbation per call when ``noisy``."""
        cubic, linear = 1.0 / 3.0, 1.0 - lam ** 2
        if self.noisy:
            eps = (torch.rand(2, generator=self.generator, dtype=self.dtype) * 2.0 - 1.0) * self.noise
            cubic, linear = cubic + eps[0], linear + eps[1]
        return (cubic * theta ** 3 - linear * theta).sum()

    @staticmethod
    def theta_star(lam):
        """Inner minimiser ``sqrt(1 - lam^2)`` of the noiseless inner loss on ``[0, 1]``."""
        return np.sqrt(1.0 - np.asarray(lam, dtype=float) ** 2)

    @classmethod
    def response(cls, lam):
        """``F(lam) = L_V(lam, theta*(lam))``, the deterministic bilevel objective."""
        lam = np.asarray(lam, dtype=float)
        theta = cls.theta_star(lam)
        return (lam - theta) ** 2 + (theta - 0.5) ** 2

    @classmethod
    def total_derivative(cls, lam):
        """``dF/dlam`` by the chain rule with ``dtheta*/dlam = -lam / theta*``."""
        lam = np.asarray(lam, dtype=float)
        theta = cls.theta_star(lam)
        dtheta = -lam / theta
        return 2.0 * (lam - theta) * (1.0 - dtheta) + 2.0 * (theta - 0.5) * dtheta

    @classmethod
    def exact_optimum(cls, tol: float = 1e-14) -> tuple[float, float]:
        """Minimiser of ``F`` on ``(0, 1)`` by bisection on its derivative.

        ``dF/dlam`` is negative at ``lam = 0`` (``F`` decreases away from it) and tends to
        ``+inf`` as ``lam -> 1``; the root in between is the minimiser. This is computed,
        not quoted, so it can be checked against the paper's 4-digit line search.

        Returns
        -------
        lam_star, theta_star : float
        """
        low, high = 1e-9, 1.0 - 1e-9
        if not (cls.total_derivative(low) < 0 < cls.total_derivative(high)):
            raise RuntimeError("dF/dlam does not change sign on (0, 1)")
        while high - low > tol:
            mid = 0.5 * (low + high)
            if cls.total_derivative(mid) < 0:
                low = mid
            else:
                high = mid
        lam = 0.5 * (low + high)
        return float(lam), float(cls.theta_star(lam))


class ToyCubicRegression:
    """The illustrative toy of the paper's Sec. 2.2 / Fig. 1.

    Data come from ``f_true(x) = -0.4 x^2 - 0.2 x - 0.3``: training set
    ``T = {(-0.75, -0.375), (0.75, -0.675)}``, validation set ``V = {(-0.5, -0.3), (0.5, -0.5)}``.
    The model is ``lam x^3 + theta2 x^2 + theta1 x + theta0`` with ``theta = (theta0, theta1,
    theta2)``; both losses are sums of squared residuals (on ``T`` and ``V``). With two
    training points and three free coefficients, every ``lam`` has a one-parameter family of
    exact interpolants (zero training loss), which we index by ``theta2``.

    Parameters
    ----------
    n_lam : int, default=21
        Grid of ``lam`` values (rows of Fig. 1(c)), equally spaced on ``lam_range``.
    n_theta : int, default=11
        Grid of inner optima per ``lam`` (columns), ``theta2`` equally spaced on
        ``theta2_range``. The defaults put ``theta2 = -0.4``, the true quadratic, in the
        fourth column as in the paper's figure.
    lam_range, theta2_range : tuple of float, default=(-1, 1)
    """

    x_train = np.array([-0.75, 0.75])
    y_train = np.array([-0.375, -0.675])
    x_val = np.array([-0.5, 0.5])
    y_val = np.array([-0.3, -0.5])

    def __init__(self, n_lam: int = 21, n_theta: int = 11, lam_range=(-1.0, 1.0),
                 theta2_range=(-1.0, 1.0)):
        self.lam_grid = np.linspace(lam_range[0], lam_range[1], n_lam)
        self.theta2_grid = np.linspace(theta2_range[0], theta2_range[1], n_theta)

    @staticmethod
    def predict(lam, theta, x):
        """Model output; ``theta = (theta0, theta1, theta2)`` (numpy or torch)."""
        return lam * x ** 3 + theta[2] * x ** 2 + theta[1] * x + theta[0]

    def inner_loss(self, lam, theta):
        """Training squared error (works for numpy arrays and torch tensors)."""
        x = self.x_train if isinstance(theta, np.ndarray) else torch.as_tensor(self.x_train)
        y = self.y_train if isinstance(theta, np.ndarray) else torch.as_tensor(self.y_train)
        return ((self.predict(lam, theta, x) - y) ** 2).sum()

    def outer_loss(self, lam, theta):
        """Validation squared error (works for numpy arrays and torch tensors)."""
        x = self.x_val if isinstance(theta, np.ndarray) else torch.as_tensor(self.x_val)
        y = self.y_val if isinstance(theta, np.ndarray) else torch.as_tensor(self.y_val)
        return ((self.predict(lam, theta, x) - y) ** 2).sum()

    def inner_optimum(self, lam: float, theta2: float) -> np.ndarray:
        """The interpolant with given ``lam`` and ``theta2``: solve for ``theta0, theta1``.

        What the cubic and quadratic terms leave unexplained must be fitted by the line
        ``theta1 x + theta0`` through both training points, which fixes it uniquely.
        """
        x1, x2 = self.x_train
        r1, r2 = self.y_train - lam * self.x_train ** 3 - theta2 * self.x_train ** 2
        theta1 = (r2 - r1) / (x2 - x1)
        theta0 = r1 - theta1 * x1
        return np.array([theta0, theta1, theta2])

    def enumerate_optima(self) -> np.ndarray:
        """All tabulated inner optima, shape ``(n_lam, n_theta, 3)``."""
        return np.array([[self.inner_optimum(lam, t2) for t2 in self.theta2_grid]
                         for lam in self.lam_grid])

    def validation_table(self) -> np.ndarray:
        """``L_V(lam_i, theta*_j(lam_i))`` for the whole grid, shape ``(n_lam, n_theta)``."""
        optima = self.enumerate_optima()
        return np.array([[self.outer_loss(lam, optima[i, j]) for j in range(optima.shape[1])]
                         for i, lam in enumerate(self.lam_grid)])

    def training_table(self) -> np.ndarray:
        """``L_T`` on the same grid (zero up to rounding: every entry is a global optimum)."""
        optima = self.enumerate_optima()
        return np.array([[self.inner_loss(lam, optima[i, j]) for j in range(optima.shape[1])]
                         for i, lam in enumerate(self.lam_grid)])

    def stochastic_choice(self, table: np.ndarray | None = None) -> float:
        """``lam`` minimising the row mean of the validation table.

        All enumerated optima have the same (zero) training loss, so ``p(theta | lam)``
        restricted to the grid is uniform at any temperature and the expectation of the
        stochastic formulation is the plain row average (Fig. 1(d)).
        """
        table = self.validation_table() if table is None else table
        return float(self.lam_grid[int(np.argmin(table.mean(axis=1)))])

    def deterministic_choice(self, rng: np.random.Generator, table: np.ndarray | None = None) -> float:
        """``lam`` chosen by a deterministic BLO that keeps one random optimum per ``lam``."""
        table = self.validation_table() if table is None else table
        columns = rng.integers(0, table.shape[1], size=table.shape[0])
        picked = table[np.arange(table.shape[0]), columns]
        return float(self.lam_grid[int(np.argmin(picked))])


class SyntheticQuadratic:
    """Convex quadratic bilevel problem with a known optimum (paper Supplement E.3).

    Inner loss ``L_T(lam, theta) = 1/2 (theta - lam)^T A (theta - lam)`` with ``A``
    symmetric positive definite of the requested condition number, so ``theta*(lam) = lam``
    and ``d theta*/d lam = I`` (although no method is told so: it must get there through
    ``A``). Outer loss ``f(lam, theta) = 1/2 ||theta - t||^2`` with a random target ``t``,
    hence ``lam* = t``. The inner condition number governs how fast descent converges and
    how hard ``A^{-1}`` is to approximate, which is what Table 15 probes; the outer problem
    is well conditioned (Hessian ``I``) so the outer learning rate 0.1 of the paper is stable.

    Parameters
    ----------
    dim : int
        Size of ``lam`` and ``theta``.
    condition_number : float
        ``max eig(A) / min eig(A)``.
    random_state : int or None
        Seeds the eigenbasis of ``A`` and the target ``t``.
    max_eigenvalue : float, default=1.0
        Largest eigenvalue of ``A``; eigenvalues are log-spaced down to
        ``max_eigenvalue / condition_number``. Keep ``inner_lr * max_eigenvalue < 2``
        (descent) and ``neumann_alpha * max_eigenvalue < 2`` (Neumann series).
    dtype : torch.dtype, default=torch.float64
    """

    def __init__(self, dim: int, condition_number: float, random_state=None,
                 max_eigenvalue: float = 1.0, dtype: torch.dtype = torch.float64):
        if dim < 1 or condition_number < 1:
            raise ValueError("need dim >= 1 and condition_number >= 1")
        self.dim = dim
        self.condition_number = condition_number
        gen = _seeded_generator(random_state)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=dtype))
        eig = max_eigenvalue * torch.logspace(0.0, -math.log10(condition_number), dim, dtype=dtype)
        self.eigenvalues = eig
        self.A = (q * eig) @ q.T
        self.A = 0.5 * (self.A + self.A.T)  # exact symmetry for the Hessian-based solvers
        self.target = torch.randn(dim, generator=gen, dtype=dtype)
        self.dtype = dtype

    @property
    def lam0(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype)

    @property
    def theta0(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype)

    def inner_loss(self, lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        diff = theta - lam
        return 0.5 * diff @ (self.A @ diff)

    def outer_loss(self, lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((theta - self.target) ** 2).sum()

    def theta_star(self, lam: torch.Tensor) -> torch.Tensor:
        """Inner minimiser, by a linear solve (equal to ``lam``)."""
        return torch.linalg.solve(self.A, self.A @ lam)

    def response(self, lam: torch.Tensor) -> torch.Tensor:
        """``F(lam) = f(lam, theta*(lam))``."""
        return self.outer_loss(lam, self.theta_star(lam))

    def optimum(self) -> torch.Tensor:
        """``lam*``: with ``theta* = lam`` and ``f = 1/2 ||theta - t||^2`` it is ``t``."""
        return self.target.clone()

    def relative_error(self, lam: torch.Tensor) -> float:
        """``||lam - lam*|| / ||lam*||``."""
        star = self.optimum()
        return float(torch.linalg.norm(lam.detach().to(star.dtype) - star) / torch.linalg.norm(star))


class RidgePerFeature:
    """Ridge regression with one penalty per feature, whose hypergradient is exact.

    Inner loss ``L_T = 1/(2n) ||X theta - y||^2 + 1/2 sum_j exp(lam_j) theta_j^2`` (the
    penalty is parameterised by its logarithm so any real ``lam`` is valid), outer loss
    ``f = 1/(2 n_val) ||X_val theta - y_val||^2``. The inner problem is a strongly convex
    quadratic, so ``theta*(lam) = H^{-1} X^T y / n`` with ``H = X^T X / n + diag(exp(lam))``,
    and the implicit function theorem gives the hypergradient in closed form.

    Parameters
    ----------
    n : int
        Training rows (the validation set has as many).
    d : int
        Features (= number of hyperparameters).
    random_state : int or None
        Seeds the design, the true coefficients (half of them zero, so per-feature
        penalties matter) and the label noise.
    noise : float, default=0.5
        Label noise standard deviation.
    dtype : torch.dtype, default=torch.float64
    """

    def __init__(self, n: int, d: int, random_state=None, noise: float = 0.5,
                 dtype: torch.dtype = torch.float64):
        gen = _seeded_generator(random_state)
        coef = torch.randn(d, generator=gen, dtype=dtype)
        coef[d // 2:] = 0.0
        self.coef = coef
        self.X = torch.randn(n, d, generator=gen, dtype=dtype)
        self.y = self.X @ coef + noise * torch.randn(n, generator=gen, dtype=dtype)
        self.X_val = torch.randn(n, d, generator=gen, dtype=dtype)
        self.y_val = self.X_val @ coef + noise * torch.randn(n, generator=gen, dtype=dtype)
        self.n, self.d, self.dtype = n, d, dtype

    @property
    def lam0(self) -> torch.Tensor:
        """``log`` penalty 0, i.e. unit penalties."""
        return torch.zeros(self.d, dtype=self.dtype)

    @property
    def theta0(self) -> torch.Tensor:
        return torch.zeros(self.d, dtype=self.dtype)

    def inner_loss(self, lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        resid = self.X @ theta - self.y
        return 0.5 * (resid @ resid) / self.n + 0.5 * (torch.exp(lam) * theta ** 2).sum()

    def outer_loss(self, lam: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        resid = self.X_val @ theta - self.y_val
        return 0.5 * (resid @ resid) / self.X_val.shape[0]

    def mixed_vjp(self, lam, theta, v):
        """``v^T d2 L_T / (d theta d lam)``: the penalty is separable, so it is elementwise."""
        return torch.exp(lam) * theta * v

    def hessian(self, lam: torch.Tensor) -> torch.Tensor:
        """Inner Hessian ``X^T X / n + diag(exp(lam))`` (constant in ``theta``)."""
        lam = lam.detach().to(self.dtype)
        return self.X.T @ self.X / self.n + torch.diag(torch.exp(lam))

    def theta_star(self, lam: torch.Tensor) -> torch.Tensor:
        """Exact inner minimiser by a linear solve."""
        return torch.linalg.solve(self.hessian(lam), self.X.T @ self.y / self.n)

    def response(self, lam: torch.Tensor) -> torch.Tensor:
        """``F(lam) = f(lam, theta*(lam))`` (differentiable through the solve)."""
        hess = self.X.T @ self.X / self.n + torch.diag(torch.exp(lam))
        theta = torch.linalg.solve(hess, self.X.T @ self.y / self.n)
        return self.outer_loss(lam, theta)

    def exact_hypergradient(self, lam: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
        """Exact ``d/d lam`` of the bilevel objective, in float64.

        At ``temperature = 0`` this is the implicit-function-theorem hypergradient of
        ``F(lam) = f(theta*(lam))``: with ``H`` the inner Hessian and
        ``D = d2 L_T / (d theta d lam) = diag(exp(lam) * theta*)``,
        ``dF/dlam = -D H^{-1} grad_theta f(theta*)``.

        At ``temperature = tau > 0`` it is the gradient of the stochastic objective
        ``E_{p(theta|lam)} f`` with ``p ∝ exp(-L_T / tau) = N(theta*, tau H^{-1})``: the
        outer loss is quadratic with Hessian ``G = X_val^T X_val / n_val``, so
        ``E f = f(theta*) + tau/2 tr(G H^{-1})`` and the extra term contributes
        ``-tau/2 exp(lam_j) (H^{-1} G H^{-1})_{jj}``. (A discretised Langevin chain with
        step ``eta`` samples a slightly wider Gaussian; that ``O(eta)`` effect is not
        included.)

        Parameters
        ----------
        lam : Tensor of shape (d,)
        temperature : float, default=0.0

        Returns
        -------
        Tensor of shape (d,), float64
        """
        lam = lam.detach().to(torch.float64)
        X, y = self.X.double(), self.y.double()
        Xv, yv = self.X_val.double(), self.y_val.double()
        n, n_val = X.shape[0], Xv.shape[0]
        hess = X.T @ X / n + torch.diag(torch.exp(lam))
        theta = torch.linalg.solve(hess, X.T @ y / n)
        grad_f = Xv.T @ (Xv @ theta - yv) / n_val
        grad = -torch.exp(lam) * theta * torch.linalg.solve(hess, grad_f)
        if temperature > 0:
            gram_val = Xv.T @ Xv / n_val
            hinv = torch.linalg.inv(hess)
            grad = grad - 0.5 * temperature * torch.exp(lam) * torch.diagonal(hinv @ gram_val @ hinv)
        return grad
