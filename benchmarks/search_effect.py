"""What the search itself adds: SGLDHyperTuner against its no-search control, per lever.

Every tuner configuration is run twice per seed: as configured and with ``n_outer=1``
(the *control*: same start values, same seeds, the refit net trained at the start
values). The difference is what the search adds; a difference inside the seed spread is
a tie. ``GridSearchCV`` over one shared strength of the same penalty, on the same net and
the same cv, is the reference a user would otherwise run. CPU seconds are
``time.process_time()`` with one torch thread.

Regimes (bundled data only):

* ``cancer+noise``: breast_cancer plus 100 Gaussian columns, 100 training rows (where one
  shared strength cannot do what per-feature strengths can);
* ``digits-150``: digits, 150 training rows;
* ``diabetes``: diabetes regression, all training rows (R^2).

Usage::

    python benchmarks/search_effect.py --configs default --seeds 5
    SGLD_TUNER_SMOKE=1 python benchmarks/search_effect.py

Writes ``benchmarks/results/search_effect.{json,md}`` (``*_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier, NeuralNetRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (add_common_args, is_smoke, parse_args, result_stem,  # noqa: E402
                      tuner_kwargs, write_results)

from sgld_tuner import SGLDHyperTuner  # noqa: E402
from sgld_tuner.demo import MLP  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1, WeightDecay  # noqa: E402
from sgld_tuner.search import PlainSearch  # noqa: E402

SMOKE = is_smoke()
GRID = [0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1]

# name -> (PerWeightL1 kwargs, SGLDHyperTuner settings as a flat dict, grouped by
# _results.tuner_kwargs); "default" is the tuner's defaults.
def select_last(cv_results):
    """Refit the end of the trajectory (the hyperparameters the search converged to)."""
    return len(cv_results["params"]) - 1


def select_smoothed(cv_results):
    """Refit the best point of the 3-point moving average of the trajectory's scores."""
    scores = np.nan_to_num(np.asarray(cv_results["mean_test_score"], dtype=float), nan=-np.inf)
    padded = np.concatenate([scores[:1], scores, scores[-1:]])
    return int(np.argmax((padded[:-2] + padded[1:-1] + padded[2:]) / 3))


CONFIGS = {
    "default": ({}, {}),
    "select-last": ({}, {"refit": select_last}),
    "select-smoothed": ({}, {"refit": select_smoothed}),
    "start-1e-4": ({"init": 1e-4}, {}),
    "start-1e-2": ({"init": 1e-2}, {}),
    "feature": ({"granularity": "feature"}, {}),
    "weight": ({"granularity": "weight"}, {}),
    "feature-1e-2": ({"granularity": "feature", "init": 1e-2}, {}),
    "feature-1e-2-lr0.2": ({"granularity": "feature", "init": 1e-2}, {"outer_lr": 0.2}),
    "weight-1e-2-lr0.2": ({"granularity": "weight", "init": 1e-2}, {"outer_lr": 0.2}),
    "damped": ({}, {"recursion": "damped"}),
    "auto-weight": ({"init": "auto", "granularity": "weight"}, {}),
    "wd-default": ({"kind": WeightDecay}, {}),
    "auto-unit": ({"init": "auto", "granularity": "unit"}, {}),
    "auto-feature": ({"init": "auto", "granularity": "feature"}, {}),
    "auto-feature-lr0.2": ({"init": "auto", "granularity": "feature"}, {"outer_lr": 0.2}),
    "auto-feature-damped": ({"init": "auto", "granularity": "feature"}, {"recursion": "damped"}),
    # The outer loss inside the chain on a random subset of validation rows per step.
    "outer128": ({}, {"outer_batch_size": 128}),
    "outer64": ({}, {"outer_batch_size": 64}),
    # The chain trains for the net's own budget at the start values before the search.
    "warm-up": ({}, {"warm_up": "epochs"}),
    # Ten times the default chain temperature (what AffineAugmentation needed to find a
    # rotation in benchmarks/invariance.py before its outer_lr_scale).
    "tau1e-3": ({}, {"temperature": 1e-3}),
    # More search for the CPU that stacked folds save: twice the outer iterations, or
    # twice the outer step.
    "n_outer100": ({}, {"n_outer": 100}),
    "outer-lr0.1": ({}, {"outer_lr": 0.1}),
    # The tracked adjoint (and the outer gradient it needs) every k-th inner step only.
    "tracked-k2": ({}, {"method_options": {"curvature_every": 2}}),
    "tracked-k3": ({}, {"method_options": {"curvature_every": 3}}),
    "tracked-k5": ({}, {"method_options": {"curvature_every": 5}}),
    "tracked-k10": ({}, {"method_options": {"curvature_every": 10}}),
    # The accelerated adjoint (issue 23), with and without the race of the lr.
    "accelerated": ({}, {"method_options": {"adjoint": "accelerated"}}),
    "race-off": ({}, {"schedule": PlainSearch()}),
    "race-off-accelerated": ({}, {"schedule": PlainSearch(),
                                  "method_options": {"adjoint": "accelerated"}}),
}


