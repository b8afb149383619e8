"""The HPO-SGLD chain loop: SGLD samples, autograd once per step, products to a strategy.

Only vector-Jacobian products are taken (``torch.autograd.grad`` with ``grad_outputs``),
so memory is O(dim theta + dim lam) whatever the number of inner steps. What is done with
the products (eq. 22, its damped variant, a tracked adjoint, the Gibbs identity) is a
strategy from :mod:`sgld_tuner.core.recursions`.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from . import _tree
from .curvature import curvature_direction, guarded_inner_lr, resolve_bound, restore
from .problem import BilevelProblem, ChainState, Hypergradient, InnerSettings, chain_start
from .recursions import Recursion, StepProducts, make_recursion
from .sgld import Sampler, SliceGenerators, make_sampler


class StartJacobian:
    """The ``J0 = d theta_0 / d lam`` terms of eq. 22 for a lam-dependent (MAML-type) start.

    ``g_0 = grad_theta f(theta_0) J0`` and, per step, ``(theta_m - theta_{m-1})^T
    Hf(theta_{m-1}) J0`` (and ``-eta v^T H_T J0`` for strategies that keep it).
    """

    def __init__(self, problem: BilevelProblem, lam, theta_start, theta):
        self.lam, self.theta_start = lam, theta_start
        value = problem.outer(lam, theta)
        self.f_theta_prev = _tree.fill_none(
            torch.autograd.grad(value, theta, create_graph=True, allow_unused=True), theta)

    def through_start(self, u):
        """``u^T J0`` (zero for leaves of lam the start does not use)."""
        grads = torch.autograd.grad(self.theta_start, self.lam, grad_outputs=u,
                                    retain_graph=True, allow_unused=True)
        return _tree.fill_none(grads, self.lam)

    def initial(self):
        return self.through_start([v.detach() for v in self.f_theta_prev])

    def step(self, theta, new_theta, f_theta, hess_v, eta):
        delta = [n.detach() - t.detach() for n, t in zip(new_theta, theta)]
        curv = _tree.fill_none(torch.autograd.grad(
            self.f_theta_prev, theta, grad_outputs=delta, allow_unused=True), theta)
        extra = self.through_start(curv)
        if hess_v is not None:
            extra = [e - eta * s for e, s in zip(extra, self.through_start(hess_v))]
        self.f_theta_prev = f_theta
        return extra


def _inner_gradient(problem, lam, theta, want_lam, create_graph, whole_value):
    """The inner loss's value and gradients at ``theta``.

    Returns ``(value, grad_graph, grad, grad_lam)``: ``grad_graph`` is autograd's gradient
    of the part it differentiates (with its graph if ``create_graph``), ``grad`` the whole
    gradient (with a closed-form penalty's added) and ``grad_lam`` ``dL_T/dlam`` or None.
    ``value`` includes a closed-form penalty only if ``whole_value`` (it is reported
    for the last step only, and costs a pass over the penalised weights).
    """
    value = problem.inner_data(lam, theta)
    grads = torch.autograd.grad(value, theta + lam if want_lam else theta,
                                create_graph=create_graph, allow_unused=True)
    grad_graph = _tree.fill_none(grads[:len(theta)], theta)
    grad_lam = _tree.fill_none(grads[len(theta):], lam) if want_lam else None
    if problem.penalty is None:
        return value, grad_graph, grad_graph, grad_lam
    with torch.no_grad():
        if whole_value:
            value = value + problem.penalty_value(lam, theta)
        grad = _tree.add_partial([g.detach() for g in grad_graph],
                                 problem.penalty_terms("grad_theta", lam, theta))
        if want_lam:
            grad_lam = _tree.add_partial(grad_lam, problem.penalty_terms("grad_lam", lam, theta))
    return value, grad_graph, grad, grad_lam


def _inner_products(problem, lam, theta, grad_graph, u, need_hessian, need_mixed=True):
    """``u^T d2L_T/(dtheta dlam)`` (if ``need_mixed``, else ``None``) and, if asked,
    ``H_T u`` at ``theta``.

    One backward through ``grad_graph`` for what autograd has to give: the mixed product
    unless ``mixed_vjp`` gives it in closed form, the Hessian product when asked; a
    closed-form penalty's own products are added to autograd's.
    """
    closed = problem.mixed_vjp is not None
    targets = ([] if closed or not need_mixed else lam) + (theta if need_hessian else [])
    prods = []
    if targets:
        try:
            prods = torch.autograd.grad(grad_graph, targets, grad_outputs=u,
                                        allow_unused=True)
        except NotImplementedError as exc:
            raise NotImplementedError(
                f"{exc} The hypergradient differentiates the training gradient once more "
                "(Hessian- and mixed-vector products), which this layer does not support "
                "in torch (e.g. nn.EmbeddingBag: use nn.Embedding and pool). "
                "recursion='gibbs' needs no second derivatives") from exc
    if not need_mixed:
        mixed = None
    elif closed:
        mixed = problem.mixed(lam, theta, u)
    else:
        mixed = _tree.fill_none(prods[:len(lam)], lam)
        if problem.penalty is not None:
            mixed = _tree.add_partial(mixed, problem.penalty_terms("mixed", lam, theta, u))
    hess = None
    if need_hessian:
        hess = _tree.fill_none(prods[len(targets) - len(theta):], theta)
        if problem.penalty is not None:
            hess = _tree.add_partial(hess, problem.penalty_terms("hvp", lam, theta, u))
    return mixed, hess


def _step(problem, lam, theta, recursion: Recursion, start, settings, generator, m,
          sampler: Sampler):
    """One inner step: Langevin move, outer gradient, products handed to the strategy."""
    # A lam-dependent start differentiates through every step's Hessian terms.
    need_hessian = recursion.needs_hessian(m) or start is not None
    # The graph of the inner gradient is kept only for a double backward someone needs.
    need_mixed = recursion.needs_mixed_at(m)
    need_graph = need_hessian or (need_mixed and problem.mixed_vjp is None)
    last = m == settings.burn_in + settings.n_samples
    inner_value, grad_graph, grad_inner, inner_lam_grad = _inner_gradient(
        problem, lam, theta, recursion.needs_inner_lam_grad, need_graph, whole_value=last)
    new_theta = [t.requires_grad_(True) for t in sampler.step(theta, grad_inner, generator)]
    del grad_inner

    # grad_lam f only enters h after burn-in: skip that part of the backward before.
    keep = m > settings.burn_in
    if start is not None or recursion.needs_outer_gradient(m):
        outer_value = problem.outer(lam, new_theta)
        grads = torch.autograd.grad(outer_value, new_theta + lam if keep else new_theta,
                                    create_graph=start is not None, allow_unused=True)
        f_theta = _tree.fill_none(grads[:len(theta)], new_theta)
        v = [t.detach() for t in f_theta]
    else:
        # A retained sample's f counts towards the reported outer loss, and its
        # grad_lam f towards h; an outer loss that does not read lam needs neither
        # except on the last step (so that every chain reports a value).
        counted = keep and (problem.outer_depends_on_lam or last)
        outer_value, grads = _outer_without_theta_gradient(
            problem, lam, new_theta, counted or recursion.needs_outer_value, keep)
        f_theta, v = None, None
    mixed, hess_u = None, None
    if need_mixed or need_hessian:
        u = recursion.vector(v)
        mixed, hess_u = _inner_products(problem, lam, theta, grad_graph, u, need_hessian,
                                        need_mixed)
        if hess_u is not None and sampler.decay:
            hess_u = _with_decay_curvature(hess_u, u, sampler)
    del grad_graph  # free the inner graph before the strategy's elementwise updates
    recursion.update(StepProducts(m=m, v=v, mixed=mixed, hess_u=hess_u,
                                  outer_value=_detached(outer_value), inner_lam_grad=inner_lam_grad,
                                  precond=sampler.precond()))
    if start is not None:
        hess_v = hess_u if recursion.start_needs_hessian else None
        recursion.add_start_terms(start.step(theta, new_theta, f_theta, hess_v, settings.inner_lr))
    # Keep the Nones: most outer losses do not touch lam (no full-size zero fills).
    f_lam = grads[len(theta):]
    return new_theta, _detached(outer_value), inner_value.detach(), f_lam


def _with_decay_curvature(hess_u, u, sampler: Sampler) -> list:
    """``H u + decay * u / P``: the Hessian product of the loss whose preconditioned
    gradient is the sampler's drift, decoupled decay included (``P``: the step's
    preconditioner, 1 for plain SGLD). Under pSGLD the decay pulls each weight
    ``eta * decay * theta`` whatever its ``P``: an L2 term of strength ``decay / P``."""
    precond = sampler.precond()
    with torch.no_grad():
        if precond is None:
            return [h + sampler.decay * x for h, x in zip(hess_u, u)]
        return [torch.addcdiv(h, x, p, value=sampler.decay)
                for h, x, p in zip(hess_u, u, precond)]


def _detached(value):
    return None if value is None else value.detach()


def _outer_without_theta_gradient(problem, lam, theta, need_value, need_lam_grad):
    """``(outer_value, grads)`` for a step whose strategy does not use ``grad_theta f``.

    The outer loss is evaluated only where its value counts (a retained sample, or a
    strategy that reads it every step), and differentiated only in ``lam`` and only for a
    retained sample (an outer loss that does not touch ``lam`` prunes that backward to
    nothing); on the other steps nothing is computed. ``grads`` has ``len(theta)``
    placeholders before ``lam``'s, like the full step's.
    """
    if not need_value:
        return None, [None] * (len(theta) + len(lam))
    value = problem.outer(lam, theta)
    grads = [None] * len(lam)
    if need_lam_grad and value.requires_grad:
        grads = list(torch.autograd.grad(value, lam, allow_unused=True))
    return value, [None] * len(theta) + grads


def _curvature_guard(problem, lam, theta_start, settings, depends):
    """Settings with the inner step this outer iteration may take, what was measured, and
    the restoring term to add to the hypergradient (``None`` unless the guard acted).

    See :mod:`sgld_tuner.core.curvature`: on by default for a lam-dependent start only;
    the settings object is replaced (never mutated) only when the guard acts.
    """
    bound = resolve_bound(settings.curvature_bound, depends)
    if bound is None:
        return settings, {}, None
    eta, scaled, vector = guarded_inner_lr(problem, lam, theta_start, settings.inner_lr, bound)
    push = None
    if vector is not None:  # acted: shrink this chain's step, push the outer step back
        settings = replace(settings, inner_lr=eta)
        direction = curvature_direction(problem, lam, theta_start, vector)
        push = lambda h: restore(h, direction, scaled, bound)  # noqa: E731
    return settings, {"eta_lambda_max": scaled, "inner_lr_used": eta}, push


def sgld_hypergrad(problem: BilevelProblem, lam: list[torch.Tensor], state: ChainState,
                   settings: InnerSettings, generator: torch.Generator) -> Hypergradient:
    """HPO-SGLD hypergradient of ``E_{p(theta|lam)}[f(lam, theta)]`` (paper Alg. 1).

    Runs ``B + M`` Langevin steps ``theta_m = theta_{m-1} - eta grad_theta L_T +
    sqrt(2 eta tau) kappa z`` and returns ``h = (1/M) sum_{m>B} grad_lam f(theta_m) +
    indirect``, where the indirect part (through theta) is the strategy named by
    ``settings.recursion`` (see :mod:`sgld_tuner.core.recursions` and ``docs/bias.md``).
    ``state`` (the chain's weights and the strategy's own state) is updated in place.
    """
    depends = problem.start_depends_on_lam
    versions = state.tensor_versions()
    theta_start = chain_start(problem, lam, state, settings)
    settings, guard, push = _curvature_guard(problem, lam, theta_start, settings, depends)
    # Chains stacked along dim 0, one generator each: the strategy reduces per chain.
    slices = len(generator) if isinstance(generator, SliceGenerators) else None
    recursion = make_recursion(settings, lam, start_depends_on_lam=depends, slices=slices)
    theta = [t.detach().requires_grad_(True) for t in theta_start]
    recursion.begin(state.recursion, theta)
    sampler = make_sampler(settings)
    if settings.chain == "persistent" and not depends:
        sampler.load(state.sampler)
    start = None
    if depends:
        start = StartJacobian(problem, lam, theta_start, theta)
        recursion.add_start_terms(start.initial())
    # J0 = 0 otherwise: never hold a copy of the start for the whole chain.
    del theta_start

    direct = _tree.zeros_like(lam)
    outer_sum = torch.zeros((), dtype=lam[0].dtype, device=lam[0].device)
    outer_count = 0
    samples = [] if settings.keep_samples else None
    inner_value = None
    for m in range(1, settings.burn_in + settings.n_samples + 1):
        theta, outer_value, inner_value, f_lam = _step(problem, lam, theta, recursion, start,
                                                       settings, generator, m, sampler)
        if m > settings.burn_in:
            recursion.accumulate()
            with torch.no_grad():
                used = [(i, g) for i, g in enumerate(f_lam) if g is not None]
                for i, g in used:
                    direct[i] = direct[i] + g / settings.n_samples
                if outer_value is not None:
                    outer_sum += outer_value
                    outer_count += 1
            if samples is not None:
                samples.append([t.detach().clone() for t in theta])

    ChainState.check_untouched(versions)
    state.theta = [t.detach() for t in theta]
    state.n_steps += settings.burn_in + settings.n_samples
    state.recursion = recursion.end()
    state.sampler = sampler.state()
    h = [d + i for d, i in zip(direct, recursion.indirect())]
    if push is not None:
        h = push(h)
    return Hypergradient(
        grad=[t.detach() for t in h],
        outer_loss=float(outer_sum / outer_count),
        inner_loss=float(inner_value),
        theta=[t.detach() for t in theta],
        samples=samples,
        diagnostics={**recursion.diagnostics, **guard},
    )


def advance_chain(problem: BilevelProblem, lam: list[torch.Tensor], state: ChainState,
                  settings: InnerSettings, generator: torch.Generator, n_steps: int) -> None:
    """Run ``n_steps`` Langevin steps of the chain at fixed ``lam``, no hypergradient.

    A warm-up: the chain trains at the initial hyperparameters before the first outer
    step, so that the samples the hypergradients are taken on (and the points scored)
    come from a trained net. Costs about one plain training step per step. ``state`` is
    updated in place (weights, step count, sampler buffers); the strategy's state is
    left alone. Only for a persistent chain whose start does not depend on ``lam``.
    """
    if problem.start_depends_on_lam or settings.chain != "persistent":
        raise ValueError("a warm-up needs a persistent chain whose start does not "
                         "depend on lam")
    lam = [t.detach() for t in lam]
    versions = state.tensor_versions()
    theta = [t.detach().requires_grad_(True)
             for t in chain_start(problem, lam, state, settings)]
    sampler = make_sampler(settings)
    sampler.load(state.sampler)
    for _ in range(n_steps):
        _, _, grad, _ = _inner_gradient(problem, lam, theta, want_lam=False,
                                        create_graph=False, whole_value=False)
        theta = [t.requires_grad_(True) for t in sampler.step(theta, grad, generator)]
    ChainState.check_untouched(versions)
    state.theta = [t.detach() for t in theta]
    state.n_steps += n_steps
    state.sampler = sampler.state()


def hypergradient(problem: BilevelProblem, lam: list[torch.Tensor], state: ChainState,
                  settings: InnerSettings, generator: torch.Generator) -> Hypergradient:
    """Dispatch to the method named by ``settings.method`` (all share this signature)."""
    from .baselines import BASELINES

    if settings.method == "sgld":
        return sgld_hypergrad(problem, lam, state, settings, generator)
    return BASELINES[settings.method](problem, lam, state, settings, generator)
