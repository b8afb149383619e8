"""The outer loop shared by :func:`~sgld_tuner.core.minimize` and ``SGLDHyperTuner``.

One outer iteration asks a *hypergradient oracle* for ``(grad, outer_loss, inner_loss,
finite)`` at the current ``lam``, takes one step of the outer optimizer and hands the
iteration's record to *listeners*. What happens when a value is not finite is a
*policy* (stop and keep the last finite ``lam``, or roll back and retry with smaller
steps). Everything else (history columns, evaluation schedule, progress bar, timeout,
user callbacks, resumable state) is a listener, in the spirit of skorch's callbacks::

    engine = OuterLoop(oracle, lam, optimizer, n_outer=50, policy=StopOnNonFinite(),
                       listeners=[Timeout(60.0), Callbacks([my_callback])])
    engine.run()
    engine.records, engine.stop_reason, engine.failed

The engine is pure torch (no scikit-learn, no skorch).
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .interrupts import InterruptGate
from .outer_step import OuterStep


#: An outer loss above this many times its value at the start (plus 1e-3, so that a start
#: near 0 does not flag ordinary noise) is a divergence, NaN or not: a step too large for
#: the inner problem can reach losses of 1e20 and more without ever overflowing.
BLOWUP_FACTOR = 1e3


def blowup_limit(start_loss: float) -> float:
    """The outer loss above which a run counts as diverged (``inf`` for a non-finite
    ``start_loss``): :data:`BLOWUP_FACTOR` times ``|start_loss| + 1e-3``."""
    return BLOWUP_FACTOR * (abs(start_loss) + 1e-3) if math.isfinite(start_loss) else math.inf


@dataclass
class OracleResult:
    """What a hypergradient oracle returns for one outer iteration.

    Attributes
    ----------
    grad : list of Tensor
        The hypergradient, one tensor per leaf of ``lam``.
    outer_loss, inner_loss : float
        The losses reported in the iteration's record.
    finite : bool
        Whether the losses and ``grad`` are all finite. The oracle decides (the tuner
        checks every fold's inner loss, not just their mean); the engine only acts on it.
    """

    grad: list[torch.Tensor]
    outer_loss: float
    inner_loss: float
    finite: bool


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


def all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the first frame outside ``sgld_tuner`` (the user's ``fit`` call, say).

    Python 3.12's ``skip_file_prefixes``, for 3.10+: the engine warns from a depth that
    depends on who runs it, so a fixed ``stacklevel`` would point into the package.
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class Listener:
    """Base class of the engine's listeners; every hook is a documented no-op.

    Override the hooks you need. Hooks run in the order the listeners were given (the
    policy first). A hook may call ``engine.stop(reason)``; the loop then ends after the
    current iteration. The engine exposes ``lam`` (the leaves being optimised, updated
    in place), ``optimizer``, ``iteration`` (outer iterations completed), ``n_outer``,
    ``records`` and ``stop_reason``. A listener that keeps state per iteration builds it in
    ``on_record`` and publishes it in ``on_commit``, so that a Ctrl-C never leaves half an
    iteration in it (see :class:`OuterLoop`).
    """

    def on_run_begin(self, engine: "OuterLoop") -> None:
        """Before the first iteration of :meth:`OuterLoop.run`."""

    def on_iteration_begin(self, engine: "OuterLoop") -> None:
        """Before the oracle is called for iteration ``engine.iteration``."""

    def on_record(self, engine: "OuterLoop", record: dict) -> None:
        """After a finite step: add columns to ``record`` (timed with the iteration).

        A Ctrl-C can still undo the iteration after this hook: prepare what the
        iteration adds to your own state here and publish it in :meth:`on_commit`.
        """

    def on_commit(self, engine: "OuterLoop", record: dict) -> None:
        """The finite step is recorded and counted (``engine.iteration`` is advanced):
        publish what :meth:`on_record` prepared. Runs with SIGINT deferred, so keep it
        short (assignments, no I/O)."""

    def on_iteration_end(self, engine: "OuterLoop", record: dict) -> None:
        """After a finite step is committed: recorded and counted (``engine.iteration`` is
        advanced). A Ctrl-C here keeps the iteration and ends the run."""

    def on_run_end(self, engine: "OuterLoop") -> None:
        """When the loop ends, normally or by an exception (like ``finally``)."""


def _copy_back(engine: "OuterLoop", values) -> None:
    """Copy saved values into ``engine.lam`` in place (the optimizer keeps its leaves)."""
    with torch.no_grad():
        for leaf, value in zip(engine.lam, values):
            leaf.copy_(value)


def _optimizer_state(engine: "OuterLoop") -> dict:
    """A copy of the outer optimizer's state: ``state_dict()`` shares the moment tensors
    that the next step updates in place (Adam's), and holds the learning rates."""
    return copy.deepcopy(engine.optimizer.state_dict())


def _load_optimizer(engine: "OuterLoop", saved: dict) -> None:
    """Put the optimizer's state back; a copy again, since ``load_state_dict`` may keep the
    given tensors and the same snapshot can be restored twice (a rollback, then Ctrl-C)."""
    engine.optimizer.load_state_dict(copy.deepcopy(saved))


class NonFinitePolicy(Listener):
    """What the engine does when the oracle or the step yields a non-finite value."""

    def on_accept(self, engine: "OuterLoop") -> None:
        """A finite step went through (before it is recorded)."""

    def on_non_finite(self, engine: "OuterLoop", result: OracleResult, stage: str) -> bool:
        """Handle a non-finite value; return True to retry the iteration.

        ``stage`` is ``"oracle"`` (a loss or the hypergradient) or ``"step"`` (``lam``
        after the outer step). To stop, call ``engine.stop(reason, failed=True)`` and
        return False.
        """
        raise NotImplementedError

    def on_interrupt(self, engine: "OuterLoop") -> None:
        """A KeyboardInterrupt before the iteration was committed (in the oracle, the
        step, this policy's handling of a non-finite value or a listener's
        ``on_record``): put back everything the iteration changed."""


class StopOnNonFinite(NonFinitePolicy):
    """Stop at the first non-finite value and keep the last finite ``lam`` (``minimize``)."""

    def on_run_begin(self, engine):
        self.last_finite = [t.detach().clone() for t in engine.lam]

    def on_iteration_begin(self, engine):
        # What a Ctrl-C before the commit restores (the optimizer's moments included).
        self._begin = ([t.detach().clone() for t in engine.lam], _optimizer_state(engine))

    def on_accept(self, engine):
        self.last_finite = [t.detach().clone() for t in engine.lam]

    def on_non_finite(self, engine, result, stage):
        k = engine.iteration
        if stage == "oracle":
            reason = (f"non-finite loss or hypergradient at outer iteration {k} "
                      f"(outer={result.outer_loss:.4g}, inner={result.inner_loss:.4g}: a NaN, "
                      f"an inf or an outer loss blown up past {BLOWUP_FACTOR:g}x its start); "
                      "kept the last finite lam")
        else:
            reason = f"lam became non-finite after outer iteration {k}; kept the last finite lam"
        _copy_back(engine, self.last_finite)
        engine.stop(reason, failed=True)
        return False

    def on_interrupt(self, engine):
        lam, optimizer_state = self._begin
        _copy_back(engine, lam)
        _load_optimizer(engine, optimizer_state)


class RollbackOnNonFinite(NonFinitePolicy):
    """Roll back to the iteration's checkpoint, scale both steps down and retry.

    Every iteration starts with ``checkpoint(engine)`` (and a copy of the optimizer's
    state). On a non-finite value the policy calls ``restore(engine, snapshot)`` (and puts
    the optimizer's state back), multiplies the optimizer's learning rates by
    ``factor``, calls ``shrink(factor)`` (which scales whatever else must shrink, e.g. the
    inner step, and returns columns for the record), records a row ``{"iteration",
    "outer_loss", "diverged": True, "retry", **columns, "time_s"}`` and retries the
    iteration. The first divergence warns with ``warning``; after ``max_retries``
    consecutive retries the run stops (``engine.failed``), or raises
    ``FloatingPointError`` when ``raise_on_failure``.

    Parameters
    ----------
    shrink : callable ``(factor) -> dict``
    checkpoint : callable ``(engine) -> snapshot``, optional
        Must cover ``engine.lam`` and any state an iteration changes besides the
        optimizer, the policy and the engine's records (the tuner's chains, its step
        scales). Default: a copy of ``lam`` only. A Ctrl-C before the iteration is
        committed restores it too.
    restore : callable ``(engine, snapshot) -> None``, optional
        Puts ``engine.lam`` (in place) and that state back. Default: copies ``lam`` back.
    max_retries : int, default=3
    factor : float, default=0.5
    raise_on_failure : bool, default=False
    warning : Warning subclass, default=RuntimeWarning
    where : str or None, default=None
        Which run diverged, named at the start of the warning (e.g. one candidate of
        several run by the caller); None: the run whose records the caller reports.
    """

    def __init__(self, shrink: Callable, checkpoint: Callable | None = None,
                 restore: Callable | None = None, *, max_retries: int = 3, factor: float = 0.5,
                 raise_on_failure: bool = False, warning: type[Warning] = RuntimeWarning,
                 where: str | None = None):
        self.where = where
        self.shrink = shrink
        self.checkpoint = checkpoint or (lambda engine: [t.detach().clone() for t in engine.lam])
        self.restore = restore or _copy_back
        self.max_retries, self.factor = max_retries, factor
        self.raise_on_failure, self.warning = raise_on_failure, warning
        self.retries, self.warned, self._snapshot = 0, False, None

    def on_iteration_begin(self, engine):
        self._snapshot = (self.checkpoint(engine), _optimizer_state(engine),
                          self.retries, self.warned)

    def _rollback(self, engine):
        snapshot, optimizer_state, _, _ = self._snapshot
        self.restore(engine, snapshot)
        _load_optimizer(engine, optimizer_state)

    def on_accept(self, engine):
        self.retries = 0

    def on_interrupt(self, engine):
        self._rollback(engine)
        self.retries, self.warned = self._snapshot[2:]

    def on_non_finite(self, engine, result, stage):
        k = engine.iteration
        self._rollback(engine)
        self.retries += 1
        engine.scale_lr(self.factor)
        columns = self.shrink(self.factor)
        engine.add_record({"iteration": k, "outer_loss": result.outer_loss, "diverged": True,
                           "retry": self.retries, **columns})
        if not self.warned:
            where = "" if self.where is None else f"{self.where}: "
            records = "see history_" if self.where is None else "in history_ if it is kept"
            warn_at_caller(
                f"{where}non-finite loss or hypergradient at outer iteration {k}: rolled the "
                "hyperparameters and chains back to the last finite point and halved the "
                f"outer and inner steps ({records})", self.warning)
            self.warned = True
        if self.retries <= self.max_retries:
            return True
        message = (f"still diverging at outer iteration {k} after {self.max_retries} "
                   "retries with halved steps")
        if self.raise_on_failure:
            raise FloatingPointError(message)
        engine.stop(message, failed=True)
        return False


class ProgressBar(Listener):
    """A tqdm bar over the outer iterations, showing the outer loss and scores.

    Parameters
    ----------
    desc : str
        The bar's label.
    show_prefix : str, default="mean_test"
        Record columns starting with this are shown next to the outer loss.
    """

    def __init__(self, desc: str, show_prefix: str = "mean_test"):
        self.desc, self.show_prefix, self.bar = desc, show_prefix, None

    def on_run_begin(self, engine):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=engine.n_outer, initial=engine.iteration, desc=self.desc,
                        unit="outer")

    def on_iteration_end(self, engine, record):
        self.bar.update(1)
        shown = {key: round(v, 4) for key, v in record.items() if key.startswith(self.show_prefix)}
        self.bar.set_postfix(outer_loss=round(record["outer_loss"], 4), **shown)

    def on_run_end(self, engine):
        if self.bar is not None:
            self.bar.close()


class Timeout(Listener):
    """Stop once ``seconds`` have passed since the run began, or since ``started`` (a
    ``time.perf_counter()`` reading: one deadline for several runs); checked after each
    iteration."""

    def __init__(self, seconds: float, started: float | None = None):
        self.seconds, self.started, self._fixed = seconds, started, started is not None

    def on_run_begin(self, engine):
        if not self._fixed:
            self.started = time.perf_counter()

    def on_iteration_end(self, engine, record):
        if time.perf_counter() - self.started > self.seconds:
            engine.stop(f"timeout of {self.seconds}s reached after outer iteration "
                        f"{record['iteration']}")


class Callbacks(Listener):
    """User callables called with each record; the first truthy return stops the run.

    Parameters
    ----------
    callbacks : list of callable
        Each gets ``payload(engine, record)``; later ones are skipped once one returns
        a truthy value.
    payload : callable ``(engine, record) -> object``, optional
        What the callbacks receive; default a copy of the record.
    reason : str
        The stop reason, formatted with the record's ``iteration``.
    """

    def __init__(self, callbacks, payload: Callable | None = None,
                 reason: str = "stopped by a callback after outer iteration {iteration}"):
        self.callbacks = list(callbacks or [])
        self.payload = payload or (lambda engine, record: dict(record))
        self.reason = reason

    def on_iteration_end(self, engine, record):
        if any(cb(self.payload(engine, record)) for cb in self.callbacks):
            engine.stop(self.reason.format(iteration=record["iteration"]))


class TailAverage(Listener):
    """Polyak-Ruppert tail average: the mean of ``lam`` over the accepted iterations in the
    last ``fraction`` of the planned ``n_outer``.

    A stochastic hypergradient leaves the last iterate rattling around the optimum by
    about ``outer_lr`` times the hypergradient noise; the tail average removes most of
    that noise and leaves a converged run where it is.

    Parameters
    ----------
    fraction : float in (0, 1]
        Share of the planned iterations, counted from the end, that is averaged.
    """

    def __init__(self, fraction: float = 0.5):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"the averaged fraction must be in (0, 1], got {fraction!r}")
        self.fraction = fraction
        self.total, self.count, self.first = None, 0, 0

    def on_run_begin(self, engine):
        self.first = int(engine.n_outer * (1.0 - self.fraction))

    def on_commit(self, engine, record):
        # With the commit, so that a Ctrl-C cannot count a step the average missed.
        if engine.iteration <= self.first:
            return
        with torch.no_grad():
            # clone: .double() of a float64 leaf is the leaf itself, which the next step mutates
            current = [t.detach().double().clone() for t in engine.lam]
            self.total = current if self.total is None else [
                a + c for a, c in zip(self.total, current)]
        self.count += 1

    def average(self, like: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The average, in the dtype of ``like``; ``None`` before the tail began."""
        if not self.count:
            return None
        return [(a / self.count).to(t.dtype) for a, t in zip(self.total, like)]


class OuterLoop:
    """Hypergradient descent on ``lam`` driven by an oracle, with policy and listeners.

    Parameters
    ----------
    oracle : callable ``lam -> OracleResult``
        Called with the list of leaves (they require grad); may keep its own state
        (chains, generators).
    lam : list of Tensor
        Leaves optimised in place.
    optimizer : torch.optim.Optimizer
        Over ``lam``; the engine sets ``leaf.grad`` and calls ``step()``.
    n_outer : int
        The run ends when ``iteration`` reaches it.
    start : int, default=0
        Iterations already done (a resumed search).
    policy : NonFinitePolicy, optional
        Default :class:`StopOnNonFinite`.
    listeners : list of Listener
    project : callable ``lam -> None``, optional
        Applied in place after each optimizer step (bounds, projections).
    records : list, optional
        History to append to (a resumed search's); one dict per recorded row.
    on_interrupt : {"raise", "stop"}, default="raise"
        On KeyboardInterrupt the policy first puts ``lam`` back (a step cut in half is
        undone); then ``"raise"`` propagates it and ``"stop"`` ends the run with
        ``stop_reason = "interrupted (KeyboardInterrupt) at outer iteration <k>"``.
    lr_warmup : int, default=0
        Iterations over which every learning rate ramps up linearly (see
        :class:`~sgld_tuner.core.outer_step.OuterStep`); 0: no ramp. Ignored with ``step``.
    step : OuterStep, optional
        The one place the outer step is scaled (base rate, rollbacks' shrink, groups'
        scales, ramp); default ``OuterStep(ramp=lr_warmup)`` over the optimizer's rates.

    Notes
    -----
    An iteration is atomic with respect to Ctrl-C: a ``KeyboardInterrupt`` before its
    commit (oracle, step, non-finite handling, ``on_record``) rolls back everything the
    policy's checkpoint covers and drops the iteration's records; the commit (records
    published, ``iteration`` advanced, ``on_commit``) runs with SIGINT held; one after
    it (``on_iteration_end``: progress bar, callbacks) keeps the iteration.
    """

    def __init__(self, oracle: Callable, lam: list[torch.Tensor], optimizer, *, n_outer: int,
                 start: int = 0, policy: NonFinitePolicy | None = None, listeners=(),
                 project: Callable | None = None, records: list | None = None,
                 on_interrupt: str = "raise", lr_warmup: int = 0,
                 step: OuterStep | None = None):
        if on_interrupt not in ("raise", "stop"):
            raise ValueError(f"on_interrupt must be 'raise' or 'stop', got {on_interrupt!r}")
        self.step = step if step is not None else OuterStep(ramp=lr_warmup)
        self.oracle, self.lam, self.optimizer = oracle, lam, optimizer
        self.n_outer, self.iteration = n_outer, start
        self.policy = policy if policy is not None else StopOnNonFinite()
        self.listeners = [self.policy, *listeners]
        self.project, self.on_interrupt = project, on_interrupt
        self.records = records if records is not None else []
        self.stop_reason, self.failed = None, False
        self._started, self._pending, self._gate = None, [], InterruptGate()

    # ------------------------------------------------------------- for listeners
    def stop(self, reason: str, failed: bool = False) -> None:
        """End the run after the current iteration; the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.failed = self.failed or failed

    def scale_lr(self, factor: float) -> None:
        """Multiply every learning rate of the outer optimizer by ``factor``."""
        self.step.scale(self.optimizer, factor)

    def add_record(self, record: dict) -> dict:
        """Time ``record`` since the iteration began; it is appended to ``records`` when
        the iteration commits (and dropped if a Ctrl-C rolls the iteration back)."""
        record["time_s"] = time.perf_counter() - self._started
        self._pending.append(record)
        return record

    # ------------------------------------------------------------- the loop
    def _notify(self, hook: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, hook)(self, *args)

    def _step(self, grad) -> bool:
        """One optimizer step on ``lam``; whether ``lam`` is still finite."""
        self.optimizer.zero_grad(set_to_none=False)
        for leaf, g in zip(self.lam, grad):
            leaf.grad = g.to(leaf.dtype)
        with self.step.ramped(self.optimizer, self.iteration):
            self.optimizer.step()
        if self.project is not None:
            self.project(self.lam)
        return all_finite(self.lam)

    def _attempt(self) -> dict | None:
        """Oracle, step, then the policy (non-finite) or the listeners' ``on_record``;
        the accepted iteration's record, or None. Nothing here is committed yet."""
        result = self.oracle(self.lam)
        stage = "oracle" if not result.finite else None
        if stage is None and not self._step(result.grad):
            stage = "step"
        if stage is not None:
            self.policy.on_non_finite(self, result, stage)
            return None
        self.policy.on_accept(self)
        record = {"iteration": self.iteration, "outer_loss": result.outer_loss,
                  "inner_loss": result.inner_loss,
                  "hypergrad_norm": float(torch.sqrt(sum((g.double() ** 2).sum()
                                                         for g in result.grad)))}
        self._notify("on_record", record)
        self.add_record(record)
        return record

    def _iterate(self) -> None:
        gate = self._gate
        gate.close()  # a checkpoint cut short could not be restored
        self._started, self._pending = time.perf_counter(), []
        before = (self.stop_reason, self.failed)
        self._notify("on_iteration_begin")
        try:
            gate.open()  # delivers a SIGINT held during the checkpoint: nothing changed yet
            record = self._attempt()
            gate.close()
        except KeyboardInterrupt:
            gate.close()
            self.policy.on_interrupt(self)
            self._pending = []
            self.stop_reason, self.failed = before
            raise
        # The commit: the gate is still closed.
        self.records.extend(self._pending)
        self._pending = []
        if record is not None:
            self.iteration += 1
            self._notify("on_commit", record)
        gate.open()  # a SIGINT held during the commit ends the run after this iteration
        if record is not None:
            self._notify("on_iteration_end", record)

    def run(self) -> "OuterLoop":
        """Iterate until ``n_outer``, a stop request or a failure; returns ``self``."""
        self._notify("on_run_begin")
        self._gate.install()
        try:
            while self.iteration < self.n_outer and self.stop_reason is None:
                self._iterate()
        except KeyboardInterrupt:
            if self.on_interrupt == "raise":
                raise
            self.stop(f"interrupted (KeyboardInterrupt) at outer iteration {self.iteration}")
        finally:
            self._gate.uninstall()
            self._notify("on_run_end")
        return self


__all__ = ["OuterLoop", "OracleResult", "Listener", "NonFinitePolicy", "StopOnNonFinite",
           "RollbackOnNonFinite", "ProgressBar", "Timeout", "Callbacks", "TailAverage",
           "make_outer_optimizer", "InterruptGate",
           "all_finite", "warn_at_caller"]
