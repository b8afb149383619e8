"""What every benchmark script shares: the smoke switch, the output location and the writer.

* Smoke mode is asked for by the environment variable ``SGLD_TUNER_SMOKE=1`` (the
  examples read the same one) or by ``--smoke`` on a script's command line
  (:func:`add_common_args`). :func:`is_smoke` is the only place that reads either.
* Results go to ``benchmarks/results/<name>.{json,md,png}``; a smoke run writes
  ``<name>_smoke.*`` instead, which ``.gitignore`` ignores, so a quick check never
  overwrites the committed full-size results (:func:`result_stem`).
* :func:`write_results` writes the JSON (with the platform, torch version and the smoke
  flag), the markdown and any figures of one run.
* :func:`tuner_kwargs` turns a flat table of ``SGLDHyperTuner`` settings (``burn_in``,
  ``outer_lr``, ...) into the tuner's grouped keyword arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SMOKE_ENV = "SGLD_TUNER_SMOKE"


def is_smoke() -> bool:
    """Whether this run is a smoke run: ``SGLD_TUNER_SMOKE`` not ``0``, or ``--smoke`` given.

    The command line is read here as well as by argparse because some scripts size their
    module-level constants before ``main`` parses its arguments.

    Returns
    -------
    bool
        True for the tiny configuration each script uses to check its plumbing in seconds.
    """
    return os.environ.get(SMOKE_ENV, "0") not in ("", "0") or "--smoke" in sys.argv[1:]


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--out-dir`` and ``--smoke`` to a script's argument parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    argparse.ArgumentParser
        The same parser. Parse it with :func:`parse_args` so that ``--smoke`` takes effect.
    """
    parser.add_argument("--out-dir", default=RESULTS,
                        help="where to write the results (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny configuration, outputs *_smoke.* (same as {SMOKE_ENV}=1)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv``; ``--smoke`` sets ``SGLD_TUNER_SMOKE`` so :func:`is_smoke` sees it.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A parser set up by :func:`add_common_args`.
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
    """
    args = parser.parse_args(argv)
    if args.smoke:
        # Through the environment, so that child processes (memory.py) inherit it too.
        os.environ[SMOKE_ENV] = "1"
    return args


def result_stem(name: str, out_dir: str | None = None) -> str:
    """Path without extension of a script's results: ``<out_dir>/<name>[_smoke]``.

    Parameters
    ----------
    name : str
        The result name, usually the script's (plus a variant suffix such as ``_tau0.01``).
    out_dir : str, optional
        Default ``benchmarks/results``.

    Returns
    -------
    str
    """
    return os.path.join(out_dir or RESULTS, name + ("_smoke" if is_smoke() else ""))


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` plus the platform, the torch version and ``smoke`` to ``path``.

    Parameters
    ----------
    path : str
        The JSON file; its folder is created.
    payload : dict
        The results. Values JSON cannot hold natively (numpy scalars) are written as floats.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    record = {"platform": platform.platform(), "torch": torch.__version__,
              "smoke": is_smoke(), **payload}
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1, default=float)


def write_results(stem: str, payload: dict | None, markdown: str,
                  figures: dict | None = None) -> None:
    """Write ``stem.json``, ``stem.md`` and one PNG per figure.

    Parameters
    ----------
    stem : str
        Output path without extension (see :func:`result_stem`); its folder is created.
    payload : dict or None
        The results, written by :func:`write_json`. ``None`` when the script has written
        ``stem.json`` itself with :func:`write_json` (e.g. merged part by part under a lock).
    markdown : str
        The table(s) a reader looks at.
    figures : dict of str -> matplotlib.figure.Figure, optional
        ``{suffix: figure}``: each is saved to ``stem + suffix + ".png"`` (suffix ``""``
        for the script's main figure; a smoke stem's ``_smoke`` stays last) and closed.
    """
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    if payload is not None:
        write_json(stem + ".json", payload)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown if markdown.endswith("\n") else markdown + "\n")
    if figures:
        from _plots import save_figure

        # A smoke figure keeps "_smoke" last (name_fig1_smoke.png), so that the
        # .gitignore pattern *_smoke.* covers it as it covers the JSON and markdown.
        smoke = stem.endswith("_smoke")
        base = stem[:-len("_smoke")] if smoke else stem
        for suffix, fig in figures.items():
            save_figure(fig, base + suffix + ("_smoke" if smoke else "") + ".png")


def report_child(row: dict, label: str, describe) -> None:
    """Print one child run's result: ``describe(row)``, or its error (to stderr)."""
    if "error" in row:
        print(f"{label}: error\n{row['error']}", file=sys.stderr)
    else:
        print(describe(row), flush=True)


def tuner_kwargs(flat: dict) -> dict:
    """``SGLDHyperTuner`` keyword arguments from a flat dict of settings.

    The benchmarks keep their configurations as flat tables (``{"outer_lr": 0.2}``,
    ``dict(n_outer=2, burn_in=1)``). Each name the tuner moved into a settings group
    (``sgld_tuner.search.settings.MOVED_PARAMETERS``) goes into that group under its new
    name (``burn_in`` -> ``sampler=SamplerSettings(burn_in=...)``, ``outer_lr`` ->
    ``outer=OuterSettings(lr=...)``); every other name passes through unchanged. A group
    none of the names belongs to is left out, so the tuner keeps its defaults; one given
    in ``flat`` as well (``sampler=SamplerSettings(...)``) is updated with the names.

    Parameters
    ----------
    flat : dict
        Old flat names and current top-level ones, mixed.

    Returns
    -------
    dict
        ``SGLDHyperTuner(estimator, hyperparams, **tuner_kwargs(flat))``.
    """
    from sgld_tuner import OuterSettings, SamplerSettings
    from sgld_tuner.search.settings import MOVED_PARAMETERS

    groups = {"sampler": SamplerSettings, "outer": OuterSettings}
    kwargs, fields = {}, {}
    for name, value in flat.items():
        if name not in MOVED_PARAMETERS:
            kwargs[name] = value
            continue
        # "sampler=SamplerSettings(burn_in=...)" -> ("sampler", "burn_in")
        group, field = re.fullmatch(r"(\w+)=\w+\((\w+)=\.\.\.\)",
                                    MOVED_PARAMETERS[name]).groups()
        fields.setdefault(group, {})[field] = value
    for group, values in fields.items():
        given = kwargs.get(group)
        kwargs[group] = groups[group](**{**(given.get_params() if given else {}), **values})
    return kwargs
