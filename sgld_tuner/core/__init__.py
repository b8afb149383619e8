"""Pure-PyTorch bilevel core: HPO-SGLD and the classic hypergradient baselines.

Never imports scikit-learn or skorch.
"""
from .engine import (Callbacks, Listener, NonFinitePolicy, OracleResult, OuterLoop, ProgressBar,
                     RollbackOnNonFinite, StopOnNonFinite, Timeout)
from .hypergrad import hypergradient, sgld_hypergrad
from .minimize import (BilevelResult, NonFiniteWarning, UnusedHyperparameterWarning, minimize,
                       make_outer_optimizer, project)
from .problem import (METHODS, BilevelProblem, ChainState, Hypergradient, InnerSettings,
                      SeparablePenalty)
from .sgld import SliceGenerators, langevin_step, make_generator

__all__ = [
    "minimize", "hypergradient", "sgld_hypergrad", "BilevelResult", "BilevelProblem",
    "ChainState", "Hypergradient", "InnerSettings", "METHODS", "NonFiniteWarning",
    "UnusedHyperparameterWarning", "langevin_step", "make_generator", "make_outer_optimizer",
    "project", "OuterLoop", "OracleResult", "Listener", "NonFinitePolicy", "StopOnNonFinite",
    "RollbackOnNonFinite", "ProgressBar", "Timeout", "Callbacks", "SeparablePenalty",
    "SliceGenerators",
]
