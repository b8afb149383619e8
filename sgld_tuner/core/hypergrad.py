"""The HPO-SGLD hypergradient: SGLD samples and the forward recursion of paper eq. 22.

Only vector-Jacobian products are taken (``torch.autograd.grad`` with ``grad_outputs``),
so memory is O(dim theta + dim lam) whatever the number of inner steps.
"""
from __future__ import annotations

import torch

from . import _tree
from .problem import BilevelProblem, ChainState, Hypergradient, InnerSettings, chain_start
from .sgld import langevin_step


def sgld_hypergrad(problem: BilevelProblem, lam: list[torch.Tensor], state: ChainState,
                   settings: InnerSettings, generator: torch.Generator) -> Hypergradient:
    """HPO-SGLD hypergradient of ``E_{p(theta|lam)}[f(lam, theta)]`` (paper Alg. 1).

    Per step ``m = 1 .. B + M``::

        theta_m = theta_{m-1} - eta grad_theta L_T + sqrt(2 eta tau) kappa z
        g_m     = rho_m g_{m-1} + (theta_m - theta_{m-1})^T Hf(theta_{m-1}) J0
                  - eta grad_theta f(theta_m)^T [ d2L_T/dlam dtheta + (paper only) H_T J0 ]
        h      += (grad_lam f(theta_m) + g_m) / M          for m > B

    ``rho_m = 1`` for ``recursion="paper"`` (eq. 22 verbatim). For ``"damped"``,
    ``rho_m = clip(1 - eta v^T H_T v / v^T v, 0, 1)`` with ``v = grad_theta f(theta_m)``:
    the ``(I - eta H_T)`` contraction of the exact tangent recursion, taken along ``v``.
    It stands in for the paper's ``-eta H_T J0`` term, which is that same contraction
    frozen at the start.

    ``"tracked"`` leaves the forward recursion for a warm-started implicit one: along the
    same chain it keeps an adjoint ``w ~ H_T^-1 grad_theta f`` by one gradient step per
    inner step (``w <- w - eta (H_T w - grad_theta f)``) and uses ``g_m = -w^T
    d2L_T/(dtheta dlam)``. One double backward with ``grad_outputs = w`` gives both
    products. Unbiased at stationarity whatever the dimension (the damped recursion
    damps along one direction only), but it needs that double backward at every step and
    a start independent of ``lam``; ``w`` persists across outer iterations of a
    persistent chain. See ``docs/bias.md``.
    """
    eta, burn_in, n_samples = settings.inner_lr, settings.burn_in, settings.n_samples
    damped = settings.recursion == "damped"
    tracked = settings.recursion == "tracked"
    depends = problem.start_depends_on_lam
    if tracked and depends:
        raise ValueError("recursion='tracked' needs a start independent of lam; use "
                         "'damped' or 'paper' for a callable (MAML-type) theta0")
    n_lam = len(lam)

    theta_start = chain_start(problem, lam, state, settings)
    theta = [t.detach().requires_grad_(True) for t in theta_start]

    def through_start(u):
        """``u^T J0`` (zero for leaves of lam the start does not use)."""
        grads = torch.autograd.grad(theta_start, lam, grad_outputs=u, retain_graph=True,
                                    allow_unused=True)
        return _tree.fill_none(grads, lam)

    f_theta_prev = None
    if depends:
        value = problem.outer(lam, theta)
        f_theta_prev = _tree.fill_none(
            torch.autograd.grad(value, theta, create_graph=True, allow_unused=True), theta)
        g = through_start([v.detach() for v in f_theta_prev])
    elif damped and settings.chain == "persistent" and state.tangent is not None:
        g = [t.clone() for t in state.tangent]
    else:
        g = _tree.zeros_like(lam)
    persistent = settings.chain == "persistent"
    adjoint = None
    if tracked:
        adjoint = ([t.clone() for t in state.adjoint] if persistent and state.adjoint is not None
                   else _tree.zeros_like(theta))
    if not depends:
        # J0 = 0: the start is never differentiated, so do not hold a copy of it (a
        # full model's worth of memory) for the whole chain.
        theta_start = None

    # The damping factor needs a Hessian-vector product (a double backward); it is a
    # scalar that drifts slowly along a chain, so it may be refreshed every k steps only.
    # Steps in between (and the paper recursion) use the closed-form mixed derivative
    # when the problem has one, and then need no double backward at all.
    refresh_every = settings.curvature_every or (burn_in + n_samples)

    h = _tree.zeros_like(lam)
    outer_sum = torch.zeros((), dtype=lam[0].dtype, device=lam[0].device)
    samples = [] if settings.keep_samples else None
    inner_uses_lam = None
    rho = torch.ones((), dtype=lam[0].dtype, device=lam[0].device)
    inner_value = None
    n_theta = len(theta)

    for m in range(1, burn_in + n_samples + 1):
        need_hessian = depends or tracked or (damped and (m - 1) % refresh_every == 0)
        use_closed_form = problem.mixed_vjp is not None and not need_hessian
        inner_value = problem.inner(lam, theta)
        grad_inner = torch.autograd.grad(inner_value, theta, create_graph=not use_closed_form,
                                         allow_unused=True)
        grad_inner = _tree.fill_none(grad_inner, theta)
        new_theta = langevin_step(theta, grad_inner, lr=eta, temperature=settings.temperature,
                                  noise_scale=settings.noise_scale, generator=generator)
        new_theta = [t.requires_grad_(True) for t in new_theta]
        if use_closed_form:
            grad_inner = None  # only the step needed it; free it before the outer backward

        # grad_lam f only enters h, i.e. after burn-in: skip that part of the backward before.
        keep = m > burn_in
        outer_value = problem.outer(lam, new_theta)
        grads = torch.autograd.grad(outer_value, new_theta + lam if keep else new_theta,
                                    create_graph=depends, allow_unused=True)
        f_theta = _tree.fill_none(grads[:n_theta], new_theta)
        # Keep the Nones: most outer losses do not touch lam, and zeros would cost a
        # full-size fill and add per leaf and step for nothing.
        f_lam = grads[n_theta:]
        v = [t.detach() for t in f_theta]

        if tracked:
            prods = torch.autograd.grad(grad_inner, lam + theta, grad_outputs=adjoint,
                                        allow_unused=True)
            if inner_uses_lam is None:
                inner_uses_lam = [p is not None for p in prods[:n_lam]]
            with torch.no_grad():
                # g_m = -w^T B with the adjoint before its step (both at theta_{m-1}).
                g = [-b for b in _tree.fill_none(prods[:n_lam], lam)]
                hess_w = _tree.fill_none(prods[n_lam:], theta)
                adjoint = [w - eta * (hw - ft) for w, hw, ft in zip(adjoint, hess_w, v)]
            mixed, hess_v = None, None
        elif use_closed_form:
            mixed = problem.mixed(lam, theta, v)
            hess_v = None
        else:
            targets = lam + (theta if need_hessian else [])
            prods = torch.autograd.grad(grad_inner, targets, grad_outputs=v, allow_unused=True)
            if inner_uses_lam is None:
                inner_uses_lam = [p is not None for p in prods[:n_lam]]
            mixed = _tree.fill_none(prods[:n_lam], lam)
            hess_v = _tree.fill_none(prods[n_lam:], theta) if need_hessian else None
        # The graph of the inner gradient is no longer needed: free it before the
        # elementwise updates below so it never overlaps with their temporaries.
        grad_inner = None

        with torch.no_grad():
            if damped and hess_v is not None:
                vv = _tree.dot(v, v)
                # torch.where instead of `if vv > 0`: no host sync, same rule (keep the
                # previous rho when v = 0; the NaN of 0/0 lands in the branch not taken).
                rho = torch.where(vv > 0, (1.0 - eta * _tree.dot(v, hess_v) / vv).clamp(0.0, 1.0),
                                  rho)
            if damped:
                if g and all(gi.dtype == rho.dtype for gi in g):
                    torch._foreach_mul_(g, rho)
                else:
                    g = [rho * gi for gi in g]
            if mixed is not None:
                g = _tree.axpy_(g, mixed, -eta)
            del mixed
        if depends:
            delta = [n.detach() - t.detach() for n, t in zip(new_theta, theta)]
            curv = _tree.fill_none(torch.autograd.grad(
                f_theta_prev, theta, grad_outputs=delta, allow_unused=True), theta)
            extra = through_start(curv)
            if not damped:
                extra = [e - eta * s for e, s in zip(extra, through_start(hess_v))]
            g = [gi + e for gi, e in zip(g, extra)]
            f_theta_prev = f_theta

        if keep:
            with torch.no_grad():
                # h += (grad_lam f + g) / M, as fused in-place adds.
                h = _tree.axpy_(h, g, 1.0 / n_samples)
                direct = [(i, fl) for i, fl in enumerate(f_lam) if fl is not None]
                if direct:
                    idx = [i for i, _ in direct]
                    part = _tree.axpy_([h[i] for i in idx], [fl for _, fl in direct],
                                       1.0 / n_samples)
                    for i, hi in zip(idx, part):
                        h[i] = hi
                outer_sum += outer_value.detach()
            if samples is not None:
                samples.append([t.detach().clone() for t in new_theta])
        theta = new_theta

    state.theta = [t.detach() for t in theta]
    state.n_steps += burn_in + n_samples
    state.tangent = ([t.detach() for t in g]
                     if damped and not depends and persistent else None)
    state.adjoint = [t.detach() for t in adjoint] if tracked and persistent else None
    diagnostics = {"rho": float(rho)}
    if inner_uses_lam is not None:
        diagnostics["inner_uses_lam"] = inner_uses_lam
    return Hypergradient(
        grad=[t.detach() for t in h],
        outer_loss=float(outer_sum / n_samples),
        inner_loss=float(inner_value.detach()),
        theta=[t.detach() for t in theta],
        samples=samples,
        diagnostics=diagnostics,
    )


def hypergradient(problem: BilevelProblem, lam: list[torch.Tensor], state: ChainState,
                  settings: InnerSettings, generator: torch.Generator) -> Hypergradient:
    """Dispatch to the method named by ``settings.method`` (all share this signature)."""
    from .baselines import BASELINES

    if settings.method == "sgld":
        return sgld_hypergrad(problem, lam, state, settings, generator)
    return BASELINES[settings.method](problem, lam, state, settings, generator)
