"""Feature relevance from learned per-feature strengths.

With ``PerWeightL1(granularity="feature")`` (or ``WeightDecay``) the search learns one
penalty per input feature on the first layer's columns. A feature the validation loss
needs keeps a small penalty; a feature that only helps to overfit is pushed towards a
large one. :func:`feature_relevance` turns those values into a ranked table.

This module reads fitted tuners by duck typing (``hyperparams_``, ``hyperparams``,
``feature_names_in_``) and never imports the tuner.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["feature_relevance", "learned_values"]


def learned_values(source: Any, name: str | None = None) -> Any:
    """The public value of one learned hyperparameter.

    Parameters
    ----------
    source : fitted tuner, dict or public value
        A fitted :class:`~sgld_tuner.SGLDHyperTuner` (its ``hyperparams_``), a dict of
        public values by hyperparameter name (``hyperparams_``, ``best_params_``), or the
        public value itself (as returned by ``BoundHyperparameter.to_public``).
    name : str, optional
        The hyperparameter's name. Needed to pick from a tuner or a dict by name; for a
        tuner, ``None`` picks the only hyperparameter declared with
        ``granularity="feature"``.

    Returns
    -------
    float, ndarray or dict
        The public value.

    Raises
    ------
    ValueError
        If ``name`` is ``None`` and the tuner does not have exactly one per-feature kind.
    """
    if hasattr(source, "hyperparams_"):
        if name is None:
            specs = getattr(source, "hyperparams", None) or {}
            found = [k for k, spec in specs.items()
                     if getattr(spec, "granularity", None) == "feature"]
            if len(found) != 1:
                raise ValueError(f"pass name=: the tuner has {len(found)} hyperparameters "
                                 f"with granularity='feature' ({found}); names: "
                                 f"{list(source.hyperparams_)}")
            name = found[0]
        return source.hyperparams_[name]
    if isinstance(source, dict) and name is not None and name in source:
        return source[name]
    return source


def _feature_vector(values: Any) -> np.ndarray:
    """The 1-D per-feature strengths inside a public value."""
    if isinstance(values, dict):
        if len(values) != 1:
            raise ValueError(
                "expected the public value of a granularity='feature' kind (a dict with one "
                f"parameter name -> strengths per input feature); got keys {list(values)}")
        values = next(iter(values.values()))
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"per-feature strengths must be 1-D (one per input feature); got "
                         f"shape {arr.shape}: was the kind bound with granularity='feature'?")
    return arr


def feature_relevance(values_or_tuner: Any, feature_names: Sequence[str] | None = None, *,
                      name: str | None = None) -> pd.DataFrame:
    """Rank input features by their learned per-feature penalty strengths.

    Parameters
    ----------
    values_or_tuner : fitted tuner, dict or array-like
        A fitted :class:`~sgld_tuner.SGLDHyperTuner` with a ``granularity="feature"``
        kind, a dict of public values by hyperparameter name (with ``name``), the public
        value of such a kind (``{param_name: strengths}``), or the 1-D strengths.
    feature_names : sequence of str, optional
        One name per input feature. Defaults to the tuner's ``feature_names_in_`` when it
        has them, else ``x0, x1, ...``.
    name : str, optional
        Which hyperparameter to read (see :func:`learned_values`).

    Returns
    -------
    pandas.DataFrame
        Columns ``feature``, ``strength`` and ``rank``, sorted by rank: rank 1 is the most
        relevant feature, i.e. the smallest penalty (ties share the lowest rank).

    Raises
    ------
    ValueError
        If the values are not one strength per feature, or ``feature_names`` has the
        wrong length.
    """
    strengths = _feature_vector(learned_values(values_or_tuner, name))
    if feature_names is None:
        feature_names = getattr(values_or_tuner, "feature_names_in_", None)
    if feature_names is None:
        feature_names = [f"x{i}" for i in range(len(strengths))]
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != len(strengths):
        raise ValueError(f"feature_names has {len(feature_names)} entries for "
                         f"{len(strengths)} learned strengths")
    table = pd.DataFrame({"feature": feature_names, "strength": strengths})
    table["rank"] = table["strength"].rank(method="min").astype(int)
    return table.sort_values(["rank", "feature"], kind="stable").reset_index(drop=True)
