"""Shared benchmark problem: an MLP with one L1 hyperparameter per weight.

Used by ``benchmarks/cost.py`` and ``benchmarks/memory.py``; not part of the package.

The net is ``x -> tanh(W1 x + b1) -> tanh(W2 h + b2) -> W3 h + b3`` with input width
equal to the hidden width ``h`` and 10 classes, so the weight count is
``2 h^2 + 12 h + 10``; :func:`width_for` picks ``h`` for a target count.
"""
from __future__ import annotations

import math
import os
import resource
import sys

import torch
import torch.nn.functional as F

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient
from sgld_tuner.core import _tree

N_CLASSES = 10
BATCH = 128
N_BATCHES = 8  # training minibatches cycled through by the inner loss


def width_for(n_weights: float) -> int:
    """Hidden width ``h`` whose weight count ``2 h^2 + 12 h + 10`` is closest to ``n_weights``."""
    h = int(round((-12 + math.sqrt(144 + 8 * (n_weights - 10))) / 4))
    return max(h, 2)


def count(width: int) -> int:
    """Weight count of the net of hidden width ``width``."""
    return 2 * width * width + 12 * width + 10


def init_theta(width: int, seed: int = 0) -> list[torch.Tensor]:
    """Glorot-scaled weights, zero biases, as a flat list [W1, b1, W2, b2, W3, b3]."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(width, width), (width,), (width, width), (width,), (N_CLASSES, width), (N_CLASSES,)]
    leaves = []
    for shape in shapes:
        if len(shape) == 2:
            leaves.append(torch.randn(shape, generator=gen) / math.sqrt(shape[1]))
        else:
            leaves.append(torch.zeros(shape))
    return leaves


def forward(theta, x):
    """Logits of the MLP with weights ``theta = [W1, b1, W2, b2, W3, b3]`` on rows ``x``."""
    w1, b1, w2, b2, w3, b3 = theta
    hidden = torch.tanh(F.linear(x, w1, b1))
    hidden = torch.tanh(F.linear(hidden, w2, b2))
    return F.linear(hidden, w3, b3)


def make_data(width: int, seed: int = 1):
    """Synthetic classification data: labels from a random linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(N_CLASSES, width, generator=gen)
    x_train = torch.randn(N_BATCHES, BATCH, width, generator=gen)
    y_train = (x_train @ teacher.T).argmax(-1)
    x_val = torch.randn(BATCH, width, generator=gen)
    y_val = (x_val @ teacher.T).argmax(-1)
    return x_train, y_train, x_val, y_val


def make_problem(width: int, lam_init: float = 1e-5):
    """Return ``(problem_plain, problem_closed, lam, train_step)`` for the per-weight L1 MLP.

    ``problem_closed`` is ``problem_plain`` plus the closed-form ``mixed_vjp``.

    ``problem.inner_loss`` is minibatch cross-entropy (cycling through ``N_BATCHES``
    fixed batches of ``BATCH`` rows) plus ``sum lam * |theta|``; ``problem.outer_loss``
    is cross-entropy on one validation batch of the same size, so an outer evaluation
    costs what a training forward pass costs. ``train_step(theta, lr)`` is the plain SGD
    step the hypergradient's inner step is compared with (same net, batch and penalty).
    """
    x_train, y_train, x_val, y_val = make_data(width)
    cursor = [0]

    def next_batch():
        k = cursor[0] % N_BATCHES
        cursor[0] += 1
        return x_train[k], y_train[k]

    def inner_loss(lam, theta):
        x, y = next_batch()
        penalty = sum((l * t.abs()).sum() for l, t in zip(lam, theta))
        return F.cross_entropy(forward(theta, x), y) + penalty

    def outer_loss(lam, theta):
        return F.cross_entropy(forward(theta, x_val), y_val)

    def mixed_vjp(lam, theta, v):
        # d/dlam [v . d(lam |theta|)/dtheta] = v * sign(theta), elementwise: the closed
        # form that lets the paper recursion skip the double backward.
        return [vi * torch.sign(ti) for vi, ti in zip(v, theta)]

    theta0 = init_theta(width)
    lam = [torch.full_like(t, lam_init).requires_grad_(True) for t in theta0]
    lam_leaves, lam_spec = _tree.flatten(lam)
    problem_plain = BilevelProblem(outer_loss, inner_loss, lam_spec, theta0)
    problem_closed = BilevelProblem(outer_loss, inner_loss, lam_spec, theta0, mixed_vjp=mixed_vjp)

    def train_step(theta, lr):
        """One plain SGD step on the same inner loss (lam fixed, no graph to lam)."""
        theta = [t.detach().requires_grad_(True) for t in theta]
        fixed = [l.detach() for l in lam]
        value = inner_loss(fixed, theta)
        grads = torch.autograd.grad(value, theta)
        with torch.no_grad():
            torch._foreach_add_(theta, grads, alpha=-lr)
        return [t.detach() for t in theta]

    return problem_plain, problem_closed, lam_leaves, train_step


