"""The cv folds' chains stacked into one computation (small nets).

On a small net a chain's inner step is a few dozen tiny kernels, and their dispatch, not
their arithmetic, is what a step costs: ``K`` folds run one after the other pay it ``K``
times. :class:`FoldBatch` runs the folds' chains as one chain over stacked weights
(leading dim = fold): the module's own ``forward`` runs once on the folds' rows, one
fold after the other in one batch, with every ``F.linear`` turned into a batched matrix
product over the folds (:class:`_BatchedLinear`; row-wise layers and reshapes by the row
count work as they are), the Langevin step and the tracked adjoint act on stacked
tensors, and autograd's double backward runs once for all folds. (``torch.func.vmap``
does the same for any module, but its dispatch costs more than it saves on small nets;
see ``docs/performance.md``.) Everything random stays per fold:
each fold draws its minibatch, its validation rows and its noise
(:class:`~sgld_tuner.core.sgld.SliceGenerators`) from its own generators, in the order
its own chain would, so the stacked run equals the sequential one per fold up to float
rounding (batched matrix products sum in another order).

Exact only where the folds do not interact, hence :func:`FoldBatch.build`'s conditions:
the tracked or paper recursion (the damped one takes dot products over the whole chain;
the tracked adjoint's safeguard (curvature shift and step cap) reduces per fold, see
:attr:`~sgld_tuner.core.recursions.Recursion.slices`), any sampler, no curvature guard,
and a module without buffers, tied weights or random draws, whose forward gives each
fold's slice exactly what it gives that fold alone, row by row (a probe on a copy checks
this, in train and eval mode). Folds with fewer rows (a split that does not divide evenly) are padded with
zero rows whose outputs are dropped.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..core import _tree
from ..core.hypergrad import advance_chain, sgld_hypergrad
from ..core.problem import BilevelProblem, ChainState, InnerSettings, SeparablePenalty
from ..core.recursions import RECURSIONS, RecursionState, resolve_recursion
from ..core.sgld import SliceGenerators
from ..objective import average_replicas, first_output
from ..optimizers import with_weight_decay
from ..skorch_adapter import OUTER_CHUNK, NetProblem

#: ``batch_folds="auto"`` stacks the folds up to this many weights per net: below it
#: stacking saves more dispatch than its batched products cost, above it it loses
#: (measured by ``benchmarks/fold_batching.py``, figures in ``docs/performance.md``).
AUTO_MAX_WEIGHTS = 30_000


def _rows(n: int, size: int | None) -> int:
    """Rows a :meth:`NetProblem._draw_rows` draw yields out of ``n`` (``size`` None: all)."""
    return n if size is None or size >= n else size


class _StackedPenalty(SeparablePenalty):
    """The folds' closed-form penalties over stacked weights: per fold on its slice,
    weight derivatives stacked, lam derivatives and values summed."""

    def __init__(self, penalties: list, lam_spec):
        self.penalties, self.lam_spec = penalties, lam_spec

    def _per_fold(self, method, lam, theta, *vectors):
        slices = [_slices(x) for x in (theta, *vectors)]
        return [getattr(p, method)(lam, *(sl[k] for sl in slices))
                for k, p in enumerate(self.penalties)]

    def value(self, lam, theta):
        return sum(self._per_fold("value", lam, theta))

    def _stacked(self, parts, theta):
        if all(p is None for p in parts):
            return None
        names = {n for p in parts if p for n in p}
        return {n: torch.stack([p[n] if p and n in p else torch.zeros_like(theta[n][k])
                                for k, p in enumerate(parts)]) for n in names}

    def grad_theta(self, lam, theta):
        return self._stacked(self._per_fold("grad_theta", lam, theta), theta)

    def hvp(self, lam, theta, u):
        return self._stacked(self._per_fold("hvp", lam, theta, u), theta)

    def mixed(self, lam, theta, u):
        return _summed(self._per_fold("mixed", lam, theta, u), self.lam_spec)

    def grad_lam(self, lam, theta):
        return _summed(self._per_fold("grad_lam", lam, theta), self.lam_spec)


def _slices(stacked: dict) -> list[dict]:
    """Fold ``k``'s views ``{name: t[k]}`` of stacked tensors, for every ``k`` (one
    ``unbind`` per tensor, not one index per tensor and fold)."""
    return [dict(zip(stacked, views))
            for views in zip(*(t.unbind(0) for t in stacked.values()))]


def _summed(parts: list, spec):
    """Leafwise sum of per-fold structures shaped like ``lam`` (parts a fold leaves out
    count as zero; a leaf no fold gives stays ``None``)."""
    total = []
    for leaves in zip(*(_tree.flatten_partial(p, spec) for p in parts)):
        present = [t for t in leaves if t is not None]
        total.append(sum(present) if present else None)
    return _tree.unflatten(total, spec)


class FoldBatch:
    """``K`` folds' chains as one :class:`BilevelProblem` over stacked weights.

    Build with :meth:`build` (``None`` where stacking would not be exact or cannot
    work); :meth:`hypergradient` then takes the place of one hypergradient per fold.
    """

    def __init__(self, problems: list[NetProblem], bilevels: list[BilevelProblem],
                 weight_decay: float):
        self.problems = problems
        self.template = problems[0].module
        self.theta_spec = bilevels[0].theta_spec
        self.closed = problems[0].objective.closed_form_names
        self.lam_spec = bilevels[0].lam_spec
        penalties = [b.penalty for b in bilevels]
        self._mixed = [b.mixed_vjp for b in bilevels]
        theta0 = _tree.unflatten([torch.stack(ts) for ts in
                                  zip(*(b.theta0_leaves for b in bilevels))], self.theta_spec)
        self.bilevel = BilevelProblem(
            self.outer_loss, with_weight_decay(self.inner_loss, weight_decay), self.lam_spec,
            theta0, mixed_vjp=None if self._mixed[0] is None else self.mixed_vjp,
            penalty=None if penalties[0] is None else _StackedPenalty(penalties, self.lam_spec),
            outer_depends_on_lam=bilevels[0].outer_depends_on_lam)
        # Equal row counts and a per-row mean: the sum of the folds' means is K times the
        # mean over all their rows, one criterion call instead of K (for minibatches,
        # checked again at each step: a pass's partial batch can differ between folds).
        per_row = _per_row_mean(problems[0].crit.criterion)
        equal = [len({_rows(p.X_train.shape[0], p.batch_size) for p in problems}) == 1,
                 len({_rows(p.X_val.shape[0], p.outer_batch_size) for p in problems}) == 1]
        self.pooled_outer = per_row and equal[1]
        self.pooled_inner = per_row and equal[0] and all(
            p.objective.plain_mean for p in problems)

    def hypergradient(self, states: list[ChainState], lam, settings: InnerSettings):
        """One hypergradient of the stacked chain from the folds' ``states``: the result
        (``grad`` and the losses are sums over folds) and each fold's new state; ``None``
        when the states cannot be stacked."""
        return self._on_stacked(states, lambda stacked, generators: sgld_hypergrad(
            self.bilevel, lam, stacked, settings, generators))

    def warm_up(self, states: list[ChainState], lam, settings: InnerSettings,
                n_steps: int) -> list[ChainState] | None:
        """``n_steps`` Langevin steps of every fold's chain at fixed ``lam``
        (:func:`~sgld_tuner.core.hypergrad.advance_chain`, stacked); the folds' new
        states, or ``None`` when the states cannot be stacked."""
        out = self._on_stacked(states, lambda stacked, generators: advance_chain(
            self.bilevel, lam, stacked, settings, generators, n_steps))
        return None if out is None else out[1]

    def _on_stacked(self, states, run):
        """``run(stacked_state, generators)`` on the folds' states stacked, and the folds'
        states after it (``None`` when they cannot be stacked)."""
        stacked = self.stack_states(states)
        if stacked is None:
            return None
        # The folds' generators as they are now: a rollback gives each fold new ones.
        generators = SliceGenerators(p.generator for p in self.problems)
        out = run(stacked, generators)
        return out, [self.unstack_state(stacked, k) for k in range(len(states))]

    def mixed_vjp(self, lam, theta, v):
        """Sum over folds of each fold's closed-form mixed product on its slice."""
        return _summed([m(lam, th, vk) for m, th, vk in
                        zip(self._mixed, _slices(theta), _slices(v))], self.lam_spec)

    # -- eligibility ----------------------------------------------------------------------
    @classmethod
    def build(cls, folds: list, settings: InnerSettings, weight_decay: float,
              max_weights: int | None = AUTO_MAX_WEIGHTS) -> "FoldBatch | None":
        """A :class:`FoldBatch` for ``folds`` (objects with ``problem``, ``bilevel``) or
        ``None`` when stacking them would not equal the sequential chains, or (with
        ``max_weights``) when the net is too large to gain."""
        problems = [f.problem for f in folds]
        bilevels = [f.bilevel for f in folds]
        if len(folds) < 2 or not _settings_allow(settings):
            return None
        first = problems[0]
        n_weights = sum(t.numel() for t in bilevels[0].theta0_leaves)
        if max_weights is not None and n_weights > max_weights:
            return None
        shapes = [[tuple(t.shape) for t in b.theta0_leaves] for b in bilevels]
        if (any(s != shapes[0] for s in shapes)
                or any(_rows(p.X_val.shape[0], p.outer_batch_size) > OUTER_CHUNK
                       for p in problems)
                or any(p._tied or list(p.module.buffers()) for p in problems)
                or any(b.start_depends_on_lam for b in bilevels)):
            return None
        if not _stacking_probe(first):
            return None
        return cls(problems, bilevels, weight_decay)

    # -- the stacked losses -----------------------------------------------------------------
    def _stacked_forward(self, theta, Xs):
        """Each fold's module output on its own inputs ``Xs[k]``, from one stacked forward:
        the stacked tensor when every fold has as many rows, else a list (folds with fewer
        rows padded with zero rows, whose outputs are cut off again: the probe checked
        that rows do not interact)."""
        counts = [x.shape[0] for x in Xs]
        out = _stacked_forward(self.template, theta, torch.stack(_padded(Xs, max(counts))))
        if len(set(counts)) == 1:
            return out  # iterates as the folds' outputs; pooled as one reshape
        return [o if o.shape[0] == n else o[:n] for o, n in zip(out.unbind(0), counts)]

    def inner_loss(self, lam, theta):
        """Sum over folds of each fold's training loss on its own minibatch."""
        batches = []
        for p in self.problems:
            X, y, rows = p.training_batch()
            batches.append((p.objective.transform(lam, X, p.generator), y, rows, X.shape[0]))
        _set_mode(self.template, True)
        out = self._stacked_forward(theta, [b[0] for b in batches])
        if self.pooled_inner and len({b[3] for b in batches}) == 1:
            return self._pooled_mean(out, [b[1] for b in batches], batches[0][3])
        return sum(p.objective.training_loss(lam, average_replicas(o, n), y, rows, th,
                                             self.closed)
                   for p, (_, y, rows, n), th, o in zip(self.problems, batches, _slices(theta),
                                                        out))

    def _pooled_mean(self, outs, ys, n):
        """``sum_k crit(outs[k], ys[k])`` as K times the criterion over all folds' rows
        (``n`` rows in every fold; an augmented output's replicas are averaged per fold)."""
        if isinstance(outs, torch.Tensor) and outs.shape[1] == n:
            rows = outs.reshape(-1, *outs.shape[2:])
        else:
            rows = torch.cat([average_replicas(o, n) for o in outs])
        return len(ys) * self.problems[0].objective.validation_loss(rows, torch.cat(ys))

    def outer_loss(self, lam, theta):
        """Sum over folds of each fold's outer loss on its own validation rows."""
        batches = []
        for p in self.problems:
            X, y = p.validation_batch()
            X_in = p.objective.transform(lam, X, p.outer_generator) if p.augment_outer else X
            batches.append((X_in, y, X.shape[0]))
        _set_mode(self.template, False)
        out = self._stacked_forward(theta, [b[0] for b in batches])
        if self.pooled_outer:
            total = self._pooled_mean(out, [b[1] for b in batches], batches[0][2])
        else:
            total = sum(p.objective.validation_loss(average_replicas(o, n), y)
                        for p, (_, y, n), o in zip(self.problems, batches, out))
        for p in self.problems:
            total = p.objective.validation_objective(total, lam)
        return total

    # -- state in and out -------------------------------------------------------------------
    def stack_states(self, states: list[ChainState]) -> ChainState | None:
        """One chain state for the stacked chain, or ``None`` when the folds' states
        cannot be stacked (they differ in what they carry)."""
        if len({s.n_steps for s in states}) != 1:
            return None
        try:
            theta = _stacked_value([s.theta for s in states])
            sampler = _stacked_value([s.sampler or {} for s in states])
            recs = [s.recursion for s in states]
            rec = None
            if any(r is not None for r in recs):
                if len({None if r is None else r.name for r in recs}) != 1:
                    return None
                rec = RecursionState(recs[0].name,
                                     _stacked_value([r.tensors for r in recs]))
        except _Unstackable:
            return None
        return ChainState(theta=theta, n_steps=states[0].n_steps, recursion=rec,
                          sampler=sampler)

    @staticmethod
    def unstack_state(state: ChainState, k: int) -> ChainState:
        """Fold ``k``'s own chain state out of the stacked one."""
        rec = state.recursion
        if rec is not None:
            rec = RecursionState(rec.name, _slice_value(rec.tensors, k))
        return ChainState(theta=_slice_value(state.theta, k), n_steps=state.n_steps,
                          recursion=rec, sampler=_slice_value(state.sampler or {}, k))


