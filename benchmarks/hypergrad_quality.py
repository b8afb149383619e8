"""Hypergradient quality of every estimator against exact references, and its cost.

For each problem, each estimator runs a persistent chain at a fixed ``lam`` (``n_warm``
outer iterations of ``B + M`` inner steps, as it would while ``lam`` moves slowly), then
``n_calls`` more; we report the cosine and norm ratio of the mean of those ``n_calls``
estimates against the exact hypergradient (and the median single-call cosine), and the
CPU time per inner step in units of a plain gradient step on the same inner loss.

Problems (float64, one torch thread):

* ``ridge-d``: ridge with one penalty per feature, d = 10, 100, 1000; closed form
  (``RidgePerFeature.exact_hypergradient`` at the chain's temperature); chain started at
  the inner optimum.
* ``logreg-opt`` / ``logreg-cold``: multinomial logistic regression on digits with one L2
  strength per weight (640); exact implicit-function hypergradient by a full Hessian
  solve; chain started at the optimum / at zero.
* ``mlp-wd`` / ``mlp-l1``: a 64-32-10 tanh MLP on digits with per-tensor weight decay /
  per-weight L1, started from a trained net, noise off; reference: exact reverse mode
  through the same chain (``rmd`` over all its steps); IFT-CG run to convergence at its
  end is reported beside it.
* ``ill-logreg-k1e3`` / ``k1e4`` / ``k1e5``: ill-conditioned binary logistic regression,
  one L2 strength per feature (40 standardised, strongly correlated features: their
  covariance spectrum spans 8 decades), the inner Hessian's condition number set to
  1e3 / 1e4 / 1e5 exactly by the common level of the penalties; exact implicit-function
  hypergradient by Newton's method and a linear solve in float64; chain started at the
  optimum, ``tau = 1e-8``, the issue's setting: B = M = 25 (20 warm-up outer iterations
  of 50 steps, then 5 measured). ``-batchN`` rows (condition numbers 1e2-1e4): the inner
  loss on N random training rows per step, so gradients and Hessian products are
  stochastic, against the same full-batch reference. ``hvp_per_step``: the adjoint's
  Hessian products per inner step.

Usage::

    python benchmarks/hypergrad_quality.py                     # full (about 12 min, 1 core)
    python benchmarks/hypergrad_quality.py --cases illcond     # the ill-conditioned rows (1 min)
    SGLD_TUNER_SMOKE=1 python benchmarks/hypergrad_quality.py  # seconds

Writes ``benchmarks/results/hypergrad_quality.{json,md}`` (``--cases illcond``:
``hypergrad_quality_illcond.{json,md}``; ``*_smoke.*`` in smoke mode).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_common_args, is_smoke, parse_args, result_stem, write_results  # noqa: E402

from sgld_tuner.core import BilevelProblem, ChainState, InnerSettings, hypergradient  # noqa: E402
from sgld_tuner.core.recursions import make_recursion  # noqa: E402
from sgld_tuner.problems import RidgePerFeature  # noqa: E402

SMOKE = is_smoke()
DT = torch.float64

# name -> InnerSettings fields (method, recursion, options)
ESTIMATORS = {
    "paper": dict(method="sgld", recursion="paper"),
    "damped": dict(method="sgld", recursion="damped"),
    # The default: the accelerated adjoint iteration (and the outer gradient) every 5th step.
    "tracked": dict(method="sgld", recursion="tracked"),
    "tracked/1": dict(method="sgld", recursion="tracked", curvature_every=1),
    # The plain adjoint iteration (InnerSettings(adjoint="gradient"), the default before).
    "tracked-gd": dict(method="sgld", recursion="tracked", adjoint="gradient"),
    "tracked-gd/1": dict(method="sgld", recursion="tracked", adjoint="gradient",
                         curvature_every=1),
    "gibbs": dict(method="sgld", recursion="gibbs"),
    "rmd-10": dict(method="rmd", n_inner=10),
    "rmd-50": dict(method="rmd", n_inner=50),
    "ift-cg-10": dict(method="ift-cg", cg_iters=10),
    "ift-cg-50": dict(method="ift-cg", cg_iters=50, cg_damping=1e-4),
    # the step of the stored results (the core's default before it became inner_lr)
    "ift-neumann-10": dict(method="ift-neumann", neumann_iters=10, neumann_alpha=0.99),
}


class Case:
    """One problem at one ``lam``: losses, start, chain knobs and the exact reference."""

    def __init__(self, name, outer, inner, lam, theta0, exact, eta, tau, mixed_vjp=None,
                 burn_in=5, n_samples=5):
        self.name, self.outer, self.inner, self.lam = name, outer, inner, lam
        self.theta0, self.exact, self.eta, self.tau = theta0, exact, eta, tau
        self.mixed_vjp = mixed_vjp
        self.burn_in, self.n_samples = burn_in, n_samples


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm() + 1e-300))


def plain_step_seconds(case, n=30):
    """CPU seconds of one plain gradient step on the inner loss (the unit of cost)."""
    theta = case.theta0.clone().requires_grad_(True)
    started = time.process_time()
    for _ in range(n):
        (g,) = torch.autograd.grad(case.inner(case.lam, theta), theta)
        with torch.no_grad():
            theta = (theta - case.eta * g).requires_grad_(True)
    return (time.process_time() - started) / n


def run_estimator(case, options, n_warm, n_calls, seed=0):
    """Mean and single-call estimates of one estimator, and CPU seconds per inner step."""
    problem = BilevelProblem(case.outer, case.inner, None, case.theta0,
                             mixed_vjp=case.mixed_vjp)
    settings = InnerSettings(inner_lr=case.eta, burn_in=case.burn_in,
                             n_samples=case.n_samples, temperature=case.tau,
                             **options).validate()
    lam = [case.lam.clone().requires_grad_(True)]
    gen = torch.Generator().manual_seed(seed)
    state = ChainState()
    for _ in range(n_warm):
        hypergradient(problem, lam, state, settings, gen)
    calls, started = [], time.process_time()
    for _ in range(n_calls):
        calls.append(hypergradient(problem, lam, state, settings, gen).grad[0].reshape(-1))
    per_step = (time.process_time() - started) / (n_calls * settings.steps)
    return torch.stack(calls).mean(0), calls, per_step


def hessian_products_per_step(case, options):
    """Hessian-vector products the chain estimator asks for per inner step (NaN for the
    baselines): what the adjoint's refresh rule costs beyond a plain step."""
    if options.get("method") != "sgld":
        return float("nan")
    settings = InnerSettings(inner_lr=case.eta, burn_in=case.burn_in,
                             n_samples=case.n_samples, **options).validate()
    recursion = make_recursion(settings, [case.lam], start_depends_on_lam=False)
    steps = settings.steps
    return sum(recursion.needs_hessian(m) for m in range(1, steps + 1)) / steps


