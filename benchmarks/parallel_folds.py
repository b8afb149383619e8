"""Speedup of parallel folds: SGLDHyperTuner with n_jobs=1 vs n_jobs=2 (joblib threads).

Wall-clock time of the search (refit excluded) on digits, 5 folds, per-weight L1, with
torch limited to one intra-op thread per fold so that two folds use two cores. Writes
benchmarks/results/parallel_folds.{json,md}. ``--smoke`` runs a tiny version.

    python benchmarks/parallel_folds.py
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from sgld_tuner import OuterSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.search import PlainSearch

from _results import add_common_args, is_smoke, parse_args, result_stem, write_results


def search_time(n_jobs: int, n_outer: int, repeats: int, hidden: int = 128) -> list[float]:
    X, _, y, _ = load_data(n_train=150 if is_smoke() else 600, random_state=0)
    times = []
    for _ in range(repeats):
        net = make_net(module__hidden=hidden)
        tuner = SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-4)}, n_outer=n_outer, cv=5,
                               n_jobs=n_jobs, refit=False, random_state=0,
                               schedule=PlainSearch(),  # the folds' own spread, no race
                               outer=OuterSettings(eval_every=5))
        started = time.perf_counter()
        tuner.fit(X, y)
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    n_outer, repeats = (1, 1) if is_smoke() else (30, 3)
    # A small net (the demo's, ~9k weights: per-fold work is short and Python-bound) and a
    # wide one (~1.2M weights: per-fold work is BLAS that releases the GIL).
    widths = (16,) if is_smoke() else (128, 8192)
    # One untimed fit first: imports, lazy initialisation and allocator warm-up would
    # otherwise all land on whichever setting is timed first (a smoke run times nothing).
    for n_jobs in () if is_smoke() else (1, 2):
        search_time(n_jobs, 1, 1, widths[0])
    rows = []
    for hidden in widths:
        for n_jobs in (1, 2):
            times = search_time(n_jobs, n_outer, repeats, hidden)
            rows.append({"hidden": hidden, "n_jobs": n_jobs,
                         "median_s": float(np.median(times)), "times_s": times})
    speedup = {h: [r for r in rows if r["hidden"] == h][0]["median_s"]
               / [r for r in rows if r["hidden"] == h][1]["median_s"] for h in widths}
    meta = {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "torch": torch.__version__,
            "python": platform.python_version(), "n_outer": n_outer, "folds": 5,
            "smoke": is_smoke()}
    lines = ["| MLP hidden units | n_jobs | median search wall time (s) |", "|---:|---:|---:|"]
    lines += [f"| {r['hidden']} | {r['n_jobs']} | {r['median_s']:.2f} |" for r in rows]
    lines += ["", "speedup of n_jobs=2 over n_jobs=1: "
              + ", ".join(f"hidden {h}: **{v:.2f}x**" for h, v in speedup.items())
              + f" ({meta['cpu_count']} cores, load average at the end {meta['load_avg'][0]:.2f})"]
    table = "\n".join(lines)
    print(table)
    write_results(result_stem("parallel_folds", args.out_dir),
                  {"rows": rows, "speedup": speedup, "meta": meta},
                  "# Parallel folds\n\nCommand: `python benchmarks/parallel_folds.py`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
