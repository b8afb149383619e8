"""Base classes shared by every hyperparameter kind: the public extension API.

A :class:`Hyperparameter` is a scikit-learn style specification (``__init__`` only stores
its arguments, so ``clone`` and ``get_params`` work). :meth:`Hyperparameter.bind` turns it
into a :class:`BoundHyperparameter` for one concrete ``torch.nn.Module``: the glob in
``params`` is resolved to parameter names and all shapes are fixed.

A bound hyperparameter is stateless with respect to its value: the value lives in an
unconstrained *raw* tensor (or dict of tensors) that the bilevel solver differentiates and
updates; every hook receives that raw value explicitly. This keeps the hyperparameter
usable inside ``torch.func`` style functional code and lets several cv folds share one kind.

Writing a kind
--------------
Subclass :class:`Hyperparameter` (implement :meth:`~Hyperparameter.make_bound`) and
:class:`BoundHyperparameter` (implement ``value``, ``to_public`` and ``from_public``;
override ``init_raw`` unless the spec's ``init`` is a public value). Then override the
hooks through which the kind acts on training; the others are documented no-ops:

=====================  ==============================================================
hook                   effect on the training loss ``mean_i w_i l_i + sum penalties``
=====================  ==============================================================
``per_sample_loss``    rewrites ``l_i``; several kinds compose in the order given
``class_weights``      multiplies ``w_i`` by a weight of row ``i``'s class
``sample_weights``     multiplies ``w_i`` by a weight of row ``i`` (needs row indices)
``inner_penalty``      adds a penalty on the weights ``theta``
``transform_inputs``   transforms the training inputs before the forward
``outer_penalty``      adds a term to the outer (validation) loss
=====================  ==============================================================

Capability flags replace type checks: the tuner and the adapter ask a kind what it does
(``transforms_inputs``, ``transforms_validation_inputs``, ``needs_row_indices``,
``uses_params`` on the specification; ``modifies_loss``, ``closed_form_mixed``,
``needs_calibration`` on the bound kind), never which class it is.
:func:`sgld_tuner.checks.check_hyperparameter` runs the conformance checks every
built-in kind passes.
"""
from __future__ import annotations

import abc
import fnmatch
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
from sklearn.base import BaseEstimator

__all__ = ["Hyperparameter", "BoundHyperparameter", "resolve_params",
           "softmax_probabilities"]


def resolve_params(module: torch.nn.Module, patterns: str | Iterable[str] | None,
                   kind: str) -> list[str]:
    """Names of ``module``'s parameters matched by glob ``patterns`` (in module order).

    A pattern starting with ``"*."`` also matches top-level names (``"*.weight"`` matches
    ``"weight"`` of a bare ``nn.Linear``), since a module used directly has no prefix.

    Raises
    ------
    ValueError
        If the patterns match no parameter; the message lists the available names.
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    names = [n for n, _ in module.named_parameters()]
    matched = [n for n in names
               if any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase("." + n, p)
                      for p in patterns)]
    if not matched:
        raise ValueError(
            f"{kind}: params={patterns!r} matches no parameter of the module; "
            f"available names: {names}"
        )
    return matched


def inv_softplus(value: torch.Tensor) -> torch.Tensor:
    """Inverse of ``softplus``, stable for tiny and large values.

    ``log(exp(v) - 1) = v + log(1 - exp(-v))``; values are clamped to ``>= 1e-30`` so a
    strength of exactly zero maps to a finite raw value whose softplus is ~1e-30.
    """
    value = value.clamp_min(1e-30)
    return value + torch.log(-torch.expm1(-value))


def as_tensor(value: Any, device, dtype) -> torch.Tensor:
    """``value`` (float, list, ndarray or tensor) as a tensor on ``device`` / ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


def softmax_probabilities(y_pred: torch.Tensor) -> torch.Tensor:
    """Class probabilities from logits: the output kind assumed until the adapter says.

    Parameters
    ----------
    y_pred : Tensor of shape (n, n_classes)
        Module output (logits).

    Returns
    -------
    Tensor of shape (n, n_classes)
    """
    return torch.softmax(y_pred, dim=-1)


# Names of the extension API before it was public: a subclass still defining them would
# be silently ignored, so class creation fails and names the public replacement.
_RENAMED = {"_make_bound": "make_bound", "_set_output_kind": "set_output_kind",
            "_uses_params": "uses_params"}


def _reject_private_hooks(cls: type) -> None:
    old = [name for name in _RENAMED if name in cls.__dict__]
    if old:
        new = [_RENAMED[name] for name in old]
        raise TypeError(f"{cls.__name__} defines {old}: these hooks are public now, "
                        f"rename them to {new}")


