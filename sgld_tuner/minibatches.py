"""Which training rows each step of a chain takes.

A chain trains like the net it tunes, so its minibatches come the way the net's own
training iterator gives them (skorch's ``iterator_train``, a ``DataLoader``): passes over
the rows in order (``shuffle=False``, skorch's default) or in a new random order each pass
(``iterator_train__shuffle=True``), each pass ending with the partial batch of the rows
left over unless ``drop_last``. A short last batch steps as far as a full one on far
fewer rows; at an lr near the edge of stability that step is where a net's training
breaks, and chains that never took it ranked such an lr as safe (``docs/reliability.md``,
the sixth sweep). ``"draws"``: each step an independent draw of distinct rows, for a net
whose iterator the chain cannot follow (a custom sampler).

A chain's place in its passes is its step count (:attr:`Minibatches.position`, set from
the chain's state before each stretch of steps), and a shuffled pass's order a function
of the chain's seed and the pass's number: rollbacks, resumes and stacked folds take the
same rows as a straight run, and no generator draws them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

#: how a chain's minibatches come (:class:`Minibatches`)
BATCH_ORDERS = ("ordered", "shuffled", "draws")

#: from this many rows on, a minibatch is drawn in O(batch) (:func:`distinct_rows`), not
#: as the head of a ``randperm(n)`` (O(n) per step)
DIRECT_DRAW_ROWS = 16384


def distinct_rows(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct row indices out of ``n``, every subset equally likely, in
    O(size log size): the first ``size`` distinct values of a stream of uniform draws
    (drawn a quarter longer than ``size``, redrawn in the rare case it repeats too much)."""
    n_draws = size + size // 4 + 8
    while True:
        draws = torch.randint(n, (n_draws,), generator=generator, device=generator.device)
        rows = first_distinct(draws, size)
        if rows is not None:
            return rows


def first_distinct(values: torch.Tensor, size: int) -> torch.Tensor | None:
    """The first ``size`` distinct entries of the 1-d ``values``, in the order they first
    occur; None when it has fewer.

    On the CPU through numpy's stable sort: on the few hundred entries of a minibatch draw,
    one numpy call costs a fraction of the several small torch calls the device path needs."""
    if values.device.type == "cpu":
        array = values.numpy()
        first = np.unique(array, return_index=True)[1]
        if first.size < size:
            return None
        first.sort()
        return torch.from_numpy(array[first[:size]])
    return _first_distinct_torch(values, size)


def _first_distinct_torch(values: torch.Tensor, size: int) -> torch.Tensor | None:
    """:func:`first_distinct` in torch calls only (any device)."""
    distinct, inverse = torch.unique(values, return_inverse=True)
    if distinct.numel() < size:
        return None
    first = torch.full((distinct.numel(),), values.numel(), dtype=torch.long,
                       device=values.device)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel(), device=values.device),
                          reduce="amin")
    return distinct[torch.argsort(first)[:size]]


def draw_rows(n: int, size: int | None, generator: torch.Generator, device):
    """``size`` distinct row indices out of ``n`` drawn with ``generator`` (on ``device``),
    or None for all rows (``size`` None or at least ``n``)."""
    if size is None or size >= n:
        return None
    if n < DIRECT_DRAW_ROWS:
        return torch.randperm(n, generator=generator, device=generator.device)[:size].to(device)
    return distinct_rows(n, size, generator).to(device)


class Minibatches:
    """The training rows of each step of one chain: ``n`` rows in batches of
    ``batch_size``, in ``order`` (one of :data:`BATCH_ORDERS`).

    Parameters
    ----------
    n, batch_size : int
        Rows, and rows per step (at least ``n``: every step takes them all).
    order : {"ordered", "shuffled", "draws"}
    drop_last : bool
        Passes skip the partial batch at their end (``DataLoader(drop_last=True)``).
    seed : int
        The chain's seed: a shuffled pass's order is a function of it and the pass's
        number.
    device : torch.device
        Where the indices go.
    """

    def __init__(self, n: int, batch_size: int, order: str, drop_last: bool, seed: int,
                 device):
        if order not in BATCH_ORDERS:
            raise ValueError(f"batch order must be one of {BATCH_ORDERS}, got {order!r}")
        self.n, self.batch_size, self.order = n, min(batch_size, n), order
        self.drop_last = drop_last and batch_size < n
        self.seed, self.device = int(seed), device
        #: the chain's steps taken: where in its passes the next batch comes from
        self.position = 0
        self._pass = (None, None)  # (pass number, its order) of a shuffled pass

    @property
    def steps_per_pass(self) -> int:
        """Steps in one pass over the rows (an epoch of the net)."""
        if self.drop_last:
            return max(1, self.n // self.batch_size)
        return math.ceil(self.n / self.batch_size)

    def next(self, generator: torch.Generator):
        """The next step's rows: an index tensor, a slice, or None for all rows
        (``generator``: the chain's, which ``"draws"`` draw from)."""
        if self.batch_size >= self.n:
            return None
        if self.order == "draws":
            return draw_rows(self.n, self.batch_size, generator, self.device)
        number, step = divmod(self.position, self.steps_per_pass)
        self.position += 1
        start = step * self.batch_size
        rows = slice(start, min(start + self.batch_size, self.n))
        if self.order == "ordered":
            return rows
        return self._shuffled(number)[rows]

    def _shuffled(self, number: int) -> torch.Tensor:
        """Pass ``number``'s order: a permutation seeded by the chain's seed and
        ``number`` (kept while the chain is in that pass)."""
        if self._pass[0] != number:
            seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            self._pass = (number, order.to(self.device))
        return self._pass[1]
