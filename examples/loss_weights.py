"""Per-class weights of the training loss, learned on a class-imbalanced training set.

Digits 0-4 keep all their training rows, digits 5-9 a fifth. The outer loss is the
net's cross-entropy on the validation rows (the scoring only picks the best point), so
the validation split is balanced (PredefinedSplit): it then stands for balanced error.
Run: python examples/loss_weights.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import numpy as np
import torch
from sklearn.model_selection import PredefinedSplit

from sgld_tuner import OuterSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import LossWeights

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
X, X_test, y, y_test = load_data(n_train=800)
val = np.isin(np.arange(len(y)), [np.flatnonzero(y == c)[:20] for c in range(10)])  # balanced
train = ~val & ((y < 5) | (np.arange(len(y)) % 5 == 0))        # imbalanced training rows
X, y, fold = X[val | train], y[val | train], np.where(val, 0, -1)[val | train]

tuner = SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 40), {"cw": LossWeights()},
                       n_outer=3 if SMOKE else 60, cv=PredefinedSplit(fold),
                       scoring="balanced_accuracy", random_state=0,
                       outer=OuterSettings(eval_every=1 if SMOKE else 10))
tuner.fit(X, y)
print("training rows per class", np.bincount(y[fold == -1]))
print("learned class weights  ", np.round(tuner.best_params_["cw"], 2))
print(f"test balanced accuracy {tuner.score(X_test, y_test):.3f}")
