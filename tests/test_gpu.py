"""The CUDA path: the device comes from the skorch net; generators and tensors live there.

Skipped without a GPU (CI has none); run with ``python -m pytest -m gpu`` on a GPU machine.
"""
import numpy as np
from sgld_tuner import SamplerSettings, OuterSettings
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_core_minimize_on_cuda():
    from sgld_tuner.core import minimize

    outer = lambda l, t: (l - t) ** 2 + (t - 0.5) ** 2  # noqa: E731
    inner = lambda l, t: t ** 3 / 3 - (1 - l ** 2) * t  # noqa: E731
    lam0 = torch.tensor(0.5, dtype=torch.float64, device="cuda")
    res = minimize(outer, inner, lam0, lam0.clone(), n_outer=60, outer_lr=0.02, inner_lr=0.02,
                   burn_in=10, n_samples=10, temperature=1e-6, random_state=0)
    assert res.lam.device.type == "cuda" and abs(float(res.lam) - 0.748936) < 2e-3


def test_tuner_on_cuda_keeps_everything_on_the_device():
    from sklearn.datasets import load_digits

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import AffineAugmentation, PerWeightL1

    from test_tuner import tiny_classifier

    X, y = load_digits(n_class=4, return_X_y=True)
    X, y = (X[:120] / 16.0).astype(np.float32), y[:120]
    tuner = SGLDHyperTuner(tiny_classifier(device="cuda"),
                           {"l1": PerWeightL1(init=1e-3),
                            "aug": AffineAugmentation(init=0.05, image_shape=(8, 8))},
                           n_outer=2, cv=2, random_state=0,
                           sampler=SamplerSettings(burn_in=1, n_samples=1),
                           outer=OuterSettings(eval_every=1))
    tuner.fit(X, y)
    assert next(tuner.best_estimator_.module_.parameters()).device.type == "cuda"
    assert np.isfinite(tuner.best_score_) and tuner.predict(X).shape == (120,)


def test_stacked_folds_on_cuda_match_the_folds_one_by_one():
    """batch_folds on the device: per-fold CUDA generators, stacked weights, the probe's
    RNG check on the CUDA stream."""
    from sklearn.datasets import load_digits

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import LossWeights, PerWeightL1

    from test_tuner import tiny_classifier

    X, y = load_digits(n_class=4, return_X_y=True)
    X, y = (X[:121] / 16.0).astype(np.float32), y[:121]
    scores = {}
    for stacked in (False, True):
        tuner = SGLDHyperTuner(tiny_classifier(device="cuda"),
                               {"l1": PerWeightL1(), "cw": LossWeights()}, n_outer=3, cv=3,
                               random_state=0,
                               sampler=SamplerSettings(burn_in=2, n_samples=2, batch_folds=stacked),
                               outer=OuterSettings(eval_every=1))
        tuner.fit(X, y)
        assert tuner.folds_stacked_ == stacked
        scores[stacked] = tuner.cv_results_["mean_test_score"]
    np.testing.assert_allclose(scores[True], scores[False], atol=1e-6)
