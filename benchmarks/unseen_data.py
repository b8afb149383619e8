"""The tuner with its defaults on data and nets no default was tuned on.

Every default of ``SGLDHyperTuner`` was chosen on digits, breast_cancer and diabetes.
This script runs it, as a user would, on data sets none of those choices saw:

* ``make_classification``: 600 rows, 100 features of which 8 informative, 3 classes;
* ``make_regression``: 400 rows, 60 features of which 6 informative (R^2 on standardised y);
* wine and iris (bundled with scikit-learn);

half the rows for training, half for the test, in ``Pipeline(StandardScaler, net)`` with a
64-unit MLP, under three ways of training the net:

* ``sgd``: SGD at lr 0.05 for 40 epochs in batches of 32;
* ``adam``: Adam at lr 1e-3 for 20 epochs in batches of 32;
* ``skorch-default``: skorch's own defaults (SGD at lr 0.01 for 10 epochs in batches of
  128), which leave these nets undertrained.

Methods, per seed: the tuner with its defaults (``PerWeightL1()``, ``cv=5``); its no-search
control (``n_outer=1``, same seed); ``GridSearchCV`` over the net's lr x weight decay (3 x 3,
lr around the net's own, ``cv=5``); the lean hybrid, ``GridSearchCV(cv=2)`` over the same 3
lrs around a tuner of half the default search (``n_outer=25, cv=2``); the plain net. CPU seconds (this process, one torch
thread) and wall seconds per search; whether the tuner warned ``UndertrainedWarning``.

    python benchmarks/unseen_data.py             # 5 seeds (about 5 minutes on 2 cores)
    python benchmarks/unseen_data.py --smoke     # iris, tiny nets, one seed (seconds)

Writes ``benchmarks/results/unseen_data.{json,md}`` (``unseen_data_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_iris, load_wine, make_classification, make_regression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier, NeuralNetRegressor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import (add_common_args, is_smoke, parse_args, result_stem,  # noqa: E402
                      tuner_kwargs, write_results)

from sgld_tuner import SGLDHyperTuner  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1  # noqa: E402
from sgld_tuner.tuner import UndertrainedWarning  # noqa: E402

TRAININGS = {
    "sgd": dict(optimizer=torch.optim.SGD, lr=0.05, max_epochs=40, batch_size=32),
    "adam": dict(optimizer=torch.optim.Adam, lr=1e-3, max_epochs=20, batch_size=32),
    "skorch-default": dict(),  # SGD, lr 0.01, 10 epochs, batches of 128
}
LR_FACTORS = (1 / 3, 1.0, 3.0)  # the grid's lrs, around the net's own
WDS = (0.0, 1e-3, 1e-2)


class MLP(torch.nn.Module):
    def __init__(self, n_in, n_out, hidden=64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, n_out))

    def forward(self, X):
        return self.net(X)


def load(name: str, seed: int):
    """Train and test rows (half each), and whether it is a classification task."""
    if name == "make_classification":
        X, y = make_classification(600, 100, n_informative=8, n_redundant=4, n_classes=3,
                                   random_state=seed)
    elif name == "make_regression":
        X, y = make_regression(400, 60, n_informative=6, noise=20.0, random_state=seed)
        y = (y - y.mean()) / y.std()
    else:
        X, y = (load_wine if name == "wine" else load_iris)(return_X_y=True)
    classification = name != "make_regression"
    X_tr, X_te, y_tr, y_te = train_test_split(X.astype(np.float32), y, train_size=0.5,
                                              random_state=seed,
                                              stratify=y if classification else None)
    if classification:
        return X_tr, X_te, y_tr.astype(np.int64), y_te.astype(np.int64), True
    return (X_tr, X_te, y_tr.astype(np.float32).reshape(-1, 1),
            y_te.astype(np.float32).reshape(-1, 1), False)


def pipeline(classification: bool, n_in: int, n_out: int, training: dict, smoke: bool):
    net_class = NeuralNetClassifier if classification else NeuralNetRegressor
    criterion = torch.nn.CrossEntropyLoss if classification else torch.nn.MSELoss
    extra = dict(max_epochs=2) if smoke else {}
    return make_pipeline(StandardScaler(), net_class(
        MLP, module__n_in=n_in, module__n_out=n_out, module__hidden=8 if smoke else 64,
        criterion=criterion, train_split=None, verbose=0, **{**training, **extra}))


def run_one(name: str, training: str, seed: int, smoke: bool) -> list[dict]:
    """Every method on one (data set, training, seed); one record per method."""
    X_tr, X_te, y_tr, y_te, classification = load(name, seed)
    n_out = int(y_tr.max()) + 1 if classification else 1

    def make():
        return pipeline(classification, X_tr.shape[1], n_out, TRAININGS[training], smoke)

    net_step = make().steps[-1][0]
    lr = make().steps[-1][1].lr
    small = tuner_kwargs(dict(n_outer=2, burn_in=1, n_samples=1) if smoke else {})
    methods = {
        "SGLDHyperTuner": SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                                         **small),
        "control (n_outer=1)": SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                                              **{**small, "n_outer": 1}),
        "GridSearchCV (lr x wd)": GridSearchCV(make(), {
            f"{net_step}__lr": [lr * f for f in LR_FACTORS][: 2 if smoke else None],
            f"{net_step}__optimizer__weight_decay": list(WDS)[: 2 if smoke else None]}),
        "hybrid: GridSearchCV(lr) x tuner": GridSearchCV(
            SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                           **{"n_outer": 25, "cv": 2, **small}),
            {f"estimator__{net_step}__lr": [lr * f for f in LR_FACTORS][: 2 if smoke else None]},
            cv=2),
        "plain net": make(),
    }
    return fit_and_score(methods, (X_tr, X_te, y_tr, y_te),
                         {"data": name, "training": training, "seed": seed})


def fit_and_score(methods: dict, data: tuple, meta: dict, extra=None) -> list[dict]:
    """Fit each method on the same seed and rows; one record per method with its test
    score (NaN where it has none, e.g. a refit that diverged), CPU and wall seconds,
    whether it warned UndertrainedWarning, and ``extra(estimator)``'s fields."""
    X_tr, X_te, y_tr, y_te = data
    records = []
    for method, estimator in methods.items():
        torch.manual_seed(meta["seed"])
        wall, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(X_tr, y_tr)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        try:
            score = float(estimator.score(X_te, y_te))
        except ValueError as exc:  # e.g. NaN predictions of a refit that diverged
            print(f"{method} on {meta}: no score ({exc})", flush=True)
            score = float("nan")
        records.append({
            **meta, "method": method, "test_score": score, "cpu_s": cpu, "wall_s": wall,
            "undertrained_warning": any(w.category is UndertrainedWarning for w in caught),
            **(extra(estimator) if extra is not None else {})})
    return records


