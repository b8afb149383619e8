"""Hypergradient estimators along an SGLD chain: one strategy object per recursion.

The chain loop (:func:`~sgld_tuner.core.hypergrad.sgld_hypergrad`) owns autograd: at each
inner step it computes, where the strategy reads them (``needs_outer_gradient``,
``needs_mixed_at``, ``needs_hessian``), ``v = grad_theta f(theta_m)`` and, for the vector
``u`` the strategy asks for, the products ``u^T d2L_T/(dtheta dlam)`` (``mixed``) and
``H_T u`` (``hess_u``), both at ``theta_{m-1}``, in one double backward (or in closed form
for separable penalties). A strategy only does arithmetic on those products:

    recursion.begin(saved)            # saved: this strategy's state from the last outer iteration
    for m in 1 .. B + M:
        u = recursion.vector(v)       # what to contract the mixed derivative with
        recursion.update(StepProducts(...))
        if m > B: recursion.accumulate()
    indirect = recursion.indirect()   # the part of h that flows through theta
    saved = recursion.end()           # an opaque RecursionState, or None

Registry: :data:`RECURSIONS`. Strategies that accept a ``lam``-dependent start (the
``J0`` terms, MAML-type) say so with ``accepts_lam_start``; the others refuse at build time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import _tree


@dataclass
class RecursionState:
    """What a strategy carries from one outer iteration to the next (opaque to callers).

    Checkpoints, rollbacks, ``save`` and warm starts copy it whole with :meth:`copy`.
    """

    name: str
    tensors: dict = field(default_factory=dict)

    def copy(self) -> "RecursionState":
        return RecursionState(self.name, {k: [t.detach().clone() for t in v]
                                          for k, v in self.tensors.items()})


@dataclass
class StepProducts:
    """Everything one inner step ``m`` hands to a strategy.

    ``v`` is ``grad_theta f(theta_m)``; ``mixed`` is ``u^T d2L_T/(dtheta dlam)`` and
    ``hess_u`` is ``H_T u`` (``None`` unless the strategy asked for it), both at
    ``theta_{m-1}``; ``outer_value`` is ``f(theta_m)``; ``inner_lam_grad`` is
    ``dL_T/dlam`` at ``theta_{m-1}`` (only for strategies that ask for it). ``mixed`` is
    ``None`` on a step the strategy does not need it (:meth:`Recursion.needs_mixed_at`),
    ``v`` on a step it does not need ``grad_theta f`` and ``outer_value`` where ``f``
    was not evaluated.
    """

    m: int
    v: list | None
    mixed: list | None
    hess_u: list | None
    outer_value: torch.Tensor | None
    inner_lam_grad: list | None = None
    precond: list | None = None  # the sampler's diagonal preconditioner at this step


class Recursion:
    """Base class: a forward recursion ``g_m`` averaged over the retained samples.

    Parameters
    ----------
    lam : list of Tensor
        The hyperparameter leaves (shapes of the estimate).
    settings : InnerSettings
        ``inner_lr``, ``n_samples``, ``curvature_every`` and the chain type.
    persistent : bool
        Whether the strategy's state continues into the next outer iteration.
    """

    name = ""
    #: accepts a start ``theta_0(lam)`` (adds the ``J0`` terms of eq. 22)
    accepts_lam_start = False
    #: with a lam-dependent start, the ``-eta H_T J0`` term needs ``H_T v``
    start_needs_hessian = False
    #: needs ``dL_T/dlam`` at every step (a first-order product, no double backward)
    needs_inner_lam_grad = False
    #: needs the mixed derivative at every step
    needs_mixed = True
    #: reads ``f(theta_m)`` at every step, burn-in included
    needs_outer_value = False
    #: curvature refresh period when ``curvature_every`` is None (None: once per outer iteration)
    default_refresh: int | None = None
    #: its arithmetic is per weight, or reduces per slice (:attr:`slices`), so ``K``
    #: chains stacked along dim 0 give each chain what it gets alone (the tuner's
    #: stacked folds run only such strategies)
    stackable = False
    #: ``K`` when the chain is ``K`` chains stacked along dim 0 of every leaf (the tuner's
    #: stacked folds): what a strategy reduces over the whole chain it then reduces per
    #: slice. ``None``: one chain.
    slices: int | None = None

    def __init__(self, lam, settings, persistent: bool):
        self.eta = settings.inner_lr
        self.n_samples = settings.n_samples
        self.refresh_every = (settings.curvature_every or self.default_refresh
                              or settings.burn_in + settings.n_samples)
        self.persistent = persistent
        self.burn_in = settings.burn_in
        self.g = _tree.zeros_like(lam)
        self.total = _tree.zeros_like(lam)
        self.diagnostics: dict = {}

    # -- the interface the chain loop calls ------------------------------------------
    def begin(self, saved: RecursionState | None, theta) -> None:
        """Start an outer iteration, from ``saved`` when the chain continues."""

    def needs_hessian(self, m: int) -> bool:
        """Whether step ``m`` needs ``H_T u`` (a double backward)."""
        return False

    def needs_mixed_at(self, m: int) -> bool:
        """Whether step ``m`` needs the mixed product ``u^T d2L_T/(dtheta dlam)``."""
        return self.needs_mixed

    def needs_outer_gradient(self, m: int) -> bool:
        """Whether step ``m`` needs ``v = grad_theta f`` (an outer backward); without it
        the chain loop evaluates the outer loss only where its value is used."""
        return True

    def vector(self, v):
        """The vector ``u`` the mixed derivative is contracted with at this step."""
        return v

    def update(self, step: StepProducts) -> None:
        raise NotImplementedError

    def add_start_terms(self, extra) -> None:
        """Add the ``J0`` terms of a lam-dependent start to ``g``."""
        self.g = [gi + e for gi, e in zip(self.g, extra)]

    def accumulate(self) -> None:
        """``h += g_m / M`` for a retained sample."""
        with torch.no_grad():
            self.total = _tree.axpy_(self.total, self.current(), 1.0 / self.n_samples)

    def current(self) -> list:
        """``g_m``, the estimate at the current step."""
        return self.g

    def indirect(self) -> list:
        """The part of the hypergradient that flows through theta."""
        return self.total

    def end(self) -> RecursionState | None:
        """State for the next outer iteration (``None``: nothing carries over)."""
        return None

    def _saved(self, saved, key):
        """The tensors under ``key`` of a state written by this same strategy, else None."""
        if saved is None or saved.name != self.name or saved.tensors.get(key) is None:
            return None
        return [t.clone() for t in saved.tensors[key]]


class PaperRecursion(Recursion):
    """Eq. 22 verbatim: ``g_m = g_{m-1} - eta v^T B`` (plus the ``J0`` terms)."""

    name = "paper"
    accepts_lam_start = True
    stackable = True
    start_needs_hessian = True

    def update(self, step):
        with torch.no_grad():
            self.g = _tree.axpy_(self.g, step.mixed, -self.eta)


class DampedRecursion(Recursion):
    """Eq. 22 with the ``(I - eta H_T)`` contraction kept along ``v``.

    ``g_m = rho_m g_{m-1} - eta v^T B`` with ``rho = clip(1 - eta v^T H_T v / v^T v, 0, 1)``,
    refreshed every ``curvature_every`` steps; ``g`` carries over a persistent chain.

    A lam-dependent start adds ``R_m s_m``: ``s_m`` the start's terms of eq. 22 without
    their ``-eta H_T J0`` part, which telescope to ``grad_theta f(theta_m) J0``, and
    ``R_m = rho_1 ... rho_m`` the same scalar model of ``prod (I - eta H_T)`` applied
    once to the whole of it. (Damping each telescoped increment by the contractions
    after it instead weighs the latest change of ``grad_theta f`` most and shrinks the
    start's own ``grad_theta f(theta_0) J0`` by ``rho`` every step.) With an isotropic
    ``H_T`` this is the exact derivative of the unrolled chain.
    """

    name = "damped"
    accepts_lam_start = True

    def begin(self, saved, theta):
        carried = self._saved(saved, "g") if self.persistent else None
        if carried is not None:
            self.g = carried
        self.rho = None
        self.start = None  # s_m: a lam-dependent start's terms (never persistent)
        self.contraction = None  # R_m

    def add_start_terms(self, extra) -> None:
        self.start = extra if self.start is None else [s + e for s, e in zip(self.start, extra)]

    def current(self) -> list:
        if self.start is None:
            return self.g
        if self.contraction is None:
            return [gi + si for gi, si in zip(self.g, self.start)]
        return [gi + self.contraction * si for gi, si in zip(self.g, self.start)]

    def needs_hessian(self, m):
        return (m - 1) % self.refresh_every == 0

    def update(self, step):
        with torch.no_grad():
            if step.hess_u is not None:
                vv = _tree.dot(step.v, step.v)
                fresh = (1.0 - self.eta * _tree.dot(step.v, step.hess_u) / vv).clamp(0.0, 1.0)
                # torch.where, not `if vv > 0`: no host sync; keep the last rho when v = 0.
                last = fresh.new_ones(()) if self.rho is None else self.rho
                self.rho = torch.where(vv > 0, fresh, last)
            if self.rho is not None:
                self.g = [self.rho * gi for gi in self.g]
                if self.start is not None:
                    self.contraction = self.rho if self.contraction is None \
                        else self.contraction * self.rho
            self.g = _tree.axpy_(self.g, step.mixed, -self.eta)

    def end(self):
        self.diagnostics["rho"] = float(self.rho) if self.rho is not None else 1.0
        return RecursionState(self.name, {"g": [t.detach() for t in self.g]}) \
            if self.persistent else None


#: how far beyond its system's solution (``w^T H w`` over ``|v^T w|``, 1 there) an
#: adjoint must grow, on how many adjoint steps in a row (one step can be a minibatch's
#: noise), before :class:`TrackedRecursion` drops it
RUNAWAY_RATIO = 100.0
RUNAWAY_STEPS = 3


class TrackedRecursion(Recursion):
    """An adjoint ``w ~ H_T^-1 grad_theta f`` tracked along the chain.

    ``g_m = -w^T B`` and, per refresh, one step of an iteration on the adjoint system
    ``H_T w = v`` (``v = grad_theta f``) preconditioned by ``P`` (the sampler's diagonal
    preconditioner, the identity for plain SGLD), so ``w`` converges along a persistent
    chain (it carries over) and the estimate becomes the implicit-function
    hypergradient at stationarity, in any dimension. With ``curvature_every = k > 1``
    (default 5, or ``(B + M) // 2`` if that is smaller, so that it steps at least twice
    per outer iteration) the adjoint steps every ``k``-th inner step only; the steps in
    between contract the mixed derivative with the current ``w`` (in closed form for
    separable penalties, without a double backward) and need no outer gradient.

    The iteration (``adjoint`` in :class:`~sgld_tuner.core.problem.InnerSettings`):

    * ``"accelerated"`` (default): Nesterov's accelerated gradient with adaptive restart
      (O'Donoghue & Candes 2015), ``x' = w - a P (H_T w - v)``,
      ``w' = x' + beta (x' - x)``, ``beta = j / (j + 3)`` after ``j`` steps since the
      last restart; it restarts (``beta = 0``, ``j = 0``) where the step went uphill,
      ``(H_T w - v) . (x' - x) > 0``, or the safeguard's shift grew. On the quadratic
      ``w^T H w / 2 - v^T w`` it needs about ``sqrt(kappa)`` steps where the plain
      iteration needs ``kappa`` (``kappa``: the condition number of ``P H``), without
      knowing the smallest curvature and with no further Hessian product: on
      ill-conditioned problems the plain iteration at ``k = 5`` is far from converged
      after a thousand inner steps (``benchmarks/hypergrad_quality.py``, ``ill-*``
      rows). The price: one more weight-sized vector (``x``) in the state, and the
      chain's noise (minibatches, temperature) passes into ``w`` a little more.
    * ``"gradient"``: the plain iteration ``w' = w - a P (H_T w - v)``.

    ``a`` is ``eta`` capped by the curvature safeguard (:meth:`_safeguarded`).

    A last safeguard drops a runaway adjoint: at the system's solution ``w^T H_T w =
    v^T w``; where ``w^T H_T w`` exceeds ``|v^T w|`` :data:`RUNAWAY_RATIO`-fold on
    :data:`RUNAWAY_STEPS` adjoint steps in a row, ``w`` has grown far beyond anything
    ``v`` supports, so it restarts from zero and the chain's adjoint iterates without
    momentum from then on, at half the step (halved again at each later drop).
    (Nesterov's iteration is stable only where ``a h < 4/3``, the plain one to 2; a net
    trained at a large lr sits at the edge of stability, with minibatch curvatures near
    ``2 / eta`` that the Rayleigh quotient along ``w`` does not see, and there the
    accelerated adjoint grew without bound along a long chain, the hypergradient finite
    but meaningless: ``docs/bias.md``.) The test is scale-free: a large ``w`` that solves
    its system (small curvatures) passes. The restart costs one masked pass over ``w``
    (and ``x``) per adjoint step, a ``torch.where`` rather than a host-side check, so
    that a CUDA chain never waits on the device.
    """

    name = "tracked"
    stackable = True
    #: refresh the adjoint every 5th step: as good a search as every step, at a lower
    #: cost per inner step (figures: ``docs/performance.md``,
    #: ``benchmarks/results/search_effect_curvature_every.md``)
    default_refresh = 5

    def __init__(self, lam, settings, persistent):
        super().__init__(lam, settings, persistent)
        if settings.curvature_every is None:
            self.refresh_every = self.default_period(settings.burn_in + settings.n_samples)
        # Nesterov's momentum assumes one fixed operator; pSGLD's preconditioner moves
        # every step, and accelerating across it settled off the exact ridge hypergradient
        # where the plain iteration converged (tests/test_samplers.py; docs/bias.md).
        self.accelerated = (getattr(settings, "adjoint", "accelerated") == "accelerated"
                            and getattr(settings, "sampler", "sgld") != "psgld")

    @classmethod
    def default_period(cls, steps: int, most: int | None = None) -> int:
        """The adjoint's period on outer iterations of ``steps`` inner steps:
        ``default_refresh``, but at least two adjoint steps per iteration (on short
        chains the adjoint would otherwise converge over far fewer steps than before)
        and, given ``most``, at most ``most`` of them."""
        period = max(1, min(cls.default_refresh, steps // 2))
        return period if most is None else max(period, math.ceil(steps / most))

    def begin(self, saved, theta):
        carried = self._saved(saved, "w") if self.persistent else None
        self.w = carried if carried is not None else _tree.zeros_like(theta)
        device, dtype = theta[0].device, theta[0].dtype
        shape = () if self.slices is None else (self.slices,)
        for key in ("curvature", "shift", "age", "worse", "plain"):
            kept = self._saved(saved, key) if self.persistent else None
            setattr(self, key, kept[0] if kept else torch.zeros(shape, device=device, dtype=dtype))
        # x: the last plain step's iterate (the momentum is x' - x). A state without one
        # (the plain iteration's, or a fresh chain) starts without momentum.
        kept = self._saved(saved, "x") if self.persistent and self.accelerated else None
        self.x = kept if kept is not None else self.w
        if kept is None:
            self.age = torch.zeros_like(self.age)
        self.beta = torch.zeros_like(self.age)

    def needs_hessian(self, m):
        return (m - 1) % self.refresh_every == 0

    def needs_outer_gradient(self, m):
        # v enters only the adjoint's step, taken with the Hessian product.
        return self.needs_hessian(m)

    def needs_mixed_at(self, m):
        # g_m = -w^T B_m has no memory: only the retained samples' products count.
        return m > self.burn_in

    def vector(self, v):
        return self.w

    def update(self, step):
        with torch.no_grad():
            if step.mixed is not None:
                self.g = [-b for b in step.mixed]
            if step.hess_u is not None:
                self._adjoint_step(step)

    def _adjoint_step(self, step) -> None:
        """One step of the iteration on ``H_T w = v`` (tensor ops: no host sync)."""
        # Weight-sized buffers: the state's w and x are never written (a failed chain
        # leaves its state as it was); this step's own results are, in place, so that a
        # step holds four of them besides w and x (a million-weight net's peak is counted
        # in them).
        shift = self.shift
        hess_w, step_size, w_hess_w = self._safeguarded(step.hess_u, step.precond)
        dropped = self._runaway(w_hess_w, step.v)
        grad = [hw.sub_(ft) for hw, ft in zip(hess_w, step.v)]  # hess_w is this step's
        if not self.accelerated:
            if step.precond is not None:  # the same dynamics as the chain's step
                grad = [r.mul_(p) for p, r in zip(step.precond, grad)]
            w = [w - r.mul_(_along(step_size, w)) for w, r in zip(self.w, grad)]
            del grad
            self.w = self._restart_where(dropped, w)
            return
        # (accelerated: no preconditioner, see __init__) one fused pass per leaf
        x = [torch.addcmul(w, _along(step_size, w), r, value=-1.0)
             for w, r in zip(self.w, grad)]
        moved = [a - b for a, b in zip(x, self.x)]
        # restart where the step went uphill on w^T H w / 2 - v^T w, or the safeguard's
        # shift changed the system; no momentum once an adjoint was dropped
        keep = (self._dot(grad, moved) <= 0) & (self.shift <= shift) & (self.plain == 0)
        del grad
        self.beta = torch.where(keep, self.age / (self.age + 3.0), torch.zeros_like(self.age))
        self.age = torch.where(keep, self.age + 1.0, torch.zeros_like(self.age))
        # w' = x' + beta (x' - x), written over x' - x
        w = [d.mul_(_along(self.beta, d)).add_(a) for a, d in zip(x, moved)]
        del moved
        self.w = self._restart_where(dropped, w)
        self.x = self._restart_where(dropped, x)

    def _runaway(self, w_hess_w, v) -> torch.Tensor:
        """Where (per slice) ``w`` has run away (:data:`RUNAWAY_RATIO`, or is no longer
        finite) on :data:`RUNAWAY_STEPS` steps in a row; there the iteration loses its
        momentum for good and its step halves (``curvature`` at least ``2 / eta``), again
        at each drop: a plain iteration that still runs away steps ever more carefully.
        ``w_hess_w``: ``w`` times its (shifted) Hessian product."""
        # a w that already overflowed (a state saved before this test) runs away too
        beyond = (w_hess_w > RUNAWAY_RATIO * self._dot(v, self.w).abs()) \
            | ~torch.isfinite(w_hess_w)
        self.worse = torch.where(beyond, self.worse + 1.0, torch.zeros_like(self.worse))
        dropped = self.worse >= RUNAWAY_STEPS
        self.worse = torch.where(dropped, torch.zeros_like(self.worse), self.worse)
        self.plain = torch.where(dropped, torch.ones_like(self.plain), self.plain)
        halved = torch.maximum(2.0 * self.curvature, torch.full_like(self.curvature,
                                                                     2.0 / self.eta))
        self.curvature = torch.where(dropped, halved, self.curvature)
        return dropped

    @staticmethod
    def _restart_where(dropped: torch.Tensor, tensors: list) -> list:
        """``tensors`` (this step's own) with the dropped slices set to zero, in place."""
        return [t.masked_fill_(_along(dropped, t), 0.0) for t in tensors]

    def _safeguarded(self, hess_w, precond):
        """``(H w + s M w, step, w^T (H w + s M w))``: the adjoint's Hessian product,
        shifted by ``s``, its step size and ``w`` times the product. Tensor ops, no host
        sync.

        The gradient iteration on ``H w = v`` is stable only where the (preconditioned)
        Hessian is positive and ``step * h <= 2``. A chain can train where that fails: on
        a non-convex loss (a learned Taylor loss has directions of negative curvature)
        or under momentum or Adam, which normalise their own step. The Rayleigh quotient
        ``q`` along ``w`` finds such a direction first, because ``w`` grows along it. So
        ``s`` is twice the most negative ``q`` seen (0 on a convex problem: the product
        is then unchanged), which turns ``H`` into ``H + s M`` (``M = P^-1``, the
        identity for plain SGLD) and gives that direction the curvature's magnitude
        instead of its sign, and the step is capped so that ``step * (q + s) <= 1`` for
        the largest value seen. Both persist along the chain.
        """
        scaled = self.w if precond is None else [w / p for w, p in zip(self.w, precond)]
        den = self._dot(self.w, scaled)
        w_hess_w = self._dot(self.w, hess_w)
        q = torch.where(den > 0, w_hess_w / den.clamp_min(1e-300), torch.zeros_like(den))
        q = torch.nan_to_num(q, nan=0.0)
        self.shift = torch.maximum(self.shift, (-2.0 * q).clamp_min(0.0))
        self.curvature = torch.maximum(self.curvature, q + self.shift)
        # a new list: hess_w is the chain loop's (the caller may read it after the update)
        shifted = [torch.addcmul(h, _along(self.shift, x), x) for h, x in zip(hess_w, scaled)]
        step = torch.minimum(torch.as_tensor(self.eta, dtype=den.dtype, device=den.device),
                             1.0 / self.curvature.clamp_min(1e-300))
        return shifted, step, w_hess_w + self.shift * den

    def _dot(self, a, b):
        """``a . b`` over the chain, or per slice (a ``(K,)`` tensor) for stacked chains."""
        if self.slices is None:
            return _tree.dot(a, b)
        return sum((x * y).reshape(self.slices, -1).sum(1) for x, y in zip(a, b))

    def end(self):
        self.diagnostics["adjoint_norm"] = float(_tree.dot(self.w, self.w).sqrt())
        self.diagnostics["adjoint_curvature"] = float(self.curvature.max())
        self.diagnostics["adjoint_shift"] = float(self.shift.max())
        self.diagnostics["adjoint_dropped"] = float(self.plain.max())
        if self.accelerated:
            self.diagnostics["adjoint_momentum"] = float(self.beta.max())
        if not self.persistent:
            return None
        tensors = {"w": [t.detach() for t in self.w], "curvature": [self.curvature.detach()],
                   "shift": [self.shift.detach()], "worse": [self.worse.detach()],
                   "plain": [self.plain.detach()]}
        if self.accelerated:
            tensors["x"] = [t.detach() for t in self.x]
            tensors["age"] = [self.age.detach()]
        return RecursionState(self.name, tensors)


class GibbsRecursion(Recursion):
    """The score-function identity of a Gibbs distribution, estimated along the chain.

    ``d/dlam E_p[f] = E_p[df/dlam] - Cov_p(f, dL_T/dlam) / tau`` for
    ``p ∝ exp(-L_T / tau)``. Needs only first-order products (``dL_T/dlam`` comes with
    the inner backward), no Hessian; exact for a chain at stationarity, but its variance
    grows like ``1 / tau`` and with the chain's autocorrelation.
    """

    name = "gibbs"
    needs_inner_lam_grad = True
    needs_mixed = False
    needs_outer_value = True

    def needs_outer_gradient(self, m):
        return False  # the identity uses f's value, never its gradient in theta

    def __init__(self, lam, settings, persistent):
        super().__init__(lam, settings, persistent)
        if settings.temperature <= 0:
            raise ValueError("recursion='gibbs' needs temperature > 0 (the identity divides by it)")
        self.tau = settings.temperature
        self.count = 0
        self.sum_f = 0.0
        self.sum_d = _tree.zeros_like(lam)
        self.sum_fd = _tree.zeros_like(lam)
        self.f_prev = None

    def update(self, step):
        # dL_T/dlam of this step is at theta_{m-1}: pair it with f(theta_{m-1}).
        with torch.no_grad():
            if self.f_prev is not None and step.m - 1 > self.burn_in:
                f = self.f_prev
                self.count += 1
                self.sum_f = self.sum_f + f
                self.sum_d = _tree.axpy_(self.sum_d, step.inner_lam_grad, 1.0)
                self.sum_fd = _tree.axpy_(self.sum_fd, step.inner_lam_grad, f)
            self.f_prev = step.outer_value.detach()

    def accumulate(self):
        """The estimate is formed once from the sums in :meth:`indirect`."""

    def indirect(self):
        if self.count < 2:
            return _tree.zeros_like(self.sum_d)
        n = self.count
        mean_f = self.sum_f / n
        return [-(fd / n - mean_f * d / n) * (n / (n - 1)) / self.tau
                for fd, d in zip(self.sum_fd, self.sum_d)]


def _along(scale, like: torch.Tensor):
    """``scale`` (a number, a 0-d tensor or one value per slice) shaped to multiply
    ``like`` (per-slice values along its dim 0)."""
    if isinstance(scale, torch.Tensor) and scale.dim() == 1:
        return scale.reshape(-1, *([1] * (like.dim() - 1)))
    return scale


RECURSIONS = {cls.name: cls for cls in (PaperRecursion, DampedRecursion, TrackedRecursion,
                                        GibbsRecursion)}


#: what ``recursion="auto"`` (the default) resolves to; chosen by
#: ``benchmarks/hypergrad_quality.py`` (see ``docs/bias.md``)
DEFAULT_RECURSION = "tracked"
#: ... for a lam-dependent (MAML-type) start, which the adjoint cannot take, and for a
#: training loss the hyperparameters rewrite (a learned loss need not have a minimum
#: nor a positive Hessian, which the adjoint's implicit-function form assumes;
#: ``docs/bias.md``)
DEFAULT_LAM_START_RECURSION = "damped"


def resolve_recursion(name: str, start_depends_on_lam: bool,
                      rewrites_loss: bool = False) -> str:
    """The strategy ``"auto"`` stands for in this situation; other names pass through.

    The one place ``"auto"`` is resolved: :func:`make_recursion` for the core's own
    callers, and the tuner once per fit (``rewrites_loss``: a hyperparameter kind
    rewrites the per-sample training loss, e.g. ``TaylorLoss``).
    """
    if name != "auto":
        return name
    if start_depends_on_lam or rewrites_loss:
        return DEFAULT_LAM_START_RECURSION
    return DEFAULT_RECURSION


def make_recursion(settings, lam, *, start_depends_on_lam: bool,
                   slices: int | None = None) -> Recursion:
    """Build the strategy named by ``settings.recursion`` for one outer iteration
    (``slices``: see :attr:`Recursion.slices`)."""
    name = resolve_recursion(settings.recursion, start_depends_on_lam)
    try:
        cls = RECURSIONS[name]
    except KeyError:
        raise ValueError(f"recursion must be 'auto' or one of {sorted(RECURSIONS)}, "
                         f"got {settings.recursion!r}") from None
    if start_depends_on_lam and not cls.accepts_lam_start:
        accepting = sorted(n for n, c in RECURSIONS.items() if c.accepts_lam_start)
        raise ValueError(f"recursion={cls.name!r} needs a start independent of lam; use one of "
                         f"{accepting} for a callable (MAML-type) theta0")
    persistent = settings.chain == "persistent" and not start_depends_on_lam
    recursion = cls(lam, settings, persistent)
    recursion.slices = slices
    return recursion
