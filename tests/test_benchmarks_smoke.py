"""Every benchmark script still runs end to end (smoke mode, tiny budgets), one test each.

They are scripts, not library code, so nothing else would notice when an API they use
changes. Scripts are found by globbing ``benchmarks/*.py`` (helpers start with ``_``), so
a new one is tested without being listed here. They run through ``benchmarks/_smoke.py``
in two worker processes (one per core of the CI machine), each running its share of the
scripts in one interpreter: importing torch, scikit-learn, skorch and matplotlib is most
of a smoke run's time, and this pays it twice instead of once per script. Results go to
a temporary directory, never over the committed ones in ``benchmarks/results``.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(BENCH, "*.py"))
                 if not os.path.basename(p).startswith("_"))
N_WORKERS = 2
TIMEOUT_S = 300

# Scripts that do not run in smoke mode yet. Their owner empties this set as they are
# fixed; every other script must pass.
_NOT_YET_SMOKE: set[str] = set()

# Scripts that draw a figure: their smoke run must write <name>_smoke.png as well.
PLOTS = {"compare_search", "fewshot_sinusoid", "invariance", "l1_options", "loss_learning",
         "noisy_labels"}


def _selected_scripts(session) -> list[str]:
    """The scripts whose test this session runs (``-k`` may have deselected some)."""
    return sorted({item.callspec.params["script"] for item in session.items
                   if getattr(item, "originalname", None) == "test_benchmark_smoke"
                   and item.callspec.params["script"] not in _NOT_YET_SMOKE})


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """Run the selected scripts once, split over the workers; return the output folder."""
    out = tmp_path_factory.mktemp("benchmarks_smoke")
    scripts = _selected_scripts(request.session)
    env = dict(os.environ, SGLD_TUNER_SMOKE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    procs = []
    for k in range(N_WORKERS):
        share = [os.path.join(BENCH, s + ".py") for s in scripts[k::N_WORKERS]]
        if share:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(BENCH, "_smoke.py"), str(out), *share],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        try:
            proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The scripts this worker had not finished get no status file: they fail below.
            proc.kill()
            proc.communicate()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke(script, smoke_runs):
    if script in _NOT_YET_SMOKE:
        pytest.skip(f"{script} is listed in _NOT_YET_SMOKE")
    status_path = smoke_runs / f"{script}.status.json"
    log_path = smoke_runs / f"{script}.log"
    log = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
    assert status_path.exists(), f"{script} did not finish within {TIMEOUT_S} s:\n{log}"
    status = json.loads(status_path.read_text())
    assert status["ok"], f"{script} failed:\n{status['error']}\n{log}"
    if status["out_dir"] is None:  # no --out-dir: it wrote *_smoke.* under benchmarks/results
        return
    out = smoke_runs / script
    data = json.loads((out / f"{script}_smoke.json").read_text())
    assert data.get("smoke", data.get("meta", {}).get("smoke")) is True
    assert "|" in (out / f"{script}_smoke.md").read_text()
    if script in PLOTS:
        assert (out / f"{script}_smoke.png").stat().st_size > 0
    check = CHECKS.get(script)
    if check is not None:
        check(data)


def _check_compare_search(data):
    methods = {row["method"] for row in data["summary"]}
    assert {"untuned", "GridSearchCV (L1)", "GridSearchCV (lr x wd)", "SGLDHyperTuner",
            "SGLDHyperTuner control (n_outer=1)",
            "hybrid: GridSearchCV(lr) x SGLDHyperTuner"} <= methods


def _check_l1_options(data):
    assert {"sgld", "rmd", "rmd-fo", "ift-cg", "ift-neumann"} <= {r["method"] for r in data["table4"]}


def _check_paper_synthetic(data):
    assert {"t2", "t3", "fig1", "fig3"} <= set(data["parts"])


CHECKS = {"compare_search": _check_compare_search, "l1_options": _check_l1_options,
          "paper_synthetic": _check_paper_synthetic}


def test_every_script_is_smoke_tested():
    # The glob must see the scripts this file used to list by hand.
    assert {"compare_search", "l1_options", "cost", "memory", "paper_synthetic"} <= set(SCRIPTS)