class _Unstackable(Exception):
    """The folds' states differ in structure: stacking them is not defined."""


def _stacked_value(values: list):
    """The folds' values of one state field stacked along a new dim 0: tensors stacked
    (0-d ones into one value per fold), lists and dicts leaf by leaf; anything else
    (a step count, None) must be the same in every fold."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(v, torch.Tensor) and v.shape == first.shape for v in values):
            raise _Unstackable
        return torch.stack(values)
    if isinstance(first, list):
        if any(not isinstance(v, list) or len(v) != len(first) for v in values):
            raise _Unstackable
        return [_stacked_value(list(items)) for items in zip(*values)]
    if isinstance(first, dict):
        if any(not isinstance(v, dict) or v.keys() != first.keys() for v in values):
            raise _Unstackable
        return {key: _stacked_value([v[key] for v in values]) for key in first}
    if any(v != first for v in values):
        raise _Unstackable
    return first


def _slice_value(value, k: int):
    """Fold ``k``'s part of a value built by :func:`_stacked_value` (tensors cloned)."""
    if isinstance(value, torch.Tensor):
        return value[k].clone()
    if isinstance(value, list):
        return [_slice_value(v, k) for v in value]
    if isinstance(value, dict):
        return {key: _slice_value(v, k) for key, v in value.items()}
    return value


