"""Weight decay learned per parameter tensor (one strength per layer's weight matrix).

Run: python examples/weight_decay.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import torch

from sgld_tuner import OuterSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import WeightDecay

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
X_train, X_test, y_train, y_test = load_data(n_train=300)

# granularity="tensor": one strength per matching parameter ("hidden.weight", "out.weight"),
# a handful of hyperparameters; "weight" would give one per weight, like PerWeightL1.
# init="auto" (the default) starts each strength where the decay's pull matches the data's.
def tuner(n_outer):
    return SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 40),
                          {"wd": WeightDecay(granularity="tensor")}, n_outer=n_outer, cv=3,
                          random_state=0,
                          outer=OuterSettings(eval_every=1 if SMOKE else 5))


search = tuner(3 if SMOKE else 40).fit(X_train, y_train)
control = tuner(1).fit(X_train, y_train)  # the same start, no search

for name, value in search.best_params_["wd"].items():
    print(f"{name:14s} weight decay {float(value):.2e} "
          f"(start {float(control.best_params_['wd'][name]):.2e})")
print(f"best cv accuracy {search.best_score_:.3f}, test accuracy "
      f"{search.score(X_test, y_test):.3f} (no-search control {control.score(X_test, y_test):.3f})")
