"""Few-shot sinusoid regression: meta-learning the initialisation (paper Sec. 4.4, small scale).

Tasks are ``y = A sin(x + phi)`` with ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``
(Finn et al. 2017). The model is a 1-40-40-1 ReLU MLP. Every method meta-learns its initial
weights ``lam`` (the MAML-type start ``theta0 = lam``) with the same inner loop length, inner
step, outer optimizer (Adam), outer iterations, meta-batch of tasks, task stream and seeds:

* HPO-SGLD, ``recursion="damped"`` (the core's default) and ``recursion="paper"`` (eq. 22),
  with the paper's few-shot settings (B, M) = (4, 1), kappa = 1e-4 (Supplement D.4), and the
  core's curvature guard (on by default for this lam-dependent start, bound
  ``eta * lambda_max <= 1``; ``sgld_tuner.core.curvature``): how often it acted and the
  largest ``eta * lambda_max`` it measured are reported per row;
* MAML (``method="rmd"``: exact reverse mode through the inner steps);
* first-order MAML (``method="rmd-fo"``);
* Reptile (Nichol et al. 2018; written here, it is not a hypergradient method);
* random initialisation (no meta-learning);
* HPO-SGLD (damped and eq. 22) once more "at its own (paper) settings": inner lr 0.5, outer
  Adam lr 0.0005, (B, M) = (4, 1), kappa = 1e-4, the numbers Supplement D.4 gives HPO-SGLD
  (for miniImageNet: the paper has no sinusoid experiment). Same seeds, task stream, outer
  iterations and meta-batch as the shared rows. Their meta-test adaptation uses their own
  inner lr (0.5) and the 5 steps they were trained with; the query MSE after adapting at the
  shared lr 0.01 is reported beside it for context. The shared rows' evaluation is unchanged.

Each outer step draws a meta-batch of tasks; each task is its own ``BilevelProblem`` (inner
loss: MSE on the K support points, outer loss: MSE on K query points), its hypergradient comes
from ``sgld_tuner.core.hypergradient``, the meta-batch average goes to Adam. Meta-test: adapt
the learned initialisation by the same plain gradient steps on the K support points of 1000
held-out tasks and measure MSE on 100 query points per task; mean +- std over seeds.

Run ``python benchmarks/fewshot_sinusoid.py`` (every row: about 8 min of CPU time on one core for
the shared-settings rows; the own-settings rows stop early, under a minute) or with
``--smoke`` (seconds). Writes ``benchmarks/results/fewshot_sinusoid.{json,md,png}``.
``--only-own`` runs the own-settings HPO-SGLD rows alone (no random-init row) and writes
``benchmarks/results/fewshot_sinusoid_own.{json,md,png}`` instead; ``--shared-only`` runs the
original rows alone (the committed ``fewshot_sinusoid.*``).
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings

import numpy as np
import torch
from torch.func import grad, vmap

from sgld_tuner.core import (BilevelProblem, ChainState, InnerSettings, hypergradient,
                             make_generator, make_outer_optimizer)
from sgld_tuner.core import _tree
from sgld_tuner.core.curvature import CurvatureWarning

from _plots import subplots
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

torch.set_num_threads(1)

CONFIG = {
    "shots": [5, 10],
    "seeds": [0, 1, 2, 3, 4],
    "n_outer": 500,
    "meta_batch": 4,
    "outer_lr": 1e-3,          # Adam, as in MAML's sinusoid experiment
    "inner_lr": 0.01,          # alpha of MAML's sinusoid experiment, for every method
    "inner_steps": 5,          # every method; HPO-SGLD: B + M = 4 + 1
    "burn_in": 4,
    "n_samples": 1,
    "temperature": 1.0,
    "noise_scale": 1e-4,       # kappa of Supplement D.4
    "n_query_train": None,     # None: K query points per training task (= the shot)
    "n_query_test": 100,
    "n_test_tasks": 1000,
    "n_val_tasks": 100,
    "eval_every": 25,
    "hidden": 40,
}
# Smoke run: one shot, one seed, a handful of outer steps; it checks the plumbing only.
SMOKE_CONFIG = {"shots": [5], "seeds": [0], "n_outer": 2, "meta_batch": 1, "n_test_tasks": 20,
                "n_val_tasks": 10, "eval_every": 2}

METHODS = {
    "HPO-SGLD (damped)": {"method": "sgld", "recursion": "damped"},
    "HPO-SGLD (paper eq. 22)": {"method": "sgld", "recursion": "paper"},
    "MAML (rmd)": {"method": "rmd"},
    "FO-MAML (rmd-fo)": {"method": "rmd-fo"},
    "Reptile": {"method": "reptile"},
}
RANDOM = "Random init (no meta-learning)"

# HPO-SGLD at the settings the paper gives it for few-shot learning (Supplement D.4, stated
# for miniImageNet): "For our HPO-SGLD, we use (B, M) = (4, 1) setting, the inner and outer
# loop learning rates are 0.5 and 0.0005, respectively, and we fix kappa = 10^{-4}."
# (B, M) = (4, 1) and kappa = 1e-4 are already the shared rows' values; only the two
# learning rates change. Meta-test adaptation uses this inner lr (each method's own).
OWN_SETTINGS = {"inner_lr": 0.5, "outer_lr": 5e-4, "burn_in": 4, "n_samples": 1,
                "noise_scale": 1e-4}
OWN_METHODS = {
    "HPO-SGLD (damped), own settings": {"method": "sgld", "recursion": "damped",
                                        "settings": OWN_SETTINGS},
    "HPO-SGLD (paper eq. 22), own settings": {"method": "sgld", "recursion": "paper",
                                              "settings": OWN_SETTINGS},
}

# Paper Table 6: miniImageNet 5-way accuracy (%), 4-conv net. Context only: a different
# dataset, model and metric (classification accuracy, higher is better).
PAPER_TABLE6 = {
    "MAML": ("48.70 ± 1.84", "63.11 ± 0.92"),
    "FO-MAML": ("48.07 ± 1.75", "53.59 ± 0.76"),
    "Reptile": ("49.97 ± 0.32", "59.31 ± 0.71"),
    "iMAML": ("48.96 ± 1.84", "54.24 ± 0.68"),
    "HPO-SGLD tau=1": ("50.38 ± 0.87", "64.22 ± 0.67"),
    "HPO-SGLD tau=0.5": ("50.36 ± 0.83", "63.94 ± 0.68"),
    "HPO-SGLD tau=0.1": ("50.30 ± 0.87", "64.15 ± 0.63"),
    "HPO-SGLD tau=0.01": ("50.29 ± 0.84", "64.39 ± 0.64"),
    "HPO-SGLD tau=0.001": ("50.28 ± 0.83", "63.51 ± 0.64"),
}


# --------------------------------------------------------------------------- model and tasks

def init_params(seed: int, hidden: int) -> list[torch.Tensor]:
    """PyTorch's default Linear init (uniform +-1/sqrt(fan_in)), seeded."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [((hidden, 1), 1), ((hidden,), 1), ((hidden, hidden), hidden), ((hidden,), hidden),
              ((1, hidden), hidden), ((1,), hidden)]
    return [(torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)
            for shape, fan_in in shapes]


