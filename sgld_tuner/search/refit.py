"""The refit: a fresh net trained on all rows with the best point's values built in."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone

from ..core.engine import InterruptGate
from ..learned_net import make_learned_net
from .context import FitContext
from .diagnostics import quiet_score
from .lane import Lane


@dataclass
class Refit:
    """What the refit made: the estimator (the net, or the ``Pipeline`` around it), the
    posterior ensemble (``refit="ensemble"``), its seconds, why it was cut short, and
    what a divergence of its weights led to."""

    estimator: object
    ensemble: object = None
    seconds: float = 0.0
    interrupted: str | None = None
    diverged: str | None = None
    finite: bool = True


def check_refit_params(context: FitContext, fit_params: dict) -> None:
    """Refuse, before the search, fit parameters the refit cannot take: skorch hands a
    net's fit parameters to its module's ``forward`` (a ``Pipeline`` routes
    ``<step>__<name>``, the net's to the same place)."""
    params = fit_params
    if context.is_pipeline:
        names = [name for name, _ in context.estimator.steps]
        unknown = sorted({k for k in params if k.split("__")[0] not in names})
        if unknown:
            raise ValueError(f"fit parameters {unknown} name no step of the Pipeline "
                             f"(steps: {names}); pass them as <step>__<parameter>")
        last = names[-1] + "__"
        params = {k[len(last):]: v for k, v in params.items() if k.startswith(last)}
    if not params:
        return
    forward = getattr(context.net.module, "forward", None)  # a module or its class
    if forward is None:  # a factory: what it builds is known only when it is called
        return
    takes = inspect.signature(forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in takes.values()):
        return
    unknown = sorted(set(params) - set(takes))
    if unknown:
        raise TypeError(
            f"fit parameters {unknown} would reach the refit net's module.forward (skorch "
            f"passes a net's fit parameters there), which takes none of them: checked before "
            "the search, which would otherwise run for nothing. Row weights: learn them "
            "with SampleWeights, or give the scorers sample_weight through metadata routing")


def refit_targets(context: FitContext, lane: Lane) -> np.ndarray:
    """``y`` as the refit trains on it: skorch broadcasts 1-D regression targets against
    an (n, 1) output into an (n, n) loss; the chains take y as a column there, and so
    does the refit."""
    y = context.y
    column = (context.classes is None and y.ndim == 1
              and lane.folds[0].problem.output_shape == (1,))
    return y[:, None] if column else y


def refit_best(context: FitContext, lane: Lane, values: dict, fit_params: dict,
               ensemble: bool = False) -> Refit:
    """Train the user's net class, with the learned ``values`` built in and the lane's
    net parameters set, on all rows (a ``Pipeline`` is refit whole around it).

    A classifier gets ``classes`` and the original labels, so the net is a drop-in for
    the tuner (same ``classes_``; ``predict`` returns the original labels). skorch
    draws initial weights and batch order from torch's global RNG: it is seeded from the
    lane's ``refit_seed`` on a fork, so the caller's stream is left untouched. skorch's
    ``fit`` ends quietly on Ctrl-C: the engine's gate tells whether one arrived. A refit
    whose weights end non-finite is trained again from the start at half the net's
    ``lr`` (at most :data:`REFIT_RETRIES` times); so is one whose training loss ends in
    an excursion (:func:`ended_in_excursion`), once, and the run that scores higher on
    the training rows is kept (a note either way). ``Refit.diverged`` says what happened.
    """
    started = time.perf_counter()
    net_params = lane.ran_net_params()
    lr = float(context.lane_net(net_params).lr)
    notes = []
    for attempt in range(REFIT_RETRIES + 1):
        result = _refit_once(context, lane, values, fit_params, {**net_params, "lr": lr})
        if result.interrupted or weights_finite(result.estimator):
            break
        notes.append(f"the refit's weights became non-finite at lr={lr:g}")
        lr /= 2
    else:
        notes.append("best_estimator_ is not finite: its predictions are NaN")
        result.finite = False
    rescued = len(notes)  # non-finite runs, each halving the lr
    if result.finite and not result.interrupted:
        result = _steadier(context, lane, values, fit_params, {**net_params, "lr": lr},
                           result, notes)
        if rescued and len(notes) == rescued:  # (an excursion's note names the lr kept)
            notes.append(f"best_estimator_ is the refit at lr={lr:g}")
    result.diverged = "; ".join(notes) or None
    if ensemble and result.interrupted is None and result.finite:
        from ..ensemble import collect_posterior_samples

        # The chain trains on codes 0..C-1; the ensemble predicts classes_ labels.
        sampler = context.sampler
        result.ensemble = collect_posterior_samples(
            result.estimator, context.hyperparams, values, context.X,
            refit_targets(context, lane), inner_lr=lane.settings.inner_lr,
            temperature=sampler.temperature_for(len(context.X)),
            noise_scale=sampler.noise_scale,
            batch_size=sampler.batch_size, random_state=lane.state.refit_seed)
    result.seconds = time.perf_counter() - started
    return result


#: a refit that ends non-finite is trained again at half the lr this many times at most
#: (down to a 16th of it: a raced lr can sit well above the net's own)
REFIT_RETRIES = 4


#: a refit whose last epoch's training loss is above this many times its best epoch's
#: ended in an excursion: at an lr at the edge of stability, one run of the net can blow
#: up in its last epochs where the chains at the same lr, and other seeds, did not
EXCURSION_RATIO = 1.25


def ended_in_excursion(estimator) -> tuple[float, float] | None:
    """``(last, best)`` epochs' training losses (skorch's ``train_loss``) of a fitted net
    (or a ``Pipeline``'s last step) whose last is above :data:`EXCURSION_RATIO` times
    its best, else None (also where the history records no ``train_loss``)."""
    losses = _train_losses(estimator)
    if len(losses) < 2 or not all(np.isfinite(losses)):
        return None
    last, best = losses[-1], min(losses)
    return (last, best) if last > EXCURSION_RATIO * best else None


def _train_losses(estimator) -> list:
    """The training loss of every epoch (empty where the history records none)."""
    try:
        return [float(loss) for loss in _net_of(estimator).history[:, "train_loss"]]
    except (KeyError, TypeError, ValueError):
        return []


def _net_of(estimator):
    """A fitted net, or a ``Pipeline``'s last step."""
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def _steadier(context, lane, values, fit_params, net_params: dict, result: Refit,
              notes: list) -> Refit:
    """``result``, or where its training loss ended in an excursion, the refit trained
    again at half the lr when that one scores higher on the training rows (the refit
    metric: a run that blew up lost what it had fit; the loss of the last epoch's
    minibatches says less, a smaller lr ending higher there). A note says what was kept
    and why, whatever the retry gave (interrupted, non-finite, lower)."""
    excursion = ended_in_excursion(result.estimator)
    if excursion is None:
        return result
    lr, (last, best) = net_params["lr"], excursion
    found = (f"the refit at lr={lr:g} ended its training above its best epoch's loss (the "
             f"last epoch's {last:.4g}, {last / best:.2g}x the best's)")
    retry = _refit_once(context, lane, values, fit_params, {**net_params, "lr": lr / 2})
    if retry.interrupted or not weights_finite(retry.estimator):
        how = "was interrupted" if retry.interrupted else "became non-finite"
        notes.append(f"{found}; its retry at lr={lr / 2:g} {how}: best_estimator_ is the "
                     f"refit at lr={lr:g}")
        return result
    scorer = {context.best_key: context.scorers[context.best_key]}
    labels = context.labels(refit_targets(context, lane))
    first, again = (quiet_score(r.estimator, context.X, labels, scorer)
                    for r in (result, retry))
    kept, kept_lr = (retry, lr / 2) if again > first else (result, lr)
    notes.append(f"{found}; trained again at lr={lr / 2:g}: training score {first:.4g} at "
                 f"lr={lr:g}, {again:.4g} at lr={lr / 2:g}: best_estimator_ is the refit at "
                 f"lr={kept_lr:g}")
    return kept


def weights_finite(estimator) -> bool:
    """Whether a fitted net's (or a ``Pipeline``'s last step's) weights are all finite."""
    return all(bool(torch.isfinite(p).all()) for p in _net_of(estimator).module_.parameters())


def _refit_once(context: FitContext, lane: Lane, values: dict, fit_params: dict,
                net_params: dict) -> Refit:
    """One training run of the refit net with ``net_params`` set."""
    y = refit_targets(context, lane)
    net = make_learned_net(context.lane_net(net_params), context.hyperparams, values)
    labels = context.labels(y)
    if context.classes is not None and context.net_takes_classes:
        net.set_params(classes=list(context.classes))
    elif context.classes is not None:  # binary: skorch's BCE loss wants float 0/1 targets
        labels = np.asarray(y, dtype=np.float32)
    estimator = net
    if context.is_pipeline:
        estimator = clone(context.estimator).set_params(**{context.estimator.steps[-1][0]: net})
    with torch.random.fork_rng(devices=[]), InterruptGate.watch() as gate:
        torch.manual_seed(lane.state.refit_seed)
        estimator.fit(context.X, labels, **fit_params)
    result = Refit(estimator)
    if gate.seen:
        result.interrupted = (
            f"refit interrupted (KeyboardInterrupt) after {len(net.history)} of "
            f"{net.max_epochs} epochs: best_estimator_ is undertrained (fit again, with "
            "warm_start=True to keep the search)")
    return result


def best_point_steps(context: FitContext, lane: Lane, iteration: int) -> int:
    """Inner steps the best point's chains had run: a persistent chain its warm-up and
    every iteration up to the point; a restarted one, one iteration's steps."""
    steps = lane.settings.steps
    if context.sampler.chain == "persistent":
        steps = max(f.warm_up_steps for f in lane.folds) + (iteration + 1) * steps
    return steps
