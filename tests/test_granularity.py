"""Granularities of the separable penalties (PerWeightL1, WeightDecay) and feature relevance.

Independent truths: autograd in float64 for the mixed derivative ``d/draw (v . dP/dtheta)``,
and the penalty written out weight by weight from the documented meaning of each
granularity (row = unit, first-layer column = feature). The net-level conformance suite in
``test_hyperparams.py`` runs every granularity as well (finite differences of a one-step
hypergradient, closed form vs double backward, public round trip).
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sgld_tuner.core import _tree
from sgld_tuner.hyperparams import PerWeightL1, WeightDecay
from sgld_tuner.hyperparams.penalties import GRANULARITIES
from sgld_tuner.relevance import feature_relevance, learned_values

KINDS = {"l1": (PerWeightL1, np.abs), "wd": (WeightDecay, lambda t: 0.5 * t ** 2)}


class Mixed(torch.nn.Module):
    """Only bound, never run: a Linear first (features = its 5 columns), a conv, biases."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(5, 4)
        self.conv = torch.nn.Conv2d(1, 2, 2)
        self.out = torch.nn.Linear(4, 3)


MODULE = Mixed().double()
SHAPES = {n: tuple(p.shape) for n, p in MODULE.named_parameters()}
# strengths per granularity over all six tensors (params="*")
EXPECTED_COUNT = {
    "weight": sum(int(np.prod(s)) for s in SHAPES.values()),
    "unit": sum(s[0] for s in SHAPES.values()),
    "feature": 5,
    "tensor": len(SHAPES),
    "global": 1,
}


def _bind(kind, granularity, init=0.05, params="*"):
    return KINDS[kind][0](init=init, params=params, granularity=granularity).bind(
        MODULE, n_train=10, n_classes=3, input_shape=(5,))


def _random_raw(bound, seed=0):
    leaves, spec = _tree.flatten(bound.init_raw(torch.device("cpu"), torch.float64))
    g = torch.Generator().manual_seed(seed)
    return _tree.unflatten([t + torch.randn(t.shape, generator=g, dtype=t.dtype)
                            for t in leaves], spec)


def _random_like_params(seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}


def _per_weight(public, granularity):
    """Each penalised tensor's strengths expanded to one per weight, from their meaning."""
    if granularity == "global":
        return {n: np.full(s, public) for n, s in SHAPES.items()}
    out = {}
    for n, v in public.items():
        shape = SHAPES[n]
        if granularity == "unit":           # row i of the tensor gets v[i]
            v = np.asarray(v).reshape((shape[0],) + (1,) * (len(shape) - 1))
        elif granularity == "feature":      # column j of the first tensor gets v[j]
            v = np.asarray(v)[None, :]
        out[n] = np.broadcast_to(v, shape)
    return out


GRID = [(k, g) for k in sorted(KINDS) for g in GRANULARITIES]


