"""The tuner's defaults on six settings no other benchmark uses, and a CNN (S7).

The question: on data, nets and trainings that none of the other benchmarks uses, does
``SGLDHyperTuner`` with its defaults beat its no-search control (``n_outer=1``, same seed)
and match a 3 lr x 3 weight-decay ``GridSearchCV``, and at what CPU?

The settings (an MLP with ReLU between layers, but S7; 30% of the rows held out for the test,
stratified for classification; every input standardised on the training rows, except in
S1 where a ``Pipeline(StandardScaler, ...)`` does it; regression targets standardised on
the training rows, scored by R^2; classification by accuracy):

* S1: breast_cancer in ``Pipeline(StandardScaler(), net)``; MLP 64; Adam, lr 1e-3,
  20 epochs, batches of 32; ``{"wd": WeightDecay()}``.
* S2: diabetes (regression); MLP 64; SGD with momentum 0.9, lr 0.01, 50 epochs,
  batches of 32; ``{"l1": PerWeightL1()}``.
* S3: ``make_moons`` (400 rows, noise 0.3) plus 8 standard-normal noise columns; MLP
  64-64; skorch's own defaults (SGD, lr 0.01, 10 epochs, batches of 128);
  ``{"l1": PerWeightL1()}``.
* S4: ``make_friedman1`` (300 rows, 10 features, noise 1.0; regression); MLP 64-64;
  Adam, lr 0.01, 100 epochs, batches of 32; ``{"l1": PerWeightL1(), "wd": WeightDecay()}``.
* S5: digits, 500 rows drawn per seed, 30% of the training labels flipped to another
  class; MLP 128; SGD, lr 0.05, 30 epochs, batches of 64; ``{"wd": WeightDecay()}``.
* S6: ``make_classification`` (600 rows, 30 features: 6 informative, 4 redundant;
  4 classes, ``flip_y=0.05``); MLP 64; AdamW, lr 3e-3, 30 epochs, batches of 32;
  ``{"l1": PerWeightL1()}``.
* S7: digits (all rows) as 8x8 images; a CNN (conv 8, conv 16 with 3x3 kernels, ReLU,
  one 2x2 max-pool, a Linear head); Adam, lr 1e-3, 15 epochs, batches of 64;
  ``{"wd": WeightDecay()}`` (granularity ``"weight"`` on every layer, the first not being
  a Linear one). Not unseen: a second sweep found the defaults below the plain net on a
  CNN like it, and ``WeightDecay``'s ``init="auto"`` was changed for it (a tenth of the
  data's pull where it was all of it); it stays here as that change's record.

Methods, per setting and seed (seeds 0..4 by default; the seed draws the data, the
split, S3's noise columns, S5's rows and flips, and the tuner's ``random_state``, and
seeds torch before each fit; in S1 each method sits in the Pipeline):

* ``plain``: the net alone;
* ``tuner``: ``SGLDHyperTuner(net, hyperparams)`` with its defaults (``cv=5``, the
  race of the net's lr);
* ``control``: the same with ``n_outer=1`` (no search);
* ``grid``: ``GridSearchCV(net, cv=5)`` over lr in {lr/3, lr, 3 lr} (lr the net's own)
  x ``optimizer__weight_decay`` in {0, 1e-3, 1e-2}.

Each fit records its test score, CPU seconds (``time.process_time()`` around ``fit``,
one torch thread, after one untimed warm-up fit) and wall seconds, the lr the search
picked, the warning classes raised during ``fit``, the tuner's ``stop_reason_``, and the
error where ``fit`` raised (the run goes on).

    python benchmarks/fresh_settings.py              # 6 settings x 5 seeds x 4 methods
    python benchmarks/fresh_settings.py --settings S4 --methods tuner,control
    python benchmarks/fresh_settings.py --smoke      # S1, S2, one seed, tiny budgets (seconds)

``--settings`` or ``--methods`` reruns only those fits and merges them into the written
results (replacing the rows of the same setting, seed and method); the markdown lists
every command that wrote it. Writes ``benchmarks/results/fresh_settings.{json,md}``
(``fresh_settings_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
import traceback
import warnings

import numpy as np
import torch
from sklearn.datasets import (load_breast_cancer, load_diabetes, load_digits,
                              make_classification, make_friedman1, make_moons)
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier, NeuralNetRegressor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# cost_kinds' MLP is n_in -> hidden... -> n_out with ReLU, its layers built in the same
# order as a Sequential of them, so the same torch seed gives the same initial weights.
from cost_kinds import MLP  # noqa: E402
from _results import (add_common_args, is_smoke, parse_args, result_stem,  # noqa: E402
                      tuner_kwargs, write_results)
from unseen_data import WDS  # noqa: E402  (the grid's weight decays: 0, 1e-3, 1e-2)

from sgld_tuner import SGLDHyperTuner  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1, WeightDecay  # noqa: E402
from sgld_tuner.search import Race  # noqa: E402

#: name -> data (for the tables), classification?, hidden widths, the net's training
#: arguments (empty: skorch's defaults), the declared hyperparameters, and whether the
#: scaling is a Pipeline step (S1) rather than done once on the training rows.
SETTINGS = {
    "S1": dict(data="breast_cancer", clf=True, hidden=(64,),
               train=dict(optimizer=torch.optim.Adam, lr=1e-3, max_epochs=20, batch_size=32),
               hp=lambda: {"wd": WeightDecay()}, pipe=True),
    "S2": dict(data="diabetes", clf=False, hidden=(64,),
               train=dict(optimizer=torch.optim.SGD, lr=0.01, optimizer__momentum=0.9,
                          max_epochs=50, batch_size=32),
               hp=lambda: {"l1": PerWeightL1()}, pipe=False),
    "S3": dict(data="make_moons + 8 noise columns", clf=True, hidden=(64, 64), train=dict(),
               hp=lambda: {"l1": PerWeightL1()}, pipe=False),
    "S4": dict(data="make_friedman1", clf=False, hidden=(64, 64),
               train=dict(optimizer=torch.optim.Adam, lr=0.01, max_epochs=100, batch_size=32),
               hp=lambda: {"l1": PerWeightL1(), "wd": WeightDecay()}, pipe=False),
    "S5": dict(data="digits (500 rows), 30% of training labels flipped", clf=True,
               hidden=(128,),
               train=dict(optimizer=torch.optim.SGD, lr=0.05, max_epochs=30, batch_size=64),
               hp=lambda: {"wd": WeightDecay()}, pipe=False),
    "S6": dict(data="make_classification (4 classes)", clf=True, hidden=(64,),
               train=dict(optimizer=torch.optim.AdamW, lr=3e-3, max_epochs=30, batch_size=32),
               hp=lambda: {"l1": PerWeightL1()}, pipe=False),
    "S7": dict(data="digits as 8x8 images", clf=True, hidden=(8, 16), module="CNN",
               train=dict(optimizer=torch.optim.Adam, lr=1e-3, max_epochs=15, batch_size=64),
               hp=lambda: {"wd": WeightDecay()}, pipe=False),
}
METHODS = ("plain", "tuner", "control", "grid")
SMOKE_SETTINGS = ("S1", "S2")  # one with the Pipeline (classification), one regression
SMOKE_TUNER = dict(n_outer=2, burn_in=1, n_samples=1)
SCRIPT = "python benchmarks/fresh_settings.py"


def _raw(name: str, seed: int):
    """The setting's full data set ``(X, y)`` for ``seed`` (before the split)."""
    if name == "S1":
        return load_breast_cancer(return_X_y=True)
    if name == "S2":
        return load_diabetes(return_X_y=True)
    if name == "S3":
        X, y = make_moons(n_samples=400, noise=0.3, random_state=seed)
        # Uninformative columns give the L1 search something to switch off.
        rng = np.random.RandomState(seed)
        return np.hstack([X, rng.standard_normal((X.shape[0], 8))]), y
    if name == "S4":
        return make_friedman1(n_samples=300, n_features=10, noise=1.0, random_state=seed)
    if name == "S5":
        X, y = load_digits(return_X_y=True)
        idx = np.random.RandomState(seed).choice(len(X), 500, replace=False)
        return X[idx], y[idx]
    if name == "S7":
        return load_digits(return_X_y=True)
    if name == "S6":
        return make_classification(n_samples=600, n_features=30, n_informative=6,
                                   n_redundant=4, n_classes=4, flip_y=0.05, random_state=seed)
    raise ValueError(f"unknown setting {name!r}; one of {', '.join(SETTINGS)}")


