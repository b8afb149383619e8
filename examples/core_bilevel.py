"""``sgld_tuner.core.minimize`` on a small problem: per-feature ridge penalties.

Inner: ridge regression with one penalty exp(lam_j) per feature; outer: validation MSE.
Only 3 of 20 features matter, so good penalties are small on those and large elsewhere.
Run: python examples/core_bilevel.py   (SGLD_TUNER_SMOKE=1 for a few-second run)
"""
import os

import torch

from sgld_tuner.core import minimize

SMOKE = os.environ.get("SGLD_TUNER_SMOKE", "0") not in ("", "0")
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
w_true = torch.zeros(20, dtype=torch.float64)
w_true[:3] = torch.tensor([2.0, -1.0, 0.5])
X_tr, X_val = (torch.randn(n, 20, generator=gen, dtype=torch.float64) for n in (30, 200))
y_tr, y_val = (X @ w_true + 0.5 * torch.randn(len(X), generator=gen, dtype=torch.float64)
               for X in (X_tr, X_val))


def inner(lam, theta):   # training loss + per-feature penalty; lam is a log-strength
    return ((X_tr @ theta - y_tr) ** 2).mean() + (lam.exp() * theta ** 2).sum()


def outer(lam, theta):   # validation loss
    return ((X_val @ theta - y_val) ** 2).mean()


lam0 = torch.full((20,), -2.0, dtype=torch.float64)
# bounds: a penalty exp(lam) above about 15 makes an inner step of 0.05 unstable (the
# chain then blows up, which minimize stops at); log-strengths up to 2 stay well inside.
res = minimize(outer, inner, lam0, torch.zeros(20, dtype=torch.float64), method="sgld",
               n_outer=5 if SMOKE else 300, outer_lr=0.05, outer_optimizer="adam",
               inner_lr=0.05, burn_in=10, n_samples=10, temperature=1e-4, random_state=0,
               bounds=(-10.0, 2.0))
print("validation MSE, first / last outer iteration:",
      f"{res.history['outer_loss'].iloc[0]:.3f} / {res.history['outer_loss'].iloc[-1]:.3f}")
print("learned log-penalties, true features:", res.lam[:3].numpy().round(2))
print("learned log-penalties, mean of the 17 noise features:", round(float(res.lam[3:].mean()), 2))
