"""Metadata routing as scikit-learn's searches do it: ``fit``'s parameters go to the
refit's ``fit`` and, sliced to each fold's rows, to the scorers."""
from __future__ import annotations

import warnings
from inspect import signature

from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.utils.metadata_routing import (MetadataRouter, MethodMapping, _routing_enabled,
                                            process_routing)
from sklearn.utils.validation import _check_method_params

from .scoring import make_scorers


def metadata_router(owner, estimator, scoring) -> MetadataRouter:
    """``fit`` -> the estimator's ``fit`` and the scorers' ``score``; ``score`` -> the
    scorers' ``score``."""
    scorers, _ = make_scorers(estimator, scoring)
    router = MetadataRouter(owner=owner)
    router.add(estimator=estimator,
               method_mapping=MethodMapping().add(caller="fit", callee="fit"))
    router.add(scorer=_MultimetricScorer(scorers=scorers, raise_exc=True),
               method_mapping=MethodMapping().add(caller="fit", callee="score")
               .add(caller="score", callee="score"))
    return router


def _takes_sample_weight(scorer) -> bool:
    if hasattr(scorer, "_accept_sample_weight"):
        return scorer._accept_sample_weight()
    return "sample_weight" in signature(scorer).parameters


def route_fit_params(owner, fit_params: dict, scorers: dict, multimetric: bool):
    """``(the refit's fit parameters, the scorers' parameters)``.

    With metadata routing enabled, as requested by the estimator and the scorers.
    Without, as ``GridSearchCV`` does: everything to the refit's ``fit``, and
    ``sample_weight`` also to the scorers that take it (a warning for those that do not).
    The scorers' parameters carry ``"_accepted"``: the metrics they are for.
    """
    if _routing_enabled():
        routed = process_routing(owner, "fit", **fit_params)
        return dict(routed.estimator.fit), {**routed.scorer.score, "_accepted": None}
    if fit_params.get("sample_weight") is None:
        return fit_params, {}
    accepted = []
    for name, scorer in scorers.items():
        if _takes_sample_weight(scorer):
            accepted.append(name)
        else:
            shown = f"{name}={scorer}" if multimetric else f"{scorer}"
            warnings.warn(f"The scoring {shown} does not support sample_weight, which may "
                          f"lead to statistically incorrect results when fitting {owner} "
                          "with sample_weight.", UserWarning, stacklevel=4)
    if not accepted:
        return fit_params, {}
    return fit_params, {"sample_weight": fit_params["sample_weight"], "_accepted": accepted}


def fold_score_params(X, scorers: dict, score_params: dict, splits: list) -> list | None:
    """Per fold, ``{"test" | "train": {metric: kwargs}}``: the scorers' parameters sliced
    to the fold's validation and training rows (None: no parameters)."""
    params = {k: v for k, v in score_params.items() if k != "_accepted"}
    if not params:
        return None
    accepted = score_params.get("_accepted")
    out = []
    for train, val in splits:
        fold = {}
        for part, rows in (("test", val), ("train", train)):
            sliced = _check_method_params(X, params=params, indices=rows)
            if accepted is None:  # routing: each scorer takes what it requested
                routed = process_routing(_MultimetricScorer(scorers=scorers, raise_exc=True),
                                         "score", **sliced)
                fold[part] = {m: dict(routed[m].score) for m in scorers}
            else:
                fold[part] = {m: sliced if m in accepted else {} for m in scorers}
        out.append(fold)
    return out
