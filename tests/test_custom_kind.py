"""The extension API for new kinds: abstract bases, capability flags, loss composition and
the conformance helper catching broken kinds.

Truths: at its default start TaylorLoss is exactly ``||p - y||^2 - 1`` (Brier score minus
one), label smoothing is ``(1 - eps) l + eps * mean_j(-log p_j)`` written out in float64
here, and the one-step hypergradient of composed kinds is checked against central finite
differences.
"""
import ast
import os

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sgld_tuner.checks import _check_one_step_hypergradient, check_hyperparameter
from sgld_tuner.hyperparams import (BoundHyperparameter, Hyperparameter, LossWeights,
                                    PerWeightL1, TaylorLoss, WeightDecay)
from sgld_tuner.learned_net import make_learned_net
from sgld_tuner.skorch_adapter import NetProblem


def _example_kind():
    """The classes that examples/custom_kind.py defines, without running its tuning."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "custom_kind.py")
    with open(path) as fh:
        tree = ast.parse(fh.read())
    keep = [node for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef))]
    namespace = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), namespace)
    return namespace["LabelSmoothing"], namespace["BoundLabelSmoothing"]


# label smoothing, ``eps = sigmoid(raw)``, as users are shown to write it
Smoothing, _BoundSmoothing = _example_kind()


def _problem(hyperparams, seed=0):
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss,
                              verbose=0).initialize()
    net.module_.double()
    rng = np.random.RandomState(seed)
    X = rng.randn(30, 5)
    y = np.arange(30) % 3
    return NetProblem(net, hyperparams, X[:20], y[:20], X[20:], y[20:], batch_size=-1,
                      generator=torch.Generator().manual_seed(0))


def _probabilities_and_onehot(problem):
    theta = problem.theta0()
    problem.module.train()
    logits = torch.func.functional_call(problem.module, theta, (problem.X_train,))
    p = torch.softmax(logits, dim=-1)
    return p, torch.nn.functional.one_hot(problem.y_train, 3).double(), theta


# -- abstract bases and renamed hooks --------------------------------------------------------

def test_kind_without_make_bound_cannot_be_instantiated():
    class NoBind(Hyperparameter):
        def __init__(self, init=0.0):
            self.init = init

    with pytest.raises(TypeError, match="make_bound"):
        NoBind()


def test_bound_kind_must_implement_the_representation():
    class NoPublic(BoundHyperparameter):
        def value(self, raw):
            return raw

    with pytest.raises(TypeError, match="from_public.*to_public|to_public.*from_public"):
        NoPublic(Smoothing(), [])


@pytest.mark.parametrize("base, old", [(Hyperparameter, "_make_bound"),
                                       (BoundHyperparameter, "_set_output_kind")])
def test_private_hook_names_fail_at_class_creation(base, old):
    with pytest.raises(TypeError, match=old.lstrip("_")):
        type("Legacy", (base,), {old: lambda self, *a, **k: None})


def test_modifies_loss_follows_the_override():
    assert _BoundSmoothing.modifies_loss
    assert TaylorLoss().bind(torch.nn.Linear(2, 3), n_train=4, n_classes=3,
                             input_shape=(2,)).modifies_loss
    assert not PerWeightL1(init=0.1).bind(torch.nn.Linear(2, 3), n_train=4, n_classes=3,
                                          input_shape=(2,)).modifies_loss


# -- composition of loss-modifying kinds -----------------------------------------------------

def test_smoothing_after_taylor_smooths_the_taylor_loss():
    eps = 0.3
    problem = _problem({"taylor": TaylorLoss(), "smooth": Smoothing(init=eps)})
    p, onehot, theta = _probabilities_and_onehot(problem)
    brier = ((p - onehot) ** 2).sum(dim=1) - 1          # TaylorLoss at its default start
    uniform = -torch.log(p).mean(dim=1)
    expected = ((1 - eps) * brier + eps * uniform).mean()
    got = problem.inner_loss(problem.init_lam(), theta)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_taylor_after_smoothing_replaces_it():
    problem = _problem({"smooth": Smoothing(init=0.3), "taylor": TaylorLoss()})
    p, onehot, theta = _probabilities_and_onehot(problem)
    expected = (((p - onehot) ** 2).sum(dim=1) - 1).mean()
    got = problem.inner_loss(problem.init_lam(), theta)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_smoothing_alone_is_cross_entropy_on_smoothed_labels():
    eps = 0.2
    problem = _problem({"smooth": Smoothing(init=eps)})
    p, onehot, theta = _probabilities_and_onehot(problem)
    target = (1 - eps) * onehot + eps / 3
    expected = -(target * torch.log(p)).sum(dim=1).mean()
    got = problem.inner_loss(problem.init_lam(), theta)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_composed_kinds_with_class_weights_match_finite_differences():
    problem = _problem({"taylor": TaylorLoss(), "smooth": Smoothing(init=0.3),
                        "cw": LossWeights(init=[1.0, 2.0, 3.0])})
    _check_one_step_hypergradient(problem, "taylor+smooth+cw")


def test_refit_net_trains_on_the_same_composed_loss():
    hps = {"taylor": TaylorLoss(), "smooth": Smoothing(init=0.3)}
    problem = _problem(hps)
    lam = problem.init_lam()
    values = {k: b.to_public(lam[k]) for k, b in problem.bound.items()}
    learned = make_learned_net(problem.net, hps, values).initialize()
    learned.module_.double()
    learned.module_.load_state_dict(problem.module.state_dict())
    learned.module_.train()
    X = problem.X_train
    y_pred = learned.infer(X)
    got = learned.get_loss(y_pred, problem.y_train, X=X, training=True)
    expected = problem.inner_loss(lam, problem.theta0())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# -- the conformance helper on a user's kind -------------------------------------------------

def test_user_kind_passes_check_hyperparameter():
    check_hyperparameter(Smoothing(init=0.2))


def _broken(name, **methods):
    """A Smoothing variant whose bound class overrides ``methods``; spec flags via
    ``spec_flags``."""
    spec_flags = methods.pop("spec_flags", {})
    bound_cls = type(f"_Bound{name}", (_BoundSmoothing,), methods)

    def make_bound(self, module, names, **kwargs):
        return bound_cls(self, names)

    return type(name, (Smoothing,), dict(spec_flags, make_bound=make_bound))()


@pytest.mark.parametrize("kind, match", [
    (_broken("BadRoundTrip", from_public=lambda self, v, device, dtype: torch.logit(
        torch.tensor(float(v) / 2, device=device, dtype=dtype))), "from_public"),
    (_broken("BadValue", value=lambda self, raw: torch.sigmoid(raw) + 1), "value"),
    (_broken("Detached", per_sample_loss=lambda self, raw, y_pred, y_true, loss:
             loss * (1 + torch.sigmoid(raw).detach())), "no effect"),
    (_broken("NoisyHook", per_sample_loss=lambda self, raw, y_pred, y_true, loss:
             loss * torch.sigmoid(raw) * (1 + 1e-3 * torch.rand(()))), "finite differences"),
    (_broken("HiddenRows", sample_weights=lambda self, raw, rows:
             torch.ones(len(rows), dtype=raw.dtype)), "needs_row_indices"),
    (_broken("HiddenTransform", transform_inputs=lambda self, raw, X, generator: X * 2),
     "transforms_inputs"),
    (_broken("BadFlags", spec_flags={"transforms_validation_inputs": True}),
     "transforms_validation_inputs"),
    (_broken("SilentLoss", modifies_loss=False), "modifies_loss"),
    (_broken("BadPenalty", outer_penalty=lambda self, raw: torch.ones(2)), "outer_penalty"),
])
def test_check_hyperparameter_catches_broken_kinds(kind, match):
    with pytest.raises(AssertionError, match=match):
        check_hyperparameter(kind)


class _WrongMixed(PerWeightL1):
    def make_bound(self, module, names, **kwargs):
        bound = super().make_bound(module, names, **kwargs)
        right = bound.mixed_vjp
        bound.mixed_vjp = lambda raw, theta, v: {n: 2 * g for n, g in
                                                 right(raw, theta, v).items()}
        return bound


class _WrongPenaltyGrad(WeightDecay):
    def make_bound(self, module, names, **kwargs):
        bound = super().make_bound(module, names, **kwargs)
        right = bound.penalty_grad
        bound.penalty_grad = lambda raw, theta: {n: 0.5 * g for n, g in
                                                 right(raw, theta).items()}
        return bound


class _WrongPenaltyMixed(WeightDecay):
    """A penalty that also claims to act elsewhere (closed_form_mixed off) with a wrong
    closed-form mixed product: the chain would use it all the same."""

    def make_bound(self, module, names, **kwargs):
        bound = super().make_bound(module, names, **kwargs)
        right = bound.mixed_vjp
        bound.closed_form_mixed = False
        bound.mixed_vjp = lambda raw, theta, v: {n: 3 * g for n, g in
                                                 right(raw, theta, v).items()}
        return bound


class _AltersInit(Smoothing):
    def __init__(self, init=0.1):
        self.init = [init]   # breaks the scikit-learn convention: stores a new object


@pytest.mark.parametrize("kind, match", [
    (_WrongMixed(init=0.1, granularity="weight"), "mixed_vjp"),
    (_WrongPenaltyGrad(init=0.1, granularity="unit"), "penalty_grad"),
    (_WrongPenaltyMixed(init=0.1, granularity="feature"), "mixed_vjp"),
    (_AltersInit(), "clone"),
])
def test_check_hyperparameter_catches_spec_and_derivative_errors(kind, match):
    with pytest.raises(AssertionError, match=match):
        check_hyperparameter(kind)
