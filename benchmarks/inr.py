"""Meta-learned initialisation of an implicit neural representation (paper Table 7, CPU analog).

The paper (Sec. 4.5, Supplement D.5) meta-learns the initial weights of a NeRF MLP on
ShapeNet (Tancik et al. 2021) and reports test PSNR: random init 12.49 / 11.45 / 15.47,
Reptile 18.85 / 22.80 / 22.35, HPO-SGLD 18.77 / 23.16 / 22.73 (Chairs / Cars / Lamps). Here
the same comparison at CPU scale and without downloads, on the two photos bundled with
scikit-learn (``load_sample_images``: china.jpg, flower.jpg), in grey:

* a task is a random 32x32 patch; its pixels are split in a checkerboard: the support half
  is what the inner loop fits (the "train views"), the query half is held out (the "novel
  view") and scored;
* the model is a coordinate MLP with Fourier-feature input (Tancik et al. 2020): fixed
  random features ``[sin, cos](2 pi B x)``, ``B ~ N(0, sigma^2)``, then a ReLU MLP;
* the inner loop is plain gradient steps (lr 0.05, every row) on the support MSE from the
  initialisation: 5 steps, or 32 for the rows that say so;
* meta-training patches come from the left 60% of each photo, test patches from the right
  40% (disjoint pixels);
* methods (:data:`METHODS`), all with the same task stream (one patch per outer iteration),
  Adam, inner / outer learning rates and budget: the random initialisation; Reptile
  (written here: ``k`` steps on all the patch's pixels, pseudo-gradient ``lam - theta``), at
  5 steps and at the 32 steps of Tancik et al., and once more fed only the support half (a
  diagnostic: what HPO-SGLD's chain sees); MAML (``method="rmd"``, 5 steps); HPO-SGLD
  through ``minimize(..., theta0=lambda lam: lam)`` (the core's default recursion and its
  curvature guard):

  - bare, (B, M) = (4, 1): the outer loss is the query MSE alone;
  - **the paper's form** (Supplement D.5): the outer loss adds the Reptile-style term
    ``||lam - sg(theta)||^2`` (weight 1, the supplement gives none; ``sg`` = ``detach``),
    ``tau = 1e-4``, ``kappa = 1e-6`` and (B, M) = (27, 5), the 32 steps of Reptile;
  - variants at (B, M) = (4, 1), each its own row: the term alone, a 10x heavier term, and
    the chain fitting all the patch's pixels (as Reptile's inner loop does) with either;

* metric: PSNR (dB, pixel range [0, 1]) on the query pixels after 5 and after 32 plain steps
  from the learned init (:func:`test_psnr`, the same for every row), mean over the test
  patches, then mean +- std (ddof=1) over seeds; paired per-seed differences for the
  comparisons that matter;
* diagnostics: ``eta * lambda_max`` of the support loss at the learned init; for the
  HPO-SGLD rows, every ``diag_every`` outer iterations, the cosine of the core's estimate of
  the query part of the meta-gradient with the exact one (reverse mode through the same
  unroll), and the size of the Reptile term's gradient next to that estimate.

Run ``python benchmarks/inr.py`` (about 36 min of CPU time on one core, 2152 s measured:
600 outer iterations x 12 rows x 5 seeds, the paper form's 32-step chains 12.5 min of it) or
``--smoke`` (seconds). Writes ``benchmarks/results/inr.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
import torch

from sgld_tuner.core import (BilevelProblem, ChainState, InnerSettings, hypergradient,
                             make_generator, make_outer_optimizer, minimize)
from sgld_tuner.core import _tree
from sgld_tuner.core.curvature import CurvatureWarning, top_eigenpair

from _plots import subplots
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

torch.set_num_threads(1)

CONFIG = {
    "seeds": [0, 1, 2, 3, 4],
    "patch": 32,
    "n_features": 32,          # Fourier features: 2 * n_features inputs to the MLP
    "sigma": 4.0,              # std of B, in cycles per patch width
    "hidden": 64,
    "inner_lr": 0.05,          # every row, training and meta-test
    "eval_steps": [5, 32],     # meta-test: PSNR after this many plain steps, every row
    "outer_lr": 1e-3,          # Adam, every method
    "n_outer": 600,
    "temperature": 1e-4,       # tau and kappa of Supplement D.5: negligible noise
    "noise_scale": 1e-6,
    "diag_every": 100,         # meta-gradient check of the HPO-SGLD rows (and the 2nd iteration)
    "n_curvature": 10,         # test patches for eta * lambda_max at the learned init
    "n_test": 100,
    "train_share": 0.6,
}
SMOKE_CONFIG = {"seeds": [0], "n_outer": 3, "n_test": 4, "diag_every": 2, "n_curvature": 2}

# Each row: how it meta-trains. "steps": inner steps of training (HPO-SGLD: burn_in +
# n_samples); "pixels": what the inner loop fits ("all" is Reptile's own: it has no
# support/query split; "support" is the meta-test's half); "weight": of Supplement D.5's
# ||lam - sg(theta)||^2 in the outer loss (0: none; the supplement gives no weight: 1).
METHODS = {
    "Random init (no meta-learning)": {"kind": "random", "steps": 0},
    "Reptile": {"kind": "reptile", "steps": 5, "pixels": "all"},
    "Reptile (32 steps)": {"kind": "reptile", "steps": 32, "pixels": "all"},
    # Diagnostic: Reptile fed only what HPO-SGLD's chain fits (the support half).
    "Reptile, support pixels only": {"kind": "reptile", "steps": 5, "pixels": "support"},
    "Reptile (32 steps), support pixels only": {"kind": "reptile", "steps": 32,
                                                "pixels": "support"},
    "MAML (rmd)": {"kind": "rmd", "steps": 5, "pixels": "support"},
    "HPO-SGLD": {"kind": "sgld", "burn_in": 4, "n_samples": 1, "weight": 0.0},
    # The paper's form (Supplement D.5): the term, tau 1e-4, kappa 1e-6, (B, M) = (27, 5).
    "HPO-SGLD (paper form)": {"kind": "sgld", "burn_in": 27, "n_samples": 5, "weight": 1.0},
    # Variants (each measured, none replaces the paper's form): the term without the long
    # chain; a 10x heavier term; the chain fitting all pixels as Reptile's inner loop does.
    "HPO-SGLD + term, (B, M) = (4, 1)": {"kind": "sgld", "burn_in": 4, "n_samples": 1,
                                         "weight": 1.0},
    "HPO-SGLD + 10x term, (B, M) = (4, 1)": {"kind": "sgld", "burn_in": 4, "n_samples": 1,
                                             "weight": 10.0},
    "HPO-SGLD + term, chain on all pixels, (B, M) = (4, 1)": {
        "kind": "sgld", "burn_in": 4, "n_samples": 1, "weight": 1.0, "pixels": "all"},
    "HPO-SGLD + 10x term, chain on all pixels, (B, M) = (4, 1)": {
        "kind": "sgld", "burn_in": 4, "n_samples": 1, "weight": 10.0, "pixels": "all"},
}
for _spec in METHODS.values():
    _spec.setdefault("steps", _spec.get("burn_in", 0) + _spec.get("n_samples", 0))
    _spec.setdefault("pixels", "support")

# The rows drawn in the figure (all of them would not fit).
PLOT_ROWS = ["Random init (no meta-learning)", "Reptile", "Reptile (32 steps)", "MAML (rmd)",
             "HPO-SGLD", "HPO-SGLD (paper form)",
             "HPO-SGLD + 10x term, chain on all pixels, (B, M) = (4, 1)"]

# Paired per-seed differences reported under the table: (row, against).
COMPARISONS = [
    ("HPO-SGLD (paper form)", "Reptile"), ("HPO-SGLD (paper form)", "Reptile (32 steps)"),
    ("HPO-SGLD (paper form)", "MAML (rmd)"),
    ("HPO-SGLD (paper form)", "Reptile (32 steps), support pixels only"),
    ("HPO-SGLD + term, (B, M) = (4, 1)", "Reptile"),
    ("HPO-SGLD + term, (B, M) = (4, 1)", "Reptile, support pixels only"),
    ("HPO-SGLD + 10x term, (B, M) = (4, 1)", "Reptile, support pixels only"),
    ("HPO-SGLD + 10x term, chain on all pixels, (B, M) = (4, 1)", "Reptile"),
    ("HPO-SGLD", "Reptile")]

# Paper Table 7 (ShapeNet, single-view NeRF, test PSNR dB). Context: different data and model.
PAPER_TABLE7 = {
    "Standard random init": (12.49, 11.45, 15.47),
    "Reptile (Tancik et al. 2021)": (18.85, 22.80, 22.35),
    "HPO-SGLD (paper)": (18.77, 23.16, 22.73),
}


# --------------------------------------------------------------------------- data

def load_grey_images() -> list[torch.Tensor]:
    """The two photos bundled with scikit-learn, grey, values in [0, 1] (no download)."""
    from sklearn.datasets import load_sample_images

    return [torch.tensor(img.astype(np.float32).mean(axis=2) / 255.0)
            for img in load_sample_images().images]


def sample_patches(images, gen: torch.Generator, n: int, size: int, share: float, train: bool):
    """``n`` random ``size x size`` patches, flattened to (n, size * size).

    Training patches lie in the left ``share`` of each photo, test patches in the rest.
    """
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = img.shape
        cut = int(share * w)
        lo, hi = (0, cut - size) if train else (cut, w - size)
        x0 = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        out.append(img[y0:y0 + size, x0:x0 + size].reshape(-1))
    return torch.stack(out)


def coordinates(size: int):
    """Pixel centres in [0, 1)^2, row-major; and the checkerboard support mask."""
    r = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    support = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0).reshape(-1)
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), support


# --------------------------------------------------------------------------- model

class INR:
    """Fourier-feature coordinate MLP as pure functions of a parameter list."""

    def __init__(self, cfg: dict):
        gen = torch.Generator().manual_seed(1234)  # the features are fixed: part of the model
        self.b = torch.randn(2, cfg["n_features"], generator=gen) * cfg["sigma"]
        self.coords, self.support = coordinates(cfg["patch"])
        self.feats = self.encode(self.coords)
        self.hidden = cfg["hidden"]

    def encode(self, x):
        proj = 2 * math.pi * x @ self.b
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)

    def init(self, seed: int) -> list[torch.Tensor]:
        """PyTorch's default Linear init (uniform +-1/sqrt(fan_in)), seeded."""
        gen = torch.Generator().manual_seed(seed)
        d, h = self.feats.shape[1], self.hidden
        shapes = [((h, d), d), ((h,), d), ((h, h), h), ((h,), h), ((1, h), h), ((1,), h)]
        return [(torch.rand(s, generator=gen) * 2 - 1) / math.sqrt(f) for s, f in shapes]

    def __call__(self, params, feats=None):
        w1, b1, w2, b2, w3, b3 = params
        x = self.feats if feats is None else feats
        x = torch.relu(x @ w1.T + b1)
        x = torch.relu(x @ w2.T + b2)
        return (x @ w3.T + b3).squeeze(-1)

    def loss(self, params, patch, mask):
        return ((self(params)[mask] - patch[mask]) ** 2).mean()