@pytest.mark.parametrize("kind, granularity", GRID)
def test_penalty_matches_weight_by_weight_sum(kind, granularity):
    bound = _bind(kind, granularity)
    raw = _random_raw(bound)
    theta = _random_like_params(1)
    full = _per_weight(bound.to_public(raw), granularity)
    expected = sum((full[n] * KINDS[kind][1](theta[n].numpy())).sum() for n in full)
    assert float(bound.inner_penalty(raw, theta)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind, granularity", GRID)
def test_closed_form_mixed_vjp_matches_autograd(kind, granularity):
    bound = _bind(kind, granularity)
    leaves, spec = _tree.flatten(_random_raw(bound))
    leaves = [t.requires_grad_(True) for t in leaves]
    theta = {n: t.requires_grad_(True) for n, t in _random_like_params(1).items()}
    v = _random_like_params(2)

    penalty = bound.inner_penalty(_tree.unflatten(leaves, spec), theta)
    grads = torch.autograd.grad(penalty, list(theta.values()), create_graph=True,
                                materialize_grads=True)   # zero for unpenalised tensors
    inner = sum((g * v[n]).sum() for g, n in zip(grads, theta))
    expected = torch.autograd.grad(inner, leaves)

    with torch.no_grad():
        got, got_spec = _tree.flatten(bound.mixed_vjp(_tree.unflatten(leaves, spec),
                                                      theta, v))
    assert got_spec == spec
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind, granularity", GRID)
def test_public_round_trip_and_strength_count(kind, granularity):
    bound = _bind(kind, granularity)
    raw = _random_raw(bound)
    public = bound.to_public(raw)
    back = bound.to_public(bound.from_public(public, torch.device("cpu"), torch.float64))
    values = [public] if granularity == "global" else list(public.values())
    again = [back] if granularity == "global" else list(back.values())
    for a, b in zip(again, values):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert sum(np.size(v) for v in values) == EXPECTED_COUNT[granularity]
    assert bound.summary(raw) == pytest.approx(np.mean(np.concatenate(
        [np.ravel(v) for v in values])))
    if granularity == "feature":
        assert list(public) == ["first.weight"] and public["first.weight"].shape == (5,)
    if granularity == "unit":
        assert public["conv.weight"].shape == (2,) and public["first.bias"].shape == (4,)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_init_forms(kind):
    cpu, f64 = torch.device("cpu"), torch.float64
    bound = _bind(kind, "feature", init=np.arange(1.0, 6.0) / 10)
    np.testing.assert_allclose(bound.to_public(bound.init_raw(cpu, f64))["first.weight"],
                               np.arange(1.0, 6.0) / 10)
    bound = _bind(kind, "unit", init={"first.weight": [1e-3, 2e-3, 3e-3, 4e-3]},
                  params="first.weight")
    np.testing.assert_allclose(bound.to_public(bound.init_raw(cpu, f64))["first.weight"],
                               [1e-3, 2e-3, 3e-3, 4e-3])
    with pytest.raises(ValueError, match="does not fit granularity='unit'"):
        bound.from_public({"first.weight": [1.0, 2.0]}, cpu, f64)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("params, init, granularity, match", [
    ("conv.weight", 0.1, "feature", "2-D"),
    ("*", {"first.weight": 0.1}, "global", "scalar init"),
    ("*", 0.1, "row", "granularity"),
])
def test_invalid_granularity_specs(kind, params, init, granularity, match):
    with pytest.raises(ValueError, match=match):
        _bind(kind, granularity, init=init, params=params)


@pytest.mark.parametrize("kind", [PerWeightL1, WeightDecay])
def test_auto_granularity_is_per_feature_on_a_linear_first_layer_else_per_weight(kind):
    """``granularity="auto"`` (the default): one strength per input feature when the first
    matched tensor is a Linear weight, one per weight when it is a conv kernel."""
    assert kind().granularity == "auto"
    module = Mixed()
    linear = kind(init=0.1, params="first.weight").bind(module, n_train=5, n_classes=2,
                                                      input_shape=(1, 3, 3))
    assert linear.granularity == "feature"
    conv = kind(init=0.1, params="conv.weight").bind(module, n_train=5, n_classes=2,
                                                    input_shape=(1, 3, 3))
    assert conv.granularity == "weight"
    # An embedding's weight is 2-D too, but its columns are embedding dimensions, not
    # input features (it used to get "feature", which then left every later layer alone).
    text = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Flatten(),
                               torch.nn.Linear(8, 2))
    embedding = kind(init=0.1).bind(text, n_train=5, n_classes=2, input_shape=(2,))
    assert embedding.granularity == "weight"
    assert sorted(embedding.to_public(embedding.init_raw("cpu", torch.float32))) == [
        "0.weight", "2.weight"]
    # a raw matrix for F.linear is a Linear layer's weight by another name
    raw = torch.nn.Module()
    raw.w = torch.nn.Parameter(torch.zeros(2, 3))
    assert kind(init=0.1, params="w").bind(raw, n_train=5, n_classes=2,
                                          input_shape=(3,)).granularity == "feature"


# -- feature relevance -----------------------------------------------------------------

def test_feature_relevance_ranks_smallest_strength_first():
    public = {"first.weight": np.array([0.3, 0.01, 0.3, 0.2])}
    table = feature_relevance(public, feature_names=["a", "b", "c", "d"])
    assert list(table.columns) == ["feature", "strength", "rank"]
    assert list(table["feature"]) == ["b", "d", "a", "c"]
    assert list(table["rank"]) == [1, 2, 3, 3]
    np.testing.assert_allclose(table["strength"], [0.01, 0.2, 0.3, 0.3])
    default = feature_relevance(np.array([0.5, 0.1]))
    assert list(default["feature"]) == ["x1", "x0"]


def test_feature_relevance_reads_a_fitted_tuner_by_duck_typing():
    tuner = SimpleNamespace(
        hyperparams={"l1": PerWeightL1(granularity="feature"), "wd": WeightDecay()},
        hyperparams_={"l1": {"first.weight": np.array([0.2, 0.1, 0.4])},
                      "wd": {"first.weight": np.ones((2, 3))}},
        feature_names_in_=np.array(["age", "bmi", "noise"]))
    table = feature_relevance(tuner)
    assert isinstance(table, pd.DataFrame)
    assert list(table["feature"]) == ["bmi", "age", "noise"]
    with pytest.raises(ValueError, match="1-D"):
        feature_relevance(tuner, name="wd")
    tuner.hyperparams["wd"] = WeightDecay(granularity="feature")
    with pytest.raises(ValueError, match="pass name="):
        learned_values(tuner)
    assert learned_values(tuner.hyperparams_, "wd") is tuner.hyperparams_["wd"]
    with pytest.raises(ValueError, match="3 learned strengths"):
        feature_relevance(tuner, ["a"], name="l1")
