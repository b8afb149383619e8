"""Peak memory of one hypergradient against the number of inner steps ``B + M``.

HPO-SGLD's recursion carries only ``theta``, ``g`` and ``h`` forward, so its memory should
not depend on ``B + M`` (paper Table 1, Supplement C.2); reverse-mode differentiation (RMD)
keeps the whole unrolled graph, so its memory grows linearly with the steps.

Problem: an MLP of about 1M weights (``benchmarks/_mlp.py``) with one L1 hyperparameter
per weight (``lam`` shaped like ``theta``); inner loss = minibatch cross-entropy on
synthetic data + ``sum lam * |theta|``, outer loss = validation cross-entropy.

Every configuration runs in a fresh interpreter, one thread, and reports the peak RSS of
one hypergradient above the RSS after setup (the kernel's peak mark is reset first), next
to the peak of the same number of plain training steps taken in the same process.

Usage::

    python benchmarks/memory.py              # ~1M weights, B + M in {10, 50, 200}
    python benchmarks/memory.py --smoke   # ~2e4 weights, one method, B + M in {10, 30}

Writes ``benchmarks/results/memory.json`` and ``benchmarks/results/memory.md``
(``memory_smoke.*`` in smoke mode, so a smoke run never overwrites the full results).
"""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _mlp  # noqa: E402
from _results import (add_common_args, is_smoke, parse_args, report_child, result_stem,  # noqa: E402
                      write_results)

LABELS = ["sgld-damped", "sgld-damped-closed", "sgld-paper", "sgld-paper-closed", "rmd"]
MIB = 2.0 ** 20


def plan() -> tuple[int, list[int]]:
    """Hidden width and the ``B + M`` values to run (small in smoke mode)."""
    if is_smoke():
        return _mlp.width_for(2e4), [10, 30]
    return _mlp.width_for(1e6), [10, 50, 200]


def growth(rows: list[dict], label: str) -> float | None:
    """Relative change of the hypergradient peak from the fewest to the most steps."""
    mine = sorted((r for r in rows if r["label"] == label and "hyper_peak_bytes" in r),
                  key=lambda r: r["steps"])
    if len(mine) < 2 or mine[0]["hyper_peak_bytes"] <= 0:
        return None
    return mine[-1]["hyper_peak_bytes"] / mine[0]["hyper_peak_bytes"] - 1.0


def to_markdown(rows: list[dict], meta: dict) -> str:
    """The table written to ``memory.md``."""
    lines = [
        f"# Peak memory of one hypergradient ({meta['n_weights']:,} weights, "
        f"{meta['n_weights']:,} L1 hyperparameters)",
        "",
        f"Model bytes (theta, float32): {meta['model_bytes'] / MIB:.2f} MiB. "
        "Peaks are RSS above the post-setup baseline, fresh process per row, 1 thread; "
        "`x model` divides by the model bytes. `plain` is the peak of the same number of "
        "plain SGD steps in the same process; `above plain` = hypergradient - plain.",
        "",
        "| method | B+M | hypergradient peak (MiB) | x model | plain peak (MiB) "
        "| above plain (x model) | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['steps']} | error | | | | |")
            continue
        model = r["model_bytes"]
        lines.append(
            f"| {r['label']} | {r['steps']} | {r['hyper_peak_bytes'] / MIB:.1f} "
            f"| {r['hyper_peak_bytes'] / model:.2f} | {r['plain_peak_bytes'] / MIB:.1f} "
            f"| {(r['hyper_peak_bytes'] - r['plain_peak_bytes']) / model:.2f} "
            f"| {r['wall_s']:.2f} |")
    lines += ["", "Growth of the hypergradient peak from the fewest to the most steps:", ""]
    for label, value in meta["growth"].items():
        shown = "n/a" if value is None else f"{100 * value:+.1f}%"
        lines.append(f"- {label}: {shown}")
    lines += ["", f"Machine: {meta['machine']}; torch {meta['torch']}; threads 1; "
              f"MALLOC_MMAP_THRESHOLD_={meta['mmap_threshold']}; "
              f"smoke={meta['smoke']}; total {meta['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in its own process, print the table and write the results."""
    import argparse

    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    started = time.perf_counter()
    width, step_list = plan()
    rows = []
    # Smoke mode: one method, to stay within seconds (each row is a fresh interpreter,
    # importing torch); the full run measures all of them.
    labels = ["sgld-paper-closed"] if is_smoke() else LABELS
    for steps in step_list:
        for label in labels:
            row = _mlp.run_child(label, steps, width)
            rows.append(row)
            report_child(row, f"{label} B+M={steps}", lambda r: (
                f"{label:18s} B+M={steps:4d}  peak {r['hyper_peak_bytes'] / MIB:8.1f} MiB"
                f"  ({r['hyper_peak_bytes'] / r['model_bytes']:.2f} x model)"
                f"  plain {r['plain_peak_bytes'] / MIB:6.1f} MiB"))
    good = [r for r in rows if "error" not in r]
    meta = {
        "width": width,
        "n_weights": _mlp.count(width),
        "model_bytes": good[0]["model_bytes"] if good else None,
        "growth": {label: growth(rows, label) for label in labels},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536"),
        "smoke": is_smoke(),
        "total_s": time.perf_counter() - started,
    }
    text = to_markdown(rows, meta)
    write_results(result_stem("memory", args.out_dir), {"meta": meta, "rows": rows}, text)
    print()
    print(text)


if __name__ == "__main__":
    main()