#: criteria whose ``reduction="mean"`` is a plain mean over rows (and elements)
_PER_ROW_MEAN = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss, torch.nn.MSELoss,
                 torch.nn.L1Loss, torch.nn.SmoothL1Loss, torch.nn.HuberLoss,
                 torch.nn.BCEWithLogitsLoss, torch.nn.BCELoss)


def _per_row_mean(criterion) -> bool:
    """Whether ``criterion`` averages a per-row loss with equal weights (class weights
    make a weighted mean, whose pooled value is not the sum of the folds')."""
    return (type(criterion) in _PER_ROW_MEAN and criterion.reduction == "mean"
            and getattr(criterion, "weight", None) is None)


def _padded(Xs: list, n: int) -> list:
    """Each ``X`` with zero rows appended up to ``n`` rows."""
    return [x if x.shape[0] == n else torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])
            for x in Xs]


def _set_mode(module, training: bool) -> None:
    """``module.train(training)`` only when needed (it walks every submodule)."""
    if module.training != training:
        module.train(training)


def _settings_allow(settings: InnerSettings) -> bool:
    """Whether the chain's arithmetic is per weight or per chain: a persistent SGLD
    chain whose recursion declares it can run stacked (:attr:`Recursion.stackable`),
    without the curvature guard, which reduces over the whole chain."""
    recursion = RECURSIONS.get(resolve_recursion(settings.recursion, False))
    return (settings.method == "sgld" and settings.chain == "persistent"
            and recursion is not None and recursion.stackable
            and settings.curvature_bound in (None, float("inf"))
            and not settings.keep_samples)


