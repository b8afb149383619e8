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


class SliceGenerators(tuple):
    """One ``torch.Generator`` per slice along dim 0 of every leaf.

    For chains stacked into one computation (the leading dim of each leaf indexes the
    chain): each slice's noise comes from its own chain's generator, so every chain
    draws exactly what it would draw alone. Anywhere a generator is taken.
    """

    @property
    def device(self):
        return self[0].device


def standard_normal(shape, generator, *, device, dtype) -> torch.Tensor:
    """``z ~ N(0, I)`` of ``shape`` from ``generator`` (or, for :class:`SliceGenerators`,
    slice ``k`` along dim 0 from generator ``k``)."""
    if isinstance(generator, SliceGenerators):
        return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype)
                            for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


#: the chains' noise increments (``InnerSettings.noise``): standard normal, or random
#: signs (mean 0, variance 1; Kloeden & Platen's simplified weak Euler scheme)
NOISES = ("gaussian", "rademacher")


def draw_noise(like, generator, kind: str = "gaussian"):
    """One draw ``z`` of ``kind`` per tensor of ``like`` (its shape, device and dtype).

    ``"gaussian"`` draws leaf by leaf, in leaf order, when iterated (one leaf's noise
    alive at a time, the stream of the leaves drawn one after the other). ``"rademacher"``
    draws every leaf's signs at once (views of one buffer of the chain's size: a model's
    worth of memory for the step), from 64 random bits per 64 weights, where a normal
    draw takes a generator call per weight: on a CPU the generator, not the step's
    arithmetic, is a normal draw's cost (``docs/performance.md``). Either way, for :class:`SliceGenerators` chain ``k``
    (slice ``k`` along dim 0) draws from generator ``k`` what it draws alone.
    """
    if kind == "gaussian":
        return (standard_normal(t.shape, generator, device=t.device, dtype=t.dtype)
                for t in like)
    if kind != "rademacher":
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    like = list(like)
    if len({(t.device, t.dtype) for t in like}) > 1:  # mixed leaves: one buffer each
        return [z for t in like for z in _random_signs([t], generator)]
    return _random_signs(like, generator)


# one table per (device, dtype): row b holds the signs of byte b's eight bits
_SIGN_TABLES: dict = {}


