"""End-of-search diagnostics: the warnings ``fit`` gives when a search or its refit
cannot be taken at face value."""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.utils import _safe_indexing
from torch.utils.data import DataLoader

from ..core import _tree
from ..core.engine import warn_at_caller
from .scoring import scores_on


class SearchInterrupted(RuntimeWarning):
    """The search ended early (KeyboardInterrupt, timeout or divergence); results so far are kept."""


class UnmovedSearchWarning(UserWarning):
    """The search ended with its hyperparameters where they started."""


class DivergenceWarning(RuntimeWarning):
    """A non-finite loss or hypergradient; the step was rolled back and shrunk."""


class OverfittingWarning(UserWarning):
    """The chains fit their training rows ever closer while the validation loss rises."""


class RowOrderWarning(UserWarning):
    """The net trains on its rows in the order given, and they come sorted by label: it
    (and the search's chains, which take their minibatches as the net does) trains on
    one class at a time."""


class UndertrainedWarning(UserWarning):
    """The refit net, trained for the net's own budget, scores below the longer-trained
    chains the search scored: the net's ``max_epochs`` or ``lr`` leaves it undertrained."""


# Validation loss at the end of the search over its start, above which the chains are
# flagged: as overfitting when their training loss fell meanwhile, else as not training.
OVERFIT_RISE, DEGRADED_RISE = 1.2, 1.5


def warn_if_chains_degraded(records) -> None:
    """A chain can go bad without a NaN, and the validation loss then climbs; say so,
    since the best point is then arbitrary, with advice that fits the cause: a training
    loss that fell meanwhile means overfitting (the chains have trained longer than the
    refit will), one that did not means chains that do not train."""
    kept = [r for r in records if not r.get("diverged")]
    if len(kept) < 4:
        return

    def trend(key):
        return np.mean([r[key] for r in kept[:2]]), np.mean([r[key] for r in kept[-2:]])

    (start, end), (train_start, train_end) = trend("outer_loss"), trend("inner_loss")
    if not (math.isfinite(start) and math.isfinite(end)):
        return
    fitting = math.isfinite(train_end) and train_end < train_start
    if fitting and end > OVERFIT_RISE * start + 1e-8:
        warn_at_caller(
            f"the validation loss rose from {start:.4g} to {end:.4g} while the training "
            f"loss fell from {train_start:.4g} to {train_end:.4g}: the chains overfit "
            "their training rows, and later trajectory points score nets trained longer "
            "than the refit. Shorten the chains (n_outer, burn_in + n_samples), start "
            "the penalties stronger, or validate on more rows", OverfittingWarning)
    elif not fitting and end > DEGRADED_RISE * start + 1e-8:
        warn_at_caller(
            f"the validation loss rose from {start:.4g} to {end:.4g} during the search "
            "without the training loss falling: the chains are likely not training "
            "(lower temperature, noise_scale or inner_lr); the selected point may be "
            "arbitrary", DivergenceWarning)


UNMOVED_RTOL = 0.01  # a search whose values all moved less than this ended where it began
UNMOVED_MIN_ITER = 5


def warn_if_unmoved(start_lam, lam, n_iter: int) -> None:
    """Warn when a search of several iterations left every hyperparameter (within 1%)
    where it started: the refit is then the untuned net, whatever the trajectory says."""
    if n_iter < UNMOVED_MIN_ITER:
        return
    start = _tree.flatten(start_lam)[0]
    moved = [float(((t.detach() - s).abs() / s.abs().clamp_min(1e-12)).max())
             for t, s in zip(lam, start)]
    if max(moved, default=0.0) < UNMOVED_RTOL:
        warn_at_caller(
            f"after {n_iter} outer iterations every hyperparameter is within "
            f"{UNMOVED_RTOL:.0%} of its start (raw scale): the search did not change the "
            "model. Start where the hyperparameter acts (e.g. init='auto' for penalties) or "
            "raise outer_lr / n_outer", UnmovedSearchWarning)


# The refit's score on its own training rows below best_score_ by more than this fraction
# of the larger of the two: trained as long, a net scores at least as well on the rows it
# fit as the chains did on held-out rows.
UNDERTRAINED_GAP = 0.05