def load(name: str, seed: int):
    """Training and test rows of one setting and seed.

    Parameters
    ----------
    name : str
        A key of :data:`SETTINGS`.
    seed : int
        Draws the data (where synthetic), the split and S5's label flips.

    Returns
    -------
    X_tr, X_te, y_tr, y_te : ndarray
        float32 inputs (raw for S1, whose Pipeline scales them; standardised on the
        training rows otherwise); int64 labels, or float32 ``(n, 1)`` targets
        standardised on the training rows.
    n_out : int
        Classes, or 1 for regression.
    """
    clf = SETTINGS[name]["clf"]
    X, y = _raw(name, seed)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed,
                                              stratify=y if clf else None)
    if name == "S5":  # label noise on the training rows only: each flip to another class
        rng = np.random.RandomState(seed + 1000)
        n_flip = int(round(0.3 * len(y_tr)))
        flip = rng.choice(len(y_tr), n_flip, replace=False)
        y_tr = y_tr.copy()
        y_tr[flip] = (y_tr[flip] + rng.randint(1, 10, size=n_flip)) % 10
    X_tr, X_te = X_tr.astype(np.float32), X_te.astype(np.float32)
    if name != "S1":
        scaler = StandardScaler().fit(X_tr)
        X_tr = scaler.transform(X_tr).astype(np.float32)
        X_te = scaler.transform(X_te).astype(np.float32)
    if clf:
        return X_tr, X_te, y_tr.astype(np.int64), y_te.astype(np.int64), int(y.max()) + 1
    mu, sd = y_tr.mean(), y_tr.std()
    y_tr = ((y_tr - mu) / sd).astype(np.float32).reshape(-1, 1)
    y_te = ((y_te - mu) / sd).astype(np.float32).reshape(-1, 1)
    return X_tr, X_te, y_tr, y_te, 1


