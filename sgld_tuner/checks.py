"""Conformance checks every hyperparameter kind must pass: :func:`check_hyperparameter`.

It binds a kind to a small skorch net through the adapter, so it lives above the kinds'
layer (``sgld_tuner.hyperparams`` imports only ``sgld_tuner.core``).

The independent truth for the derivatives is central finite differences in float64 of the
hypergradient through one inner gradient step,
``d/dlam f(lam, theta - eta * grad_theta L_T(lam, theta))``, on a tiny net; a closed-form
mixed derivative is checked against the double backward of autograd.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from sklearn.base import clone

from skorch import NeuralNet, NeuralNetClassifier, NeuralNetRegressor

from .hyperparams.base import BoundHyperparameter, Hyperparameter
from .skorch_adapter import NetProblem

__all__ = ["check_hyperparameter"]

_N_ROWS, _N_FEATURES, _N_CLASSES, _N_HIDDEN = 24, 16, 3, 6


def check_hyperparameter(kind: Hyperparameter, module=None, X=None, y=None) -> None:
    """Check that a hyperparameter kind honours the contract the tuner relies on.

    Binds ``kind`` to a small float64 net and checks, raising ``AssertionError`` with a
    message naming the kind and the failed property:

    * scikit-learn conventions: ``clone`` works, ``get_params`` round-trips and binding
      leaves the specification unchanged; a ``params`` glob that matches nothing fails
      at binding with a ``ValueError`` listing the parameter names (``uses_params``);
    * representation: ``from_public(to_public(raw))`` gives the same public value (at the
      start and at a moved value), ``value`` holds the numbers ``to_public`` reports and
      ``summary`` is a finite float;
    * capability flags agree with the hooks: without ``transforms_inputs``,
      ``transform_inputs`` is the identity; without ``needs_row_indices``,
      ``sample_weights`` is ``None``; ``transforms_validation_inputs`` implies
      ``transforms_inputs``; the hooks return the documented shapes;
    * derivatives: the hypergradient through one inner gradient step (autograd) matches
      central finite differences in two random directions and is not zero (the kind
      has an effect); with ``closed_form_mixed``, ``mixed_vjp`` matches the double
      backward; with ``closed_form_penalty``, ``penalty_grad``, ``penalty_hvp`` and
      ``penalty_grad_raw`` match autograd on ``inner_penalty``.

    Parameters
    ----------
    kind : Hyperparameter
        The specification to check (not modified).
    module : torch.nn.Module or skorch.NeuralNet, optional
        The network to bind to; copied and cast to float64. A plain module is trained
        with ``CrossEntropyLoss`` on its outputs (logits) for integer ``y``, with
        ``MSELoss`` for float ``y``; pass a skorch net to choose the criterion (e.g.
        ``NLLLoss`` on a module that outputs probabilities): it is cloned. By
        default an MLP ``Flatten -> hidden (Linear, 6 units) -> tanh -> out (Linear)``
        sized to ``X`` and ``y``.
    X : array-like of shape (n, ...), optional
        Inputs; the first two thirds of the rows train, the rest validate. Default: 24
        standard normal rows of 16 features (a 4x4 image, flattened).
    y : array-like of shape (n,) or (n, d), optional
        Integer class codes (a classifier) or floats (a regressor). Default
        ``arange(n) % 3``.

    Raises
    ------
    AssertionError
        When a property above does not hold.

    Examples
    --------
    >>> from sgld_tuner.checks import check_hyperparameter
    >>> from sgld_tuner.hyperparams import WeightDecay
    >>> check_hyperparameter(WeightDecay(init=0.1))
    """
    label = f"check_hyperparameter({type(kind).__name__})"
    _check_spec(kind, label)
    # The checks seed torch's global RNG for their tiny net: on a fork of it, so that
    # the caller's stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        net, X, y = _setup(module, X, y)
        params_before = repr(kind.get_params())
        problem = _make_problem(kind, net, X, y)
        _require(repr(kind.get_params()) == params_before, label,
                 "binding changed the specification's parameters; validate in make_bound "
                 "and keep derived values on the bound kind")
        bound = problem.bound["h"]
        _check_flags(kind, bound, problem, label)
        _check_representation(bound, problem, label)
        _check_one_step_hypergradient(problem, label)
        _check_mixed_vjp(bound, problem, label)
        _check_closed_form_penalty(bound, problem, label)
        _check_binding_errors(kind, net, label)


def _require(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise AssertionError(f"{label}: {message}")


def _check_spec(kind, label):
    _require(isinstance(kind, Hyperparameter), label,
             f"expected a Hyperparameter instance, got {type(kind).__name__}")
    try:
        cloned = clone(kind)
    except RuntimeError as exc:   # sklearn's message when __init__ alters its arguments
        raise AssertionError(f"{label}: clone() fails: {exc}") from None
    _require(type(cloned) is type(kind) and cloned is not kind, label,
             "clone() must give a new instance of the same class")
    _require(repr(cloned.get_params()) == repr(kind.get_params()), label,
             "clone() changed get_params(); __init__ must store its arguments unchanged")
    _require(not (kind.transforms_validation_inputs and not kind.transforms_inputs), label,
             "transforms_validation_inputs requires transforms_inputs")


# -- the tiny problem ----------------------------------------------------------------------

def _default_module(n_in: int, n_out: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([
        ("flatten", torch.nn.Flatten()), ("hidden", torch.nn.Linear(n_in, _N_HIDDEN)),
        ("act", torch.nn.Tanh()), ("out", torch.nn.Linear(_N_HIDDEN, n_out))]))


def _setup(module, X, y):
    """An initialized float64 skorch net and the data as float64 / int64 arrays."""
    rng = np.random.RandomState(0)
    X = rng.randn(_N_ROWS, _N_FEATURES) if X is None else np.asarray(X)
    y = np.arange(len(X)) % _N_CLASSES if y is None else np.asarray(y)
    classifier = y.dtype.kind in "iub"
    X, y = X.astype(np.float64), y.astype(np.int64 if classifier else np.float64)
    if isinstance(module, NeuralNet):
        net = clone(module)
    else:
        n_out = int(y.max()) + 1 if classifier else (y.shape[1] if y.ndim == 2 else 1)
        module = (_default_module(int(np.prod(X.shape[1:])), n_out) if module is None
                  else copy.deepcopy(module))
        # a plain module outputs logits (classifier) or predictions (regressor)
        net = (NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss)
               if classifier else NeuralNetRegressor(module))
    torch.manual_seed(0)
    net.set_params(verbose=0).initialize()
    net.module_.double()
    return net, X, y


def _make_problem(kind, net, X, y):
    n_fit = 2 * len(X) // 3
    return NetProblem(net, {"h": clone(kind)}, X[:n_fit], y[:n_fit], X[n_fit:], y[n_fit:],
                      batch_size=-1, generator=torch.Generator().manual_seed(1),
                      augment_outer=kind.transforms_validation_inputs,
                      n_train_total=len(X))


def _leaves(tree) -> list[torch.Tensor]:
    """Tensors of a raw value (tensor, or nested dicts of tensors) in insertion order."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


