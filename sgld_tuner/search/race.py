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
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import ParameterGrid

from .context import FitContext
from .lane import Lane
from .schedules import LaneFactory, PlainSearch, Schedule
from .settings import is_learning_rate


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
        horizon. Rungs: enough that the last keeps at most ``factor`` lanes, and one
        more (down to one lane and the ``hedge``) where the first rung still spans
        ``eval_every`` outer iterations (a long training run: large data).
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
    margin : float, default=1.0
        The last rung's lanes are compared by their mean test score over the later half
        of the rung's scored points, with its standard error (spread over folds and
        points, over the root of the number of folds). Lanes within ``margin`` of the
        best lane's standard errors of its score are tied, and of tied lanes the one
        whose ``lr`` is nearest the net's own (in ratio) is refit: the race moves the
        user's lr only as far as the evidence says (an lr picked at the edge of
        stability on a tie collapsed in the refit where the raced chain had not). 0: the
        best mean wins.
    hedge : bool, default=True
        Each rung before the last also keeps the lane with the next smaller ``lr`` than
        the smallest one kept: short horizons favour large learning rates (a small one
        is still climbing when a rung ends), so the last rung, at the refit's horizon,
        still sees one slower candidate.
    incumbent : bool, default=True
        When the net's own settings are among the candidates and lost the race, their
        lane continues to where the winner's search ends, and the better of the two
        there (by the mean score over the later half of that stretch) is refit. Rungs
        judge young hyperparameters: a larger lr can lead at the refit's horizon and
        fall behind once the search has tuned the continuous kinds. (Asking the winner
        to lead by ``margin`` standard errors there too kept the net's lr where the
        race's pick was better, on small validation folds.)
    """

    def __init__(self, param_grid=None, factor=3, n_lrs=5, spread=3.0, extend=2,
                 after=2.0, margin=1.0, hedge=True, incumbent=True):
        self.param_grid = param_grid
        self.factor = factor
        self.n_lrs = n_lrs
        self.spread = spread
        self.extend = extend
        self.after = after
        self.margin = margin
        self.hedge = hedge
        self.incumbent = incumbent

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
        if not (isinstance(self.margin, (int, float)) and self.margin >= 0):
            raise ValueError(f"Race: margin must be a number >= 0, got {self.margin!r}")
        if self.param_grid is None:
            if not (isinstance(self.n_lrs, int) and self.n_lrs >= 1) or not self.spread > 1:
                raise ValueError(f"Race: n_lrs must be an int >= 1 and spread > 1, got "
                                 f"n_lrs={self.n_lrs!r}, spread={self.spread!r}")
            if "lr" in context.hyperparams:
                # best_params_ holds the kinds and the raced knobs under one name each
                raise ValueError("Race: a hyperparameter kind is named 'lr', the net's "
                                 "learning rate the race tunes; rename the kind, or pass "
                                 "schedule=PlainSearch() to tune without the race")
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
                _check_values(name, values)

    # -- the race -------------------------------------------------------------------------
    def run(self, context: FitContext, new_lane: LaneFactory) -> Lane:
        candidates = self.candidates(context)
        if context.n_outer <= 1:
            # The search switched off (``n_outer=1``, the no-search control): nothing is
            # raced either, the net is refit as given.
            return PlainSearch().run(context, new_lane)
        if new_lane.resuming is not None:
            # A resumed search continues the race's winner: the race is not run again.
            lane = new_lane(new_lane.resuming)
            lane.run(max(context.n_outer, lane.state.iteration))
            return lane
        rungs = []
        lane = self._race(context, new_lane, candidates, rungs)
        lane.state.rungs = rungs
        return lane

    def _race(self, context: FitContext, new_lane: LaneFactory, candidates: list,
              rungs: list) -> Lane:
        """The rungs, then the winner's search; each rung's lanes and steps go to
        ``rungs``. Returns the lane to refit."""
        lanes = [new_lane(c) for c in candidates]
        n_rungs = self._n_rungs(len(lanes), min(lane.budget_iterations for lane in lanes),
                                context.outer.eval_every)
        everyone = list(lanes)
        alive = lanes
        for rung in range(n_rungs):
            share = self.factor ** -(n_rungs - 1 - rung)  # the last rung at the horizon
            stopped = self._run_rung(alive, rung, share)
            if stopped is None and rung == 0 and self.param_grid is None and self.extend:
                grown = self._extend_edges(alive, new_lane, share)
                everyone += grown
                alive += grown
            rungs.append(_rung_record(alive, rung))
            if stopped is not None:
                return _ended_by_user(stopped, everyone)
            alive = self._finite(alive) or [_own_lane(context, lanes)]
            if rung < n_rungs - 1:
                alive = self._promoted(alive)
        winner = self._winner(alive, float(context.net.lr))
        if winner.engine.failed:
            _merge_losers(winner, [lane for lane in everyone if lane is not winner])
            return winner  # every candidate diverged: the net's own lr, as it stopped
        winner, stopped = self._finish(context, winner, everyone, n_rungs, rungs)
        if stopped is not None:
            return _ended_by_user(stopped, everyone)
        _merge_losers(winner, [lane for lane in everyone if lane is not winner])
        return winner

    def _finish(self, context: FitContext, winner: Lane, everyone: list,
                final_rung: int, rungs: list) -> tuple[Lane, Lane | None]:
        """The winner's search continues ``after`` more budgets; with ``incumbent``, the
        lane of the net's own settings continues to the same outer iteration, and the
        better of the two there is kept (a rung of its own in ``rungs``). Returns the lane
        to refit and the lane a user's stop ended, if any."""
        until = context.n_outer
        if self.after is not None:
            until = min(until, winner.state.iteration
                        + math.ceil(self.after * winner.budget_iterations))
        target = max(until, winner.state.iteration)
        own = _incumbent(context, everyone) if self.incumbent else None
        if own is None or own is winner or not _scored([own]) \
                or own.state.iteration >= target:
            # No incumbent to defend, or it already met the winner at the last rung
            # (whose tie rule favours the net's own lr).
            winner.run(target)
            return winner, None
        # Compared over the later half of the stretch the incumbent runs, on both chains:
        # one more rung of two lanes (``iter`` in ``cv_results_``).
        start = (own.state.iteration + target) // 2
        stopped = None
        for lane in (winner, own):
            lane.rung = final_rung
            engine = lane.run(max(target, lane.state.iteration + 1))
            if engine.stop_reason is not None and not engine.failed:
                stopped = lane
                break
            lane.window_start = start
        rungs.append(_rung_record([winner, own], final_rung))
        if stopped is not None:
            return stopped, stopped
        if not _scored([own]) or winner.rung_score >= own.rung_score:
            return winner, None
        return own, None

    def _n_rungs(self, n_lanes: int, horizon: int, eval_every: int) -> int:
        """Rungs enough that the last keeps ``factor`` or fewer lanes (``ceil(log_factor
        n)``), and one more, down to a single lane (and the ``hedge``), where the
        horizon is long enough that the first rung still spans ``eval_every`` outer
        iterations (a scored point of its own): a lane dropped there has run a
        ``factor``-th of what it runs in a rung one step later. Shorter horizons (small
        data) keep the first rung long enough to be judged on more than its last point."""
        if n_lanes <= 1:
            return 1
        rungs = max(1, math.ceil(math.log(n_lanes, self.factor)))
        if horizon / self.factor ** rungs >= eval_every:
            rungs += 1
        return rungs

    @staticmethod
    def _run_rung(lanes: list, rung: int, share: float) -> Lane | None:
        """Run the lanes to ``share`` of their horizon; the lane a user's stop (Ctrl-C, a
        callback, the timeout) ended, if one did (the race then ends)."""
        for lane in lanes:
            lane.rung = rung
            engine = lane.run(max(lane.state.iteration + 1,
                                  math.ceil(lane.budget_iterations * share)))
            if engine.stop_reason is not None and not engine.failed:
                return lane
        return None

    def _extend_edges(self, lanes: list, new_lane: LaneFactory, share: float) -> list:
        """Lanes one ``spread`` beyond the range while its best lane sits at an edge."""
        grown = []
        for _ in range(self.extend):
            pool = _scored(lanes + grown)
            if len(pool) < 2:
                break
            lrs = sorted(lane.state.net_params["lr"] for lane in pool)
            best = max(pool, key=lambda lane: lane.rung_score).state.net_params["lr"]
            if best == lrs[-1]:
                lr = lrs[-1] * self.spread
            elif best == lrs[0]:
                lr = lrs[0] / self.spread
            else:
                break
            lane = new_lane({"lr": lr})
            grown.append(lane)
            if self._run_rung([lane], 0, share) is not None:
                break
        return grown

    def _promoted(self, lanes: list) -> list:
        """The best ``1 / factor`` of the lanes, and the ``hedge`` lane."""
        keep = max(1, math.ceil(len(lanes) / self.factor))
        ranked = sorted(lanes, key=lambda lane: -lane.rung_score)
        kept, rest = ranked[:keep], ranked[keep:]
        if self.hedge and _all_have_lr(lanes):
            floor = min(_lr(lane) for lane in kept)
            below = [lane for lane in rest if _lr(lane) < floor]
            if below:
                kept.append(max(below, key=_lr))
        return kept

    def _winner(self, lanes: list, own_lr: float) -> Lane:
        """The best lane, or on a tie (within ``margin`` standard errors of the best)
        the tied lane whose ``lr`` is nearest ``own_lr`` in ratio (then the better)."""
        best = max(lanes, key=lambda lane: lane.rung_score)
        if len(lanes) == 1 or not _all_have_lr(lanes):
            return best
        floor = best.rung_score - self.margin * best.rung_error
        tied = [lane for lane in lanes if lane.rung_score >= floor]
        return min(tied, key=lambda lane: (abs(math.log(_lr(lane) / own_lr)),
                                           -lane.rung_score))

    @staticmethod
    def _finite(lanes: list) -> list:
        """The lanes that neither diverged nor failed to score; a note for the others."""
        kept = _scored(lanes)
        for lane in lanes:
            if lane not in kept:
                failed = lane.engine is not None and lane.engine.failed
                warnings.warn(f"race: dropped the lane {lane.state.net_params} (it "
                              f"{'diverged' if failed else 'could not be scored'})",
                              RaceWarning, stacklevel=4)
        return kept


def run_by(schedule: Schedule | None) -> Schedule:
    """The schedule a fit runs: ``schedule``, or the race of the net's lr for None."""
    return schedule if schedule is not None else Race()


def _check_values(name: str, values) -> None:
    """One knob's candidates: a non-empty list (as scikit-learn's ``param_grid`` wants),
    and for the knobs the race itself reads, values the net can train with."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"Race: param_grid[{name!r}] must be a list of candidates, got "
                        f"{values!r}; wrap a single value in a list")
    if not len(values):
        raise ValueError(f"Race: param_grid[{name!r}] must be a non-empty list of "
                         "candidates")
    bad = [v for v in values if not _valid_value(name, v)]
    if bad:
        need = _NEEDS.get(name)
        raise ValueError(f"Race: param_grid[{name!r}] has invalid candidates {bad}: each "
                         f"must be {need}")


#: what each knob's candidates must be, for the knobs the race and the chains read
_NEEDS = {"lr": "a finite number > 0", "max_epochs": "an int >= 1",
          "batch_size": "an int >= 1, or -1 (all rows)"}


def _valid_value(name: str, value) -> bool:
    if name not in _NEEDS:
        return True
    if isinstance(value, bool):
        return False
    if name == "lr":
        return is_learning_rate(value)
    if not isinstance(value, numbers.Integral):
        return False
    return value >= 1 or (name == "batch_size" and value == -1)


def _scored(lanes: list) -> list:
    """The lanes that have run, neither diverged nor failed to score."""
    return [lane for lane in lanes if lane.engine is not None and not lane.engine.failed
            and np.isfinite(lane.rung_score)]


def _lr(lane: Lane) -> float:
    """The lr the lane's chains run at (its candidate's, or less after a rollback)."""
    return float(lane.ran_net_params()["lr"])


def _all_have_lr(lanes: list) -> bool:
    return all("lr" in (lane.state.net_params or {}) for lane in lanes)


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


def _incumbent(context: FitContext, lanes: list) -> Lane | None:
    """The lane whose candidate is the net's own setting of every raced parameter."""
    params = context.net.get_params(deep=False)
    for lane in lanes:
        raced = lane.state.net_params or {}
        if raced and all(name in params and _same(params[name], value)
                         for name, value in raced.items()):
            return lane
    return None


