"""``python -m sgld_tuner demo``: SGLDHyperTuner with its defaults next to GridSearchCV.

Digits (bundled with scikit-learn), a 64-128-10 MLP trained by SGD at an lr that is off
(0.01: too small for its 40 epochs), as a net often arrives. ``GridSearchCV`` tunes the
lr x weight decay, the grid a user would write; ``SGLDHyperTuner`` with its defaults
races the net's lr inside the fit and tunes one L1 strength per input feature by
gradient; the same tuner with the race off and the no-search control (``n_outer=1``)
show what the race and the search each add. A small training set is used because that
is where regularisation matters (on all of digits an untuned MLP already does well).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from .hyperparams import PerWeightL1
from .tuner import SGLDHyperTuner


class MLP(torch.nn.Module):
    """64 -> hidden -> 10 with ReLU."""

    def __init__(self, n_in=64, hidden=128, n_out=10):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, hidden)
        self.out = torch.nn.Linear(hidden, n_out)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def global_l1_penalty(module: torch.nn.Module, strength: float) -> torch.Tensor | float:
    """``strength * sum |w|`` over every ``*.weight`` of ``module``: one global L1 strength."""
    if strength <= 0:
        return 0.0
    return strength * sum(p.abs().sum() for name, p in module.named_parameters()
                          if name.endswith("weight"))


class _GlobalL1:
    """Mixin: one global L1 strength ``lambda_l1`` added to the training loss."""

    def __init__(self, *args, lambda_l1=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lambda_l1 = lambda_l1

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        return loss + global_l1_penalty(self.module_, self.lambda_l1) if training else loss


class L1NetClassifier(_GlobalL1, NeuralNetClassifier):
    """A skorch classifier with one global L1 strength, what a grid search would tune."""


class L1NetRegressor(_GlobalL1, NeuralNetRegressor):
    """The regression counterpart of :class:`L1NetClassifier`."""


def make_net(net_class=NeuralNetClassifier, max_epochs=40, lr=0.1, **kwargs):
    return net_class(MLP, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD,
                     lr=lr, optimizer__momentum=0.0, max_epochs=max_epochs, batch_size=64,
                     train_split=None, verbose=0, **kwargs)


def load_data(n_train=300, random_state=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, train_size=n_train, stratify=y, random_state=random_state)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


#: the net as written (``make_net``) but with an lr that is off: too small for SGD on
#: this data, so the choice of lr matters, as it does for a net left at skorch's defaults
DEMO_LR = 0.01
#: the grid a user would write around it: lr x SGD weight decay
GRID = {"lr": [DEMO_LR, 10 * DEMO_LR, 100 * DEMO_LR], "optimizer__weight_decay": [0.0, 1e-4, 1e-3]}


def run_seed(n_train=300, n_outer=40, random_state=0, verbose=0):
    """On one split: ``GridSearchCV`` over lr x weight decay, ``SGLDHyperTuner`` with
    its defaults (the race of the net's lr, one L1 strength per input feature by
    hypergradient in every lane), the same tuner with the race off, and their no-search
    control (``n_outer=1``: the net's lr, the start values)."""
    from .search import PlainSearch

    X_train, X_test, y_train, y_test = load_data(n_train, random_state)
    torch.manual_seed(random_state)
    searches = {"GridSearchCV (3 lr x 3 wd)": GridSearchCV(make_net(lr=DEMO_LR), GRID, cv=3)}
    for name, k, schedule in [("SGLDHyperTuner (defaults)", n_outer, None),
                              ("SGLDHyperTuner, race off", n_outer, PlainSearch()),
                              ("no-search control (n_outer=1)", 1, None)]:
        searches[name] = SGLDHyperTuner(make_net(lr=DEMO_LR), {"l1": PerWeightL1()},
                                        n_outer=k, cv=3, schedule=schedule,
                                        random_state=random_state,
                                        verbose=verbose if k > 1 and schedule is None else 0)
    rows = []
    for name, search in searches.items():
        _, wall, cpu = _timed(lambda: search.fit(X_train, y_train))
        rows.append({"method": name, "seed": random_state,
                     "test_accuracy": float(search.score(X_test, y_test)),
                     "lr": float(search.best_params_.get("lr", DEMO_LR)),
                     "wall_s": wall, "cpu_s": cpu})
    return rows, searches


def run(n_train=300, n_outer=40, out="sgld_tuner_demo.png", seeds=(0, 1, 2), verbose=1):
    """Run the three searches on each seed, print the table and save a plot; returns rows.

    One torch thread: with several, idle threads spin while waiting and the CPU column
    would count that time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, searches = [], None
    try:
        for seed in seeds:
            new, searches = run_seed(n_train, n_outer, seed, verbose)
            rows += new
    finally:
        torch.set_num_threads(threads)
    print(f"\ndigits, {n_train} training rows, 64-128-10 MLP, SGD, the net's lr "
          f"{DEMO_LR}, seeds {list(seeds)}")
    print(f"{'method':32s} {'test acc (mean +- std)':>23s} {'per seed':>24s} "
          f"{'lr chosen':>16s} {'CPU s':>6s} {'wall s':>6s}")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.array([r["test_accuracy"] for r in mine])
        per_seed = " ".join(f"{a:.4f}" for a in acc)
        lrs = " ".join(f"{r['lr']:.3g}" for r in mine)
        print(f"{method:32s} {acc.mean():15.4f} +- {acc.std(ddof=1) if len(acc) > 1 else 0:.4f}"
              f" {per_seed:>24s} {lrs:>16s} {np.mean([r['cpu_s'] for r in mine]):6.1f}"
              f" {np.mean([r['wall_s'] for r in mine]):6.1f}")
    if out:
        _plot(searches, out)
        print(f"plot (last seed) saved to {out}")
    return rows


def _plot(searches, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    from .plotting import plot_learned_values, plot_trajectory

    tuner = searches["SGLDHyperTuner (defaults)"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot_trajectory(tuner, control=searches["GridSearchCV (3 lr x 3 wd)"].best_score_,
                    ax=axes[0], control_label="GridSearchCV best cv")
    plot_learned_values(tuner, "l1", ax=axes[1])
    axes[1].set_title("learned per-feature L1 strengths (first layer)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sgld_tuner demo", description=__doc__)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-outer", type=int, default=40)
    parser.add_argument("--out", default="sgld_tuner_demo.png")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (splits)")
    args = parser.parse_args(argv)
    # digits has 1,797 rows; both splits need its 10 classes, and the tuner's 3 folds
    # 3 rows of each
    if not 30 <= args.n_train <= 1777:
        parser.error(f"--n-train must be in [30, 1777] (digits has 1,797 rows), "
                     f"got {args.n_train}")
    if args.n_outer < 1 or args.seeds < 1:
        parser.error(f"--n-outer and --seeds must be >= 1, got {args.n_outer} and "
                     f"{args.seeds}")
    run(args.n_train, args.n_outer, args.out, tuple(range(args.seeds)))
