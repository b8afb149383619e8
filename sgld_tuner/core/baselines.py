"""Classic hypergradient baselines under the one signature of ``hypergrad.sgld_hypergrad``.

* ``rmd``: reverse-mode through the unrolled inner descent (memory grows with the steps).
* ``rmd-fo``: the same with second-order terms dropped (first-order MAML when theta0 = lam).
* ``fmd``: forward-mode, carrying the full Jacobian d theta / d lam (dim theta x dim lam).
* ``ift-cg`` / ``ift-neumann``: implicit function theorem at the last inner iterate, with
  the inverse-Hessian-vector product by conjugate gradient or a Neumann series.

The baselines run plain (possibly minibatch) gradient descent for ``n_inner`` steps; the
SGLD temperature and noise do not apply to them.
"""
from __future__ import annotations

import warnings

import torch

from . import _tree
from .problem import BilevelProblem, ChainState, Hypergradient, InnerSettings, chain_start

# FMD stores dim(theta) * dim(lam) numbers; refuse sizes that are certain to thrash.
FMD_MAX_JACOBIAN_ENTRIES = 50_000_000


def _finish(state, settings, theta, problem):
    if not problem.start_depends_on_lam:
        state.theta = [t.detach() for t in theta]
    state.n_steps += settings.steps


def _outer_grads(problem, lam, theta):
    value = problem.outer(lam, theta)
    grads = torch.autograd.grad(value, theta + lam, allow_unused=True, retain_graph=True)
    return value, _tree.fill_none(grads[: len(theta)], theta), _tree.fill_none(grads[len(theta):], lam)


def rmd_hypergrad(problem: BilevelProblem, lam, state: ChainState, settings: InnerSettings,
                  generator: torch.Generator, first_order: bool = False) -> Hypergradient:
    """Reverse-mode differentiation through ``n_inner`` descent steps."""
    eta = settings.inner_lr
    start = chain_start(problem, lam, state, settings)
    if problem.start_depends_on_lam:
        theta = list(start)
    else:
        theta = [t.detach().requires_grad_(True) for t in start]
    origin = theta
    for _ in range(settings.steps):
        inner_value = problem.inner(lam, theta)
        grads = _tree.fill_none(torch.autograd.grad(
            inner_value, theta, create_graph=not first_order, allow_unused=True), theta)
        theta = [t - eta * g for t, g in zip(theta, grads)]
        if first_order:
            # Keep only the identity path back to theta0: no graph grows with the steps.
            theta = [o + (t - o).detach() for o, t in zip(origin, theta)]
    value = problem.outer(lam, theta)
    grad = _tree.fill_none(torch.autograd.grad(value, lam, allow_unused=True), lam)
    _finish(state, settings, theta, problem)
    return Hypergradient(grad=grad, outer_loss=float(value.detach()),
                         inner_loss=float(inner_value.detach()),
                         theta=[t.detach() for t in theta])


def rmd_fo_hypergrad(problem, lam, state, settings, generator) -> Hypergradient:
    """RMD with the second-order terms dropped (the paper's RMD-FO, FO-MAML)."""
    return rmd_hypergrad(problem, lam, state, settings, generator, first_order=True)


def _jvp_columns(outputs, inputs, tangents_per_column):
    """Forward-mode products ``J t`` for several tangents, by the double-backward trick."""
    dummies = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    back = torch.autograd.grad(outputs, inputs, grad_outputs=dummies, create_graph=True,
                               allow_unused=True)
    used = [(b, i) for i, b in enumerate(back) if b is not None]
    columns = []
    for tangents in tangents_per_column:
        if not used:
            columns.append(_tree.zeros_like(outputs))
            continue
        out = torch.autograd.grad([b for b, _ in used], dummies,
                                  grad_outputs=[tangents[i] for _, i in used],
                                  retain_graph=True, allow_unused=True)
        columns.append(_tree.fill_none(out, outputs))
    return columns


def _unit_vectors(lam):
    for leaf_index, leaf in enumerate(lam):
        for k in range(leaf.numel()):
            e = _tree.zeros_like(lam)
            e[leaf_index].view(-1)[k] = 1.0
            yield e


def fmd_hypergrad(problem: BilevelProblem, lam, state: ChainState, settings: InnerSettings,
                  generator: torch.Generator) -> Hypergradient:
    """Forward-mode differentiation carrying ``Z = d theta / d lam`` column by column."""
    eta = settings.inner_lr
    start = chain_start(problem, lam, state, settings)
    theta = [t.detach().requires_grad_(True) for t in start]
    n_lam = _tree.numel(lam)
    if n_lam * _tree.numel(theta) > FMD_MAX_JACOBIAN_ENTRIES:
        raise ValueError(
            f"fmd stores a dim(theta) x dim(lam) = {_tree.numel(theta)} x {n_lam} Jacobian; "
            "that is too large here: use method='sgld' or 'rmd'")
    units = list(_unit_vectors(lam))
    if problem.start_depends_on_lam:
        # Columns of J0: the start as a function of lam, pushed forward along each e_j.
        columns = _jvp_columns(start, lam, units)
    else:
        columns = [_tree.zeros_like(theta) for _ in units]
    inner_value = None
    for _ in range(settings.steps):
        inner_value = problem.inner(lam, theta)
        grad_inner = _tree.fill_none(torch.autograd.grad(
            inner_value, theta, create_graph=True, allow_unused=True), theta)
        pushed = _jvp_columns(grad_inner, theta + lam,
                              [z + e for z, e in zip(columns, units)])
        with torch.no_grad():
            columns = [[z - eta * p for z, p in zip(col, push)]
                       for col, push in zip(columns, pushed)]
            theta = [(t - eta * g).requires_grad_(True) for t, g in zip(theta, grad_inner)]
    value, f_theta, f_lam = _outer_grads(problem, lam, theta)
    with torch.no_grad():
        flat = torch.stack([_tree.dot(f_theta, col) for col in columns])
        offset, grad = 0, []
        for leaf, direct in zip(lam, f_lam):
            grad.append(direct + flat[offset: offset + leaf.numel()].view_as(leaf))
            offset += leaf.numel()
    _finish(state, settings, theta, problem)
    return Hypergradient(grad=grad, outer_loss=float(value.detach()),
                         inner_loss=float(inner_value.detach()),
                         theta=[t.detach() for t in theta])


