"""Per-weight L1 HPO across hypergradient methods and their options (paper Table 4 analog).

CPU-scale stand-in for the paper's Sec. 4.2 / Table 4: instead of a ViT on Oxford-Pets,
a 64-128-10 MLP (``sgld_tuner.demo.MLP``) on a small stratified subset of digits
(``N_TRAIN`` training rows, ``N_VAL`` validation rows, the rest is the test set), with
one L1 strength per weight (``PerWeightL1``: ``lam`` has the shape of the weights).

Protocol, mirroring the paper's Supplement D.2 where it can:

* a warm-up of plain SGD with the initial strengths, shared by all methods of one seed
  (the paper warm-starts every method from the same warm-up training);
* then ``N_OUTER`` outer iterations of each method from that warm start, with the chain
  continued across outer iterations (persistent) and 10 inner steps per outer iteration
  for every method (HPO-SGLD: ``(B, M) = (5, 5)``; the baselines: ``n_inner = 10``);
* the same outer optimizer (Adam, ``OUTER_LR``) for every method, so that differences
  come from the hypergradients, not from step sizes tuned per method;
* the test error of the final inner iterate; "Diverged" when a loss, hypergradient or
  hyperparameter became non-finite in any seed, or the test error stayed at chance.

Also: the number of MC samples ``M = 1..5`` (paper Table 9 analog, at the paper's
``tau = 0.001, kappa = 1e-6``, with ``B = 10 - M`` so the training length is fixed) and a temperature x noise-scale grid for HPO-SGLD.
The paper's numbers are printed next to ours as context only: a ViT on Pets and an MLP
on 150 digits share the protocol, not the scale.

Usage::

    python benchmarks/l1_options.py                     # full, 5 seeds
    SGLD_TUNER_SMOKE=1 python benchmarks/l1_options.py  # tiny, < 1 min
    python benchmarks/l1_options.py --out-dir /tmp/x

Writes ``l1_options.{json,md,png}`` (``l1_options_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sgld_tuner.core import minimize
from sgld_tuner.demo import make_net
from sgld_tuner.hyperparams import PerWeightL1
from sgld_tuner.skorch_adapter import NetProblem

from _plots import subplots
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

SMOKE = is_smoke()
N_TRAIN, N_VAL = 150, 150
HIDDEN = 16 if SMOKE else 128
BATCH = 32
INNER_LR = 0.1
WARMUP_STEPS = 20 if SMOKE else 200
N_OUTER = 4 if SMOKE else 60
OUTER_LR = 0.05
L1_INIT = 1e-4
STEPS_PER_OUTER = 10  # B + M for sgld, n_inner for the baselines

# Paper Table 4, Pets column (test error %, mean and std over its runs), quoted as context.
PAPER_PETS = {
    ("ift-neumann", "(0.9, 1)"): "28.07 ± 0.65", ("ift-neumann", "(0.9, 3)"): "29.47 ± 1.13",
    ("ift-neumann", "(0.9, 5)"): "30.34 ± 3.49", ("ift-neumann", "(0.9, 10)"): "Diverged",
    ("ift-neumann", "(0.99, 1)"): "28.31 ± 0.58", ("ift-neumann", "(0.99, 3)"): "28.59 ± 1.13",
    ("ift-neumann", "(0.99, 5)"): "28.32 ± 0.48", ("ift-neumann", "(0.99, 10)"): "Diverged",
    ("ift-cg", "(0.01, 1)"): "28.54 ± 0.85", ("ift-cg", "(0.01, 3)"): "27.47 ± 0.90",
    ("ift-cg", "(0.01, 5)"): "28.22 ± 1.90", ("ift-cg", "(0.01, 10)"): "29.27 ± 1.52",
    ("ift-cg", "(0.001, 1)"): "28.63 ± 1.34", ("ift-cg", "(0.001, 3)"): "29.12 ± 1.77",
    ("ift-cg", "(0.001, 5)"): "29.01 ± 1.50", ("ift-cg", "(0.001, 10)"): "27.64 ± 0.41",
    ("rmd", "-"): "25.49 ± 0.64", ("rmd-fo", "-"): "27.50 ± 0.31",
    ("sgld", "(0.01, 0.01)"): "24.80 ± 0.32", ("sgld", "(0.005, 0.01)"): "23.75 ± 0.21",
    ("sgld", "(0.001, 0.01)"): "24.57 ± 0.43", ("sgld", "(0.0001, 0.01)"): "24.31 ± 0.20",
    ("sgld", "(0.01, 1e-06)"): "24.10 ± 0.23", ("sgld", "(0.005, 1e-06)"): "24.87 ± 0.19",
    ("sgld", "(0.001, 1e-06)"): "24.10 ± 0.45", ("sgld", "(0.0001, 1e-06)"): "24.06 ± 0.36",
}
# Paper Table 9 (Pets, tau = 0.001, kappa = 1e-6), test error % by M.
PAPER_M = {1: "25.17 ± 0.44", 2: "24.76 ± 0.32", 3: "24.10 ± 0.45", 4: "24.07 ± 0.39",
           5: "24.04 ± 0.38"}


def _fmt(v):
    return f"{v:g}"


def table4_configs():
    """(method, options label, minimize kwargs) for the paper's option grids."""
    configs = []
    for alpha in (0.9, 0.99):
        for i in (1, 3, 5, 10):
            configs.append(("ift-neumann", f"({_fmt(alpha)}, {i})",
                            {"method_options": {"neumann_alpha": alpha, "neumann_iters": i}}))
    for gamma in (0.01, 0.001):
        for i in (1, 3, 5, 10):
            configs.append(("ift-cg", f"({_fmt(gamma)}, {i})",
                            {"method_options": {"cg_damping": gamma, "cg_iters": i}}))
    configs.append(("rmd", "-", {}))
    configs.append(("rmd-fo", "-", {}))
    for kappa in (0.01, 1e-6):
        for tau in (0.01, 0.005, 0.001, 0.0001):
            configs.append(("sgld", f"({_fmt(tau)}, {_fmt(kappa)})",
                            {"temperature": tau, "noise_scale": kappa}))
    if SMOKE:  # one option per method: the smoke run checks the plumbing, not the numbers
        seen, kept = set(), []
        for c in configs:
            if c[0] not in seen:
                seen.add(c[0])
                kept.append(c)
        configs = kept
    return configs


