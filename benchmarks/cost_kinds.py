"""Inner-step cost per hyperparameter kind, through the tuner's own adapter (NetProblem).

For PerWeightL1 (penalty), TaylorLoss (learned loss) and AffineAugmentation: CPU time of
one HPO-SGLD inner step (the tuner's defaults: recursion "auto" = tracked, a double
backward every step; B = M = 5; and, for comparison, the damped recursion with its
curvature once per outer iteration) divided by one plain SGD training step of the same net on the same
batch size, with the outer loss on the whole validation split (the default) and on one
batch of validation rows (``outer_batch_size``). Digits, 1200 train / 597 validation rows,
batch 64, 64-H-10 MLP. Writes benchmarks/results/cost_kinds.{json,md}.

    python benchmarks/cost_kinds.py            # --smoke for a quick check
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.func import functional_call

from sgld_tuner.core import ChainState, InnerSettings, hypergradient
from sgld_tuner.core import _tree
from sgld_tuner.demo import make_net
from sgld_tuner.hyperparams import AffineAugmentation, PerWeightL1, TaylorLoss
from sgld_tuner.skorch_adapter import NetProblem

from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

BATCH = 64
KINDS = {
    "PerWeightL1": lambda: PerWeightL1(init=1e-4, granularity="weight"),
    "TaylorLoss": lambda: TaylorLoss(),
    "AffineAugmentation": lambda: AffineAugmentation(init=0.05, image_shape=(8, 8)),
}


def data():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    return X[order[:1200]], y[order[:1200]], X[order[1200:]], y[order[1200:]]


def plain_step_seconds(net, X, y, repeats):
    """One SGD step (forward, backward, update) on a BATCH-row minibatch, CPU seconds."""
    module, crit = net.module_, net.criterion_
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(10):
            idx = torch.randperm(len(X), generator=gen)[:BATCH]
            loss = crit(functional_call(module, theta, (X[idx],)), y[idx])
            grads = torch.autograd.grad(loss, list(theta.values()))
            with torch.no_grad():
                for t, g in zip(theta.values(), grads):
                    t.sub_(0.1 * g)
        times.append((time.process_time() - started) / 10)
    return float(np.median(times))


def sgld_step_seconds(net, kind, outer_batch_size, Xtr, ytr, Xva, yva, repeats, recursion):
    """One HPO-SGLD inner step with the tuner's default settings, CPU seconds."""
    problem = NetProblem(net, {"h": KINDS[kind]()}, Xtr, ytr, Xva, yva, batch_size=BATCH,
                         generator=torch.Generator().manual_seed(0),
                         augment_outer=kind == "AffineAugmentation",
                         outer_batch_size=outer_batch_size)
    lam = [t.detach().requires_grad_(True) for t in _tree.flatten(problem.init_lam())[0]]
    bilevel = problem.bilevel()
    settings = InnerSettings(inner_lr=0.1, burn_in=5, n_samples=5, temperature=1e-4,
                             recursion=recursion).validate()
    state, gen = ChainState(), torch.Generator().manual_seed(1)
    hypergradient(bilevel, lam, state, settings, gen)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.process_time()
        hypergradient(bilevel, lam, state, settings, gen)
        times.append((time.process_time() - started) / settings.steps)
    return float(np.median(times))


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    Xtr, ytr, Xva, yva = data()
    hidden_sizes, repeats = ([32], 1) if is_smoke() else ([128, 1024], 5)
    rows = []
    for hidden in hidden_sizes:
        net = make_net(module__hidden=hidden).initialize()
        plain = plain_step_seconds(net, Xtr, ytr, repeats)
        for kind in KINDS:
            # A smoke run checks the plumbing: one outer-loss setting is enough.
            for outer in (BATCH,) if is_smoke() else (None, BATCH):
                for recursion in ("auto", "damped"):
                    step = sgld_step_seconds(net, kind, outer, Xtr, ytr, Xva, yva, repeats,
                                             recursion)
                    rows.append({"hidden": hidden, "kind": kind, "recursion": recursion,
                                 "outer_rows": "all 597" if outer is None else str(outer),
                                 "plain_ms": plain * 1e3, "sgld_ms": step * 1e3,
                                 "ratio": step / plain})
                    print(f"hidden {hidden:5d} {kind:18s} {recursion:6s} outer rows "
                          f"{rows[-1]['outer_rows']:>7s}: plain {plain * 1e3:6.2f} ms, "
                          f"sgld {step * 1e3:6.2f} ms, ratio {step / plain:5.2f}x")
    lines = ["| MLP hidden | kind | recursion | outer-loss rows per step | plain step (CPU ms) | "
             "sgld inner step (CPU ms) | ratio |", "|---:|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['hidden']} | {r['kind']} | {r['recursion']} | {r['outer_rows']} | "
              f"{r['plain_ms']:.2f} | {r['sgld_ms']:.2f} | {r['ratio']:.2f}x |" for r in rows]
    meta = {"torch": torch.__version__, "threads": 1, "load_avg": os.getloadavg(),
            "cpu_count": os.cpu_count(), "smoke": is_smoke()}
    table = "\n".join(lines)
    print(table)
    write_results(result_stem("cost_kinds", args.out_dir), {"rows": rows, "meta": meta},
                  "# Inner-step cost per hyperparameter kind\n\nCommand: "
                  "`python benchmarks/cost_kinds.py` (CPU time, one thread, load average "
                  f"{meta['load_avg'][0]:.2f} on {meta['cpu_count']} cores)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