def load_regime(name, seed):
    """Standardised train/test arrays and whether the task is a classification."""
    rng = np.random.RandomState(seed)
    if name == "cancer+noise":
        X, y = load_breast_cancer(return_X_y=True)
        X = np.hstack([X, rng.randn(len(X), 100)])
        n_train, classification = 100, True
    elif name == "digits-150":
        X, y = load_digits(return_X_y=True)
        n_train, classification = 150, True
    elif name == "digits-1200":
        # 400 validation rows per fold at cv=3: the only regime here whose split is
        # larger than a subsampled outer loss (the others have 33-100 rows).
        X, y = load_digits(return_X_y=True)
        n_train, classification = 1200, True
    else:
        X, y = load_diabetes(return_X_y=True)
        n_train, classification = 300, False
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, train_size=n_train, random_state=seed, stratify=y if classification else None)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = (scaler.transform(a).astype(np.float32) for a in (X_tr, X_te))
    if not classification:
        mu, sd = y_tr.mean(), y_tr.std()
        y_tr, y_te = (((a - mu) / sd).astype(np.float32).reshape(-1, 1) for a in (y_tr, y_te))
    return X_tr, X_te, y_tr, y_te, classification


def make_net(classification, n_in, n_out, net_class=None, **kwargs):
    """The one net every method uses: a 64-unit MLP, SGD, 40 epochs of batch 32."""
    if net_class is None:
        net_class = NeuralNetClassifier if classification else NeuralNetRegressor
    criterion = torch.nn.CrossEntropyLoss if classification else torch.nn.MSELoss
    return net_class(MLP, module__n_in=n_in, module__hidden=16 if SMOKE else 64,
                     module__n_out=n_out, criterion=criterion, optimizer=torch.optim.SGD,
                     lr=0.05, max_epochs=4 if SMOKE else 40, batch_size=32,
                     train_split=None, verbose=0, **kwargs)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_tuner(config, data, seed, n_outer, control=False):
    X_tr, X_te, y_tr, y_te, classification = data
    n_out = int(y_tr.max()) + 1 if classification else 1
    kind_kwargs, flat = CONFIGS[config]
    kind_kwargs = dict(kind_kwargs)
    kind = kind_kwargs.pop("kind", PerWeightL1)
    tuner = SGLDHyperTuner(make_net(classification, X_tr.shape[1], n_out),
                           {"l1": kind(**kind_kwargs)}, cv=3, random_state=seed,
                           **tuner_kwargs({"n_outer": n_outer, **flat,
                                           **({"n_outer": 1} if control else {})}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, wall, cpu = timed(lambda: tuner.fit(X_tr, y_tr))
    return {"test_score": float(tuner.score(X_te, y_te)), "wall_s": wall, "cpu_s": cpu,
            "cv_score": float(tuner.cv_results_["mean_test_score"][tuner.best_index_]),
            "l1_mean": float(tuner.cv_results_["param_l1"][tuner.best_index_])}


def run_grid(data, seed):
    from sgld_tuner.demo import L1NetClassifier, L1NetRegressor

    X_tr, X_te, y_tr, y_te, classification = data
    n_out = int(y_tr.max()) + 1 if classification else 1
    net = make_net(classification, X_tr.shape[1], n_out,
                   net_class=L1NetClassifier if classification else L1NetRegressor)
    torch.manual_seed(seed)
    grid = GridSearchCV(net, {"lambda_l1": GRID}, cv=3)
    _, wall, cpu = timed(lambda: grid.fit(X_tr, y_tr))
    return {"test_score": float(grid.score(X_te, y_te)), "wall_s": wall, "cpu_s": cpu,
            "cv_score": float(grid.best_score_), "l1_mean": grid.best_params_["lambda_l1"]}


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--configs", nargs="+", default=["default"])
    parser.add_argument("--regimes", nargs="+",
                        default=["cancer+noise", "digits-150", "diabetes"])
    parser.add_argument("--seeds", type=int, default=1 if SMOKE else 3)
    parser.add_argument("--n-outer", type=int, default=2 if SMOKE else 50)
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--tag", default="")
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    rows = []
    for regime in args.regimes:
        for seed in range(args.seeds):
            data = load_regime(regime, seed)
            runs = [] if args.no_grid else [("GridSearchCV", lambda: run_grid(data, seed))]
            for config in args.configs:
                runs.append((config, lambda c=config: run_tuner(c, data, seed, args.n_outer)))
                runs.append((config + " (control)", lambda c=config: run_tuner(c, data, seed, 1, control=True)))
            for method, fn in runs:
                rows.append({"regime": regime, "seed": seed, "method": method, **fn()})
                r = rows[-1]
                print(f"{regime:13s} {seed} {method:28s} test {r['test_score']:.4f} "
                      f"cv {r['cv_score']:.4f} l1 {r['l1_mean']:.2e} cpu {r['cpu_s']:.1f}",
                      flush=True)
    write(rows, args)


def summarise(rows):
    """Mean +- std per (regime, method), and the search's gain over its control per seed."""
    import pandas as pd

    df = pd.DataFrame(rows)
    # best_score_ minus the refit's test score: how far the cv estimate a user reads
    # overstates what the refit net does (selection on a noisy trajectory inflates it).
    df["cv_gap"] = df.cv_score - df.test_score
    table = df.groupby(["regime", "method"], sort=False).agg(
        test_mean=("test_score", "mean"), test_std=("test_score", "std"),
        cv_gap=("cv_gap", "mean"), cpu_s=("cpu_s", "mean"), wall_s=("wall_s", "mean"),
        l1=("l1_mean", "median"))
    tuned = df[~df.method.str.endswith("(control)") & (df.method != "GridSearchCV")]
    gains = []
    for _, r in tuned.iterrows():
        ctrl = df[(df.regime == r.regime) & (df.seed == r.seed)
                  & (df.method == r.method + " (control)")]
        gains.append({"regime": r.regime, "method": r.method,
                      "gain": r.test_score - float(ctrl.test_score.iloc[0])})
    gain = pd.DataFrame(gains).groupby(["regime", "method"], sort=False).agg(
        gain_mean=("gain", "mean"), gain_std=("gain", "std"),
        wins=("gain", lambda g: f"{int((g > 0).sum())}/{len(g)}"))
    return table.join(gain).reset_index()


def write(rows, args):
    table = summarise(rows)
    md = ["# What the search adds over its no-search control", "",
          f"`python benchmarks/search_effect.py --configs {' '.join(args.configs)} "
          f"--regimes {' '.join(args.regimes)} --seeds {args.seeds}` "
          f"(n_outer={args.n_outer}, cv=3, 64-unit MLP, one torch "
          "thread). gain: test score minus the same configuration's `n_outer=1` control, "
          "per seed (mean, std, wins). cv_gap: `best_score_` minus the refit's test score "
          "(mean over seeds).", "",
          table.to_markdown(index=False, floatfmt=".4f"), ""]
    name = "search_effect" + (f"_{args.tag}" if args.tag else "")
    write_results(result_stem(name, args.out_dir), {"args": vars(args), "rows": rows},
                  "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
