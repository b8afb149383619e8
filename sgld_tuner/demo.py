"""``python -m sgld_tuner demo``: per-weight L1 by SGLDHyperTuner next to GridSearchCV.

Digits (bundled with scikit-learn), a 64-128-10 MLP. GridSearchCV tunes one global L1
strength; SGLDHyperTuner tunes one strength per weight (~9k hyperparameters) by gradient.
A small training set is used by default because that is where regularisation matters
(on all of digits an untuned MLP is already at ~96%; see benchmarks/compare_search.py).
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


def make_net(net_class=NeuralNetClassifier, max_epochs=40, **kwargs):
    return net_class(MLP, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD,
                     lr=0.1, optimizer__momentum=0.0, max_epochs=max_epochs, batch_size=64,
                     train_split=None, verbose=0, **kwargs)


def load_data(n_train=300, random_state=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, train_size=n_train, stratify=y, random_state=random_state)


def run(n_train=300, n_outer=40, out="sgld_tuner_demo.png", random_state=0, verbose=1):
    """Run both searches, print the side-by-side table and save a plot; returns the rows."""
    torch.manual_seed(random_state)
    X_train, X_test, y_train, y_test = load_data(n_train, random_state)
    rows = []

    started = time.perf_counter()
    grid = GridSearchCV(make_net(L1NetClassifier),
                        {"lambda_l1": [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3]}, cv=3)
    grid.fit(X_train, y_train)
    rows.append({"method": "GridSearchCV (one L1 strength)",
                 "test_accuracy": grid.score(X_test, y_test),
                 "wall_time_s": time.perf_counter() - started,
                 "hyperparameters": 1, "model_fits": 6 * 3 + 1})

    started = time.perf_counter()
    tuner = SGLDHyperTuner(make_net(), {"l1": PerWeightL1(init=1e-4)}, n_outer=n_outer,
                           burn_in=5, n_samples=5, cv=3, eval_every=5,
                           random_state=random_state, verbose=verbose)
    tuner.fit(X_train, y_train)
    n_hyper = int(sum(np.size(v) for v in tuner.best_params_["l1"].values()))
    rows.append({"method": "SGLDHyperTuner (per-weight L1)",
                 "test_accuracy": tuner.score(X_test, y_test),
                 "wall_time_s": time.perf_counter() - started,
                 "hyperparameters": n_hyper, "model_fits": 3 + 1})

    print(f"\ndigits, {n_train} training rows, {len(y_test)} test rows, 64-128-10 MLP")
    print(f"{'method':34s} {'test acc':>9s} {'wall s':>8s} {'# hyper':>8s} {'# fits':>7s}")
    for r in rows:
        print(f"{r['method']:34s} {r['test_accuracy']:9.4f} {r['wall_time_s']:8.1f} "
              f"{r['hyperparameters']:8d} {r['model_fits']:7d}")
    if out:
        _plot(grid, tuner, out)
        print(f"plot saved to {out}")
    return rows


def _plot(grid, tuner, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    res = tuner.cv_results_
    axes[0].plot(res["iteration"] + 1, res["mean_test_score"], "o-", label="SGLDHyperTuner trajectory")
    axes[0].axhline(grid.best_score_, color="gray", ls="--", label="GridSearchCV best")
    axes[0].set_xlabel("outer iteration")
    axes[0].set_ylabel("mean cv accuracy")
    axes[0].legend()
    strengths = np.concatenate([np.ravel(v) for v in tuner.best_params_["l1"].values()])
    axes[1].hist(np.log10(np.maximum(strengths, 1e-12)), bins=50)
    axes[1].axvline(np.log10(max(grid.best_params_["lambda_l1"], 1e-12)), color="gray", ls="--",
                    label="grid-search strength")
    axes[1].set_xlabel("log10 learned per-weight L1 strength")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sgld_tuner demo", description=__doc__)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-outer", type=int, default=40)
    parser.add_argument("--out", default="sgld_tuner_demo.png")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.n_train, args.n_outer, args.out, args.random_state)
