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
* the inner loop is ``k`` plain gradient steps on the support MSE from the initialisation;
* meta-training patches come from the left 60% of each photo, test patches from the right
  40% (disjoint pixels);
* methods, all with the same task stream (one patch per outer iteration), Adam and budget:
  HPO-SGLD (``minimize(..., theta0=lambda lam: lam)``, the core's default recursion and its
  curvature guard), MAML (``method="rmd"`` through the same ``minimize``), Reptile (written
  here: ``k`` steps on all the patch's pixels, pseudo-gradient ``lam - theta``), and the
  random initialisation;
* metric: PSNR (dB, pixel range [0, 1]) on the query pixels after ``k`` steps from the
  learned init, mean over the test patches, then mean +- std (ddof=1) over seeds.

Run ``python benchmarks/inr.py`` (about 5 min of CPU time on one core: 600 outer iterations) or ``--smoke`` (seconds).
Writes ``benchmarks/results/inr.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
import torch

from sgld_tuner.core import minimize, make_outer_optimizer
from sgld_tuner.core.curvature import CurvatureWarning

from _plots import subplots
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

torch.set_num_threads(1)

CONFIG = {
    "seeds": [0, 1, 2, 3, 4],
    "patch": 32,
    "n_features": 32,          # Fourier features: 2 * n_features inputs to the MLP
    "sigma": 4.0,              # std of B, in cycles per patch width
    "hidden": 64,
    "inner_steps": 5,          # k, every method; HPO-SGLD: (B, M) = (k - 1, 1)
    "inner_lr": 0.05,
    "outer_lr": 1e-3,          # Adam, every method
    "n_outer": 600,
    "temperature": 1e-4,       # tau and kappa of Supplement D.5: negligible noise
    "noise_scale": 1e-6,
    "n_test": 100,
    "train_share": 0.6,
}
SMOKE_CONFIG = {"seeds": [0], "n_outer": 3, "n_test": 4}

# Paper Table 7 (ShapeNet, single-view NeRF, test PSNR dB). Context: different data and model.
PAPER_TABLE7 = {
    "Standard random init": (12.49, 11.45, 15.47),
    "Reptile (Tancik et al. 2021)": (18.85, 22.80, 22.35),
    "HPO-SGLD (paper)": (18.77, 23.16, 22.73),
}
METHODS = ["Random init (no meta-learning)", "Reptile", "MAML (rmd)", "HPO-SGLD"]


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


def adapt(model: INR, params, patch, cfg, mask=None):
    """``k`` plain gradient steps from ``params`` on the patch's support (or ``mask``) pixels."""
    mask = model.support if mask is None else mask
    theta = [p.detach().clone().requires_grad_(True) for p in params]
    for _ in range(cfg["inner_steps"]):
        g = torch.autograd.grad(model.loss(theta, patch, mask), theta)
        theta = [(t - cfg["inner_lr"] * gi).detach().requires_grad_(True)
                 for t, gi in zip(theta, g)]
    return [t.detach() for t in theta]


def test_psnr(model: INR, params, patches, cfg) -> np.ndarray:
    """PSNR (dB) on each test patch's query pixels after ``k`` steps on its support pixels."""
    query = ~model.support
    out = []
    for patch in patches:
        theta = adapt(model, params, patch, cfg)
        with torch.no_grad():
            mse = float(((model(theta)[query] - patch[query]) ** 2).mean())
        out.append(10 * math.log10(1.0 / mse) if mse > 0 else float("inf"))
    return np.asarray(out)


# --------------------------------------------------------------------------- meta-training

def train_bilevel(model: INR, method: str, seed: int, tasks, cfg) -> tuple[list, dict]:
    """MAML or HPO-SGLD through ``minimize`` with the MAML-type start ``theta0 = lam``.

    One patch per outer iteration: the callback (called after each outer step) moves the
    losses on to the next patch of the stream.
    """
    state = {"i": 0}
    query = ~model.support

    def inner_loss(lam, theta):
        return model.loss(theta, tasks[state["i"]], model.support)

    def outer_loss(lam, theta):
        return model.loss(theta, tasks[state["i"]], query)

    def next_task(record):
        state["i"] = (state["i"] + 1) % len(tasks)

    k = cfg["inner_steps"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CurvatureWarning)
        res = minimize(outer_loss, inner_loss, model.init(seed), lambda lam: list(lam),
                       method=method, n_outer=cfg["n_outer"], outer_lr=cfg["outer_lr"],
                       outer_optimizer="adam", inner_lr=cfg["inner_lr"], burn_in=k - 1,
                       n_samples=1, n_inner=k, temperature=cfg["temperature"],
                       noise_scale=cfg["noise_scale"], random_state=seed,
                       callback=next_task, average=None)
    acted = sum(issubclass(w.category, CurvatureWarning) for w in caught)
    lam = [t.detach() for t in res.lam]
    finite = all(bool(torch.isfinite(t).all()) for t in lam)
    return lam, {"guard_acted": acted if method == "sgld" else None, "finite": finite}


def train_reptile(model: INR, seed: int, tasks, cfg) -> tuple[list, dict]:
    """Reptile: ``k`` steps on all the patch's pixels, pseudo-gradient ``lam - theta`` to Adam."""
    lam = [t.clone().requires_grad_(True) for t in model.init(seed)]
    opt = make_outer_optimizer("adam", lam, cfg["outer_lr"])
    every = torch.ones_like(model.support)
    for it in range(cfg["n_outer"]):
        theta = adapt(model, lam, tasks[it % len(tasks)], cfg, mask=every)
        opt.zero_grad(set_to_none=False)
        for leaf, t in zip(lam, theta):
            leaf.grad = leaf.detach() - t
        opt.step()
    return [t.detach() for t in lam], {"guard_acted": None, "finite": True}


def run_all(cfg: dict):
    """Every method and seed: per-seed test PSNRs, timings and one learned init per method."""
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
            if name == "Reptile":
                lam, info = train_reptile(model, seed, tasks, cfg)
            elif name.startswith("Random"):
                lam, info = model.init(seed), {"guard_acted": None, "finite": True}
            else:
                lam, info = train_bilevel(model, "rmd" if name.startswith("MAML") else "sgld",
                                          seed, tasks, cfg)
            cpu = time.process_time() - started
            psnr = test_psnr(model, lam, test, cfg) if info["finite"] else np.array([np.nan])
            runs[name].append({"seed": seed, "psnr": float(psnr.mean()), "cpu_s": cpu, **info})
            inits.setdefault(name, lam)
            print(f"seed {seed} {name:<32} test PSNR {psnr.mean():6.2f} dB  ({cpu:.1f} s CPU, "
                  f"guard acted {info['guard_acted']})", flush=True)
    return model, test, runs, inits


# --------------------------------------------------------------------------- report

def summarise(runs: dict) -> dict:
    out = {}
    for name, rows in runs.items():
        vals = np.array([r["psnr"] for r in rows])
        ok = np.isfinite(vals)
        out[name] = {"psnr_mean": float(vals[ok].mean()) if ok.any() else None,
                     "psnr_std": float(vals[ok].std(ddof=1)) if ok.sum() > 1 else 0.0,
                     "n_seeds": len(rows), "n_diverged": int((~ok).sum()),
                     "cpu_s_mean": float(np.mean([r["cpu_s"] for r in rows]))}
    return out


def to_markdown(cfg: dict, summary: dict, runs: dict, total_s: float, smoke: bool) -> str:
    k = cfg["inner_steps"]
    lines = [
        "# Meta-learned INR initialisation: 32x32 photo patches (paper Table 7 analog)",
        "",
        f"Generated by `benchmarks/inr.py`{' (SMOKE run: tiny, not for quoting)' if smoke else ''}.",
        "",
        f"Grey 32x32 patches of scikit-learn's two sample photos (train: left "
        f"{int(100 * cfg['train_share'])}%, test: right part); Fourier features "
        f"({cfg['n_features']}, sigma {cfg['sigma']}) + ReLU MLP {cfg['hidden']}-{cfg['hidden']}-1; "
        f"{k} gradient steps (lr {cfg['inner_lr']}) on the checkerboard support half; PSNR on the "
        f"other half. {cfg['n_outer']} outer Adam steps (lr {cfg['outer_lr']}), one patch each; "
        f"HPO-SGLD (B, M) = ({k - 1}, 1), tau {cfg['temperature']}, kappa {cfg['noise_scale']}. "
        f"{cfg['n_test']} test patches; seeds {cfg['seeds']}.",
        "",
        f"| method | test PSNR after {k} steps (dB) | diverged | guard acted (outer its) | CPU s/seed |",
        "|---|---|---|---|---|",
    ]
    for name in METHODS:
        s = summary[name]
        acted = [r["guard_acted"] for r in runs[name] if r["guard_acted"] is not None]
        mean = "—" if s["psnr_mean"] is None else f"{s['psnr_mean']:.2f} ± {s['psnr_std']:.2f}"
        guard = "—" if not acted else f"{np.mean(acted):.0f} of {cfg['n_outer']}"
        lines.append(f"| {name} | {mean} | {s['n_diverged']}/{s['n_seeds']} | {guard} | "
                     f"{s['cpu_s_mean']:.1f} |")
    lines += ["", "## Paper Table 7 (ShapeNet single-view NeRF, test PSNR dB): context only", "",
              "| method | Chairs | Cars | Lamps |", "|---|---|---|---|"]
    lines += [f"| {n} | {a:.2f} | {b:.2f} | {c:.2f} |" for n, (a, b, c) in PAPER_TABLE7.items()]
    lines += ["", "A different task (3D scenes, 6x256 NeRF, 32 inner steps at lr 0.5, Reptile-style "
              "regulariser added to HPO-SGLD's outer loss): compare orderings, not decibels.", "",
              f"Total wall time {total_s:.0f} s, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s).", ""]
    return "\n".join(lines)


def plot(model: INR, test, inits: dict, cfg: dict):
    """Rows: test patches; columns: the truth and each method's reconstruction after k steps."""
    n = min(3, len(test))
    fig, axes = subplots(len(METHODS) + 1, figsize=(2.0 * (len(METHODS) + 1), 2.1 * n),
                         dpi=100, squeeze=False)
    fig.clf()
    axes = fig.subplots(n, len(METHODS) + 1, squeeze=False)
    size = cfg["patch"]
    for r in range(n):
        axes[r, 0].imshow(test[r].reshape(size, size), cmap="gray", vmin=0, vmax=1)
        axes[0, 0].set_title("truth", fontsize=8)
        for c, name in enumerate(METHODS, start=1):
            theta = adapt(model, inits[name], test[r], cfg)
            with torch.no_grad():
                img = model(theta).reshape(size, size)
            axes[r, c].imshow(img.clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            axes[0, c].set_title(name.split(" (")[0], fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"after {cfg['inner_steps']} steps on the support half (seed {cfg['seeds'][0]})",
                 fontsize=9)
    return fig


def main(argv=None) -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parse_args(parser, argv)
    cfg = {**CONFIG, **(SMOKE_CONFIG if is_smoke() else {})}
    started = time.perf_counter()
    model, test, runs, inits = run_all(cfg)
    total_s = time.perf_counter() - started
    summary = summarise(runs)
    text = to_markdown(cfg, summary, runs, total_s, is_smoke())
    print(text)
    payload = {"benchmark": "inr", "config": cfg, "summary": summary, "runs": runs,
               "paper_table7_context": {"columns": ["Chairs", "Cars", "Lamps"],
                                        "rows": PAPER_TABLE7},
               "total_time_s": total_s}
    write_results(result_stem("inr", args.out_dir), payload, text,
                  {"": plot(model, test, inits, cfg)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
