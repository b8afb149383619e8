"""Posterior ensembles from an SGLD chain at the learned hyperparameters.

HPO-SGLD scores hyperparameters by an expectation over ``p(theta | lam) ∝
exp(-L_T(lam, theta) / tau)``. Once ``lam`` is learned, the same Langevin dynamics can be
run on all training data to draw weights from that distribution; averaging the predictions
of the draws is a (cheap, approximate) posterior predictive.

* :func:`collect_posterior_samples` runs that chain from a trained net and returns
* :class:`PosteriorEnsemble`, a scikit-learn style classifier/regressor whose
  ``predict_proba`` is the mean of the members' probabilities.

Their calibration (ECE, a per-model report) is measured by :mod:`sgld_tuner.calibration`.

Why not ``sgld_tuner.core.hypergradient`` with ``keep_samples=True``: with ``lam`` fixed,
every part of it except the Langevin step is wasted work (an outer loss per step,
vector-Jacobian products for the recursion, a validation split). The chain here uses the
same :func:`~sgld_tuner.core.langevin_step` and the same training objective
(:meth:`NetProblem.inner_loss`, shared with tuning and with the refit net), so it samples
the distribution the tuner averaged over, at one backward pass per step.

See ``docs/ensemble.md`` for usage, measurements and caveats.
"""
from __future__ import annotations

import copy
import functools
import pickle

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone, is_classifier, is_regressor
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if

from .core import _tree
from .core.sgld import langevin_step, make_generator
from .skorch_adapter import NetProblem

__all__ = ["PosteriorEnsemble", "collect_posterior_samples"]


# ----------------------------------------------------------------------------------------
# the ensemble
# ----------------------------------------------------------------------------------------

def _net_kind(net) -> str:
    if is_classifier(net):
        return "classifier"
    if is_regressor(net):
        return "regressor"
    return "net"


