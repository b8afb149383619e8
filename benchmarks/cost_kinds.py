"""Cost of the default of every hyperparameter kind, through the tuner's own problem.

For each of the six kinds (PerWeightL1, WeightDecay, LossWeights, TaylorLoss,
AffineAugmentation, SampleWeights), built with its default arguments as a user writes
them, and each net (64-128-10, 64-512-512-10 and 64-964-964-10, about 1.0e6 weights):

* the CPU time of one HPO-SGLD inner step with the tuner's defaults (``SamplerSettings()``:
  recursion ``"auto"``, i.e. tracked; its noise, random signs; B = M = 5;
  ``temperature=1e-4``; the net's ``lr=0.1``; batch 64; the outer loss on
  ``outer_batch_size=128`` validation rows drawn from a generator of their own), i.e. one hypergradient divided by ``B + M``, on the fold
  problem the tuner builds (``NetProblem`` with ``module_rng`` and ``outer_generator``,
  then ``problem.bilevel()``);
* the CPU time of one plain SGD training step of the same net on a 64-row minibatch
  (forward, backward, update), and their ratio; AffineAugmentation is also divided by a
  plain step that warps the minibatch with the kind's own ``transform_inputs`` at its
  initial value (no grad), so that the ratio is not charged for the augmentation itself;
* for the penalty kinds, the same with ``recursion="damped"`` (a cheaper second row);
* the peak memory of one hypergradient above the peak of ``B + M`` plain training steps,
  in model sizes (parameter bytes), measured like ``benchmarks/memory.py``: a fresh
  interpreter per row, the kernel's peak-RSS mark reset before each window.

Digits: 1200 training / 597 validation rows. One torch thread; time is
``time.process_time()``, median over interleaved rounds (plain, every kind, plain, ...).

    python benchmarks/cost_kinds.py            # full table (about 4 minutes on 2 cores)
    python benchmarks/cost_kinds.py --smoke    # 64-128-10, one round, 2 kinds, 1 memory row (~10 s)
    python benchmarks/cost_kinds.py --profile 64-128-10 PerWeightL1   # pieces + profiler

Writes ``benchmarks/results/cost_kinds.{json,md}`` (``cost_kinds_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skorch import NeuralNetClassifier  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.func import functional_call  # noqa: E402

from sgld_tuner import SamplerSettings  # noqa: E402
from sgld_tuner.core import ChainState, InnerSettings, hypergradient  # noqa: E402
from sgld_tuner.core.sgld import draw_noise  # noqa: E402
from sgld_tuner.core import _tree  # noqa: E402
from sgld_tuner.hyperparams import (AffineAugmentation, LossWeights, PerWeightL1,  # noqa: E402
                                    SampleWeights, TaylorLoss, WeightDecay)
from sgld_tuner.optimizers import chain_dynamics, net_weight_decay  # noqa: E402
from sgld_tuner.learned_net import make_learned_net  # noqa: E402
from sgld_tuner.skorch_adapter import ModuleRNG, NetProblem  # noqa: E402
from sgld_tuner.core.recursions import resolve_recursion  # noqa: E402

import _mlp  # noqa: E402  (peak-RSS helpers shared with memory.py)
from _results import (add_common_args, is_smoke, parse_args, report_child, result_stem,  # noqa: E402
                      write_results)

BATCH = 64             # the net's batch_size (make_net's)
OUTER_BATCH = 128      # SamplerSettings' default outer_batch_size
LR = 0.1               # the net's lr, which the tuner uses as inner_lr
BURN_IN = N_SAMPLES = 5
TEMPERATURE = 1e-4     # SGLDHyperTuner's default
MIB = 2.0 ** 20

# The nets: hidden layer sizes of 64-...-10 ReLU MLPs.
SIZES = {"64-128-10": (128,), "64-512-512-10": (512, 512), "64-964-964-10": (964, 964)}

# Each kind with its default arguments, as a user writes them (AffineAugmentation needs
# the image shape of digits' flat rows).
KINDS = {
    "PerWeightL1": lambda: PerWeightL1(),
    "WeightDecay": lambda: WeightDecay(),
    "LossWeights": lambda: LossWeights(),
    "TaylorLoss": lambda: TaylorLoss(),
    "SampleWeights": lambda: SampleWeights(),
    "AffineAugmentation": lambda: AffineAugmentation(image_shape=(8, 8)),
}
PENALTIES = ("PerWeightL1", "WeightDecay")
LOSSES = ("LossWeights", "TaylorLoss")


def target(size: str, kind: str) -> float | None:
    """Issue 11's bound on the ratio (penalty kinds at every size, loss kinds at 64-128-10)."""
    if kind in PENALTIES:
        return 2.0 if size == "64-128-10" else 3.0
    if kind in LOSSES and size == "64-128-10":
        return 3.0
    return None


