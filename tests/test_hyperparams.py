"""Conformance suite every hyperparameter kind must pass, plus kind-specific truths.

The conformance checks live in :func:`sgld_tuner.checks.check_hyperparameter` (so
users can run them on their own kinds): the independent truth there is central finite
differences in float64 of the hypergradient through one inner gradient step,
``d/dlam f(lam, theta - eta * grad_theta L_T(lam, theta))``, on a tiny net; closed-form
mixed derivatives are checked against the double backward.
"""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from skorch import NeuralNetClassifier, NeuralNetRegressor

from sgld_tuner import check_hyperparameter
from sgld_tuner.hyperparams import (AffineAugmentation, LossWeights, PerWeightL1,
                                    SampleWeights, TaylorLoss, WeightDecay)
from sgld_tuner.skorch_adapter import NetProblem

N_ROWS, N_FEATURES, N_CLASSES = 24, 16, 3


class TinyMLP(torch.nn.Module):
    def __init__(self, softmax=False):
        super().__init__()
        self.hidden = torch.nn.Linear(N_FEATURES, 6)
        self.out = torch.nn.Linear(6, N_CLASSES)
        self.softmax = softmax

    def forward(self, x):
        z = self.out(torch.tanh(self.hidden(x)))
        return torch.softmax(z, dim=-1) if self.softmax else z


KINDS = {
    "l1": lambda: PerWeightL1(init=0.05, granularity="weight"),
    "l1_bias": lambda: PerWeightL1(init=0.05, params=["*.weight", "out.bias"],
                                   granularity="weight"),
    "wd_weight": lambda: WeightDecay(init=0.1, granularity="weight"),
    "wd_tensor": lambda: WeightDecay(init=0.1, granularity="tensor"),
    "wd_global": lambda: WeightDecay(init=0.1, params="*", granularity="global"),
    "wd_unit": lambda: WeightDecay(init=0.1, params="*", granularity="unit"),
    "wd_feature": lambda: WeightDecay(init=0.1, granularity="feature"),
    "l1_unit": lambda: PerWeightL1(init=0.05, params=["*.weight", "out.bias"],
                                   granularity="unit"),
    "l1_feature": lambda: PerWeightL1(init=0.05, granularity="feature"),
    "l1_tensor": lambda: PerWeightL1(init=0.05, granularity="tensor"),
    "l1_global": lambda: PerWeightL1(init=0.05, params="*", granularity="global"),
    "loss_weights": lambda: LossWeights(init=1.0),
    "taylor": lambda: TaylorLoss(),
    "affine": lambda: AffineAugmentation(init=0.2, image_shape=(4, 4), n_samples=2, rho=0.01),
    "affine_some": lambda: AffineAugmentation(generators=("rot", "sx"), init=0.3,
                                              image_shape=(1, 4, 4)),
    "sample_weights": lambda: SampleWeights(init=1.0),
}


