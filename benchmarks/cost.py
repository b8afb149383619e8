"""Time and memory of HPO-SGLD against plain training, RMD and IFT-CG on CPU.

For MLPs of about 1e4, 1e5, 1e6 and 1e7 weights with one L1 hyperparameter per weight
(``benchmarks/_mlp.py``), this measures

* one plain SGD training step (same net, same minibatch, same penalty);
* one HPO-SGLD inner step = one outer iteration with ``B + M`` steps divided by ``B + M``,
  for the damped recursion, the paper recursion through autograd, and the paper recursion
  with the closed-form mixed derivative (``mixed_vjp``: no double backward at all);
* one outer iteration (hypergradient) of sgld, rmd and ift-cg at equal inner steps;
* the peak RSS of one hypergradient above that of plain training, each in a fresh process
  (``B + M = 10``, and 50 for the sgld variants up to 1e6 weights to check it is flat).

Times are medians over interleaved repeats (each configuration runs once per round, so
load from other processes spreads over all of them) after one warm-up call, on one
thread (``torch.set_num_threads(1)``). Ratios use the CPU time of the process
(``time.process_time``), which other jobs on a shared machine disturb far less than wall
time; wall-clock ratios are reported next to them.

Usage::

    python benchmarks/cost.py                   # 1e4 .. 1e7 weights, a few minutes
    python benchmarks/cost.py --smoke           # 1e4 weights, a few seconds
    python benchmarks/cost.py --sizes 1e6 --tag before   # one size, cost_before.*
    python benchmarks/cost.py --sizes 1e4 1e5 1e6 --no-memory --tag after  # timings only

Writes ``benchmarks/results/cost.json`` and ``benchmarks/results/cost.md``
(``cost_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _mlp  # noqa: E402
from _results import (add_common_args, is_smoke, parse_args, result_stem,  # noqa: E402
                      write_results)

SGLD = ["sgld-damped", "sgld-damped-closed", "sgld-paper", "sgld-paper-closed"]
OUTER = SGLD + ["rmd", "ift-cg"]
MIB = 2.0 ** 20

# Goals from the issue (2 CPU cores).
GOAL_INNER_RATIO = 2.0    # sgld inner step / plain training step
GOAL_MEMORY_RATIO = 4.0   # hypergradient peak above plain training / model bytes
GOAL_FLAT = 0.10          # relative change of that peak from B+M = 10 to 50


def plan() -> list[dict]:
    """Sizes with their inner steps, timing repeats and memory step counts."""
    if is_smoke():
        # One small size, one repeat, one memory process: checks the plumbing in seconds.
        return [{"target": 1e4, "steps": 4, "repeats": 1, "memory_steps": [4]}]
    return [{"target": 1e4, "steps": 10, "repeats": 7, "memory_steps": [10, 50]},
            {"target": 1e5, "steps": 10, "repeats": 7, "memory_steps": [10, 50]},
            {"target": 1e6, "steps": 10, "repeats": 5, "memory_steps": [10, 50]},
            {"target": 1e7, "steps": 10, "repeats": 3, "memory_steps": [10]}]


def time_size(width: int, steps: int, repeats: int) -> dict:
    """Median seconds of a plain step and of one outer iteration of every method."""
    problem_plain, problem_closed, lam, train_step = _mlp.make_problem(width)
    theta = [_mlp.init_theta(width)]

    def plain():
        # ``steps`` plain steps per sample, so timer resolution and per-call noise are
        # spread like in the outer iterations they are compared with.
        for _ in range(steps):
            theta[0] = train_step(theta[0], 0.05)

    def outer(label):
        return lambda: _mlp.one_hypergradient(problem_plain, problem_closed, lam, label, steps)

    jobs = {"plain": plain, **{label: outer(label) for label in OUTER}}
    for job in jobs.values():  # warm-up
        job()
    wall = {name: [] for name in jobs}
    cpu = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            job()
            cpu[name].append(time.process_time() - started_cpu)
            wall[name].append(time.perf_counter() - started)
    # CPU time of this (single-threaded) process is what the ratios use: on a box shared
    # with other jobs, wall time mostly measures how long we waited for a core.
    med = {name: statistics.median(values) for name, values in cpu.items()}
    med_wall = {name: statistics.median(values) for name, values in wall.items()}
    out = {"plain_step_s": med["plain"] / steps,
           "plain_step_wall_s": med_wall["plain"] / steps,
           "outer_s": {label: med[label] for label in OUTER},
           "outer_wall_s": {label: med_wall[label] for label in OUTER},
           "samples_cpu_s": cpu, "samples_wall_s": wall}
    out["inner_step_s"] = {label: med[label] / steps for label in SGLD}
    out["inner_ratio"] = {label: out["inner_step_s"][label] / out["plain_step_s"]
                          for label in SGLD}
    out["inner_ratio_wall"] = {label: med_wall[label] / med_wall["plain"] for label in SGLD}
    out["vs_rmd"] = {label: med[label] / med["rmd"] for label in SGLD}
    out["vs_rmd_wall"] = {label: med_wall[label] / med_wall["rmd"] for label in SGLD}
    return out


def breakdown_size(width: int, repeats: int) -> dict:
    """Median CPU ms of the pieces an HPO-SGLD step is made of (closed-form paper path).

    Explains the inner-step ratio: a training forward/backward (as in a plain step), a
    validation forward/backward, the Langevin update with and without its Gaussian noise,
    the closed-form mixed product and one fused update of ``g``.
    """
    from sgld_tuner.core import _tree
    from sgld_tuner.core.sgld import langevin_step

    _, problem, lam, train_step = _mlp.make_problem(width)
    theta = [t.requires_grad_(True) for t in _mlp.init_theta(width)]
    gen = torch.Generator().manual_seed(0)
    state = {"plain": _mlp.init_theta(width)}
    grads = torch.autograd.grad(problem.inner(lam, theta), theta)
    v = [g.detach() for g in grads]
    acc = [torch.zeros_like(t) for t in lam]

    def plain():
        state["plain"] = train_step(state["plain"], 0.05)

    pieces = {
        "plain step": plain,
        "training forward+backward": lambda: torch.autograd.grad(problem.inner(lam, theta), theta),
        "validation forward+backward": lambda: torch.autograd.grad(
            problem.outer(lam, theta), theta + lam, allow_unused=True),
        "langevin step (with noise)": lambda: langevin_step(
            theta, grads, lr=0.05, temperature=1e-4, noise_scale=1.0, generator=gen),
        "langevin step (noise off)": lambda: langevin_step(
            theta, grads, lr=0.05, temperature=0.0, noise_scale=1.0, generator=gen),
        "closed-form mixed product": lambda: problem.mixed(lam, theta, v),
        "g update (fused axpy)": lambda: _tree.axpy_(acc, v, -0.05),
    }
    for job in pieces.values():
        job()
    samples = {name: [] for name in pieces}
    for _ in range(repeats):
        for name, job in pieces.items():
            started = time.process_time()
            job()
            samples[name].append(time.process_time() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def memory_size(width: int, memory_steps: list[int]) -> list[dict]:
    """Peak-memory records (one fresh process each) for one net width."""
    rows = []
    # Every method at the first count, the sgld variants after; in smoke mode only the
    # closed-form sgld (each row is a fresh interpreter: seconds apiece).
    first, later = (["sgld-paper-closed"], []) if is_smoke() else (OUTER, SGLD)
    for steps in memory_steps:
        for label in (first if steps == memory_steps[0] else later):
            row = _mlp.run_child(label, steps, width)
            if "error" in row:
                print(f"memory {label} B+M={steps}: error\n{row['error']}", file=sys.stderr)
            rows.append(row)
    return rows


def verdicts(sizes: list[dict]) -> list[dict]:
    """Which goal each sgld variant meets, size by size."""
    out = []
    for s in sizes:
        for label in SGLD:
            rows = [r for r in s["memory"] if r["label"] == label and "error" not in r]
            mem = None if not rows else all(
                r["hyper_peak_bytes"] - r["plain_peak_bytes"] <= GOAL_MEMORY_RATIO * r["model_bytes"]
                for r in rows)
            flat = None
            if len(rows) > 1:
                flat = abs(rows[-1]["hyper_peak_bytes"] / rows[0]["hyper_peak_bytes"] - 1.0) \
                    <= GOAL_FLAT
            out.append({"n_weights": s["n_weights"], "label": label,
                        "inner_step_le_2x_plain": s["timing"]["inner_ratio"][label]
                        <= GOAL_INNER_RATIO,
                        "outer_le_rmd": s["timing"]["vs_rmd"][label] <= 1.0,
                        "memory_le_4x_model_above_plain": mem,
                        "memory_flat_in_BM": flat})
    return out


def to_markdown(sizes: list[dict], meta: dict) -> str:
    """The tables written to ``cost.md``."""
    lines = ["# Cost of HPO-SGLD on CPU (per-weight L1, MLPs of 1e4 to 1e7 weights)", "",
             f"{meta['machine']}; torch {meta['torch']}; {meta['threads']} thread; "
             f"batch {meta['batch']} (train and validation); B+M = n_inner = "
             f"{sizes[0]['steps']}; medians of interleaved repeats; smoke={meta['smoke']}.", "",
             "## Time", "",
             "CPU time of the process (ms, median); in brackets the ratio to a plain step, "
             "then the same ratio from wall-clock medians.", "",
             "| weights | plain step (ms) | sgld step damped | sgld step paper "
             "| sgld step paper+closed form |",
             "|---:|---:|---:|---:|---:|"]
    for s in sizes:
        t = s["timing"]
        cells = [f"{1e3 * t['inner_step_s'][l]:.2f} ({t['inner_ratio'][l]:.2f}x; wall "
                 f"{t['inner_ratio_wall'][l]:.2f}x)" for l in SGLD]
        lines.append(f"| {s['n_weights']:,} | {1e3 * t['plain_step_s']:.2f} | " + " | ".join(cells)
                     + " |")
    lines += ["", "One outer iteration at equal inner steps, CPU ms; in brackets sgld / rmd "
              "(CPU; wall).", "",
              "| weights | sgld damped | sgld paper | sgld paper+closed | rmd | ift-cg |",
              "|---:|---:|---:|---:|---:|---:|"]
    for s in sizes:
        t = s["timing"]
        cells = [f"{1e3 * t['outer_s'][l]:.1f} ({t['vs_rmd'][l]:.2f}; {t['vs_rmd_wall'][l]:.2f})"
                 for l in SGLD]
        cells += [f"{1e3 * t['outer_s'][l]:.1f}" for l in ("rmd", "ift-cg")]
        lines.append(f"| {s['n_weights']:,} | " + " | ".join(cells) + " |")
    lines += ["", "## Memory", "",
              "Peak RSS of one hypergradient above the post-setup baseline, fresh process per "
              "row; `above plain` subtracts the peak of the same number of plain training "
              "steps; `x` = multiples of the model bytes.", "",
              "| weights | model (MiB) | method | B+M | peak (MiB) | above plain (MiB) "
              "| above plain (x model) |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for s in sizes:
        for r in s["memory"]:
            if "error" in r:
                lines.append(f"| {s['n_weights']:,} | | {r['label']} | {r['steps']} | error | | |")
                continue
            above = r["hyper_peak_bytes"] - r["plain_peak_bytes"]
            lines.append(f"| {s['n_weights']:,} | {r['model_bytes'] / MIB:.2f} | {r['label']} "
                         f"| {r['steps']} | {r['hyper_peak_bytes'] / MIB:.1f} "
                         f"| {above / MIB:.1f} | {above / r['model_bytes']:.2f} |")
    if any("breakdown_s" in s for s in sizes):
        lines += ["", "## Pieces of one sgld step (closed-form paper path)", "",
                  "Median CPU ms; in brackets the multiple of a plain step.", "",
                  "| weights | piece | ms | x plain |", "|---:|---|---:|---:|"]
        for s in sizes:
            parts = s.get("breakdown_s", {})
            for name, value in parts.items():
                lines.append(f"| {s['n_weights']:,} | {name} | {1e3 * value:.2f} "
                             f"| {value / parts['plain step']:.2f} |")
    lines += ["", "## Goals", "",
              "| weights | variant | inner step <= 2x plain | outer <= rmd "
              "| memory <= 4x model above plain | flat in B+M (10%) |",
              "|---:|---|---|---|---|---|"]
    names = {True: "yes", False: "no", None: "not measured"}
    for v in meta["verdicts"]:
        cells = [names[v[k]] for k in ("inner_step_le_2x_plain", "outer_le_rmd",
                                       "memory_le_4x_model_above_plain", "memory_flat_in_BM")]
        lines.append(f"| {v['n_weights']:,} | {v['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average at start / end: {meta['load_start']} / {meta['load_end']} "
              f"(other processes share the 2 cores); total {meta['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every size, print the tables and write the results."""
    import argparse

    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--sizes", nargs="*", type=float, default=None,
                        help="only these target weight counts of the plan (e.g. 1e6)")
    parser.add_argument("--tag", default="",
                        help="suffix of the result files (e.g. 'before' for a run of an "
                             "older checkout put first on PYTHONPATH)")
    parser.add_argument("--no-memory", action="store_true",
                        help="timings only (no per-configuration memory processes)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the pieces of one sgld step (closed-form path)")
    args = parse_args(parser, argv)
    started = time.perf_counter()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sizes = []
    specs = [s for s in plan() if args.sizes is None or s["target"] in args.sizes]
    for spec in specs:
        width = _mlp.width_for(spec["target"])
        print(f"== {_mlp.count(width):,} weights (width {width})", flush=True)
        timing = time_size(width, spec["steps"], spec["repeats"])
        print("   plain step {:.2f} ms; inner ratios {}; sgld/rmd {}".format(
            1e3 * timing["plain_step_s"],
            {k: round(v, 2) for k, v in timing["inner_ratio"].items()},
            {k: round(v, 2) for k, v in timing["vs_rmd"].items()}), flush=True)
        memory = [] if args.no_memory else memory_size(width, spec["memory_steps"])
        sizes.append({"target": spec["target"], "width": width, "n_weights": _mlp.count(width),
                      "steps": spec["steps"], "timing": timing, "memory": memory})
        if args.breakdown:
            sizes[-1]["breakdown_s"] = breakdown_size(width, 5 * spec["repeats"])
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": _mlp.BATCH,
        "smoke": is_smoke(),
        "verdicts": verdicts(sizes),
        "load_start": load_start,
        "load_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "total_s": time.perf_counter() - started,
    }
    # The tag goes before the smoke suffix, so that smoke outputs stay *_smoke.* (ignored).
    stem = result_stem("cost" + (f"_{args.tag}" if args.tag else ""), args.out_dir)
    text = to_markdown(sizes, meta)
    write_results(stem, {"meta": meta, "sizes": sizes}, text)
    print()
    print(text)


if __name__ == "__main__":
    main()
