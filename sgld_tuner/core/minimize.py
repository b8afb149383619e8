"""The outer loop: ``minimize`` any (outer_loss, inner_loss) pair with any method."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch

from . import _tree
from .engine import (Callbacks, Listener, OracleResult, OuterLoop, StopOnNonFinite, TailAverage,
                     all_finite, blowup_limit, make_outer_optimizer)
from .hypergrad import hypergradient
from .problem import METHODS, BilevelProblem, ChainState, Hypergradient, InnerSettings
from .sgld import make_generator


class NonFiniteWarning(RuntimeWarning):
    """A loss or hypergradient became NaN/inf, or the outer loss blew up past
    :func:`~sgld_tuner.core.engine.blowup_limit` of its start; the last finite ``lam`` was
    kept."""


class UnusedHyperparameterWarning(UserWarning):
    """Some part of ``lam`` affects neither loss: its hypergradient is always zero."""


@dataclass
class BilevelResult:
    """What :func:`minimize` returns.

    Attributes
    ----------
    lam, theta : same structure as ``lam0`` / ``theta0``
        Final hyperparameters: the tail average of the iterates when ``average`` is set,
        else the last finite iterate; and the last inner iterate.
    lam_last : same structure as ``lam0``
        The last finite iterate itself.
    history : pandas.DataFrame
        One row per outer iteration: ``iteration``, ``outer_loss``, ``inner_loss``,
        ``hypergrad_norm``, ``time_s`` and, for up to 16 hyperparameters, ``lam[i]``.
    n_iter : int
        Outer iterations completed.
    success : bool
        False when the run stopped on a non-finite value (or a blown-up outer loss).
    message : str
        Why the loop ended.
    """

    lam: Any
    theta: Any
    history: pd.DataFrame
    n_iter: int
    success: bool
    message: str
    lam_last: Any = None


def bound_pairs(bounds, n_leaves: int) -> list[tuple] | None:
    """``bounds`` as one ``(low, high)`` pair per leaf of ``lam``, checked: one pair for
    all leaves, or a list of exactly one entry per leaf (a pair, or None: that leaf
    unbounded). A side is a number, a tensor or array (elementwise), or None (open);
    ``low <= high`` wherever both are given."""
    if bounds is None:
        return None
    per_leaf = isinstance(bounds, (tuple, list)) and \
        all(b is None or isinstance(b, (tuple, list)) for b in bounds) and \
        any(isinstance(b, (tuple, list)) for b in bounds)
    pairs = [(None, None) if b is None else b for b in bounds] if per_leaf \
        else [bounds] * n_leaves
    if len(pairs) != n_leaves:
        raise ValueError(f"bounds: one (low, high) pair for all of lam, or one per leaf; "
                         f"lam has {n_leaves} leaves and bounds {len(pairs)} pairs")
    for pair in pairs:
        try:
            low, high = pair
            ordered = low is None or high is None or \
                bool(torch.all(torch.as_tensor(low) <= torch.as_tensor(high)))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"bounds: each must be a (low, high) pair of numbers, tensors "
                             f"or None, got {pair!r}") from None
        if not ordered:
            raise ValueError(f"bounds: low must be <= high, got {pair!r}")
    return [tuple(pair) for pair in pairs]


def project(lam: list[torch.Tensor], pairs: list[tuple] | None) -> None:
    """Clamp ``lam`` in place to ``pairs`` (from :func:`bound_pairs`), leaf by leaf."""
    if pairs is None:
        return
    with torch.no_grad():
        for leaf, (low, high) in zip(lam, pairs, strict=True):
            if low is not None or high is not None:  # (None, None): an open leaf
                leaf.clamp_(min=low, max=high)


def probe_dependence(problem: BilevelProblem, lam: list[torch.Tensor],
                     first_order: bool = False) -> list[bool]:
    """Which leaves of ``lam`` reach either loss at ``theta0`` (one extra evaluation);
    ``first_order``: not counting the path through the inner loss's mixed derivative,
    which first-order methods drop."""
    theta = [t.detach().requires_grad_(True) for t in problem.start(lam)]
    inner_value = problem.inner(lam, theta)
    grad_inner = torch.autograd.grad(inner_value, theta, create_graph=True, allow_unused=True)
    used = [g for g in grad_inner if g is not None]
    via_inner = [False] * len(lam)
    if used and not first_order:
        dummies = [torch.ones_like(g) for g in used]
        mixed = torch.autograd.grad(used, lam, grad_outputs=dummies, allow_unused=True)
        via_inner = [m is not None for m in mixed]
    direct = torch.autograd.grad(problem.outer(lam, theta), lam, allow_unused=True)
    start_uses = [False] * len(lam)
    if problem.start_depends_on_lam:
        start = problem.start(lam)
        start_uses = [g is not None for g in torch.autograd.grad(
            [s.sum() for s in start], lam, allow_unused=True)]
    return [a or (d is not None) or s for a, d, s in zip(via_inner, direct, start_uses)]


# InnerSettings fields that minimize's own arguments set: not valid in method_options.
_SET_BY_ARGUMENTS = ("method", "inner_lr", "burn_in", "n_samples", "temperature", "noise_scale",
                     "n_inner", "chain", "recursion")


def _is_finite(result: Hypergradient) -> bool:
    return (math.isfinite(result.outer_loss) and math.isfinite(result.inner_loss)
            and all_finite(result.grad))


def _at_iteration(k: int, exc: Exception) -> Exception:
    return type(exc)(f"at outer iteration {k}: {exc}")


class _LamColumns(Listener):
    """``lam[i]`` history columns, for up to 16 hyperparameters (after ``time_s``)."""

    def on_iteration_end(self, engine, record):
        if _tree.numel(engine.lam) <= 16:
            flat = torch.cat([t.detach().reshape(-1) for t in engine.lam]).tolist()
            record.update({f"lam[{i}]": v for i, v in enumerate(flat)})


def minimize(outer_loss: Callable, inner_loss: Callable, lam0, theta0, *, method: str = "sgld",
             n_outer: int = 100, outer_lr: float = 0.01, outer_optimizer="sgd",
             inner_lr: float = 0.01, burn_in: int = 50, n_samples: int = 50,
             temperature: float = 1.0, noise_scale: float = 1.0, n_inner: int | None = None,
             random_state=None, callback: Callable | None = None, bounds=None,
             chain: str = "persistent", recursion: str = "auto", mixed_vjp=None,
             method_options: dict | None = None, projection: Callable | None = None,
             average: float | None = None, lr_warmup: int = 0) -> BilevelResult:
    """Solve ``min_lam E_{p(theta|lam)} f(lam, theta)`` by hypergradient descent.

    Parameters
    ----------
    outer_loss, inner_loss : callable
        ``(lam, theta) -> scalar tensor``. ``inner_loss`` may be stochastic.
    lam0 : tensor or tuple/list/dict of tensors
        Initial hyperparameters (copied; the caller's tensors are not modified).
    theta0 : tensor, tuple/list/dict of tensors, or callable
        Initial inner parameters, or ``lam -> theta`` for a start that depends on
        ``lam`` (MAML-type; its Jacobian enters the hypergradient).
    method : {"sgld", "rmd", "rmd-fo", "fmd", "ift-cg", "ift-neumann"}
    n_outer, outer_lr, outer_optimizer
        Outer iterations and the optimizer on ``lam`` (``"sgd"``, ``"adam"`` or a
        callable ``(params, lr) -> Optimizer``).
    inner_lr, burn_in, n_samples, temperature, noise_scale
        SGLD: step ``eta``, ``B``, ``M``, ``tau``, ``kappa`` (noise std
        ``sqrt(2 eta tau) kappa``).
    n_inner : int, optional
        Baselines' inner steps (default ``burn_in + n_samples``).
    random_state : None, int or torch.Generator
        Seeds the one generator used for all SGLD noise.
    callback : callable, optional
        Called after each outer iteration with the history record (a dict, with
        ``lam``); a truthy return value stops the loop.
    bounds : (low, high) or list of pairs, optional
        Clamp of ``lam`` after each outer step: one pair, or one per leaf (None: open).
    chain : {"persistent", "restart"}
    recursion : {"auto", "tracked", "damped", "paper", "gibbs"}
        The hypergradient strategy along the chain; ``"auto"`` is ``"tracked"``, or
        ``"damped"`` for a callable ``theta0``. See
        :class:`~sgld_tuner.core.problem.InnerSettings`.
    mixed_vjp : callable, optional
        Closed-form ``v^T d2 L_T / (d theta d lam)``, see ``BilevelProblem``.
    method_options : dict, optional
        Any other field of :class:`~sgld_tuner.core.problem.InnerSettings` (e.g.
        ``cg_iters``, ``cg_damping``, ``neumann_iters``, ``neumann_alpha``,
        ``curvature_every``, ``keep_samples``); an unknown key raises ``ValueError``.
    projection : callable, optional
        ``lam -> lam`` (on the user's structure) applied after each outer step and after
        ``bounds``, e.g. onto a simplex; its output replaces ``lam`` in place.
    average : float in (0, 1] or None, default=None
        Return the mean of the iterates over this last share of ``n_outer`` (tail
        average): it helps a converged, rattling iterate and hurts one still travelling
        (``docs/method.md``). ``history`` always holds the iterates.
    lr_warmup : int, default=0
        Outer iterations over which the outer step ramps up linearly to ``outer_lr``
        (see :class:`~sgld_tuner.core.engine.OuterLoop`); useful when the chain starts
        far from trained, where the first hypergradients can point the wrong way.

    Returns
    -------
    BilevelResult
    """
    settings = _checked_settings(method_options, n_outer, lr_warmup, method=method,
                                 inner_lr=inner_lr, burn_in=burn_in, n_samples=n_samples,
                                 temperature=temperature, noise_scale=noise_scale,
                                 n_inner=n_inner, chain=chain, recursion=recursion)
    lam, lam_spec = _start_lam(lam0)
    problem = BilevelProblem(outer_loss, inner_loss, lam_spec, theta0, mixed_vjp=mixed_vjp)
    generator = make_generator(random_state, lam[0].device)
    optimizer = make_outer_optimizer(outer_optimizer, lam, outer_lr)
    state = ChainState()
    _warn_unused(problem, lam, method)

    engine, tail = _outer_loop(problem, lam, lam_spec, state, settings, generator, optimizer,
                               n_outer=n_outer, bounds=bounds, projection=projection,
                               callback=callback, average=average, lr_warmup=int(lr_warmup))
    engine.run()
    if engine.failed:
        warnings.warn(engine.stop_reason, NonFiniteWarning, stacklevel=2)
    return _result(engine, problem, state, lam_spec, tail)


def _checked_settings(method_options, n_outer, lr_warmup, **fields) -> InnerSettings:
    """The chain's settings from :func:`minimize`'s arguments, every one checked."""
    options = InnerSettings.check_options(method_options, _SET_BY_ARGUMENTS)
    settings = InnerSettings(**fields, **options).validate()
    if n_outer < 1:
        raise ValueError(f"n_outer must be >= 1, got {n_outer}")
    if isinstance(lr_warmup, bool) or int(lr_warmup) != lr_warmup or lr_warmup < 0:
        raise ValueError(f"lr_warmup must be an int >= 0, got {lr_warmup!r}")
    return settings


def _outer_loop(problem, lam, lam_spec, state, settings, generator, optimizer, *, n_outer,
                bounds, projection, callback, average, lr_warmup=0):
    """The engine for :func:`minimize`: one chain as the oracle, bounds and projection
    after each step, stop (keeping the last finite ``lam``) at a non-finite value; and
    the tail-average listener (``None`` unless ``average`` is set)."""
    bounds = bound_pairs(bounds, len(lam))  # checked before the first step

    # A chain can blow up without a NaN: an outer loss far above its value at the start
    # stops the run like one (the same rule as the tuner's).
    with torch.no_grad():
        limit = blowup_limit(float(problem.outer(lam, problem.start(lam))))

    def oracle(leaves):
        try:
            result = hypergradient(problem, leaves, state, settings, generator)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _at_iteration(engine.iteration, exc) from exc
        return OracleResult(result.grad, result.outer_loss, result.inner_loss,
                            _is_finite(result) and not result.outer_loss > limit)

    def constrain(leaves):
        project(leaves, bounds)
        if projection is not None:
            with torch.no_grad():
                projected, _ = _tree.flatten(projection(_tree.unflatten(
                    [t.detach().clone() for t in leaves], lam_spec)))
                for leaf, value in zip(leaves, projected):
                    leaf.copy_(value)

    def with_lam(engine, record):
        return {**record, "lam": _tree.unflatten([t.detach().clone() for t in engine.lam],
                                                 lam_spec)}

    callbacks = Callbacks([callback] if callback is not None else [], payload=with_lam,
                          reason="stopped by callback after outer iteration {iteration}")
    tail = TailAverage(average) if average is not None else None
    engine = OuterLoop(oracle, lam, optimizer, n_outer=n_outer, policy=StopOnNonFinite(),
                       project=constrain, lr_warmup=lr_warmup,
                       listeners=[_LamColumns(), callbacks] + ([tail] if tail else []))
    return engine, tail


def _start_lam(lam0):
    """Fresh leaves (requiring grad) from the user's ``lam0``, and its structure."""
    leaves, lam_spec = _tree.flatten(lam0)
    if not leaves:
        raise ValueError("lam0 holds no tensor")
    if not all(t.is_floating_point() for t in leaves):
        raise TypeError("lam0 must hold floating-point tensors")
    return [t.detach().clone().requires_grad_(True) for t in leaves], lam_spec


def _warn_unused(problem: BilevelProblem, lam, method: str) -> None:
    """Warn about leaves of ``lam`` that reach neither loss (they would never move), or,
    for ``"rmd-fo"``, that reach the outer loss only through the inner one."""
    try:
        reached = probe_dependence(problem, lam)
        first_order = probe_dependence(problem, lam, first_order=True) \
            if method == "rmd-fo" else reached
    except (ValueError, TypeError) as exc:
        raise _at_iteration(0, exc) from exc
    if not all(reached):
        names = [i for i, ok in enumerate(reached) if not ok]
        warnings.warn(f"at outer iteration 0: lam leaves {names} affect neither the inner nor "
                      "the outer loss; their hypergradient is zero and they will not move",
                      UnusedHyperparameterWarning, stacklevel=3)
    inner_only = [i for i, (ok, fo) in enumerate(zip(reached, first_order)) if ok and not fo]
    if inner_only:
        warnings.warn(f"at outer iteration 0: lam leaves {inner_only} reach the outer loss "
                      "only through the inner loss, whose second derivatives method='rmd-fo' "
                      "drops: their hypergradient is zero and they will not move (use 'rmd' "
                      "or 'sgld')", UnusedHyperparameterWarning, stacklevel=3)


def _result(engine: OuterLoop, problem: BilevelProblem, state: ChainState,
            lam_spec, tail: TailAverage | None) -> BilevelResult:
    # The policy has put lam back to its last finite value if the run failed.
    lam = [t.detach().clone() for t in engine.lam]
    averaged = tail.average(lam) if tail is not None else None
    theta = state.theta if state.theta is not None else problem.start(lam)
    theta = [t.detach() for t in theta]
    n_outer = engine.n_outer
    return BilevelResult(
        lam=_tree.unflatten(averaged if averaged is not None else lam, lam_spec),
        lam_last=_tree.unflatten(lam, lam_spec),
        theta=_tree.unflatten(theta, problem.theta_spec),
        history=pd.DataFrame.from_records(engine.records),
        n_iter=len(engine.records),
        success=not engine.failed,
        message=engine.stop_reason or f"completed {n_outer} outer iterations",
    )


__all__ = ["minimize", "BilevelResult", "NonFiniteWarning", "UnusedHyperparameterWarning",
           "METHODS", "make_outer_optimizer", "project"]