def net(params, x):
    w1, b1, w2, b2, w3, b3 = params
    h = torch.relu(x @ w1.T + b1)
    h = torch.relu(h @ w2.T + b2)
    return h @ w3.T + b3


def mse(params, x, y):
    return ((net(params, x) - y) ** 2).mean()


def sample_tasks(gen: torch.Generator, n_tasks: int, n_support: int, n_query: int):
    """Support / query sets of ``n_tasks`` sinusoids, shaped (tasks, points, 1)."""
    amp = torch.rand(n_tasks, 1, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(n_tasks, 1, 1, generator=gen) * math.pi
    x = torch.rand(n_tasks, n_support + n_query, 1, generator=gen) * 10.0 - 5.0
    y = amp * torch.sin(x + phase)
    return x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:]


# --------------------------------------------------------------------------- evaluation

def adapted_query_mse(params, tasks, lr: float, record_steps: tuple[int, ...]):
    """Plain gradient steps on each task's support set; query MSE after each recorded step.

    Returns a (len(record_steps), n_tasks) tensor. The same evaluation for every method.
    """
    xs, ys, xq, yq = tasks
    params = [p.detach() for p in params]
    last = max(record_steps)

    def one_task(p, xs_t, ys_t, xq_t, yq_t):
        out = []
        for step in range(last + 1):
            if step in record_steps:
                out.append(mse(p, xq_t, yq_t))
            if step < last:
                g = grad(mse)(p, xs_t, ys_t)
                p = [a - lr * b for a, b in zip(p, g)]
        return torch.stack(out)

    with torch.no_grad():
        return vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).T


