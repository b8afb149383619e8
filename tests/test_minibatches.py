"""The chains' minibatches come as the net's DataLoader gives them."""
import pytest
import torch
from torch.utils.data import DataLoader

from sgld_tuner.minibatches import Minibatches


def _take(batches, steps):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        rows = batches.next(gen)
        out.append(torch.arange(batches.n)[rows].tolist() if rows is not None else None)
    return out


@pytest.mark.parametrize("n, batch_size, drop_last", [(10, 4, False), (10, 4, True),
                                                      (12, 4, False), (3, 8, False)])
def test_ordered_passes_are_the_dataloaders_batches(n, batch_size, drop_last):
    """skorch's default iterator: a DataLoader without shuffling, its partial last batch
    kept unless drop_last; the chain takes the same batches, pass after pass."""
    loader = [b.tolist() for b in DataLoader(range(n), batch_size=batch_size,
                                             drop_last=drop_last)]
    batches = Minibatches(n, batch_size, "ordered", drop_last, seed=0, device="cpu")
    assert batches.steps_per_pass == len(loader)
    got = _take(batches, 3 * len(loader))
    if batch_size >= n:
        assert got == [None] * 3  # every step takes all rows
    else:
        assert got == loader * 3


def test_shuffled_passes_cover_every_row_once_in_new_orders():
    """``iterator_train__shuffle=True``: each pass a new permutation, in the
    DataLoader's batch sizes; a chain resumed at a step count takes the rows a straight
    run takes there (rollbacks, resumes and stacked folds see the same rows)."""
    n, batch_size = 10, 4
    sizes = [len(b) for b in DataLoader(range(n), batch_size=batch_size, shuffle=True)]
    batches = Minibatches(n, batch_size, "shuffled", False, seed=3, device="cpu")
    straight = _take(batches, 9)
    passes = [sum(straight[k:k + 3], []) for k in (0, 3, 6)]
    assert [len(b) for b in straight[:3]] == sizes
    assert all(sorted(p) == list(range(n)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    resumed = Minibatches(n, batch_size, "shuffled", False, seed=3, device="cpu")
    resumed.position = 4
    assert _take(resumed, 5) == straight[4:]
    other = Minibatches(n, batch_size, "shuffled", False, seed=4, device="cpu")
    assert _take(other, 3) != straight[:3]


def test_draws_are_independent_batches_of_distinct_rows():
    batches = Minibatches(10, 4, "draws", False, seed=0, device="cpu")
    got = _take(batches, 20)
    assert all(len(set(b)) == 4 for b in got)
    assert len({tuple(b) for b in got}) > 1


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="batch order"):
        Minibatches(10, 4, "random", False, seed=0, device="cpu")


class _Sampler(torch.utils.data.SequentialSampler):
    pass


@pytest.mark.parametrize("kwargs, expected", [
    ({}, (16, "ordered", False)),  # skorch's default: DataLoader, no shuffle
    ({"iterator_train__shuffle": True}, (16, "shuffled", False)),
    ({"iterator_train__drop_last": True, "iterator_train__batch_size": 5},
     (5, "ordered", True)),
    ({"iterator_train__sampler": _Sampler(range(3))}, (16, "draws", False)),
])
def test_the_chains_follow_the_nets_training_iterator(kwargs, expected):
    from skorch import NeuralNetClassifier

    from sgld_tuner.search.context import training_iterator

    net = NeuralNetClassifier(torch.nn.Linear, batch_size=16, **kwargs)
    assert training_iterator(net) == expected


def test_a_folds_budget_is_the_nets_epochs_of_its_dataloader():
    """One training run of the net on a fold's rows (the horizon a race judges at):
    max_epochs passes of its DataLoader, the partial batch a step of its own, skipped
    with drop_last."""
    import numpy as np
    from skorch import NeuralNetClassifier

    from sgld_tuner import SGLDHyperTuner
    from sgld_tuner.hyperparams import PerWeightL1
    from sgld_tuner.search import Schedule

    class Budgets(Schedule):
        seen = []

        def run(self, context, new_lane):
            lane = new_lane()
            Budgets.seen.append(lane.budget_steps)
            lane.run(1)
            return lane

    X = np.random.RandomState(0).standard_normal((45, 4)).astype(np.float32)
    y = np.arange(45) % 3
    for drop_last in (False, True):
        net = NeuralNetClassifier(torch.nn.Linear, module__in_features=4,
                                  module__out_features=3, batch_size=8, max_epochs=3,
                                  criterion=torch.nn.CrossEntropyLoss,
                                  train_split=None, verbose=0,
                                  iterator_train__drop_last=drop_last)
        SGLDHyperTuner(net, {"l1": PerWeightL1()}, n_outer=1, cv=3, random_state=0,
                       schedule=Budgets(), refit=False).fit(X, y)
        per_pass = len(DataLoader(range(30), batch_size=8, drop_last=drop_last))
        assert Budgets.seen[-1] == 3 * per_pass  # 12 steps, or 9 without 30 % 8
