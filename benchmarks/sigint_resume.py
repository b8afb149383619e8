"""Real Ctrl-C at random times, then save, load and resume: does the search end exactly
where an uninterrupted one ends? (issue 12, item 13)

A tiny seeded search (an MLP on digits, cv=2, ``n_outer=12``,
``OuterSettings(eval_every=2)``, refit on) runs once uninterrupted, here. Then, ``N``
times, the same search runs in a child process that receives a real ``SIGINT`` (``os.kill(pid, signal.SIGINT)``) at a time drawn (seeded)
from ``[0, duration of the uninterrupted fit]`` after the child says it is about to fit.
The child saves the tuner (``save``) after ``fit`` returns or raises; here it is loaded
(``SGLDHyperTuner.load(path, trusted=True)``), fit again with ``warm_start=True`` to the
end and compared with the uninterrupted run: ``hyperparams_``, ``cv_results_``
(``mean_test_score`` and ``params``) and ``history_`` without its time columns, exactly
equal. Where the signal landed is the innermost package function on the stack when the
child's SIGINT handler ran (a signal held by the engine during a commit is reported
where it was delivered).

    python benchmarks/sigint_resume.py            # 30 interrupts
    python benchmarks/sigint_resume.py --smoke    # 2 interrupts, seconds

Writes ``benchmarks/results/sigint_resume.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from sgld_tuner import OuterSettings, SamplerSettings, SGLDHyperTuner
from sgld_tuner.demo import load_data, make_net
from sgld_tuner.hyperparams import PerWeightL1

from _results import add_common_args, is_smoke, parse_args, result_stem, write_results

N_INTERRUPTS = 2 if is_smoke() else 30
N_OUTER = 4 if is_smoke() else 12
SEED = 0

# Where a signal landed, by the innermost package function on the stack that names it.
_PLACES = {
    "hypergrad.py:hypergradient": "oracle (hypergradients)",
    "tuner.py:_fold_hypergradient": "oracle (hypergradients)",
    "engine.py:_step": "outer optimizer step",
    "tuner.py:_score_fold": "scoring", "tuner.py:_scores_on": "scoring",
    "tuner.py:_evaluate": "scoring",
    "tuner.py:_scored_point": "bookkeeping", "tuner.py:_keep_snapshot": "bookkeeping",
    "tuner.py:_summaries": "bookkeeping", "tuner.py:on_record": "bookkeeping",
    "engine.py:_attempt": "engine, before the commit",
    "tuner.py:on_commit": "commit (signal held)", "engine.py:_iterate": "engine",
    "engine.py:run": "engine, between iterations",
    "engine.py:on_iteration_end": "after the commit (listeners)",
    "tuner.py:_refit": "refit", "tuner.py:_end_search": "wrap-up",
    "tuner.py:_format_results": "wrap-up", "tuner.py:_run_search": "search set-up",
    "tuner.py:fit": "fit set-up",
}


def make_tuner() -> SGLDHyperTuner:
    """The seeded search every run repeats."""
    torch.set_num_threads(1)  # the child and this process compute identically
    net = make_net(max_epochs=5, module__hidden=16)
    return SGLDHyperTuner(net, {"l1": PerWeightL1(init=1e-4)}, n_outer=N_OUTER, cv=2,
                          random_state=SEED,
                          sampler=SamplerSettings(burn_in=2, n_samples=2),
                          outer=OuterSettings(eval_every=2))


def data():
    X, _, y, _ = load_data(n_train=150 if is_smoke() else 300, random_state=SEED)
    return X, y


def comparable(tuner) -> str:
    """What the resumed search must reproduce, as JSON text: floats written exactly
    (``repr``) and NaN (a point not scored) equal to NaN, which list equality is not."""
    history = tuner.history_.drop(columns=[c for c in tuner.history_ if c.endswith("time_s")])
    values = {"hyperparams": {k: {n: np.asarray(a).tolist() for n, a in v.items()}
                            for k, v in tuner.hyperparams_.items()},
              "mean_test_score": np.asarray(tuner.cv_results_["mean_test_score"]).tolist(),
              "params": repr(tuner.cv_results_["params"]),
              "history": {c: history[c].tolist() for c in history}}
    return json.dumps(values, sort_keys=True)


def _place(frame) -> str:
    """The innermost package function on ``frame``'s stack that says where it is."""
    while frame is not None:
        code = frame.f_code
        where = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        if f"{os.sep}sgld_tuner{os.sep}" in code.co_filename and where in _PLACES:
            return f"{_PLACES[where]} [{where}]"
        frame = frame.f_back
    return "outside fit"