def _descend(problem, lam, theta, steps, eta):
    """Plain descent with no graph kept; returns leaves ready for differentiation."""
    inner_value = None
    for _ in range(steps):
        inner_value = problem.inner(lam, theta)
        grads = _tree.fill_none(torch.autograd.grad(inner_value, theta, allow_unused=True), theta)
        with torch.no_grad():
            theta = [(t - eta * g).requires_grad_(True) for t, g in zip(theta, grads)]
    return theta


def _conjugate_gradient(hvp, b, iters, damping):
    """Solve ``(H + damping I) x = b`` by ``iters`` CG steps from ``x = 0``."""
    x = _tree.zeros_like(b)
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _tree.dot(r, r)
    for _ in range(iters):
        if rs <= 1e-30:
            break
        ap = [a + damping * q for a, q in zip(hvp(p), p)]
        curvature = _tree.dot(p, ap)
        if curvature <= 0:
            break  # not positive definite along p: stop where we are
        alpha = rs / curvature
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * ai for ri, ai in zip(r, ap)]
        rs_new = _tree.dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x


class NeumannWarning(RuntimeWarning):
    """The Neumann series grew: its step ``neumann_alpha`` is too large for the inner
    Hessian (above ``2 / lambda_max``), and the IFT-Neumann hypergradient is unreliable."""


def _neumann(hvp, b, iters, alpha):
    """``H^-1 b ~ alpha * sum_{k=0}^{iters} (I - alpha H)^k b``; a
    :class:`NeumannWarning` when the last term is larger than the first (the series
    diverges)."""
    term = [t.clone() for t in b]
    total = [t.clone() for t in b]
    for _ in range(iters):
        term = [t - alpha * h for t, h in zip(term, hvp(term))]
        total = [s + t for s, t in zip(total, term)]
    last, first = (float(_tree.dot(v, v)) ** 0.5 for v in (term, b))
    if iters and not last <= first:
        # one message whatever the norms: the default filter then shows it once
        warnings.warn(f"the Neumann series grows, so the IFT-Neumann hypergradient is "
                      f"unreliable: neumann_alpha={alpha:g} is above 2 / the inner "
                      "Hessian's largest eigenvalue (lower it; None takes inner_lr), or the "
                      "Hessian has negative eigenvalues (the inner solution is not a "
                      "minimum)", NeumannWarning, stacklevel=2)
    return [alpha * s for s in total]


def _ift_hypergrad(problem, lam, state, settings, solve) -> Hypergradient:
    start = chain_start(problem, lam, state, settings)
    theta = [t.detach().requires_grad_(True) for t in start]
    theta = _descend(problem, lam, theta, settings.steps, settings.inner_lr)
    inner_value = problem.inner(lam, theta)
    grad_inner = _tree.fill_none(torch.autograd.grad(
        inner_value, theta, create_graph=True, allow_unused=True), theta)
    value, f_theta, f_lam = _outer_grads(problem, lam, theta)

    def hvp(vec):
        out = torch.autograd.grad(grad_inner, theta, grad_outputs=vec, retain_graph=True,
                                  allow_unused=True)
        return [t.detach() for t in _tree.fill_none(out, theta)]

    x = solve(hvp, [t.detach() for t in f_theta])
    mixed = _tree.fill_none(torch.autograd.grad(grad_inner, lam, grad_outputs=x,
                                                allow_unused=True), lam)
    grad = [fl - b for fl, b in zip(f_lam, mixed)]
    _finish(state, settings, theta, problem)
    return Hypergradient(grad=[t.detach() for t in grad], outer_loss=float(value.detach()),
                         inner_loss=float(inner_value.detach()),
                         theta=[t.detach() for t in theta])


def ift_cg_hypergrad(problem, lam, state, settings, generator) -> Hypergradient:
    """Implicit differentiation with conjugate gradient (``cg_iters``, ``cg_damping``)."""
    return _ift_hypergrad(problem, lam, state, settings, lambda hvp, b: _conjugate_gradient(
        hvp, b, settings.cg_iters, settings.cg_damping))


def ift_neumann_hypergrad(problem, lam, state, settings, generator) -> Hypergradient:
    """Implicit differentiation with a Neumann series (``neumann_iters``, ``neumann_alpha``)."""
    alpha = settings.inner_lr if settings.neumann_alpha is None else settings.neumann_alpha
    return _ift_hypergrad(problem, lam, state, settings, lambda hvp, b: _neumann(
        hvp, b, settings.neumann_iters, alpha))


BASELINES = {
    "rmd": rmd_hypergrad,
    "rmd-fo": rmd_fo_hypergrad,
    "fmd": fmd_hypergrad,
    "ift-cg": ift_cg_hypergrad,
    "ift-neumann": ift_neumann_hypergrad,
}