def adapt(model: INR, params, patch, lr: float, steps: int, mask=None):
    """``steps`` plain gradient steps from ``params`` on the patch's support (or ``mask``)
    pixels."""
    mask = model.support if mask is None else mask
    theta = [p.detach().clone().requires_grad_(True) for p in params]
    for _ in range(steps):
        g = torch.autograd.grad(model.loss(theta, patch, mask), theta)
        theta = [(t - lr * gi).detach().requires_grad_(True) for t, gi in zip(theta, g)]
    return [t.detach() for t in theta]


def test_psnr(model: INR, params, patches, cfg, steps: int) -> np.ndarray:
    """PSNR (dB) on each test patch's query pixels after ``steps`` plain steps on its support
    pixels at the shared inner lr: the one meta-test of every row."""
    query = ~model.support
    out = []
    for patch in patches:
        theta = adapt(model, params, patch, cfg["inner_lr"], steps)
        with torch.no_grad():
            mse = float(((model(theta)[query] - patch[query]) ** 2).mean())
        out.append(10 * math.log10(1.0 / mse) if mse > 0 else float("inf"))
    return np.asarray(out)


def eta_lambda_max(model: INR, params, patches, lr: float) -> float:
    """``lr * lambda_max`` of the support loss's Hessian at ``params``, mean over ``patches``.

    A 30-step power iteration (a lower estimate); plain gradient descent at ``lr`` is stable
    along the top eigenvector only below 2, and the core's guard acts above 1.
    """
    values = []
    for patch in patches:
        theta = [p.detach().clone().requires_grad_(True) for p in params]
        g = torch.autograd.grad(model.loss(theta, patch, model.support), theta, create_graph=True)

        def hvp(u, g=g, theta=theta):
            return [o.detach() for o in torch.autograd.grad(g, theta, grad_outputs=u,
                                                            retain_graph=True)]

        values.append(lr * top_eigenpair(hvp, theta, n_iter=30, tol=1e-3)[0])
    return float(np.mean(values))


