"""One weight per training row, learned against a small trusted (clean) validation set.

30% of the training labels are flipped; the PredefinedSplit's validation rows are 100
clean ones. Flipped rows should end up with small weights.
Run: python examples/sample_weights.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import PredefinedSplit

from sgld_tuner import OuterSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import SampleWeights

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
X, X_test, y, y_test = load_data(n_train=700)
rng = np.random.RandomState(0)
flipped = np.r_[rng.rand(600) < 0.3, np.zeros(100, bool)]   # the last 100 rows stay clean
y = np.where(flipped, (y + rng.randint(1, 10, len(y))) % 10, y)
fold = np.r_[np.full(600, -1), np.zeros(100)]                # -1: always train; 0: validate

tuner = SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 40), {"w": SampleWeights()},
                       n_outer=3 if SMOKE else 100, cv=PredefinedSplit(fold),
                       random_state=0, outer=OuterSettings(eval_every=1 if SMOKE else 10))
tuner.fit(X, y)
w, bad = tuner.best_params_["w"][:600], flipped[:600]
print(f"mean weight: flipped rows {w[bad].mean():.2f}, clean rows {w[~bad].mean():.2f}")
print(f"AUROC of -weight for 'flipped': {roc_auc_score(bad, -w):.3f}")
print(f"test accuracy {tuner.score(X_test, y_test):.3f}")