class MLP(torch.nn.Module):
    """64 -> hidden[0] -> ... -> 10 with ReLU (``sgld_tuner.demo.MLP`` for one layer)."""

    def __init__(self, hidden=(128,), n_in=64, n_out=10):
        super().__init__()
        widths = (n_in, *hidden)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b)
                                          for a, b in zip(widths[:-1], widths[1:]))
        self.out = torch.nn.Linear(widths[-1], n_out)

    def forward(self, X):
        for layer in self.hidden:
            X = torch.relu(layer(X))
        return self.out(X)


def data():
    """Digits scaled to [0, 1], shuffled once: 1200 training rows, 597 validation rows."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    return X[:1200], y[:1200], X[1200:], y[1200:]


def make_net(size: str):
    """The fold's net as ``SGLDHyperTuner._make_fold`` makes it: the user's net (demo
    settings: SGD, lr 0.1, batch 64, cross-entropy on logits) as a learned-net clone
    without hyperparameters, initialised under a fixed seed."""
    user = NeuralNetClassifier(MLP, module__hidden=SIZES[size],
                               criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD,
                               lr=LR, optimizer__momentum=0.0, batch_size=BATCH,
                               train_split=None, verbose=0)
    net = make_learned_net(user, {}, {})
    net.set_params(verbose=0, classes=list(range(10)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net.initialize()
    return net


def fold_problem(net, kind: str, Xtr, ytr, Xva, yva):
    """``(problem, bilevel)`` as ``SGLDHyperTuner._make_fold`` builds them for one fold."""
    spec = KINDS[kind]()
    problem = NetProblem(net, {"h": spec}, Xtr, ytr, Xva, yva,
                         train_rows=np.arange(len(ytr)), n_train_total=len(ytr) + len(yva),
                         batch_size=BATCH, generator=torch.Generator().manual_seed(1),
                         augment_outer=spec.transforms_validation_inputs, n_classes=10,
                         outer_batch_size=OUTER_BATCH, module_rng=ModuleRNG(2),
                         outer_generator=torch.Generator().manual_seed(3))
    return problem, problem.bilevel(weight_decay=net_weight_decay(net))


def settings(net, recursion: str) -> InnerSettings:
    """The tuner's InnerSettings for ``net`` (its ``_settings`` with the defaults)."""
    dynamics, _ = chain_dynamics(net)
    return InnerSettings(method="sgld", inner_lr=LR, burn_in=BURN_IN, n_samples=N_SAMPLES,
                         temperature=TEMPERATURE, noise_scale=1.0, chain="persistent",
                         recursion=recursion, noise=SamplerSettings().noise,
                         **dynamics).validate()


