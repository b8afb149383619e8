"""Feature relevance from learned per-feature strengths.

With ``PerWeightL1()`` (its ``granularity="auto"`` is per input feature on an MLP's first
layer) or any kind bound with ``granularity="feature"``, the search learns one penalty per
input feature on the first layer's columns. A feature the validation loss needs keeps a
small penalty; a feature that only helps to overfit is pushed towards a large one.
:func:`feature_strengths` gives those values as a :class:`pandas.Series` indexed by
feature name; :func:`feature_relevance` ranks them in a table.

This module reads fitted tuners by duck typing (``hyperparams_``, ``granularities_``,
``hyperparams``, ``feature_names_in_``, ``estimator``, ``best_estimator_``) and never
imports the tuner.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

__all__ = ["feature_relevance", "feature_strengths", "learned_values", "feature_names_out"]


def _is_tuner(source: Any) -> bool:
    return hasattr(source, "hyperparams_")


def _per_feature_names(tuner: Any) -> list[str]:
    """The tuner's hyperparameters whose granularity is per input feature.

    ``granularities_`` (what ``granularity="auto"`` resolved to in ``fit``) when the
    tuner has it, else the declared ``granularity`` of each kind.
    """
    resolved = getattr(tuner, "granularities_", None)
    if resolved is not None:
        return [k for k, g in resolved.items() if g == "feature"]
    specs = getattr(tuner, "hyperparams", None) or {}
    return [k for k, spec in specs.items() if getattr(spec, "granularity", None) == "feature"]


def _resolve_name(source: Any, name: str | None) -> str | None:
    if not _is_tuner(source):
        return name
    if name is not None:
        if name not in source.hyperparams_:
            raise ValueError(f"no hyperparameter {name!r}; the tuner's: "
                             f"{list(source.hyperparams_)}")
        return name
    found = _per_feature_names(source)
    if len(found) != 1:
        raise ValueError(f"pass name=: the tuner has {len(found)} hyperparameters "
                         f"with granularity='feature' ({found}); names: "
                         f"{list(source.hyperparams_)}")
    return found[0]


def learned_values(source: Any, name: str | None = None) -> Any:
    """The public value of one learned hyperparameter.

    Parameters
    ----------
    source : fitted tuner, dict or public value
        A fitted :class:`~sgld_tuner.SGLDHyperTuner` (its ``hyperparams_``), a dict of
        public values by hyperparameter name (``hyperparams_``, ``best_params_``), or the
        public value itself (as returned by ``BoundHyperparameter.to_public``).
    name : str, optional
        The hyperparameter's name. Needed to pick from a dict by name; for a tuner,
        ``None`` picks the only hyperparameter whose granularity is per input feature,
        as resolved in ``fit`` (``granularities_``: ``PerWeightL1()``'s
        ``granularity="auto"`` counts when it resolved to ``"feature"``).

    Returns
    -------
    float, ndarray or dict
        The public value.

    Raises
    ------
    ValueError
        If ``name`` is ``None`` and the tuner does not have exactly one per-feature kind.
    """
    if _is_tuner(source):
        return source.hyperparams_[_resolve_name(source, name)]
    if all(hasattr(source, a) for a in ("fit", "estimator", "hyperparams")):  # a tuner
        raise NotFittedError(f"this {type(source).__name__} is not fitted yet: call fit "
                             "before reading its learned values")
    if isinstance(source, dict) and name is not None and name in source:
        return source[name]
    return source


def _feature_vector(values: Any) -> np.ndarray:
    """The 1-D per-feature strengths inside a public value."""
    if isinstance(values, dict):
        if any(isinstance(v, dict) for v in values.values()):
            raise ValueError("got the values of hyperparameters by name (as best_params_ "
                             f"holds them, {list(values)}): pass name= to pick one")
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


def _is_pipeline(estimator: Any) -> bool:
    return hasattr(estimator, "steps") and hasattr(estimator, "named_steps")


def feature_names_out(preprocessing: Any, input_features: Sequence[str] | None = None) -> list[str]:
    """The names of the columns a fitted preprocessing ``Pipeline`` hands to the net.

    Each step's ``get_feature_names_out`` is called in turn (``"passthrough"`` and
    ``None`` steps keep the names), so that a step that cannot give names is named.

    Parameters
    ----------
    preprocessing : fitted Pipeline
        Typically ``tuner.best_estimator_[:-1]``.
    input_features : sequence of str, optional
        Names of the raw columns; defaults to what the first step recorded
        (``feature_names_in_``, else ``x0, x1, ...``).

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        Naming the first step that cannot give its output names (no
        ``get_feature_names_out``, e.g. a ``FunctionTransformer`` without
        ``feature_names_out``, or one that fails), and the way out: ``feature_names=``.
    """
    names = None if input_features is None else np.asarray(list(input_features), dtype=object)
    for step_name, step in preprocessing.steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        method = getattr(step, "get_feature_names_out", None)
        what = f"preprocessing step {step_name!r} ({type(step).__name__})"
        if method is None:
            raise ValueError(f"{what} has no get_feature_names_out, so the net's input "
                             "columns have no names: pass feature_names= (one per column "
                             "the net takes), or give the step names (e.g. "
                             "FunctionTransformer(feature_names_out=...))")
        try:
            names = method(names)
        except Exception as exc:  # sklearn raises several types here
            raise ValueError(f"{what} cannot give its output feature names "
                             f"({type(exc).__name__}: {exc}): pass feature_names= (one per "
                             "column the net takes)") from exc
    return [str(n) for n in names] if names is not None else []


def _default_names(source: Any) -> list[str] | None:
    """The names of the net's input columns a fitted tuner can give, else ``None``."""
    if not _is_tuner(source):
        return None
    best = getattr(source, "best_estimator_", None)
    if _is_pipeline(best):
        return feature_names_out(best[:-1])
    if _is_pipeline(getattr(source, "estimator", None)):
        raise ValueError("the estimator is a Pipeline and the tuner has no best_estimator_ "
                         "(refit=False), whose fitted preprocessing would name the net's "
                         "input columns: pass feature_names=, or fit with refit=True")
    names = getattr(source, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def feature_strengths(source: Any, feature_names: Sequence[str] | None = None, *,
                      name: str | None = None) -> pd.Series:
    """The learned per-feature strengths, indexed by the name of the feature.

    Parameters
    ----------
    source : fitted tuner, dict or array-like
        A fitted :class:`~sgld_tuner.SGLDHyperTuner` with a per-feature kind (e.g.
        ``PerWeightL1()`` on an MLP), a dict of public values by hyperparameter name
        (with ``name``), the public value of such a kind (``{param_name: strengths}``),
        or the 1-D strengths.
    feature_names : sequence of str, optional
        One name per column the net takes. Defaults, for a tuner whose estimator is a
        ``Pipeline``, to the names its fitted preprocessing gives
        (``best_estimator_[:-1]``, see :func:`feature_names_out`: e.g. one per one-hot
        column); for a bare net, to ``feature_names_in_`` (a DataFrame's columns); else
        ``x0, x1, ...``.
    name : str, optional
        Which hyperparameter to read (see :func:`learned_values`).

    Returns
    -------
    pandas.Series
        float64 strengths in the order of the net's input columns, index named
        ``"feature"``, Series named after the hyperparameter (``"strength"`` when not
        known). ``.sort_values()`` puts the most relevant (smallest penalty) first.

    Raises
    ------
    ValueError
        If the values are not one strength per feature, ``feature_names`` has the
        wrong length, or a Pipeline's preprocessing cannot name its output columns.
    """
    name = _resolve_name(source, name)
    strengths = _feature_vector(learned_values(source, name))
    if feature_names is None:
        feature_names = _default_names(source)
    if feature_names is None:
        feature_names = [f"x{i}" for i in range(len(strengths))]
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != len(strengths):
        raise ValueError(f"feature_names has {len(feature_names)} entries for "
                         f"{len(strengths)} learned strengths (one per column the net "
                         "takes, after any preprocessing)")
    label = name if name is not None else "strength"
    return pd.Series(strengths, index=pd.Index(feature_names, name="feature"), name=label)


def feature_relevance(values_or_tuner: Any, feature_names: Sequence[str] | None = None, *,
                      name: str | None = None) -> pd.DataFrame:
    """Rank input features by their learned per-feature penalty strengths.

    Parameters
    ----------
    values_or_tuner : fitted tuner, dict or array-like
        As for :func:`feature_strengths`.
    feature_names : sequence of str, optional
        As for :func:`feature_strengths` (a Pipeline's fitted preprocessing names the
        columns, else ``feature_names_in_``, else ``x0, x1, ...``).
    name : str, optional
        Which hyperparameter to read (see :func:`learned_values`).

    Returns
    -------
    pandas.DataFrame
        Columns ``feature``, ``strength`` and ``rank``, sorted by rank: rank 1 is the most
        relevant feature, i.e. the smallest penalty (ties share the lowest rank). For the
        strengths as a Series indexed by feature name, in input order, use
        :func:`feature_strengths` (or ``table.set_index("feature")["strength"]``).

    Raises
    ------
    ValueError
        As :func:`feature_strengths`.
    """
    strengths = feature_strengths(values_or_tuner, feature_names, name=name)
    table = pd.DataFrame({"feature": list(strengths.index),
                          "strength": strengths.to_numpy()})
    table["rank"] = table["strength"].rank(method="min").astype(int)
    return table.sort_values(["rank", "feature"], kind="stable").reset_index(drop=True)