# --------------------------------------------------------------------------- meta-gradients

def maml_start(lam):
    return lam  # theta0 = lam: J0 = I (the core keeps the graph to lam)


def hypergradient_step(lam, spec, tasks, settings: InnerSettings, generator, guard=None):
    """Average over the meta-batch of per-task hypergradients (one BilevelProblem each).

    ``guard``: a list that receives, per task, the curvature guard's measured
    ``eta * lambda_max`` and whether it acted (HPO-SGLD only).
    """
    xs, ys, xq, yq = tasks
    total = [torch.zeros_like(t) for t in lam]
    outer = 0.0
    for i in range(xs.shape[0]):
        def inner_loss(lam_, theta, i=i):
            return mse(theta, xs[i], ys[i])

        def outer_loss(lam_, theta, i=i):
            return mse(theta, xq[i], yq[i])

        problem = BilevelProblem(outer_loss, inner_loss, spec, maml_start)
        with warnings.catch_warnings():
            # Counted below instead: the guard may act on hundreds of chains per run.
            warnings.simplefilter("ignore", CurvatureWarning)
            res = hypergradient(problem, lam, ChainState(), settings, generator)
        if guard is not None and "eta_lambda_max" in res.diagnostics:
            guard.append((res.diagnostics["eta_lambda_max"],
                          res.diagnostics["inner_lr_used"] != settings.inner_lr))
        total = [a + b for a, b in zip(total, res.grad)]
        outer += res.outer_loss
    n = xs.shape[0]
    return [t / n for t in total], outer / n


def reptile_step(lam, tasks, inner_lr: float, steps: int):
    """Reptile (Nichol et al. 2018): pseudo-gradient ``lam - mean_tasks(theta_task)``.

    Each task runs ``steps`` plain gradient steps from ``lam`` on all its points (Reptile has
    no support/query split: it sees the same 2K points the other methods see). The
    pseudo-gradient goes to the same Adam optimizer as the hypergradients.
    """
    xs, ys, xq, yq = tasks
    x = torch.cat([xs, xq], dim=1)
    y = torch.cat([ys, yq], dim=1)
    total = [torch.zeros_like(t) for t in lam]
    outer = 0.0
    for i in range(x.shape[0]):
        theta = [t.detach().clone().requires_grad_(True) for t in lam]
        for _ in range(steps):
            g = torch.autograd.grad(mse(theta, x[i], y[i]), theta)
            theta = [(t - inner_lr * gi).detach().requires_grad_(True) for t, gi in zip(theta, g)]
        with torch.no_grad():
            total = [a + (l.detach() - t) for a, l, t in zip(total, lam, theta)]
            outer += float(mse(theta, xq[i], yq[i]))
    n = x.shape[0]
    return [t / n for t in total], outer / n


