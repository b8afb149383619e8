"""One L1 strength per weight of an MLP (~9k hyperparameters), learned by HPO-SGLD.

Run: python examples/per_weight_l1.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import numpy as np
import torch

from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import PerWeightL1

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
X_train, X_test, y_train, y_test = load_data(n_train=300)

# Each fold's persistent chain trains the net for n_outer * (burn_in + n_samples) = 400
# minibatch steps; the refit (best_estimator_) then trains for the net's own 40 epochs.
# granularity="weight": one strength per weight (the default, "auto", gives an MLP one per
# input feature); init="auto" (the default) starts them where the penalty acts.
def tuner(n_outer):
    return SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 40),
                          {"l1": PerWeightL1(granularity="weight")}, n_outer=n_outer, cv=3,
                          random_state=0, sampler=SamplerSettings(burn_in=5, n_samples=5),
                          outer=OuterSettings(eval_every=1 if SMOKE else 5))


search = tuner(3 if SMOKE else 40).fit(X_train, y_train)
control = tuner(1).fit(X_train, y_train)  # the same start, no search

strengths = np.concatenate([np.ravel(v) for v in search.best_params_["l1"].values()])
print(f"{strengths.size} strengths, median {np.median(strengths):.2e}, "
      f"max {strengths.max():.2e}")
print(f"best cv accuracy {search.best_score_:.3f}, test accuracy "
      f"{search.score(X_test, y_test):.3f} (no-search control {control.score(X_test, y_test):.3f})")