def evaluate(case, n_warm, n_calls, names):
    """One table row per estimator on ``case``."""
    exact = case.exact.reshape(-1)
    unit = plain_step_seconds(case)
    rows = []
    for name in names:
        if name.startswith("gibbs") and case.tau <= 0:
            continue
        mean, calls, per_step = run_estimator(case, ESTIMATORS[name], n_warm, n_calls)
        rows.append({"problem": case.name, "estimator": name,
                     "cosine": cosine(mean, exact),
                     "norm_ratio": float(mean.norm() / exact.norm()),
                     "cosine_1call": float(np.median([cosine(c, exact) for c in calls])),
                     "cost_x_plain": per_step / unit,
                     "hvp_per_step": hessian_products_per_step(case, ESTIMATORS[name])})
        print(f"{case.name:12s} {name:15s} cos {rows[-1]['cosine']:+.3f}  "
              f"ratio {rows[-1]['norm_ratio']:.3f}  cost {rows[-1]['cost_x_plain']:.2f}x",
              flush=True)
    return rows


# -- problems ---------------------------------------------------------------------------

def ridge_case(d, tau=1e-4):
    prob = RidgePerFeature(n=max(200, 2 * d), d=d, random_state=0)
    lam = torch.full((d,), float(np.log(0.1)), dtype=DT)
    hess_max = float(torch.linalg.eigvalsh(prob.hessian(lam)).max())
    return Case(f"ridge-{d}", prob.outer_loss, prob.inner_loss, lam, prob.theta_star(lam),
                prob.exact_hypergradient(lam, temperature=tau), eta=1.0 / hess_max, tau=tau,
                mixed_vjp=prob.mixed_vjp)


