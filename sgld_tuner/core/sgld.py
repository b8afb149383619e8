"""The Langevin step and the one random generator every draw goes through."""
from __future__ import annotations

import math

import torch


def make_generator(random_state=None, device="cpu") -> torch.Generator:
    """Return a ``torch.Generator`` on ``device``.

    ``random_state`` may be ``None`` (fresh entropy), an int seed, or a generator
    (returned as is). All noise of a solve is drawn from this one generator so that a
    seed fixes the whole run.
    """
    if isinstance(random_state, torch.Generator):
        return random_state
    gen = torch.Generator(device=torch.device(device))
    if random_state is None:
        gen.seed()
    else:
        gen.manual_seed(int(random_state))
    return gen


@torch.no_grad()
def langevin_step(theta, grads, *, lr, temperature, noise_scale, generator):
    """One SGLD step on a list of tensors; returns new detached tensors.

    ``theta - lr * grad + sqrt(2 * lr * temperature) * noise_scale * z`` with
    ``z ~ N(0, I)``. ``lr`` is the paper's ``eps / (2 * tau)``, so ``temperature -> 0``
    (or ``noise_scale = 0``) is plain gradient descent.
    """
    std = math.sqrt(2.0 * lr * temperature) * noise_scale
    theta = [t.detach() for t in theta]
    grads = [g.detach() for g in grads]
    if theta and all(t.dtype == g.dtype and t.shape == g.shape and t.device == g.device
                     for t, g in zip(theta, grads)):
        # One fused multiply-add per leaf (and one kernel launch for all leaves) instead
        # of a scaled temporary and a subtraction.
        out = torch._foreach_add(theta, grads, alpha=-lr)
    else:
        out = [t - lr * g for t, g in zip(theta, grads)]
    if std > 0.0:
        # Leaf by leaf, in leaf order: a seed gives the same stream as before, and only
        # one leaf's noise is alive at a time (a list of all of it would add a full
        # model's worth of memory to the peak).
        for t in out:
            t.add_(torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype),
                   alpha=std)
    return out