def _same(a, b) -> bool:
    try:
        return bool(a == b) or (isinstance(a, (int, float)) and math.isclose(a, b))
    except (TypeError, ValueError):
        return a is b


def _own_lane(context: FitContext, lanes: list) -> Lane:
    """When every candidate failed: the lane of the net's own settings (else the first),
    reported as the plain search reports a failed search."""
    return _incumbent(context, lanes) or lanes[0]


def _ended_by_user(stopped: Lane, everyone: list) -> Lane:
    """A user's stop ends the race: the best lane scored so far is reported (the stop's
    reason with it) and refit; a resumed fit continues that lane."""
    scored = _scored(everyone)
    best = max(scored, key=lambda lane: lane.rung_score) if scored else stopped
    if best is not stopped:
        best.engine.stop_reason = stopped.engine.stop_reason
    _merge_losers(best, [lane for lane in everyone if lane is not best])
    return best


def _rung_record(lanes: list, rung: int) -> dict:
    """What a rung ran: its lanes (those a user's stop left unrun are not counted) and
    the inner steps per fold they were judged at (``n_candidates_``, ``n_resources_``)."""
    ran = [lane for lane in lanes if lane.engine is not None and lane.rung == rung]
    return {"n_candidates": len(ran), "n_resources": max((lane.steps_run for lane in ran), default=0)}


def _merge_losers(winner: Lane, losers: list) -> None:
    """Put the losers' scored points before the winner's (rows of ``cv_results_``, not
    candidates for ``best_index_``: their values are not kept)."""
    rows = [{**point, "eligible": False} for lane in losers for point in lane.state.points]
    if not rows:
        return
    state = winner.state
    state.points = rows + state.points
    state.snapshots = {index + len(rows): values for index, values in state.snapshots.items()}