# --------------------------------------------------------------------------- meta-training

def reptile_term(lam, theta, weight: float):
    """Supplement D.5's ``weight * ||lam - sg(theta)||^2``: its gradient in ``lam`` is
    ``2 weight (lam - theta)``, Reptile's pseudo-gradient; nothing flows through ``theta``."""
    return weight * sum(((l - t.detach()) ** 2).sum() for l, t in zip(lam, theta))


def fit_mask(model: INR, spec: dict) -> torch.Tensor:
    """The pixels a row's inner loop fits: the support half, or every pixel of the patch."""
    return torch.ones_like(model.support) if spec["pixels"] == "all" else model.support


def exact_query_gradient(model: INR, lam, patch, lr: float, spec: dict):
    """Reverse mode through the noise-free unroll: the gradient in ``lam`` of the mean query
    loss over steps ``B+1 .. B+M`` (what HPO-SGLD's chain estimates as ``tau -> 0``), and the
    mean of those iterates (for the term's gradient)."""
    burn_in, n_samples, mask = spec["burn_in"], spec["n_samples"], fit_mask(model, spec)
    lam = [t.detach().clone().requires_grad_(True) for t in lam]
    theta, total, kept = lam, 0.0, []
    for m in range(1, burn_in + n_samples + 1):
        g = torch.autograd.grad(model.loss(theta, patch, mask), theta, create_graph=True)
        theta = [t - lr * gi for t, gi in zip(theta, g)]
        if m > burn_in:
            total = total + model.loss(theta, patch, ~model.support) / n_samples
            kept.append([t.detach() for t in theta])
    grad = [g.detach() for g in torch.autograd.grad(total, lam)]
    return grad, [sum(ts) / n_samples for ts in zip(*kept)]


