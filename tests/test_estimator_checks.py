"""scikit-learn's estimator checks on the tuner over a tiny skorch net.

Checks that cannot apply are listed with the reason (``expected_failed_checks``).
"""
import torch
from skorch import NeuralNetClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from sgld_tuner import SGLDHyperTuner
from sgld_tuner import SamplerSettings, OuterSettings
from sgld_tuner.hyperparams import PerWeightL1


class LazyMLP(torch.nn.Module):
    """Input size inferred on first use; the output size must be fixed up front (skorch)."""

    def __init__(self, hidden=8, n_out=3):
        super().__init__()
        self.hidden = torch.nn.LazyLinear(hidden)
        self.out = torch.nn.Linear(hidden, n_out)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def make_tuner():
    net = NeuralNetClassifier(LazyMLP, criterion=torch.nn.CrossEntropyLoss, lr=0.1,
                              max_epochs=20, batch_size=32, train_split=None, verbose=0)
    return SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-3)}, n_outer=1, cv=2,
                          random_state=0, sampler=SamplerSettings(burn_in=1, n_samples=1),
                          outer=OuterSettings(eval_every=1))


FIXED_OUTPUT = ("the check's data has 4 classes and the skorch module was built with 3 outputs; "
                "a net's output layer is fixed at construction, so the tuner refuses this "
                "before training (a module with more outputs than classes is fine)")

EXPECTED_FAILURES = {
    "check_dtype_object": FIXED_OUTPUT,
}


@parametrize_with_checks([make_tuner()], expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
