"""The resumable search state, and the file format a tuner is saved in.

:class:`SearchState` holds everything a search needs to continue exactly where it
stopped (after a Ctrl-C, a timeout, :func:`load`, or with a larger ``n_outer``): the
splits and seeds, the chains and their random streams, the hyperparameters and the outer
optimizer, the scored points and the records. It pickles as is.
"""
from __future__ import annotations

import os
import pickle
import secrets
import stat
from dataclasses import dataclass, field

import joblib
import numpy as np
from joblib import hash as joblib_hash
from sklearn.base import clone

from ..core import ChainState


@dataclass
class SearchState:
    """Everything a search needs to continue exactly where it stopped (pickles as is)."""

    data_hash: str
    splits: list
    seeds: np.ndarray
    refit_seed: int
    chain_states: list
    generator_states: list
    fit_times: list
    last_fit_times: list
    lam: list | None = None
    lam_spec: object = None
    optimizer_state: dict | None = None
    iteration: int = 0
    outer_lr_scale: float = 1.0
    inner_lr_scale: float = 1.0
    best_value: float = -np.inf
    points: list = field(default_factory=list)
    records: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    module_rng_states: list | None = None
    settings_hash: dict | None = None
    #: the net's parameters this search's chains train with (a lane of a race), if any
    net_params: dict | None = None
    #: the race that chose this lane, one dict per rung (``n_candidates``,
    #: ``n_resources``: the lanes it ran and the inner steps per fold it judged them at)
    rungs: list = field(default_factory=list)

    @classmethod
    def fresh(cls, data_hash: str, settings_hash: dict, splits: list, seeds: np.ndarray,
              refit_seed: int, net_params: dict | None = None) -> "SearchState":
        """A search not started yet, with its per-fold seeds (nets, noise) and the
        refit's seed (:func:`draw_seeds`)."""
        return cls(data_hash=data_hash, settings_hash=settings_hash, splits=splits,
                   seeds=seeds, refit_seed=refit_seed,
                   chain_states=[ChainState() for _ in splits],
                   generator_states=[None] * len(splits), fit_times=[0.0] * len(splits),
                   last_fit_times=[0.0] * len(splits), net_params=net_params)

    def keep(self, lam, optimizer, folds) -> None:
        """Record where the search ended: ``lam``, the outer optimizer and every fold's
        chain, streams and time."""
        self.lam = [t.detach().clone() for t in lam]
        self.optimizer_state = optimizer.state_dict()
        self.chain_states = [fold.state for fold in folds]
        self.generator_states = [fold.generator_states() for fold in folds]
        self.module_rng_states = [fold.module_rng_states for fold in folds]
        self.fit_times = [fold.fit_time for fold in folds]

    def publish(self, fields: dict) -> None:
        """Set ``fields``: the commit of an iteration's bookkeeping, built aside so that
        a Ctrl-C before it leaves the state untouched."""
        for name, value in fields.items():
            setattr(self, name, value)


def draw_seeds(rng, n_splits: int) -> tuple[np.ndarray, int]:
    """Per-fold seeds (``(n_splits, 2)``: the net's start, the chain's stream) and the
    refit's seed, drawn once per fit from ``rng`` (a ``RandomState``): every lane of the
    fit shares them (common random numbers)."""
    seeds = rng.randint(0, 2**31 - 1, size=(n_splits, 2))
    return seeds, int(rng.randint(0, 2**31 - 1))


def fingerprint(value) -> str:
    """``joblib.hash`` of ``value``, or its type's name where that is not stable."""
    if isinstance(value, np.random.RandomState) or \
            isinstance(getattr(value, "random_state", None), np.random.RandomState):
        return type(value).__name__
    try:
        return joblib_hash(value)
    except Exception:  # noqa: BLE001 - e.g. a generator of splits cannot be pickled
        return type(value).__name__


#: the net's parameters that change how its chains and its refit train
NET_TRAINING = ("lr", "batch_size", "max_epochs", "module", "optimizer", "criterion")


def settings_fingerprints(net, hyperparams: dict, cv, random_state, *, scoring=None,
                          groups=None, sampler=None, outer=None, schedule=None) -> dict:
    """Fingerprints of everything a resumed search must share with the saved one for
    its results to mean one thing: the hyperparameters, the net's module and training
    settings (``lr``, ``batch_size``, ``max_epochs``, optimizer, criterion), ``cv`` and
    the ``groups`` its splits came from, ``random_state``, ``scoring``, the chains'
    settings (``SamplerSettings``), the outer step's (``OuterSettings`` but its
    ``timeout``, a budget a resume may change) and the ``schedule``.

    A value that cannot be hashed reliably (a generator of splits, a ``RandomState``
    instance, whose state moves) is fingerprinted by its type only.
    """
    trains = {k: v for k, v in net.get_params(deep=False).items()
              if k in NET_TRAINING or k.startswith(tuple(n + "__" for n in NET_TRAINING))}
    values = {"hyperparams": {k: clone(v) for k, v in hyperparams.items()},
              "module": {k: v for k, v in trains.items() if k.startswith("module")},
              "net training settings": {k: v for k, v in trains.items()
                                        if not k.startswith("module")},
              "cv": cv, "groups": groups, "random_state": random_state,
              "scoring": _scoring_names(scoring),
              "sampler": None if sampler is None else sampler.get_params(),
              # the saved outer optimizer's state carries its kind and lr: a new one
              # would be overwritten by it in silence
              "outer": None if outer is None else {
                  k: v for k, v in outer.get_params().items() if k != "timeout"},
              "schedule": None if schedule is None else (type(schedule).__name__,
                                                         schedule.get_params())}
    return {name: fingerprint(value) for name, value in values.items()}