class PosteriorEnsemble(BaseEstimator):
    """Average the predictions of one skorch architecture over a list of weight samples.

    A fitted container (like a frozen estimator): it is built from samples, typically by
    :func:`collect_posterior_samples`, and :meth:`fit` does nothing.

    Parameters
    ----------
    net : skorch.NeuralNet
        Gives the architecture, the device and the prediction path (``predict_proba``
        with skorch's own output nonlinearity). Members are evaluated by loading each
        sample into this net's module, so the ensemble owns it: pass a copy if the net is
        used elsewhere. An unfitted net (e.g. after :func:`sklearn.base.clone`) is
        initialised at the first prediction.
    samples : list of dict of str -> torch.Tensor
        One ``module_.state_dict()`` per member, as CPU tensors (parameters and buffers).
    classes : array-like, optional
        Label of each probability column for classifiers; default ``net.classes_``, else
        ``0..n_classes-1``.

    Attributes
    ----------
    n_members_ : int
        Number of samples averaged.
    classes_ : ndarray
        Class labels (classifiers only).

    Notes
    -----
    Classifiers average probabilities, not logits: the posterior predictive
    ``p(y | x) = E_theta[p(y | x, theta)]``. Regressors average the outputs (the
    predictive mean); ``predict(X, return_std=True)`` also gives their spread over the
    members. Prediction costs ``n_members_`` forward passes, and loading samples into
    the shared module makes concurrent predictions from several threads unsafe.
    """

    def __init__(self, net, samples, classes=None):
        self.net = net
        self.samples = samples
        self.classes = classes

    def __repr__(self, N_CHAR_MAX=700):
        # The default repr would print every sample's tensors.
        return (f"{type(self).__name__}(net={type(self.net).__name__}, "
                f"n_members={len(self.samples)})")

    # -- scikit-learn plumbing ------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        kind = _net_kind(self.net)
        if kind != "net":
            from sklearn.utils import get_tags

            inner = get_tags(self.net)
            tags.estimator_type = inner.estimator_type
            tags.classifier_tags = inner.classifier_tags
            tags.regressor_tags = inner.regressor_tags
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return bool(self.samples)

    def fit(self, X=None, y=None, **fit_params):
        """Do nothing: the members are given (see :func:`collect_posterior_samples`).

        Returns
        -------
        self
        """
        return self

    @property
    def n_members_(self) -> int:
        return len(self.samples)

    @property
    def classes_(self) -> np.ndarray:
        if _net_kind(self.net) != "classifier":
            raise AttributeError("classes_ exists for classifiers only")
        if self.classes is not None:
            return np.asarray(self.classes)
        try:
            return np.asarray(self.net.classes_)
        except AttributeError:
            return np.arange(self._output_width())

    # -- members --------------------------------------------------------------------------
    def _ready_net(self):
        if not self.samples:
            raise ValueError("PosteriorEnsemble has no samples")
        if not getattr(self.net, "initialized_", False):
            # e.g. after clone(): the architecture comes back from the net's parameters
            self.net.initialize()
        return self.net

    def _members(self, fn):
        """``fn(net)`` with each sample loaded in turn (module in eval mode)."""
        net = self._ready_net()
        module = net.module_
        outputs = []
        with torch.no_grad():
            for state in self.samples:
                # load_state_dict copies across devices, so CPU samples serve a CUDA net
                module.load_state_dict(state)
                outputs.append(np.asarray(fn(net)))
        return outputs

    def _output_width(self) -> int:
        state = self.samples[0]
        last = [v for k, v in state.items() if k.endswith("bias") or k.endswith("weight")]
        if not last:
            raise AttributeError("cannot tell the number of classes; pass classes=")
        return int(last[-1].shape[0])

    def _mean_output(self, X):
        outs = self._members(lambda net: net.predict_proba(X))
        return np.mean(np.stack(outs, axis=0), axis=0), outs

    # -- prediction -----------------------------------------------------------------------
    def _is_classifier(self):
        return _net_kind(self.net) == "classifier"

    @available_if(_is_classifier)
    def predict_proba(self, X):
        """Mean over the members of their class probabilities.

        Parameters
        ----------
        X : array-like
            Inputs as the net takes them.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``; rows sum to 1.
        """
        mean, _ = self._mean_output(X)
        return mean

    @available_if(_is_classifier)
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X, return_std: bool = False):
        """Class of largest mean probability (classifiers) or mean output (otherwise).

        Parameters
        ----------
        X : array-like
        return_std : bool, default=False
            Regressors and plain nets only: also return the standard deviation of the
            members' outputs (the spread of the samples, not a noise model).

        Returns
        -------
        ndarray, or (ndarray, ndarray) with ``return_std``
        """
        mean, outs = self._mean_output(X)
        if self._is_classifier():
            if return_std:
                raise ValueError("return_std is for regressors; use predict_proba")
            return self.classes_[mean.argmax(axis=1)]
        if return_std:
            return mean, np.std(np.stack(outs, axis=0), axis=0)
        return mean

    def score(self, X, y, sample_weight=None):
        """Accuracy (classifiers) or R^2 (regressors) of :meth:`predict`."""
        kind = _net_kind(self.net)
        if kind == "classifier":
            return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
        if kind == "regressor":
            pred = self.predict(X)
            y = np.asarray(y)
            if pred.ndim == 2 and pred.shape[1] == 1 and y.ndim == 1:
                pred = pred[:, 0]
            return float(r2_score(y, pred, sample_weight=sample_weight))
        raise TypeError("score needs a NeuralNetClassifier or NeuralNetRegressor")

    def predict_members(self, X) -> np.ndarray:
        """Each member's ``predict_proba`` output, stacked: shape ``(n_members_, ...)``."""
        return np.stack(self._members(lambda net: net.predict_proba(X)), axis=0)


# ----------------------------------------------------------------------------------------
# the chain
# ----------------------------------------------------------------------------------------

def _state_dict_with(module, theta: dict) -> dict:
    """``module.state_dict()`` on CPU with the parameters replaced by ``theta``.

    Tied parameters appear under several names in a state dict but once in
    ``named_parameters``: map each name to its tensor so all aliases get the sample.
    """
    canonical = {id(p): name for name, p in module.named_parameters()}
    aliases = dict(module.named_parameters(remove_duplicate=False))
    out = {}
    for key, value in module.state_dict().items():
        if key in aliases:
            value = theta[canonical[id(aliases[key])]]
        out[key] = value.detach().to("cpu", copy=True)
    return out