class ImageCNN(torch.nn.Module):
    """Square images given as flat rows: ``conv(hidden[0]) -> ReLU -> conv(hidden[1]) ->
    ReLU -> 2x2 max-pool -> Linear``, 3x3 kernels keeping the size."""

    def __init__(self, n_in=64, hidden=(8, 16), n_out=10):
        super().__init__()
        self.side = math.isqrt(n_in)
        self.conv1 = torch.nn.Conv2d(1, hidden[0], 3, padding=1)
        self.conv2 = torch.nn.Conv2d(hidden[0], hidden[1], 3, padding=1)
        self.out = torch.nn.Linear(hidden[1] * (self.side // 2) ** 2, n_out)

    def forward(self, X):
        X = torch.relu(self.conv1(X.reshape(-1, 1, self.side, self.side)))
        X = torch.max_pool2d(torch.relu(self.conv2(X)), 2)
        return self.out(X.flatten(1))


def make_net(name: str, n_in: int, n_out: int, smoke: bool = False):
    """The setting's skorch net (no validation split, silent); tiny and 2 epochs in smoke."""
    setting = SETTINGS[name]
    hidden = (8,) * len(setting["hidden"]) if smoke else setting["hidden"]
    train = {**setting["train"], **(dict(max_epochs=2) if smoke else {})}
    module = ImageCNN if setting.get("module") == "CNN" else MLP
    common = dict(module=module, module__n_in=n_in, module__hidden=hidden, module__n_out=n_out,
                  train_split=None, verbose=0, **train)
    if setting["clf"]:
        return NeuralNetClassifier(criterion=torch.nn.CrossEntropyLoss, **common)
    return NeuralNetRegressor(criterion=torch.nn.MSELoss, **common)


def make_method(method: str, name: str, seed: int, n_in: int, n_out: int, smoke: bool):
    """The estimator ``method`` fits on one setting and seed.

    Returns
    -------
    estimator : sklearn estimator
        Wrapped in ``Pipeline(StandardScaler, ...)`` for S1.
    inner : callable
        ``inner(estimator)``: the search inside it (tuner or grid), or None for ``plain``.
    """
    setting = SETTINGS[name]
    net = make_net(name, n_in, n_out, smoke)

    def scaled(step, est):
        return Pipeline([("scale", StandardScaler()), (step, est)])

    if method == "plain":
        return (scaled("net", net) if setting["pipe"] else net), lambda est: None
    if method in ("tuner", "control"):
        # Full size: the tuner's own defaults, nothing passed. Smoke: a short search and a
        # 3-lr race without extension, so that it runs in seconds.
        small = {**tuner_kwargs(SMOKE_TUNER), "schedule": Race(n_lrs=3, extend=0)} \
            if smoke else {}
        tuner = SGLDHyperTuner(net, setting["hp"](), random_state=seed,
                               **{**small, **(dict(n_outer=1) if method == "control" else {})})
        if setting["pipe"]:
            return scaled("tuner", tuner), lambda est: est.named_steps["tuner"]
        return tuner, lambda est: est
    if method == "grid":
        cut = (2, 1) if smoke else (None, None)  # 2 lrs x 1 weight decay in smoke
        grid = {"lr": [net.lr / 3, net.lr, 3 * net.lr][:cut[0]],
                "optimizer__weight_decay": list(WDS)[:cut[1]]}
        if setting["pipe"]:
            return GridSearchCV(scaled("net", net), {f"net__{k}": v for k, v in grid.items()},
                                cv=5), lambda est: est
        return GridSearchCV(net, grid, cv=5), lambda est: est
    raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def _searched(search) -> dict:
    """What a fitted search picked: its lr and weight decay (where it searched them), CV
    score and, for the tuner, ``stop_reason_``."""
    if search is None or not hasattr(search, "best_params_"):
        return {}
    params = search.best_params_
    # The lr key is "lr" for a bare net and "net__lr" for the grid's Pipeline.
    lr = [k for k in params if k == "lr" or k.endswith("__lr")]
    wd = [k for k in params if k.endswith("weight_decay")]
    record = {"picked_lr": float(params[lr[0]]) if lr else None}
    if wd:
        record["picked_wd"] = float(params[wd[0]])
    if hasattr(search, "best_score_"):
        record["best_cv_score"] = float(search.best_score_)
    if hasattr(search, "stop_reason_"):
        record["stop_reason"] = search.stop_reason_
    return record


def run_fit(name: str, seed: int, method: str, smoke: bool) -> dict:
    """Fit and score one method on one setting and seed.

    Returns
    -------
    dict
        ``setting``, ``seed``, ``method``; ``score`` (NaN where the fit or the score
        raised), ``cpu_s`` and ``wall_s`` of ``fit``, ``warnings`` (class names) and
        ``warning_msgs`` raised during ``fit``; what :func:`_searched` reads; and
        ``error`` / ``traceback`` where anything raised: a crash is a result, the run
        goes on.
    """
    record = {"setting": name, "seed": seed, "method": method, "score": float("nan")}
    try:
        X_tr, X_te, y_tr, y_te, n_out = load(name, seed)
        estimator, inner = make_method(method, name, seed, X_tr.shape[1], n_out, smoke)
        torch.manual_seed(seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                estimator.fit(X_tr, y_tr)
            finally:  # a fit that raises still has its time and warnings recorded
                record["cpu_s"] = time.process_time() - cpu
                record["wall_s"] = time.perf_counter() - wall
                record["warnings"] = [w.category.__name__ for w in caught]
                record["warning_msgs"] = [str(w.message)[:400] for w in caught]
        record["score"] = float(estimator.score(X_te, y_te))
        record.update(_searched(inner(estimator)))
    except Exception as exc:  # noqa: BLE001 - a crash is recorded, the run goes on
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-3000:]
    print(f"{name} seed {seed} {method}: score {record['score']:.4f}, "
          f"{record.get('cpu_s', float('nan')):.2f} s CPU"
          + (f", picked lr {record['picked_lr']:.3g}" if record.get("picked_lr") else "")
          + (f", ERROR {record['error']}" if "error" in record else ""), flush=True)
    return record


def describe(name: str, smoke: bool = False) -> str:
    """One line for the setting's heading, read off the net it builds (so that it says
    what ran, smoke sizes included)."""
    setting = SETTINGS[name]
    net = make_net(name, 1, 1, smoke)
    momentum = "".join(f", {k.split('__', 1)[1]} {v}" for k, v in setting["train"].items()
                       if k.startswith("optimizer__"))
    hyperparams = ", ".join(f'"{k}": {type(v).__name__}()' for k, v in setting["hp"]().items())
    return (setting["data"] + (" in Pipeline(StandardScaler, net)" if setting["pipe"] else "")
            + f"; {setting.get('module', 'MLP')} {'-'.join(map(str, net.module__hidden))}; "
            f"{net.optimizer.__name__}"
            f"{momentum}, lr {net.lr:g}, {net.max_epochs} epochs, batches of {net.batch_size}"
            + ("" if setting["train"] else " (skorch's defaults)")
            + f"; hyperparams {{{hyperparams}}}")

def warm_up() -> None:
    """Fit one tiny net, untimed: the first fit in a process pays about a second of
    torch's lazy initialisation, which would otherwise land on whichever method runs
    first. Every timed fit reseeds torch, so this leaves the scores unchanged."""
    X = np.random.RandomState(0).standard_normal((16, 4)).astype(np.float32)
    make_net("S1", 4, 2, smoke=True).fit(X, (X[:, 0] > 0).astype(np.int64))


# -- the tables --------------------------------------------------------------------------
def _fmt(value, spec: str = ".4f") -> str:
    """``value`` formatted, or ``n/a`` where it is NaN or None (one seed has no std)."""
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def _stats(rows: list) -> tuple[float, float, dict]:
    """Mean and std (ddof=1) of the finite test scores, and ``{seed: score}``."""
    by_seed = {r["seed"]: r["score"] for r in rows}
    finite = np.array([s for s in by_seed.values() if np.isfinite(s)])
    mean = finite.mean() if finite.size else float("nan")
    return mean, finite.std(ddof=1) if finite.size > 1 else float("nan"), by_seed


def _method_line(method: str, rows: list) -> str:
    """One table row: a method's scores, times, picked lrs and warnings over the seeds."""
    mean, std, by_seed = _stats(rows)
    per_seed = " ".join("error" if "error" in r else _fmt(r["score"], ".3f") for r in rows)
    cpu = np.mean([r["cpu_s"] for r in rows if "cpu_s" in r]) if rows else float("nan")
    wall = np.mean([r["wall_s"] for r in rows if "wall_s" in r]) if rows else float("nan")
    # The control's best_params_ holds no lr (nothing raced): "-" as for the plain net.
    picked = " ".join(_fmt(r.get("picked_lr"), ".3g") for r in rows) \
        if any(r.get("picked_lr") is not None for r in rows) else "-"
    # Seeds on which each warning class was raised at least once (not raw counts: a
    # search can warn once per fold).
    seen = collections.Counter(c for r in rows for c in set(r.get("warnings", [])))
    notes = [f"{c} ({k}/{len(rows)})" for c, k in sorted(seen.items())]
    stopped = [r["seed"] for r in rows if r.get("stop_reason")]
    if stopped:
        notes.append(f"stop_reason set on seeds {stopped}")
    failed = [r["seed"] for r in rows if "error" in r]
    if failed:
        notes.append(f"fit raised on seeds {failed}")
    return (f"| {method} | {_fmt(mean)} ± {_fmt(std)} | {per_seed} | {_fmt(cpu, '.2f')} "
            f"| {_fmt(wall, '.2f')} | {picked} | {', '.join(notes) or 'none'} |")


def _versus(by_method: dict, other: str) -> str:
    """The tuner minus ``other``: mean gap over the seeds both scored, the larger seed std
    of the two as the tolerance, and the seeds on which the tuner scored higher."""
    if not by_method.get("tuner") or not by_method.get(other):
        return f"tuner - {other} n/a"
    _, std_t, tuner = _stats(by_method["tuner"])
    _, std_o, theirs = _stats(by_method[other])
    seeds = [s for s in tuner if s in theirs and np.isfinite(tuner[s] + theirs[s])]
    gaps = np.array([tuner[s] - theirs[s] for s in seeds])
    gap = gaps.mean() if seeds else float("nan")
    return (f"tuner - {other} {'n/a' if not seeds else format(gap, '+.4f')} "
            f"(tol {_fmt(max(std_t, std_o))}; tuner higher on {int((gaps > 0).sum())}"
            f"/{len(seeds)} seeds)")


def setting_section(name: str, rows: list, smoke: bool) -> list[str]:
    """Markdown for one setting: heading, the table (plain, tuner, control, grid) and the
    line comparing the tuner with its control and the grid."""
    by_method = {m: sorted((r for r in rows if r["method"] == m), key=lambda r: r["seed"])
                 for m in METHODS}
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"### {name}: {describe(name, smoke)}", "", f"Seeds {seeds}.", "",
             "| method | test score mean ± std | per seed | mean CPU s | mean wall s "
             "| picked lr per seed | warnings (seeds with them) |",
             "|---|---|---|---|---|---|---|"]
    lines += [_method_line(m, by_method[m]) for m in METHODS if by_method[m]]
    cpu = {m: np.mean([r["cpu_s"] for r in by_method[m] if "cpu_s" in r])
           if any("cpu_s" in r for r in by_method[m]) else float("nan")
           for m in ("tuner", "grid")}
    lines += ["", "; ".join(_versus(by_method, other) for other in ("control", "grid", "plain"))
              + f"; CPU tuner/grid {_fmt(cpu['tuner'] / cpu['grid'], '.2f')}", ""]
    return lines


def to_markdown(rows: list, commands: list, smoke: bool) -> str:
    """The report: the commands that wrote it, then one section per setting."""
    cpu_total = sum(r.get("cpu_s", 0.0) for r in rows)
    lines = [
        "# The tuner's defaults on six fresh settings and a CNN", "",
        f"`{'`, then `'.join(commands)}`: {cpu_total:.0f} s CPU in the fits in all. "
        "Test score: accuracy, or R^2 on standardised targets (S2, S4); mean ± std "
        "(ddof=1) over the seeds that scored. CPU: `time.process_time()` around `fit`, "
        "one torch thread. picked lr: the lr in the search's `best_params_`. Warnings: "
        "the classes raised during `fit`, with the seeds on which each was. Under each "
        "table: the tuner minus its no-search control (`n_outer=1`), the 3 lr x 3 weight "
        "decay grid and the plain net, with the larger of the two seed stds as the "
        "tolerance, and the tuner's mean CPU over the grid's."
        + (" Smoke run: 8-unit layers, 2 epochs, a 2-iteration tuner with a 3-lr race, "
           "a 2 lr x 1 weight decay grid; the numbers check the plumbing only." if smoke
           else ""), ""]
    for name in SETTINGS:
        chosen = [r for r in rows if r["setting"] == name]
        if chosen:
            lines += setting_section(name, chosen, smoke)
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------
def _merged(stem: str, rows: list, command: str) -> tuple[list, list]:
    """The written results with the rows of the same setting, seed and method replaced by
    ``rows``, and the commands that wrote them followed by ``command``."""
    if not os.path.exists(stem + ".json"):
        return rows, [command]
    with open(stem + ".json") as fh:
        old = json.load(fh)
    rerun = {(r["setting"], r["seed"], r["method"]) for r in rows}
    kept = [r for r in old["rows"] if (r["setting"], r["seed"], r["method"]) not in rerun]
    merged = sorted(kept + rows, key=lambda r: (list(SETTINGS).index(r["setting"]), r["seed"],
                                                METHODS.index(r["method"])))
    return merged, old.get("commands", [SCRIPT]) + [command]


def _command(args: argparse.Namespace, smoke: bool, default_seeds: int) -> str:
    """The command line that reproduces this run (``--out-dir`` left out)."""
    return (SCRIPT + (" --smoke" if smoke else "")
            + (f" --seeds {args.seeds}" if args.seeds != default_seeds else "")
            + (f" --settings {args.settings}" if args.settings else "")
            + (f" --methods {args.methods}" if args.methods else ""))


def _subset(given: str | None, every, default, parser, what: str) -> list:
    """The comma-separated ``given`` names (``default`` when None), each one of ``every``."""
    names = given.split(",") if given else list(default)
    unknown = [n for n in names if n not in every]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(every)}")
    return names


