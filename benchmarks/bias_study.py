"""How biased is the HPO-SGLD hypergradient, and which variant of the recursion is best?

On ridge regression with per-feature penalties (``sgld_tuner.problems.RidgePerFeature``)
the hypergradient is known in closed form. We compare the core's SGLD hypergradient with
it for the four variants ``recursion in {paper, damped}`` x ``chain in {restart,
persistent}`` over a grid of ``eta * (B + M)`` (varying the number of steps at fixed
``eta`` and ``eta`` at fixed steps), at a small and at a moderate temperature, and time
one hypergradient of each variant.

Writes ``benchmarks/results/bias_study.{json,md,png}``.

Usage::

    python benchmarks/bias_study.py           # full (a few minutes on one core)
    python benchmarks/bias_study.py --smoke   # smoke version (or SGLD_TUNER_SMOKE=1)
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_common_args, is_smoke, parse_args, result_stem, write_json  # noqa: E402

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient
from sgld_tuner.problems import RidgePerFeature

VARIANTS = [("paper", "restart"), ("paper", "persistent"),
            ("damped", "restart"), ("damped", "persistent"),
            ("tracked", "restart"), ("tracked", "persistent")]


def estimates(problem, lam, recursion, chain, eta, steps, tau, n_calls, n_warm, seed,
              closed_form_mixed=False):
    """``n_calls`` hypergradient estimates of one variant at fixed ``lam``.

    A persistent chain is first run for ``n_warm`` outer iterations at the same ``lam``
    (what it would have done while ``lam`` moved slowly); a restarting chain starts every
    call from ``theta0 = 0``. Returns the estimates (n_calls, d) and seconds per call.
    """
    bp = BilevelProblem(problem.outer_loss, problem.inner_loss, None, problem.theta0,
                        mixed_vjp=problem.mixed_vjp if closed_form_mixed else None)
    lam_leaf = [lam.clone().requires_grad_(True)]
    settings = InnerSettings(method="sgld", inner_lr=eta, burn_in=steps // 2,
                             n_samples=steps - steps // 2, temperature=tau, noise_scale=1.0,
                             chain=chain, recursion=recursion).validate()
    gen = torch.Generator().manual_seed(seed)
    state = ChainState()
    if chain == "persistent":
        for _ in range(n_warm):
            hypergradient(bp, lam_leaf, state, settings, gen)
    out, started = [], time.perf_counter()
    for _ in range(n_calls):
        if chain == "restart":
            state = ChainState()
        out.append(hypergradient(bp, lam_leaf, state, settings, gen).grad[0].detach().double())
    return torch.stack(out), (time.perf_counter() - started) / n_calls


def tracked_estimates(problem, lam, chain, eta, steps, tau, n_calls, n_warm, seed):
    """A candidate variant, prototyped here (not in the core): track ``w ~ H^{-1} v``.

    Along the same SGLD chain, one gradient step per inner step on
    ``1/2 w^T H w - v^T w`` (``v = grad_theta f``) keeps ``w`` near ``H^{-1} v``; the
    estimate is the implicit-function one, ``grad_lam f - w^T d2L_T/(dtheta dlam)``. One
    double backward with ``grad_outputs = w`` yields both ``H w`` and ``w^T B``, so the
    cost per step equals the damped recursion's (which asks the same of ``v``). ``w`` is
    carried across outer iterations of a persistent chain, like the damped ``g``.
    """
    gen = torch.Generator().manual_seed(seed)
    std = (2.0 * eta * tau) ** 0.5
    lam = lam.clone().requires_grad_(True)
    burn = steps // 2
    theta, w = problem.theta0.clone(), torch.zeros_like(problem.theta0)

    def one_call(theta, w):
        h = torch.zeros_like(lam)
        for m in range(1, steps + 1):
            theta = theta.detach().requires_grad_(True)
            grad_inner = torch.autograd.grad(problem.inner_loss(lam, theta), theta,
                                             create_graph=True)[0]
            noise = torch.randn(theta.shape, generator=gen, dtype=theta.dtype) * std
            new = (theta - eta * grad_inner + noise).detach().requires_grad_(True)
            f_theta, f_lam = torch.autograd.grad(problem.outer_loss(lam, new), (new, lam),
                                                 allow_unused=True)
            f_lam = torch.zeros_like(lam) if f_lam is None else f_lam
            w_b, h_w = torch.autograd.grad(grad_inner, (lam, theta), grad_outputs=w)
            with torch.no_grad():
                w = w - eta * (h_w - f_theta)
                if m > burn:
                    h += (f_lam - w_b) / (steps - burn)
            theta = new
        return theta.detach(), w.detach(), h.detach()

    if chain == "persistent":
        for _ in range(n_warm):
            theta, w, _ = one_call(theta, w)
    out, started = [], time.perf_counter()
    for _ in range(n_calls):
        if chain == "restart":
            theta, w = problem.theta0.clone(), torch.zeros_like(problem.theta0)
        theta, w, h = one_call(theta, w)
        out.append(h.double())
    return torch.stack(out), (time.perf_counter() - started) / n_calls


def run_variant(problem, lam, recursion, chain, eta, steps, tau, n_calls, n_warm, seed):
    if recursion == "tracked":
        return tracked_estimates(problem, lam, chain, eta, steps, tau, n_calls, n_warm, seed)
    return estimates(problem, lam, recursion, chain, eta, steps, tau, n_calls, n_warm, seed)


def score(est, exact):
    """Per-call relative error and cosine (means), and the same for the mean estimate."""
    rel = torch.linalg.norm(est - exact, dim=1) / torch.linalg.norm(exact)
    cos = (est @ exact) / (torch.linalg.norm(est, dim=1) * torch.linalg.norm(exact))
    mean = est.mean(0)
    return {
        "rel_err": float(rel.mean()), "rel_err_std": float(rel.std()) if len(rel) > 1 else 0.0,
        "cosine": float(cos.mean()),
        "rel_err_of_mean": float(torch.linalg.norm(mean - exact) / torch.linalg.norm(exact)),
        "cosine_of_mean": float(mean @ exact / (torch.linalg.norm(mean) * torch.linalg.norm(exact))),
    }


def main(argv=None):
    args = parse_args(add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])),
                      argv)
    quick = is_smoke()
    torch.set_num_threads(1)

    cfg = dict(n=200, d=10, random_state=0, lam_low=-2.0, lam_high=1.0,
               taus=[1e-6, 1e-2], n_calls=8, n_warm=20, seed=0,
               eta_fixed=0.01, steps_grid=[10, 20, 50, 100, 200, 500, 1000],
               steps_fixed=100, eta_grid=[0.001, 0.003, 0.01, 0.03, 0.1],
               timing_steps=100, timing_calls=20)
    if quick:
        cfg.update(n_calls=2, n_warm=1, steps_grid=[20, 100], eta_grid=[0.01], taus=[1e-6],
                   timing_calls=2)
    problem = RidgePerFeature(cfg["n"], cfg["d"], random_state=cfg["random_state"])
    # Penalties spread over a factor e^3 so the inner Hessian is not close to a multiple of
    # the identity: that is where a one-direction (Rayleigh quotient) damping is tested.
    lam = torch.linspace(cfg["lam_low"], cfg["lam_high"], cfg["d"], dtype=torch.float64)
    eig = torch.linalg.eigvalsh(problem.hessian(lam))
    cfg["hessian_eigenvalues"] = [float(eig.min()), float(eig.max())]
    print(f"ridge n={cfg['n']} d={cfg['d']}; inner Hessian eigenvalues "
          f"[{eig.min():.3f}, {eig.max():.3f}]", flush=True)

    started = time.perf_counter()
    rows = []
    grid = ([("steps", cfg["eta_fixed"], s) for s in cfg["steps_grid"]]
            + [("eta", e, cfg["steps_fixed"]) for e in cfg["eta_grid"]])
    for tau in cfg["taus"]:
        exact = problem.exact_hypergradient(lam, temperature=tau)
        exact0 = problem.exact_hypergradient(lam)
        for sweep, eta, steps in grid:
            for recursion, chain in VARIANTS:
                est, secs = run_variant(problem, lam, recursion, chain, eta, steps, tau,
                                        cfg["n_calls"], cfg["n_warm"], cfg["seed"])
                row = {"tau": tau, "sweep": sweep, "eta": eta, "steps": steps,
                       "eta_steps": eta * steps, "recursion": recursion, "chain": chain,
                       "seconds_per_call": secs, **score(est, exact),
                       "rel_err_vs_tau0": score(est, exact0)["rel_err"]}
                rows.append(row)
                print(f"tau {tau:.0e} {sweep:5s} eta {eta:<6g} B+M {steps:5d} "
                      f"eta(B+M) {eta * steps:7.3f} {recursion:6s} {chain:10s} "
                      f"rel err {row['rel_err']:.3f} (of mean {row['rel_err_of_mean']:.3f}) "
                      f"cos {row['cosine']:.3f}", flush=True)

    # Wall time per hypergradient at equal B+M (the cost question), tau small.
    timing = []
    for recursion, chain in VARIANTS + [("paper", "restart-closed-form")]:
        if chain.endswith("closed-form"):
            _, secs = estimates(problem, lam, recursion, "restart", cfg["eta_fixed"],
                                cfg["timing_steps"], 1e-6, cfg["timing_calls"], 1, cfg["seed"],
                                closed_form_mixed=True)
        else:
            _, secs = run_variant(problem, lam, recursion, chain, cfg["eta_fixed"],
                                  cfg["timing_steps"], 1e-6, cfg["timing_calls"], 1, cfg["seed"])
        timing.append({"recursion": recursion, "chain": chain, "seconds_per_call": secs,
                       "ms_per_inner_step": 1e3 * secs / cfg["timing_steps"]})
        print(f"timing {recursion:6s} {chain:20s} {1e3 * secs:.1f} ms per hypergradient", flush=True)

    results = {"config": cfg, "rows": rows, "timing": timing, "quick": quick,
               "seconds_total": time.perf_counter() - started,
               "torch": torch.__version__, "machine": platform.platform()}
    stem = Path(result_stem("bias_study", args.out_dir))
    write_json(f"{stem}.json", results)
    write_markdown(results, Path(f"{stem}.md"))
    plot(results, Path(f"{stem}.png"))
    print(Path(f"{stem}.md").read_text())


def write_markdown(results, path):
    cfg = results["config"]
    lines = ["# Bias of the HPO-SGLD hypergradient (generated by `benchmarks/bias_study.py`)", "",
             f"Ridge regression with per-feature log-penalties, n = {cfg['n']}, d = {cfg['d']}, "
             f"lam = linspace({cfg['lam_low']}, {cfg['lam_high']}, d) (inner Hessian eigenvalues "
             f"{cfg['hessian_eigenvalues'][0]:.3f} to {cfg['hessian_eigenvalues'][1]:.3f}). "
             f"B = M = (B+M)/2. {cfg['n_calls']} estimates per cell; persistent chains are "
             f"first warmed up for {cfg['n_warm']} outer iterations at the same lam. "
             "Truth: exact gradient of E_p[f] (IFT plus the temperature term). "
             "rel err = mean over calls of ||h - h*|| / ||h*||; 'of mean' uses the average "
             "of the calls (bias without most of the variance).", ""]
    for tau in cfg["taus"]:
        for sweep, title in (("steps", f"eta = {cfg['eta_fixed']}, B+M varied"),
                             ("eta", f"B+M = {cfg['steps_fixed']}, eta varied")):
            sub = [r for r in results["rows"] if r["tau"] == tau and r["sweep"] == sweep]
            if not sub:
                continue
            lines += [f"## tau = {tau:g}, {title}", "",
                      "| eta(B+M) | eta | B+M | " + " | ".join(
                          f"{r} / {c}" for r, c in VARIANTS) + " |",
                      "|---|---|---|" + "---|" * len(VARIANTS)]
            for key in sorted({(r["eta"], r["steps"]) for r in sub},
                              key=lambda k: k[0] * k[1]):
                cells = []
                for recursion, chain in VARIANTS:
                    r = next(x for x in sub if (x["eta"], x["steps"]) == key
                             and x["recursion"] == recursion and x["chain"] == chain)
                    cells.append(f"{r['rel_err']:.3f} ({r['rel_err_of_mean']:.3f}); "
                                 f"cos {r['cosine']:.3f}")
                lines.append(f"| {key[0] * key[1]:g} | {key[0]:g} | {key[1]} | "
                             + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Cells: rel err (rel err of mean); mean cosine similarity.", "",
              f"## Wall time per hypergradient (B+M = {cfg['timing_steps']}, "
              f"{cfg['timing_calls']} calls, one thread)", "",
              "| recursion | chain | ms per hypergradient | ms per inner step |", "|---|---|---|---|"]
    for t in results["timing"]:
        lines.append(f"| {t['recursion']} | {t['chain']} | {1e3 * t['seconds_per_call']:.1f} | "
                     f"{t['ms_per_inner_step']:.3f} |")
    lines += ["", f"Total {results['seconds_total']:.0f} s; torch {results['torch']}, "
              f"{results['machine']}.", ""]
    path.write_text("\n".join(lines))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = results["config"]["taus"]
    fig, axes = plt.subplots(2, len(taus), figsize=(5.5 * len(taus), 7), squeeze=False)
    for j, tau in enumerate(taus):
        for recursion, chain in VARIANTS:
            style = {"damped": "-", "paper": "--", "tracked": ":"}[recursion]
            marker = "o" if chain == "persistent" else "s"
            for sweep, fill in (("steps", "full"), ("eta", "none")):
                sub = sorted((r for r in results["rows"] if r["tau"] == tau
                              and r["sweep"] == sweep and r["recursion"] == recursion
                              and r["chain"] == chain), key=lambda r: r["eta_steps"])
                if not sub:
                    continue
                x = [r["eta_steps"] for r in sub]
                label = f"{recursion}/{chain} ({'B+M' if sweep == 'steps' else 'eta'} varied)"
                axes[0, j].loglog(x, [r["rel_err"] for r in sub], style, marker=marker,
                                  fillstyle=fill, label=label)
                axes[1, j].semilogx(x, [r["cosine"] for r in sub], style, marker=marker,
                                    fillstyle=fill, label=label)
        axes[0, j].set_title(f"relative error, tau = {tau:g}")
        axes[1, j].set_title(f"cosine similarity, tau = {tau:g}")
        for ax in axes[:, j]:
            ax.set_xlabel("eta * (B + M)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
