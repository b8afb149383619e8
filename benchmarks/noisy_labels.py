"""Learning per-row sample weights under label noise (beyond the paper).

Digits with 40% of the training labels flipped to a different, random class. A small
trusted subset (``N_TRUSTED`` rows, 10 per class, labels known clean) is the validation
split of a ``PredefinedSplit``: the tuner learns one weight per noisy training row
(``SampleWeights``, ~900 hyperparameters) so that a net trained on the weighted rows does
well on the trusted rows. The same trusted rows serve every method, so all get the same
information. Rows per seed (each final net: same MLP, SGD lr=0.1, same epochs, trained on
noisy + trusted rows unless said otherwise):

* ``Unweighted``: plain cross-entropy on all rows;
* ``Trusted rows only``: the same net on the 100 clean rows alone;
* ``GridSearchCV weight decay``: an L2-penalised skorch net (``L2NetClassifier`` below),
  its strength picked on the trusted rows from 6 values, 0 included;
* ``SGLDHyperTuner SampleWeights``: the learned weights built into the refit net.

Each method's choice is also retrained for ``long_epochs`` (150) epochs, the same for all:
short training is itself a strong defence against label noise (the net has not yet
memorised the flipped labels), long training shows what each choice does once it can.

Besides the (clean) test accuracy, the script measures how well the learned weights flag
the flipped rows: the AUROC of ``-weight`` as a score for "this row's label was flipped"
(0.5 = no better than chance, 1 = every flipped row weighs less than every clean one).

Usage::

    python benchmarks/noisy_labels.py                      # 5 seeds
    python benchmarks/noisy_labels.py --smoke              # 1 seed, tiny budget
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd
import torch
from skorch import NeuralNetClassifier
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit, train_test_split

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.demo import make_net
from sgld_tuner.hyperparams import SampleWeights

from _plots import method_bars, subplots
from _results import (add_common_args, is_smoke, parse_args, result_stem, tuner_kwargs,
                      write_results)

NOISE = 0.4
N_POOL = 1000      # noisy + trusted rows
N_TRUSTED = 100    # 10 per class
WD_GRID = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]


class L2NetClassifier(NeuralNetClassifier):
    """A skorch classifier with one global L2 strength on the weight matrices.

    The penalty ``lambda_l2 * sum ||W||^2`` is added in ``get_loss`` (training only) rather
    than through the optimizer's ``weight_decay`` so that it does not touch biases and is
    a plain constructor argument that ``GridSearchCV`` can set.
    """

    def __init__(self, *args, lambda_l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lambda_l2 = lambda_l2

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training and self.lambda_l2 > 0:
            weights = [p for n, p in self.module_.named_parameters() if n.endswith("weight")]
            loss = loss + self.lambda_l2 * sum((w ** 2).sum() for w in weights)
        return loss


def make_data(seed: int):
    """Noisy rows first, then the trusted rows; returns the fold array and the flip mask."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    n_pool = 300 if is_smoke() else N_POOL  # the smoke run checks the plumbing only
    X_pool, X_te, y_pool, y_te = train_test_split(X, y, train_size=n_pool, stratify=y,
                                                  random_state=seed)
    X_noisy, X_trust, y_noisy, y_trust = train_test_split(
        X_pool, y_pool, test_size=N_TRUSTED, stratify=y_pool, random_state=seed)
    rng = np.random.RandomState(seed)
    flipped = rng.rand(len(y_noisy)) < NOISE
    # A flip always changes the class: add 1..9 modulo 10.
    y_noisy = y_noisy.copy()
    y_noisy[flipped] = (y_noisy[flipped] + rng.randint(1, 10, flipped.sum())) % 10
    X_s = np.concatenate([X_noisy, X_trust])
    y_s = np.concatenate([y_noisy, y_trust])
    fold = np.r_[np.full(len(y_noisy), -1), np.zeros(len(y_trust))].astype(int)
    return X_s, y_s, fold, flipped, X_te, y_te


