"""The comparison benchmarks still run end to end (smoke mode, tiny budget).

They are scripts, not library code, so nothing else would notice when an API they use
changes. Both run at once in separate processes (most of their time is importing torch,
scikit-learn and skorch) and write to a temporary directory, never over the committed
results in ``benchmarks/results``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each script gets its smallest configuration: one seed, one dataset for compare_search.
SCRIPTS = {
    "compare_search": ["--seeds", "1", "--datasets", "breast_cancer"],
    "l1_options": ["--seeds", "1"],
}


@pytest.mark.slow
def test_benchmark_scripts_smoke(tmp_path):
    env = dict(os.environ, SGLD_TUNER_SMOKE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    procs = {}
    for name, extra in SCRIPTS.items():
        out = tmp_path / name
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", f"{name}.py"),
               "--out-dir", str(out), *extra]
        procs[name] = (out, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True))
    for name, (out, proc) in procs.items():
        try:
            log, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
            pytest.fail(f"{name} smoke run timed out:\n{log[-3000:]}")
        assert proc.returncode == 0, f"{name} failed:\n{log[-3000:]}"
        for ext in ("json", "md", "png"):
            assert (out / f"{name}_smoke.{ext}").stat().st_size > 0
        data = json.loads((out / f"{name}_smoke.json").read_text())
        assert data["meta"]["smoke"] is True
        assert "|" in (out / f"{name}_smoke.md").read_text()

    summary = json.loads((tmp_path / "compare_search" / "compare_search_smoke.json").read_text())
    methods = {row["method"] for row in summary["summary"]}
    assert {"untuned", "GridSearchCV", "SGLDHyperTuner (per-weight L1)"} <= methods
    table4 = json.loads((tmp_path / "l1_options" / "l1_options_smoke.json").read_text())["table4"]
    assert {"sgld", "rmd", "rmd-fo", "ift-cg", "ift-neumann"} <= {r["method"] for r in table4}