def run_all(names: list, trainings: list, seeds: list, run_one, smoke: bool) -> list[dict]:
    """``run_one(name, training, seed, smoke)`` over every data set, training and seed."""
    records = []
    for name in names:
        for training in trainings:
            for seed in seeds:
                records += run_one(name, training, seed, smoke)
            print(f"{name} / {training} done", flush=True)
    return records


def to_markdown(df: pd.DataFrame, command: str, seeds: list, cpu_total: float) -> str:
    keys = ["data", "training", "seed"]
    score = df.pivot_table(index=keys, columns="method", values="test_score")
    cpu = df.pivot_table(index=keys, columns="method", values="cpu_s")
    warned = df[df.method == "SGLDHyperTuner"].set_index(keys).undertrained_warning
    gain = score["SGLDHyperTuner"] - score["control (n_outer=1)"]
    vs_grid = score["SGLDHyperTuner"] - score["GridSearchCV (lr x wd)"]
    hybrid = "hybrid: GridSearchCV(lr) x tuner"
    hybrid_vs_grid = score[hybrid] - score["GridSearchCV (lr x wd)"]
    lines = [
        "# The tuner's defaults on data and nets no default was tuned on", "",
        f"`{command}`: {len(seeds)} seed(s), {cpu_total:.0f} s CPU in all. Test score: "
        "accuracy, or R^2 for make_regression. gain: the tuner minus its no-search control "
        "on the same seed (mean ± std, seeds won); vs grid: the tuner minus GridSearchCV "
        "(lr x wd, 9 points); hybrid: GridSearchCV over 3 lrs around the tuner (n_outer=25, "
        "cv=2 inside, cv=2 outside), and its lead over the grid; CPU: seconds per search, one "
        "torch thread; undertrained: seeds on which the tuner warned UndertrainedWarning.", "",
        "| data | training | tuner | control | grid | hybrid | plain net | gain | vs grid "
        "| hybrid vs grid | CPU tuner / hybrid / grid | undertrained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (data, training), rows in score.groupby(level=["data", "training"], sort=False):
        g, v = gain.loc[(data, training)], vs_grid.loc[(data, training)]
        h = hybrid_vs_grid.loc[(data, training)]
        c = cpu.loc[(data, training)].mean()

        def cell(method, rows=rows):
            return f"{rows[method].mean():.3f} ± {rows[method].std(ddof=1):.3f}"

        lines.append(
            f"| {data} | {training} | {cell('SGLDHyperTuner')} | {cell('control (n_outer=1)')} "
            f"| {cell('GridSearchCV (lr x wd)')} | {cell(hybrid)} | {cell('plain net')} "
            f"| {g.mean():+.3f} ± {g.std(ddof=1):.3f} ({int((g > 0).sum())}/{len(g)}) "
            f"| {v.mean():+.3f} ({int((v > 0).sum())}/{len(v)}) "
            f"| {h.mean():+.3f} ({int((h > 0).sum())}/{len(h)}) "
            f"| {c['SGLDHyperTuner']:.2f} / {c[hybrid]:.2f} / {c['GridSearchCV (lr x wd)']:.2f} "
            f"| {int(warned.loc[(data, training)].sum())}/{len(g)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=1 if is_smoke() else 5)
    args = parse_args(parser, argv)
    smoke, seeds = is_smoke(), list(range(args.seeds))
    torch.set_num_threads(1)
    names = ["iris"] if smoke else ["make_classification", "make_regression", "wine", "iris"]
    trainings = ["sgd"] if smoke else list(TRAININGS)
    cpu_started = time.process_time()
    df = pd.DataFrame.from_records(run_all(names, trainings, seeds, run_one, smoke))
    command = "python benchmarks/unseen_data.py" + (" --smoke" if smoke else "")
    md = to_markdown(df, command, seeds, time.process_time() - cpu_started)
    print("\n" + md)
    stem = result_stem("unseen_data", args.out_dir)
    write_results(stem, {"seeds": seeds, "rows": df.to_dict("records")}, md)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
