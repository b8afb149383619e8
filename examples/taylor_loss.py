"""A learned training loss: the 8 coefficients of the paper's Taylor polynomial (eq. 53).

Training uses the polynomial; validation (the outer loss) stays cross-entropy.
Run: python examples/taylor_loss.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import numpy as np
import torch

from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import TaylorLoss

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
X_train, X_test, y_train, y_test = load_data(n_train=600)

# init=None starts from the Brier score; its coefficients are ~2C = 20 in size, so the
# kind steps at 10x OuterSettings.lr (its outer_lr_scale), and recursion="auto" searches it with
# the damped recursion: a learned loss need not have a minimum for the tracked adjoint
# to converge to (see benchmarks/loss_learning.py).
tuner = SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 40), {"loss": TaylorLoss()},
                       n_outer=3 if SMOKE else 60, cv=3, random_state=0,
                       sampler=SamplerSettings(burn_in=8, n_samples=2, temperature=1e-4),
                       outer=OuterSettings(eval_every=1 if SMOKE else 5))
tuner.fit(X_train, y_train)

print("learned coefficients", np.round(tuner.best_params_["loss"], 2))
print(f"best cv accuracy {tuner.best_score_:.3f}, test accuracy {tuner.score(X_test, y_test):.3f}"
      f" (recursion: {tuner.recursion_})")