def train(name: str, spec_cfg: dict, shot: int, seed: int, val_tasks, cfg: dict):
    """Meta-train one method; returns the learned init, a validation curve and timings.

    ``spec_cfg["settings"]`` (optional) overrides entries of ``cfg`` for this method (the
    own-settings rows: inner / outer lr); validation adapts at the method's own inner lr.
    """
    cfg = {**cfg, **spec_cfg.get("settings", {})}
    lam = [t.clone().requires_grad_(True) for t in init_params(seed, cfg["hidden"])]
    _, spec = _tree.flatten(lam)
    optimizer = make_outer_optimizer("adam", lam, cfg["outer_lr"])
    task_gen = torch.Generator().manual_seed(100_000 + 1_000 * shot + seed)  # same stream for all
    noise_gen = make_generator(seed)
    n_query = cfg["n_query_train"] or shot
    settings = None
    if spec_cfg["method"] != "reptile":
        settings = InnerSettings(
            method=spec_cfg["method"], recursion=spec_cfg.get("recursion", "damped"),
            inner_lr=cfg["inner_lr"], burn_in=cfg["burn_in"], n_samples=cfg["n_samples"],
            temperature=cfg["temperature"], noise_scale=cfg["noise_scale"],
            n_inner=cfg["inner_steps"]).validate()
        assert settings.steps == cfg["inner_steps"]

    def val_mse():
        return float(adapted_query_mse(lam, val_tasks, cfg["inner_lr"],
                                       (cfg["inner_steps"],))[0].mean())

    curve = [(0, val_mse())]
    cosines = []  # (iteration, cosine of this method's meta-gradient with MAML's exact one)
    exact = None
    if settings is not None and spec_cfg["method"] != "rmd":
        exact = InnerSettings(method="rmd", inner_lr=cfg["inner_lr"],
                              n_inner=cfg["inner_steps"]).validate()
    train_outer, status, guard = [], "completed", []
    started = time.perf_counter()
    for it in range(1, cfg["n_outer"] + 1):
        tasks = sample_tasks(task_gen, cfg["meta_batch"], shot, n_query)
        if settings is None:
            grads, outer = reptile_step(lam, tasks, cfg["inner_lr"], cfg["inner_steps"])
        else:
            grads, outer = hypergradient_step(lam, spec, tasks, settings, noise_gen, guard)
        if not (math.isfinite(outer) and all(bool(torch.isfinite(g).all()) for g in grads)):
            status = f"non-finite at outer iteration {it}; kept the last finite init"
            break
        if (it == 1 or it % cfg["eval_every"] == 0) and (exact is not None or settings is None):
            # Fidelity diagnostic (not used for the update; rmd draws no noise, so the SGLD
            # generator's stream is unchanged): same tasks, same lam, exact MAML meta-gradient.
            ref, _ = hypergradient_step(lam, spec, tasks, exact or InnerSettings(
                method="rmd", inner_lr=cfg["inner_lr"], n_inner=cfg["inner_steps"]).validate(),
                noise_gen)
            a = torch.cat([g.reshape(-1) for g in grads])
            b = torch.cat([g.reshape(-1) for g in ref])
            cosines.append((it, float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                            float(a.norm() / b.norm())))
        optimizer.zero_grad(set_to_none=False)
        for leaf, g in zip(lam, grads):
            leaf.grad = g
        optimizer.step()
        train_outer.append(outer)
        if it % cfg["eval_every"] == 0 or it == cfg["n_outer"]:
            curve.append((it, val_mse()))
    elapsed = time.perf_counter() - started
    guard_stats = {"acted_fraction": float(np.mean([g[1] for g in guard])),
                   "max_eta_lambda_max": float(max(g[0] for g in guard))} if guard else None
    return [t.detach().clone() for t in lam], curve, train_outer, elapsed, status, cosines, \
        guard_stats


# --------------------------------------------------------------------------- report

def _finite_or_none(obj):
    """Strict JSON: a diverged run's inf / nan becomes null (its status says why)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def mean_std(values):
    """Mean and std (ddof=1) over the seeds whose value is finite."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt(values):
    """``mean ± std``; seeds that diverged (non-finite or > 1e3) are counted, not averaged."""
    arr = np.asarray(values, dtype=float)
    ok = np.isfinite(arr) & (arr < 1e3)
    if ok.all():
        m, s = mean_std(arr)
        return f"{m:.3f} ± {s:.3f}"
    if not ok.any():
        return f"diverged ({arr.size}/{arr.size} seeds)"
    m, s = mean_std(arr[ok])
    return f"{m:.3f} ± {s:.3f} (+{(~ok).sum()}/{arr.size} seeds diverged)"