def run(seeds, cfg):
    rows, weights = [], []
    for seed in seeds:
        X_s, y_s, fold, flipped, X_te, y_te = make_data(seed)
        n_noisy = len(flipped)

        def record(method, acc, seconds, extra=None):
            row = {"seed": seed, "method": method, "test_accuracy_pct": 100 * acc,
                   "wall_s": seconds}
            row.update(extra or {})
            rows.append(row)
            print(f"  seed={seed} {method:42s} acc={100 * acc:6.2f}% ({seconds:5.1f}s)"
                  + "".join(f" {k}={v:.3g}" for k, v in (extra or {}).items()
                            if isinstance(v, float)), flush=True)

        def long_run(net, X=X_s, y=y_s):
            """Test accuracy of the same choice trained ``long_epochs``: a longer run lets
            the net memorise the flipped labels, which is where weights should matter."""
            torch.manual_seed(seed)
            longer = clone(net).set_params(max_epochs=cfg["long_epochs"])
            return longer.fit(X, y).score(X_te, y_te)

        started = time.perf_counter()
        torch.manual_seed(seed)
        net = make_net(max_epochs=cfg["max_epochs"]).fit(X_s, y_s)
        record("Unweighted", net.score(X_te, y_te), time.perf_counter() - started,
               {"test_accuracy_long_pct": 100 * long_run(net)})

        started = time.perf_counter()
        torch.manual_seed(seed)
        net = make_net(max_epochs=cfg["max_epochs"]).fit(X_s[n_noisy:], y_s[n_noisy:])
        record("Trusted rows only", net.score(X_te, y_te), time.perf_counter() - started,
               {"test_accuracy_long_pct": 100 * long_run(net, X_s[n_noisy:], y_s[n_noisy:])})

        started = time.perf_counter()
        torch.manual_seed(seed)
        grid = GridSearchCV(make_net(L2NetClassifier, max_epochs=cfg["max_epochs"]),
                            {"lambda_l2": cfg["wd_grid"]}, cv=PredefinedSplit(fold))
        grid.fit(X_s, y_s)
        record("GridSearchCV weight decay", grid.score(X_te, y_te),
               time.perf_counter() - started,
               {"best_lambda_l2": float(grid.best_params_["lambda_l2"]),
                "test_accuracy_long_pct": 100 * long_run(grid.best_estimator_)})

        started = time.perf_counter()
        flat = {k: cfg[k] for k in ("n_outer", "burn_in", "n_samples", "temperature",
                                    "outer_lr", "eval_every")}
        tuner = SGLDHyperTuner(make_net(max_epochs=cfg["max_epochs"]), {"w": SampleWeights()},
                               cv=PredefinedSplit(fold), random_state=seed,
                               **tuner_kwargs(flat))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tuner.fit(X_s, y_s)
        seconds = time.perf_counter() - started
        w = np.asarray(tuner.best_params_["w"])[:n_noisy]
        w_final = np.asarray(tuner.hyperparams_["w"])[:n_noisy]
        extra = {"auroc_flipped": float(roc_auc_score(flipped, -w)),
                 "auroc_flipped_final": float(roc_auc_score(flipped, -w_final)),
                 "mean_w_flipped": float(w[flipped].mean()),
                 "mean_w_clean": float(w[~flipped].mean()),
                 "best_iteration": int(tuner.cv_results_["iteration"][tuner.best_index_]),
                 # the refit net carries the learned weights; cloning keeps them
                 "test_accuracy_long_pct": 100 * long_run(tuner.best_estimator_)}
        record("SGLDHyperTuner SampleWeights", tuner.score(X_te, y_te), seconds, extra)
        weights.append({"seed": seed, "w": w.tolist(), "flipped": flipped.tolist()})
    return pd.DataFrame(rows), weights