class Hyperparameter(BaseEstimator, abc.ABC):
    """A kind of hyperparameter to learn by hypergradient descent (abstract base).

    Subclasses store their constructor arguments unchanged (scikit-learn convention, so
    ``clone`` and ``get_params`` work) and implement :meth:`make_bound`, where all
    validation happens. A subclass that leaves :meth:`make_bound` abstract cannot be
    instantiated (``TypeError``).

    Attributes
    ----------
    uses_params : bool, class attribute, default=False
        The kind acts on module parameters selected by a glob in its ``params``
        argument; :meth:`bind` resolves it and hands the matched names to
        :meth:`make_bound` (and fails, listing the names, when nothing matches).
    transforms_inputs : bool, class attribute, default=False
        The bound kind's ``transform_inputs`` changes the training inputs, which must
        then be one array (not a dict of arrays).
    transforms_validation_inputs : bool, class attribute, default=False
        While tuning, ``transform_inputs`` is applied to the validation inputs of the
        outer loss too (the paper does so when learning invariances, Supplement D.6).
        Implies ``transforms_inputs``.
    needs_row_indices : bool, class attribute, default=False
        The bound kind's ``sample_weights`` needs each training row's position in the
        training set; a refit net then carries row indices through its batches.
    replaces_loss : bool, class attribute, default=False
        The bound kind's ``per_sample_loss`` ignores the loss it is handed (the
        criterion's, or what the kinds before it made of it): any loss-rewriting kind
        before it then has no effect, and the tuner warns.
    outer_lr_scale : float, class attribute, default=1.0
        The kind's natural step: the tuner moves its raw values with ``outer_lr *
        outer_lr_scale``, so that one ``outer_lr`` means the same for every kind. 1 for
        a raw value on a log scale (penalty strengths, class-weight logits); a kind whose
        raw values must move further in the default ``n_outer`` says so here (learned
        losses, augmentation ranges).
    """

    uses_params = False
    transforms_inputs = False
    transforms_validation_inputs = False
    needs_row_indices = False
    replaces_loss = False
    outer_lr_scale = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _reject_private_hooks(cls)

    def bind(self, module: torch.nn.Module, *, n_train: int, n_classes: int | None,
             input_shape: tuple) -> "BoundHyperparameter":
        """Resolve this specification against ``module`` and the data's dimensions.

        Parameters
        ----------
        module : torch.nn.Module
            The (initialized) network whose parameters the hyperparameter acts on.
        n_train : int
            Number of training rows (one weight per row for :class:`SampleWeights`).
        n_classes : int or None
            Number of classes for classifiers, ``None`` for regressors.
        input_shape : tuple
            Shape of one input row (without the batch dimension).

        Returns
        -------
        BoundHyperparameter

        Raises
        ------
        ValueError
            If ``params`` matches no parameter (the message lists the names), or the
            kind does not fit the task (e.g. class weights on a regressor).
        """
        names = resolve_params(module, getattr(self, "params", None),
                               type(self).__name__) if self.uses_params else []
        return self.make_bound(module, names, n_train=int(n_train), n_classes=n_classes,
                               input_shape=tuple(input_shape))

    @abc.abstractmethod
    def make_bound(self, module: torch.nn.Module, names: list[str], *, n_train: int,
                   n_classes: int | None, input_shape: tuple) -> "BoundHyperparameter":
        """Validate the arguments and build the bound kind (called by :meth:`bind`).

        Parameters
        ----------
        module, n_train, n_classes, input_shape
            As in :meth:`bind` (``n_train`` an int, ``input_shape`` a tuple).
        names : list of str
            Parameter names matched by ``params`` when :attr:`uses_params`, else ``[]``.

        Returns
        -------
        BoundHyperparameter

        Raises
        ------
        ValueError
            When an argument is invalid or the kind does not fit the module or task;
            the message should name the argument and the accepted values.
        """