def run_all(cfg: dict, methods: dict | None = None, with_random: bool = True):
    """Meta-train every method for every shot and seed; returns ``(runs, curves)``.

    Both map ``(shot, method name)`` to a list over seeds: per-seed result dicts, and
    validation curves ``[(outer iteration, meta-val MSE), ...]``. ``methods`` defaults to
    the shared-settings ``METHODS``. A method with its own ``settings`` is meta-tested at its
    own inner lr (same step count); ``mse_K_shared_lr`` then records the query MSE after the
    same steps at the shared ``cfg["inner_lr"]``, for context.
    """
    methods = METHODS if methods is None else methods
    steps = cfg["inner_steps"]
    record = (0, steps, 2 * steps)
    runs, curves = {}, {}
    for shot in cfg["shots"]:
        # Held-out tasks: fixed across seeds and methods, disjoint streams from training.
        test_tasks = sample_tasks(torch.Generator().manual_seed(7_000 + shot),
                                  cfg["n_test_tasks"], shot, cfg["n_query_test"])
        val_tasks = sample_tasks(torch.Generator().manual_seed(8_000 + shot),
                                 cfg["n_val_tasks"], shot, cfg["n_query_test"])
        for seed in cfg["seeds"]:
            if with_random:
                init = init_params(seed, cfg["hidden"])
                base = adapted_query_mse(init, test_tasks, cfg["inner_lr"], record).mean(dim=1)
                val0 = float(adapted_query_mse(init, val_tasks, cfg["inner_lr"],
                                               (steps,))[0].mean())
                runs.setdefault((shot, RANDOM), []).append(
                    {"seed": seed, "mse_0": float(base[0]), "mse_K": float(base[1]),
                     "mse_2K": float(base[2]), "time_s": 0.0, "status": "no training"})
                curves.setdefault((shot, RANDOM), []).append([(0, val0),
                                                              (cfg["n_outer"], val0)])
            for name, spec_cfg in methods.items():
                lam, curve, train_outer, elapsed, status, cosines, guard = train(
                    name, spec_cfg, shot, seed, val_tasks, cfg)
                own_lr = spec_cfg.get("settings", {}).get("inner_lr", cfg["inner_lr"])
                res = adapted_query_mse(lam, test_tasks, own_lr, record).mean(dim=1)
                row = {"seed": seed, "mse_0": float(res[0]), "mse_K": float(res[1]),
                       "mse_2K": float(res[2]), "meta_test_inner_lr": own_lr,
                       "time_s": elapsed, "status": status,
                       "final_train_outer": (float(np.mean(train_outer[-50:]))
                                             if train_outer else None),
                       "cosine_with_maml": cosines, "curvature_guard": guard}
                if own_lr != cfg["inner_lr"]:
                    row["mse_K_shared_lr"] = float(adapted_query_mse(
                        lam, test_tasks, cfg["inner_lr"], (steps,))[0].mean())
                runs.setdefault((shot, name), []).append(row)
                curves.setdefault((shot, name), []).append(curve)
                print(f"{shot:>2}-shot seed {seed} {name:<26} test MSE after {steps} steps "
                      f"{float(res[1]):.3f}  ({elapsed:.1f}s, {status})", flush=True)
    return runs, curves


