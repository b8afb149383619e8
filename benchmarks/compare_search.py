"""SGLDHyperTuner against GridSearchCV, RandomizedSearchCV and Optuna on equal terms.

For each dataset and regime, and each seed, every search gets

* the same net (``sgld_tuner.demo.MLP``, 64/30/10 inputs -> 128 hidden -> classes or 1),
  trained by plain SGD at ``lr=0.1`` for about ``STEPS`` minibatch steps;
* the same split: a clean test set held out first, then one fixed train/validation
  split of the rest (``PredefinedSplit``), so every method scores candidates on the
  same validation rows and is refit on the same training rows;
* the same time budget: the grid search runs first and its wall time becomes the
  ``timeout`` of Optuna and of SGLDHyperTuner; the random search gets as many
  candidates as the grid.

What is tuned:

* GridSearchCV: one global L1 strength ``lambda_l1`` (6 values, 0 included);
* RandomizedSearchCV and OptunaSearchCV (TPE): ``lambda_l1`` (log-uniform) and ``lr``;
* SGLDHyperTuner: one L1 strength per weight (``PerWeightL1``, ~9k hyperparameters on
  digits) by HPO-SGLD, with a persistent chain of about one training run;
* "untuned": the same net with no penalty, fit once on train + validation.

Regimes: the full dataset, 150 training rows, and 40% corrupted training labels
(classification: each chosen label replaced by a different random class; diabetes: the
chosen targets permuted among themselves). The test set is always clean, and the
validation rows carry the same corruption as the training rows, because in practice
one has no clean labels to tune on.

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

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.demo import MLP, L1NetClassifier, L1NetRegressor, make_net
from sgld_tuner.hyperparams import PerWeightL1

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
GRID = [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3]
BATCH = 64
# SGD steps per training run. Fixing steps rather than epochs keeps the 150-row regime
# from being under-trained simply because an epoch there is two minibatches.
STEPS = 40 if SMOKE else int(os.environ.get("COMPARE_STEPS", 300))
TEST_FRACTION = 0.3
VAL_FRACTION = 1 / 3
CORRUPT = 0.4
SMALL_N = 150
# Adam step on the softplus-raw strengths (about a log scale for small strengths). Adam
# moves each raw value by at most ~lr per step, so the default 0.05 over STEPS / 10 = 30
# outer iterations spans e^1.5 only, while the grid spans 2.5 decades (e^5.7); 0.2 gives
# e^6. A one-seed probe of 0.05 / 0.2 / 0.5 (diabetes full, digits 150 rows) showed no
# clear winner, so the span argument decided.
OUTER_LR = float(os.environ.get("COMPARE_OUTER_LR", 0.2))


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


def make_split(dataset, regime, seed):
    """Train+validation rows, the PredefinedSplit over them, and the clean test rows."""
    X, y, classification = _load(dataset)
    rng = np.random.RandomState(seed)
    strat = y if classification else None
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=strat, random_state=seed)
    if regime == "150 rows":
        X_rest, _, y_rest, _ = train_test_split(
            X_rest, y_rest, train_size=SMALL_N, stratify=y_rest if classification else None,
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
    if dataset != "digits":
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
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def run_one(dataset, regime, seed, methods):
    """All methods on one (dataset, regime, seed); returns one record per method."""
    X, y, X_test, y_test, cv, classification = make_split(dataset, regime, seed)
    n_in = X.shape[1]
    n_out = int(np.max(y)) + 1 if classification else 1
    n_fit_rows = int((cv.test_fold == -1).sum())
    records = []

    def record(method, search, wall, n_fits, n_hyper, extra=None):
        try:
            score = float(search.score(X_test, y_test))
        except ValueError:  # a refit that diverged predicts NaN: the row stays, as NaN
            score = float("nan")
        records.append({"dataset": dataset, "regime": regime, "seed": seed, "method": method,
                        "test_score": score, "wall_s": wall, "model_fits": n_fits,
                        "n_hyperparams": n_hyper, **(extra or {})})

    torch.manual_seed(seed)
    net = make_estimator(classification, n_in, n_out, len(y), l1=False)
    _, wall = _timed(lambda: net.fit(X, y))
    record("untuned", net, wall, 1, 0)

    l1_net = make_estimator(classification, n_in, n_out, n_fit_rows)
    torch.manual_seed(seed)
    grid = GridSearchCV(l1_net, {"lambda_l1": GRID}, cv=cv, error_score=np.nan)
    _, budget = _timed(lambda: grid.fit(X, y))
    record("GridSearchCV", grid, budget, len(GRID) + 1, 1,
           {"best": {"lambda_l1": grid.best_params_["lambda_l1"]}})

    if "random" in methods:
        torch.manual_seed(seed)
        rand = RandomizedSearchCV(l1_net, {"lambda_l1": loguniform(1e-6, 1e-2),
                                           "lr": loguniform(0.03, 0.3)},
                                  n_iter=len(GRID), cv=cv, random_state=seed,
                                  error_score=np.nan)
        _, wall = _timed(lambda: rand.fit(X, y))
        record("RandomizedSearchCV", rand, wall, len(GRID) + 1, 2,
               {"best": {k: float(v) for k, v in rand.best_params_.items()}})

    if "optuna" in methods:
        search = _optuna_search(l1_net, cv, seed, budget)
        if search is not None:
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                # optuna-integration's terminator callback warns on a single cv split and
                # about its own deprecation; neither affects the search.
                warnings.simplefilter("ignore")
                _, wall = _timed(lambda: search.fit(X, y))
            record("OptunaSearchCV (TPE)", search, wall, search.n_trials_ + 1, 2,
                   {"best": {k: float(v) for k, v in search.best_params_.items()}})

    if "sgld" in methods:
        # A persistent chain of about one training run, B + M = 10 steps per outer step.
        tuner_net = make_estimator(classification, n_in, n_out, n_fit_rows, l1=False)
        burn_in, n_samples = 5, 5
        n_outer = max(2, math.ceil(STEPS / (burn_in + n_samples)))
        tuner = SGLDHyperTuner(tuner_net, {"l1": PerWeightL1(init=1e-4)}, n_outer=n_outer,
                               outer_lr=OUTER_LR, burn_in=burn_in, n_samples=n_samples, cv=cv,
                               eval_every=max(1, n_outer // 10), random_state=seed,
                               timeout=budget)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SearchInterrupted on timeout is expected here
            _, wall = _timed(lambda: tuner.fit(X, y))
        n_hyper = int(sum(np.size(v) for v in tuner.best_params_["l1"].values()))
        strengths = np.concatenate([np.ravel(v) for v in tuner.best_params_["l1"].values()])
        record("SGLDHyperTuner (per-weight L1)", tuner, wall, cv.get_n_splits() + 1, n_hyper,
               {"outer_iterations": int(len(tuner.history_)), "planned_outer": n_outer,
                "best": {"l1_mean": float(strengths.mean()),
                         "l1_median": float(np.median(strengths))}})
    return records


def _optuna_search(estimator, cv, seed, budget):
    """OptunaSearchCV with TPE over (lambda_l1, lr), stopped by the grid's wall time."""
    try:
        import optuna
        from optuna_integration import OptunaSearchCV
    except ImportError:
        print("optuna / optuna-integration not installed: no Optuna row", file=sys.stderr)
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: see above
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    dist = optuna.distributions
    space = {"lambda_l1": dist.FloatDistribution(1e-6, 1e-2, log=True),
             "lr": dist.FloatDistribution(0.03, 0.3, log=True)}
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    return OptunaSearchCV(clone(estimator), space, cv=cv, n_trials=100, timeout=budget,
                          study=study, random_state=seed, error_score=np.nan, verbose=0)


