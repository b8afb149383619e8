"""SGLDHyperTuner against GridSearchCV, random search, successive halving and Optuna.

For each dataset and regime, and each seed, every search gets

* the same net (``sgld_tuner.demo.MLP``, inputs -> 128 hidden -> classes or 1), trained
  by plain SGD at ``lr=0.1`` for about ``STEPS`` minibatch steps;
* the same split: a clean test set held out first, then one fixed train/validation
  split of the rest (``PredefinedSplit``), so every method scores candidates on the
  same validation rows and is refit on the same training rows;
* the same measure of cost: CPU seconds of this process with one torch thread (wall
  seconds beside them), since the machine is shared.

What is tuned:

* GridSearchCV (L1): one global L1 strength ``lambda_l1`` (6 values, 0 included);
* GridSearchCV (lr x wd): the net's ``lr`` x SGD ``weight_decay`` (3 x 4);
* RandomizedSearchCV, HalvingRandomSearchCV (epochs as the resource) and OptunaSearchCV
  (TPE, as many trials as the grid): ``lambda_l1`` (log-uniform) and ``lr``;
* SGLDHyperTuner with its defaults (the race of the net's ``lr`` inside the fit, and
  L1 strengths per input feature by hypergradient in every lane, started at
  ``init="auto"``, tracked hypergradient); the same tuner with the race switched off
  (``schedule=PlainSearch()``: the net's lr as given); and their **no-search control**:
  ``n_outer=1`` (nothing raced or searched, same start values, same seeds), so the table
  shows what the search itself adds;
* the hybrid many users will run: GridSearchCV over ``estimator__lr`` around the tuner;
* "untuned": the same net with no penalty; and, for classification, an L1 logistic
  regression over C (what a sparse linear model reaches).

Regimes: the full dataset, 150 training rows, 40% corrupted training labels
(classification: each chosen label replaced by a different random class; diabetes: the
chosen targets permuted among themselves), and irrelevant features (Gaussian columns
added, few rows), where one global strength cannot do what per-feature strengths can.
The test set is always clean; validation rows carry the same corruption as training rows.

Usage::

    python benchmarks/compare_search.py                    # 5 seeds, all regimes
    SGLD_TUNER_SMOKE=1 python benchmarks/compare_search.py # 1 seed, tiny nets, < 1 min
    python benchmarks/compare_search.py --out-dir /tmp/x --seeds 1

Writes ``compare_search.{json,md,png}`` (``compare_search_smoke.*`` in smoke mode) to
``benchmarks/results`` or ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch
from scipy.stats import loguniform
from skorch import NeuralNetRegressor
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import (GridSearchCV, PredefinedSplit, RandomizedSearchCV,
                                     train_test_split)
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results  # noqa: E402

from sgld_tuner import OuterSettings, SGLDHyperTuner  # noqa: E402
from sgld_tuner.demo import MLP, L1NetClassifier, L1NetRegressor, make_net  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1  # noqa: E402

SMOKE = is_smoke()
GRID = [0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2]
LRS = [0.03, 0.1, 0.3]
WDS = [0.0, 1e-4, 1e-3, 1e-2]
BATCH = 64
# SGD steps per training run. Fixing steps rather than epochs keeps the 150-row regime
# from being under-trained simply because an epoch there is two minibatches.
STEPS = 40 if SMOKE else int(os.environ.get("COMPARE_STEPS", 300))
TEST_FRACTION = 0.3
VAL_FRACTION = 1 / 3
CORRUPT = 0.4


# --------------------------------------------------------------------------- data
def _load(name):
    """Features scaled to unit range/variance; y int labels or a standardised (n, 1) float."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(np.float32), y, True
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
        return X.astype(np.float32), y, True
    X, y = load_diabetes(return_X_y=True)
    return X.astype(np.float32), y.astype(np.float32), False


def _count(regime, what):
    """The number before ``what`` in a regime name ("150 rows" -> 150), else 0."""
    for part in regime.split(","):
        words = part.split()
        if len(words) >= 2 and part.strip().endswith(what):
            return int(words[0].lstrip("+"))
    return 0


