"""The search's settings, grouped: the chains' (:class:`SamplerSettings`) and the outer
loop's (:class:`OuterSettings`).

Each group is a small scikit-learn estimator-like object: its fields are reachable from
the tuner by ``get_params(deep=True)`` and ``set_params(sampler__temperature=...)``, so
``GridSearchCV`` can search over them, and ``clone`` copies them.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import Interval, Options, StrOptions

from ..core import METHODS, InnerSettings
from ..core.sgld import NOISES
from ..core.recursions import RECURSIONS


def _rule(name: str) -> Interval:
    """scikit-learn's constraint for an inner setting, from its one rule in
    :attr:`InnerSettings.BOUNDS <sgld_tuner.core.problem.InnerSettings.BOUNDS>`."""
    kind, low, high, closed = InnerSettings.BOUNDS[name]
    return Interval(kind, low, high, closed=closed)


#: ``temperature="auto"``: the temperature of the summed training loss (``tau * n``)
AUTO_TEMPERATURE = 1e-2
#: ``temperature="auto"``: never hotter than this (the fixed default on small data)
MAX_AUTO_TEMPERATURE = 1e-4


class _Group(BaseEstimator):
    """A group of settings: validated by :meth:`check`, never fitted."""

    def check(self) -> "_Group":
        """Validate every field against its constraint; returns ``self``."""
        self._validate_params()
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class SamplerSettings(_Group):
    """How each fold's chain samples the net's weights (HPO-SGLD's inner loop).

    Parameters
    ----------
    burn_in, n_samples : int, default=5, 5
        SGLD steps per outer iteration discarded (``B``) and averaged (``M``). Where
        the net's own training run (``max_epochs`` passes over a fold's rows) is longer
        than ``n_outer * (B + M)`` steps, ``B`` grows so that the ``n_outer``
        iterations span it: on large data the chains reach the horizon the refit trains
        at, and the hyperparameters take as many steps per training run as on small
        data (persistent SGLD chains, ``n_outer > 1``); the tracked adjoint then steps
        at most ten times per outer iteration (``curvature_every`` in ``options``
        overrides it).
    temperature : float or "auto", default="auto"
        ``tau`` of ``p(theta | lam) ∝ exp(-L_T / tau)``, ``L_T`` the mean training loss.
        ``"auto"``: ``min(1e-4, 1e-2 / n)`` (``MAX_AUTO_TEMPERATURE``,
        ``AUTO_TEMPERATURE``), ``n`` the rows a chain trains on (a fold's training rows;
        the whole training set for the refit's posterior ensemble). That is the
        distribution of the *summed* loss at a fixed temperature: the chains' weight
        noise shrinks as the data grows, as a posterior's does. A fixed ``tau`` over the
        mean loss is ever hotter relative to the data: on large data the chains scored
        well below the net trained without noise, and the race ranked learning rates by
        that noise (``docs/benchmarks.md``, the scale section). Folds of up to 100 rows
        keep ``1e-4``, the fixed default before ``"auto"``.
    noise_scale : float, default=1.0
        ``kappa``: noise std per step is ``sqrt(2 * inner_lr * tau) * kappa``.
    inner_lr : float, optional
        Inner step size; defaults to the net's ``lr``.
    batch_size : int, optional
        Inner minibatch size; defaults to the net's (``iterator_train__batch_size`` or
        ``batch_size``; -1: full batch). The chains take their minibatches as the net's
        ``DataLoader`` does: passes over the fold's rows, in order or shuffled
        (``iterator_train__shuffle``), each ending with its partial batch unless
        ``iterator_train__drop_last`` (:mod:`sgld_tuner.minibatches`).
    method : {"sgld", "rmd", "rmd-fo", "fmd", "ift-cg", "ift-neumann"}, default="sgld"
        HPO-SGLD, or one of the classic baselines.
    recursion : {"auto", "tracked", "damped", "paper", "gibbs"}, default="auto"
        The hypergradient strategy along each fold's chain. ``"auto"`` is ``"tracked"``
        (an adjoint tracked along the chain, chosen by measurement against exact
        references: ``docs/bias.md``), or ``"damped"`` when a kind rewrites the training
        loss itself (``TaylorLoss``: a learned loss need not have a minimum, which the
        adjoint assumes). ``"paper"`` is eq. 22 as published.
    chain : {"persistent", "restart"}, default="persistent"
        Whether an outer iteration continues each fold's chain or restarts it.
    warm_up : int or "epochs", default=0
        Inner steps each fold's chain runs at the initial values before the first outer
        step. ``"epochs"``: the net's own budget (``max_epochs`` passes over the fold's
        training rows), so that the first scored point is a net trained as the refit
        will be. Only for the persistent SGLD chain.
    outer_batch_size : int or None, default=128
        Validation rows per evaluation of the outer loss inside the chain (drawn anew
        each step); ``None`` uses the whole split at every step. Scoring for
        ``cv_results_`` always uses the whole split (``docs/performance.md``).
    batch_folds : "auto" or bool, default="auto"
        Run the folds' chains as one computation over stacked weights
        (:mod:`sgld_tuner.search.stacked`), only where that computes what the folds one
        by one do (a recursion that declares itself stackable, a module without buffers,
        tied weights or random layers), up to float rounding: batched products sum in
        another order, and the difference can grow along a long search
        (``docs/reliability.md``, the fourth sweep). ``"auto"``: when ``n_jobs`` is None or 1 and the net has
        at most ``sgld_tuner.search.stacked.AUTO_MAX_WEIGHTS`` weights.
    options : dict, optional
        Further fields of :class:`~sgld_tuner.core.InnerSettings`: the baselines'
        ``n_inner``, ``cg_iters``, ``cg_damping``, ``neumann_iters``, ``neumann_alpha``;
        ``curvature_every`` of the tracked and damped recursions; ``sampler``,
        ``momentum``, ``beta2``, ``precond_eps`` (by default from the net's optimizer).
    noise : {"rademacher", "gaussian"}, default="rademacher"
        The chains' noise increments: random signs, or standard normal draws (the
        paper's). Both have mean 0 and variance 1 and sample the same distribution to the
        same order in the step (the simplified weak Euler scheme;
        :class:`~sgld_tuner.core.InnerSettings`); the signs are much cheaper to draw on
        a CPU, where a normal draw per weight is a visible share of a large net's chain
        step (``docs/performance.md``).
    """

    _parameter_constraints: dict = {
        "burn_in": [_rule("burn_in")],
        "n_samples": [_rule("n_samples")],
        "temperature": [_rule("temperature"), StrOptions({"auto"})],
        "noise_scale": [_rule("noise_scale")],
        "inner_lr": [_rule("inner_lr"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
        "method": [StrOptions(set(METHODS))],
        "recursion": [StrOptions({"auto", *RECURSIONS})],
        "chain": [StrOptions({"persistent", "restart"})],
        "warm_up": [Interval(Integral, 0, None, closed="left"), StrOptions({"epochs"})],
        "outer_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "batch_folds": [StrOptions({"auto"}), "boolean"],
        "options": [dict, None],
        "noise": [StrOptions(set(NOISES))],
    }

    def __init__(self, burn_in=5, n_samples=5, temperature="auto", noise_scale=1.0,
                 inner_lr=None, batch_size=None, method="sgld", recursion="auto",
                 chain="persistent", warm_up=0, outer_batch_size=128, batch_folds="auto",
                 options=None, noise="rademacher"):
        self.burn_in = burn_in
        self.n_samples = n_samples
        self.temperature = temperature
        self.noise_scale = noise_scale
        self.inner_lr = inner_lr
        self.batch_size = batch_size
        self.method = method
        self.recursion = recursion
        self.chain = chain
        self.warm_up = warm_up
        self.outer_batch_size = outer_batch_size
        self.batch_folds = batch_folds
        self.options = options
        self.noise = noise

    def temperature_for(self, n_rows: int) -> float:
        """The chains' ``tau`` for a chain that trains on ``n_rows`` rows."""
        if self.temperature != "auto":
            return float(self.temperature)
        return min(MAX_AUTO_TEMPERATURE, AUTO_TEMPERATURE / max(1, int(n_rows)))

    def check(self) -> "SamplerSettings":
        super().check()
        if isinstance(self.warm_up, bool):
            raise ValueError(f"warm_up must be an int >= 0 or 'epochs', got {self.warm_up!r}")
        if self.warm_up and (self.method != "sgld" or self.chain != "persistent"):
            raise ValueError(f"warm_up={self.warm_up!r} needs method='sgld' with "
                             f"chain='persistent' (got method={self.method!r}, "
                             f"chain={self.chain!r}); set warm_up=0")
        return self


class OuterSettings(_Group):
    """How the hyperparameters move (HPO-SGLD's outer loop) and when points are scored.

    Parameters
    ----------
    lr : float, default=0.05
        Step size of the outer optimizer on the unconstrained hyperparameters. Strengths
        (L1, weight decay) are softplus-scaled: near 1e-4 an Adam step of 0.05 changes
        them by about 5% (like a log scale), so ``n_outer * lr`` bounds how many e-folds
        a strength can travel. Each kind steps at ``lr`` times its ``outer_lr_scale``
        (one optimizer parameter group per kind), so one value serves every kind.
    optimizer : {"adam", "sgd"} or callable, default="adam"
        A callable is called as ``factory(param_groups, lr=...)`` with one group per kind.
    lr_ramp : int or "auto", default="auto"
        Outer iterations over which the outer step ramps up linearly from ``lr /
        lr_ramp`` to ``lr``. ``"auto"``: until the chains have run one training budget
        of the net (``max_epochs`` passes over a fold's rows), at most ``n_outer``: a
        young chain's hypergradient estimates the sensitivity of a trained net, not of
        the one it holds, and can point the other way (``benchmarks/chain_age.py``).
        0: no ramp.
    eval_every : int, default=5
        Score the trajectory every this many outer iterations (and at the last one).
    timeout : float, optional
        Seconds of search after which it ends; checked after each outer iteration, so
        the last iteration and the refit come on top.
    """

    _parameter_constraints: dict = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions({"adam", "sgd"}), callable],
        "lr_ramp": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "eval_every": [Interval(Integral, 1, None, closed="left")],
        "timeout": [Interval(Real, 0, None, closed="neither"), None],
    }

    def __init__(self, lr=0.05, optimizer="adam", lr_ramp="auto", eval_every=5, timeout=None):
        self.lr = lr
        self.optimizer = optimizer
        self.lr_ramp = lr_ramp
        self.eval_every = eval_every
        self.timeout = timeout


