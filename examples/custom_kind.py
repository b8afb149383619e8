"""Writing your own kind: label smoothing, learned as a hyperparameter.

The training loss of each row becomes ``(1 - eps) * l_i + eps * mean_j(-log p_ij)`` with
``eps = sigmoid(raw)`` in (0, 1), where ``l_i`` is the loss left by the kinds before it in
``hyperparams`` (here the net's cross-entropy: this is cross-entropy on smoothed labels).
``check_hyperparameter`` checks the kind (finite differences, round trip, flags) first.
Run: python examples/custom_kind.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import torch

from sgld_tuner import SGLDHyperTuner, check_hyperparameter
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import BoundHyperparameter, Hyperparameter


class LabelSmoothing(Hyperparameter):
    def __init__(self, init=0.1):
        self.init = init

    def make_bound(self, module, names, *, n_train, n_classes, input_shape):
        if not 0 < self.init < 1:
            raise ValueError(f"LabelSmoothing: init must lie in (0, 1), got {self.init!r}")
        return BoundLabelSmoothing(self, names)


class BoundLabelSmoothing(BoundHyperparameter):
    def value(self, raw):
        return torch.sigmoid(raw)

    def to_public(self, raw):
        return float(self.value(raw))

    def from_public(self, value, device, dtype):
        return torch.logit(torch.as_tensor(float(value), device=device, dtype=dtype))

    def per_sample_loss(self, raw, y_pred, y_true, loss):
        uniform = -torch.log(self.probabilities(y_pred).clamp_min(1e-12)).mean(dim=-1)
        return loss + self.value(raw) * (uniform - loss)


check_hyperparameter(LabelSmoothing())
BUDGET = 3 if os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0") else 40
tuner = SGLDHyperTuner(make_net(max_epochs=BUDGET), {"eps": LabelSmoothing()}, n_outer=BUDGET)
tuner.fit(*load_data(n_train=600)[::2])   # (X_train, y_train) of 600 digits
print(f"learned eps {tuner.best_params_['eps']:.3f}, cv accuracy {tuner.best_score_:.3f}")
