"""Race what gradients cannot reach: the net's lr, budget and discrete knobs.

HPO-SGLD moves only parameters of the Gibbs distribution. :class:`Race` runs one lane per
candidate setting of the net (its ``lr`` by default, or any ``param_grid`` over the net's
parameters), each lane a full HPO-SGLD search over the same folds and seeds, and drops
lanes by successive halving while the survivors' chains continue warm. Every candidate is
judged at the horizon its refit will train (its own ``max_epochs`` passes over a fold's
rows); earlier rungs use fractions of it. The winner then continues as the plain search
for ``after`` more of its budgets (at most ``n_outer`` outer iterations in all), and is
refit with its settings.
"""
from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
from sklearn.model_selection import ParameterGrid

from .context import FitContext
from .lane import Lane
from .schedules import LaneFactory, Schedule


class RaceWarning(UserWarning):
    """A race candidate was dropped (it diverged or could not be scored)."""


class Race(Schedule):
    """Successive halving of warm lanes over settings of the net.

    Parameters
    ----------
    param_grid : dict or list of dicts, optional
        Candidate settings of the net, as scikit-learn's ``param_grid`` over its
        parameters (``lr``, ``max_epochs``, ``batch_size``, ``optimizer``,
        ``module__<name>``...). Default: ``n_lrs`` learning rates spaced by ``spread``
        around the net's own, extended past an edge winner.
    factor : int, default=3
        Each rung keeps the best ``1 / factor`` of the lanes (at least one), and runs
        ``factor`` times as long as the one before; the last rung is at the refit's
        horizon.
    n_lrs : int, default=5
        Learning rates in the default grid (odd: the net's own in the middle).
    spread : float, default=3.0
        Ratio of neighbouring learning rates in the default grid.
    extend : int, default=2
        With the default grid, how many times a first-rung winner at an edge of the
        range adds the next learning rate beyond it.
    after : float or None, default=2.0
        How long the winner's search continues after the race, in its own training
        budgets (at most to ``n_outer`` outer iterations in all): its chains stay near
        the horizon the refit trains at. None: to ``n_outer``.
    """

    def __init__(self, param_grid=None, factor=3, n_lrs=5, spread=3.0, extend=2,
                 after=2.0):
        self.param_grid = param_grid
        self.factor = factor
        self.n_lrs = n_lrs
        self.spread = spread
        self.extend = extend
        self.after = after

    # -- candidates ---------------------------------------------------------------------
    def candidates(self, context: FitContext) -> list[dict]:
        """The net settings the race starts with (checked before any training)."""
        self._check(context)
        if self.param_grid is not None:
            return list(ParameterGrid(self.param_grid))
        lr = float(context.net.lr)
        half = (self.n_lrs - 1) // 2
        return [{"lr": lr * self.spread ** k} for k in range(-half, self.n_lrs - half)]

    def _check(self, context: FitContext) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"Race: factor must be an int >= 2, got {self.factor!r}")
        if self.after is not None and not self.after >= 0:
            raise ValueError(f"Race: after must be >= 0 or None, got {self.after!r}")
        if self.param_grid is None:
            if not (isinstance(self.n_lrs, int) and self.n_lrs >= 1) or not self.spread > 1:
                raise ValueError(f"Race: n_lrs must be an int >= 1 and spread > 1, got "
                                 f"n_lrs={self.n_lrs!r}, spread={self.spread!r}")
            return
        grids = self.param_grid if isinstance(self.param_grid, list) else [self.param_grid]
        known = set(context.net.get_params(deep=True))
        for grid in grids:
            if not isinstance(grid, dict) or not grid:
                raise ValueError(f"Race: param_grid must be a non-empty dict (or a list of "
                                 f"them) of the net's parameters, got {grid!r}")
            for name, values in grid.items():
                if name not in known and not _routed_by_skorch(context.net, name):
                    raise ValueError(f"Race: {name!r} is not a parameter of the net "
                                     f"{type(context.net).__name__} (e.g. lr, max_epochs, "
                                     "batch_size, module__<name>)")
                if name.startswith("hyperparams") or name in context.hyperparams:
                    raise ValueError(f"Race: {name!r} is a differentiable hyperparameter: "
                                     "the search tunes it by hypergradient, not by a race")
                if isinstance(values, (str, bytes)) or not len(values):
                    raise ValueError(f"Race: param_grid[{name!r}] must be a non-empty list "
                                     f"of candidates, got {values!r}")
                if name == "lr" and not all(float(v) > 0 for v in values):
                    raise ValueError(f"Race: every lr must be > 0, got {list(values)}")

    # -- the race -------------------------------------------------------------------------
    def run(self, context: FitContext, new_lane: LaneFactory) -> Lane:
        candidates = self.candidates(context)
        if new_lane.resuming is not None:
            # A resumed search continues the race's winner: the race is not run again.
            lane = new_lane(new_lane.resuming)
            lane.run(max(context.n_outer, lane.state.iteration))
            return lane
        lanes = [new_lane(c) for c in candidates]
        n_rungs = max(1, math.ceil(math.log(len(lanes), self.factor))) if len(lanes) > 1 else 1
        everyone = list(lanes)
        alive = lanes
        for rung in range(n_rungs):
            share = self.factor ** -(n_rungs - 1 - rung)  # the last rung at the horizon
            self._run_rung(alive, rung, share)
            if rung == 0 and self.param_grid is None and self.extend:
                grown = self._extend_edges(alive, new_lane, share)
                everyone += grown
                alive += grown
            alive = self._finite(alive)
            if rung < n_rungs - 1:
                keep = max(1, math.ceil(len(alive) / self.factor))
                alive = sorted(alive, key=lambda lane: -lane.last_score)[:keep]
        winner = max(alive, key=lambda lane: lane.last_score)
        _merge_losers(winner, [lane for lane in everyone if lane is not winner])
        until = context.n_outer
        if self.after is not None:
            until = min(until, winner.state.iteration
                        + math.ceil(self.after * winner.budget_iterations))
        winner.run(max(until, winner.state.iteration))
        return winner

    @staticmethod
    def _run_rung(lanes: list, rung: int, share: float) -> None:
        for lane in lanes:
            lane.rung = rung
            lane.run(max(lane.state.iteration + 1,
                         math.ceil(lane.budget_iterations * share)))

    def _extend_edges(self, lanes: list, new_lane: LaneFactory, share: float) -> list:
        """Lanes one ``spread`` beyond the range while its best lane sits at an edge."""
        grown = []
        for _ in range(self.extend):
            pool = self._finite(lanes + grown)
            if len(pool) < 2:
                break
            lrs = sorted(lane.state.net_params["lr"] for lane in pool)
            best = max(pool, key=lambda lane: lane.last_score).state.net_params["lr"]
            if best == lrs[-1]:
                lr = lrs[-1] * self.spread
            elif best == lrs[0]:
                lr = lrs[0] / self.spread
            else:
                break
            lane = new_lane({"lr": lr})
            self._run_rung([lane], 0, share)
            grown.append(lane)
        return grown

    @staticmethod
    def _finite(lanes: list) -> list:
        """The lanes that neither diverged nor failed to score; a note for the others."""
        kept = []
        for lane in lanes:
            failed = lane.engine is not None and lane.engine.failed
            if failed or not np.isfinite(lane.last_score):
                warnings.warn(f"race: dropped the lane {lane.state.net_params} (it "
                              f"{'diverged' if failed else 'could not be scored'})",
                              RaceWarning, stacklevel=4)
                continue
            kept.append(lane)
        if not kept:
            raise ValueError("race: every candidate diverged or could not be scored; see "
                             "the warnings")
        return kept


def _routed_by_skorch(net, name: str) -> bool:
    """Whether skorch takes ``name`` as a prefixed parameter (``module__hidden`` when the
    module's constructor has ``hidden``; ``optimizer__momentum``...)."""
    prefix, _, rest = name.partition("__")
    if not rest or prefix not in ("module", "optimizer", "criterion", "iterator_train",
                                  "iterator_valid", "dataset"):
        return False
    target = getattr(net, prefix, None)
    if prefix != "module" or not isinstance(target, type):
        return True
    params = inspect.signature(target).parameters
    return rest in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _merge_losers(winner: Lane, losers: list) -> None:
    """Put the losers' scored points before the winner's (rows of ``cv_results_``, not
    candidates for ``best_index_``: their values are not kept)."""
    rows = [{**point, "eligible": False} for lane in losers for point in lane.state.points]
    if not rows:
        return
    state = winner.state
    state.points = rows + state.points
    state.snapshots = {index + len(rows): values for index, values in state.snapshots.items()}