def collect_posterior_samples(net, hyperparams, learned_values, X, y, *, n_samples: int = 20,
                              burn_in: int = 50, thin: int = 10, inner_lr: float | None = None,
                              temperature: float = 1e-4, noise_scale: float = 1.0,
                              batch_size: int | None = None, random_state=None,
                              classes=None) -> PosteriorEnsemble:
    """Draw weights by SGLD on all training data at fixed hyperparameters; return an ensemble.

    The chain starts at the trained net's weights and runs

        theta <- theta - inner_lr * grad L_T(lam, theta) + sqrt(2 inner_lr tau) kappa z

    on minibatches of ``X, y`` with the learned values ``lam`` held fixed: the inner
    dynamics of HPO-SGLD without the hypergradient. After ``burn_in`` steps every
    ``thin``-th state is kept, ``n_samples`` in all (``burn_in + thin * n_samples`` steps).

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialised (normally fitted) net, e.g. ``SGLDHyperTuner.best_estimator_``.
        It is not modified: the chain runs on a deep copy, which the ensemble keeps.
    hyperparams : dict of str -> Hyperparameter or None
        The tuned kinds; ``None`` takes them from a
        :class:`~sgld_tuner.skorch_adapter.LearnedNet` (``net.hyperparams``), or uses the
        plain training loss.
    learned_values : dict or None
        Their values in public form (``SGLDHyperTuner.best_params_``); ``None`` takes
        ``net.learned_values``.
    X, y : array-like
        All training data, as the net was trained on it (for classifiers, labels as the
        criterion takes them, i.e. what ``net.fit`` got). Learned per-row weights
        (``SampleWeights``) index these rows in order.
    n_samples : int, default=20
        Members of the ensemble (each prediction costs this many forward passes).
    burn_in : int, default=50
        Steps run before the first kept sample.
    thin : int, default=10
        Steps between kept samples (>= 1); consecutive SGLD states are strongly
        correlated, so keeping all of them adds cost without adding diversity.
    inner_lr : float, optional
        Step size ``eta``; default the net's ``lr``.
    temperature : float, default=1e-4
        ``tau`` (>= 0). ``p(theta | lam) ∝ exp(-L_T / tau)`` with ``L_T`` a *mean* loss over
        ``n`` rows is the Bayesian posterior (with the penalties as a prior) at
        ``tau = 1 / n``; smaller is colder (closer to the trained point).
    noise_scale : float, default=1.0
        ``kappa`` (>= 0); ``0`` turns the chain into minibatch SGD.
    batch_size : int, optional
        Minibatch size; default the net's ``batch_size``; ``-1`` is full batch.
    random_state : int, RandomState or None
        Seeds the minibatches, the Langevin noise and (inside the chain only) torch's
        global RNG, which dropout draws from.
    classes : array-like, optional
        Passed to :class:`PosteriorEnsemble`; default ``net.classes_``.

    Returns
    -------
    PosteriorEnsemble

    Notes
    -----
    Tensors stay on the net's device during the chain; only the kept samples are
    copied to CPU (pickling, memory on the accelerator).
    """
    _check_chain_args(n_samples, burn_in, thin, inner_lr, temperature, noise_scale)
    hyperparams, learned_values, inner_lr, batch_size, classes = _chain_defaults(
        net, hyperparams, learned_values, inner_lr, batch_size, classes)
    X = np.asarray(X)
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X and y have different lengths ({len(X)} and {len(y)})")
    work = _working_copy(net)  # the user's net (module mode, BN buffers) stays untouched
    step = functools.partial(langevin_step, lr=inner_lr, temperature=temperature,
                             noise_scale=noise_scale)
    samples = _seeded_chain(work, hyperparams, learned_values, X, y, step,
                            batch_size=batch_size, random_state=random_state,
                            burn_in=burn_in, thin=thin, n_samples=n_samples)
    work.module_.load_state_dict(samples[-1])
    work.module_.eval()
    return PosteriorEnsemble(work, samples, classes=classes)


def _working_copy(net):
    """A copy of the initialized ``net``. skorch copies a net by pickling it, which fails
    for a module class defined inside a function: then a clone initialized afresh, given
    the net's module state (parameters, buffers, mode)."""
    try:
        return copy.deepcopy(net)
    except (AttributeError, pickle.PicklingError):
        work = clone(net).initialize()
        work.module_.load_state_dict(net.module_.state_dict())
        work.module_.train(net.module_.training)
        return work