def summarise(runs: dict) -> dict:
    """``{shot: {method: mean/std of each MSE, diverged seeds, cosine with MAML}}``."""
    summary = {}
    for (shot, name), rows in runs.items():
        m, s = mean_std([r["mse_K"] for r in rows])
        m0, s0 = mean_std([r["mse_0"] for r in rows])
        m2, s2 = mean_std([r["mse_2K"] for r in rows])
        cos = [c[1] for r in rows for c in r.get("cosine_with_maml", [])]
        guards = [r["curvature_guard"] for r in rows if r.get("curvature_guard")]
        summary.setdefault(str(shot), {})[name] = {
            "n_seeds_diverged": int(sum(not (math.isfinite(r["mse_K"]) and r["mse_K"] < 1e3)
                                        for r in rows)),
            "median_cosine_with_maml": float(np.median(cos)) if cos else None,
            "mse_after_K_steps_mean": m, "mse_after_K_steps_std": s,
            "mse_before_adaptation_mean": m0, "mse_before_adaptation_std": s0,
            "mse_after_2K_steps_mean": m2, "mse_after_2K_steps_std": s2,
            "train_time_s_mean": float(np.mean([r["time_s"] for r in rows])),
            "guard_acted_fraction": (float(np.mean([g["acted_fraction"] for g in guards]))
                                     if guards else None),
            "guard_max_eta_lambda_max": (float(max(g["max_eta_lambda_max"] for g in guards))
                                         if guards else None),
            "n_seeds": len(rows),
        }
        if any("mse_K_shared_lr" in r for r in rows):
            ms, ss = mean_std([r["mse_K_shared_lr"] for r in rows])
            summary[str(shot)][name].update(
                mse_after_K_steps_at_shared_lr_mean=ms, mse_after_K_steps_at_shared_lr_std=ss,
                n_seeds_diverged_at_shared_lr=int(sum(
                    not (math.isfinite(r["mse_K_shared_lr"]) and r["mse_K_shared_lr"] < 1e3)
                    for r in rows)))
    return summary