class _BatchedLinear(TorchFunctionMode):
    """``F.linear`` with weights stacked along a leading fold dim (weight ``(K, out,
    in)``, bias ``(K, out)``) on inputs whose rows are the folds' rows one fold after
    the other (``x`` of shape ``(K * rows, ..., in)``): one batched product. Everything
    else runs as called, on a batch of ``K * rows`` rows."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.dim() == 3:
                return _batched_linear(x, weight, bias)
        return func(*args, **kwargs)


def _batched_linear(x, weight, bias):
    k, n_in = weight.shape[0], weight.shape[2]
    per_fold = x.reshape(k, -1, n_in)  # each fold's rows are contiguous
    if bias is None:
        out = torch.bmm(per_fold, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), per_fold, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[1])


def _stacked_forward(module, theta, X):
    """``module``'s first output for every fold at once: ``theta`` stacked weights,
    ``X`` stacked inputs ``(K, rows, ...)``, seen by the module as one batch of
    ``K * rows`` rows (so that a forward that flattens by the row count works);
    returns ``(K, rows, ...)``."""
    k, n = X.shape[0], X.shape[1]
    with _BatchedLinear():
        out = first_output(functional_call(module, theta, (X.reshape(k * n, *X.shape[2:]),),
                                            tie_weights=False))
    return out.reshape(k, n, *out.shape[1:])


def _rng_states(device) -> list:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _stacking_probe(problem: NetProblem) -> bool:
    """Whether the stacked forward gives each fold's slice what the module gives that
    fold alone (two different weight sets and inputs, train and eval mode, on a copy of
    the module) and draws nothing from torch's global RNG (dropout and the like)."""
    module = copy.deepcopy(problem.module)
    params = {n: p.detach() for n, p in module.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    other = {n: p + 0.1 * torch.randn(p.shape, generator=gen).to(p) for n, p in params.items()}
    X = problem.X_train[:3]
    Xs = torch.stack([X, X.flip(0) * 0.5 + 0.1])
    stacked = {n: torch.stack([params[n], other[n]]) for n in params}
    devices = [X.device] if X.device.type == "cuda" else []
    try:  # the probe's own draws (if any) must not advance the caller's RNG
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for training in (True, False):
                module.train(training)
                before = _rng_states(X.device)
                out = _stacked_forward(module, stacked, Xs)
                changed = any(not torch.equal(a, b)
                              for a, b in zip(before, _rng_states(X.device)))
                alone = [first_output(functional_call(module, w, (x,)))
                         for w, x in ((params, Xs[0]), (other, Xs[1]))]
                # rows must not interact: padding rows leave the others' outputs alone
                padded = _stacked_forward(module, stacked, torch.stack(_padded(Xs, 5)))
                if changed or out.shape[0] != 2 or not all(
                        o.shape == a.shape and torch.allclose(o, a, rtol=1e-4, atol=1e-5)
                        and torch.allclose(q[:a.shape[0]], a, rtol=1e-4, atol=1e-5)
                        for o, a, q in zip(out, alone, padded)):
                    return False
    except Exception:  # noqa: BLE001 - a forward the stacking cannot take: do not stack
        return False
    return True