def _seeded_chain(work, hyperparams, learned_values, X, y, step, *, batch_size, random_state,
                  burn_in, thin, n_samples) -> list:
    """Seed the chain's generators from ``random_state`` and run it on the net ``work``."""
    module = work.module_
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    rng = check_random_state(random_state)
    chain_seed, global_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
    generator = make_generator(chain_seed, device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        # Dropout and other in-module randomness draw from torch's global RNG, which the
        # functional forward cannot reroute: seed it here so random_state fixes the chain,
        # inside fork_rng so the caller's stream is left as it was.
        torch.manual_seed(global_seed)
        # No validation split: the outer loss is never evaluated here.
        problem = NetProblem(work, hyperparams, X, y, X[:0], y[:0], batch_size=batch_size,
                             generator=generator, n_train_total=len(X))
        lam = {name: b.from_public(learned_values[name], problem.device, problem.dtype)
               for name, b in problem.bound.items()}
        return _run_chain(problem, lam, module, functools.partial(step, generator=generator),
                          burn_in=burn_in, thin=thin, n_samples=n_samples)


def _chain_defaults(net, hyperparams, learned_values, inner_lr, batch_size, classes):
    """Fill the chain settings left as ``None`` from the (fitted) net, and check them."""
    if not getattr(net, "initialized_", False):
        raise ValueError("collect_posterior_samples needs a fitted (initialised) skorch net")
    if hyperparams is None:
        hyperparams = getattr(net, "hyperparams", None) or {}
    if learned_values is None:
        learned_values = getattr(net, "learned_values", None) or {}
    missing = [k for k in hyperparams if k not in learned_values]
    if missing:
        raise ValueError(f"learned_values lacks values for hyperparameters {missing}")
    if inner_lr is None:
        inner_lr = float(net.lr)
    if batch_size is None:
        batch_size = getattr(net, "batch_size", -1)
    if classes is None and _net_kind(net) == "classifier":
        try:
            classes = np.asarray(net.classes_)
        except AttributeError:
            classes = None
    return hyperparams, learned_values, inner_lr, batch_size, classes


def _run_chain(problem, lam, module, step, *, burn_in, thin, n_samples) -> list:
    """Run ``burn_in + thin * n_samples`` Langevin steps; return the kept CPU state dicts.

    ``step(theta, grads)`` is the Langevin update with its settings bound.
    """
    theta, spec = _tree.flatten(problem.theta0())
    samples = []
    for k in range(1, burn_in + thin * n_samples + 1):
        theta = [t.detach().requires_grad_(True) for t in theta]
        loss = problem.inner_loss(lam, _tree.unflatten(theta, spec))
        grads = _tree.fill_none(torch.autograd.grad(loss, theta, allow_unused=True), theta)
        theta = step(theta, grads)
        if k > burn_in and (k - burn_in) % thin == 0:
            # Checked only at kept samples: a per-step check would synchronise a CUDA
            # device every step, and a NaN, once in theta, stays there.
            if not all(bool(torch.isfinite(t).all()) for t in theta):
                raise FloatingPointError(
                    f"the SGLD chain diverged by step {k} (non-finite weights); "
                    "lower inner_lr or temperature")
            samples.append(_state_dict_with(module, _tree.unflatten(theta, spec)))
    return samples


def _check_chain_args(n_samples, burn_in, thin, inner_lr, temperature, noise_scale):
    checks = {
        "n_samples": isinstance(n_samples, (int, np.integer)) and n_samples >= 1,
        "burn_in": isinstance(burn_in, (int, np.integer)) and burn_in >= 0,
        "thin": isinstance(thin, (int, np.integer)) and thin >= 1,
        "inner_lr": inner_lr is None or (np.isfinite(inner_lr) and inner_lr > 0),
        "temperature": np.isfinite(temperature) and temperature >= 0,
        "noise_scale": np.isfinite(noise_scale) and noise_scale >= 0,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        values = {"n_samples": n_samples, "burn_in": burn_in, "thin": thin,
                  "inner_lr": inner_lr, "temperature": temperature, "noise_scale": noise_scale}
        shown = ", ".join(f"{n}={values[n]!r}" for n in bad)
        raise ValueError(f"invalid chain settings: {shown} (need n_samples >= 1, burn_in >= 0, "
                         "thin >= 1, inner_lr > 0, temperature >= 0, noise_scale >= 0)")
