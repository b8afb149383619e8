"""The seam: how lanes of chains are run and compared.

A :class:`Schedule` decides which lanes a search runs (each lane an HPO-SGLD search over
the same folds, possibly with other settings of the net, e.g. its ``lr``), how long each
runs and which one the refit takes. ``SGLDHyperTuner(schedule=...)`` takes any schedule
(default: :class:`~sgld_tuner.search.race.Race`, the race of the net's ``lr``); the plain
search (:class:`PlainSearch`) is one lane run ``n_outer`` iterations. A schedule only
calls :class:`LaneFactory` and :meth:`Lane.run <sgld_tuner.search.lane.Lane.run>`, and
reads lanes' states: it never needs to touch the tuner, as scikit-learn's ``_run_search``
serves its Halving and Randomized searches.
"""
from __future__ import annotations

from typing import Callable

from sklearn.base import BaseEstimator

from .context import FitContext
from .lane import Lane
from .state import SearchState


class LaneFactory:
    """Makes the lanes of one fit: every lane shares the fit's splits and seeds (common
    random numbers: lanes differ only in what they are given), and the first lane asked
    for with the resumed state's ``net_params`` continues that state (``warm_start``)."""

    def __init__(self, context: FitContext, splits: list,
                 fresh_state: Callable[[dict | None], SearchState],
                 resumed: SearchState | None = None):
        self.context, self._fresh, self._resumed = context, fresh_state, resumed
        #: the (train, validation) rows of the folds every lane of the fit shares
        self.splits = splits

    @property
    def resuming(self) -> dict | None:
        """The net parameters of the lane a ``warm_start`` resume continues (``{}``: the
        net as given), or None when nothing is resumed."""
        return None if self._resumed is None else dict(self._resumed.net_params or {})

    def first_state(self) -> SearchState:
        """The state the first lane starts from (the resumed one, or a fresh one), for
        a look at the splits and seeds before any lane is made."""
        return self._resumed if self._resumed is not None else self._fresh(None)

    def __call__(self, net_params: dict | None = None) -> Lane:
        """A lane whose chains train the net with ``net_params`` set (e.g. ``{"lr":
        0.3}``; None: the net as given)."""
        net_params = dict(net_params) if net_params else None
        resumed = self._resumed
        if resumed is not None and (resumed.net_params or None) == net_params:
            self._resumed = None
            return Lane(self.context, resumed)
        return Lane(self.context, self._fresh(net_params))


class Schedule(BaseEstimator):
    """Base class of search schedules: override :meth:`run`.

    A schedule's own settings are its constructor's parameters (stored as given, as in
    scikit-learn), reachable from the tuner as ``schedule__<name>``.

    A schedule must leave the returned lane's results meaningful: its state's points are
    the ``cv_results_`` rows and its best point is refit (with its ``net_params``).
    """

    def run(self, context: FitContext, new_lane: LaneFactory) -> Lane:
        """Run the search; return the lane whose results the tuner reports and refits.

        Parameters
        ----------
        context : FitContext
            The fit's data, folds, scorers and settings (``context.n_outer``: the outer
            iterations the user asked for).
        new_lane : LaneFactory
            ``new_lane(net_params=None)`` makes a lane; ``lane.run(until)`` runs it until
            ``until`` outer iterations are done in all (continuing where it stopped),
            scoring the last; ``lane.state.best_value`` is its best mean test score and
            ``lane.engine.stop_reason`` says whether it stopped early.
        """
        raise NotImplementedError


class PlainSearch(Schedule):
    """One lane, the net as given, run ``n_outer`` outer iterations: HPO-SGLD itself."""

    def run(self, context: FitContext, new_lane: LaneFactory) -> Lane:
        lane = new_lane()
        lane.run(context.n_outer)
        return lane
