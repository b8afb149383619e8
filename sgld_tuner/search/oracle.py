"""The folds' mean hypergradient, as the outer loop's oracle."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core import InnerSettings
from ..core.engine import BLOWUP_FACTOR, OracleResult, all_finite, blowup_limit, warn_at_caller
from .chains import FoldChains
from .diagnostics import DivergenceWarning


class FoldOracle:
    """The search's hypergradient oracle: the mean over the folds' chains.

    Holds the chains and the inner settings (replaced when a rollback shrinks the inner
    step). A chain can blow up without a NaN (a step far too large: losses of 1e20 and
    more): an outer loss above :func:`~sgld_tuner.core.engine.blowup_limit` of the folds'
    validation loss at the initial weights counts as not finite, so the engine's policy
    rolls it back like a NaN.
    """

    def __init__(self, chains: FoldChains, settings: InnerSettings, parallel,
                 where: str | None = None):
        self.chains, self.settings, self.parallel = chains, settings, parallel
        self.limit = blowup_limit(float(np.mean([f.start_loss for f in chains.folds])))
        self.warned = False
        #: the lane a warning names (a race's candidate), None for the search's own
        self.where = where

    def _blown_up(self, outer_loss: float) -> bool:
        """Whether a finite ``outer_loss`` is a divergence (warns the first time)."""
        if not outer_loss > self.limit:
            return False
        if not self.warned:
            where = "" if self.where is None else f"{self.where}: "
            cause = ("e.g. its lr or the tuner's inner_lr" if self.where is None
                     else "this candidate's setting, e.g. its lr")
            warn_at_caller(
                f"{where}the outer loss reached {outer_loss:.3g}, more than "
                f"{BLOWUP_FACTOR:g} times the validation loss at the initial weights: "
                f"treated as a divergence (a step too large for the net, {cause})",
                DivergenceWarning)
            self.warned = True
        return True

    def __call__(self, lam) -> OracleResult:
        grad, outer_loss, inner_losses = self.chains.hypergradient(lam, self.settings,
                                                                   self.parallel)
        # Every fold's inner loss must be finite, not just their mean.
        finite = (math.isfinite(outer_loss) and all(math.isfinite(v) for v in inner_losses)
                  and all_finite(grad) and not self._blown_up(outer_loss))
        inner_loss = float(np.mean(inner_losses)) if finite else math.nan
        return OracleResult(grad, outer_loss, inner_loss, finite)

    def checkpoint(self, engine):
        """``lam``, the chains and their streams, and the inner settings (a rollback
        after a shrink must put the inner step back too)."""
        return [t.detach().clone() for t in engine.lam], self.chains.checkpoint(), self.settings

    def restore(self, engine, snapshot) -> None:
        lam_values, chains, self.settings = snapshot
        with torch.no_grad():
            for leaf, value in zip(engine.lam, lam_values):
                leaf.copy_(value)
        self.chains.restore(chains)
