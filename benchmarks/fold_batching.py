"""Folds stacked into one chain (``batch_folds``) against folds one after the other.

Through the tuner: ``SGLDHyperTuner`` with PerWeightL1 (its default kind for an MLP) and
every other setting at its default, on digits (1200 rows), CPU time of one torch thread.
The cost of one outer iteration is the difference of two fits, ``n_outer=22`` and
``n_outer=2`` (no refit, scored only at the last iteration), divided by 20: setup,
scoring and the refit cancel out. Medians of interleaved rounds.

Rows per net: one fold alone (``ShuffleSplit(n_splits=1)`` with the held-out third of
3-fold cv), 3 folds and 5 folds, each sequential (``SamplerSettings(batch_folds=False)``)
and stacked (``SamplerSettings(batch_folds=True)``). The issue's goal: 3 folds cost <= 1.5x
one fold. The crossover (the largest net where stacking still wins) sets
``sgld_tuner.search.stacked.AUTO_MAX_WEIGHTS``.

    python benchmarks/fold_batching.py            # ~4 min
    python benchmarks/fold_batching.py --smoke
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from sklearn.model_selection import KFold, ShuffleSplit

from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.search import PlainSearch

from _results import add_common_args, is_smoke, parse_args, result_stem, write_results
from cost_kinds import MLP, data, BATCH, BURN_IN, LR, N_SAMPLES, PlainTrainer

SHORT, LONG = 2, 22


def make_user_net(hidden):
    from skorch import NeuralNetClassifier
    return NeuralNetClassifier(MLP, module__hidden=hidden, criterion=torch.nn.CrossEntropyLoss,
                               optimizer=torch.optim.SGD, lr=LR, batch_size=BATCH,
                               max_epochs=40, train_split=None, verbose=0)


def fit_seconds(hidden, cv, batch_folds, n_outer, X, y) -> float:
    tuner = SGLDHyperTuner(make_user_net(hidden), {"l1": PerWeightL1()}, n_outer=n_outer,
                           cv=cv, refit=False, random_state=0,
                           # the search's own iterations: a race would add lanes that run
                           # the net's budget whatever n_outer says
                           schedule=PlainSearch(),
                           sampler=SamplerSettings(batch_folds=batch_folds),
                           outer=OuterSettings(eval_every=10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.process_time()
        tuner.fit(X, y)
        return time.process_time() - started


def plain_trainer(hidden, X, y) -> PlainTrainer:
    """Plain SGD steps of the same net (64 rows: forward, backward, update)."""
    net = make_user_net(hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net.initialize()
    return PlainTrainer(net, X, y)


def configs():
    one = ShuffleSplit(n_splits=1, test_size=1 / 3, random_state=0)
    return [("1 fold", one, False), ("3 folds", KFold(3), False),
            ("3 folds", KFold(3), True), ("5 folds", KFold(5), False),
            ("5 folds", KFold(5), True)]


def measure(hidden, rounds, X, y) -> list[dict]:
    """Median CPU seconds per outer iteration of every configuration for one net."""
    cfgs = configs()
    per = {i: [] for i in range(len(cfgs))}
    plain, plain_s = plain_trainer(hidden, X, y), []
    for i, (_, cv, bf) in enumerate(cfgs):  # warm-up (allocator, lazy imports)
        fit_seconds(hidden, cv, bf, SHORT, X, y)
    plain.seconds(50)
    for _ in range(rounds):
        plain_s.append(plain.seconds(200))
        for i, (_, cv, bf) in enumerate(cfgs):
            long = fit_seconds(hidden, cv, bf, LONG, X, y)
            short = fit_seconds(hidden, cv, bf, SHORT, X, y)
            per[i].append((long - short) / (LONG - SHORT))
    n_weights = sum(p.numel() for p in MLP(hidden).parameters())
    base = float(np.median(per[0]))
    plain_ms = float(np.median(plain_s)) * 1e3
    rows = []
    for i, (label, cv, bf) in enumerate(cfgs):
        ms = float(np.median(per[i])) * 1e3
        fold_step_ms = ms / (cv.get_n_splits() * (BURN_IN + N_SAMPLES))
        rows.append({"net": "-".join(map(str, (64, *hidden, 10))), "weights": n_weights,
                     "folds": label, "stacked": bf, "ms_per_outer_iteration": ms,
                     "x_one_fold": ms / (base * 1e3), "plain_step_ms": plain_ms,
                     "fold_step_x_plain": fold_step_ms / plain_ms,
                     "samples_ms": [v * 1e3 for v in per[i]]})
    return rows


def to_markdown(rows, meta) -> str:
    lines = ["# Folds stacked into one chain vs one after the other", "",
             f"Command: `python benchmarks/fold_batching.py`; torch {torch.__version__}, one "
             f"thread, CPU time per outer iteration (10 inner steps per fold, PerWeightL1, "
             f"batch {BATCH}, outer rows 128), median of {meta['rounds']} interleaved "
             f"rounds of ({LONG} - {SHORT})-iteration fit differences; digits, "
             f"{meta['n_rows']} rows; load average {meta['load'][0]:.2f} at the end on "
             f"{os.cpu_count()} cores.", "",
             "Per fold-step: one outer iteration's time over (folds x 10 inner steps), in "
             "plain SGD steps of the same net (64 rows, measured in the same rounds).", "",
             "| net (weights) | folds | stacked | ms per outer iteration | x one fold | "
             "per fold-step, x plain step |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['net']} ({r['weights']:,}) | {r['folds']} | "
                     f"{'yes' if r['stacked'] else 'no'} | {r['ms_per_outer_iteration']:.1f} | "
                     f"{r['x_one_fold']:.2f}x | {r['fold_step_x_plain']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    Xtr, ytr, Xva, yva = data()
    X, y = np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])
    nets = [(16,)] if is_smoke() else [(32,), (128,), (256,), (512,), (512, 512)]
    rounds = 1 if is_smoke() else 3
    if is_smoke():
        X, y = X[:300], y[:300]
    rows = []
    for hidden in nets:
        rows += measure(hidden, rounds, X, y)
        print(to_markdown(rows, {"rounds": rounds, "n_rows": len(y),
                                 "load": os.getloadavg()}), flush=True)
    meta = {"rounds": rounds, "n_rows": len(y), "load": os.getloadavg()}
    md = to_markdown(rows, meta)
    stem = result_stem("fold_batching", args.out_dir)
    write_results(stem, {"rows": rows, "meta": meta}, md)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
