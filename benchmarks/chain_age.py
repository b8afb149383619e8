"""Does the tuner's hypergradient point the right way on a young chain?

On one cv fold of a ``compare_search`` regime, a persistent chain runs ``n`` outer
iterations (B = M = 5 steps each) at the fixed start values (``PerWeightL1()``: per-feature
strengths at ``init="auto"``). Two numbers per seed, along the direction ``d`` = all ones
in raw (log-like) strength space:

* ``tracked``: the tuner's default hypergradient (``recursion="auto"``), averaged over the
  last 5 outer iterations, dotted with ``d``;
* ``finite difference``: ``(f(+eps) - f(-eps)) / (2 eps)`` with ``f`` the chain's mean
  outer loss over the same 5 iterations, the chain rerun from scratch at raw values shifted
  by ``+-eps`` with the same seeds (common random numbers): the derivative of what a chain
  of that age actually scores.

Usage::

    python benchmarks/chain_age.py                 # diabetes full, n = 5 and 30, 3 seeds
    python benchmarks/chain_age.py --smoke

Writes ``benchmarks/results/chain_age.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_search as cs  # noqa: E402
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results  # noqa: E402

from sgld_tuner.core import ChainState, InnerSettings, _tree, hypergradient  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1  # noqa: E402
from sgld_tuner.skorch_adapter import NetProblem  # noqa: E402

EPS = 0.2
TAIL = 5  # outer iterations averaged at the end of the chain


def fold_problem(ctx, seed):
    """Fold 0 of a 3-fold split of the regime's training rows, on a freshly seeded net."""
    train, val = next(iter(KFold(3, shuffle=True, random_state=seed).split(ctx.X)))
    torch.manual_seed(seed)
    net = ctx.net().initialize()
    return NetProblem(net, {"l1": PerWeightL1()}, ctx.X[train], ctx.y[train], ctx.X[val],
                      ctx.y[val], batch_size=net.batch_size,
                      generator=torch.Generator().manual_seed(100 + seed))


def chain(ctx, seed, n_outer, shift):
    """Mean outer loss and mean hypergradient over the last TAIL outer iterations of a
    chain at the start values shifted by ``shift`` (raw scale)."""
    problem = fold_problem(ctx, seed)
    bilevel = problem.bilevel()
    lam = [(t.detach() + shift).requires_grad_(True)
           for t in _tree.flatten(problem.init_lam())[0]]
    settings = InnerSettings(inner_lr=ctx.net().lr, burn_in=5, n_samples=5,
                             temperature=1e-4).validate()
    state, generator = ChainState(), torch.Generator().manual_seed(7 + seed)
    results = [hypergradient(bilevel, lam, state, settings, generator)
               for _ in range(n_outer)][-TAIL:]
    direction = float(np.mean([sum(float(g.sum()) for g in r.grad) for r in results]))
    return float(np.mean([r.outer_loss for r in results])), direction


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--dataset", default="diabetes")
    parser.add_argument("--regime", default="full")
    parser.add_argument("--seeds", type=int, default=1 if is_smoke() else 3)
    parser.add_argument("--ages", type=int, nargs="+", default=[5] if is_smoke() else [5, 30])
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    rows = []
    for seed in range(args.seeds):
        ctx = cs.Context(args.dataset, args.regime, seed)
        for age in args.ages:
            f0, tracked = chain(ctx, seed, age, 0.0)
            plus, _ = chain(ctx, seed, age, EPS)
            minus, _ = chain(ctx, seed, age, -EPS)
            rows.append({"seed": seed, "outer_iterations": age, "chain_steps": 10 * age,
                         "tracked": tracked, "finite_difference": (plus - minus) / (2 * EPS),
                         "outer_loss": f0})
            r = rows[-1]
            print(f"seed {seed} chain of {r['chain_steps']:4d} steps: tracked {tracked:+.4g} "
                  f"finite difference {r['finite_difference']:+.4g}", flush=True)
    lines = ["| seed | chain steps | tracked h . d | finite difference | same sign |",
             "|---:|---:|---:|---:|---|"]
    lines += [f"| {r['seed']} | {r['chain_steps']} | {r['tracked']:+.4g} | "
              f"{r['finite_difference']:+.4g} | "
              f"{'yes' if np.sign(r['tracked']) == np.sign(r['finite_difference']) else 'no'} |"
              for r in rows]
    text = (f"# Hypergradient sign on young and trained chains\n\n`python benchmarks/chain_age.py "
            f"--dataset {args.dataset} --regime \"{args.regime}\"` (fold 0 of 3, d = all ones in "
            f"raw strength space, eps = {EPS}, last {TAIL} outer iterations averaged, one "
            "torch thread). Positive: raising every strength raises the validation loss.\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    write_results(result_stem("chain_age", args.out_dir), {"args": vars(args), "rows": rows},
                  text)


if __name__ == "__main__":
    main()