def to_markdown(df, summary, cfg, seeds, elapsed):
    lines = ["# Learned sample weights under 40% label noise (digits)", "",
             f"Test accuracy (%) on clean test rows, mean ± std over {len(seeds)} seed(s). "
             f"{N_POOL - N_TRUSTED} noisy training rows ({int(NOISE * 100)}% flipped) + "
             f"{N_TRUSTED} trusted clean rows (the validation split of every search). "
             f"MLP 64-128-10, SGD lr=0.1, batch 64, {cfg['max_epochs']} epochs per final net. "
             f"SGLDHyperTuner: n_outer={cfg['n_outer']}, (B, M)=({cfg['burn_in']}, "
             f"{cfg['n_samples']}), tau={cfg['temperature']}, outer Adam lr={cfg['outer_lr']} "
             f"(x{SampleWeights.outer_lr_scale:g}, SampleWeights' outer_lr_scale). "
             f"GridSearchCV over lambda_l2 in {cfg['wd_grid']}. Run time {elapsed:.0f} s on "
             f"{os.cpu_count()} CPU(s).", "",
             f"| method | test accuracy (%), {cfg['max_epochs']} epochs | same choice "
             f"retrained {cfg['long_epochs']} epochs | runs |", "|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['method']} | {r['mean']:.2f} ± {r['std']:.2f} | "
                     f"{r['long_mean']:.2f} ± {r['long_std']:.2f} | {int(r['count'])} |")
    sw = df[df["method"] == "SGLDHyperTuner SampleWeights"]
    lines += ["", "## Do the learned weights flag the flipped rows?", "",
              "| seed | AUROC(-w, flipped), best point | AUROC, last iteration | "
              "mean w flipped | mean w clean | best iteration |", "|---|---|---|---|---|---|"]
    for _, r in sw.iterrows():
        lines.append(f"| {r['seed']} | {r['auroc_flipped']:.3f} | {r['auroc_flipped_final']:.3f} "
                     f"| {r['mean_w_flipped']:.3f} | {r['mean_w_clean']:.3f} "
                     f"| {int(r['best_iteration'])} |")
    lines.append(f"| mean | {sw['auroc_flipped'].mean():.3f} | "
                 f"{sw['auroc_flipped_final'].mean():.3f} | {sw['mean_w_flipped'].mean():.3f} "
                 f"| {sw['mean_w_clean'].mean():.3f} | |")
    gs = df[df["method"] == "GridSearchCV weight decay"]
    lines += ["", "GridSearchCV's chosen lambda_l2 per seed: "
              + ", ".join(f"{v:g}" for v in gs["best_lambda_l2"]), "",
              "No paper row: the paper has no label-noise experiment."]
    return "\n".join(lines) + "\n"


def plot(summary, weights):
    """Clean test accuracy per method and the learned weights of seed 0; returns the figure."""
    fig, axes = subplots(2, figsize=(11, 4))
    method_bars(axes[0], summary["method"], summary["mean"], summary["std"],
                xlabel="clean test accuracy (%)", alpha=0.7)
    axes[0].set_xlim(max(0, summary["mean"].min() - 10), 100)
    w = np.asarray(weights[0]["w"])
    flipped = np.asarray(weights[0]["flipped"], dtype=bool)
    bins = np.linspace(0, 2, 41)
    axes[1].hist(w[~flipped], bins=bins, alpha=0.6, label="clean label")
    axes[1].hist(w[flipped], bins=bins, alpha=0.6, label="flipped label")
    axes[1].set_xlabel("learned sample weight (seed 0, best point)")
    axes[1].set_ylabel("training rows")
    axes[1].legend()
    return fig


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=None)
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    smoke = is_smoke()
    # Each outer iteration touches only the rows of its B + M minibatches; Adam's
    # per-coordinate steps let rarely-seen rows move as fast as often-seen ones.
    cfg = {"max_epochs": 40, "n_outer": 150, "burn_in": 5, "n_samples": 5,
           "temperature": 1e-4, "outer_lr": 0.05, "eval_every": 10, "wd_grid": WD_GRID,
           "long_epochs": 150}
    if smoke:  # checks the plumbing in seconds; the numbers mean nothing
        cfg.update(max_epochs=2, long_epochs=2, n_outer=2, burn_in=1, n_samples=1,
                   eval_every=2, wd_grid=[0.0, 1e-3])
    seeds = list(range(args.seeds if args.seeds else (1 if smoke else 5)))

    started = time.perf_counter()
    df, weights = run(seeds, cfg)
    elapsed = time.perf_counter() - started
    g = df.groupby("method", sort=False)
    summary = g["test_accuracy_pct"].agg(["mean", "std", "count"]).reset_index()
    long = g["test_accuracy_long_pct"].agg(["mean", "std"]).reset_index(drop=True)
    summary["long_mean"], summary["long_std"] = long["mean"].values, long["std"].values
    summary = summary.fillna({"std": 0.0, "long_std": 0.0})
    md = to_markdown(df, summary, cfg, seeds, elapsed)
    print("\n" + md)

    stem = result_stem("noisy_labels", args.out_dir)
    write_results(stem, {"config": cfg, "seeds": seeds, "noise": NOISE, "n_pool": N_POOL,
                         "n_trusted": N_TRUSTED, "elapsed_s": elapsed,
                         "rows": df.to_dict("records"), "summary": summary.to_dict("records")},
                  md, {"": plot(summary, weights)})
    print(f"wrote {stem}.json/.md/.png")


if __name__ == "__main__":
    main()