# --------------------------------------------------------------------------- problem
class Setup:
    """One seed's data split, net, bilevel losses and shared warm start."""

    def __init__(self, seed):
        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        X_tr, X_rest, y_tr, y_rest = train_test_split(X, y, train_size=N_TRAIN, stratify=y,
                                                      random_state=seed)
        X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, train_size=N_VAL,
                                                        stratify=y_rest, random_state=seed)
        self.X_test = torch.as_tensor(X_test)
        self.y_test = torch.as_tensor(y_test)
        net = make_net(max_epochs=1, module__hidden=HIDDEN)
        torch.manual_seed(seed)
        net.initialize()
        self.generator = torch.Generator().manual_seed(seed)
        self.problem = NetProblem(net, {"l1": PerWeightL1(init=L1_INIT)}, X_tr, y_tr, X_val,
                                  y_val, batch_size=BATCH, generator=self.generator)
        self.seed = seed
        lam0 = self.problem.init_lam()
        self.theta_warm = self._sgd(lam0, self.problem.theta0(), WARMUP_STEPS)
        self.batch_state = self.generator.get_state()

    def _sgd(self, lam, theta, steps):
        """Plain minibatch SGD on the inner loss at fixed ``lam`` (no hypergradient)."""
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
        for _ in range(steps):
            loss = self.problem.inner_loss(lam, theta)
            grads = torch.autograd.grad(loss, list(theta.values()))
            with torch.no_grad():
                theta = {k: (v - INNER_LR * g).requires_grad_(True)
                         for (k, v), g in zip(theta.items(), grads)}
        return {k: v.detach() for k, v in theta.items()}

    def test_error(self, theta):
        with torch.no_grad():
            logits = torch.func.functional_call(self.problem.module, theta, (self.X_test,))
            return float((logits.argmax(1) != self.y_test).float().mean() * 100)

    def run(self, method, **kwargs):
        """Run one method from the shared warm start; returns test error %, diverged, time."""
        # every method sees the same minibatch stream from the same warm start
        self.generator.set_state(self.batch_state)
        settings = dict(method=method, n_outer=N_OUTER, outer_lr=OUTER_LR,
                        outer_optimizer="adam", inner_lr=INNER_LR, burn_in=5, n_samples=5,
                        n_inner=STEPS_PER_OUTER, temperature=1e-3, noise_scale=1e-6,
                        random_state=self.seed, mixed_vjp=self.problem.mixed_vjp())
        settings.update(kwargs)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NonFiniteWarning is recorded as "diverged"
            res = minimize(self.problem.outer_loss, self.problem.inner_loss,
                           self.problem.init_lam(), self.theta_warm, **settings)
        wall = time.perf_counter() - started
        finite = all(bool(torch.isfinite(t).all()) for t in res.theta.values())
        err = self.test_error(res.theta) if finite else float("nan")
        strengths = torch.cat([torch.nn.functional.softplus(t).reshape(-1)
                               for t in res.lam["l1"].values()])
        return {"test_error": err, "success": bool(res.success and finite),
                "n_outer_done": int(res.n_iter), "wall_s": wall,
                "l1_mean": float(strengths.mean()), "l1_max": float(strengths.max())}

    def untuned(self):
        """The warm start trained on for the same number of steps with ``lam`` fixed."""
        self.generator.set_state(self.batch_state)
        started = time.perf_counter()
        theta = self._sgd(self.problem.init_lam(), self.theta_warm, N_OUTER * STEPS_PER_OUTER)
        return {"test_error": self.test_error(theta), "success": True, "n_outer_done": 0,
                "wall_s": time.perf_counter() - started, "l1_mean": L1_INIT, "l1_max": L1_INIT}


