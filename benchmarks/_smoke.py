"""Run benchmark scripts in smoke mode, one after another in this one interpreter.

    python benchmarks/_smoke.py OUT_DIR SCRIPT [SCRIPT ...]

Most of a smoke run's time is importing torch, scikit-learn, skorch and matplotlib (and
torch's lazy compiler modules on the first optimizer): about six seconds per process on
a laptop core. Running the scripts in a shared interpreter pays that once, which is what
keeps ``tests/test_benchmarks_smoke.py`` under a minute on two cores.

Each script runs as ``__main__`` (``runpy``) with ``--out-dir OUT_DIR/<name>`` when it
takes that option, under ``SGLD_TUNER_SMOKE=1``. Its output goes to ``OUT_DIR/<name>.log``
and its outcome to ``OUT_DIR/<name>.status.json`` (see :func:`run_one`).
"""
from __future__ import annotations

import contextlib
import json
import os
import runpy
import sys
import time
import traceback

from _results import SMOKE_ENV


def run_one(script: str, out_dir: str) -> dict:
    """Run ``script`` as ``__main__`` in smoke mode; return its status record.

    Parameters
    ----------
    script : str
        Path of the benchmark script.
    out_dir : str
        Its results go to ``out_dir/<name>`` (when it takes ``--out-dir``), its log to
        ``out_dir/<name>.log``.

    Returns
    -------
    dict
        ``ok`` (it returned or exited with status 0), ``seconds``, ``error`` (the
        traceback or exit status, else ``None``) and ``out_dir`` (where its results
        are, or ``None`` when it wrote them to its own default folder).
    """
    name = os.path.splitext(os.path.basename(script))[0]
    with open(script) as fh:
        source = fh.read()
    # add_common_args gives --out-dir; scripts without it write their *_smoke.* files to
    # benchmarks/results, where .gitignore ignores them.
    takes_out_dir = "add_common_args" in source or "--out-dir" in source
    argv = [script] + (["--out-dir", os.path.join(out_dir, name)] if takes_out_dir else [])
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    error, started = None, time.perf_counter()
    with open(os.path.join(out_dir, name + ".log"), "w") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = f"exited with status {exc.code!r}"
        except BaseException:  # noqa: BLE001 - any failure is this script's result
            error = traceback.format_exc()
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
    return {"ok": error is None, "seconds": time.perf_counter() - started, "error": error,
            "out_dir": argv[2] if takes_out_dir else None}


def main(argv=None) -> int:
    """Run every script given on the command line; write one status file each."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit("usage: python benchmarks/_smoke.py OUT_DIR SCRIPT [SCRIPT ...]")
    out_dir, scripts = argv[0], argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    os.environ[SMOKE_ENV] = "1"
    for script in scripts:
        status = run_one(script, out_dir)
        name = os.path.splitext(os.path.basename(script))[0]
        with open(os.path.join(out_dir, name + ".status.json"), "w") as fh:
            json.dump(status, fh)
        print(f"{name}: {'ok' if status['ok'] else 'FAILED'} in {status['seconds']:.1f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