def quiet_score(estimator, X, y, scorer: dict) -> float:
    """The one metric of ``scorer`` (NaN where scoring fails: it only skips a check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next(iter(scores_on(estimator, X, y, scorer, np.nan).values()))


def _below(score: float, reference: float) -> bool:
    return score < reference - UNDERTRAINED_GAP * max(abs(reference), abs(score))


def warn_if_refit_undertrained(refit_net, X, codes, labels, scorer: dict, folds, splits,
                               best: float, chain_steps: int, net, own_lr=None) -> None:
    """Warn when the refit, trained for the net's own budget, scores on its own training
    rows below ``best`` (``best_score_``) and below the chains on theirs, while the chains
    of the best point had trained ``chain_steps``, longer than that budget: then the net
    is undertrained (its ``max_epochs`` or ``lr``), ``best_score_`` scores longer-trained
    nets than ``best_estimator_``, and no penalty the search can learn makes up for it.

    ``codes``: the rows' targets (class codes); ``labels``: codes -> what scorers see.
    ``own_lr``: the user's net's ``lr`` where a race refit another (the advice then
    names the race's pick).
    """
    budget = max(fold.budget_steps for fold in folds)
    if not math.isfinite(best) or chain_steps <= budget:
        return
    train = quiet_score(refit_net, X, labels(codes), scorer)
    if not _below(train, best):
        return
    # Like with like: the chains on their own training rows. Rows that cannot be fit
    # (noisy labels validated on clean rows) keep both low; an undertrained refit falls
    # short of chains that fit theirs.
    chains = []
    for fold, (train_rows, _) in zip(folds, splits):
        fold.load_chain()
        chains.append(quiet_score(fold.scored, _safe_indexing(X, train_rows),
                                   labels(codes[train_rows]), scorer))
    chains = float(np.mean(chains))
    if not _below(train, chains):
        return
    found = (f"best_estimator_ scores {train:.4g} on its own training rows, below the "
             f"{best:.4g} (best_score_) that the search's chains scored on held-out rows "
             f"after about {chain_steps} steps (and the {chains:.4g} they score on their "
             "own training rows)")
    advice = ("Raise the net's max_epochs or lr, or race them inside fit: schedule=Race() "
              "(the default: the lr), Race(param_grid={'lr': [...], 'max_epochs': [...]}) "
              "(the lr and the budget)")
    if own_lr is not None and not math.isclose(float(net.lr), float(own_lr)):
        advice = (f"The search refit lr={net.lr:g} (the net's own: {own_lr:g}): race the "
                  "budget with it, Race(param_grid={'lr': [...], 'max_epochs': [...]}), "
                  "or raise the net's max_epochs")
    warn_at_caller(
        f"{found}; the net's own budget (max_epochs={net.max_epochs}, "
        f"lr={net.lr:g}) is about {budget} steps per fold. The net is undertrained: "
        "best_score_ overstates best_estimator_, and the values were learned on "
        f"longer-trained nets. {advice}", UndertrainedWarning)


def warn_if_in_label_order(net, codes) -> None:
    """Before the search: warn where the net trains on rows sorted by label
    (:func:`in_label_order`), which the chains then do too."""
    if in_label_order(net, codes):
        warn_at_caller(
            "the rows come sorted by label and the net trains on them in that order "
            "(iterator_train__shuffle is not set: skorch's default), one class at a time; "
            "the search's chains take their minibatches as the net does, so its scores, "
            "its race and the refit all see that order. Set the net's "
            "iterator_train__shuffle=True (or shuffle X and y before fit, where their "
            "order means nothing)", RowOrderWarning)


def in_label_order(net, codes) -> bool:
    """Whether ``net`` trains on its rows in the order given (skorch's own ``DataLoader``
    without ``shuffle``, a sampler or a batch sampler) and the targets ``codes`` come in
    long runs of one class: fewer than half the label changes a random order of the same
    labels would have."""
    params = net.get_params()
    if params.get("iterator_train") is not DataLoader or len(codes) < 3 or any(
            params.get(f"iterator_train__{k}") for k in ("shuffle", "sampler", "batch_sampler")):
        return False
    codes = np.asarray(codes).reshape(len(codes), -1)
    if codes.shape[1] != 1 or codes.dtype.kind not in "iub":
        return False  # class codes only: a regression target changes on every row
    codes = codes[:, 0]
    _, counts = np.unique(codes, return_counts=True)
    random_changes = (len(codes) - 1) * (1.0 - np.sum((counts / len(codes)) ** 2))
    return int(np.count_nonzero(codes[1:] != codes[:-1])) < 0.5 * random_changes