def main(argv=None):
    """Run the chosen fits, merge them where a subset was asked for, write and print.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``: ``--seeds N``, ``--settings S1,...``,
        ``--methods plain,...``, ``--out-dir``, ``--smoke``.
    """
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    default_seeds = 1 if is_smoke() else 5
    parser.add_argument("--seeds", type=int, default=default_seeds,
                        help="how many seeds, 0..N-1 (default 5; 1 in smoke mode)")
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated subset of {', '.join(SETTINGS)} (default all; "
                        f"{', '.join(SMOKE_SETTINGS)} in smoke mode)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    args = parse_args(parser, argv)
    smoke, seeds = is_smoke(), list(range(args.seeds))
    torch.set_num_threads(1)  # CPU seconds comparable across methods and machines
    names = _subset(args.settings, SETTINGS, SMOKE_SETTINGS if smoke else SETTINGS,
                    parser, "setting")
    methods = _subset(args.methods, METHODS, METHODS, parser, "method")
    warm_up()
    rows = [run_fit(name, seed, method, smoke)
            for name in names for seed in seeds for method in methods]
    command = _command(args, smoke, default_seeds)
    stem = result_stem("fresh_settings", args.out_dir)
    # A subset rerun merges into what was written; a full run starts the results afresh.
    rows, commands = _merged(stem, rows, command) if args.settings or args.methods \
        else (rows, [command])
    md = to_markdown(rows, commands, smoke)
    print("\n" + md)
    write_results(stem, {"seeds": sorted({r["seed"] for r in rows}),
                         "settings": sorted({r["setting"] for r in rows}),
                         "commands": commands, "rows": rows}, md)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
