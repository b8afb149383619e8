"""The net's own optimizer, translated into the chain's sampler.

A skorch net trains with ``net.optimizer`` (``torch.optim.SGD`` by default) at
``net.lr``; the search's chains should train the same way, or an Adam net at ``lr=1e-3``
gets a plain-SGLD chain that barely moves. :func:`chain_dynamics` reads the optimizer and
its ``optimizer__*`` parameters from the net and returns the sampler settings
(:class:`~sgld_tuner.core.InnerSettings` fields) and the L2 weight decay to keep in the
chain's training loss:

==========================  ===========================================================
net optimizer               chain
==========================  ===========================================================
SGD (momentum 0)            plain SGLD at the net's ``lr``
SGD (momentum mu > 0)       momentum SGLD, same ``mu`` (Nesterov is run as heavy ball)
Adam, AdamW                 pSGLD with Adam's moments (``betas``, ``eps``): the
                            first as momentum (Adam's step, bias corrections included);
                            AdamW's decay decoupled as AdamW applies it
RMSprop                     pSGLD with RMSprop's ``alpha`` and ``eps`` (its momentum is
                            not used)
anything else               plain SGLD at the net's ``lr``, with a warning naming it
==========================  ===========================================================

The net's weight decay (``optimizer__weight_decay``, or the optimizer's own default where
unset: 0.01 for AdamW) is followed as the optimizer applies it: coupled (SGD, Adam,
RMSprop) as ``0.5 * wd * ||theta||^2`` in the chain's training loss, decoupled (AdamW, or
Adam with ``decoupled_weight_decay=True``) as the sampler's ``decoupled_decay``, a shrink
of every weight by ``1 - lr * wd`` per step outside the preconditioner. (Coupled, a large
AdamW decay is divided by Adam's ``sqrt(v)`` and pulls the weights far harder than the
net's own optimizer does.)
"""
from __future__ import annotations

import inspect
import warnings

import torch

__all__ = ["chain_dynamics", "net_weight_decay", "with_weight_decay",
           "OptimizerFollowingWarning"]


class OptimizerFollowingWarning(UserWarning):
    """The chain cannot follow the net's optimizer exactly; the message says what it does."""


def _optimizer_params(net) -> dict:
    params = net.get_params()
    return {k[len("optimizer__"):]: v for k, v in params.items() if k.startswith("optimizer__")}


def _sgd(opts):
    momentum = float(opts.get("momentum", 0.0))
    if opts.get("nesterov") or opts.get("dampening", 0.0):
        warnings.warn("the chain runs SGD's momentum as heavy ball (no Nesterov, no "
                      "dampening)", OptimizerFollowingWarning, stacklevel=4)
    return {"sampler": "momentum", "momentum": momentum} if momentum > 0 else {"sampler": "sgld"}


def _adam(opts):
    betas = opts.get("betas", (0.9, 0.999))
    return {"sampler": "psgld", "momentum": float(betas[0]), "beta2": float(betas[1]),
            "precond_eps": float(opts.get("eps", 1e-8))}


def _rmsprop(opts):
    if opts.get("momentum", 0.0):
        warnings.warn("the chain follows RMSprop's preconditioner but not its momentum",
                      OptimizerFollowingWarning, stacklevel=4)
    return {"sampler": "psgld", "beta2": float(opts.get("alpha", 0.99)),
            "precond_eps": float(opts.get("eps", 1e-8))}


_FOLLOWED = {torch.optim.SGD: _sgd, torch.optim.Adam: _adam, torch.optim.AdamW: _adam,
             torch.optim.RMSprop: _rmsprop}


def chain_dynamics(net) -> tuple[dict, float]:
    """Sampler settings and weight decay that make a chain train like ``net``.

    Parameters
    ----------
    net : skorch.NeuralNet
        The (unfitted) net whose ``optimizer`` and ``optimizer__*`` parameters are read.

    Returns
    -------
    settings : dict
        ``InnerSettings`` fields: ``sampler`` and its knobs.
    weight_decay : float
        The coupled weight decay to keep in the chain's training loss
        (:func:`net_weight_decay`); a decoupled one is ``settings["decoupled_decay"]``.

    Warns
    -----
    OptimizerFollowingWarning
        When the optimizer is not one of SGD, Adam, AdamW, RMSprop (the chain then runs
        plain SGLD at the lane's ``lr``), or is followed only in part.
    """
    optimizer = net.get_params()["optimizer"]
    opts = _optimizer_params(net)
    follow = next((fn for cls, fn in _FOLLOWED.items()
                   if isinstance(optimizer, type) and issubclass(optimizer, cls)), None)
    if follow is None:
        name = getattr(optimizer, "__name__", repr(optimizer))
        warnings.warn(f"the net's optimizer {name} has no matching sampler: the search's "
                      "chains run plain SGLD, at the net's lr or each lr a race tries; the "
                      "refit trains with the net's optimizer (followed: SGD, SGD with "
                      "momentum, Adam, AdamW, RMSprop)", OptimizerFollowingWarning, stacklevel=3)
        settings = {"sampler": "sgld"}
    else:
        settings = follow(opts)
    decay, decoupled = _weight_decay(net)
    if decoupled and decay:
        settings["decoupled_decay"] = decay
    return settings, 0.0 if decoupled else decay


def net_weight_decay(net, decoupled_in_sampler: bool = True) -> float:
    """The net's weight decay to keep in the chain's training loss as an L2 term:
    ``optimizer__weight_decay`` (the optimizer's default where unset), 0 for an
    optimizer whose decay is decoupled (AdamW) when the sampler follows it
    (``decoupled_in_sampler``; the unrolled baselines have no sampler and keep it as
    L2)."""
    decay, decoupled = _weight_decay(net)
    return 0.0 if decoupled and decoupled_in_sampler else decay


def _weight_decay(net) -> tuple[float, bool]:
    """The net's optimizer's weight decay (set or its default) and whether it is
    decoupled (AdamW, or ``decoupled_weight_decay=True``)."""
    optimizer = net.get_params()["optimizer"]
    opts = {**_defaults(optimizer), **_optimizer_params(net)}
    decoupled = isinstance(optimizer, type) and (
        issubclass(optimizer, torch.optim.AdamW) or bool(opts.get("decoupled_weight_decay")))
    return float(opts.get("weight_decay", 0.0) or 0.0), decoupled


def _defaults(optimizer) -> dict:
    """The optimizer's constructor defaults (``{}`` where its signature is not readable)."""
    try:
        params = inspect.signature(optimizer).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in params.items()
            if p.default is not inspect.Parameter.empty}


def with_weight_decay(inner_loss, weight_decay: float):
    """``inner_loss + 0.5 * weight_decay * ||theta||^2`` (``inner_loss`` itself if 0).

    ``theta`` is the dict of all module parameters, as ``torch.optim``'s ``weight_decay``
    applies to every parameter of its (single) group.
    """
    if not weight_decay:
        return inner_loss

    def loss(lam, theta):
        return inner_loss(lam, theta) + 0.5 * weight_decay * sum(
            (t * t).sum() for t in theta.values())

    return loss
