"""Learned augmentation ranges (invariance learning) on digits rotated by up to +-180 deg.

Run: python examples/affine_augmentation.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import math
import os

import torch
import torch.nn.functional as F

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import AffineAugmentation

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)


def rotate(X, seed):
    """Rotate each flat 8x8 image once by a random angle in [-180, 180] degrees."""
    a = (torch.rand(len(X), generator=torch.Generator().manual_seed(seed)) * 2 - 1) * math.pi
    rot = torch.stack([torch.stack([a.cos(), -a.sin(), 0 * a], -1),
                       torch.stack([a.sin(), a.cos(), 0 * a], -1)], 1)
    imgs = torch.as_tensor(X).reshape(-1, 1, 8, 8)
    grid = F.affine_grid(rot, list(imgs.shape), align_corners=False)
    return F.grid_sample(imgs, grid, align_corners=False).reshape(len(X), 64).numpy()


X_train, X_test, y_train, y_test = load_data(n_train=800)
X_train, X_test = rotate(X_train, 0), rotate(X_test, 1)
# Defaults: every range starts at 0.15 of its bound, rho=0.01 rewards wide ranges.
aug = AffineAugmentation(image_shape=(8, 8))
tuner = SGLDHyperTuner(make_net(max_epochs=3 if SMOKE else 60), {"aug": aug},
                       n_outer=3 if SMOKE else 50, cv=3, random_state=0)
tuner.fit(X_train, y_train)
print({g: round(v, 3) for g, v in tuner.best_params_["aug"].items()}, "(rotation in radians)")
print(f"test accuracy {tuner.score(X_test, y_test):.3f}")
