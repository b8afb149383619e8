"""The rules docs/architecture.md states, measured by docs/sizes.py."""
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.core import ChainState, InnerSettings, hypergradient
from sgld_tuner.core.recursions import RECURSIONS, TrackedRecursion

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sizes():
    spec = importlib.util.spec_from_file_location("sizes", DOCS / "sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_room_is_over_its_size_and_no_layer_imports_upwards():
    sizes = _sizes()
    assert sizes.violations([sizes.measure(p) for p in sizes.modules()]) == []


def test_the_tuner_has_at_most_16_constructor_parameters():
    assert len(inspect.signature(SGLDHyperTuner).parameters) <= 16


def test_architecture_doc_quotes_the_measured_sizes():
    """The table in docs/architecture.md is what ``python docs/sizes.py`` prints now."""
    sizes = _sizes()
    table = sizes.table([sizes.measure(p) for p in sizes.modules()])
    assert table in (DOCS / "architecture.md").read_text(), \
        "docs/architecture.md is stale: paste the table `python docs/sizes.py` prints"


class _InPlaceTracked(TrackedRecursion):
    """A strategy that breaks the rule: it keeps the saved adjoint and writes into it."""

    name = "in-place"

    def begin(self, saved, theta):
        super().begin(saved, theta)
        self.held = [] if saved is None else saved.tensors["w"]

    def update(self, step):
        super().update(step)
        with torch.no_grad():
            for w in self.held:
                w.mul_(1.0)  # an in-place write into the state a rollback holds


def test_a_strategy_that_mutates_its_state_in_place_is_caught(monkeypatch):
    """Rollbacks copy chain states shallowly (``FoldChains.checkpoint``): that is right
    only if steps replace the state's tensors. The core checks it at every step."""
    monkeypatch.setitem(RECURSIONS, "in-place", _InPlaceTracked)
    torch.manual_seed(0)
    A = torch.randn(6, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    from sgld_tuner.core import BilevelProblem, _tree

    lam0 = torch.zeros(3, dtype=torch.float64)
    problem = BilevelProblem(lambda lam, th: ((A @ th - b) ** 2).mean(),
                             lambda lam, th: ((A @ th - b) ** 2).mean()
                             + (lam.exp() * th ** 2).sum(),
                             _tree.flatten(lam0)[1], torch.zeros(3, dtype=torch.float64))
    lam = [lam0.clone().requires_grad_(True)]
    gen = torch.Generator().manual_seed(0)
    settings = InnerSettings(recursion="in-place", inner_lr=0.05, burn_in=2, n_samples=2,
                             temperature=0.0).validate()
    state = ChainState()
    hypergradient(problem, lam, state, settings, gen)  # the first step starts fresh
    with pytest.raises(RuntimeError, match="modified in place.*rollback"):
        hypergradient(problem, lam, state, settings, gen)
    # the rule's own strategy passes the same check
    settings = InnerSettings(recursion="tracked", inner_lr=0.05, burn_in=2, n_samples=2,
                             temperature=0.0).validate()
    state = ChainState()
    for _ in range(3):
        hypergradient(problem, lam, state, settings, gen)
