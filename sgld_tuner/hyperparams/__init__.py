"""Hyperparameter kinds that :class:`sgld_tuner.SGLDHyperTuner` can learn.

Each kind is a small scikit-learn style specification (``__init__`` only stores its
arguments); :meth:`Hyperparameter.bind` attaches it to a module and the data's shapes.

==================  ==========================================  =========================
kind                what it learns                              transform (raw -> value)
==================  ==========================================  =========================
PerWeightL1         L1 strengths (paper 4.2), per granularity   softplus
WeightDecay         L2 strengths, per granularity               softplus
LossWeights         per-class weights of the criterion          C * softmax (mean 1)
TaylorLoss          8-coefficient polynomial loss (eq. 53)      identity
AffineAugmentation  ranges of random affine warps (paper 4.6)   bound * sigmoid
SampleWeights       one weight per training row                 2 * sigmoid, in (0, 2)
==================  ==========================================  =========================

Penalty granularities (``granularity=``): one strength per ``"weight"``, per ``"unit"``
(row of each matched tensor), per input ``"feature"`` (column of the first matched
tensor), per ``"tensor"``, or one ``"global"`` strength. Learned per-feature strengths
read as a feature-relevance table with :func:`sgld_tuner.relevance.feature_relevance`.

New kinds subclass :class:`Hyperparameter` and :class:`BoundHyperparameter` (public hooks,
capability flags; see :mod:`sgld_tuner.hyperparams.base`) and should pass
:func:`sgld_tuner.checks.check_hyperparameter`, the conformance checks every kind above
passes.
"""
from .augmentation import AffineAugmentation
from .base import BoundHyperparameter, Hyperparameter
from .losses import LossWeights, TaylorLoss
from .penalties import PerWeightL1, WeightDecay
from .reweighting import SampleWeights

__all__ = ["Hyperparameter", "BoundHyperparameter",
           "PerWeightL1", "WeightDecay",
           "LossWeights", "TaylorLoss", "AffineAugmentation", "SampleWeights"]


def __getattr__(name):
    if name == "check_hyperparameter":
        # It moved above the kinds' layer (it needs the skorch adapter).
        raise AttributeError("check_hyperparameter moved: from sgld_tuner import "
                             "check_hyperparameter")
    raise AttributeError(f"module 'sgld_tuner.hyperparams' has no attribute {name!r}")
