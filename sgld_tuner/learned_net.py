"""A skorch net that trains with learned hyperparameter values: the refit net.

:func:`make_learned_net` returns a fresh skorch net (:class:`LearnedNet`,
:class:`LearnedNetClassifier`, :class:`LearnedNetRegressor`, or a subclass of the user's
own net class) whose ``get_loss`` and training-time forward apply the learned values of
:class:`~sgld_tuner.objective.Objective`, the objective the search tuned, so ``fit``
retrains with them and ``sklearn.base.clone`` keeps them.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils.metaestimators import available_if
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from skorch.dataset import Dataset, get_len
from skorch.utils import to_device, to_tensor
from torch.nn.parameter import is_lazy
from torch.utils.data import DataLoader

from .hyperparams.base import Hyperparameter
from .objective import (Criterion, Objective, average_replicas, bind_all, first_output,
                        module_device, module_dtype, transform_inputs)
from .skorch_adapter import probe_output, takes_ids

__all__ = ["LearnedNet", "LearnedNetClassifier", "LearnedNetRegressor", "learned_class",
           "make_learned_net"]

# skorch's Dataset slices every value of a dict X with the batch indices, so the row
# index travels with its row through any train_split and shuffling.
ROW_KEY = "__sgld_row__"
WRAP_KEY = "__sgld_X__"

class _LearnedMixin:
    """Training with learned hyperparameter values; see :func:`make_learned_net`."""

    def __init__(self, module, *args, hyperparams=None, learned_values=None, tta=0, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.hyperparams = hyperparams
        self.learned_values = learned_values
        self.tta = tta

    # transient state, rebuilt lazily (e.g. after unpickling or set_params)
    _HP_STATE = ("hp_bound_", "hp_raw_", "hp_generator_", "hp_rows_", "hp_crit_",
                 "hp_objective_")

    def __getstate__(self):
        state = super().__getstate__()
        for key in self._HP_STATE:
            state.pop(key, None)
        return state

    def __reduce_ex__(self, protocol):
        # A class made by learned_class() cannot be found by name: rebuild it from the
        # user's class (found by name) instead.
        if type(self) not in (LearnedNet, LearnedNetClassifier, LearnedNetRegressor) \
                and _LEARNED_CLASSES.get(_user_class(type(self))) is type(self):
            return _rebuild_learned, (_user_class(type(self)),), self.__getstate__()
        return super().__reduce_ex__(protocol)

    def set_params(self, **kwargs):
        out = super().set_params(**kwargs)
        self._hp_reset()
        return out

    # -- classifiers: labels as given in ``classes``, one probability column per class ----
    def _n_label_classes(self):
        """``len(classes)`` for a classifier given ``classes``, else None."""
        if not isinstance(self, NeuralNetClassifier) or self.classes is None:
            return None
        return len(self.classes)

    def _encode_labels(self, y):
        """Codes ``0..C-1`` of the labels ``y`` in ``classes`` (any label type).

        Integer ``y`` that are not all labels in ``classes`` but lie in ``0..C-1`` are
        taken as codes already (skorch's own convention for ``classes``).
        """
        if self._n_label_classes() is None or y is None or torch.is_tensor(y):
            return y
        y = np.asarray(y)
        if y.ndim != 1:
            return y
        classes = np.asarray(self.classes)
        order = np.argsort(classes, kind="stable")
        pos = np.clip(np.searchsorted(classes, y, sorter=order), 0, len(classes) - 1)
        codes = order[pos]
        unknown = classes[codes] != y
        if unknown.any() and y.dtype.kind in "iu" and y.min() >= 0 and y.max() < len(classes):
            return y  # skorch's own convention: integer codes into classes
        if unknown.any():
            raise ValueError(f"y holds labels not in classes={classes.tolist()}: "
                             f"{sorted(set(y[unknown].tolist()))[:5]}")
        return codes.astype(np.int64)

    @available_if(lambda self: _user_class_has(self, "predict_proba"))
    def predict_proba(self, X):
        """As skorch's, restricted to (and renormalised over) the first ``len(classes)``
        columns when the module has more outputs than classes."""
        proba = super().predict_proba(X)
        n_classes = self._n_label_classes()
        if n_classes is not None and proba.ndim == 2 and proba.shape[1] > n_classes:
            proba = proba[:, :n_classes]
            proba = proba / proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X):
        """As skorch's; a classifier given ``classes`` returns those labels (not codes)."""
        if self._n_label_classes() is None or \
                getattr(_user_class(type(self)), "predict") is not NeuralNetClassifier.predict:
            return super().predict(X)
        return np.asarray(self.classes)[self.predict_proba(X).argmax(axis=1)]

    def _hp_reset(self):
        for key in self._HP_STATE:
            self.__dict__.pop(key, None)

    def initialize(self):
        self._hp_reset()
        return super().initialize()

    def _hp_ensure(self, x_batch: torch.Tensor):
        """Bind the hyperparameters to ``module_`` once, at the first training batch."""
        if getattr(self, "hp_bound_", None) is not None:
            return
        hps = self.hyperparams or {}
        values = self.learned_values or {}
        missing = [k for k in hps if k not in values]
        if missing:
            raise ValueError(f"learned_values lacks values for hyperparameters {missing}")
        crit = Criterion(self)
        lazy = any(is_lazy(p) for p in self.module_.parameters())
        n_classes = None
        if crit.is_classifier or lazy:
            # A forward on two rows reads the output layout and, as skorch's first batch
            # would, materialises lazy layers (LazyLinear) before the kinds bind to them
            # (two: a batch norm without running statistics normalises by the batch's
            # own spread even in eval mode, and one row has none).
            probe = (probe_output(self.module_, **{k: v[:2] for k, v in x_batch.items()})
                     if isinstance(x_batch, Mapping) else probe_output(self.module_, x_batch[:2]))
            n_classes = int(probe.shape[-1]) if crit.is_classifier else None
        dtype = module_dtype(self.module_)
        device = module_device(self.module_)
        input_shape = () if isinstance(x_batch, Mapping) else tuple(x_batch.shape[1:])
        n_train = getattr(self, "hp_n_train_", None)
        if n_train is None:
            n_train = 0
        bound = bind_all(hps, self.module_, crit, n_train=n_train, n_classes=n_classes,
                          input_shape=input_shape)
        self.hp_crit_ = crit
        self.hp_raw_ = {name: b.from_public(values[name], device, dtype)
                        for name, b in bound.items()}
        self.hp_bound_ = bound
        self.hp_objective_ = Objective(crit, bound)
        gen = torch.Generator(device=device)
        # seeded from torch's global RNG so torch.manual_seed makes refits reproducible
        gen.manual_seed(int(torch.randint(0, 2**62, (1,))))
        self.hp_generator_ = gen

    def forward_iter(self, X, training=False, device="cpu"):
        """As skorch's, but a dense array or tensor is cut into batches directly, not
        gathered row by row through a ``Dataset`` and a ``DataLoader`` (that path cost
        several times the forward passes themselves when the search scores its folds). The batches
        are the ones skorch's loader makes (``batch_size`` rows, in order), so outputs
        are the same; any other input, dataset or loader takes skorch's own path."""
        if not self._slices_directly(X):
            yield from super().forward_iter(X, training=training, device=device)
            return
        size = vars(self).get("iterator_valid__batch_size", self.batch_size)
        size = len(X) if size in (None, -1) else int(size)
        for start in range(0, len(X), max(1, size)):
            chunk = X[start:start + size]
            chunk = chunk if torch.is_tensor(chunk) else torch.tensor(chunk)
            yield to_device(self.evaluation_step((chunk, None), training=training),
                            device=device)

    def _slices_directly(self, X) -> bool:
        """Whether ``X`` is rows skorch's default dataset and loader would only stack."""
        if not (torch.is_tensor(X) or (isinstance(X, np.ndarray) and X.dtype != object)):
            return False
        if X.ndim < 1 or self.dataset is not Dataset or self.iterator_valid is not DataLoader:
            return False
        return not any(k.startswith(("iterator_valid__", "dataset__"))
                       and k != "iterator_valid__batch_size" for k in vars(self))

    def get_dataset(self, X, y=None):
        """As skorch's, but a ``DataFrame`` is one matrix of rows, as the search's chains
        take it (not skorch's dict of columns): e.g. from a preprocessing step with
        ``set_output(transform="pandas")``."""
        return super().get_dataset(_as_rows(X), y)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        y = self._encode_labels(y)
        X = _as_rows(X)
        n_train = int(get_len(X)) if not _is_wrapped(X) else int(get_len(X[ROW_KEY]))
        if n_train != getattr(self, "hp_n_train_", None):
            self._hp_reset()   # row weights are bound to the number of rows
        self.hp_n_train_ = n_train
        if self.hyperparams and not _is_wrapped(X) and any(
                hp.needs_row_indices for hp in self.hyperparams.values()):
            X = _wrap_rows(X)
        return super().partial_fit(X, y, classes=classes, **fit_params)

    def infer(self, x, **fit_params):
        x, rows = _unwrap(x)
        if rows is not None:
            rows = to_tensor(rows, device=self.device).long()
        training = self.module_.training
        self.hp_rows_ = rows if training else None
        x = to_tensor(x, device=self.device)
        if torch.is_tensor(x) and (x.is_floating_point() or not takes_ids(self.module_)):
            # e.g. float64 or integer rows from a Pipeline's preprocessing: the module's
            # dtype (token ids for an embedding stay integers)
            x = x.to(module_dtype(self.module_))
        # getattr: a net pickled before ``tta`` existed has no such attribute.
        tta = getattr(self, "tta", 0)
        if not training and tta:
            if isinstance(tta, bool) or not isinstance(tta, Integral) or tta < 0:
                raise ValueError(f"tta must be a non-negative int, got {tta!r}")
            if self._transforms_inputs() and torch.is_tensor(x):
                return self._test_time_average(x, int(tta), **fit_params)
        if not training or not self.hyperparams:
            return super().infer(x, **fit_params)
        if isinstance(x, Mapping):
            transforming = [type(hp).__name__ for hp in self.hyperparams.values()
                            if hp.transforms_inputs]
            if transforming:
                raise TypeError(f"{transforming}: kinds that transform the inputs need "
                                "array inputs, not a dict X")
            self._hp_ensure(x)
            return super().infer(x, **fit_params)
        self._hp_ensure(x)
        n = x.shape[0]
        x = self.hp_objective_.transform(self.hp_raw_, x, self.hp_generator_)
        return average_replicas(first_output(self.module_(x, **fit_params)), n)

    def _transforms_inputs(self) -> bool:
        return any(hp.transforms_inputs for hp in (self.hyperparams or {}).values())

    def _test_time_average(self, x, draws: int, **fit_params):
        """The module's output averaged over ``x`` itself and ``draws`` draws of the
        learned input transforms (test-time augmentation); outputs (logits or
        probabilities, whatever the module returns) are averaged.

        The draws come from a generator seeded the same on every call (every batch), so
        predicting the same batch twice gives the same result; a row's warps depend on
        its position in its batch, so predictions depend (slightly) on how rows are
        batched (``batch_size``)."""
        self._hp_ensure(x)
        n = x.shape[0]
        generator = torch.Generator(device=x.device).manual_seed(0)
        total = first_output(self.module_(x, **fit_params))
        for _ in range(draws):
            warped = transform_inputs(self.hp_bound_, self.hp_raw_, x, generator)
            total = total + average_replicas(first_output(self.module_(warped, **fit_params)),
                                              n)
        return total / (draws + 1)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Training loss with the learned values when ``training``, else the plain criterion.

        The validation loss that skorch reports stays the net's own criterion, the same
        quantity the tuner's outer loss optimised.
        """
        if not training or not self.hyperparams:
            return super().get_loss(y_pred, y_true, X=X, training=training)
        if getattr(self, "hp_bound_", None) is None:
            self._hp_ensure(to_tensor(_unwrap(X)[0], device=self.device))
        y_true = to_tensor(y_true, device=self.device)
        if self.hp_crit_.is_classifier:
            y_true = y_true.long()
        elif self.hp_crit_.binary:
            # as NeuralNetBinaryClassifier.infer, which the learned forward bypasses
            if y_pred.dim() == 2 and y_pred.shape[1] == 1 and y_true.dim() == 1:
                y_pred = y_pred.reshape(-1)
            y_true = y_true.to(y_pred.dtype)
        theta = dict(self.module_.named_parameters())
        return self.hp_objective_.training_loss(self.hp_raw_, y_pred, y_true,
                                                getattr(self, "hp_rows_", None), theta)


def _user_class(cls: type) -> type:
    """The class right after ``_LearnedMixin`` in ``cls``'s MRO (the user's net class)."""
    mro = cls.__mro__
    return mro[mro.index(_LearnedMixin) + 1]


def _user_class_has(net, name: str) -> bool:
    """Whether the user's class offers ``name`` on ``net`` (a subclass may hide a method
    of skorch's, e.g. ``predict_proba``; the learned net must not bring it back)."""
    return hasattr(super(_LearnedMixin, net), name)