def to_markdown(cfg: dict, runs: dict, summary: dict, metric: str, total_s: float,
                smoke: bool, command: str = "benchmarks/fewshot_sinusoid.py") -> str:
    """The tables written to ``fewshot_sinusoid.md``."""
    steps = cfg["inner_steps"]
    names = list(dict.fromkeys(name for _, name in runs))
    own = [n for n in names if n in OWN_METHODS]
    own_text = ""
    if own:
        own_text = (
            f" Rows marked 'own settings': HPO-SGLD at the settings Supplement D.4 gives it "
            f"(for miniImageNet): inner lr {OWN_SETTINGS['inner_lr']}, outer Adam lr "
            f"{OWN_SETTINGS['outer_lr']}, (B, M) = ({OWN_SETTINGS['burn_in']}, "
            f"{OWN_SETTINGS['n_samples']}), kappa = {OWN_SETTINGS['noise_scale']}; everything "
            f"else as above. They are meta-tested at their own inner lr "
            f"({OWN_SETTINGS['inner_lr']}) with the same {steps} steps.")
    lines = [
        "# Few-shot sinusoid regression: meta-learned initialisation",
        "",
        f"Generated by `{command}`{' (SMOKE run: tiny, not for quoting)' if smoke else ''}.",
        "",
        f"Tasks `A sin(x + phi)`, A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; 1-40-40-1 ReLU MLP; "
        f"{cfg['n_outer']} outer Adam steps (lr {cfg['outer_lr']}), meta-batch {cfg['meta_batch']} "
        f"tasks, {steps} inner steps (lr {cfg['inner_lr']}) for every method; HPO-SGLD "
        f"(B, M) = ({cfg['burn_in']}, {cfg['n_samples']}), tau = {cfg['temperature']}, "
        f"kappa = {cfg['noise_scale']}. Seeds {cfg['seeds']}.{own_text}",
        "",
        f"Meta-test MSE (lower is better): {metric}.",
        "",
        "| method | shot | inner lr (train, meta-test) / outer lr | MSE after K steps | "
        "MSE before adaptation | MSE after 2K steps | "
        "median cos(meta-grad, MAML's) | guard acted | max eta*lambda_max | train s/seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shot in cfg["shots"]:
        for name in names:
            rows = runs[(shot, name)]
            lrs = {**cfg, **(METHODS.get(name) or OWN_METHODS.get(name) or {}).get(
                "settings", {})}
            row = summary[str(shot)][name]
            cos = row["median_cosine_with_maml"]
            acted, top = row["guard_acted_fraction"], row["guard_max_eta_lambda_max"]
            lines.append(
                f"| {name} | {shot} | {lrs['inner_lr']:g} / "
                f"{'—' if name == RANDOM else format(lrs['outer_lr'], 'g')} | "
                f"{fmt([r['mse_K'] for r in rows])} | "
                f"{fmt([r['mse_0'] for r in rows])} | {fmt([r['mse_2K'] for r in rows])} | "
                f"{'—' if cos is None else f'{cos:+.2f}'} | "
                f"{'—' if acted is None else f'{100 * acted:.1f}%'} | "
                f"{'—' if top is None else f'{top:.2f}'} | "
                f"{np.mean([r['time_s'] for r in rows]):.1f} |")
    bad = [f"{shot}-shot {name} seed {r['seed']}: {r['status']}" for (shot, name), rows in runs.items()
           for r in rows if r["status"] not in ("completed", "no training")]
    if bad:
        lines += ["", "Runs stopped early:", ""] + [f"- {b}" for b in bad]
    if own:
        lines += ["", f"Own-settings rows adapted at the shared inner lr {cfg['inner_lr']} "
                  f"instead ({steps} steps; context only, not their fair evaluation):", "",
                  "| method | shot | MSE after K steps at lr 0.01 |", "|---|---|---|"]
        lines += [f"| {name} | {shot} | "
                  f"{fmt([r['mse_K_shared_lr'] for r in runs[(shot, name)]])} |"
                  for shot in cfg["shots"] for name in own]
    lines += [
        "",
        "MSE columns: K = the inner step count used in meta-training; 'before adaptation' is the "
        "learned initialisation's own query MSE; '2K steps' adapts twice as long as trained for. "
        "A seed counts as diverged when its MSE is non-finite or above 1e3. The cosine column "
        "compares, every eval_every outer iterations on the same meta-batch and lam, the "
        "method's meta-gradient with MAML's exact one (rmd); median over checkpoints and seeds. "
        "Guard columns (HPO-SGLD): share of the per-task chains on which the curvature guard "
        "(bound eta * lambda_max <= 1 at the chain's start) shrank the inner step and pushed the "
        "hypergradient back, mean over seeds; the largest eta * lambda_max it measured (a "
        "10-step power iteration: a lower estimate).",
        "",
        "ECE: not applicable. This is regression with point predictions; no method here outputs "
        "a predictive distribution (HPO-SGLD with M = 1 keeps one sample), so there is nothing "
        "to calibrate. The paper's Table 11 ECE (miniImageNet classification) has no analogue here.",
        "",
        "## Context only: paper Table 6 (miniImageNet 5-way accuracy %, 4-conv net)",
        "",
        "A different dataset, model and metric (accuracy, higher is better); not comparable with "
        "the MSE above.",
        "",
        "| method | 5-way 1-shot | 5-way 5-shot |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {a} | {b} |" for k, (a, b) in PAPER_TABLE6.items()]
    lines += ["", f"Total wall time {total_s:.0f} s, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s).", ""]
    return "\n".join(lines)


def _plot_seed_curves(ax, seed_curves, name, color):
    """Median over seeds with a min..max band; per-seed dotted lines when some stopped early."""
    its = np.array([p[0] for p in seed_curves[0]])
    if any(len(c) != len(its) for c in seed_curves):
        # Some seed stopped early (non-finite): draw every seed up to its stop.
        for j, c in enumerate(seed_curves):
            xy = np.array(c, dtype=float)
            ax.plot(xy[:, 0], np.where(np.isfinite(xy[:, 1]), xy[:, 1], 1e30), ":",
                    color=color, lw=1,
                    label=f"{name} (per seed; stopped: non-finite)" if j == 0 else None)
        return
    vals = np.array([[p[1] for p in c] for c in seed_curves])
    vals = np.where(np.isfinite(vals), vals, 1e30)  # diverged: off the top of the plot
    med, lo, hi = np.median(vals, axis=0), vals.min(axis=0), vals.max(axis=0)
    ax.plot(its, med, "--" if name == RANDOM else "-", color=color, label=name)
    ax.fill_between(its, lo, hi, color=color, alpha=0.12)


def plot(cfg: dict, curves: dict):
    """Meta-validation curves, one panel per shot; returns the figure.

    Own-settings rows validate at their own inner lr (see ``train``).
    """
    names = list(dict.fromkeys(name for _, name in curves))
    fig, axes = subplots(len(cfg["shots"]), figsize=(6 * len(cfg["shots"]), 4.2), dpi=120,
                         sharey=True)
    axes = np.atleast_1d(axes)
    palette = {RANDOM: "0.5", **dict(zip(list(METHODS) + list(OWN_METHODS),
                                          ["C0", "C1", "C2", "C3", "C4", "C5", "C6"]))}
    colors = {name: palette.get(name, "k") for name in names}
    for ax, shot in zip(axes, cfg["shots"]):
        off = []
        for name in names:
            _plot_seed_curves(ax, curves[(shot, name)], name, colors[name])
            vals = np.array([p[1] for c in curves[(shot, name)] for p in c], dtype=float)
            if not (np.isfinite(vals) & (vals <= 12.0)).any():
                off.append(name)
        if off:  # say so: an empty panel must not read as "no curve drawn"
            ax.text(0.02, 0.02, "off scale at every point (non-finite or > 12):\n"
                    + "\n".join(off), transform=ax.transAxes, fontsize=7, va="bottom")
        ax.set_ylim(0.3, 12.0)
        ax.set_title(f"{shot}-shot sinusoid")
        ax.set_xlabel("outer iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"meta-val MSE after {cfg['inner_steps']} steps at own inner lr "
                       f"({cfg['n_val_tasks']} tasks)")
    handles = {}
    for ax in axes:  # one legend for both panels (a per-seed line may exist in one panel only)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    axes[-1].legend(handles.values(), handles.keys(), fontsize=7)
    fig.suptitle("Meta-learned initialisation: median over seeds, band = min..max")
    return fig


def main(argv=None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only-own", action="store_true",
                       help="run only the HPO-SGLD rows at the paper's own settings (inner lr "
                            "0.5, outer lr 0.0005); writes fewshot_sinusoid_own.*")
    group.add_argument("--shared-only", action="store_true",
                       help="run only the shared-settings rows (the original table)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="override the seeds (default 0 1 2 3 4)")
    args = parse_args(parser, argv)
    cfg = {**CONFIG, **(SMOKE_CONFIG if is_smoke() else {})}
    if args.seeds is not None:
        cfg["seeds"] = list(args.seeds)
    methods = (OWN_METHODS if args.only_own else METHODS if args.shared_only
               else {**METHODS, **OWN_METHODS})
    stem = "fewshot_sinusoid_own" if args.only_own else "fewshot_sinusoid"
    t_start = time.perf_counter()
    runs, curves = run_all(cfg, methods, with_random=not args.only_own)
    total_s = time.perf_counter() - t_start
    summary = summarise(runs)
    steps = cfg["inner_steps"]
    metric = (f"meta-test MSE on {cfg['n_query_test']} query points per task, mean over "
              f"{cfg['n_test_tasks']} held-out tasks, after {steps} plain gradient steps "
              f"(lr {cfg['inner_lr']}; own-settings rows: their own inner lr "
              f"{OWN_SETTINGS['inner_lr']}) on the K support points; mean ± std (ddof=1) over "
              f"seeds")
    payload = {
        "benchmark": "fewshot_sinusoid",
        "config": cfg,
        "methods": {name: spec for name, spec in methods.items()},
        "command": "python benchmarks/fewshot_sinusoid.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "metric": metric,
        "ece": "not applicable: regression with point predictions (no predictive distribution)",
        "summary": summary,
        "runs": {f"{shot}-shot/{name}": rows for (shot, name), rows in runs.items()},
        "curves": {f"{shot}-shot/{name}": c for (shot, name), c in curves.items()},
        "paper_table6_context": {
            "note": ("miniImageNet 5-way accuracy (%), 4-conv net; a different dataset, model "
                     "and metric (higher is better): context only, not comparable numbers"),
            "columns": ["5-way 1-shot", "5-way 5-shot"],
            "rows": PAPER_TABLE6,
        },
        "total_time_s": total_s,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    text = to_markdown(cfg, runs, summary, metric, total_s, is_smoke(),
                       payload["command"].replace("python ", "", 1).strip())
    print(text)
    # Strict JSON: a diverged run's inf / nan becomes null (its status says why).
    write_results(result_stem(stem, args.out_dir), _finite_or_none(payload),
                  text, {"": plot(cfg, curves)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