# --------------------------------------------------------------------------- report
def summarise(df):
    """Mean and std over seeds per (dataset, regime, method), in run order; every method
    keeps its row, winning or not."""
    return (df.groupby(["dataset", "regime", "method"], sort=False)
              .agg(test_mean=("test_score", "mean"), test_std=("test_score", "std"),
                   wall_s=("wall_s", "mean"), model_fits=("model_fits", "mean"),
                   n_hyperparams=("n_hyperparams", "max"), seeds=("seed", "nunique"))
              .reset_index())


def to_markdown(summary):
    lines = ["| dataset | regime | method | test score (mean ± std) | wall s | model fits "
             "| # hyperparams | seeds |", "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        std = "" if not np.isfinite(r.test_std) else f" ± {r.test_std:.4f}"
        lines.append(f"| {r.dataset} | {r.regime} | {r.method} | {r.test_mean:.4f}{std} | "
                     f"{r.wall_s:.1f} | {r.model_fits:.1f} | {r.n_hyperparams} | {r.seeds} |")
    return "\n".join(lines)


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = list(summary.groupby(["dataset", "regime"], sort=False))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    markers = dict(zip(summary["method"].drop_duplicates(), "osD^vP*"))
    for ax, ((dataset, regime), sub) in zip(axes.ravel(), panels):
        for r in sub.itertuples():
            ax.errorbar(r.wall_s, r.test_mean, yerr=0 if not np.isfinite(r.test_std) else r.test_std,
                        fmt=markers[r.method], capsize=3, label=r.method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        ax.set_title(f"{dataset}, {regime}", fontsize=9)
        ax.set_xlabel("wall-clock s (mean over seeds)", fontsize=8)
        ax.set_ylabel("test accuracy" if dataset != "diabetes" else "test R^2", fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_report(df, meta, out_dir, tag):
    summary = summarise(df)
    table = to_markdown(summary)
    print(table)
    with open(os.path.join(out_dir, tag + ".md"), "w") as fh:
        fh.write(f"# Search methods compared ({'smoke' if meta['smoke'] else 'full'} run)\n\n"
                 f"Test score: accuracy (digits, breast_cancer) or R^2 on standardised y "
                 f"(diabetes). {meta['seeds']} seed(s); wall time and fits are means per "
                 f"search; about {meta['steps_per_training_run']} SGD steps per training run. "
                 f"Total {meta['total_wall_s']:.0f} s wall ({meta['total_cpu_s']:.0f} s CPU), "
                 f"load average at end {meta['load_average_at_end'][0]:.1f} on "
                 f"{meta['cpu_count']} cores.\n\n{table}\n")
    plot(summary, os.path.join(out_dir, tag + ".png"))
    return summary


def _rebuild(path):
    with open(path) as fh:
        data = json.load(fh)
    tag = os.path.splitext(os.path.basename(path))[0]
    df = pd.DataFrame.from_records(data["runs"])
    _write_report(df, data["meta"], os.path.dirname(os.path.abspath(path)), tag)
    return df


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1 if SMOKE else 5)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--datasets", default="digits,breast_cancer,diabetes")
    parser.add_argument("--methods", default="random,optuna,sgld")
    parser.add_argument("--from-json", help="rebuild the .md table and .png plot from a "
                        "previous run's JSON instead of running anything")
    args = parser.parse_args(argv)
    if args.from_json:
        return _rebuild(args.from_json)
    torch.set_num_threads(1)  # shared 2-core machine; tiny tensors gain nothing from more
    datasets = args.datasets.split(",")
    regimes = {"digits": ["full", "150 rows", "40% flipped labels"],
               "breast_cancer": ["full", "150 rows", "40% flipped labels"],
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
    tag = "compare_search_smoke" if SMOKE else "compare_search"
    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"smoke": SMOKE, "seeds": args.seeds, "steps_per_training_run": STEPS,
            "outer_lr": OUTER_LR, "grid": GRID, "total_wall_s": total,
            "total_cpu_s": cpu_total, "load_average_at_end": os.getloadavg(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    summary = _write_report(df, meta, args.out_dir, tag)
    with open(os.path.join(args.out_dir, tag + ".json"), "w") as fh:
        json.dump({"meta": meta, "runs": df.to_dict(orient="records"),
                   "summary": summary.to_dict(orient="records")}, fh, indent=1, default=float)
    print(f"total {total:.0f} s wall, {cpu_total:.0f} s CPU; wrote {tag}.json/.md/.png to {args.out_dir}")
    return df


if __name__ == "__main__":
    main()
