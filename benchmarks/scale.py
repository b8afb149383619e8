"""The tuner's defaults at 32k and 128k training rows, against a 3 x 3 grid (issue 22).

Question: with its defaults (the race of the net's lr, ``sgld_tuner.search.Race``), does
``SGLDHyperTuner`` pick an lr whose test accuracy is within the seed std of the choice of
a 3 lr x 3 weight-decay ``GridSearchCV``, at <= 1/3 of the grid's CPU, with a peak memory
at 128k rows within 1.5 x that of one plain fit?

Set-up, per size ``n`` and seed:

* data: ``make_classification(n + 10000, n_features=50, n_informative=20,
  n_redundant=10, n_classes=10, n_clusters_per_class=2, random_state=seed)``, float32;
  the last 10,000 rows (the draw is shuffled) are the held-out test rows, the first
  ``n`` the training rows;
* net: skorch ``NeuralNetClassifier`` over an MLP 50-256-256-10 with ReLU,
  ``criterion=CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.05, max_epochs=40,
  batch_size=128, train_split=None, verbose=0``; cv=3 everywhere.

Methods, on the same seeds:

* ``plain fit``: the net fit once on all training rows;
* ``tuner (defaults)``: ``SGLDHyperTuner(net, {"l1": PerWeightL1()}, cv=3,
  random_state=seed)``, everything else default (the race); its picked lr is
  ``best_params_["lr"]``; warnings (``UndertrainedWarning``, ``RaceWarning``) recorded;
* ``control (n_outer=1)``: the same tuner with ``n_outer=1`` (nothing searched or raced);
* ``GridSearchCV 3 lr x 3 wd``: ``lr`` in {0.05/3, 0.05, 0.15} x
  ``optimizer__weight_decay`` in {0, 1e-3, 1e-2}, cv=3, ``n_jobs=1``, refit.

Measured per (n, seed, method), each in a fresh child process with one torch thread
(so peaks do not mix): test accuracy, CPU seconds of the fit (``time.process_time()``),
wall seconds, the picked lr, and the peak RSS over the fit (the kernel's peak mark is
reset after imports and data, so the peak is the process's resident memory during the
fit: imports + data + what the method allocates; "above setup" subtracts the RSS before
the fit). glibc's default allocator settings are kept (as a user runs it). The results
are rewritten after every (n, seed, method), merged with the rows already in the output
(same ``n, seed, method`` replaced), so a cut run still leaves a table.

Usage::

    python benchmarks/scale.py                                   # 32k and 128k, 3 seeds
    python benchmarks/scale.py --sizes 32768 --seeds 3 --methods plain,tuner,grid
    python benchmarks/scale.py --sizes 131072 --seeds 1 --methods plain,tuner
    python benchmarks/scale.py --sizes 8192 --methods plain,control,off,off-cold,off-fixed
                                                 # the chains' temperature (race off)
    python benchmarks/scale.py --smoke                           # 600 rows, seconds

``--methods`` takes any of ``plain, tuner, control, grid, off, off-cold, off-fixed``;
``--seeds`` a count (seeds 0..N-1) or a list (``1,2``); ``--stop-at HH:MM`` (UTC) starts
nothing after that time;
``--render-only`` rewrites the markdown from the JSON. Each row records the package
commit it ran (``code``). Writes
``benchmarks/results/scale.{json,md}`` (``scale_smoke.*`` in smoke mode); ``--fresh``
starts a new table instead of merging.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import (add_common_args, is_smoke, parse_args, report_child,  # noqa: E402
                      result_stem, tuner_kwargs, write_results)

N_TEST = 10_000
LR, MAX_EPOCHS, BATCH, HIDDEN = 0.05, 40, 128, 256
GRID_LRS = (LR / 3, LR, LR * 3)
GRID_WDS = (0.0, 1e-3, 1e-2)
CV = 3
MIB = 2.0 ** 20
WARNING_LETTERS = {"UndertrainedWarning": "U", "RaceWarning": "R", "DivergenceWarning": "D",
                   "UnmovedSearchWarning": "N", "OverfittingWarning": "O",
                   "SearchInterrupted": "I"}
METHODS = {"plain": "plain fit", "tuner": "tuner (defaults)",
           "control": "control (n_outer=1)", "grid": "GridSearchCV 3 lr x 3 wd",
           # the chains' temperature at size: the search alone (no race), default tau and
           # a cold one
           "off": "race off (PlainSearch())", "off-cold": "race off, temperature 1e-6",
           "off-fixed": "race off, temperature 1e-4 (the fixed default before 'auto')"}
TEMPERATURE_STUDY = {"off": {}, "off-cold": {"temperature": 1e-6},
                     "off-fixed": {"temperature": 1e-4}}


class MLP(torch.nn.Module):
    """``n_in -> hidden -> hidden -> n_out`` with ReLU."""

    def __init__(self, n_in=50, n_out=10, hidden=HIDDEN):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, n_out))

    def forward(self, X):
        return self.net(X)


def load(n: int, seed: int, smoke: bool):
    """Training rows (the first ``n``) and held-out test rows of one draw."""
    from sklearn.datasets import make_classification

    n_test = 300 if smoke else N_TEST
    X, y = make_classification(n + n_test, n_features=50, n_informative=20, n_redundant=10,
                               n_classes=10, n_clusters_per_class=2, random_state=seed)
    X, y = X.astype(np.float32), y.astype(np.int64)
    return X[:n], y[:n], X[n:], y[n:]


def make_net(smoke: bool):
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(
        # Logits out, so cross-entropy (skorch's default NLLLoss wants probabilities).
        MLP, module__hidden=16 if smoke else HIDDEN, criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD, lr=LR,
        max_epochs=2 if smoke else MAX_EPOCHS, batch_size=BATCH, train_split=None,
        verbose=0)


def make_method(method: str, seed: int, smoke: bool):
    from sklearn.model_selection import GridSearchCV

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.search import Race

    small = tuner_kwargs(dict(n_outer=2, burn_in=1, n_samples=1)) if smoke else {}
    race = Race(n_lrs=3, extend=0) if smoke else None  # None: the tuner's default race
    if method == "plain":
        return make_net(smoke)
    if method == "tuner":
        return SGLDHyperTuner(make_net(smoke), {"l1": PerWeightL1()}, cv=CV,
                              random_state=seed, schedule=race, **small)
    if method in TEMPERATURE_STUDY:
        from sgld_tuner import SamplerSettings
        from sgld_tuner.search import PlainSearch

        sampler = TEMPERATURE_STUDY[method]
        chains = {"sampler": SamplerSettings(**sampler)} if sampler else {}
        return SGLDHyperTuner(make_net(smoke), {"l1": PerWeightL1()}, cv=CV,
                              random_state=seed, schedule=PlainSearch(), **{**small, **chains})
    if method == "control":
        return SGLDHyperTuner(make_net(smoke), {"l1": PerWeightL1()}, cv=CV,
                              random_state=seed, **{**small, "n_outer": 1})
    if method == "grid":
        cut = 2 if smoke else None
        return GridSearchCV(make_net(smoke), {
            "lr": list(GRID_LRS)[:cut],
            "optimizer__weight_decay": list(GRID_WDS)[:1 if smoke else None]},
            cv=CV, n_jobs=1)
    raise ValueError(f"unknown method {method!r}; one of {sorted(METHODS)}")


def tuner_details(est) -> dict:
    """Where a tuner's fit went: the refit's wall seconds, outer iterations, the lanes."""
    out = {"refit_wall_s": float(getattr(est, "refit_time_", np.nan))}
    cv = getattr(est, "cv_results_", None)
    if cv is not None:
        out["n_points"] = int(len(cv["mean_test_score"]))
        out["max_iteration"] = int(np.max(cv["iteration"])) if len(cv["iteration"]) else 0
        lrs = [p.get("lr") for p in cv["params"]] if "params" in cv else []
        raced = sorted({float(v) for v in lrs if v is not None})
        if raced:
            out["lrs_scored"] = raced
        if "iter" in cv:
            out["points_per_rung"] = {int(k): int(v) for k, v in
                                      zip(*np.unique(cv["iter"], return_counts=True))}
        if raced and "iter" in cv:
            # Per lane (lr) and rung: the mean cv score over the later half of its points
            # there, as the race compares lanes (Lane.rung_score), and the lane's best.
            lanes = {}
            for lr in raced:
                for rung in sorted(set(int(k) for k in cv["iter"])):
                    idx = [i for i, p in enumerate(cv["params"])
                           if p.get("lr") is not None and float(p["lr"]) == lr
                           and int(cv["iter"][i]) == rung]
                    if idx:
                        scores = np.asarray(cv["mean_test_score"], dtype=float)[idx]
                        lanes.setdefault(f"{lr:.4g}", {})[str(rung)] = {
                            "points": len(idx),
                            "later_half": float(np.mean(scores[len(scores) // 2:])),
                            "max": float(np.nanmax(scores)) if np.isfinite(scores).any()
                            else float("nan")}
            out["lanes"] = lanes
        best = getattr(est, "best_index_", None)
        if best is not None:
            out["best_score"] = float(est.best_score_)
            out["best_iteration"] = int(cv["iteration"][best])
    history = getattr(est, "history_", None)
    if history is not None:
        out["outer_iterations"] = int(len(history))
        # The trajectory over all lanes, in the order they ran (lanes run one after the
        # other within a rung): what the chains' losses and the L1 summary did.
        for column in ("param_l1", "outer_loss", "inner_loss", "mean_test_score"):
            if column in history:
                out[f"history_{column}"] = [round(float(v), 5) for v in history[column]]
        if "diverged" in history:
            out["diverged_iterations"] = int(np.sum(history["diverged"].astype(bool)))
    return out


def package_version() -> str:
    """The commit the package was imported at (``+dirty`` when sgld_tuner/ differs):
    that of the checkout ``sgld_tuner`` was imported from, which is not this script's
    when an installed package or ``PYTHONPATH`` points elsewhere."""
    import sgld_tuner

    root = os.path.dirname(os.path.dirname(os.path.abspath(sgld_tuner.__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "sgld_tuner"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def measure(n: int, seed: int, method: str) -> dict:
    """Fit one method on one (n, seed) in this process; its record (see the docstring)."""
    from _mlp import peak_rss_bytes, reset_peak, rss_bytes

    from sgld_tuner.search import RaceWarning
    from sgld_tuner.tuner import UndertrainedWarning

    smoke = is_smoke()
    torch.set_num_threads(1)
    code = package_version()
    X_tr, y_tr, X_te, y_te = load(n, seed, smoke)
    estimator = make_method(method, seed, smoke)
    gc.collect()
    exact = reset_peak()
    baseline = rss_bytes()
    torch.manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X_tr, y_tr)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = peak_rss_bytes()
    try:
        accuracy = float(estimator.score(X_te, y_te))
    except ValueError as exc:  # NaN predictions of a refit that diverged
        print(f"{method} n={n} seed={seed}: no score ({exc})", file=sys.stderr)
        accuracy = float("nan")
    chosen = getattr(estimator, "best_params_", None)
    if chosen is not None and "lr" in chosen:
        lr = float(chosen["lr"])
    else:  # the plain fit, and the control (nothing raced): the net's own lr
        lr = float(getattr(estimator, "estimator", estimator).lr)
    kinds = sorted({w.category.__name__ for w in caught})
    record = {
        "n": n, "seed": seed, "method": METHODS[method], "key": method,
        "test_accuracy": accuracy, "cpu_s": cpu, "wall_s": wall, "lr": lr,
        "peak_rss_bytes": peak, "setup_rss_bytes": baseline,
        "above_setup_bytes": peak - baseline, "peak_reset": exact,
        "warnings": kinds,
        "undertrained_warning": any(w.category is UndertrainedWarning for w in caught),
        "race_warning": any(w.category is RaceWarning for w in caught),
        "warning_messages": sorted({str(w.message)[:300] for w in caught})[:10],
        "code": code,
    }
    if chosen is not None and method == "grid":
        record["weight_decay"] = float(chosen.get("optimizer__weight_decay", np.nan))
    if method in ("tuner", "control", *TEMPERATURE_STUDY):
        record.update(tuner_details(estimator))
    return record


def run_child(n: int, seed: int, method: str) -> dict:
    """:func:`measure` in a fresh interpreter (one thread); its JSON record."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{n},{seed},{method}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"n": n, "seed": seed, "method": METHODS[method], "key": method,
                "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the table ---------------------------------------------------------------------------