def meta_gradient_check(model: INR, lam, patch, spec: dict, cfg: dict, seed: int) -> dict:
    """At ``lam`` on one patch: cosine of the core's HPO-SGLD estimate of the query part of
    the meta-gradient (training's settings, guard included) with the exact one, and the norm
    of the Reptile term's gradient over that estimate's (what dominates the update)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in lam]
    _, lam_spec = _tree.flatten(leaves)
    mask = fit_mask(model, spec)
    problem = BilevelProblem(lambda l, th: model.loss(th, patch, ~model.support),
                             lambda l, th: model.loss(th, patch, mask), lam_spec,
                             lambda l: list(l))
    settings = InnerSettings(method="sgld", inner_lr=cfg["inner_lr"], burn_in=spec["burn_in"],
                             n_samples=spec["n_samples"], temperature=cfg["temperature"],
                             noise_scale=cfg["noise_scale"]).validate()
    with warnings.catch_warnings():
        # a check, not training: its guard warnings must not be counted as training's
        warnings.simplefilter("ignore", CurvatureWarning)
        est = hypergradient(problem, leaves, ChainState(), settings, make_generator(seed)).grad
    exact, mean_theta = exact_query_gradient(model, lam, patch, cfg["inner_lr"], spec)
    flat = [torch.cat([t.reshape(-1) for t in v]) for v in (est, exact)]
    term = torch.cat([(2 * spec["weight"] * (l - t)).reshape(-1)
                      for l, t in zip(lam, mean_theta)])
    return {"cos_exact": float(torch.nn.functional.cosine_similarity(*flat, dim=0)),
            "term_over_estimate": float(term.norm() / flat[0].norm()) if spec["weight"] else None}


def train_bilevel(model: INR, name: str, seed: int, tasks, cfg) -> tuple[list, dict]:
    """MAML or HPO-SGLD through ``minimize`` with the MAML-type start ``theta0 = lam``.

    One patch per outer iteration: the callback (called after each outer step) runs the
    meta-gradient check of an HPO-SGLD row now and then, and moves the losses on to the
    next patch of the stream.
    """
    spec = METHODS[name]
    state, checks = {"i": 0}, []
    query, mask, weight = ~model.support, fit_mask(model, spec), spec.get("weight", 0.0)

    def inner_loss(lam, theta):
        return model.loss(theta, tasks[state["i"]], mask)

    def outer_loss(lam, theta):
        value = model.loss(theta, tasks[state["i"]], query)
        return value + reptile_term(lam, theta, weight) if weight else value

    def next_task(record):
        it = record["iteration"]
        # the record counts from 0: checks after outer iterations 1, 2, 101, 201, ...
        if spec["kind"] == "sgld" and (it == 1 or it % cfg["diag_every"] == 0):
            checks.append({"iteration": it, **meta_gradient_check(
                model, record["lam"], tasks[state["i"]], spec, cfg, seed)})
        state["i"] = (state["i"] + 1) % len(tasks)

    sgld = spec["kind"] == "sgld"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CurvatureWarning)
        res = minimize(outer_loss, inner_loss, model.init(seed), lambda lam: list(lam),
                       method="sgld" if sgld else "rmd", n_outer=cfg["n_outer"],
                       outer_lr=cfg["outer_lr"], outer_optimizer="adam",
                       inner_lr=cfg["inner_lr"], burn_in=spec.get("burn_in", 4),
                       n_samples=spec.get("n_samples", 1), n_inner=spec["steps"],
                       temperature=cfg["temperature"], noise_scale=cfg["noise_scale"],
                       random_state=seed, callback=next_task, average=None)
    acted = sum(issubclass(w.category, CurvatureWarning) for w in caught)
    lam = [t.detach() for t in res.lam]
    finite = all(bool(torch.isfinite(t).all()) for t in lam)
    return lam, {"guard_acted": acted if sgld else None, "finite": finite,
                 "completed": bool(res.success), "message": res.message, "checks": checks}


def train_reptile(model: INR, name: str, seed: int, tasks, cfg) -> tuple[list, dict]:
    """Reptile: the row's steps on its pixels (all, or the support half), pseudo-gradient
    ``lam - theta`` to Adam."""
    spec = METHODS[name]
    lam = [t.clone().requires_grad_(True) for t in model.init(seed)]
    opt = make_outer_optimizer("adam", lam, cfg["outer_lr"])
    mask = fit_mask(model, spec)
    for it in range(cfg["n_outer"]):
        theta = adapt(model, lam, tasks[it % len(tasks)], cfg["inner_lr"], spec["steps"],
                      mask=mask)
        opt.zero_grad(set_to_none=False)
        for leaf, t in zip(lam, theta):
            leaf.grad = leaf.detach() - t
        opt.step()
    return [t.detach() for t in lam], {"guard_acted": None, "finite": True, "completed": True,
                                       "message": "completed", "checks": []}


def train_one(model: INR, name: str, seed: int, tasks, cfg) -> tuple[list, dict]:
    """Meta-train the row ``name`` on the seed's patch stream."""
    kind = METHODS[name]["kind"]
    if kind == "random":
        return model.init(seed), {"guard_acted": None, "finite": True, "completed": True,
                                  "message": "no training", "checks": []}
    if kind == "reptile":
        return train_reptile(model, name, seed, tasks, cfg)
    return train_bilevel(model, name, seed, tasks, cfg)