class PlainTrainer:
    """Plain SGD on the net's criterion: draw 64 rows, forward, backward, update.

    ``augment`` is a bound AffineAugmentation whose ``transform_inputs`` warps each
    minibatch (at its initial value, no grad) before the forward pass.
    """

    def __init__(self, net, X, y, augment=None, seed=0):
        self.module, self.crit = net.module_, net.criterion_
        self.X, self.y = torch.as_tensor(X), torch.as_tensor(y).long()
        self.gen = torch.Generator().manual_seed(seed)
        self.augment = augment
        self.raw = augment.init_raw("cpu", torch.float32) if augment is not None else None
        self.theta = self.fresh_theta()

    def fresh_theta(self):
        return {n: p.detach().clone().requires_grad_(True)
                for n, p in self.module.named_parameters()}

    def step(self, theta):
        idx = torch.randperm(len(self.X), generator=self.gen)[:BATCH]
        X = self.X[idx]
        if self.augment is not None:
            with torch.no_grad():
                X = self.augment.transform_inputs(self.raw, X, self.gen)
        loss = self.crit(functional_call(self.module, theta, (X,)), self.y[idx])
        grads = torch.autograd.grad(loss, list(theta.values()))
        with torch.no_grad():
            torch._foreach_add_(list(theta.values()), list(grads), alpha=-LR)

    def seconds(self, steps: int) -> float:
        """CPU seconds per step over ``steps`` steps."""
        started = time.process_time()
        for _ in range(steps):
            self.step(self.theta)
        return (time.process_time() - started) / steps


class SGLDRunner:
    """One fold's persistent chain at the initial hyperparameter values."""

    def __init__(self, net, kind, recursion, Xtr, ytr, Xva, yva):
        self.problem, self.bilevel = fold_problem(net, kind, Xtr, ytr, Xva, yva)
        self.lam = [t.detach().requires_grad_(True)
                    for t in _tree.flatten(self.problem.init_lam())[0]]
        # "auto" as the tuner resolves it (damped for a kind that rewrites the loss)
        self.resolved = resolve_recursion(recursion, False, any(
            b.modifies_loss for b in self.problem.bound.values()))
        self.settings = settings(net, self.resolved)
        self.state, self.gen = ChainState(), torch.Generator().manual_seed(4)

    def seconds(self) -> float:
        """CPU seconds per inner step of one hypergradient."""
        started = time.process_time()
        hypergradient(self.bilevel, self.lam, self.state, self.settings, self.gen)
        return (time.process_time() - started) / self.settings.steps


def configs(kinds):
    """``(kind, recursion)`` pairs: the tuner's default for every kind, damped for
    penalties too."""
    out = []
    for kind in kinds:
        out.append((kind, "auto"))
        if kind in PENALTIES:
            out.append((kind, "damped"))
    return out


def time_size(size: str, kinds, rounds: int, data_):
    """Medians over ``rounds`` interleaved rounds: plain, plain with augmentation (when
    AffineAugmentation is measured), then one hypergradient of every configuration."""
    Xtr, ytr, Xva, yva = data_
    net = make_net(size)
    runners = {c: SGLDRunner(net, *c, Xtr, ytr, Xva, yva) for c in configs(kinds)}
    plains = {"plain": PlainTrainer(net, Xtr, ytr)}
    affine = runners.get(("AffineAugmentation", "auto"))
    if affine is not None:
        plains["plain+augmentation"] = PlainTrainer(net, Xtr, ytr,
                                                    augment=affine.problem.bound["h"])
    steps = BURN_IN + N_SAMPLES
    for p in plains.values():  # warm-up
        p.seconds(steps)
    for r in runners.values():
        r.seconds()
    times = {k: [] for k in [*plains, *runners]}
    for _ in range(rounds):
        for name, p in plains.items():
            times[name].append(p.seconds(steps))
        for c, r in runners.items():
            times[c].append(r.seconds())
    med = {k: float(np.median(v)) for k, v in times.items()}
    n_weights = sum(p.numel() for p in net.module_.parameters())
    rows = []
    for (kind, recursion) in runners:
        plain, step = med["plain"], med[(kind, recursion)]
        row = {"size": size, "n_weights": n_weights, "kind": kind,
               "recursion": (recursion if recursion != "auto" else
                             f"{resolve_recursion(runners[(kind, recursion)].resolved, False)}"
                             " (auto)"),
               "plain_ms": plain * 1e3, "sgld_ms": step * 1e3, "ratio": step / plain,
               "rounds": rounds, "target": target(size, kind)}
        if kind == "AffineAugmentation":
            row["plain_aug_ms"] = med["plain+augmentation"] * 1e3
            row["ratio_vs_aug"] = step / med["plain+augmentation"]
        if row["target"] is not None:
            row["met"] = bool(row["ratio"] <= row["target"])
        rows.append(row)
        extra = (f", vs plain+aug {row['plain_aug_ms']:.2f} ms: {row['ratio_vs_aug']:.2f}x"
                 if "ratio_vs_aug" in row else "")
        print(f"{size:14s} {kind:18s} {row['recursion']:14s} plain {plain * 1e3:7.2f} ms  "
              f"sgld {step * 1e3:7.2f} ms  {step / plain:5.2f}x{extra}", flush=True)
    return rows


