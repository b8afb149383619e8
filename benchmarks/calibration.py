"""Calibration of the refit net against SGLD posterior ensembles (digits, per-weight L1).

Per seed: a stratified split of digits (bundled with scikit-learn) into a small training
set and a test set of the rest; ``SGLDHyperTuner`` learns one L1 strength per weight of a
64-128-10 ReLU MLP (``sgld_tuner.demo``). The search does not depend on the net's
``max_epochs`` (the folds run SGLD chains of ``n_outer * (B + M)`` steps), so one search
serves two refit regimes:

* ``short``: the tuner's own refit, ``best_estimator_`` (``max_epochs`` as configured);
* ``long``: the same learned net refit for more epochs (built as the tuner builds its
  refit net, ``make_learned_net``, seeded), to see the other side of convergence.

From each refit net, at the learned strengths, SGLD chains on all training rows give

* ``refit net``: the net itself;
* ``refit net + chain steps (SGD)``: the last state of a noise-free chain
  (``noise_scale=0``), i.e. the refit net trained on for as many minibatch steps as the
  ensembles' last member; it separates "more training" from "averaging";
* ``SGD-trajectory ensemble``: every kept state of that noise-free chain;
* ``posterior ensemble (tau=tuner)``: what ``refit="ensemble"`` gives, at the tuner's
  temperature;
* ``posterior ensemble (tau=1/n)``: the temperature at which ``exp(-L_T / tau)`` with a
  mean training loss over ``n`` rows is the Bayesian posterior (penalty as the prior).

Reported on the test rows: accuracy, negative log-likelihood and ECE (15 equal-width
bins), mean +- std over seeds. The paper's Table 11 ECE row (miniImageNet 5-way 1-shot,
a different task and model) is printed as context only.

Usage::

    python benchmarks/calibration.py                   # 5 seeds, ~5 min on 2 shared cores
    python benchmarks/calibration.py --smoke           # 1 seed, tiny search, seconds

Writes ``benchmarks/results/calibration.{json,md}`` (``calibration_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.calibration import calibration_report
from sgld_tuner.ensemble import PosteriorEnsemble, collect_posterior_samples
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.learned_net import make_learned_net

from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

# Paper Table 11 (miniImageNet 5-way 1-shot; ECE in percent), quoted as context only.
PAPER_TABLE_11 = {"MAML": 3.80, "BMAML": 2.40, "HPO-SGLD": 2.35}

ROWS = ["refit net", "refit net + chain steps (SGD)", "SGD-trajectory ensemble",
        "posterior ensemble (tau=tuner)", "posterior ensemble (tau=1/n)"]


def config(smoke: bool) -> dict:
    """Search, refit and chain settings; ``regimes`` maps a name to refit epochs."""
    if smoke:
        return {"seeds": [0], "n_train": 150, "regimes": {"short": 2, "long": 4},
                "n_outer": 2, "cv": 2, "eval_every": 2, "n_samples": 2, "burn_in": 2,
                "thin": 2}
    return {"seeds": [0, 1, 2, 3, 4], "n_train": 300, "regimes": {"short": 80, "long": 300},
            "n_outer": 40, "cv": 3, "eval_every": 5, "n_samples": 20, "burn_in": 50,
            "thin": 10}


def score_regime(tuner, net, X, y, X_test, y_test, cfg, seed) -> dict:
    """The three chains from ``net`` and the five rows of the report on the test set."""
    common = dict(n_samples=cfg["n_samples"], burn_in=cfg["burn_in"], thin=cfg["thin"],
                  inner_lr=float(net.lr), batch_size=net.batch_size, random_state=seed)
    sampler = tuner.sampler or SamplerSettings()  # None: the defaults
    chains, chain_s = {}, {}
    tau_tuner = sampler.temperature_for(len(X))  # as the tuner's refit ensemble draws
    for label, tau, kappa in [("sgd", tau_tuner, 0.0),
                              ("tuner", tau_tuner, sampler.noise_scale),
                              ("bayes", 1.0 / len(X), sampler.noise_scale)]:
        started = time.perf_counter()
        chains[label] = collect_posterior_samples(net, tuner.hyperparams, tuner.best_params_,
                                                  X, y, temperature=tau, noise_scale=kappa,
                                                  **common)
        chain_s[label] = time.perf_counter() - started
    sgd = chains["sgd"]
    models = dict(zip(ROWS, [
        net,
        # sharing sgd's net is safe: every prediction loads its own samples first
        PosteriorEnsemble(sgd.net, sgd.samples[-1:], classes=sgd.classes),
        sgd,
        chains["tuner"],
        chains["bayes"],
    ]))
    started = time.perf_counter()
    table = calibration_report(models, X_test, y_test)
    return {"epochs": int(net.max_epochs),
            "chain_s": {k: round(v, 2) for k, v in chain_s.items()},
            "predict_all_rows_s": round(time.perf_counter() - started, 2),
            "rows": table.to_dict(orient="records")}


def run_seed(seed: int, cfg: dict) -> dict:
    """Tune once, then score both refit regimes."""
    X_train, X_test, y_train, y_test = load_data(cfg["n_train"], random_state=seed)
    regimes = list(cfg["regimes"].items())
    started = time.perf_counter()
    tuner = SGLDHyperTuner(make_net(max_epochs=regimes[0][1]),
                           {"l1": PerWeightL1(init=1e-4)}, n_outer=cfg["n_outer"],
                           cv=cfg["cv"], random_state=seed,
                           sampler=SamplerSettings(burn_in=5, n_samples=5),
                           outer=OuterSettings(eval_every=cfg["eval_every"]))
    tuner.fit(X_train, y_train)
    fit_s = time.perf_counter() - started

    # The tuner trained its nets on float32 inputs and on labels encoded 0..C-1.
    X = np.asarray(X_train, dtype=np.float32)
    y = np.searchsorted(tuner.classes_, y_train)
    X_test = np.asarray(X_test, dtype=np.float32)
    y_test = np.searchsorted(tuner.classes_, y_test)
    out = {"seed": seed, "n_train": len(X), "n_test": len(X_test), "fit_s": round(fit_s, 2),
           "refit_s": round(tuner.refit_time_, 2),
           "mean_l1": float(np.mean(np.concatenate(
               [np.ravel(v) for v in tuner.best_params_["l1"].values()]))),
           "regimes": {}}
    for name, epochs in regimes:
        if epochs == tuner.best_estimator_.max_epochs:
            net = tuner.best_estimator_
        else:
            net = make_learned_net(tuner.estimator, tuner.hyperparams, tuner.best_params_)
            net.set_params(max_epochs=epochs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net.fit(X, y)
        out["regimes"][name] = score_regime(tuner, net, X, y, X_test, y_test, cfg, seed)
    return out


def summarise(runs: list[dict], regime: str) -> list[dict]:
    """Mean and std over seeds of every metric, per row, for one regime; paired ECE gaps."""
    out = []
    for name in ROWS:
        rows = [r for run in runs for r in run["regimes"][regime]["rows"] if r["model"] == name]
        entry = {"model": name, "n_seeds": len(rows)}
        for metric in ("accuracy", "nll", "ece"):
            values = np.array([r[metric] for r in rows])
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        # Paired by seed (same split, same refit net): seed-to-seed spread in ECE is
        # larger than the differences between rows, so the paired difference is the test.
        for ref_name, key in [("refit net", "refit"), ("refit net + chain steps (SGD)", "sgd")]:
            ref = [r for run in runs for r in run["regimes"][regime]["rows"]
                   if r["model"] == ref_name]
            diff = np.array([r["ece"] - q["ece"] for r, q in zip(rows, ref)])
            entry[f"ece_minus_{key}_mean"] = float(diff.mean())
            entry[f"ece_minus_{key}_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
            entry[f"ece_lower_than_{key}_seeds"] = int((diff < 0).sum())
        out.append(entry)
    return out


def markdown(cfg: dict, runs: list[dict], summaries: dict, smoke: bool) -> str:
    chain_steps = cfg["burn_in"] + cfg["thin"] * cfg["n_samples"]
    lines = [
        "# Calibration: refit net vs SGLD posterior ensembles (digits, per-weight L1)",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; 1 thread; "
        f"smoke={smoke}. Digits, {runs[0]['n_train']} training rows (stratified), "
        f"{runs[0]['n_test']} test rows; 64-128-10 ReLU MLP, SGD lr 0.1 (no momentum), "
        f"batch 64; SGLDHyperTuner with PerWeightL1 (n_outer={cfg['n_outer']}, B=M=5, "
        f"cv={cfg['cv']}, temperature 'auto': tau = min(1e-4, 1e-2 / n) on a chain's "
        f"n rows, {SamplerSettings().temperature_for(runs[0]['n_train']):.2g} for the "
        "ensembles' chains, kappa=1). "
        "Chains from the refit net at the learned "
        f"strengths, lr 0.1, batch 64: burn-in {cfg['burn_in']}, thin {cfg['thin']}, "
        f"{cfg['n_samples']} members ({chain_steps} minibatch steps). Seeds {cfg['seeds']} "
        "(split, tuner, refit and chains); mean +- std over seeds; ECE with 15 bins.",
    ]
    for regime, summary in summaries.items():
        epochs = cfg["regimes"][regime]
        lines += [
            "",
            f"## Refit for {epochs} epochs ({regime})",
            "",
            "| model | test accuracy | test NLL | test ECE (%) | ECE - refit net (pp, paired) "
            "| ECE - refit net + chain steps (pp, paired) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        n = len(runs)
        for s in summary:
            lines.append(f"| {s['model']} | {s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f} "
                         f"| {s['nll_mean']:.3f} +- {s['nll_std']:.3f} | "
                         f"{100 * s['ece_mean']:.2f} +- {100 * s['ece_std']:.2f} | "
                         f"{100 * s['ece_minus_refit_mean']:+.2f} +- "
                         f"{100 * s['ece_minus_refit_std']:.2f} "
                         f"(lower in {s['ece_lower_than_refit_seeds']}/{n}) | "
                         f"{100 * s['ece_minus_sgd_mean']:+.2f} +- "
                         f"{100 * s['ece_minus_sgd_std']:.2f} "
                         f"(lower in {s['ece_lower_than_sgd_seeds']}/{n}) |")
        lines += ["", "ECE (%) per seed:", "",
                  "| seed | " + " | ".join(ROWS) + " |", "|---:|" + "---:|" * len(ROWS)]
        for run in runs:
            by = {r["model"]: r for r in run["regimes"][regime]["rows"]}
            lines.append(f"| {run['seed']} | "
                         + " | ".join(f"{100 * by[m]['ece']:.2f}" for m in ROWS) + " |")
    fit = np.mean([r["fit_s"] for r in runs])
    refit = np.mean([r["refit_s"] for r in runs])
    first = next(iter(cfg["regimes"]))
    chain = np.mean([r["regimes"][first]["chain_s"]["tuner"] for r in runs])
    predict = np.mean([r["regimes"][first]["predict_all_rows_s"] for r in runs])
    lines += [
        "",
        "## Cost and context",
        "",
        f"Wall seconds, mean over seeds, on a shared machine: tuner fit {fit:.1f} (of which "
        f"the {cfg['regimes'][first]}-epoch refit {refit:.2f}); one chain of {chain_steps} "
        f"steps {chain:.2f}; scoring the five rows on the test set "
        f"({2 + 3 * cfg['n_samples']} forward passes over {runs[0]['n_test']} rows) "
        f"{predict:.2f}.",
        "",
        "Context only, a different task and model: the paper's Table 11 reports ECE on "
        "miniImageNet 5-way 1-shot meta-learning: "
        + ", ".join(f"{k} {v:.2f}%" for k, v in PAPER_TABLE_11.items())
        + ". Those numbers are not comparable with the tables above.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    cfg = config(is_smoke())
    started = time.perf_counter()
    runs = []
    for seed in cfg["seeds"]:
        run = run_seed(seed, cfg)
        runs.append(run)
        for regime, res in run["regimes"].items():
            print(f"seed {seed} {regime}: " + "; ".join(
                f"{r['model']}: acc {r['accuracy']:.4f} nll {r['nll']:.3f} "
                f"ece {100 * r['ece']:.2f}%" for r in res["rows"]), flush=True)
    summaries = {regime: summarise(runs, regime) for regime in cfg["regimes"]}
    text = markdown(cfg, runs, summaries, is_smoke())
    print(text)
    write_results(result_stem("calibration", args.out_dir),
                  {"config": cfg, "summary": summaries, "runs": runs,
                   "total_wall_s": round(time.perf_counter() - started, 1),
                   "paper_table_11_ece_percent": PAPER_TABLE_11,
                   "paper_table_11_task": "miniImageNet 5-way 1-shot (not comparable)"}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