# (label, method, recursion, closed form?) for every configuration the scripts measure
CONFIGS = {
    "sgld-damped": ("sgld", "damped", False),
    # The tuner's default for penalty kinds: damped, curvature once per outer iteration,
    # closed-form mixed derivative on every other step.
    "sgld-damped-closed": ("sgld", "damped", True),
    "sgld-paper": ("sgld", "paper", False),
    "sgld-paper-closed": ("sgld", "paper", True),
    "rmd": ("rmd", "damped", False),
    "ift-cg": ("ift-cg", "damped", False),
}


def settings_for(label: str, steps: int, inner_lr: float = 0.05) -> InnerSettings:
    """Inner settings for ``label`` with ``steps = B + M`` inner steps (B = M = steps / 2)."""
    method, recursion, _ = CONFIGS[label]
    burn_in = steps // 2
    return InnerSettings(method=method, inner_lr=inner_lr, burn_in=burn_in,
                         n_samples=steps - burn_in, temperature=1e-4, noise_scale=1.0,
                         n_inner=steps, chain="persistent", recursion=recursion,
                         cg_iters=10).validate()


def one_hypergradient(problem_plain, problem_closed, lam, label, steps, seed=0):
    """One hypergradient of configuration ``label`` from a fresh chain (``B + M = steps``)."""
    problem = problem_closed if CONFIGS[label][2] else problem_plain
    gen = torch.Generator().manual_seed(seed)
    return hypergradient(problem, lam, ChainState(), settings_for(label, steps), gen)


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size."""
    value = _status_bytes("VmRSS")
    if value is None:  # not Linux: fall back to the lifetime peak
        value = peak_rss_bytes()
    return value


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak` (or process start)."""
    value = _status_bytes("VmHWM")
    if value is None:
        scale = 1 if sys.platform == "darwin" else 1024
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return value


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible.

    Without it ``ru_maxrss`` would still hold the setup's own transient peak, which can
    hide a smaller hypergradient peak that comes after it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_peak(label: str, steps: int, width: int) -> dict:
    """Peak RSS of ``steps`` plain training steps and of one hypergradient with ``B + M = steps``.

    Meant to run in a fresh process (see ``__main__`` below). Both peaks are taken above
    the same baseline, the RSS once data, problem and ``lam`` exist but no trained model
    does: the plain run allocates its model inside the window, the hypergradient its chain,
    so ``hyper - plain`` is the memory the hypergradient needs beyond plain training.
    ``label="plain"`` measures only the plain run.
    """
    import gc
    import time

    torch.set_num_threads(1)
    # Touch every code path once on a tiny net first: the first double backward pages in
    # tens of MB of libtorch code, which RSS counts but which is no part of the method's
    # memory and would otherwise land in whichever measurement ran first.
    tiny = make_problem(8)
    tiny[3](init_theta(8), 0.05)
    if label != "plain":
        one_hypergradient(tiny[0], tiny[1], tiny[2], label, 2)
    del tiny
    problem_plain, problem_closed, lam, train_step = make_problem(width)
    train_step(init_theta(width), 0.05)  # warm: first-call allocations at full size
    gc.collect()

    exact = reset_peak()
    baseline = rss_bytes()
    theta = init_theta(width)
    for _ in range(steps):
        theta = train_step(theta, 0.05)
    out = {"label": label, "steps": steps, "width": width, "n_weights": count(width),
           "model_bytes": sum(t.numel() * t.element_size() for t in theta),
           "baseline_rss_bytes": baseline, "plain_peak_bytes": peak_rss_bytes() - baseline,
           "peak_reset": exact}
    del theta
    gc.collect()
    if label != "plain":
        reset_peak()
        baseline = rss_bytes()
        started = time.perf_counter()
        result = one_hypergradient(problem_plain, problem_closed, lam, label, steps)
        out["wall_s"] = time.perf_counter() - started
        out["hyper_peak_bytes"] = peak_rss_bytes() - baseline
        out["finite"] = bool(all(torch.isfinite(g).all() for g in result.grad))
    return out


def run_child(label: str, steps: int, width: int, timeout: float = 900.0) -> dict:
    """Run :func:`measure_peak` in a fresh interpreter and return its JSON record."""
    import json
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "peak", label, str(steps), str(width)]
    # Large blocks via mmap, returned on free: RSS then tracks live tensor bytes rather
    # than glibc's heap-retention policy (its dynamic mmap threshold keeps freed blocks).
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"label": label, "steps": steps, "width": width, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import json

    if len(sys.argv) == 5 and sys.argv[1] == "peak":
        print(json.dumps(measure_peak(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        raise SystemExit("usage: python benchmarks/_mlp.py peak LABEL STEPS WIDTH")