# --------------------------------------------------------------------------- summaries
def summarise(df, keys):
    """Mean ± std over seeds; "Diverged" if any seed diverged, as the paper reports it."""
    rows = []
    for key, sub in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        diverged = (~sub["success"]).any() or sub["test_error"].isna().any()
        row = dict(zip(keys, key))
        row.update({"test_error_mean": float(sub["test_error"].mean()),
                    "test_error_std": float(sub["test_error"].std(ddof=1)) if len(sub) > 1 else float("nan"),
                    "diverged_seeds": int((~sub["success"]).sum()),
                    "wall_s": float(sub["wall_s"].mean()), "seeds": int(len(sub)),
                    "l1_mean": float(sub["l1_mean"].mean())})
        row["ours"] = "Diverged" if diverged else _pm(row["test_error_mean"], row["test_error_std"])
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean, std):
    return f"{mean:.2f}" + ("" if not np.isfinite(std) else f" ± {std:.2f}")


def md_table(df, cols, headers):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(getattr(r, c)) for c in cols) + " |")
    return "\n".join(lines)


def plot(t4, m_df, grid_df):
    """Table 4 analog, test error by M, and the (tau, kappa) grid; returns the figure."""
    fig, axes = subplots(3, figsize=(15, 4.2), dpi=100)
    ax = axes[0]
    labels = [f"{m} {o}" for m, o in zip(t4["method"], t4["options"])]
    colors = {"ift-neumann": "C1", "ift-cg": "C2", "rmd": "C3", "rmd-fo": "C4", "sgld": "C0",
              "untuned": "gray"}
    y = np.arange(len(t4))
    ax.barh(y, t4["test_error_mean"].fillna(0), xerr=t4["test_error_std"].fillna(0),
            color=[colors[m] for m in t4["method"]])
    for yi, r in zip(y, t4.itertuples()):
        if r.ours == "Diverged":
            ax.text(1, yi, "Diverged", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("test error % (digits, 150 rows)")
    ax.set_title("Table 4 analog: per-weight L1", fontsize=9)
    lo = np.nanmin(t4["test_error_mean"]) - 3
    ax.set_xlim(left=max(0, lo))
    axes[1].errorbar(m_df["M"], m_df["test_error_mean"], yerr=m_df["test_error_std"], fmt="o-")
    axes[1].set_xlabel("MC samples M")
    axes[1].set_ylabel("test error %")
    axes[1].set_title("Table 9 analog (tau=1e-3, kappa=1e-6)", fontsize=9)
    piv = grid_df.pivot(index="temperature", columns="noise_scale", values="test_error_mean")
    im = axes[2].imshow(piv.values, cmap="viridis_r", aspect="auto")
    axes[2].set_xticks(range(piv.shape[1]), [_fmt(c) for c in piv.columns])
    axes[2].set_yticks(range(piv.shape[0]), [_fmt(i) for i in piv.index])
    for (i, j), v in np.ndenumerate(piv.values):
        axes[2].text(j, i, "div." if not np.isfinite(v) else f"{v:.1f}", ha="center",
                     va="center", color="w", fontsize=8)
    axes[2].set_xlabel("noise scale kappa")
    axes[2].set_ylabel("temperature tau")
    axes[2].set_title("HPO-SGLD test error % by (tau, kappa)", fontsize=9)
    fig.colorbar(im, ax=axes[2])
    return fig


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=1 if SMOKE else 5)
    args = parse_args(parser, argv)
    torch.set_num_threads(1)  # shared 2-core machine; tiny tensors gain nothing from more
    started, cpu_started = time.perf_counter(), time.process_time()
    t4_runs, m_runs, grid_runs = [], [], []
    m_values = (1, 5) if SMOKE else (1, 2, 3, 4, 5)
    taus = (1e-4, 1e-2, 1.0)
    kappas = (1e-2, 1.0, 10.0)
    if SMOKE:
        taus, kappas = (1e-4, 1.0), (1e-2, 10.0)
    for seed in range(args.seeds):
        setup = Setup(seed)
        t4_runs.append({"method": "untuned", "options": "fixed lam", "seed": seed,
                        **setup.untuned()})
        for method, options, kwargs in table4_configs():
            t4_runs.append({"method": method, "options": options, "seed": seed,
                            **setup.run(method, **kwargs)})
        for m in m_values:
            # B + M stays 10, so every M trains the net for the same number of steps and
            # only the number of samples averaged into the hypergradient changes.
            m_runs.append({"M": m, "seed": seed,
                           **setup.run("sgld", n_samples=m, burn_in=STEPS_PER_OUTER - m,
                                       temperature=1e-3, noise_scale=1e-6)})
        for tau in taus:
            for kappa in kappas:
                grid_runs.append({"temperature": tau, "noise_scale": kappa, "seed": seed,
                                  **setup.run("sgld", temperature=tau, noise_scale=kappa)})
        print(f"[{time.perf_counter() - started:6.0f}s] seed {seed} done", flush=True)
    total = time.perf_counter() - started
    # CPU seconds of this process: what the wall time would be on an idle core, since
    # everything runs on one thread (other users' load inflates only the wall time).
    cpu_total = time.process_time() - cpu_started

    t4 = summarise(pd.DataFrame(t4_runs), ["method", "options"])
    t4["paper_pets"] = [PAPER_PETS.get((m, o), "-") for m, o in zip(t4["method"], t4["options"])]
    t4["wall"] = t4["wall_s"].map(lambda v: f"{v:.1f}")
    m_df = summarise(pd.DataFrame(m_runs), ["M"])
    m_df["paper_pets"] = [PAPER_M.get(m, "-") for m in m_df["M"]]
    grid_df = summarise(pd.DataFrame(grid_runs), ["temperature", "noise_scale"])
    for df in (t4, m_df, grid_df):
        df["l1"] = df["l1_mean"].map(lambda v: f"{v:.2e}")

    md_t4 = md_table(t4, ["method", "options", "ours", "diverged_seeds", "l1", "wall", "paper_pets"],
                     ["method", "options", "test error % (ours)", "diverged seeds",
                      "mean learned L1", "wall s / run", "paper Pets (Table 4)"])
    md_m = md_table(m_df, ["M", "ours", "paper_pets"],
                    ["M", "test error % (ours)", "paper Pets (Table 9)"])
    md_grid = md_table(grid_df, ["temperature", "noise_scale", "ours", "diverged_seeds", "l1"],
                       ["tau", "kappa", "test error % (ours)", "diverged seeds", "mean learned L1"])
    head = (f"digits, {N_TRAIN} train / {N_VAL} val rows, rest test; 64-{HIDDEN}-10 MLP, "
            f"per-weight L1; warm-up {WARMUP_STEPS} SGD steps, then {N_OUTER} outer "
            f"iterations x {STEPS_PER_OUTER} inner steps, Adam outer lr {OUTER_LR}; "
            f"{args.seeds} seed(s). Options: IFT-Neumann (alpha, i), IFT-CG (gamma, i), "
            f"HPO-SGLD (tau, kappa). Total {total:.0f} s wall ({cpu_total:.0f} s CPU), load average at end "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    text = (f"# L1-regularised HPO across methods ({'smoke' if SMOKE else 'full'} run)\n\n"
            f"{head}\n\n## Table 4 analog\n\n{md_t4}\n\n## MC samples (Table 9 analog)\n\n"
            f"{md_m}\n\n## HPO-SGLD temperature x noise scale\n\n{md_grid}\n")
    print(text)
    stem = result_stem("l1_options", args.out_dir)
    meta = {"smoke": SMOKE, "seeds": args.seeds, "n_train": N_TRAIN, "n_val": N_VAL,
            "hidden": HIDDEN, "batch": BATCH, "inner_lr": INNER_LR, "warmup_steps": WARMUP_STEPS,
            "n_outer": N_OUTER, "outer_lr": OUTER_LR, "l1_init": L1_INIT,
            "total_wall_s": total, "total_cpu_s": cpu_total, "load_average_at_end": os.getloadavg(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    write_results(stem, {"meta": meta, "table4": t4.to_dict(orient="records"),
                         "mc_samples": m_df.to_dict(orient="records"),
                         "temperature_noise": grid_df.to_dict(orient="records"),
                         "runs": {"table4": t4_runs, "mc_samples": m_runs,
                                  "temperature_noise": grid_runs}},
                  text, {"": plot(t4, m_df, grid_df)})
    print(f"total {total:.0f} s wall, {cpu_total:.0f} s CPU; wrote {stem}.json/.md/.png")


if __name__ == "__main__":
    main()