def child(path: str) -> None:
    """Fit, interrupted by the parent's SIGINT; save the tuner to ``path`` and say where
    the signal landed (``path + '.json'``)."""
    X, y = data()
    make_tuner().set_params(n_outer=1, refit=False).fit(X, y)  # warm lazy imports
    tuner, landed = make_tuner(), []

    def on_sigint(signum, frame):
        landed.append(_place(frame))
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    print("ready", flush=True)
    escaped = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner.fit(X, y)
    except KeyboardInterrupt:
        escaped = True  # landed outside the search loop: fit did not return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the save must not be cut short
    tuner.save(path)
    info = {"landed": landed[0] if landed else "after fit (not delivered in fit)",
            "escaped_fit": escaped, "stop_reason": getattr(tuner, "stop_reason_", None),
            "iteration": len(tuner.history_) if hasattr(tuner, "history_") else None}
    with open(path + ".json", "w") as fh:
        json.dump(info, fh)


def interrupted_run(delay: float, path: str) -> dict:
    """A child interrupted ``delay`` seconds after it starts fitting; its report."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", path],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"the child did not start: {line!r}")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the child failed with status {proc.returncode}")
    with open(path + ".json") as fh:
        return json.load(fh)


def resumed(path: str, X, y) -> str:
    """Load the child's tuner, fit it to the end with ``warm_start=True``."""
    tuner = SGLDHyperTuner.load(path, trusted=True).set_params(warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.fit(X, y)
    return comparable(tuner)


def run(n: int) -> tuple[list[dict], float]:
    """The uninterrupted reference, then ``n`` interrupted-and-resumed runs."""
    X, y = data()
    make_tuner().set_params(n_outer=1, refit=False).fit(X, y)  # warm, as the child does
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = comparable(make_tuner().fit(X, y))
    duration = time.perf_counter() - started
    delays = np.random.default_rng(SEED).uniform(0.0, duration, size=n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, delay in enumerate(delays):
            path = os.path.join(tmp, f"run{k}.joblib")
            info = interrupted_run(float(delay), path)
            got = json.loads(resumed(path, X, y))
            want = json.loads(reference)
            differs = [key for key in want if json.dumps(got[key]) != json.dumps(want[key])]
            equal = not differs
            rows.append({"run": k, "delay_s": float(delay), **info, "equal": equal,
                         "differs_in": differs})
            print(f"run {k:2d}: SIGINT at {delay:.3f}s, iteration {info['iteration']}, "
                  f"{info['landed']}: {'equal' if equal else f'DIFFERENT {differs}'}",
                  flush=True)
    return rows, duration


def markdown(rows: list[dict], duration: float) -> str:
    n_equal = sum(r["equal"] for r in rows)
    lines = [f"# Ctrl-C at random times, resumed with warm_start=True ({len(rows)} runs)", "",
             f"Uninterrupted fit: {duration:.2f} s (n_outer={N_OUTER}, cv=2, "
             "OuterSettings(eval_every=2), refit on). Equal: `hyperparams_`, `cv_results_` (`mean_test_score`, `params`) "
             "and `history_` without time columns, exactly.", "",
             "| run | SIGINT at (s) | iterations kept | where it landed | stop_reason_ | equal |",
             "|---:|---:|---:|---|---|---|"]
    for r in rows:
        differs = f" ({', '.join(r['differs_in'])} differ)" if r["differs_in"] else ""
        lines.append(f"| {r['run']} | {r['delay_s']:.3f} | {r['iteration']} | {r['landed']} | "
                     f"{r['stop_reason'] or ''} | {'yes' if r['equal'] else 'NO'}{differs} |")
    lines += ["", f"**{n_equal} of {len(rows)} equal.**"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=N_INTERRUPTS,
                        help=f"how many interrupted runs (default {N_INTERRUPTS})")
    args = parse_args(parser, argv)
    if args.child:
        child(args.child)
        return
    rows, duration = run(args.runs)
    text = markdown(rows, duration)
    print(text)
    write_results(result_stem("sigint_resume", args.out_dir),
                  {"duration_s": duration, "n_outer": N_OUTER, "n_equal": sum(r["equal"] for r in rows),
                   "n_runs": len(rows), "runs": rows}, text)


if __name__ == "__main__":
    main()
