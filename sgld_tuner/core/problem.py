"""Shared types: the bilevel problem, the inner-loop settings, the chain state and the result.

Every hypergradient method (``hypergrad.py`` and ``baselines.py``) has the signature::

    method(problem, lam, state, settings, generator) -> Hypergradient

with ``lam`` a flat list of leaf tensors that require grad, ``state`` the per-chain
:class:`ChainState` (updated in place) and ``generator`` the one ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Callable

import torch

from . import _tree
from .recursions import RECURSIONS
from .sgld import NOISES, SAMPLERS

METHODS = ("sgld", "rmd", "rmd-fo", "fmd", "ift-cg", "ift-neumann")
#: the tracked recursion's adjoint iterations (``InnerSettings.adjoint``)
ADJOINTS = ("accelerated", "gradient")


@dataclass
class InnerSettings:
    """Inner-loop knobs shared by all methods.

    Parameters
    ----------
    method : str
        One of ``METHODS``.
    inner_lr : float
        Inner step size ``eta`` (SGLD and the unrolled baselines alike).
    burn_in, n_samples : int
        SGLD's ``B`` (steps discarded) and ``M`` (steps averaged).
    temperature, noise_scale : float
        SGLD's ``tau`` and ``kappa``: noise std per step is ``sqrt(2 eta tau) * kappa``.
    n_inner : int or None
        Inner steps of the baselines; ``None`` means ``burn_in + n_samples`` (equal cost).
    chain : {"persistent", "restart"}
        Whether an outer iteration continues the previous chain (detached, so still
        independent of ``lam``) or restarts from ``theta0``. A callable ``theta0``
        (MAML-type start) always restarts.
    recursion : str
        The hypergradient strategy along the chain: ``"auto"`` (default: ``"tracked"``,
        or ``"damped"`` for a lam-dependent start, which the adjoint cannot take) or one
        of :data:`~sgld_tuner.core.recursions.RECURSIONS`: ``"paper"`` (eq. 22 as published),
        ``"damped"`` (eq. 22 with the ``(I - eta H)`` contraction kept along
        ``grad_theta f``), ``"tracked"`` (an adjoint ``w ~ H^-1 grad f`` tracked along the
        chain: the implicit-function hypergradient at stationarity), ``"gibbs"`` (the
        score-function identity of the Gibbs distribution, first-order only). See
        ``docs/bias.md`` for the measurements behind the default.
    curvature_every : int or None
        ``"damped"`` and ``"tracked"``: take the Hessian-vector product (one double
        backward) every this many steps, always at the first step of an outer iteration;
        the steps in between reuse the damping factor (damped) or the current adjoint
        (tracked) and, with a closed-form ``mixed_vjp``, need no double backward.
        ``None`` (default): once per outer iteration for damped, every 5th step for
        tracked (every ``(B + M) // 2``-th on chains shorter than 10 steps, at least
        every step), whose steps in between then skip the outer gradient too (the
        adjoint's step is the only user of ``grad_theta f``). The measurements behind
        these defaults are in ``docs/bias.md`` and ``docs/performance.md``.
    adjoint : {"accelerated", "gradient"}
        ``"tracked"``: the iteration that steps its adjoint ``w ~ H^-1 grad f`` at each
        refresh: Nesterov's accelerated gradient with adaptive restart (default: about
        ``sqrt(kappa)`` refreshes to converge on a problem of condition number ``kappa``)
        or the plain gradient iteration (about ``kappa``; it matches reverse mode through
        a short chain more closely, the accelerated one the implicit-function answer).
        Under ``sampler="psgld"`` (a moving preconditioner) the plain iteration is used
        either way. Same Hessian products; measurements in ``docs/bias.md``.
    curvature_bound : float or None
        The curvature guard (:mod:`~sgld_tuner.core.curvature`): at the start of each outer
        iteration measure ``eta * lambda_max`` of the inner Hessian (a few Hessian-vector
        products of power iteration) and, above this bound, shrink that iteration's inner
        step to ``bound / lambda_max`` with a ``CurvatureWarning``. ``None`` (default): bound
        1 for a lam-dependent (MAML-type) start, whose eq. 22 terms are a first-order
        expansion in ``eta * H``, and no guard otherwise; ``inf``: off. The measured value
        and the step used are in the hypergradient's diagnostics. The measurement calls
        ``inner_loss`` outside the chain (mind a stochastic inner loss with its own RNG).
    sampler : {"sgld", "momentum", "psgld"}
        The inner dynamics (:data:`~sgld_tuner.core.sgld.SAMPLERS`): plain SGLD; SGLD with
        momentum ``momentum`` (what an SGD-with-momentum net does); preconditioned SGLD
        with Adam's/RMSprop's diagonal (``beta2``, ``precond_eps``) and, given a
        ``momentum``, Adam's first moment with that ``beta1``: what an Adam or RMSprop
        net does. The tracked adjoint steps with the same preconditioner.
    noise : {"gaussian", "rademacher"}
        The chains' noise increments ``z`` (:data:`~sgld_tuner.core.sgld.NOISES`):
        standard normal (the paper's), or random signs: the same mean and variance, the
        simplified weak Euler scheme of Langevin dynamics (Kloeden & Platen 1992, 14.1),
        whose samples' distribution has the same order of discretisation error as with
        normal increments, and much cheaper to draw on a CPU (``docs/performance.md``).
    momentum, beta2, precond_eps : float
        The samplers' knobs (momentum in [0, 1), beta2 in [0, 1), precond_eps > 0).
    decoupled_decay : float
        AdamW's weight decay (Loshchilov & Hutter 2019): each step first shrinks the
        weights by ``1 - eta * decoupled_decay``, outside the sampler's preconditioner,
        then takes the sampler's step. Under plain SGLD this is an L2 term of that
        strength in ``L_T``; under pSGLD it pulls every weight alike where an L2 term's
        pull would be scaled by ``P``. The Hessian products the recursions take add the
        decay's curvature in the preconditioned coordinates (``H u + decay * u / P``), so
        the tracked adjoint solves the stationarity condition of these dynamics. SGLD
        only (the unrolled baselines have no sampler). Default 0.
    keep_samples : bool
        Keep the ``M`` retained SGLD samples in the result (for posterior ensembles).
    cg_iters, cg_damping : int, float
        IFT-CG: iterations and Hessian regulariser ``gamma`` in ``(H + gamma I) x = v``.
    neumann_iters, neumann_alpha : int, float or None
        IFT-Neumann: series length ``i`` and step ``alpha`` in
        ``H^-1 v ~ alpha * sum_k (I - alpha H)^k v``; ``None``: ``inner_lr``, so the
        series converges wherever the inner gradient descent does (both need ``alpha``
        below ``2 / lambda_max(H)``; a fixed step diverges on a stiffer Hessian).
    """

    method: str = "sgld"
    inner_lr: float = 0.01
    burn_in: int = 50
    n_samples: int = 50
    temperature: float = 1.0
    noise_scale: float = 1.0
    n_inner: int | None = None
    chain: str = "persistent"
    recursion: str = "auto"
    curvature_every: int | None = None
    curvature_bound: float | None = None
    sampler: str = "sgld"
    noise: str = "gaussian"
    momentum: float = 0.0
    beta2: float = 0.999
    precond_eps: float = 1e-8
    decoupled_decay: float = 0.0
    keep_samples: bool = False
    cg_iters: int = 10
    cg_damping: float = 0.01
    neumann_iters: int = 10
    neumann_alpha: float | None = None
    adjoint: str = "accelerated"

    # One rule per numeric setting, ``(type, low, high, closed)`` as scikit-learn's
    # ``Interval`` reads them (``closed``: which bounds are allowed; None: unbounded).
    # InnerSettings.validate enforces them for the core and the tuner hands the same
    # entries to scikit-learn's parameter validation, so both front ends accept exactly
    # the same values. temperature >= 0: tau = 0 is plain (stochastic) gradient descent on
    # the chain, the tau -> 0 end of the method; the "gibbs" recursion, which divides by
    # tau, asks for tau > 0 itself.
    BOUNDS = {
        "inner_lr": (Real, 0, None, "neither"),
        "burn_in": (Integral, 0, None, "left"),
        "n_samples": (Integral, 1, None, "left"),
        "temperature": (Real, 0, None, "left"),
        "noise_scale": (Real, 0, None, "left"),
        "n_inner": (Integral, 1, None, "left"),
        "curvature_every": (Integral, 1, None, "left"),
        "curvature_bound": (Real, 0, None, "neither"),
        "cg_iters": (Integral, 1, None, "left"),
        "neumann_iters": (Integral, 0, None, "left"),
        "neumann_alpha": (Real, 0, None, "neither"),
        "momentum": (Real, 0, 1, "left"),
        "beta2": (Real, 0, 1, "left"),
        "precond_eps": (Real, 0, None, "neither"),
        "decoupled_decay": (Real, 0, None, "left"),
    }
    # Settings that may be None (meaning "the default rule", see above).
    OPTIONAL = ("n_inner", "curvature_every", "curvature_bound", "neumann_alpha")

    def validate(self) -> "InnerSettings":
        """Check every setting against its one rule (:attr:`BOUNDS`); returns ``self``."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.chain not in ("persistent", "restart"):
            raise ValueError(f"chain must be 'persistent' or 'restart', got {self.chain!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, got {self.adjoint!r}")
        if self.recursion != "auto" and self.recursion not in RECURSIONS:
            raise ValueError(f"recursion must be 'auto' or one of {sorted(RECURSIONS)}, got "
                             f"{self.recursion!r}")
        if self.decoupled_decay and self.method != "sgld":
            raise ValueError("decoupled_decay is a step of the SGLD samplers; method "
                             f"{self.method!r} has none (put an L2 term in inner_loss)")
        bad = [name for name in self.BOUNDS if not self._within(name)]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            rules = ", ".join(f"{n} in {self._rule(n)}" for n in bad)
            raise ValueError(f"invalid inner settings: {values} (need {rules})")
        return self

    def _within(self, name: str) -> bool:
        value = getattr(self, name)
        if value is None:
            return name in self.OPTIONAL
        _, low, high, closed = self.BOUNDS[name]
        # NaN fails every comparison, so it is refused.
        above = value >= low if closed in ("left", "both") else value > low
        below = high is None or (value <= high if closed in ("right", "both") else value < high)
        return bool(above and below)

    @classmethod
    def _rule(cls, name: str) -> str:
        _, low, high, closed = cls.BOUNDS[name]
        left = "[" if closed in ("left", "both") else "("
        right = "]" if closed in ("right", "both") else ")"
        return f"{left}{low}, {'inf' if high is None else high}{right}"

    @classmethod
    def check_options(cls, options: dict | None, set_by_caller=()) -> dict:
        """``method_options`` checked against the fields of this class.

        Parameters
        ----------
        options : dict or None
        set_by_caller : iterable of str
            Fields the caller sets from its own arguments; they are not options.

        Returns
        -------
        dict
            A copy of ``options``.

        Raises
        ------
        ValueError
            For a key that is not a field of :class:`InnerSettings`, or is set by the caller.
        """
        options = dict(options or {})
        valid = [f.name for f in fields(cls) if f.name not in set(set_by_caller)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown method_options {unknown}; valid: {valid}")
        return options

    @property
    def steps(self) -> int:
        """Inner steps per outer iteration for the chosen method."""
        if self.method == "sgld":
            return self.burn_in + self.n_samples
        return self.n_inner if self.n_inner is not None else self.burn_in + self.n_samples


@dataclass
class ChainState:
    """What persists between outer iterations of one chain (one per cv fold in the tuner).

    ``recursion`` is the hypergradient strategy's own state (opaque, see
    :class:`~sgld_tuner.core.recursions.RecursionState`): checkpoints, rollbacks, ``save``
    and warm starts copy the whole object with :meth:`copy`.
    """

    theta: list[torch.Tensor] | None = None
    n_steps: int = 0
    recursion: Any = None
    sampler: dict | None = None  # the sampler's buffers (momentum, second moments)

    def reset(self) -> None:
        self.theta, self.recursion, self.sampler, self.n_steps = None, None, None, 0

    # -- the rollback invariant ---------------------------------------------------------
    # A step replaces the state's fields with new tensors and never writes into the
    # tensors it was given: a rollback's shallow copy of the state then stays valid.
    # Torch counts in-place writes per tensor (``_version``); the chain loop compares the
    # counts before and after and names the culprit.
    def tensor_versions(self) -> list:
        """``(where, tensor, version)`` of every tensor the state holds."""
        found = []

        def walk(where, value):
            if isinstance(value, torch.Tensor):
                found.append((where, value, value._version))
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{where}[{k!r}]", v)
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(f"{where}[{i}]", v)

        walk("theta", self.theta)
        walk("sampler", self.sampler)
        if self.recursion is not None:
            walk(f"recursion {self.recursion.name!r}", getattr(self.recursion, "tensors", None))
        return found

    @staticmethod
    def check_untouched(versions: list) -> None:
        """Raise if a tensor of :meth:`tensor_versions` was written in place since."""
        touched = [where for where, t, version in versions if t._version != version]
        if touched:
            raise RuntimeError(
                f"the chain state's {touched[:3]} were modified in place during a step: a "
                "strategy or sampler must replace the state's tensors, never write into "
                "them, or a rollback (divergence, Ctrl-C) restores corrupted values")

    def copy(self) -> "ChainState":
        """An independent copy (the chain, the strategy and the sampler state alike)."""
        def clone(value):
            if isinstance(value, list):
                return [t.detach().clone() for t in value]
            return value

        return ChainState(
            theta=clone(self.theta), n_steps=self.n_steps,
            recursion=None if self.recursion is None else self.recursion.copy(),
            sampler=None if self.sampler is None else {k: clone(v)
                                                       for k, v in self.sampler.items()})


@dataclass
class Hypergradient:
    """One hypergradient estimate.

    Attributes
    ----------
    grad : list of Tensor
        ``d E[f] / d lam``, shaped like ``lam``.
    outer_loss : float
        Outer loss averaged over the retained samples (SGLD; those it was evaluated on,
        see ``BilevelProblem``'s ``outer_depends_on_lam``) or at the final iterate.
    inner_loss : float
        Inner loss at the last step.
    theta : list of Tensor
        Last inner iterate (detached).
    samples : list of list of Tensor or None
        Retained SGLD samples when ``keep_samples`` was set.
    diagnostics : dict
        Method-specific numbers (e.g. the damping factor).
    """

    grad: list[torch.Tensor]
    outer_loss: float
    inner_loss: float
    theta: list[torch.Tensor]
    samples: list[list[torch.Tensor]] | None = None
    diagnostics: dict = field(default_factory=dict)


class SeparablePenalty:
    """A term ``P(lam, theta)`` of the inner loss whose derivatives are known in closed form.

    Elementwise penalties (L1, L2 with learned strengths) are the common case: their
    double backward through autograd (``abs``, ``pow``) costs about as much as the data
    loss's and contributes nothing or a diagonal. Given to :class:`BilevelProblem` as
    ``penalty``, the chain differentiates only the rest of the inner loss twice and adds
    these. All methods take and return the user's structures (as ``inner_loss`` does);
    a derivative may leave out leaves it does not touch (a dict without the key, or
    ``None``), which then count as zero.
    """

    def value(self, lam, theta) -> torch.Tensor:
        """``P(lam, theta)``, differentiable by autograd (the baselines use it)."""
        raise NotImplementedError

    def grad_theta(self, lam, theta):
        """``dP / dtheta``."""
        raise NotImplementedError

    def hvp(self, lam, theta, u):
        """``(d2P / dtheta2) u``; ``None`` for a penalty with no curvature (L1)."""
        raise NotImplementedError

    def mixed(self, lam, theta, u):
        """``u^T d2P / (dtheta dlam)``."""
        raise NotImplementedError

    def grad_lam(self, lam, theta):
        """``dP / dlam``."""
        raise NotImplementedError


class BilevelProblem:
    """Outer and inner losses over structured ``lam`` / ``theta``, seen as flat tensor lists.

    Parameters
    ----------
    outer_loss, inner_loss : callable
        ``(lam, theta) -> scalar tensor`` on the user's structures. ``inner_loss`` may be
        a minibatch (stochastic) estimate; each inner step calls it exactly once.
    lam_spec : spec
        Structure of ``lam`` (from ``_tree.flatten``).
    theta0 : tensor, tuple/dict of tensors, or callable
        Start of the chain. A callable ``lam -> theta`` is the MAML-type start whose
        Jacobian ``J0`` enters the recursion.
    mixed_vjp : callable, optional
        ``(lam, theta, v) -> list`` giving ``v^T d2 L_T / (d theta d lam)`` of the whole
        inner loss in closed form (separable penalties), used instead of a double
        backward over ``lam``.
    penalty : SeparablePenalty, optional
        A term of the inner loss with closed-form derivatives. ``inner_loss`` is then
        the rest: the inner loss is ``inner_loss + penalty.value`` (what :meth:`inner`
        returns), and HPO-SGLD differentiates only ``inner_loss`` through autograd.
    outer_depends_on_lam : bool, default=True
        ``False`` declares that ``outer_loss`` does not read ``lam`` (no direct term
        ``grad_lam f``). HPO-SGLD then evaluates it only on the steps whose strategy
        reads ``grad_theta f`` or ``f`` itself and on the chain's last step (with
        ``True``, also on every retained sample). For a deterministic outer loss the
        hypergradient is the same either way; ``Hypergradient.outer_loss`` averages the
        retained samples it was evaluated on. An outer loss that draws random numbers
        draws fewer of them: give it a stream of its own.
    """

    def __init__(self, outer_loss: Callable, inner_loss: Callable, lam_spec, theta0: Any,
                 mixed_vjp: Callable | None = None, penalty: SeparablePenalty | None = None,
                 outer_depends_on_lam: bool = True):
        self.outer_loss = outer_loss
        self.outer_depends_on_lam = bool(outer_depends_on_lam)
        self.inner_loss = inner_loss
        self.lam_spec = lam_spec
        self.mixed_vjp = mixed_vjp
        self.penalty = penalty
        if callable(theta0) and not isinstance(theta0, torch.Tensor):
            self.theta0_fn = theta0
            self.theta0_leaves, self.theta_spec = None, None
        else:
            self.theta0_fn = None
            leaves, self.theta_spec = _tree.flatten(theta0)
            self.theta0_leaves = [t.detach().clone() for t in leaves]

    @property
    def start_depends_on_lam(self) -> bool:
        return self.theta0_fn is not None

    def start(self, lam: list[torch.Tensor]) -> list[torch.Tensor]:
        """theta0 as leaves; keeps the graph to ``lam`` for a callable start."""
        if self.theta0_fn is None:
            return [t.clone() for t in self.theta0_leaves]
        out = self.theta0_fn(_tree.unflatten(lam, self.lam_spec))
        leaves, spec = _tree.flatten(out)
        self.theta_spec = spec
        return leaves

    def _call(self, fn, name, lam, theta) -> torch.Tensor:
        value = fn(_tree.unflatten(lam, self.lam_spec), _tree.unflatten(theta, self.theta_spec))
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must return a scalar tensor, got {type(value).__name__}")
        if value.numel() != 1:
            raise ValueError(
                f"{name} must return a scalar tensor, got shape {tuple(value.shape)}; "
                "reduce it (e.g. .mean()) first"
            )
        return value.reshape(())

    def outer(self, lam, theta) -> torch.Tensor:
        return self._call(self.outer_loss, "outer_loss", lam, theta)

    def inner(self, lam, theta) -> torch.Tensor:
        """The whole inner loss (with the penalty, if one is given apart)."""
        value = self.inner_data(lam, theta)
        if self.penalty is not None:
            value = value + self.penalty_value(lam, theta)
        return value

    def penalty_value(self, lam, theta) -> torch.Tensor:
        """``penalty.value`` on flat leaves (differentiable by autograd)."""
        return self.penalty.value(*self._structures(lam, theta))

    def inner_data(self, lam, theta) -> torch.Tensor:
        """The inner loss without ``penalty``: the part autograd differentiates."""
        return self._call(self.inner_loss, "inner_loss", lam, theta)

    def _structures(self, lam, theta, *vectors):
        return (_tree.unflatten(lam, self.lam_spec), _tree.unflatten(theta, self.theta_spec),
                *(_tree.unflatten(v, self.theta_spec) for v in vectors))

    def penalty_terms(self, name: str, lam, theta, *vectors) -> list:
        """``penalty.<name>(...)`` as flat leaves (``None`` for the leaves it leaves out).

        ``grad_theta`` and ``hvp`` are shaped like ``theta``, ``mixed`` and ``grad_lam``
        like ``lam``; ``vectors`` are shaped like ``theta``.
        """
        spec = self.theta_spec if name in ("grad_theta", "hvp") else self.lam_spec
        with torch.no_grad():
            out = getattr(self.penalty, name)(*self._structures(lam, theta, *vectors))
        return _tree.flatten_partial(out, spec)

    def mixed(self, lam, theta, v) -> list[torch.Tensor]:
        out = self.mixed_vjp(_tree.unflatten(lam, self.lam_spec),
                             _tree.unflatten(theta, self.theta_spec),
                             _tree.unflatten(v, self.theta_spec))
        leaves, _ = _tree.flatten(out)
        return leaves


def chain_start(problem: BilevelProblem, lam, state: ChainState, settings: InnerSettings):
    """Leaves to start this outer iteration's chain from.

    A callable ``theta0`` is re-evaluated at ``lam`` (graph kept: the MAML-type start);
    otherwise a persistent chain continues from where the last outer iteration left it.
    The returned leaves are the ones ``J0`` is taken of; callers detach their own copy.
    """
    if problem.start_depends_on_lam:
        return problem.start(lam)
    if settings.chain == "persistent" and state.theta is not None:
        return [t.detach() for t in state.theta]
    return problem.start(lam)
