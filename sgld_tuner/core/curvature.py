"""Curvature guard for lam-dependent (MAML-type) starts: ``eta * lambda_max`` of the inner Hessian.

Eq. 22 with ``J0 = I`` is a first-order expansion of ``prod_m (I - eta H_m)`` in ``eta * H``.
Once ``eta * lambda_max(H_T)`` approaches 1 the dropped terms are as large as the kept ones,
the estimate stops pointing along the true meta-gradient and a meta-learned start can walk
further into curvature until the chain diverges (measured in ``docs/fewshot.md``). The guard
measures ``eta * lambda_max`` at the chain's start by power iteration on Hessian-vector
products and, above a bound, with a :class:`CurvatureWarning`:

1. shrinks the inner step of that outer iteration to ``bound / lambda_max``, so the chain
   and the recursion stay where the expansion holds (and stay finite);
2. adds a restoring term to the hypergradient, so the outer step moves the start back
   below the bound: ``r = ||h|| * (eta lambda_max / bound - 1) * d / ||d||`` with
   ``d = d (v^T H_T(theta_0(lam)) v) / d lam`` (``v`` the top eigenvector, held fixed).
   Shrinking the inner step alone does not do this: the chain stays finite while the
   start keeps walking into curvature, and the adaptation at the real step then diverges
   (``docs/fewshot.md``). The term is scaled
   to the hypergradient's norm so that it needs no weight of its own.

Where the guard does not act nothing changes: the chain's generator is never drawn from,
so seeded results are bit-identical to a run without it.

The bound (``InnerSettings.curvature_bound``, default :data:`DEFAULT_BOUND` = 1 for
lam-dependent starts) is where plain gradient descent stops being a monotone contraction
along the top eigenvector (``1 - eta * lambda_max`` reaches 0) and where the damped
recursion's clipped factor ``rho = 1 - eta * v^T H v / v^T v`` would hit its lower clip.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import _tree

#: ``eta * lambda_max`` allowed at the start of a lam-dependent chain when the setting is None.
DEFAULT_BOUND = 1.0
#: power-iteration budget: a handful of Hessian-vector products once per outer iteration.
POWER_ITERS = 10
POWER_TOL = 1e-2


class CurvatureWarning(RuntimeWarning):
    """The curvature guard shrank the inner step (``eta * lambda_max`` above its bound)."""


def power_iteration(hvp, like: list[torch.Tensor], n_iter: int = POWER_ITERS,
                    tol: float = POWER_TOL, seed: int = 0) -> float:
    """Eigenvalue of largest magnitude of a symmetric operator (see :func:`top_eigenpair`)."""
    return top_eigenpair(hvp, like, n_iter, tol, seed)[0]


def top_eigenpair(hvp, like: list[torch.Tensor], n_iter: int = POWER_ITERS,
                  tol: float = POWER_TOL, seed: int = 0):
    """Eigenvalue of largest magnitude of a symmetric operator and its unit eigenvector.

    Parameters
    ----------
    hvp : callable
        ``list of Tensor -> list of Tensor``: the operator's product with a vector
        (a Hessian-vector product), shaped like ``like``.
    like : list of Tensor
        Shapes, dtype and device of the vectors.
    n_iter : int, default=POWER_ITERS
        Most products taken.
    tol : float, default=POWER_TOL
        Stop when the Rayleigh quotient changes by less than ``tol`` (relative).
    seed : int, default=0
        Seed of the start vector's own generator: the chain's generator is never drawn
        from, so a guard that does not act leaves seeded results bit-identical.

    Returns
    -------
    (float, list of Tensor)
        The Rayleigh quotient ``v^T H v`` of the last unit iterate ``v``, and ``v``: the
        largest eigenvalue for a positive semi-definite ``H`` (0 for ``H = 0``). With few
        iterations it can only under-estimate ``|lambda|_max``.
    """
    gen = torch.Generator(device=like[0].device).manual_seed(seed)
    w = [torch.randn(t.shape, generator=gen, dtype=t.dtype, device=t.device) for t in like]
    estimate, v = 0.0, w
    for _ in range(n_iter):
        norm = float(_tree.dot(w, w)) ** 0.5
        if norm == 0.0 or not math.isfinite(norm):
            break
        v = [t / norm for t in w]
        w = hvp(v)
        new = float(_tree.dot(v, w))
        converged = abs(new - estimate) <= tol * abs(new)
        estimate, w = new, [t.detach() for t in w]
        if converged:
            break
    return estimate, v


def inner_hvp(problem, lam: list[torch.Tensor], theta: list[torch.Tensor]):
    """``u -> H_T u`` at ``theta`` (lam held fixed), for :func:`power_iteration`.

    One gradient with its graph is kept; every product is one extra backward through it.
    """
    theta = [t.detach().requires_grad_(True) for t in theta]
    lam = [t.detach() for t in lam]
    grads = _tree.fill_none(torch.autograd.grad(problem.inner(lam, theta), theta,
                                                create_graph=True, allow_unused=True), theta)

    def hvp(u):
        out = torch.autograd.grad(grads, theta, grad_outputs=u, retain_graph=True,
                                  allow_unused=True)
        return [o.detach() for o in _tree.fill_none(out, theta)]

    return hvp, theta


def resolve_bound(bound: float | None, start_depends_on_lam: bool) -> float | None:
    """The bound in force: ``None`` (the default) is :data:`DEFAULT_BOUND` for a
    lam-dependent start and no guard otherwise; ``inf`` switches the guard off."""
    if bound is None:
        return DEFAULT_BOUND if start_depends_on_lam else None
    return None if math.isinf(bound) else float(bound)


def guarded_inner_lr(problem, lam, theta, eta: float, bound: float | None):
    """The inner step for this outer iteration and ``eta * lambda_max`` measured at ``theta``.

    Parameters
    ----------
    problem : BilevelProblem
    lam, theta : list of Tensor
        The hyperparameters and the chain's start.
    eta : float
        The configured inner step.
    bound : float or None
        Largest ``eta * lambda_max`` allowed (see :func:`resolve_bound`); ``None``: no guard.

    Returns
    -------
    (float, float or None, list of Tensor or None)
        ``eta`` itself when ``eta * lambda_max <= bound`` (or no guard), else
        ``bound / lambda_max`` (a :class:`CurvatureWarning` is issued); the measured
        ``eta * lambda_max`` (``None`` without a guard); the top eigenvector when the
        guard acted (for :func:`curvature_direction`), else ``None``.
    """
    if bound is None:
        return eta, None, None
    hvp, like = inner_hvp(problem, lam, theta)
    value, vector = top_eigenpair(hvp, like)
    scaled = eta * value
    if not scaled > bound:  # also leaves eta alone for a non-finite measurement
        return eta, scaled, None
    warnings.warn(CurvatureWarning(
        f"eta * lambda_max = {scaled:.3g} of the inner Hessian at the chain's start exceeds "
        f"the curvature bound {bound:g}: inner step shrunk from {eta:g} to "
        f"{eta * bound / scaled:.3g} for this outer iteration, hypergradient pushed back "
        f"towards the bound"), stacklevel=3)
    return eta * bound / scaled, scaled, vector


def curvature_direction(problem, lam, theta_start, vector) -> list[torch.Tensor]:
    """``d (v^T H_T(lam, theta_0(lam)) v) / d lam`` with ``v`` held fixed.

    By the eigenvalue perturbation formula this is the gradient of ``lambda_max`` at the
    start (for a simple top eigenvalue). ``theta_start`` must still carry its graph to
    ``lam`` (that graph is retained for the chain's own ``J0`` terms).
    """
    grads = _tree.fill_none(torch.autograd.grad(problem.inner(lam, theta_start), theta_start,
                                                create_graph=True, allow_unused=True),
                            theta_start)
    hv = torch.autograd.grad(grads, theta_start, grad_outputs=vector, create_graph=True,
                             allow_unused=True)
    quad = _tree.dot(vector, _tree.fill_none(hv, theta_start))
    if not quad.requires_grad:  # curvature independent of lam: nothing to push along
        return _tree.zeros_like(lam)
    out = torch.autograd.grad(quad, lam, retain_graph=True, allow_unused=True)
    return [o.detach() for o in _tree.fill_none(out, lam)]


def restore(h: list[torch.Tensor], direction: list[torch.Tensor], scaled: float,
            bound: float) -> list[torch.Tensor]:
    """``h + ||h|| (scaled / bound - 1) d / ||d||``: a descent step on ``h`` lowers
    ``lambda_max`` in proportion to the excess, at the hypergradient's own scale."""
    d_norm = float(_tree.dot(direction, direction)) ** 0.5
    if d_norm == 0.0 or not math.isfinite(d_norm):
        return h
    weight = float(_tree.dot(h, h)) ** 0.5 * (scaled / bound - 1.0) / d_norm
    return [hi + weight * di for hi, di in zip(h, direction)]