# -- memory: one fresh interpreter per row ------------------------------------------------

def allocator_peak(fn) -> int | None:
    """Peak bytes of CPU tensors alive during ``fn()`` above those alive before it, from
    torch.profiler's memory timeline (allocator-level: no page or RSS-counter granularity,
    which matters for a 38 KB model). ``None`` where that (private) API is missing."""
    try:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile
        from torch.profiler._memory_profiler import Action
    except ImportError:
        return None
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                       record_shapes=True, with_stack=True) as prof:
        fn()
    try:
        timeline = prof._memory_profile().timeline
    except Exception:  # noqa: BLE001 - a private API: report nothing rather than fail
        return None
    live = peak = 0  # tensors alive before fn() (Action.PREEXISTING) are not counted
    for _, action, (key, _), size in timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def measure_memory(size: str, kind: str, recursion: str) -> dict:
    """Peak memory of ``B + M`` plain steps and of one hypergradient, in a fresh process.

    RSS, as ``benchmarks/memory.py`` measures it (``_mlp.measure_peak``): both windows
    start from the same kind of baseline, the RSS once data, problem and ``lam`` exist
    (the kernel's peak mark reset first); the plain window allocates its model, the
    hypergradient its chain (a fresh ``ChainState``), so ``hyper - plain`` is what the
    hypergradient needs beyond plain training. Then the same two windows again under
    torch.profiler's memory timeline (:func:`allocator_peak`).
    """
    torch.set_num_threads(1)
    data_ = data()
    # Touch every code path once on the smallest net: the first double backward pages in
    # libtorch code that RSS counts but that is no part of the method's memory.
    tiny = SGLDRunner(make_net("64-128-10"), kind, recursion, *data_)
    tiny.seconds()
    PlainTrainer(tiny.problem.net, data_[0], data_[1]).seconds(2)
    del tiny
    net = make_net(size)
    runner = SGLDRunner(net, kind, recursion, *data_)
    plain = PlainTrainer(net, data_[0], data_[1])
    plain.seconds(2)                                           # warm at full size
    hypergradient(runner.bilevel, runner.lam, ChainState(), runner.settings,
                  torch.Generator().manual_seed(5))            # warm, thrown away
    del plain.theta
    gc.collect()
    steps = BURN_IN + N_SAMPLES

    def plain_window():
        theta = plain.fresh_theta()                            # the model, inside the window
        for _ in range(steps):
            plain.step(theta)

    def hyper_window():
        hypergradient(runner.bilevel, runner.lam, ChainState(), runner.settings, runner.gen)

    exact = _mlp.reset_peak()
    baseline = _mlp.rss_bytes()
    plain_window()
    plain_peak = _mlp.peak_rss_bytes() - baseline
    gc.collect()
    _mlp.reset_peak()
    baseline = _mlp.rss_bytes()
    hyper_window()
    hyper_peak = _mlp.peak_rss_bytes() - baseline
    gc.collect()
    model_bytes = sum(p.numel() * p.element_size() for p in net.module_.parameters())
    alloc_plain, alloc_hyper = allocator_peak(plain_window), allocator_peak(hyper_window)
    out = {"size": size, "kind": kind, "recursion": recursion, "model_bytes": model_bytes,
           "plain_peak_bytes": plain_peak, "hyper_peak_bytes": hyper_peak,
           "above_plain_x_model": (hyper_peak - plain_peak) / model_bytes,
           "peak_reset": exact, "alloc_plain_peak_bytes": alloc_plain,
           "alloc_hyper_peak_bytes": alloc_hyper, "alloc_above_plain_x_model": None}
    if alloc_plain is not None and alloc_hyper is not None:
        out["alloc_above_plain_x_model"] = (alloc_hyper - alloc_plain) / model_bytes
    return out