def run_all(cfg: dict):
    """Every method and seed: per-seed test PSNRs, diagnostics, CPU times, one init per method."""
    images = load_grey_images()
    model = INR(cfg)
    test = sample_patches(images, torch.Generator().manual_seed(99), cfg["n_test"],
                          cfg["patch"], cfg["train_share"], train=False)
    runs, inits = {name: [] for name in METHODS}, {}
    for seed in cfg["seeds"]:
        tasks = sample_patches(images, torch.Generator().manual_seed(1000 + seed),
                               cfg["n_outer"], cfg["patch"], cfg["train_share"], train=True)
        for name in METHODS:
            started = time.process_time()
            lam, info = train_one(model, name, seed, tasks, cfg)
            cpu = time.process_time() - started
            psnr = {k: (float(test_psnr(model, lam, test, cfg, k).mean()) if info["finite"]
                        else float("nan")) for k in cfg["eval_steps"]}
            curv = eta_lambda_max(model, lam, test[:cfg["n_curvature"]], cfg["inner_lr"]) \
                if info["finite"] else float("nan")
            runs[name].append({"seed": seed, "psnr": psnr, "eta_lambda_max": curv,
                               "cpu_s": cpu, **info})
            inits.setdefault(name, lam)
            shown = "  ".join(f"{k} steps {v:6.2f}" for k, v in psnr.items())
            print(f"seed {seed} {name:<34} test PSNR {shown} dB  eta*lmax {curv:.2f}  "
                  f"({cpu:.1f} s CPU, guard acted {info['guard_acted']}, {info['message']})",
                  flush=True)
    return model, test, runs, inits


