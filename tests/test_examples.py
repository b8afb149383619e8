"""Every example script and the notebook still run (smoke mode, tiny budgets).

Examples are what users copy first, and nothing else exercises them, so an API change
that breaks one would otherwise go unnoticed. Scripts run as separate processes, two at
a time (most of each one's time is importing torch and skorch); the notebook is executed
by nbclient into a temporary copy, never over the committed, executed notebook.
"""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = sorted(glob.glob(os.path.join(EXAMPLES, "*.py")))
ENV = dict(os.environ, SGLD_TUNER_SMOKE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def test_examples_present():
    names = {os.path.basename(p) for p in SCRIPTS}
    expected = {"per_weight_l1.py", "weight_decay.py", "loss_weights.py", "taylor_loss.py",
                "affine_augmentation.py", "sample_weights.py", "core_bilevel.py",
                "custom_kind.py"}
    assert expected <= names
    for path in SCRIPTS:
        assert _code_lines(path) < 40, f"{path} should stay a short example"


def _code_lines(path: str) -> int:
    """Lines of a script after its module docstring (the docstring may explain at length)."""
    with open(path) as fh:
        source = fh.read()
    body = ast.parse(source).body
    skip = 0
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip = body[0].end_lineno
    return len(source.splitlines()) - skip


def test_example_scripts_run():
    failures = []
    pending = list(SCRIPTS)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = [(p, subprocess.Popen([sys.executable, p], cwd=ROOT, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)) for p in batch]
        for path, proc in procs:
            try:
                log, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                log, _ = proc.communicate()
                failures.append(f"{os.path.basename(path)} timed out:\n{log[-2000:]}")
                continue
            if proc.returncode != 0:
                failures.append(f"{os.path.basename(path)} exited {proc.returncode}:\n"
                                f"{log[-2000:]}")
    assert not failures, "\n\n".join(failures)


def test_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel is a child process: it inherits the smoke setting through the environment.
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(os.path.join(EXAMPLES, "sgld_vs_gridsearch.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))


@pytest.mark.parametrize("argv, named", [(["--seeds", "0"], "--seeds"),
                                         (["--n-train", "20"], "--n-train"),
                                         (["--n-train", "5000"], "--n-train"),
                                         (["--n-outer", "0"], "--n-outer")])
def test_the_demo_refuses_settings_it_cannot_run_as_argparse_does(argv, named, capsys):
    """Exit status 2 and the option named, before any fit (``--seeds 0`` used to print an
    empty header and fail in the plot; ``--n-train 5`` in scikit-learn's split)."""
    from sgld_tuner.demo import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and named in capsys.readouterr().err