def memory_child(size: str, kind: str, recursion: str, timeout: float = 600.0) -> dict:
    """:func:`measure_memory` in a fresh interpreter (one thread, mmap for blocks >= 64 KiB
    so that freed memory goes back to the kernel, as in ``memory.py``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", size, kind, recursion]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    if proc.returncode != 0:
        return {"size": size, "kind": kind, "recursion": recursion,
                "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- profile ------------------------------------------------------------------------------

def profile(size: str, kind: str, recursion: str = "auto", rounds: int = 20) -> None:
    """Where an inner step's time goes, printed (nothing written).

    First the pieces of a tracked step timed alone on the fold problem (CPU ms, median of
    ``rounds`` x 10 interleaved repeats, and in plain steps): the training loss's
    gradient with its graph kept (64 rows), that plus the double backward a tracked step
    takes through it every step, the outer loss's gradient (128 validation rows), one
    Gaussian draw for every weight. Then torch.profiler's op tables of ``rounds`` x 10
    plain steps and of ``rounds`` hypergradients (``recursion``), per step.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(1)
    data_ = data()
    net = make_net(size)
    runner = SGLDRunner(net, kind, recursion, *data_)
    plain = PlainTrainer(net, data_[0], data_[1])
    bilevel, lam = runner.bilevel, runner.lam
    theta = [t.detach().clone().requires_grad_(True) for t in bilevel.theta0_leaves]
    gen = torch.Generator().manual_seed(6)
    u = [torch.randn(t.shape, generator=gen) for t in theta]
    # the double backward's targets: theta (H u), and lam unless the mixed product has a
    # closed form (penalty kinds)
    targets = theta + ([] if bilevel.mixed_vjp is not None else lam)

    def inner_grad():
        return torch.autograd.grad(bilevel.inner_data(lam, theta), theta, create_graph=True)

    def inner_and_double():
        torch.autograd.grad(inner_grad(), targets, grad_outputs=u, allow_unused=True)

    pieces = {
        "plain step (64 rows: forward, backward, update)": lambda: plain.step(plain.theta),
        "training gradient with its graph (64 rows)": inner_grad,
        "  the same + double backward (H u, mixed)": inner_and_double,
        "outer loss gradient (128 validation rows)": lambda: torch.autograd.grad(
            bilevel.outer(lam, theta), theta),
        "Gaussian noise for every weight": lambda: [torch.randn(t.shape, generator=gen)
                                                   for t in theta],
        "random signs for every weight (the default noise)": lambda: list(
            draw_noise(theta, gen, "rademacher")),
    }
    times = {name: [] for name in pieces}
    for fn in pieces.values():
        fn()
    for _ in range(rounds * 10):
        for name, fn in pieces.items():
            started = time.process_time()
            fn()
            times[name].append(time.process_time() - started)
    med = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
    base = next(iter(med.values()))
    print(f"== {size}, {kind}: pieces of a step, CPU ms (x plain step)")
    for name, ms in med.items():
        print(f"  {name:50s} {ms:8.3f}  ({ms / base:.2f}x)")
    runner.seconds()
    steps = rounds * runner.settings.steps
    for label, work in (("plain step", lambda: plain.seconds(steps)),
                        (f"sgld inner step ({kind}, {recursion})",
                         lambda: [runner.seconds() for _ in range(rounds)])):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            work()
        events = prof.key_averages()
        calls = sum(e.count for e in events if e.key.startswith("aten::")) / steps
        print(f"== {size}, {label} under torch.profiler: "
              f"{sum(e.self_cpu_time_total for e in events) / steps:.0f} us self CPU and "
              f"{calls:.0f} aten calls per step")
        print(events.table(sort_by="self_cpu_time_total", row_limit=15))


