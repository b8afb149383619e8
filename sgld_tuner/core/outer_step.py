"""The outer optimizer's step sizes, scaled in one place."""
from __future__ import annotations

from contextlib import contextmanager


class OuterStep:
    """Every factor of the outer step: the base rate, the rollbacks' shrink, each
    parameter group's own scale and the ramp.

    A group steps at ``lr * shrink * scale`` (``scale``: e.g. a hyperparameter kind's
    ``outer_lr_scale``); a rollback multiplies ``shrink`` and the groups' stored rates by
    its factor (:meth:`scale`); in iteration ``k`` of a ramp over ``ramp`` iterations the
    optimizer steps at ``min(1, (k + 1) / ramp)`` times its rates, applied around the step
    only (:meth:`ramped`), so the stored rates, their shrinking and the optimizer's state
    are untouched.

    Parameters
    ----------
    lr : float or None
        The base rate (None: the optimizer's own rates, for a caller that built it).
    shrink : float, default=1.0
        The product of the rollbacks' factors so far (a resumed search's).
    ramp : int, default=0
        Iterations of the linear ramp; 0: none.
    """

    def __init__(self, lr: float | None = None, shrink: float = 1.0, ramp: int = 0):
        self.lr, self.shrink, self.ramp = lr, float(shrink), int(ramp)

    @property
    def current(self) -> float:
        """The base rate after the rollbacks' shrinking."""
        return self.lr * self.shrink

    def groups(self, params_and_scales) -> list[dict]:
        """Optimizer parameter groups from ``(params, scale)`` pairs."""
        return [{"params": params, "lr": self.current * scale}
                for params, scale in params_and_scales]

    def scale(self, optimizer, factor: float) -> None:
        """A rollback's shrinking: ``shrink`` and every group's rate times ``factor``."""
        self.shrink *= factor
        for group in optimizer.param_groups:
            group["lr"] *= factor

    def ramp_factor(self, iteration: int) -> float:
        return min(1.0, (iteration + 1) / self.ramp) if self.ramp > 0 else 1.0

    @contextmanager
    def ramped(self, optimizer, iteration: int):
        """The block (one ``optimizer.step()``) at the ramp's share of the rates."""
        factor = self.ramp_factor(iteration)
        groups = optimizer.param_groups
        stored = [group["lr"] for group in groups]
        for group in groups:
            group["lr"] = group["lr"] * factor
        try:
            yield
        finally:
            for group, lr in zip(groups, stored):
                group["lr"] = lr