def _mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.4f} ± {std:.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# The tuner's defaults at scale (issue 22)", "",
        "make_classification (10 classes, 50 features: 20 informative, 10 redundant, 2 "
        f"clusters per class), {meta['n_test']:,} held-out test rows; MLP 50-"
        f"{meta['hidden']}-{meta['hidden']}-10 ReLU, SGD lr {LR}, {meta['max_epochs']} "
        f"epochs, batches of {BATCH}; cv={CV}. Each (n, seed, method) in a fresh process, "
        "one torch thread. accuracy: test accuracy, mean ± std over seeds (one value: one "
        "seed). lr: the lr each seed's fit picked (grid: lr / weight decay). CPU: "
        "process_time of the fit, mean over seeds; / grid: over the grid's mean CPU on the "
        "same n. peak RSS: the process's resident peak during the fit (imports and data "
        "included), mean over seeds; / plain: over the plain fit's; above setup: the "
        "peak minus the RSS just before the fit. warned: seeds on which the fit warned "
        "(U: UndertrainedWarning, R: RaceWarning, D: DivergenceWarning, N: "
        "UnmovedSearchWarning, O: OverfittingWarning, I: SearchInterrupted).", "",
        "code: the package commit each seed's fit imported (the package changed while this "
        "table was measured; \"inferred\": from the run's start time and the commit times, "
        "for rows run before the script recorded it).", "",
        "| n | method | seeds | test accuracy | picked lr per seed | CPU s | CPU / grid "
        "| wall s | peak RSS MiB | / plain | above setup MiB | / plain | warned | code |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    sizes = sorted({r["n"] for r in rows})
    verdicts = []
    for n in sizes:
        mine = {key: sorted((r for r in rows if r["n"] == n and r.get("key") == key
                             and "error" not in r), key=lambda r: r["seed"])
                for key in METHODS}
        grid_cpu = np.mean([r["cpu_s"] for r in mine["grid"]]) if mine["grid"] else None
        plain = mine["plain"]
        plain_peak = np.mean([r["peak_rss_bytes"] for r in plain]) if plain else None
        plain_above = np.mean([r["above_setup_bytes"] for r in plain]) if plain else None
        for key, label in METHODS.items():
            got = mine[key]
            if not got and key in TEMPERATURE_STUDY:
                continue  # measured at some sizes only
            errors = [r for r in rows if r["n"] == n and r.get("key") == key and "error" in r]
            if not got:
                why = "error" if errors else meta.get("not_run", {}).get(
                    f"{n}/{key}", "not run (time)")
                lines.append(f"| {n:,} | {label} | 0 | {why} | | | | | | | | | | |")
                continue
            cpu = np.mean([r["cpu_s"] for r in got])
            peak = np.mean([r["peak_rss_bytes"] for r in got])
            above = np.mean([r["above_setup_bytes"] for r in got])
            if key == "grid":
                picks = ", ".join(f"{r['lr']:.3g} / {r.get('weight_decay', np.nan):g}"
                                  for r in got)
            else:
                picks = ", ".join(f"{r['lr']:.3g}" for r in got)
            warned = ["".join(WARNING_LETTERS.get(w, w) for w in r.get("warnings", []))
                      for r in got]
            n_warned = sum(bool(w) for w in warned)
            lines.append(
                f"| {n:,} | {label} | {len(got)} "
                f"| {_mean_std([r['test_accuracy'] for r in got])} | {picks} | {cpu:.0f} "
                f"| {cpu / grid_cpu:.2f} |" if grid_cpu else
                f"| {n:,} | {label} | {len(got)} "
                f"| {_mean_std([r['test_accuracy'] for r in got])} | {picks} | {cpu:.0f} "
                f"| n/a |")
            lines[-1] += (
                f" {np.mean([r['wall_s'] for r in got]):.0f} | {peak / MIB:.0f} "
                f"| {peak / plain_peak:.2f} |" if plain_peak else
                f" {np.mean([r['wall_s'] for r in got]):.0f} | {peak / MIB:.0f} | n/a |")
            lines[-1] += (f" {above / MIB:.0f} | {above / plain_above:.2f} |"
                          if plain_above else f" {above / MIB:.0f} | n/a |")
            lines[-1] += f" {n_warned}/{len(got)}" + (
                f" ({', '.join(w for w in warned if w)})" if n_warned else "") + " |"
            lines[-1] += f" {', '.join(_codes(got))} |"
        verdicts.append(_verdict(n, mine))
    lines += ["", "## Against the question", ""] + [v for v in verdicts if v]
    tuners = [r for r in rows if r.get("key") == "tuner" and "error" not in r]
    if tuners:
        lines += ["", "## Where the tuner's time went", "",
                  "Per tuner fit: the refit's wall seconds (one thread: about its CPU), the "
                  "rest of the fit (the race's lanes, the winner's continuation, scoring), "
                  "outer iterations over all lanes, scored points per rung, and per raced lr "
                  "its mean cv accuracy over the later half of its points in each rung it ran "
                  "(rungs as ``cv_results_['iter']`` tags the points: from 3057cec rung 0 "
                  "runs each lane to 1/9 of the refit's training budget, rung 1 the kept "
                  "lanes to 1/3 and rung 2 the best and the hedge to the full budget; before "
                  "it, two rungs: 1/3, then the full budget); best: the cv score and outer "
                  "iteration of the point refit (the rows after the current ones are the "
                  "superseded runs below; the 07479b9 seed 0 ran before the script recorded "
                  "these: lrs only).", "",
                  "| n | seed | code | CPU s | refit wall s | rest s | outer iterations "
                  "| points per rung | lr: cv accuracy per rung (0 / 1 / 2) | best |",
                  "|---:|---:|---|---:|---:|---:|---:|---|---|---|"]
        superseded = meta.get("superseded", [])
        for r in sorted(tuners, key=lambda r: (r["n"], r["seed"])) + superseded:
            lines.append(
                f"| {r['n']:,} | {r['seed']} | {r.get('code', 'not recorded')} "
                f"| {r['cpu_s']:.0f} | {r['refit_wall_s']:.0f} "
                f"| {r['cpu_s'] - r['refit_wall_s']:.0f} | {r.get('outer_iterations', '')} "
                f"| {r.get('points_per_rung', '')} | {_lanes(r)} "
                + (f"| {r['best_score']:.4f} @ {r['best_iteration']} |" if "best_score" in r
                   else "| not recorded |"))
    if meta.get("superseded"):
        lines += ["", "## Superseded rows (same seeds, earlier package code)", "",
                  "Rerun on a later commit and replaced in the table above; kept here "
                  "because the package changed between the two runs.", "",
                  "| n | seed | method | code | test accuracy | picked lr | CPU s "
                  "| peak RSS MiB | above setup MiB |", "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in meta["superseded"]:
            lines.append(
                f"| {r['n']:,} | {r['seed']} | {r['method']} | {r.get('code', 'not recorded')} "
                f"| {r['test_accuracy']:.4f} | {r['lr']:.3g} | {r['cpu_s']:.0f} "
                f"| {r['peak_rss_bytes'] / MIB:.0f} | {r['above_setup_bytes'] / MIB:.0f} |")
    messages = sorted({m for r in rows for m in r.get("warning_messages", [])})
    if messages:
        lines += ["", "Warnings seen:", ""] + [f"- {m}" for m in messages]
    if meta.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in meta["notes"]]
    lines += ["", f"Commands: {'; '.join(f'`{c}`' for c in meta['commands'])}. "
              f"Machine: {meta['machine']}; torch {meta['torch']}; smoke={meta['smoke']}; "
              f"CPU in children, all runs: {meta['cpu_children_s']:.0f} s.", ""]
    return "\n".join(lines)


def _codes(rows: list[dict]) -> list[str]:
    """The distinct package commits of ``rows``, in seed order."""
    seen = []
    for r in rows:
        if r.get("code", "not recorded") not in seen:
            seen.append(r.get("code", "not recorded"))
    return seen


def _lanes(r: dict) -> str:
    """``lr: rung-0 / rung-1 score`` per raced lr (the lrs alone for older records)."""
    if "lanes" not in r:
        return ", ".join(f"{v:.3g}" for v in r.get("lrs_scored", []))
    parts = []
    for lr, rungs in sorted(r["lanes"].items(), key=lambda kv: float(kv[0])):
        parts.append(f"{float(lr):.3g}: " + " / ".join(
            f"{rungs[k]['later_half']:.4f}" if k in rungs else "-"
            for k in sorted(set(rungs) | {"0", "1"})))
    return "; ".join(parts)


def _verdict(n: int, mine: dict) -> str | None:
    tuner, grid, plain = mine["tuner"], mine["grid"], mine["plain"]
    if not tuner:
        return None
    parts = [f"- n = {n:,}:"]
    if grid:
        by_seed = {r["seed"]: r for r in grid}
        pairs = [(t["test_accuracy"], by_seed[t["seed"]]["test_accuracy"])
                 for t in tuner if t["seed"] in by_seed]
        if pairs:
            diff = np.mean([a - b for a, b in pairs])
            stds = [np.std([r["test_accuracy"] for r in m], ddof=1)
                    for m in (tuner, grid) if len(m) > 1]
            std = max(stds) if stds else float("nan")
            within = ("n/a (one seed)" if not np.isfinite(std) else
                      ("yes" if abs(diff) <= std else "no"))
            parts.append(f"tuner - grid accuracy {diff:+.4f} on {len(pairs)} paired seed(s) "
                         f"(seed std, the larger of the two methods': {std:.4f}): within "
                         f"the seed std: {within};")
        ratio = np.mean([r["cpu_s"] for r in tuner]) / np.mean([r["cpu_s"] for r in grid])
        parts.append(f"CPU tuner / grid {ratio:.2f} (<= 1/3: {'yes' if ratio <= 1 / 3 else 'no'});")
    else:
        parts.append("no grid run at this size (accuracy and CPU ratio not measured);")
    if plain:
        ratio = (np.mean([r["peak_rss_bytes"] for r in tuner])
                 / np.mean([r["peak_rss_bytes"] for r in plain]))
        above = (np.mean([r["above_setup_bytes"] for r in tuner])
                 / np.mean([r["above_setup_bytes"] for r in plain]))
        parts.append(f"peak RSS tuner / plain fit {ratio:.2f} (<= 1.5: "
                     f"{'yes' if ratio <= 1.5 else 'no'}; above setup {above:.2f}).")
    return " ".join(parts)


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--sizes", default=None,
                        help="training rows, comma-separated (default 32768,131072)")
    parser.add_argument("--seeds", default=None,
                        help="N (seeds 0..N-1) or a list such as 1,2; default 3 (smoke: 1)")
    parser.add_argument("--methods", default=None,
                        help="of plain,tuner,control,grid (default plain,tuner,grid,control)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new table instead of merging with the one written")
    parser.add_argument("--in-process", action="store_true",
                        help="fit every method in this process (smoke default: no child "
                             "processes, so peaks are reset between methods but not isolated)")
    parser.add_argument("--stop-at", default=None,
                        help="UTC time HH:MM after which no new (n, seed, method) starts; "
                             "the ones left are marked not run")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the markdown from the JSON written, running nothing")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parse_args(parser, argv)
    if args.child:
        n, seed, method = args.child.split(",")
        print(json.dumps(measure(int(n), int(seed), method), default=float), flush=True)
        return
    smoke = is_smoke()
    sizes = [int(s) for s in (args.sizes or ("600" if smoke else "32768,131072")).split(",")]
    if args.seeds is not None and "," in args.seeds:  # a list of seeds: "1,2"
        seeds = [int(v) for v in args.seeds.split(",")]
    else:
        seeds = list(range(int(args.seeds) if args.seeds is not None else (1 if smoke else 3)))
    methods = (args.methods or "plain,tuner,grid,control").split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; one of {','.join(METHODS)}")
    in_process = args.in_process or smoke
    given = list(argv if argv is not None else sys.argv[1:])
    if "--out-dir" in given:  # where it wrote is no part of what it ran
        at = given.index("--out-dir")
        del given[at:at + 2]
    command = " ".join(["python benchmarks/scale.py"] + given)
    stem = result_stem("scale", args.out_dir)
    old = {}
    if not args.fresh and os.path.exists(stem + ".json"):
        with open(stem + ".json") as fh:
            old = json.load(fh)
    rows = old.get("rows", [])
    meta = {
        "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs (shared)",
        "torch": torch.__version__, "smoke": smoke, "n_test": 300 if smoke else N_TEST,
        "hidden": 16 if smoke else HIDDEN, "max_epochs": 2 if smoke else MAX_EPOCHS,
        "commands": old.get("meta", {}).get("commands", []) + [command.strip()],
        "not_run": old.get("meta", {}).get("not_run", {}),
        "superseded": old.get("meta", {}).get("superseded", []),
        "notes": old.get("meta", {}).get("notes", []),
        "cpu_children_prior_s": old.get("meta", {}).get("cpu_children_s", 0.0),
    }
    meta["cpu_children_s"] = meta["cpu_children_prior_s"]
    if args.render_only:
        meta["commands"] = meta["commands"][:-1]
        text = to_markdown(rows, meta)
        write_results(stem, None, text)
        print(text)
        return
    torch.set_num_threads(1)

    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    own_started = time.process_time()
    for n in sizes:
        for seed in seeds:
            for method in methods:
                if args.stop_at and time.strftime("%H:%M", time.gmtime()) >= args.stop_at:
                    print(f"{method} n={n} seed={seed}: not started (past {args.stop_at} UTC)")
                    continue
                row = measure(n, seed, method) if in_process else run_child(n, seed, method)
                rows = [r for r in rows if (r["n"], r["seed"], r.get("key"))
                        != (n, seed, method)] + [row]
                report_child(row, f"{method} n={n} seed={seed}", lambda r: (
                    f"n={r['n']} seed={r['seed']} {r['method']:26s} acc {r['test_accuracy']:.4f}"
                    f"  lr {r['lr']:.4g}  CPU {r['cpu_s']:.1f} s  wall {r['wall_s']:.1f} s"
                    f"  peak {r['peak_rss_bytes'] / MIB:.0f} MiB"
                    f" (+{r['above_setup_bytes'] / MIB:.0f})  warnings {r['warnings']}"))
                spent = children_cpu() + (time.process_time() - own_started if in_process
                                          else 0.0)
                meta["cpu_children_s"] = meta["cpu_children_prior_s"] + spent
                text = to_markdown(rows, meta)
                write_results(stem, {"meta": meta, "rows": rows}, text)
    text = to_markdown(rows, meta)
    write_results(stem, {"meta": meta, "rows": rows}, text)
    print("\n" + text)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