# --------------------------------------------------------------------------- report

def _mean_std(values) -> tuple[float | None, float]:
    """Mean and std (ddof=1) over the finite values; ``(None, 0)`` when there is none."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None, 0.0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0


def summarise(runs: dict, cfg: dict) -> dict:
    """Per row: PSNR at each meta-test step count, diagnostics and CPU time over the seeds."""
    out = {}
    for name, rows in runs.items():
        checks = [c for r in rows for c in r["checks"]]
        ratios = [c["term_over_estimate"] for c in checks if c["term_over_estimate"] is not None]
        entry = {"n_seeds": len(rows),
                 "n_diverged": int(sum(not np.isfinite(r["psnr"][cfg["eval_steps"][0]])
                                       for r in rows)),
                 "n_stopped_early": int(sum(not r["completed"] for r in rows)),
                 "cpu_s_mean": float(np.mean([r["cpu_s"] for r in rows])),
                 "median_cos_with_exact": float(np.median([c["cos_exact"] for c in checks]))
                 if checks else None,
                 "median_term_over_estimate": float(np.median(ratios)) if ratios else None}
        entry["eta_lambda_max_mean"], entry["eta_lambda_max_std"] = _mean_std(
            [r["eta_lambda_max"] for r in rows])
        for k in cfg["eval_steps"]:
            entry[f"psnr_{k}_mean"], entry[f"psnr_{k}_std"] = _mean_std(
                [r["psnr"][k] for r in rows])
        out[name] = entry
    return out


def paired(runs: dict, cfg: dict) -> list[dict]:
    """Per-seed PSNR differences (row minus against) for :data:`COMPARISONS`, each step count."""
    out = []
    for a, b in COMPARISONS:
        if a not in runs or b not in runs:
            continue
        for k in cfg["eval_steps"]:
            diffs = [ra["psnr"][k] - rb["psnr"][k] for ra, rb in zip(runs[a], runs[b])]
            mean, std = _mean_std(diffs)
            out.append({"row": a, "against": b, "steps": k, "diff_mean": mean, "diff_std": std,
                        "n_within_1db": int(sum(d >= -1.0 for d in diffs if np.isfinite(d)))})
    return out


def _fmt(mean, std, digits=2) -> str:
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_rows(cfg: dict, summary: dict, runs: dict) -> list[str]:
    """The main table's header and one line per row of :data:`METHODS`."""
    steps = cfg["eval_steps"]
    lines = ["| method | inner steps (training) | pixels fit in training | term weight | "
             + " | ".join(f"test PSNR after {k} steps (dB)" for k in steps)
             + " | stopped early | guard acted (outer its, mean) | eta*lambda_max at learned init"
             " | median cos(HPO-SGLD query meta-grad, exact) | median norm(term grad) / "
             "norm(query meta-grad) | CPU s/seed |",
             "|---|---|---|---|" + "---|" * len(steps) + "---|---|---|---|---|---|"]
    for name, spec in METHODS.items():
        s = summary[name]
        acted = [r["guard_acted"] for r in runs[name] if r["guard_acted"] is not None]
        inner = ("—" if spec["kind"] == "random" else
                 f"{spec['steps']} (B, M) = ({spec['burn_in']}, {spec['n_samples']})"
                 if spec["kind"] == "sgld" else str(spec["steps"]))
        cos, ratio = s["median_cos_with_exact"], s["median_term_over_estimate"]
        guard = "—" if not acted else f"{np.mean(acted):.0f} of {cfg['n_outer']}"
        pixels = "—" if spec["kind"] == "random" else spec["pixels"]
        weight = f"{spec['weight']:g}" if spec["kind"] == "sgld" else "—"
        lines.append(
            f"| {name} | {inner} | {pixels} | {weight} | "
            + " | ".join(_fmt(s[f"psnr_{k}_mean"], s[f"psnr_{k}_std"]) for k in steps)
            + f" | {s['n_stopped_early']}/{s['n_seeds']} | "
            f"{guard} | "
            f"{_fmt(s['eta_lambda_max_mean'], s['eta_lambda_max_std'])} | "
            f"{'—' if cos is None else f'{cos:+.2f}'} | "
            f"{'—' if ratio is None else f'{ratio:.1f}'} | {s['cpu_s_mean']:.1f} |")
    return lines