def _rebuild(leaves, like):
    """Inverse of :func:`_leaves` for the structure of ``like``."""
    it = iter(leaves)

    def build(node):
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return next(it)

    return build(like)


def _numbers(value) -> np.ndarray:
    """All numbers of a public value or a (dict of) tensor(s), flattened in order."""
    if isinstance(value, dict):
        parts = [_numbers(v) for v in value.values()]
        return np.concatenate(parts) if parts else np.zeros(0)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _same_public(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b)
                and all(_same_public(a[k], b[k]) for k in b))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)


def _perturbed(problem, seed=0, scale=0.3):
    """Raw start values plus noise, so symmetric points (lam = 0, uniform weights) do not
    hide errors; ``(leaves, structure)``."""
    lam = problem.init_lam()
    g = torch.Generator().manual_seed(seed)
    leaves = [t + scale * torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
              for t in _leaves(lam)]
    return leaves, lam


# -- the checks ------------------------------------------------------------------------------

def _check_flags(kind, bound: BoundHyperparameter, problem, label):
    """The capability flags agree with what the hooks do, and hooks give their shapes."""
    raw = problem.init_lam()["h"]
    X, y = problem.X_train, problem.y_train
    n = X.shape[0]
    out = bound.transform_inputs(raw, X, torch.Generator().manual_seed(0))
    if kind.transforms_inputs:
        _require(out.shape[0] % n == 0 and out.shape[1:] == X.shape[1:], label,
                 f"transform_inputs must return k * {n} rows shaped like the input rows, "
                 f"got {tuple(out.shape)}")
    else:
        _require(out is X or (out.shape == X.shape and torch.equal(out, X)), label,
                 "transform_inputs changes the inputs but the specification does not set "
                 "transforms_inputs = True")
    weights = bound.sample_weights(raw, problem.train_rows)
    if kind.needs_row_indices:
        _require(weights is not None and tuple(weights.shape) == (n,), label,
                 f"sample_weights must return one weight per row ({n},) when "
                 "needs_row_indices")
    else:
        _require(weights is None, label, "sample_weights returns weights but the "
                 "specification does not set needs_row_indices = True (a refit net would "
                 "not pass row indices)")
    y_pred = problem._forward(problem.init_lam(), problem.theta0(), X, transform=False)
    loss = torch.ones(n, dtype=y_pred.dtype)
    per = bound.per_sample_loss(raw, y_pred, y, loss)
    if bound.modifies_loss:
        _require(tuple(per.shape) == (n,), label,
                 f"per_sample_loss must return one loss per row ({n},), got "
                 f"{tuple(per.shape)}")
    else:
        _require(per is loss, label, "per_sample_loss changes the loss but modifies_loss "
                 "is False, so the adapter would never call it")
    cw = bound.class_weights(raw)
    _require(cw is None or (cw.dim() == 1 and int(cw.shape[0]) >= int(y.max()) + 1), label,
             "class_weights must return None or one weight per class")
    for hook, value in (("inner_penalty", bound.inner_penalty(raw, problem.theta0())),
                        ("outer_penalty", bound.outer_penalty(raw))):
        _require(value is None or (value.dim() == 0 and bool(torch.isfinite(value))), label,
                 f"{hook} must return None or a finite scalar tensor")