#: The tuner's parameters before they were grouped, and where each lives now.
MOVED_PARAMETERS = {
    **{name: f"sampler=SamplerSettings({name}=...)" for name in (
        "burn_in", "n_samples", "temperature", "noise_scale", "inner_lr", "batch_size",
        "method", "recursion", "chain", "warm_up", "outer_batch_size", "batch_folds")},
    "method_options": "sampler=SamplerSettings(options=...)",
    "outer_lr": "outer=OuterSettings(lr=...)",
    "outer_optimizer": "outer=OuterSettings(optimizer=...)",
    "outer_warmup": "outer=OuterSettings(lr_ramp=...)",
    "eval_every": "outer=OuterSettings(eval_every=...)",
    "timeout": "outer=OuterSettings(timeout=...)",
}


def moved_error(names, error: type = TypeError) -> Exception:
    """The error for parameters that moved into a settings group, naming where."""
    where = "; ".join(f"{n} -> {MOVED_PARAMETERS[n]}" for n in sorted(names))
    return error(f"SGLDHyperTuner's {sorted(names)} moved into grouped settings: {where} "
                     "(set_params: 'sampler__<name>' / 'outer__<name>')")


def is_learning_rate(value) -> bool:
    """A finite real number > 0 (a Python or numpy number, or a one-element tensor): the
    one rule for the net's ``lr`` and a race's lr candidates."""
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return 0 < value < math.inf


