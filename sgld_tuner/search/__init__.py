"""What happens inside ``fit``, below the scikit-learn plumbing.

- :mod:`~sgld_tuner.search.settings`: the grouped settings (:class:`SamplerSettings`,
  :class:`OuterSettings`);
- :mod:`~sgld_tuner.search.context`: :class:`FitContext`, built once per fit;
- :mod:`~sgld_tuner.search.chains` and :mod:`~sgld_tuner.search.stacked`: the folds'
  chains, one by one or stacked, behind one interface;
- :mod:`~sgld_tuner.search.oracle`: the folds' mean hypergradient;
- :mod:`~sgld_tuner.search.state`: the resumable state and the save format;
- :mod:`~sgld_tuner.search.lane`: one HPO-SGLD search over the folds, run in stretches;
- :mod:`~sgld_tuner.search.schedules`: the seam, how lanes are run and compared;
- :mod:`~sgld_tuner.search.race`: the race of the net's lr / budget / discrete knobs;
- :mod:`~sgld_tuner.search.scoring` and :mod:`~sgld_tuner.search.routing`: scorers, the
  refit metric, failures through ``error_score``, and metadata routing;
- :mod:`~sgld_tuner.search.refit`: the refit net on all rows;
- :mod:`~sgld_tuner.search.diagnostics`: the end-of-search warnings.
"""
from .context import FitContext
from .diagnostics import (DivergenceWarning, OverfittingWarning, RowOrderWarning,
                          SearchInterrupted, UndertrainedWarning, UnmovedSearchWarning)
from .lane import Lane
from .race import Race, RaceWarning
from .schedules import LaneFactory, PlainSearch, Schedule
from .settings import OuterSettings, SamplerSettings
from .state import SearchState

__all__ = ["FitContext", "Lane", "LaneFactory", "PlainSearch", "Race", "RaceWarning",
           "Schedule", "SearchState",
           "SamplerSettings", "OuterSettings", "SearchInterrupted", "UnmovedSearchWarning",
           "DivergenceWarning", "OverfittingWarning", "RowOrderWarning",
           "UndertrainedWarning"]
