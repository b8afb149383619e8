"""The outer loop: ``minimize`` any (outer_loss, inner_loss) pair with any method."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch

from . import _tree
from .hypergrad import hypergradient
from .problem import METHODS, BilevelProblem, ChainState, Hypergradient, InnerSettings
from .sgld import make_generator


class NonFiniteWarning(RuntimeWarning):
    """A loss or hypergradient became NaN/inf; the last finite ``lam`` was kept."""


class UnusedHyperparameterWarning(UserWarning):
    """Some part of ``lam`` affects neither loss: its hypergradient is always zero."""


@dataclass
class BilevelResult:
    """What :func:`minimize` returns.

    Attributes
    ----------
    lam, theta : same structure as ``lam0`` / ``theta0``
        Final (last finite) hyperparameters and the last inner iterate.
    history : pandas.DataFrame
        One row per outer iteration: ``iteration``, ``outer_loss``, ``inner_loss``,
        ``hypergrad_norm``, ``time_s`` and, for up to 16 hyperparameters, ``lam[i]``.
    n_iter : int
        Outer iterations completed.
    success : bool
        False when the run stopped on a non-finite value.
    message : str
        Why the loop ended.
    """

    lam: Any
    theta: Any
    history: pd.DataFrame
    n_iter: int
    success: bool
    message: str


def make_outer_optimizer(name_or_factory, params, lr):
    """``"sgd"``, ``"adam"``, or a callable ``(params, lr) -> torch.optim.Optimizer``."""
    if callable(name_or_factory):
        return name_or_factory(params, lr=lr)
    name = str(name_or_factory).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"outer_optimizer must be 'sgd', 'adam' or a callable, got {name_or_factory!r}")


def project(lam: list[torch.Tensor], bounds) -> None:
    """Clamp ``lam`` in place to ``bounds``: ``(low, high)`` for all, or one pair per leaf."""
    if bounds is None:
        return
    pairs = bounds if (len(lam) > 1 and isinstance(bounds[0], (tuple, list))) else [bounds] * len(lam)
    with torch.no_grad():
        for leaf, (low, high) in zip(lam, pairs):
            leaf.clamp_(min=low, max=high)


def probe_dependence(problem: BilevelProblem, lam: list[torch.Tensor]) -> list[bool]:
    """Which leaves of ``lam`` reach either loss at ``theta0`` (one extra evaluation)."""
    theta = [t.detach().requires_grad_(True) for t in problem.start(lam)]
    inner_value = problem.inner(lam, theta)
    grad_inner = torch.autograd.grad(inner_value, theta, create_graph=True, allow_unused=True)
    used = [g for g in grad_inner if g is not None]
    via_inner = [False] * len(lam)
    if used:
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


def _is_finite(result: Hypergradient) -> bool:
    return (math.isfinite(result.outer_loss) and math.isfinite(result.inner_loss)
            and all(bool(torch.isfinite(g).all()) for g in result.grad))


def minimize(outer_loss: Callable, inner_loss: Callable, lam0, theta0, *, method: str = "sgld",
             n_outer: int = 100, outer_lr: float = 0.01, outer_optimizer="sgd",
             inner_lr: float = 0.01, burn_in: int = 50, n_samples: int = 50,
             temperature: float = 1.0, noise_scale: float = 1.0, n_inner: int | None = None,
             random_state=None, callback: Callable | None = None, bounds=None,
             chain: str = "persistent", recursion: str = "auto", mixed_vjp=None,
             method_options: dict | None = None,
             projection: Callable | None = None) -> BilevelResult:
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
        Called after each outer iteration with the history record (a dict, which also
        holds ``lam``); a truthy return value stops the loop.
    bounds : (low, high) or list of pairs, optional
        Projection of ``lam`` after each outer step.
    chain : {"persistent", "restart"}
    recursion : {"auto", "tracked", "damped", "paper", "gibbs"}
        The hypergradient strategy along the chain; ``"auto"`` is ``"tracked"``, or
        ``"damped"`` for a callable ``theta0``. See
        :class:`~sgld_tuner.core.problem.InnerSettings`.
    mixed_vjp : callable, optional
        Closed-form ``v^T d2 L_T / (d theta d lam)``, see ``BilevelProblem``.
    method_options : dict, optional
        ``cg_iters``, ``cg_damping``, ``neumann_iters``, ``neumann_alpha``,
        ``curvature_every``, ``keep_samples``.
    projection : callable, optional
        ``lam -> lam`` (on the user's structure) applied after each outer step and after
        ``bounds``, e.g. onto a simplex; its output replaces ``lam`` in place.

    Returns
    -------
    BilevelResult
    """
    settings = InnerSettings(method=method, inner_lr=inner_lr, burn_in=burn_in,
                             n_samples=n_samples, temperature=temperature,
                             noise_scale=noise_scale, n_inner=n_inner, chain=chain,
                             recursion=recursion, **(method_options or {})).validate()
    if n_outer < 1:
        raise ValueError(f"n_outer must be >= 1, got {n_outer}")
    leaves, lam_spec = _tree.flatten(lam0)
    if not leaves:
        raise ValueError("lam0 holds no tensor")
    if not all(t.is_floating_point() for t in leaves):
        raise TypeError("lam0 must hold floating-point tensors")
    lam = [t.detach().clone().requires_grad_(True) for t in leaves]
    problem = BilevelProblem(outer_loss, inner_loss, lam_spec, theta0, mixed_vjp=mixed_vjp)
    generator = make_generator(random_state, lam[0].device)
    optimizer = make_outer_optimizer(outer_optimizer, lam, outer_lr)
    state = ChainState()

    def at_iteration(k, exc):
        return type(exc)(f"at outer iteration {k}: {exc}")

    try:
        reached = probe_dependence(problem, lam)
    except (ValueError, TypeError) as exc:
        raise at_iteration(0, exc) from exc
    if not all(reached):
        names = [i for i, ok in enumerate(reached) if not ok]
        warnings.warn(f"at outer iteration 0: lam leaves {names} affect neither the inner nor "
                      "the outer loss; their hypergradient is zero and they will not move",
                      UnusedHyperparameterWarning, stacklevel=2)

    records, last_finite = [], [t.detach().clone() for t in lam]
    success, message, k = True, f"completed {n_outer} outer iterations", 0
    for k in range(n_outer):
        started = time.perf_counter()
        try:
            result = hypergradient(problem, lam, state, settings, generator)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise at_iteration(k, exc) from exc
        if not _is_finite(result):
            success = False
            message = (f"non-finite loss or hypergradient at outer iteration {k} "
                       f"(outer={result.outer_loss}, inner={result.inner_loss}); "
                       "kept the last finite lam")
            warnings.warn(message, NonFiniteWarning, stacklevel=2)
            break
        optimizer.zero_grad(set_to_none=False)
        for leaf, g in zip(lam, result.grad):
            leaf.grad = g.to(leaf.dtype)
        optimizer.step()
        project(lam, bounds)
        if projection is not None:
            with torch.no_grad():
                projected, _ = _tree.flatten(projection(_tree.unflatten(
                    [t.detach().clone() for t in lam], lam_spec)))
                for leaf, value in zip(lam, projected):
                    leaf.copy_(value)
        if not all(bool(torch.isfinite(t).all()) for t in lam):
            success = False
            message = f"lam became non-finite after outer iteration {k}; kept the last finite lam"
            warnings.warn(message, NonFiniteWarning, stacklevel=2)
            break
        last_finite = [t.detach().clone() for t in lam]
        record = {
            "iteration": k,
            "outer_loss": result.outer_loss,
            "inner_loss": result.inner_loss,
            "hypergrad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in result.grad))),
            "time_s": time.perf_counter() - started,
        }
        if _tree.numel(lam) <= 16:
            flat = torch.cat([t.detach().reshape(-1) for t in lam]).tolist()
            record.update({f"lam[{i}]": v for i, v in enumerate(flat)})
        records.append(record)
        if callback is not None and callback({**record, "lam": _tree.unflatten(last_finite, lam_spec)}):
            message = f"stopped by callback after outer iteration {k}"
            k += 1
            break
    else:
        k = n_outer
    theta = state.theta if state.theta is not None else problem.start(last_finite)
    theta = [t.detach() for t in theta]
    theta_spec = problem.theta_spec
    return BilevelResult(
        lam=_tree.unflatten(last_finite, lam_spec),
        theta=_tree.unflatten(theta, theta_spec),
        history=pd.DataFrame.from_records(records),
        n_iter=len(records),
        success=success,
        message=message,
    )


__all__ = ["minimize", "BilevelResult", "NonFiniteWarning", "UnusedHyperparameterWarning",
           "METHODS"]