def _skorch_base(cls: type) -> type:
    """skorch's own class that ``cls`` derives from."""
    for base in (NeuralNetClassifier, NeuralNetBinaryClassifier, NeuralNetRegressor, NeuralNet):
        if issubclass(cls, base):
            return base
    raise TypeError(f"expected a skorch NeuralNet class, got {cls.__name__}")


def _as_rows(X):
    """A pandas ``DataFrame`` as its array of rows; anything else as it is."""
    return X.to_numpy() if hasattr(X, "columns") and hasattr(X, "iloc") else X


def _unwrap(X):
    """``(X as the user gave it, row indices or None)`` from a possibly wrapped batch."""
    if isinstance(X, Mapping) and ROW_KEY in X:
        x = {k: v for k, v in X.items() if k != ROW_KEY}
        if set(x) == {WRAP_KEY}:
            x = x[WRAP_KEY]
        return x, X[ROW_KEY]
    return X, None


def _is_wrapped(X) -> bool:
    return isinstance(X, Mapping) and ROW_KEY in X


def _wrap_rows(X):
    rows = np.arange(get_len(X), dtype=np.int64)
    if isinstance(X, Mapping):
        out = dict(X)
        out[ROW_KEY] = rows
        return out
    return {WRAP_KEY: X, ROW_KEY: rows}


