"""Test-time augmentation with the learned warps (``tta`` of a learned net)."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch import NeuralNetClassifier

from sgld_tuner.hyperparams import AffineAugmentation, PerWeightL1
from sgld_tuner.learned_net import make_learned_net
from sgld_tuner.objective import first_output as _first_output
from sgld_tuner.objective import transform_inputs as _transform


class _ImageMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X.reshape(len(X), -1))))


@pytest.fixture(scope="module")
def fitted():
    X, y = load_digits(return_X_y=True)
    X = (X[:200] / 16.0).astype(np.float32)
    base = NeuralNetClassifier(_ImageMLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
                               lr=0.1, train_split=None, verbose=0)
    kinds = {"aug": AffineAugmentation(generators=("rot", "tx"), image_shape=(8, 8))}
    values = {"aug": {"rot": 0.8, "tx": 0.1}}
    torch.manual_seed(0)
    net = make_learned_net(base, kinds, values).fit(X, y[:200])
    return net, X[:20]


def _l1_net():
    """A fitted learned net whose kind does not transform inputs."""
    X, y = load_digits(return_X_y=True)
    net = make_learned_net(NeuralNetClassifier(_ImageMLP, criterion=torch.nn.CrossEntropyLoss,
                                               max_epochs=1, train_split=None, verbose=0),
                           {"l1": PerWeightL1(init=1e-3)}, {"l1": 1e-3})
    return net.fit((X[:50] / 16).astype(np.float32), y[:50])


def test_tta_averages_the_output_over_the_input_and_its_learned_warps(fitted):
    net, X = fitted
    net.set_params(tta=3)
    got = net.forward(X).detach()
    x = torch.as_tensor(X)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.module_.eval()
        expected = _first_output(net.module_(x))
        for _ in range(3):
            warped = _transform(net.hp_bound_, net.hp_raw_, x, generator)
            expected = expected + net.module_(warped)
    torch.testing.assert_close(got, expected / 4)
    # deterministic: the same warps on every call
    torch.testing.assert_close(net.forward(X).detach(), got, rtol=0, atol=0)
    assert not torch.allclose(got, net.set_params(tta=0).forward(X).detach())


def test_tta_off_or_without_transforms_is_the_plain_forward(fitted):
    net, X = fitted
    plain = net.set_params(tta=0).forward(X)
    net.module_.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain, net.module_(torch.as_tensor(X)))
    # numpy integers are ints too
    torch.testing.assert_close(net.set_params(tta=np.int64(2)).forward(X),
                               net.set_params(tta=2).forward(X))
    net.set_params(tta=0)
    l1 = _l1_net()
    torch.testing.assert_close(l1.set_params(tta=5).forward(X), l1.set_params(tta=0).forward(X))
    assert plain.shape == (len(X), 10)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_bad_tta_fails_naming_it(fitted, bad):
    net, X = fitted
    with pytest.raises(ValueError, match="tta"):
        net.set_params(tta=bad).predict(X)
    net.set_params(tta=0)
    # also on a net without input transforms, where tta would do nothing
    l1 = _l1_net()
    with pytest.raises(ValueError, match="tta"):
        l1.set_params(tta=bad).predict(X)