def _random_signs(like: list, generator) -> list:
    """Random signs for tensors of one device and dtype, as views of one buffer."""
    if not like:
        return []
    device, dtype = like[0].device, like[0].dtype
    gens = generator if isinstance(generator, SliceGenerators) else (generator,)
    sizes = [t.numel() // len(gens) for t in like]  # per chain
    words = torch.empty(len(gens), -(-sum(sizes) // 64), dtype=torch.int64, device=device)
    for row, gen in zip(words, gens):
        # the whole int64 range: random_() alone leaves the sign bit 0
        row.random_(-2 ** 63, 2 ** 63 - 1, generator=gen)
    key = (device, dtype)
    if key not in _SIGN_TABLES:
        byte = torch.arange(256, device=device).unsqueeze(1)
        bits = (byte >> torch.arange(8, device=device)) & 1
        _SIGN_TABLES[key] = bits.to(dtype).mul_(2).sub_(1)
    # a byte's eight signs in one lookup: the cheapest unpacking of bits torch has
    signs = torch.index_select(_SIGN_TABLES[key], 0, words.view(torch.uint8).view(-1).int())
    signs = signs.view(len(gens), -1)
    out, start = [], 0
    for t, size in zip(like, sizes):
        out.append(signs[:, start:start + size].view(t.shape))
        start += size
    return out


@torch.no_grad()
def langevin_step(theta, grads, *, lr, temperature, noise_scale, generator, noise="gaussian"):
    """One SGLD step on a list of tensors; returns new detached tensors.

    ``theta - lr * grad + sqrt(2 * lr * temperature) * noise_scale * z`` with ``z`` drawn
    by :func:`draw_noise` (``noise="gaussian"``: ``N(0, I)``). ``lr`` is the paper's
    ``eps / (2 * tau)``, so ``temperature -> 0`` (or ``noise_scale = 0``) is plain
    gradient descent.
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
    return _add_noise(out, std, generator, noise)


class Sampler:
    """The inner Langevin dynamics of one chain, with its own state (one per chain).

    ``step(theta, grads, generator)`` returns the next iterate; ``precond()`` is the
    diagonal preconditioner ``P`` of the last step (``None`` for plain SGLD), which the
    tracked adjoint uses so that it follows the same dynamics. ``state``/``load`` copy
    the sampler's buffers whole (checkpoints, warm starts). Registry: :data:`SAMPLERS`.

    Parameters
    ----------
    settings : InnerSettings
        ``inner_lr``, ``temperature``, ``noise_scale`` and the sampler's own knobs.
    """

    name = "sgld"

    def __init__(self, settings):
        self.lr, self.temperature = settings.inner_lr, settings.temperature
        self.noise_scale = settings.noise_scale
        self.noise = getattr(settings, "noise", "gaussian")
        self.decay = float(getattr(settings, "decoupled_decay", 0.0) or 0.0)

    def step(self, theta, grads, generator):
        return langevin_step(self.decayed(theta), grads, lr=self.lr,
                             temperature=self.temperature, noise_scale=self.noise_scale,
                             generator=generator, noise=self.noise)

    @torch.no_grad()
    def decayed(self, theta) -> list:
        """``theta`` detached and, with a ``decoupled_decay``, shrunk by ``1 - eta *
        decay`` (AdamW's step before its Adam step)."""
        theta = [t.detach() for t in theta]
        if not self.decay:
            return theta
        return list(torch._foreach_mul(theta, 1.0 - self.lr * self.decay))

    def precond(self):
        return None

    def state(self) -> dict:
        return {}

    def load(self, state: dict | None) -> None:
        """Continue from ``state`` (from :meth:`state` of the same sampler), if any."""


class MomentumSampler(Sampler):
    """SGLD with momentum ``mu`` (SGHMC-style): ``b <- mu b + g - sqrt(2 tau (1 - mu) / eta)
    kappa z``, ``theta <- theta - eta b``.

    What ``torch.optim.SGD(momentum=mu)`` does, with noise scaled to the friction
    ``1 - mu`` so that the stationary distribution stays ``∝ exp(-L_T / tau)``.
    """

    name = "momentum"

    def __init__(self, settings):
        super().__init__(settings)
        self.mu = settings.momentum
        self.buffer = None

    @torch.no_grad()
    def step(self, theta, grads, generator):
        grads = [g.detach() for g in grads]
        if self.buffer is None:
            self.buffer = [g.clone() for g in grads]
        else:
            self.buffer = [self.mu * b + g for b, g in zip(self.buffer, grads)]
        # The noise goes into the buffer (it is carried like a gradient), so the iterate is
        # an AR(2) process driven by white noise whose stationary variance is tau / h.
        std = math.sqrt(2.0 * self.temperature * (1.0 - self.mu) / self.lr) * self.noise_scale
        self.buffer = _add_noise(self.buffer, std, generator, self.noise)
        return [t - self.lr * b for t, b in zip(self.decayed(theta), self.buffer)]

    def state(self):
        return {"buffer": self.buffer}

    def load(self, state):
        if state and state.get("buffer") is not None:
            self.buffer = [b.clone() for b in state["buffer"]]


class PreconditionedSampler(Sampler):
    """Preconditioned SGLD (pSGLD, Li et al. 2016) with Adam's / RMSprop's diagonal.

    ``v <- beta2 v + (1 - beta2) g^2``, ``r = sqrt(v / (1 - beta2^t))``,
    ``P = 1 / (eps + r)``, ``theta <- theta - eta P g + sqrt(2 eta tau Q) kappa z``: the
    step of an Adam or RMSprop net (without Adam's first moment), so a chain at the net's
    own ``lr`` trains as the net does.

    The noise's preconditioner ``Q = 1 / (eps + max(r, mean(r)))`` (the mean over each
    tensor of one chain; over all the chain's weights for a tensor whose gradient is zero
    throughout, a layer of dead units or an unused parameter) is ``P`` but where a
    weight's gradient is below the tensor's typical one: no weight diffuses faster than a
    typical weight of its tensor. Where a gradient vanishes (a dead ReLU unit's weights)
    ``P`` reaches ``1 / eps``, and the noise there, ``sqrt(2 eta tau / eps)`` per step,
    dwarfs the weights even at the small temperatures the tuner samples at: the chains
    diverged at the net's own lr where the net trains well (``docs/reliability.md``).
    Such weights sample a colder distribution than ``tau``; the drift, and the
    preconditioner the hypergradient's adjoint uses (:meth:`precond`), are ``P``.

    With ``momentum`` ``beta1 > 0`` the drift is Adam's whole step: a buffer ``b <- beta1
    b + g`` (Adam's first moment is ``(1 - beta1) b``) and ``theta <- theta - eta (1 -
    beta1) / (1 - beta1^t) P b``. The noise goes into the buffer, ``sqrt(2 tau / eta)
    sqrt(Q) / P z``, the momentum sampler's friction-scaled noise in the coordinates
    ``P`` whitens (a step of ``eta (1 - beta1)`` and friction ``1 - beta1``), so that
    ``beta1 = 0`` is the pSGLD step above. Without its first moment the chain took
    RMSprop's sign-like steps: on a small net with an L1 penalty its accuracy fell as
    the lr rose where Adam's rose, and a race of Adam's lr picked too small a one
    (``docs/reliability.md``).
    """

    name = "psgld"

    def __init__(self, settings):
        super().__init__(settings)
        self.beta2, self.eps = settings.beta2, settings.precond_eps
        self.beta1 = float(getattr(settings, "momentum", 0.0) or 0.0)
        self.v, self.t, self.P, self.b = None, 0, None, None

    @torch.no_grad()
    def step(self, theta, grads, generator):
        grads = [g.detach() for g in grads]
        if self.v is None:
            self.v = [torch.zeros_like(g) for g in grads]
        self.t += 1
        if self.beta1 > 0.0:
            return self._adam_step(theta, grads, generator)
        rms = self._second_moment(grads)
        steps = torch._foreach_mul(self.P, self.lr)
        torch._foreach_mul_(steps, grads)
        out = list(torch._foreach_sub(self.decayed(theta), steps))
        base = math.sqrt(2.0 * self.lr * self.temperature) * self.noise_scale
        if base > 0.0:
            slices = len(generator) if isinstance(generator, SliceGenerators) else None
            floors = _typical_floors(rms, slices)
            for t, r, floor, z in zip(out, rms, floors,
                                      draw_noise(out, generator, self.noise)):
                t.add_(z * (self.eps + torch.maximum(r, floor)).rsqrt(), alpha=base)
        return out

    def _second_moment(self, grads) -> list:
        """Update ``v`` and ``P`` from this step's gradients; return ``r``.

        One foreach call per operation over all leaves (a per-leaf Python loop of small
        ops cost more than the arithmetic), in the same operations and order as
        ``beta2 v + (1 - beta2) g g``, ``sqrt(v / c)`` and ``1 / (eps + r)``. New lists:
        :meth:`state` hands out ``v``."""
        squares = torch._foreach_mul(grads, 1.0 - self.beta2)
        torch._foreach_mul_(squares, grads)
        self.v = list(torch._foreach_mul(self.v, self.beta2))  # foreach gives tuples
        torch._foreach_add_(self.v, squares)
        rms = torch._foreach_div(self.v, 1.0 - self.beta2 ** self.t)
        torch._foreach_sqrt_(rms)
        self.P = list(torch._foreach_add(rms, self.eps))
        torch._foreach_reciprocal_(self.P)
        return rms

    def _adam_step(self, theta, grads, generator):
        """The step with Adam's first moment (``beta1 > 0``; see the class notes)."""
        beta1 = self.beta1
        rms = self._second_moment(grads)
        if self.b is None:
            self.b = [torch.zeros_like(g) for g in grads]
        self.b = list(torch._foreach_mul(self.b, beta1))
        torch._foreach_add_(self.b, grads)
        base = math.sqrt(2.0 * self.temperature / self.lr) * self.noise_scale
        if base > 0.0:
            slices = len(generator) if isinstance(generator, SliceGenerators) else None
            # sqrt(Q) / P z, in place (a small net's step is its kernel launches)
            for b, r, floor, p, z in zip(self.b, rms, _typical_floors(rms, slices), self.P,
                                         draw_noise(self.b, generator, self.noise)):
                z.mul_(torch.maximum(r, floor).add_(self.eps).rsqrt_())
                b.addcdiv_(z, p, value=base)
        steps = torch._foreach_mul(self.P, self.b)
        torch._foreach_mul_(steps, self.lr * (1.0 - beta1) / (1.0 - beta1 ** self.t))
        return list(torch._foreach_sub(self.decayed(theta), steps))

    def precond(self):
        return self.P

    def state(self):
        # the first moment's buffer only where there is one (beta1 > 0)
        return {"v": self.v, "t": self.t, **({} if self.b is None else {"b": self.b})}

    def load(self, state):
        if state and state.get("v") is not None:
            self.v, self.t = [v.clone() for v in state["v"]], state["t"]
        if state and state.get("b") is not None:
            self.b = [b.clone() for b in state["b"]]


def _typical_floors(values: list, slices: int | None) -> list:
    """Per tensor, the mean of its ``values`` (per chain where ``slices`` chains are
    stacked along dim 0), or the mean over all the tensors where that is zero; each
    shaped to broadcast against its tensor."""
    def per_chain(t):  # (sum, count) per chain: () for one chain, (K,) stacked
        if slices is None or t.dim() == 0:
            return t.sum(), t.numel()
        return t.reshape(slices, -1).sum(1), t.numel() // slices

    sums, counts = zip(*(per_chain(t) for t in values))
    overall = sum(sums) / sum(counts)
    floors = []
    for t, total, count in zip(values, sums, counts):
        mean = total / count
        floor = torch.where(mean > 0, mean, overall)
        floors.append(floor if floor.dim() == 0
                      else floor.reshape(-1, *([1] * (t.dim() - 1))))
    return floors


def _add_noise(out, std, generator, noise="gaussian"):
    """``out + std * z`` leaf by leaf, in place (the stream of :func:`langevin_step`)."""
    if std > 0.0:
        for t, z in zip(out, draw_noise(out, generator, noise)):
            t.add_(z, alpha=std)
    return out


SAMPLERS = {cls.name: cls for cls in (Sampler, MomentumSampler, PreconditionedSampler)}


def make_sampler(settings) -> Sampler:
    """The sampler named by ``settings.sampler``."""
    try:
        return SAMPLERS[settings.sampler](settings)
    except KeyError:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, "
                         f"got {settings.sampler!r}") from None