class LearnedNet(_LearnedMixin, NeuralNet):
    """``skorch.NeuralNet`` that trains with learned hyperparameter values.

    Parameters
    ----------
    module, *args, **kwargs
        As for :class:`skorch.NeuralNet`.
    hyperparams : dict of str -> Hyperparameter
        The kinds that were tuned.
    learned_values : dict of str -> value
        Their learned values in public form (``BoundHyperparameter.to_public``).
    tta : int, default=0
        Test-time augmentation with learned input transforms (``AffineAugmentation``):
        in evaluation, average the module's output over the input and ``tta`` warps
        drawn from the learned ranges (seeded the same for every batch, so a batch
        predicted twice gives the same result; a row's warps depend on its position in
        its batch). 0: off. Set it on a tuner's refit net with
        ``tuner.best_estimator_.set_params(tta=8)``, or ``<step>__tta=8`` when the
        estimator is a ``Pipeline``.

    Notes
    -----
    During training (``module_.training``) the forward applies learned input transforms
    and ``get_loss`` returns ``mean_i w_i l_i + penalties`` (see the module docstring);
    in evaluation (validation, ``predict``) the net behaves like the plain one (but for
    ``tta``). Floating
    array inputs are cast to the module's dtype first (a ``Pipeline``'s preprocessing
    may hand over float64 rows).

    :class:`~sgld_tuner.hyperparams.SampleWeights` are indexed by row position: weight
    ``k`` belongs to row ``k`` of the ``X`` passed to ``fit`` (the full training set, in
    order). ``fit`` therefore wraps ``X`` in a dict ``{"__sgld_X__": X, "__sgld_row__":
    arange(n)}`` (or adds the row key to a dict ``X``); skorch slices it with every batch and
    ``infer`` unwraps it before calling the module, so internal ``train_split`` and
    shuffling keep rows and weights aligned. ``len(X)`` must equal the number of learned
    weights.
    """