def to_markdown(cfg: dict, summary: dict, runs: dict, pairs: list, total_cpu: float,
                smoke: bool) -> str:
    lines = [
        "# Meta-learned INR initialisation: 32x32 photo patches (paper Table 7 analog)",
        "",
        f"Generated by `benchmarks/inr.py`{' (SMOKE run: tiny, not for quoting)' if smoke else ''}.",
        "",
        f"Grey 32x32 patches of scikit-learn's two sample photos (train: left "
        f"{int(100 * cfg['train_share'])}%, test: right part); Fourier features "
        f"({cfg['n_features']}, sigma {cfg['sigma']}) + ReLU MLP {cfg['hidden']}-{cfg['hidden']}-1; "
        f"plain gradient steps (lr {cfg['inner_lr']}, every row) on the checkerboard support half; "
        f"PSNR on the other half. {cfg['n_outer']} outer Adam steps (lr {cfg['outer_lr']}), one "
        f"patch each, the same stream for every row; HPO-SGLD tau {cfg['temperature']}, kappa "
        f"{cfg['noise_scale']}; 'term' = Supplement D.5's ||lam - sg(theta)||^2 added to the "
        f"outer loss (weight: its column). {cfg['n_test']} test patches; seeds "
        f"{cfg['seeds']}. Every row is meta-tested the same way: "
        + " and ".join(str(k) for k in cfg["eval_steps"])
        + " plain steps from its learned init.",
        "",
    ] + table_rows(cfg, summary, runs)
    lines += ["", "Paired per-seed differences in test PSNR (row minus the other; >= -1 dB is "
              "'within 1 dB'):", "", "| row | against | meta-test steps | difference (dB) | "
              "seeds within 1 dB |", "|---|---|---|---|---|"]
    lines += [f"| {p['row']} | {p['against']} | {p['steps']} | "
              f"{_fmt(p['diff_mean'], p['diff_std'])} | {p['n_within_1db']}/{len(cfg['seeds'])} |"
              for p in pairs]
    lines += [
        "", "Columns: 'stopped early': training hit a non-finite value or a blown-up outer "
        "loss (the last finite init is kept and tested). 'guard acted': outer iterations on "
        "which the core's curvature guard (eta * lambda_max <= 1 at the chain's start) shrank "
        "the chain's step. 'eta*lambda_max at learned init': inner lr times the top "
        f"eigenvalue of the support loss's Hessian at the learned init, mean over "
        f"{cfg['n_curvature']} test patches (30-step power iteration). The two meta-gradient "
        f"columns (HPO-SGLD rows; after outer iterations 1, 2 and every {cfg['diag_every']}th "
        f"(1, 2, {cfg['diag_every'] + 1}, {2 * cfg['diag_every'] + 1}, ...), median "
        "over checks and seeds): the cosine of the core's estimate of the query loss's "
        "meta-gradient with the exact one (reverse mode through the same noise-free unroll), "
        "and the norm of the term's gradient 2 w (lam - mean theta) over that estimate's norm "
        "(above 1: the update is mostly Reptile's direction).",
        "", "## Paper Table 7 (ShapeNet single-view NeRF, test PSNR dB): context only", "",
        "| method | Chairs | Cars | Lamps |", "|---|---|---|---|"]
    lines += [f"| {n} | {a:.2f} | {b:.2f} | {c:.2f} |" for n, (a, b, c) in PAPER_TABLE7.items()]
    lines += ["", "A different task (3D scenes, 6x256 NeRF, 32 inner steps at lr 0.5): compare "
              "orderings, not decibels.", "",
              f"Total CPU time {total_cpu:.0f} s (time.process_time), torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s).", ""]
    return "\n".join(lines)