def _check_representation(bound: BoundHyperparameter, problem, label):
    """to_public / from_public round trip, value() agreeing with to_public, summary."""
    raw = problem.init_lam()["h"]
    leaves = _leaves(raw)
    _require(all(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in leaves),
             label, "init_raw must return float tensors (or a dict of them) in the dtype asked")
    moved = _rebuild([t + 0.1 for t in leaves], raw)
    for where, r in (("the start", raw), ("a moved value", moved)):
        public = bound.to_public(r)
        _require(isinstance(public, (float, np.ndarray, dict)), label,
                 f"to_public must give a float, ndarray or dict, got {type(public).__name__}")
        back = bound.from_public(public, problem.device, problem.dtype)
        _require(_same_public(bound.to_public(back), public), label,
                 f"from_public(to_public(raw)) does not give the same public value at "
                 f"{where}: {bound.to_public(back)!r} != {public!r}")
        value, numbers = _numbers(bound.value(r)), _numbers(public)
        _require(value.shape == numbers.shape and np.allclose(value, numbers, rtol=1e-9,
                                                               atol=1e-12), label,
                 f"value(raw) must hold the numbers to_public reports, in order, at {where}")
    summary = bound.summary(raw)
    _require(isinstance(summary, float) and np.isfinite(summary), label,
             f"summary must return a finite float, got {summary!r}")


def _one_step_objective(problem, structure, eta=0.5):
    """``f(lam, theta0 - eta * grad_theta L_T(lam, theta0))`` as a function of the leaves."""
    theta0 = problem.theta0()
    names = list(theta0)

    def objective(leaves):
        lam = _rebuild(leaves, structure)
        problem.generator.manual_seed(7)   # same random draws in every evaluation
        theta = {n: theta0[n].clone().requires_grad_(True) for n in names}
        inner = problem.inner_loss(lam, theta)
        grads = torch.autograd.grad(inner, [theta[n] for n in names], create_graph=True,
                                    allow_unused=True)
        stepped = {n: theta[n] if g is None else theta[n] - eta * g
                   for n, g in zip(names, grads)}
        return problem.outer_loss(lam, stepped)

    return objective


def _check_one_step_hypergradient(problem, label, h=1e-6, rtol=1e-4, atol=1e-8):
    """Autograd's one-step hypergradient of all of ``problem``'s kinds against central
    finite differences in two random directions (float64)."""
    leaves, structure = _perturbed(problem)
    objective = _one_step_objective(problem, structure)
    lam = [t.clone().requires_grad_(True) for t in leaves]
    grads = torch.autograd.grad(objective(lam), lam, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, lam)]
    _require(any(float(g.abs().max()) > 0 for g in grads), label,
             "the hypergradient is zero: the hyperparameter has no effect on the "
             "validation loss (is the hook's flag set, does the raw value reach the loss "
             "differentiably?)")
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
                     for t in leaves]
        plus = float(objective([t + h * d for t, d in zip(leaves, direction)]).detach())
        minus = float(objective([t - h * d for t, d in zip(leaves, direction)]).detach())
        fd = (plus - minus) / (2 * h)
        ad = float(sum((gi * d).sum() for gi, d in zip(grads, direction)))
        _require(abs(ad - fd) <= atol + rtol * abs(fd), label,
                 f"one-step hypergradient (autograd) {ad:.10g} differs from central finite "
                 f"differences {fd:.10g} (rtol={rtol}): a hook is not differentiable in "
                 "raw, draws randomness outside the generator, or detaches the value")