def make_split(dataset, regime, seed):
    """Train+validation rows, the PredefinedSplit over them, and the clean test rows."""
    X, y, classification = _load(dataset)
    rng = np.random.RandomState(seed)
    noise_columns = _count(regime, "noise columns")
    if noise_columns:  # irrelevant features: Gaussian columns the target never sees
        X = np.hstack([X, rng.randn(len(X), noise_columns).astype(np.float32)])
    strat = y if classification else None
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=strat, random_state=seed)
    n_rows = _count(regime, "rows")
    if n_rows:
        X_rest, _, y_rest, _ = train_test_split(
            X_rest, y_rest, train_size=n_rows, stratify=y_rest if classification else None,
            random_state=seed)
    y_rest = y_rest.copy()
    if regime.startswith("40%"):
        rows = rng.choice(len(y_rest), size=int(round(CORRUPT * len(y_rest))), replace=False)
        if classification:
            n_classes = int(y.max()) + 1
            # shift by 1..C-1 so that every chosen label really changes
            y_rest[rows] = (y_rest[rows] + rng.randint(1, n_classes, size=len(rows))) % n_classes
        else:
            y_rest[rows] = y_rest[rng.permutation(rows)]
    if dataset != "digits" or noise_columns:
        scaler = StandardScaler().fit(X_rest)
        X_rest = scaler.transform(X_rest).astype(np.float32)
        X_test = scaler.transform(X_test).astype(np.float32)
    if not classification:
        mu, sd = y_rest.mean(), y_rest.std()
        y_rest = ((y_rest - mu) / sd).astype(np.float32).reshape(-1, 1)
        y_test = ((y_test - mu) / sd).astype(np.float32).reshape(-1, 1)
    fold = np.full(len(y_rest), -1)
    val = rng.choice(len(y_rest), size=int(round(VAL_FRACTION * len(y_rest))), replace=False)
    fold[val] = 0
    return X_rest, y_rest, X_test, y_test, PredefinedSplit(fold), classification


def make_estimator(classification, n_in, n_out, n_rows, l1=True):
    """The one net every method uses; ``max_epochs`` gives about ``STEPS`` SGD steps."""
    hidden = 16 if SMOKE else 128
    epochs = int(np.clip(math.ceil(STEPS / math.ceil(n_rows / BATCH)), 2, 400))
    common = dict(module__n_in=n_in, module__hidden=hidden, module__n_out=n_out)
    if classification:
        if l1:
            return make_net(L1NetClassifier, max_epochs=epochs, **common)
        return make_net(max_epochs=epochs, **common)
    net_class = L1NetRegressor if l1 else NeuralNetRegressor
    return net_class(MLP, criterion=torch.nn.MSELoss, optimizer=torch.optim.SGD, lr=0.1,
                     optimizer__momentum=0.0, max_epochs=epochs, batch_size=BATCH,
                     train_split=None, verbose=0, **common)