def _data(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(N_ROWS, N_FEATURES).astype(np.float32)
    y = (np.arange(N_ROWS) % N_CLASSES).astype(np.int64)
    return X, y


def _problem(hp, *, softmax=False, seed=0):
    torch.manual_seed(seed)
    criterion = torch.nn.NLLLoss if softmax else torch.nn.CrossEntropyLoss
    net = NeuralNetClassifier(TinyMLP, module__softmax=softmax, criterion=criterion,
                              verbose=0).initialize()
    net.module_.double()
    X, y = _data(seed)
    gen = torch.Generator().manual_seed(1)
    # the validation rows double as "held-out" rows; SampleWeights covers all 24 rows
    problem = NetProblem(net, {"h": hp}, X[:16], y[:16], X[16:], y[16:],
                         batch_size=-1, generator=gen, n_train_total=N_ROWS)
    return problem


@pytest.mark.parametrize("softmax", [False, True], ids=["ce", "nll_proba"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_builtin_kind_passes_check_hyperparameter(kind, softmax):
    """The conformance helper users run on their own kinds: finite differences of the
    one-step hypergradient in float64, closed-form mixed derivative vs double backward,
    public round trip, clone/get_params, flags vs hooks, binding errors."""
    X, y = _data()
    torch.manual_seed(0)
    module = (NeuralNetClassifier(TinyMLP, module__softmax=True, criterion=torch.nn.NLLLoss)
              if softmax else TinyMLP())
    check_hyperparameter(KINDS[kind](), module=module, X=X, y=y)


def test_init_values_are_respected():
    problem = _problem(PerWeightL1(init=1e-4, granularity="weight"))
    pub = problem.bound["h"].to_public(problem.init_lam()["h"])
    assert set(pub) == {"hidden.weight", "out.weight"}
    np.testing.assert_allclose(pub["hidden.weight"], 1e-4, rtol=1e-9)
    problem = _problem(TaylorLoss())
    # Brier start: l = ||p - y||^2 - 1
    b = problem.bound["h"]
    p = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    # the module outputs logits here (CrossEntropyLoss), so pass log p
    loss = b.per_sample_loss(problem.init_lam()["h"], p.log(), torch.tensor([1]), None)
    assert float(loss) == pytest.approx(0.2 ** 2 + 0.5 ** 2 + 0.3 ** 2 - 1)
    problem = _problem(LossWeights(init=[1.0, 2.0, 3.0]))
    w = problem.bound["h"].to_public(problem.init_lam()["h"])
    np.testing.assert_allclose(w, [0.5, 1.0, 1.5])


@pytest.mark.parametrize("kind", ["l1", "wd_weight", "wd_tensor"])
def test_glob_matching_nothing_lists_names(kind):
    hp = clone(KINDS[kind]()).set_params(params="encoder.*")
    with pytest.raises(ValueError, match="hidden.weight"):
        _problem(hp)


def test_glob_matches_top_level_names():
    module = torch.nn.Linear(3, 2)
    bound = PerWeightL1().bind(module, n_train=5, n_classes=2, input_shape=(3,))
    assert bound.name_targets == ["weight"]


@pytest.mark.parametrize("hp", [LossWeights(), TaylorLoss()], ids=["loss_weights", "taylor"])
def test_classifier_only_kinds_reject_regressors(hp):
    net = NeuralNetRegressor(torch.nn.Linear, module__in_features=4, module__out_features=1,
                             verbose=0).initialize()
    X = np.zeros((6, 4), np.float32)
    y = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="one output per class"):
        NetProblem(net, {"h": hp}, X, y, X, y, generator=torch.Generator())


@pytest.mark.parametrize("hp, match", [
    (WeightDecay(granularity="layer"), "granularity"),
    (PerWeightL1(granularity="layer"), "granularity"),
    (AffineAugmentation(init=4.0, image_shape=(4, 4)), r"\[0, bound\]"),
    (AffineAugmentation(image_shape=(4, 4), bounds={"rot": -1.0}), "bounds"),
    (PerWeightL1(init=-1.0), ">= 0"),
    (AffineAugmentation(generators=("spin",), image_shape=(4, 4)), "generators"),
    (AffineAugmentation(image_shape=(3, 3)), "image_shape"),
    (AffineAugmentation(), "not images"),
    (AffineAugmentation(init="wide", image_shape=(4, 4)), "'auto'"),
    (SampleWeights(init=3.0), r"\(0, 2\)"),
    (TaylorLoss(init=[1.0, 2.0]), "8"),
])
def test_invalid_specifications_fail_at_bind(hp, match):
    with pytest.raises(ValueError, match=match):
        _problem(hp)


def test_affine_zero_is_identity():
    problem = _problem(AffineAugmentation(init=0.0, image_shape=(4, 4)))
    bound = problem.bound["h"]
    X = problem.X_train
    out = bound.transform_inputs(problem.init_lam()["h"], X, torch.Generator())
    torch.testing.assert_close(out, X, rtol=0, atol=1e-12)


def test_affine_ranges_are_bounded_and_keep_init_units():
    from sgld_tuner.hyperparams.augmentation import BOUNDS
    problem = _problem(AffineAugmentation(init={"tx": 0.1, "ty": 0.2, "rot": 3.0, "sx": 0.5,
                                                "sy": 0.0, "shear": 0.3}, image_shape=(4, 4),
                                          rho=0.0))
    bound = problem.bound["h"]
    raw = problem.init_lam()["h"]
    public = bound.to_public(raw)
    assert public == pytest.approx({"tx": 0.1, "ty": 0.2, "rot": 3.0, "sx": 0.5, "sy": 0.0,
                                    "shear": 0.3}, abs=1e-12)
    # however far the raw values run, each range stays below its bound
    far = bound.to_public(raw + 1e3)
    assert all(0 < far[g] <= BOUNDS[g] for g in far)
    assert far["rot"] == pytest.approx(np.pi) and BOUNDS["sx"] == pytest.approx(np.log(2))
    assert bound.outer_penalty(raw + 1e3) is None   # rho=0
    # float32 rounds a range at its bound up to (or past) it: still a valid public value
    raw32 = bound.from_public(far, torch.device("cpu"), torch.float32)
    assert bound.to_public(raw32)["rot"] == pytest.approx(np.pi, rel=1e-6)
    custom = AffineAugmentation(generators=("rot",), init=0.5, image_shape=(4, 4),
                                bounds={"rot": 1.0})
    problem = _problem(custom)
    assert problem.bound["h"].to_public(problem.init_lam()["h"] + 1e3)["rot"] == \
        pytest.approx(1.0)


def test_affine_default_start_is_a_fraction_of_each_bound():
    from sgld_tuner.hyperparams.augmentation import BOUNDS, INIT_FRACTION
    problem = _problem(AffineAugmentation(image_shape=(4, 4), bounds={"rot": 1.0}))
    bound = problem.bound["h"]
    expected = {**{g: INIT_FRACTION * b for g, b in BOUNDS.items()}, "rot": INIT_FRACTION}
    assert bound.to_public(problem.init_lam()["h"]) == pytest.approx(expected, rel=1e-9)
    # the reward of wide ranges is on by default: -rho ||lam||^2 with rho = 0.01
    raw = problem.init_lam()["h"]
    assert float(bound.outer_penalty(raw)) == pytest.approx(
        -0.01 * sum(v ** 2 for v in expected.values()), rel=1e-9)


def test_affine_rotation_warps_by_the_bounded_range():
    """The warp is a rotation by eps * lam (closed form cos/sin), lam = pi * sigmoid(raw)."""
    problem = _problem(AffineAugmentation(generators=("rot",), init=2.0, image_shape=(4, 4)))
    bound = problem.bound["h"]
    raw = problem.init_lam()["h"] + 0.7
    lam = float(np.pi / (1 + np.exp(-float(raw))))
    X = problem.X_train
    out = bound.transform_inputs(raw, X, torch.Generator().manual_seed(3))
    eps = torch.rand(len(X), 1, generator=torch.Generator().manual_seed(3),
                     dtype=X.dtype) * 2 - 1
    angle = (eps * lam).squeeze(1)
    c, s, z = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    affine = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)
    imgs = X.reshape(len(X), 1, 4, 4)
    grid = torch.nn.functional.affine_grid(affine, list(imgs.shape), align_corners=False)
    expected = torch.nn.functional.grid_sample(imgs, grid, align_corners=False)
    torch.testing.assert_close(out, expected.reshape(X.shape), rtol=1e-9, atol=1e-9)