def plot(model: INR, test, inits: dict, cfg: dict):
    """Rows: test patches; columns: the truth and each of :data:`PLOT_ROWS`' reconstruction
    after the inner steps it was trained with (5 for the random init)."""
    n = min(3, len(test))
    ncols = len(PLOT_ROWS) + 1
    fig, _ = subplots(ncols, figsize=(1.9 * ncols, 2.2 * n), dpi=100, squeeze=False)
    fig.clf()
    axes = fig.subplots(n, ncols, squeeze=False)
    size = cfg["patch"]
    for r in range(n):
        axes[r, 0].imshow(test[r].reshape(size, size), cmap="gray", vmin=0, vmax=1)
        axes[0, 0].set_title("truth", fontsize=7)
        for c, name in enumerate(PLOT_ROWS, start=1):
            steps = METHODS[name]["steps"] or cfg["eval_steps"][0]
            theta = adapt(model, inits[name], test[r], cfg["inner_lr"], steps)
            with torch.no_grad():
                img = model(theta).reshape(size, size)
            axes[r, c].imshow(img.clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            axes[0, c].set_title(f"{name}\n{steps} steps", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"after the inner steps each row was trained with (seed {cfg['seeds'][0]})",
                 fontsize=9)
    return fig


def main(argv=None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    cfg = {**CONFIG, **(SMOKE_CONFIG if is_smoke() else {})}
    started = time.process_time()
    model, test, runs, inits = run_all(cfg)
    summary, pairs = summarise(runs, cfg), paired(runs, cfg)
    fig = plot(model, test, inits, cfg)
    total_cpu = time.process_time() - started
    text = to_markdown(cfg, summary, runs, pairs, total_cpu, is_smoke())
    print(text)
    payload = {"benchmark": "inr", "config": cfg, "methods": METHODS, "summary": summary,
               "paired": pairs, "runs": runs,
               "paper_table7_context": {"columns": ["Chairs", "Cars", "Lamps"],
                                        "rows": PAPER_TABLE7},
               "total_cpu_s": total_cpu}
    write_results(result_stem("inr", args.out_dir), payload, text, {"": fig})
    return 0


if __name__ == "__main__":
    sys.exit(main())