class LearnedNetClassifier(_LearnedMixin, NeuralNetClassifier):
    """``skorch.NeuralNetClassifier`` that trains with learned hyperparameter values.

    See :class:`LearnedNet` for the parameters and the training-time behaviour.
    """


class LearnedNetRegressor(_LearnedMixin, NeuralNetRegressor):
    """``skorch.NeuralNetRegressor`` that trains with learned hyperparameter values.

    See :class:`LearnedNet` for the parameters and the training-time behaviour.
    """


_LEARNED_CLASSES: dict[type, type] = {NeuralNet: LearnedNet,
                                       NeuralNetClassifier: LearnedNetClassifier,
                                       NeuralNetRegressor: LearnedNetRegressor}


def learned_class(net_class: type) -> type:
    """The class of a net of class ``net_class`` that trains with learned values.

    Parameters
    ----------
    net_class : type
        A skorch ``NeuralNet`` class, possibly the user's own subclass.

    Returns
    -------
    type
        ``LearnedNet``/``LearnedNetClassifier``/``LearnedNetRegressor`` for skorch's own
        classes, ``net_class`` itself when it already trains with learned values, else a
        subclass ``Learned<Name>(_LearnedMixin, net_class)`` created once and cached, so
        that the user's own methods (e.g. ``score_samples``) and ``isinstance`` checks
        carry over. Such instances pickle by rebuilding the class from ``net_class``,
        which must therefore be importable.
    """
    if issubclass(net_class, _LearnedMixin):
        return net_class
    cls = _LEARNED_CLASSES.get(net_class)
    if cls is None:
        name = f"Learned{net_class.__name__}"
        cls = type(name, (_LearnedMixin, net_class), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"``{net_class.__name__}`` that trains with learned hyperparameter "
                       "values (see :class:`LearnedNet`)."})
        _LEARNED_CLASSES[net_class] = cls
    return cls