class BoundHyperparameter(abc.ABC):
    """A hyperparameter attached to one module and data shape (abstract base).

    Subclasses must implement :meth:`value`, :meth:`to_public` and :meth:`from_public`
    (else instantiating them raises ``TypeError``) and override :meth:`init_raw` unless
    ``spec.init`` is a public value. The hooks after those are optional: their defaults
    leave training unchanged, so the adapter simply asks every bound kind, like skorch
    calls every callback's ``on_*`` methods.

    Parameters
    ----------
    spec : Hyperparameter
        The specification it was made from.
    name_targets : list of str
        Matched parameter names (empty for kinds that do not act on parameters).

    Attributes
    ----------
    spec : Hyperparameter
    name_targets : list of str
    probabilities : callable
        Maps the module output to class probabilities (see :meth:`set_output_kind`).
    closed_form_mixed : bool, class attribute, default=False
        The kind enters the inner loss only through a separable penalty whose mixed
        derivative :meth:`mixed_vjp` gives in closed form (no double backward needed).
    closed_form_penalty : bool, class attribute, default=False
        The kind's :meth:`inner_penalty` comes with its derivatives in closed form
        (:meth:`penalty_grad`, :meth:`penalty_hvp`, :meth:`penalty_grad_raw` and
        :meth:`mixed_vjp`): the chain then differentiates only the rest of the training
        loss twice (see :class:`~sgld_tuner.core.problem.SeparablePenalty`).
    needs_calibration : bool, default=False
        The start is derived from the data: the adapter calls :meth:`calibrate` once,
        before :meth:`init_raw`.
    modifies_loss : bool, class attribute
        The kind rewrites the per-sample training loss. Set automatically to whether the
        class overrides :meth:`per_sample_loss`; the adapter calls that hook only then.
    reweights_rows : bool, class attribute
        The kind weighs the training rows (:meth:`class_weights` or
        :meth:`sample_weights`). Set automatically to whether the class overrides either.
    adds_inner_penalty : bool, class attribute
        The kind adds a penalty to the training loss (:meth:`inner_penalty`). Set
        automatically to whether the class overrides it.
    """

    closed_form_mixed = False
    closed_form_penalty = False
    needs_calibration = False
    modifies_loss = False
    reweights_rows = False
    adds_inner_penalty = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _reject_private_hooks(cls)
        # Capabilities a subclass does not declare follow from the hooks it overrides.
        base = BoundHyperparameter
        if "modifies_loss" not in cls.__dict__:
            cls.modifies_loss = cls.per_sample_loss is not base.per_sample_loss
        if "reweights_rows" not in cls.__dict__:
            cls.reweights_rows = (cls.class_weights is not base.class_weights
                                  or cls.sample_weights is not base.sample_weights)
        if "adds_inner_penalty" not in cls.__dict__:
            cls.adds_inner_penalty = cls.inner_penalty is not base.inner_penalty

    def __init__(self, spec: Hyperparameter, name_targets: list[str]):
        self.spec = spec
        self.name_targets = list(name_targets)
        self.probabilities = softmax_probabilities

    # -- representation -------------------------------------------------------------
    def init_raw(self, device: torch.device, dtype: torch.dtype):
        """Unconstrained initial value (tensor or dict of tensors).

        The default is ``from_public(spec.init, device, dtype)``.
        """
        return self.from_public(self.spec.init, device, dtype)

    @abc.abstractmethod
    def value(self, raw):
        """Constrained value from the raw representation, differentiably.

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor

        Returns
        -------
        Tensor or dict of str -> Tensor
            Holding the same numbers, in the same order, as :meth:`to_public`.
        """

    @abc.abstractmethod
    def to_public(self, raw):
        """The value on its constrained scale, as users read and give it.

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor

        Returns
        -------
        float, ndarray or dict
            What ``best_params_`` and ``hyperparams_`` report and a refit net receives.
        """

    @abc.abstractmethod
    def from_public(self, value, device: torch.device, dtype: torch.dtype):
        """Inverse of :meth:`to_public`: a public value back to its raw representation.

        Parameters
        ----------
        value : float, ndarray or dict
            A public value.
        device : torch.device
        dtype : torch.dtype

        Returns
        -------
        Tensor or dict of str -> Tensor

        Raises
        ------
        ValueError
            If ``value`` is out of range or of the wrong shape.
        """

    def summary(self, raw) -> float:
        """One scalar for ``cv_results_['param_<name>']``; default: mean of the value."""
        value = self.value(raw)
        return mean_of(value.values() if isinstance(value, dict) else [value])

    # -- optional hooks: the defaults leave training unchanged -----------------------
    def set_output_kind(self, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Told by the adapter, after binding, how to get probabilities from the output.

        Parameters
        ----------
        probabilities : callable
            ``y_pred -> p``: softmax for logits, identity for a module that outputs
            probabilities (criterion ``NLLLoss`` in a ``NeuralNetClassifier``). Stored as
            :attr:`probabilities` for :meth:`per_sample_loss` to use.
        """
        self.probabilities = probabilities

    def per_sample_loss(self, raw, y_pred: torch.Tensor, y_true: torch.Tensor,
                        loss: torch.Tensor) -> torch.Tensor:
        """Rewrite the per-sample training loss (default: unchanged).

        Composition: the adapter calls this hook of every kind with
        :attr:`modifies_loss`, in the order of the ``hyperparams`` dict; ``loss`` is the
        net's criterion per sample for the first, the previous kind's result after that.
        A kind that ignores ``loss`` (:class:`TaylorLoss`) replaces what came before.

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor
        y_pred : Tensor of shape (n, ...)
            Module output on the (transformed) training batch.
        y_true : Tensor of shape (n, ...)
            Targets (class codes for classifiers).
        loss : Tensor of shape (n,)
            The per-sample loss so far.

        Returns
        -------
        Tensor of shape (n,)
        """
        return loss

    def class_weights(self, raw) -> torch.Tensor | None:
        """Weight per class, multiplying each row's loss (default: ``None``, no weights).

        Returns
        -------
        Tensor of shape (n_classes,) or None
        """
        return None

    def sample_weights(self, raw, rows: torch.Tensor) -> torch.Tensor | None:
        """Weight per training row (default: ``None``); needs ``needs_row_indices``.

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor
        rows : Tensor of int, shape (n,)
            Positions of the batch rows in the training set.

        Returns
        -------
        Tensor of shape (n,) or None
        """
        return None

    def inner_penalty(self, raw, theta: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Penalty added to the training loss (default: ``None``).

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor
        theta : dict of str -> Tensor
            The module's parameters by name.

        Returns
        -------
        scalar Tensor or None
        """
        return None

    def outer_penalty(self, raw) -> torch.Tensor | None:
        """Term added to the outer (validation) loss (default: ``None``).

        Return ``None`` only for a kind that never adds one, whatever ``raw``: the adapter
        asks once, at the initial values, whether the outer loss reads the
        hyperparameters, and a chain then skips outer-loss evaluations that do not count
        (``BilevelProblem(outer_depends_on_lam=...)``).

        Returns
        -------
        scalar Tensor or None
        """
        return None

    def transform_inputs(self, raw, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transform a training batch before the forward (default: identity).

        A kind may return ``k * len(X)`` rows (``k`` replicas, replica-major); the adapter
        then averages the module outputs over replicas. Needs ``transforms_inputs`` on
        the specification.

        Parameters
        ----------
        raw : Tensor or dict of str -> Tensor
        X : Tensor of shape (n, ...)
        generator : torch.Generator
            The only source of randomness to draw from (reproducibility).

        Returns
        -------
        Tensor of shape (k * n, ...)
        """
        return X

    def mixed_vjp(self, raw, theta: dict[str, torch.Tensor], v: dict[str, torch.Tensor]):
        """``v^T d2 P / (d theta d raw)`` in closed form, or ``NotImplemented`` (default).

        Only used when :attr:`closed_form_mixed` is true, for every kind of a problem.

        Returns
        -------
        Tensor or dict of str -> Tensor shaped like ``raw``, or NotImplemented
        """
        return NotImplemented

    def penalty_grad(self, raw, theta: dict[str, torch.Tensor]):
        """``d inner_penalty / d theta`` in closed form (with :attr:`closed_form_penalty`).

        Returns
        -------
        dict of str -> Tensor
            One entry per parameter the penalty touches.
        """
        return NotImplemented

    def penalty_hvp(self, raw, theta: dict[str, torch.Tensor], u: dict[str, torch.Tensor]):
        """``(d2 inner_penalty / d theta2) u`` (with :attr:`closed_form_penalty`).

        Returns
        -------
        dict of str -> Tensor, or None
            ``None`` when the penalty has no curvature (an L1 penalty).
        """
        return NotImplemented

    def penalty_grad_raw(self, raw, theta: dict[str, torch.Tensor]):
        """``d inner_penalty / d raw`` (with :attr:`closed_form_penalty`), shaped like ``raw``."""
        return NotImplemented

    def calibrate(self, data_grads: dict[str, torch.Tensor],
                  theta: dict[str, torch.Tensor]) -> None:
        """Set a data-derived start from the gradient of the unpenalised training loss.

        Called once, before :meth:`init_raw`, when :attr:`needs_calibration` (default:
        nothing to do).

        Parameters
        ----------
        data_grads : dict of str -> Tensor
            ``d L_data / d theta`` at the initial weights, keyed by parameter name.
        theta : dict of str -> Tensor
            The initial weights.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, targets={len(self.name_targets)})"


# -- helpers shared by the kinds --------------------------------------------------------

def per_name_values(init, names: list[str], kind: str) -> dict[str, Any]:
    """Broadcast ``init`` (scalar, or dict name -> scalar/array) to every name."""
    if isinstance(init, dict):
        missing = [n for n in names if n not in init]
        if missing:
            raise ValueError(f"{kind}: init dict lacks values for {missing}")
        return {n: init[n] for n in names}
    return {n: init for n in names}


def check_finite_nonneg(value, kind: str, what: str = "init") -> None:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{kind}: {what} must be finite and >= 0, got {value!r}")


def mean_of(tensors: Iterable[torch.Tensor]) -> float:
    tensors = [t.detach().reshape(-1) for t in tensors]
    if not tensors:
        return math.nan
    return float(torch.cat(tensors).double().mean())