# --------------------------------------------------------------------------- searches
def _timed(fn):
    """``fn()``, its wall seconds and its CPU seconds (this process, one torch thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


class Context:
    """One (dataset, regime, seed): data, cv, net factory, and the grid's CPU budget."""

    def __init__(self, dataset, regime, seed):
        (self.X, self.y, self.X_test, self.y_test, self.cv,
         self.classification) = make_split(dataset, regime, seed)
        self.dataset, self.regime, self.seed = dataset, regime, seed
        self.n_in = self.X.shape[1]
        self.n_out = int(np.max(self.y)) + 1 if self.classification else 1
        self.n_fit_rows = int((self.cv.test_fold == -1).sum())
        self.budget_cpu = None

    def net(self, l1=False, n_rows=None):
        return make_estimator(self.classification, self.n_in, self.n_out,
                              n_rows or self.n_fit_rows, l1=l1)

    def tuner(self, n_outer, cv=None):
        """SGLDHyperTuner with its defaults; a persistent chain of about one training run."""
        n_outer = n_outer or max(2, math.ceil(STEPS / 10))
        return SGLDHyperTuner(self.net(), {"l1": PerWeightL1()}, n_outer=n_outer,
                              cv=self.cv if cv is None else cv, random_state=self.seed,
                              outer=OuterSettings(eval_every=max(1, n_outer // 10)))


def m_untuned(ctx):
    net = ctx.net(n_rows=len(ctx.y))
    return net, (lambda: net.fit(ctx.X, ctx.y)), 1, 0


def m_grid_l1(ctx):
    grid = GridSearchCV(ctx.net(l1=True), {"lambda_l1": GRID}, cv=ctx.cv, error_score=np.nan)
    return grid, (lambda: grid.fit(ctx.X, ctx.y)), len(GRID) + 1, 1


def m_grid_lr_wd(ctx):
    grid = GridSearchCV(ctx.net(), {"lr": LRS, "optimizer__weight_decay": WDS}, cv=ctx.cv,
                        error_score=np.nan)
    return grid, (lambda: grid.fit(ctx.X, ctx.y)), len(LRS) * len(WDS) + 1, 2


def m_random(ctx):
    rand = RandomizedSearchCV(ctx.net(l1=True), {"lambda_l1": loguniform(1e-6, 1e-1),
                                                 "lr": loguniform(0.03, 0.3)},
                              n_iter=len(GRID), cv=ctx.cv, random_state=ctx.seed,
                              error_score=np.nan)
    return rand, (lambda: rand.fit(ctx.X, ctx.y)), len(GRID) + 1, 2


def m_halving(ctx):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    epochs = ctx.net(l1=True).max_epochs
    halving = HalvingRandomSearchCV(
        ctx.net(l1=True), {"lambda_l1": loguniform(1e-6, 1e-1), "lr": loguniform(0.03, 0.3)},
        resource="max_epochs", max_resources=epochs, min_resources=max(1, epochs // 9),
        factor=3, cv=ctx.cv, random_state=ctx.seed, error_score=np.nan)
    return halving, (lambda: halving.fit(ctx.X, ctx.y)), float("nan"), 2


def m_optuna(ctx):
    search = _optuna_search(ctx.net(l1=True), ctx.cv, ctx.seed)
    if search is None:
        return None
    return search, (lambda: search.fit(ctx.X, ctx.y)), float("nan"), 2


def m_sgld(ctx):
    tuner = ctx.tuner(None)
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def m_sgld_warm_up(ctx):
    """The tuner whose fold chains first train for the net's own budget (warm_up)."""
    tuner = ctx.tuner(None).set_params(sampler__warm_up="epochs")
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def m_sgld_half_ramp(ctx):
    """The tuner whose outer-step ramp covers half its iterations at most (the default
    ramps over one training budget of the net, here the whole search)."""
    tuner = ctx.tuner(None)
    tuner.set_params(outer__lr_ramp=max(1, tuner.n_outer // 2))
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def m_sgld_race_off(ctx):
    """The tuner with the race of the net's lr switched off (``schedule=PlainSearch()``):
    one lane at the net's own lr, the behaviour before the race was the default."""
    from sgld_tuner.search import PlainSearch

    tuner = ctx.tuner(None).set_params(schedule=PlainSearch())
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def m_sgld_control(ctx):
    tuner = ctx.tuner(1)
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def m_sgld_n_outer_default(ctx):
    """The tuner at its default ``n_outer=50``: chains of about 1.7 training runs."""
    tuner = ctx.tuner(50)
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), ctx.cv.get_n_splits() + 1, None


def _own_cv(ctx, n_outer):
    """The tuner with its default ``cv=5`` over the training+validation rows instead
    of the shared split (its net's epochs set for a fold's 4/5 of the rows)."""
    n_rows = len(ctx.y) * 4 // 5
    tuner = SGLDHyperTuner(ctx.net(n_rows=n_rows), {"l1": PerWeightL1()}, n_outer=n_outer,
                           cv=5, random_state=ctx.seed,
                           outer=OuterSettings(eval_every=max(1, n_outer // 10)))
    return tuner, (lambda: tuner.fit(ctx.X, ctx.y)), 6, None


def m_sgld_own_cv(ctx):
    return _own_cv(ctx, max(2, math.ceil(STEPS / 10)))


def m_sgld_own_cv_control(ctx):
    return _own_cv(ctx, 1)


def m_hybrid(ctx):
    """What most users will run: GridSearchCV over the net's lr around the tuner."""
    hybrid = GridSearchCV(ctx.tuner(None, cv=3), {"estimator__lr": LRS}, cv=ctx.cv,
                          error_score=np.nan)
    return hybrid, (lambda: hybrid.fit(ctx.X, ctx.y)), len(LRS) * 4 + 1, None


def m_hybrid_half(ctx):
    """The hybrid with half the tuner's chain per lr (n_outer halved): the budget at
    which its CPU comes to about the lr x wd grid's."""
    n_outer = max(2, math.ceil(STEPS / 20))
    hybrid = GridSearchCV(ctx.tuner(n_outer, cv=3), {"estimator__lr": LRS}, cv=ctx.cv,
                          error_score=np.nan)
    return hybrid, (lambda: hybrid.fit(ctx.X, ctx.y)), len(LRS) * 4 + 1, None


def m_hybrid_lean(ctx):
    """The hybrid with half chains and two inner folds: about a third of the full
    hybrid's chain steps."""
    n_outer = max(2, math.ceil(STEPS / 20))
    hybrid = GridSearchCV(ctx.tuner(n_outer, cv=2), {"estimator__lr": LRS}, cv=ctx.cv,
                          error_score=np.nan)
    return hybrid, (lambda: hybrid.fit(ctx.X, ctx.y)), len(LRS) * 3 + 1, None


def m_l1_logreg(ctx):
    """An L1 logistic regression over C: what a sparse linear model reaches."""
    from sklearn.linear_model import LogisticRegression

    if not ctx.classification:
        return None
    grid = GridSearchCV(LogisticRegression(l1_ratio=1.0, solver="saga", max_iter=3000),
                        {"C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, cv=ctx.cv)
    return grid, (lambda: grid.fit(ctx.X, ctx.y.ravel())), 7, ctx.n_in


#: methods run only when named in --methods (one-off ablations, results files of their own)
ABLATIONS = ("SGLDHyperTuner outer_warmup=n_outer/2",
             "SGLDHyperTuner n_outer=50",
             "SGLDHyperTuner cv=5", "SGLDHyperTuner cv=5 control (n_outer=1)")
#: each tuner row's no-search control (same settings, n_outer=1); "SGLDHyperTuner n_outer=50"
#: shares the default's, which is the same run
CONTROLS = {"SGLDHyperTuner": "SGLDHyperTuner control (n_outer=1)",
            "SGLDHyperTuner race off (PlainSearch())": "SGLDHyperTuner control (n_outer=1)",
            "SGLDHyperTuner n_outer=50": "SGLDHyperTuner control (n_outer=1)",
            "SGLDHyperTuner cv=5": "SGLDHyperTuner cv=5 control (n_outer=1)"}
METHODS = {
    "untuned": m_untuned,
    "GridSearchCV (L1)": m_grid_l1,
    "GridSearchCV (lr x wd)": m_grid_lr_wd,
    "RandomizedSearchCV": m_random,
    "HalvingRandomSearchCV": m_halving,
    "OptunaSearchCV (TPE)": m_optuna,
    "SGLDHyperTuner": m_sgld,
    "SGLDHyperTuner control (n_outer=1)": m_sgld_control,
    "SGLDHyperTuner race off (PlainSearch())": m_sgld_race_off,
    "SGLDHyperTuner warm_up=epochs": m_sgld_warm_up,
    "SGLDHyperTuner outer_warmup=n_outer/2": m_sgld_half_ramp,
    "SGLDHyperTuner n_outer=50": m_sgld_n_outer_default,
    "SGLDHyperTuner cv=5": m_sgld_own_cv,
    "SGLDHyperTuner cv=5 control (n_outer=1)": m_sgld_own_cv_control,
    "hybrid: GridSearchCV(lr) x SGLDHyperTuner": m_hybrid,
    "hybrid: GridSearchCV(lr) x SGLDHyperTuner (half chains)": m_hybrid_half,
    "hybrid: GridSearchCV(lr) x SGLDHyperTuner (half chains; cv=2)": m_hybrid_lean,
    "L1 logistic regression": m_l1_logreg,
}


def _n_hyper(search):
    params = getattr(search, "best_params_", {}).get("l1")
    return int(sum(np.size(v) for v in params.values())) if isinstance(params, dict) else 1


def run_one(dataset, regime, seed, methods):
    """All methods on one (dataset, regime, seed); returns one record per method."""
    ctx = Context(dataset, regime, seed)
    records = []
    for name in methods:
        built = METHODS[name](ctx)
        if built is None:
            continue
        search, fit, n_fits, n_hyper = built
        torch.manual_seed(seed)
        _, wall, cpu = _timed(fit)
        try:
            score = float(search.score(ctx.X_test, ctx.y_test))
        except ValueError:  # a refit that diverged predicts NaN: the row stays, as NaN
            score = float("nan")
        records.append({"dataset": dataset, "regime": regime, "seed": seed, "method": name,
                        "test_score": score, "wall_s": wall, "cpu_s": cpu,
                        "model_fits": n_fits,
                        "n_hyperparams": _n_hyper(search) if n_hyper is None else n_hyper,
                        "anytime": _anytime(search) if seed == 0 else None})
    return records


def _anytime(search):
    """The search's anytime curve (seconds, best cv score so far), or None for a method
    without ``cv_results_`` (the untuned net)."""
    from sgld_tuner.plotting import anytime_curve

    try:
        seconds, best = anytime_curve(search)
    except (TypeError, KeyError):
        return None
    return [seconds.tolist(), [float(b) if np.isfinite(b) else None for b in best]]


def _optuna_search(estimator, cv, seed):
    """OptunaSearchCV with TPE over (lambda_l1, lr), as many trials as the grid has points."""
    try:
        import optuna
        from optuna_integration import OptunaSearchCV
    except ImportError:
        print("optuna / optuna-integration not installed: no Optuna row", file=sys.stderr)
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: see above
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    dist = optuna.distributions
    space = {"lambda_l1": dist.FloatDistribution(1e-6, 1e-1, log=True),
             "lr": dist.FloatDistribution(0.03, 0.3, log=True)}
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    return OptunaSearchCV(clone(estimator), space, cv=cv, n_trials=len(GRID),
                          study=study, random_state=seed, error_score=np.nan, verbose=0)


# --------------------------------------------------------------------------- report
def summarise(df):
    """Mean and std over seeds per (dataset, regime, method), in run order; every method
    keeps its row, winning or not."""
    return (df.groupby(["dataset", "regime", "method"], sort=False)
              .agg(test_mean=("test_score", "mean"), test_std=("test_score", "std"),
                   cpu_s=("cpu_s", "mean"), wall_s=("wall_s", "mean"),
                   model_fits=("model_fits", "mean"),
                   n_hyperparams=("n_hyperparams", "max"), seeds=("seed", "nunique"))
              .reset_index())


def gains_over_control(df):
    """Per (dataset, regime, tuner row of ``CONTROLS`` that ran with its control): the
    test score minus the control's on the same seed; mean, std, seeds won."""
    keys = ["dataset", "regime", "seed"]
    parts = []
    for tuned_name, control_name in CONTROLS.items():
        tuned = df[df.method == tuned_name].set_index(keys)
        ctrl = df[df.method == control_name].set_index(keys)
        if len(tuned) and len(ctrl):
            gain = (tuned.test_score - ctrl.test_score).dropna().rename("gain").reset_index()
            parts.append(gain.assign(method=tuned_name))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts).groupby(["dataset", "regime", "method"], sort=False).gain.agg(
        ["mean", "std", lambda g: f"{int((g > 0).sum())}/{len(g)}"])


def to_markdown(summary, gains=None):
    lines = ["| dataset | regime | method | test score (mean ± std) | CPU s | wall s | model fits "
             "| # hyperparams | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        std = "" if not np.isfinite(r.test_std) else f" ± {r.test_std:.4f}"
        lines.append(f"| {r.dataset} | {r.regime} | {r.method} | {r.test_mean:.4f}{std} | "
                     f"{r.cpu_s:.1f} | {r.wall_s:.1f} | {r.model_fits:.1f} | {r.n_hyperparams} "
                     f"| {r.seeds} |")
    if gains is not None and len(gains):
        lines += ["", "What the search adds: each tuner row minus its no-search control "
                  "(same seeds), mean ± std over seeds, seeds won:", "",
                  "| dataset | regime | tuner | gain | seeds won |", "|---|---|---|---|---|"]
        for (dataset, regime, method), r in gains.iterrows():
            lines.append(f"| {dataset} | {regime} | {method} | {r.iloc[0]:+.4f} ± "
                         f"{r.iloc[1]:.4f} | {r.iloc[2]} |")
    return "\n".join(lines)


def plot(summary):
    """Best test score against CPU seconds, one panel per (dataset, regime); the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = list(summary.groupby(["dataset", "regime"], sort=False))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    markers = dict(zip(summary["method"].drop_duplicates(), "osD^vP*XhH<>pd8"))
    for ax, ((dataset, regime), sub) in zip(axes.ravel(), panels):
        for r in sub.itertuples():
            ax.errorbar(r.cpu_s, r.test_mean, yerr=0 if not np.isfinite(r.test_std) else r.test_std,
                        fmt=markers[r.method], capsize=3, label=r.method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        ax.set_title(f"{dataset}, {regime}", fontsize=9)
        ax.set_xlabel("CPU s, one thread (mean over seeds)", fontsize=8)
        ax.set_ylabel("test accuracy" if dataset != "diabetes" else "test R^2", fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.subplots_adjust(bottom=0.12)
    return fig


def plot_anytime_panels(df):
    """Seed 0's anytime curves (best cv score so far against the seconds its candidates
    took, from ``cv_results_``), one panel per (dataset, regime); the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "anytime" not in df:
        return None
    runs = df[df["anytime"].notna()]
    panels = list(runs.groupby(["dataset", "regime"], sort=False))
    cols = 3
    rows = math.ceil((len(panels) + 1) / cols)  # one cell more: the legend's
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, ((dataset, regime), sub) in zip(axes.ravel(), panels):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more methods than 10 colours
        for r in sub.itertuples():
            seconds, best = r.anytime
            ax.step(seconds, [np.nan if b is None else b for b in best], where="post",
                    label=r.method)
        ax.set_xscale("log")
        ax.set_title(f"{dataset}, {regime} (seed 0)", fontsize=9)
        ax.set_xlabel("seconds of fit + score (cv_results_)", fontsize=8)
        ax.set_ylabel("best cv score so far", fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    axes.ravel()[-1].legend(handles, labels, loc="center", fontsize=7)
    return fig


def _write_report(df, meta, stem):
    summary = summarise(df)
    table = to_markdown(summary, gains_over_control(df))
    print(table)
    text = (f"# Search methods compared ({'smoke' if meta['smoke'] else 'full'} run)\n\n"
            f"Test score: accuracy (digits, breast_cancer) or R^2 on standardised y "
            f"(diabetes). {meta['seeds']} seed(s); times and fits are means per search (CPU: "
            f"this process, one torch thread); about {meta['steps_per_training_run']} SGD "
            f"steps per training run. Total {meta['total_wall_s']:.0f} s wall "
            f"({meta['total_cpu_s']:.0f} s CPU), load average at end "
            f"{meta['load_average_at_end'][0]:.1f} on {meta['cpu_count']} cores.\n\n{table}\n")
    payload = {"meta": meta, "runs": df.to_dict(orient="records"),
               "summary": summary.to_dict(orient="records")}
    figures = {"": plot(summary)}
    anytime = plot_anytime_panels(df)
    if anytime is not None:
        figures["_anytime"] = anytime
    write_results(stem, payload, text, figures=figures)
    return summary


def _rebuild(path):
    with open(path) as fh:
        data = json.load(fh)
    df = pd.DataFrame.from_records(data["runs"])
    _write_report(df, data["meta"], os.path.splitext(os.path.abspath(path))[0])
    return df


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=1 if SMOKE else 5)
    parser.add_argument("--datasets", default="digits,breast_cancer,diabetes")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m not in ABLATIONS),
                        help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--from-json", help="rebuild the .md table and .png plot from a "
                        "previous run's JSON instead of running anything")
    args = parse_args(parser, argv)
    if args.from_json:
        return _rebuild(args.from_json)
    torch.set_num_threads(1)  # shared 2-core machine; tiny tensors gain nothing from more
    datasets = args.datasets.split(",")
    regimes = {"digits": ["full", "150 rows", "40% flipped labels",
                          "+200 noise columns, 150 rows"],
               "breast_cancer": ["full", "150 rows", "40% flipped labels",
                                 "+100 noise columns, 100 rows"],
               "diabetes": ["full", "150 rows", "40% permuted targets"]}
    if SMOKE:  # one regime per dataset keeps the smoke run well under a minute
        regimes = {d: ["150 rows"] for d in regimes}
    started, cpu_started = time.perf_counter(), time.process_time()
    records = []
    for dataset in datasets:
        for regime in regimes[dataset]:
            for seed in range(args.seeds):
                with warnings.catch_warnings():
                    # failed candidates (e.g. lr too large on diabetes -> NaN) are scored
                    # error_score=nan and counted; their tracebacks would bury the tables
                    warnings.simplefilter("ignore")
                    records += run_one(dataset, regime, seed, args.methods.split(","))
                print(f"[{time.perf_counter() - started:6.0f}s] {dataset} / {regime} / seed {seed}",
                      flush=True)
    total = time.perf_counter() - started
    # CPU seconds of this process: what the wall time would be on an idle core, since
    # everything runs on one thread (other users' load inflates only the wall time).
    cpu_total = time.process_time() - cpu_started
    df = pd.DataFrame.from_records(records)
    meta = {"smoke": SMOKE, "seeds": args.seeds, "steps_per_training_run": STEPS,
            "grid": GRID, "lrs": LRS, "wds": WDS, "total_wall_s": total,
            "total_cpu_s": cpu_total, "load_average_at_end": os.getloadavg(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    stem = result_stem("compare_search", args.out_dir)
    _write_report(df, meta, stem)
    print(f"total {total:.0f} s wall, {cpu_total:.0f} s CPU; wrote {stem}.json/.md/.png")
    return df


if __name__ == "__main__":
    main()