def _with_kinds_set(hyperparams: dict, settings: dict) -> dict:
    """A copy of ``hyperparams`` with ``settings`` applied: ``hyperparams__<name>``
    replaces a kind, then ``hyperparams__<name>__<param>`` sets a parameter of the kind
    now there (replacements first, whatever the order given, as for a Pipeline's steps).
    A key's kind is the longest name it starts with (names may end in ``_``)."""
    names = sorted(hyperparams, key=len, reverse=True)
    parsed = []
    for key, value in settings.items():
        rest = key[len("hyperparams__"):]
        name = next((n for n in names if rest == n or rest.startswith(n + "__")), None)
        if name is None:
            raise ValueError(f"set_params: no hyperparameter {rest.split('__')[0]!r} in "
                             f"hyperparams (names: {sorted(hyperparams)})")
        parsed.append((name, rest[len(name) + 2:], value))
    out = dict(hyperparams)
    for name, param, value in sorted(parsed, key=lambda entry: bool(entry[1])):
        out[name] = clone(out[name]).set_params(**{param: value}) if param else value
    return out


class GroupedParams:
    """Mixin: scikit-learn's ``get_params`` / ``set_params`` for an estimator whose
    settings live in groups (``sampler``, ``outer``; the tuner adds ``schedule``) and
    whose ``hyperparams`` dict holds estimators of its own; old flat names raise naming
    their new place."""

    def __new__(cls, *args, **kwargs):
        # Parameters that moved into a settings group are named with their new place
        # (in __new__, so that __init__'s signature stays the parameters themselves).
        moved = set(kwargs) & set(MOVED_PARAMETERS)
        if moved:
            raise moved_error(moved)
        return super().__new__(cls)

    _GROUPS = {"sampler": SamplerSettings, "outer": OuterSettings}

    def get_params(self, deep=True):
        """As scikit-learn's, plus each kind's parameters as
        ``hyperparams__<name>__<param>`` (with ``deep``)."""
        params = super().get_params(deep=deep)
        if deep and isinstance(self.hyperparams, dict):
            for name, kind in self.hyperparams.items():
                if hasattr(kind, "get_params"):
                    params.update({f"hyperparams__{name}__{k}": v
                                   for k, v in kind.get_params(deep=False).items()})
        return params

    def set_params(self, **params):
        """As scikit-learn's; ``<group>__<name>`` works on a group's default (``None``)
        too (the groups in ``_GROUPS``: ``sampler``, ``outer``, and the tuner's
        ``schedule``), ``hyperparams__<name>`` replaces a kind and
        ``hyperparams__<name>__<param>`` sets a kind's parameter, both on a copy of the
        dict (the caller's kinds are left alone)."""
        moved = {k.split("__")[0] for k in params} & set(MOVED_PARAMETERS)
        if moved:
            raise moved_error(moved, ValueError)
        for group, cls in self._GROUPS.items():
            if (group not in params and getattr(self, group) is None
                    and any(k.startswith(group + "__") for k in params)):
                setattr(self, group, cls())
        kinds = {k: params.pop(k) for k in list(params) if k.startswith("hyperparams__")}
        if kinds:
            params["hyperparams"] = _with_kinds_set(
                params.pop("hyperparams", self.hyperparams), kinds)
        return super().set_params(**params)

    def __setstate__(self, state):
        # A tuner pickled before the settings were grouped: its flat settings move into
        # the groups (their defaults were those of the groups' fields).
        sampler = {("options" if k == "method_options" else k): state.pop(k)
                   for k in list(state)
                   if k in MOVED_PARAMETERS and MOVED_PARAMETERS[k].startswith("sampler")}
        outer_names = {"outer_lr": "lr", "outer_optimizer": "optimizer",
                       "outer_warmup": "lr_ramp", "eval_every": "eval_every",
                       "timeout": "timeout"}
        outer = {outer_names[k]: state.pop(k) for k in list(state) if k in outer_names}
        if sampler:
            outer.setdefault("lr_ramp", 0)  # no ramp: the behaviour it was fitted with
            state.setdefault("sampler", SamplerSettings(**sampler))
            state.setdefault("outer", OuterSettings(**outer))
            state.setdefault("schedule", None)
        super().__setstate__(state)