def digits_split(n_train, n_val, seed=0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    X = torch.tensor(X / 16.0, dtype=DT)
    y = torch.tensor(y)
    tr, va = idx[:n_train], idx[n_train:n_train + n_val]
    return X[tr], y[tr], X[va], y[va]


def logreg_case(cold: bool, n_train=300, n_val=300):
    """Per-weight L2 logistic regression; exact IFT by a full Hessian solve."""
    X, y, Xv, yv = digits_split(n_train, n_val)
    d, k = X.shape[1], 10

    def unpack(theta):
        return theta[:d * k].reshape(d, k), theta[d * k:]

    def inner(lam, theta):
        W, b = unpack(theta)
        return F.cross_entropy(X @ W + b, y) + 0.5 * (torch.exp(lam) * W.reshape(-1) ** 2).sum()

    def outer(lam, theta):
        W, b = unpack(theta)
        return F.cross_entropy(Xv @ W + b, yv)

    lam = torch.full((d * k,), float(np.log(1e-2)), dtype=DT)
    theta = torch.zeros(d * k + k, dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = inner(lam, theta)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    star = theta.detach()
    H = torch.autograd.functional.hessian(lambda t: inner(lam, t), star)
    t = star.clone().requires_grad_(True)
    (grad_f,) = torch.autograd.grad(outer(lam, t), t)
    w = torch.linalg.solve(H, grad_f)
    mixed = torch.exp(lam) * star[:d * k]  # d2 L_T / (d W_j d lam_j), elementwise
    exact = -mixed * w[:d * k]
    eta = 1.0 / float(torch.linalg.eigvalsh(H).max())

    def mixed_vjp(lam_, theta_, v):
        return torch.exp(lam_) * theta_[:d * k] * v[:d * k]

    start = torch.zeros_like(star) if cold else star
    return Case("logreg-cold" if cold else "logreg-opt", outer, inner, lam, start, exact,
                eta=eta, tau=1e-6, mixed_vjp=mixed_vjp)


def illcond_logreg_case(kappa, d=40, n_train=400, n_val=400, spread=1e-8, tau=1e-8,
                        steps=50, batch=None, seed=0):
    """Binary L2 logistic regression with one strength per feature whose inner Hessian has
    condition number ``kappa``; exact implicit-function hypergradient (float64).
    ``batch``: the inner loss on ``batch`` training rows drawn afresh at each call (the
    chain's gradients and Hessian products are then stochastic; the reference stays the
    full-batch one).

    Features: a rotation of independent ones whose variances are log-spaced over
    ``spread`` (so they are strongly correlated), standardised on the training rows;
    labels from a logistic model. Per-feature log-strengths ``c + u_j`` (``u_j`` uniform
    in [-1/2, 1/2]); the common level ``c`` is set by bisection so that the Hessian at
    the optimum has condition number ``kappa`` (smaller penalties, larger ``kappa``).
    """
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
    mixing = torch.diag(torch.logspace(0, np.log10(spread) / 2, d, dtype=DT)) @ rotation.T
    X = torch.randn(n_train, d, generator=gen, dtype=DT) @ mixing
    Xv = torch.randn(n_val, d, generator=gen, dtype=DT) @ mixing
    mean, std = X.mean(0), X.std(0)
    X, Xv = (X - mean) / std, (Xv - mean) / std
    coef = torch.randn(d, generator=gen, dtype=DT)
    coef = 3.0 * coef / (X @ coef).std()
    y = (torch.rand(n_train, generator=gen, dtype=DT) < torch.sigmoid(X @ coef)).to(DT)
    yv = (torch.rand(n_val, generator=gen, dtype=DT) < torch.sigmoid(Xv @ coef)).to(DT)
    jitter = torch.rand(d, generator=gen, dtype=DT) - 0.5

    batches = torch.Generator().manual_seed(seed + 1)

    def inner(lam, theta):
        rows = slice(None) if batch is None else torch.randint(0, n_train, (batch,),
                                                               generator=batches)
        return (F.binary_cross_entropy_with_logits(X[rows] @ theta, y[rows])
                + 0.5 * (torch.exp(lam) * theta ** 2).sum())

    def outer(lam, theta):
        return F.binary_cross_entropy_with_logits(Xv @ theta, yv)

    def optimum(lam):
        """Newton's method to machine precision; the minimiser and its Hessian."""
        theta = torch.zeros(d, dtype=DT)
        for _ in range(100):
            p = torch.sigmoid(X @ theta)
            grad = X.T @ (p - y) / n_train + torch.exp(lam) * theta
            hess = X.T @ (X * (p * (1 - p))[:, None]) / n_train + torch.diag(torch.exp(lam))
            step = torch.linalg.solve(hess, grad)
            theta = theta - step
            if float(step.norm()) < 1e-14 * (1.0 + float(theta.norm())):
                break
        p = torch.sigmoid(X @ theta)
        return theta, X.T @ (X * (p * (1 - p))[:, None]) / n_train + torch.diag(torch.exp(lam))

    def condition(level):
        eig = torch.linalg.eigvalsh(optimum(level + jitter)[1])
        return float(eig[-1] / eig[0])

    low, high = -30.0, 5.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if condition(mid) > kappa else (low, mid)
    lam = high + jitter
    star, hess = optimum(lam)
    t = star.clone().requires_grad_(True)
    (grad_f,) = torch.autograd.grad(outer(lam, t), t)
    exact = -torch.exp(lam) * star * torch.linalg.solve(hess, grad_f)

    def mixed_vjp(lam_, theta_, v):
        return torch.exp(lam_) * theta_ * v

    name = f"ill-logreg-k{kappa:.0e}".replace("e+0", "e") + (f"-batch{batch}" if batch else "")
    return Case(name, outer, inner, lam, star, exact,
                eta=1.0 / float(torch.linalg.eigvalsh(hess)[-1]), tau=tau,
                mixed_vjp=mixed_vjp, burn_in=steps // 2, n_samples=steps - steps // 2)


def mlp_case(kind: str, hidden=32, n_train=300, n_val=300, eta=0.3, train_steps=1500):
    """Digits MLP (64-hidden-10, tanh) with per-tensor weight decay or per-weight L1,
    from a net trained at ``lam``; noise off, so reverse mode through the chain is exact."""
    X, y, Xv, yv = digits_split(n_train, n_val, seed=1)
    shapes = [(64, hidden), (hidden,), (hidden, 10), (10,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(theta):
        parts = torch.split(theta, sizes)
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    def forward(theta, inputs):
        W1, b1, W2, b2 = unpack(theta)
        return torch.tanh(inputs @ W1 + b1) @ W2 + b2

    def weights(theta):
        W1, _, W2, _ = unpack(theta)
        return [W1, W2]

    if kind == "wd":
        lam = torch.full((2,), float(np.log(1e-3)), dtype=DT)

        def penalty(lam_, theta):
            return sum(0.5 * torch.exp(l) * (w ** 2).sum() for l, w in zip(lam_, weights(theta)))
    else:
        lam = torch.full((64 * hidden + hidden * 10,), float(np.log(1e-4)), dtype=DT)

        def penalty(lam_, theta):
            flat = torch.cat([w.reshape(-1) for w in weights(theta)])
            return (torch.exp(lam_) * flat.abs()).sum()

    def inner(lam_, theta):
        return F.cross_entropy(forward(theta, X), y) + penalty(lam_, theta)

    def outer(lam_, theta):
        return F.cross_entropy(forward(theta, Xv), yv)

    gen = torch.Generator().manual_seed(0)
    theta = torch.cat([torch.randn(n, generator=gen, dtype=DT) * (0.3 if len(s) == 2 else 0.0)
                       for n, s in zip(sizes, shapes)])
    for _ in range(train_steps):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(inner(lam, t), t)
        theta = theta - eta * g
    return Case(f"mlp-{kind}", outer, inner, lam, theta, exact=None, eta=eta, tau=0.0)


def mlp_references(case, total_steps):
    """Exact reverse mode through ``total_steps`` noise-off steps, and IFT-CG at their end."""
    problem = BilevelProblem(case.outer, case.inner, None, case.theta0)
    lam = [case.lam.clone().requires_grad_(True)]
    gen = torch.Generator().manual_seed(0)
    state = ChainState()
    rmd = InnerSettings(method="rmd", inner_lr=case.eta, n_inner=total_steps).validate()
    reference = hypergradient(problem, lam, state, rmd, gen).grad[0].reshape(-1)
    cg = InnerSettings(method="ift-cg", inner_lr=case.eta, n_inner=1, cg_iters=300,
                       cg_damping=1e-6).validate()
    ift = hypergradient(problem, lam, state, cg, gen).grad[0].reshape(-1)
    return reference, ift


def augmentation_sign(n_seeds=8, steps=20, init=0.3, h=0.1, smoke=False):
    """AffineAugmentation rotation range on rotated digits, a small restarted chain:
    each estimator's hypergradient (raw scale) against central finite differences of the
    same averaged objective with common random numbers (same seed on both sides)."""
    import math

    from skorch import NeuralNetClassifier

    from sgld_tuner.hyperparams import AffineAugmentation
    from sgld_tuner.skorch_adapter import NetProblem

    X, y, Xv, yv = digits_split(120 if smoke else 300, 100 if smoke else 200, seed=2)
    gen = torch.Generator().manual_seed(0)
    angles = (torch.rand(len(X) + len(Xv), generator=gen) * 2 - 1) * math.pi / 2
    images = _rotate(torch.cat([X, Xv]).float(), angles)
    X, Xv = images[:len(X)].numpy(), images[len(X):].numpy()
    torch.manual_seed(0)
    net = NeuralNetClassifier(_SmallMLP, criterion=torch.nn.CrossEntropyLoss, lr=0.2,
                              max_epochs=30, batch_size=32, train_split=None, verbose=0)
    net.fit(X, y.numpy())  # the chain restarts from this trained net
    aug = AffineAugmentation(generators=("rot",), init=init, image_shape=(8, 8))
    n_seeds = 2 if smoke else n_seeds

    def estimate(options, raw_shift=0.0, seed=0):
        problem = NetProblem(net, {"a": aug}, X, y.numpy(), Xv, yv.numpy(), batch_size=32,
                             generator=torch.Generator().manual_seed(seed), augment_outer=True)
        lam0 = problem.init_lam()
        lam = [lam0["a"].detach() + raw_shift]
        bp = BilevelProblem(lambda l, t: problem.outer_loss({"a": l}, t),
                            lambda l, t: problem.inner_loss({"a": l}, t), None, problem.theta0())
        settings = InnerSettings(inner_lr=0.2, burn_in=steps // 2, n_samples=steps // 2,
                                 temperature=0.0, chain="restart", **options).validate()
        lam = [t.clone().requires_grad_(True) for t in lam]
        return hypergradient(bp, lam, ChainState(), settings, problem.generator)

    def objective(shift):
        return np.mean([estimate({"recursion": "paper"}, shift, s).outer_loss
                        for s in range(n_seeds)])

    fd = (objective(h) - objective(-h)) / (2 * h)
    rows = [{"problem": f"augmentation rot={init}", "estimator": "finite differences",
             "value": float(fd)}]
    for name in ("paper", "damped", "tracked"):
        value = np.mean([float(estimate({"recursion": name}, 0.0, s).grad[0].sum())
                         for s in range(n_seeds)])
        rows.append({"problem": f"augmentation rot={init}", "estimator": name,
                     "value": float(value), "same_sign": bool(np.sign(value) == np.sign(fd))})
        print(f"augmentation rot={init} {name:8s} {value:+.4f} (finite differences {fd:+.4f})",
              flush=True)
    return rows


class _SmallMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, 32)
        self.out = torch.nn.Linear(32, 10)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def _rotate(X, angles):
    """Rotate flat 8x8 images by ``angles`` (radians)."""
    rot = torch.stack([torch.stack([angles.cos(), -angles.sin(), 0 * angles], -1),
                       torch.stack([angles.sin(), angles.cos(), 0 * angles], -1)], 1)
    imgs = X.reshape(-1, 1, 8, 8)
    grid = F.affine_grid(rot, list(imgs.shape), align_corners=False)
    return F.grid_sample(imgs, grid, align_corners=False).reshape(len(X), 64)


def main(argv=None):
    import argparse

    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--cases", choices=("all", "illcond"), default="all",
                        help="every problem (default), or the ill-conditioned ones only "
                             "(written to hypergrad_quality_illcond.*)")
    args = parse_args(parser, argv)
    torch.set_num_threads(1)
    n_warm, n_calls = (2, 2) if SMOKE else (20, 5)
    names = list(ESTIMATORS)
    ill_rows = illcond_rows(n_warm, n_calls, names)
    if args.cases == "illcond":
        write_illcond(ill_rows, args.out_dir)
        return
    rows = []
    for d in ([10] if SMOKE else [10, 100, 1000]):
        rows += evaluate(ridge_case(d), n_warm, n_calls, names)
    if not SMOKE:
        for cold in (False, True):
            rows += evaluate(logreg_case(cold), n_warm, n_calls, names)
    mlp_warm, mlp_calls = (2, 1) if SMOKE else (29, 1)
    for kind in ("wd", "l1"):
        case = mlp_case(kind, hidden=8 if SMOKE else 32, train_steps=20 if SMOKE else 1500)
        case.exact, ift = mlp_references(case, (mlp_warm + mlp_calls) * 10)
        mlp_names = [n for n in names if n != "gibbs" and not n.startswith("rmd")]
        new = evaluate(case, mlp_warm, mlp_calls, mlp_names)
        new.append({"problem": case.name, "estimator": "ift-cg-300 (at chain end)",
                    "cosine": cosine(ift, case.exact),
                    "norm_ratio": float(ift.norm() / case.exact.norm()),
                    "cosine_1call": cosine(ift, case.exact), "cost_x_plain": float("nan")})
        rows += new
    aug_rows = [r for init in ((0.3,) if SMOKE else (0.3, 1.5))
                for r in augmentation_sign(init=init, smoke=SMOKE)]
    write(rows, aug_rows, ill_rows, args.out_dir)


#: the ill-conditioned rows' estimators: gibbs is noise at tau = 1e-8 (its variance
#: grows like 1 / tau)
ILLCOND_SKIP = ("gibbs",)


def illcond_rows(n_warm, n_calls, names):
    """Rows of the ill-conditioned logistic regressions (condition number 1e3 only in
    smoke mode)."""
    rows = []
    cases = [(1e3, None)] if SMOKE else [(1e3, None), (1e4, None), (1e5, None), (1e2, 32),
                                          (1e3, 32), (1e4, 128)]
    for kappa, batch in cases:
        rows += evaluate(illcond_logreg_case(kappa, batch=batch), n_warm, n_calls,
                         [n for n in names if n not in ILLCOND_SKIP])
    return rows


ILLCOND_NOTE = ("Ill-conditioned rows (`ill-logreg-k*`): binary logistic regression with one "
                "L2 strength per feature, 40 standardised strongly correlated features, inner "
                "Hessian condition number 1e3 / 1e4 / 1e5 at the optimum, exact "
                "implicit-function reference; chain from the optimum, tau = 1e-8, "
                "eta = 1 / lambda_max, B = M = 25 (20 warm-up outer iterations of 50 steps, "
                "then 5 measured); `-batchN`: the inner loss on N of the 400 training rows, drawn "
                "afresh at each step (stochastic gradients and Hessian products), against "
                "the same full-batch reference. hvp_per_step: the adjoint's Hessian-vector "
                "products per inner step (its refresh rule). tracked = the accelerated adjoint "
                "iteration (default), tracked-gd = the plain one (adjoint='gradient', the "
                "default before).")


def write_illcond(rows, out_dir):
    import pandas as pd

    md = ["# Hypergradient quality on ill-conditioned problems", "",
          "Written by `python benchmarks/hypergrad_quality.py --cases illcond` (float64, one "
          "torch thread). cosine / norm ratio: of the mean of the measured estimates; "
          "cosine_1call: median over single estimates; cost: CPU per inner step in plain "
          "gradient steps on the same inner loss.", "", ILLCOND_NOTE, "",
          pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"), ""]
    write_results(result_stem("hypergrad_quality_illcond", out_dir), {"rows": rows},
                  "\n".join(md))
    print("\n".join(md))


def write(rows, aug_rows, ill_rows, out_dir):
    import pandas as pd

    table = pd.DataFrame(rows + ill_rows)
    md = ["# Hypergradient quality against exact references", "",
          "Written by `python benchmarks/hypergrad_quality.py` (float64, one torch thread, "
          "B = M = 5 steps per outer iteration except the ill-conditioned rows, 20 warm-up + 5 measured outer iterations "
          "at fixed lam; MLP rows: 29 + 1, noise off, reference = reverse mode through "
          "all 300 steps). cosine / norm ratio: of the mean of the measured estimates; "
          "cosine_1call: median over single estimates; cost: CPU per inner step in plain "
          "gradient steps on the same inner loss.", "", ILLCOND_NOTE, "",
          table.to_markdown(index=False, floatfmt=".3f"), "",
          "## AffineAugmentation: sign of the rotation-range hypergradient", "",
          "Rotated digits (+-90 deg), a 64-32-10 MLP trained first, restarted chain of 10 + 10 "
          "noise-free steps at lr 0.2, 8 seeds; finite differences of the same averaged "
          "objective with common random numbers (h = 0.1 on the raw scale).", "",
          pd.DataFrame(aug_rows).to_markdown(index=False, floatfmt=".4f"), ""]
    write_results(result_stem("hypergrad_quality", out_dir),
                  {"rows": rows + ill_rows, "augmentation": aug_rows}, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