def _rebuild_learned(net_class: type):
    """Unpickling helper: an empty instance of ``learned_class(net_class)``."""
    cls = learned_class(net_class)
    return cls.__new__(cls)


def make_learned_net(estimator, hyperparams: dict[str, Hyperparameter], values: dict[str, object]):
    """Fresh unfitted clone of the user's net whose training uses the learned values.

    Parameters
    ----------
    estimator : skorch.NeuralNet
        The user's net (fitted or not; only its parameters are read).
    hyperparams : dict of str -> Hyperparameter
        The tuned kinds (cloned into the new net).
    values : dict of str -> object
        Learned values in public form (``to_public``); deep-copied.

    Returns
    -------
    skorch.NeuralNet
        An instance of ``learned_class(type(estimator))``: a subclass of the user's own
        class, so its methods and ``isinstance`` checks carry over. During training the
        learned ``get_loss`` and ``infer`` take precedence over the user's overrides of
        those two; a warning says so when the class has them.
    """
    if not isinstance(estimator, NeuralNet):
        raise TypeError(f"expected a skorch NeuralNet, got {type(estimator).__name__}")
    cls = learned_class(type(estimator))
    overridden = [name for name in ("get_loss", "infer")
                  if getattr(type(estimator), name) is not getattr(_skorch_base(cls), name)
                  and not issubclass(type(estimator), _LearnedMixin)]
    if overridden and hyperparams:
        warnings.warn(
            f"{type(estimator).__name__} overrides {overridden}; while training, the learned "
            f"net's own {overridden} apply the learned values instead", UserWarning,
            stacklevel=2)
    params = {k: v for k, v in estimator.get_params(deep=False).items()
              if not k.startswith("_") and k not in ("hyperparams", "learned_values")}
    params = {k: clone(v, safe=False) for k, v in params.items()}
    return cls(hyperparams={k: clone(v) for k, v in hyperparams.items()},
               learned_values=copy.deepcopy(dict(values)), **params)