# -- output -------------------------------------------------------------------------------

def fmt_target(row) -> str:
    if row["target"] is None:
        return "-"
    return f"<= {row['target']:.1f}x: {'met' if row['met'] else 'not met'}"


def fmt_memory(m) -> str:
    """``RSS / allocator`` multiples of the model above plain training; RSS is left out
    (``n/a``) below 1 MiB of model, where its counters' granularity decides it."""
    if m is None:
        return "-"
    if "error" in m:
        return "error"
    rss = f"{m['above_plain_x_model']:.1f}" if m["model_bytes"] >= MIB else "n/a"
    alloc = m.get("alloc_above_plain_x_model")
    return f"{rss} / {'n/a' if alloc is None else f'{alloc:.1f}'}"


def to_markdown(rows, memory, meta) -> str:
    mem = {(m["size"], m["kind"], m["recursion"]): m for m in memory}
    lines = [
        "# Cost of each hyperparameter kind's default, through the tuner", "",
        f"Command: `{meta['command']}` at {meta['code']}; torch {meta['torch']}, one "
        "thread, CPU time "
        f"(`time.process_time`), median of {meta['rounds']} interleaved rounds (by net); "
        f"load average {meta['load_avg_start'][0]:.2f} at the start and "
        f"{meta['load_avg_end'][0]:.2f} at the end on {meta['cpu_count']} cores; wall "
        f"time {meta['total_s']:.0f} s.", "",
        "Inner step = one hypergradient of the tuner's fold problem (`NetProblem` + "
        "`problem.bilevel()`, each kind with its default arguments, recursion `auto` = "
        "tracked, B = M = 5, tau = 1e-4, lr 0.1, batch 64, outer loss on 128 validation "
        "rows) / 10. Plain step = one SGD step of the same net on 64 rows (forward, "
        "backward, update). Digits, 1200 training / 597 validation rows, ReLU MLPs. "
        "AffineAugmentation: `plain+aug` warps the minibatch with the kind's own "
        "`transform_inputs` (at its initial value, no grad) first. Memory = (peak of one "
        "hypergradient - peak of 10 plain steps) / model bytes, in a fresh process per "
        "row: RSS as in `benchmarks/memory.py` (n/a for a model under 1 MiB) / live "
        "tensor bytes from torch.profiler's memory timeline.", "",
        "| net (weights) | kind | recursion | plain step (ms) | sgld inner step (ms) | ratio "
        "| ratio vs plain+aug | target (issue 11) | memory above plain, RSS / alloc "
        "(x model) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        key = (r["size"], r["kind"], "auto" if r["recursion"].endswith("(auto)")
               else r["recursion"])
        aug = (f"{r['ratio_vs_aug']:.2f}x (plain+aug {r['plain_aug_ms']:.2f} ms)"
               if "ratio_vs_aug" in r else "-")
        lines.append(f"| {r['size']} ({r['n_weights']:,}) | {r['kind']} | {r['recursion']} "
                     f"| {r['plain_ms']:.2f} | {r['sgld_ms']:.2f} | {r['ratio']:.2f}x | {aug} "
                     f"| {fmt_target(r)} | {fmt_memory(mem.get(key))} |")
    if memory:
        lines += ["", "Memory, MiB above each window's baseline:", "",
                  "| net | kind | recursion | model (MiB) | RSS: plain peak | RSS: hypergradient "
                  "peak | RSS: above plain (x model) | alloc: plain peak | alloc: "
                  "hypergradient peak | alloc: above plain (x model) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in memory:
            if "error" in m:
                lines.append(f"| {m['size']} | {m['kind']} | {m['recursion']} | error "
                             "| | | | | | |")
                continue
            alloc = (f"{m['alloc_plain_peak_bytes'] / MIB:.2f} | "
                     f"{m['alloc_hyper_peak_bytes'] / MIB:.2f} | "
                     f"{m['alloc_above_plain_x_model']:.2f}"
                     if m.get("alloc_above_plain_x_model") is not None else "n/a | n/a | n/a")
            lines.append(f"| {m['size']} | {m['kind']} | {m['recursion']} "
                         f"| {m['model_bytes'] / MIB:.3f} | {m['plain_peak_bytes'] / MIB:.2f} "
                         f"| {m['hyper_peak_bytes'] / MIB:.2f} "
                         f"| {m['above_plain_x_model']:.2f} | {alloc} |")
    return "\n".join(lines) + "\n"


def code_revision() -> str:
    """Which code was measured: the commit, and whether ``sgld_tuner/`` had uncommitted
    edits (``git diff --stat``), when the package is imported from this checkout."""
    import sgld_tuner

    package = os.path.dirname(os.path.abspath(sgld_tuner.__file__))
    root = os.path.dirname(package)

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return f"sgld_tuner from {package}"
    diff = git("diff", "--stat", "HEAD", "--", "sgld_tuner")
    return head + (f" + uncommitted edits in sgld_tuner/ ({diff.splitlines()[-1].strip()})"
                   if diff else "")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--memory-child"]:
        print(json.dumps(measure_memory(*argv[1:4])))
        return
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--profile", nargs=2, metavar=("NET", "KIND"),
                        help="print torch.profiler's table for one net and kind, write nothing")
    parser.add_argument("--recursion", default="auto", help="with --profile (default auto)")
    parser.add_argument("--no-memory", action="store_true", help="timings only")
    args = parse_args(parser, argv)
    if args.profile:
        profile(*args.profile, recursion=args.recursion)
        return
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()
    data_ = data()
    if is_smoke():
        sizes, kinds = ["64-128-10"], ["PerWeightL1", "TaylorLoss"]
        rounds = {"64-128-10": 1}
        memory_rows = [("64-128-10", "PerWeightL1", "auto")]
    else:
        sizes, kinds = list(SIZES), list(KINDS)
        rounds = {"64-128-10": 61, "64-512-512-10": 31, "64-964-964-10": 21}
        memory_rows = [(s, k, r) for s in sizes for k, r in configs(kinds)]
    rows = []
    for size in sizes:
        rows += time_size(size, kinds, rounds[size], data_)
    memory = []
    if not args.no_memory:
        for cfg in memory_rows:
            memory.append(memory_child(*cfg))
            report_child(memory[-1], f"memory {cfg}", lambda m: (
                f"memory {m['size']:14s} {m['kind']:18s} {m['recursion']:6s} above plain "
                f"(x model), RSS / alloc: {fmt_memory(m)} (RSS "
                f"{m['above_plain_x_model']:.2f})"))
    command = "python benchmarks/cost_kinds.py" + (" --smoke" if is_smoke() else "") + \
        (" --no-memory" if args.no_memory else "")
    meta = {"command": command, "code": code_revision(), "torch": torch.__version__,
            "threads": 1,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
            "cpu_count": os.cpu_count(), "smoke": is_smoke(),
            "rounds": "/".join(str(rounds[s]) for s in sizes),
            "total_s": time.perf_counter() - started,
            "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    text = to_markdown(rows, memory, meta)
    print(text)
    write_results(result_stem("cost_kinds", args.out_dir),
                  {"rows": rows, "memory": memory, "meta": meta}, text)


if __name__ == "__main__":
    main()