def _check_mixed_vjp(bound: BoundHyperparameter, problem, label):
    """With ``closed_form_mixed``: ``mixed_vjp`` equals autograd's double backward."""
    mixed = problem.mixed_vjp()
    if not bound.closed_form_mixed:
        _require(mixed is None, label, "the adapter offers a closed-form mixed derivative "
                 "for a kind without closed_form_mixed")
        return
    leaves, structure = _perturbed(problem)
    lam_leaves = [t.clone().requires_grad_(True) for t in leaves]
    lam = _rebuild(lam_leaves, structure)
    theta = {n: t.requires_grad_(True) for n, t in problem.theta0().items()}
    g = torch.Generator().manual_seed(5)
    v = {n: torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
         for n, t in theta.items()}
    problem.generator.manual_seed(0)
    inner = problem.inner_loss(lam, theta)
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    expected = torch.autograd.grad(grads, lam_leaves, grad_outputs=list(v.values()),
                                   allow_unused=True)
    expected = [torch.zeros_like(t) if e is None else e for e, t in zip(expected, lam_leaves)]
    got = _leaves(mixed(lam, theta, v))
    _require(len(got) == len(expected) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(got, expected)), label,
        "mixed_vjp differs from autograd's double backward of the inner loss "
        "(v^T d2 L_T / d theta d raw)")


def _check_closed_form_penalty(bound: BoundHyperparameter, problem, label):
    """With ``closed_form_penalty``: the penalty's closed-form derivatives (gradient,
    Hessian-vector product, gradient in raw and the mixed product ``mixed_vjp``) equal
    autograd's on ``inner_penalty`` (a parameter left out of a returned dict counts as
    zero; a ``None`` Hessian product as zero)."""
    if not bound.closed_form_penalty:
        return
    leaves, structure = _perturbed(problem)
    raw_leaves = [t.clone().requires_grad_(True) for t in leaves]
    raw = _rebuild(raw_leaves, structure)["h"]
    theta = {n: t.requires_grad_(True) for n, t in problem.theta0().items()}
    g = torch.Generator().manual_seed(6)
    u = {n: torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
         for n, t in theta.items()}
    penalty = bound.inner_penalty(raw, theta)
    grads = torch.autograd.grad(penalty, list(theta.values()) + raw_leaves, create_graph=True,
                                allow_unused=True)
    grad_theta = dict(zip(theta, grads[:len(theta)]))
    touched = [n for n in theta if grad_theta[n] is not None]
    second = torch.autograd.grad([grad_theta[n] for n in touched], list(theta.values())
                                 + raw_leaves, grad_outputs=[u[n] for n in touched],
                                 allow_unused=True)
    hvp, mixed = second[:len(theta)], second[len(theta):]
    with torch.no_grad():
        hooks = {name: getattr(bound, name) for name in (
            "penalty_grad", "penalty_hvp", "penalty_grad_raw", "mixed_vjp")}
        outputs = {"penalty_grad": hooks["penalty_grad"](raw, theta),
                   "penalty_hvp": hooks["penalty_hvp"](raw, theta, u),
                   "penalty_grad_raw": hooks["penalty_grad_raw"](raw, theta),
                   "mixed_vjp": hooks["mixed_vjp"](raw, theta, u)}
        missing = [name for name, out in outputs.items() if out is NotImplemented]
        _require(not missing, label, f"closed_form_penalty is set but {missing} return "
                 "NotImplemented; give all four in closed form")
        closed_hvp = outputs["penalty_hvp"]
        pairs = {
            "penalty_grad": ([(outputs["penalty_grad"] or {}).get(n) for n in theta],
                             grads[:len(theta)], list(theta.values())),
            "penalty_hvp": ([(closed_hvp or {}).get(n) for n in theta], hvp,
                            list(theta.values())),
            "penalty_grad_raw": (_leaves(outputs["penalty_grad_raw"]),
                                 grads[len(theta):], raw_leaves),
            # the adapter hands the penalty's mixed product to the chain from mixed_vjp,
            # whether or not the whole kind is closed_form_mixed
            "mixed_vjp": (_leaves(outputs["mixed_vjp"]), mixed, raw_leaves),
        }
    for name, (got, expected, like) in pairs.items():
        got = [torch.zeros_like(t) if x is None else x for x, t in zip(got, like)]
        expected = [torch.zeros_like(t) if x is None else x for x, t in zip(expected, like)]
        _require(len(got) == len(like) and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
            for a, b in zip(got, expected)), label,
            f"{name} differs from autograd on inner_penalty")


def _check_binding_errors(kind, net, label):
    """A ``params`` glob matching nothing fails at binding, naming the parameters."""
    if not kind.uses_params:
        return
    bad = clone(kind).set_params(params="__matches_no_parameter__")
    first = next(name for name, _ in net.module_.named_parameters())
    try:
        bad.bind(net.module_, n_train=1, n_classes=None, input_shape=())
    except ValueError as exc:
        _require(first in str(exc), label, "a params glob matching nothing must fail with "
                 f"a ValueError listing the parameter names; got {exc}")
        return
    raise AssertionError(f"{label}: a params glob matching nothing must fail at binding "
                         "with a ValueError")