def resumable(previous: SearchState | None, data_hash: str,
              settings_hash: dict) -> SearchState | None:
    """``previous``, the saved search a ``warm_start=True`` fit continues, when it was
    made on the same data and settings (None: nothing to continue); a ``ValueError``
    naming what changed otherwise. A state saved before a fingerprint existed is not
    held to it."""
    if previous is None:
        return None
    if previous.data_hash != data_hash:
        raise ValueError("warm_start=True continues a search on the same X and y; "
                         "this data differs. Fit with warm_start=False to start over.")
    saved = getattr(previous, "settings_hash", None) or settings_hash
    changed = [name for name in settings_hash
               if name in saved and saved[name] != settings_hash[name]]
    if changed:
        raise ValueError(
            f"warm_start=True continues the saved search, but {', '.join(changed)} "
            "changed since it started: set them back, or fit with warm_start=False "
            "to start over")
    return previous


def _scoring_names(scoring):
    """``scoring`` as names: a callable by its qualified name (a scorer object's state,
    e.g. a call counter, must not make a resumed search look different)."""
    if callable(scoring):
        kind = scoring if hasattr(scoring, "__qualname__") else type(scoring)
        return f"{getattr(kind, '__module__', '')}.{kind.__qualname__}"
    if isinstance(scoring, dict):
        return {k: _scoring_names(v) for k, v in scoring.items()}
    if isinstance(scoring, (list, tuple, set)):
        return sorted(_scoring_names(v) for v in scoring)
    return scoring


def regrouped(saved: dict, optimizer) -> dict:
    """``saved`` (an outer optimizer's ``state_dict``) fitted to ``optimizer``'s groups.

    A search saved before each kind had a group of its own has one group over all
    leaves, in the same leaf order: its per-leaf state (Adam's moments) carries over, and
    each new group keeps its own ``lr`` (the kind's scale) times the saved shrink factor.
    """
    groups = optimizer.state_dict()["param_groups"]
    if len(saved["param_groups"]) == len(groups):
        return saved
    (old,) = saved["param_groups"]
    base = optimizer.defaults["lr"]
    regrouped = [{**old, "params": g["params"], "lr": g["lr"] * old["lr"] / base}
                 for g in groups]
    return {"state": saved["state"], "param_groups": regrouped}


# The first bytes of every file save() writes: load() reads them before unpickling
# anything, so a file that save() did not write is refused without running code.
SAVE_HEADER = b"sgld_tuner.SGLDHyperTuner save format 1\n"


def save(obj, path) -> None:
    """Write ``obj`` to ``path`` as :data:`SAVE_HEADER` + a joblib pickle, atomically:
    into a temporary file beside ``path``, flushed to disk, then renamed over it, so an
    interrupted or failed save leaves the previous file whole."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".sgld_tuner-{secrets.token_hex(8)}.tmp")
    # created as open() creates a file (0666 less the umask), not mkstemp's 0600; a file
    # saved over keeps its mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(SAVE_HEADER)
            joblib.dump(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(path):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path, cls: type, trusted: bool):
    """Read what :func:`save` wrote to ``path``: an instance of ``cls``."""
    with open(path, "rb") as fh:
        header = fh.read(len(SAVE_HEADER))
        if header != SAVE_HEADER:
            raise ValueError(
                f"{path} was not written by SGLDHyperTuner.save (no "
                f"{SAVE_HEADER.strip().decode()!r} header); refusing to unpickle it")
        if trusted is not True:
            raise ValueError(
                "SGLDHyperTuner.load unpickles, which runs code from the file: pass "
                "trusted=True if you trust it (e.g. you wrote it with save())")
        try:
            obj = joblib.load(fh)
        except (EOFError, pickle.UnpicklingError, ValueError, IndexError) as exc:
            raise ValueError(f"{path} is truncated or corrupt: it starts like a "
                             f"SGLDHyperTuner save but its pickle cannot be read ({exc})"
                             ) from exc
    if not isinstance(obj, cls):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
    return obj
