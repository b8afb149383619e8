"""The race of the net's lr inside one fit, beside the tuner without it and the grids.

Same data, nets and trainings as ``benchmarks/unseen_data.py`` (4 data sets x 3 trainings).
Methods, on the same seeds: the tuner with its defaults (the race, ``Race()``), the same
tuner with the race switched off (``schedule=PlainSearch()``), its no-search control
(``n_outer=1``), ``GridSearchCV`` over 3 lrs x 3 weight decays and over 5 lrs x 3 weight
decays (the lrs 3^-2..3^2 x the net's), the plain net, and the race of the training
budget beside the lr (the 5 lrs x ``max_epochs`` E and 3E, E the net's own), whose
second table says whether the budget race should be on by default. CPU seconds by
``time.process_time()`` with one torch thread.

Run: ``python benchmarks/race.py [--seeds 5] [--data wine,iris] [--smoke]``;
``--methods race,budget`` reruns those columns only and merges them into the written
results (the table lists every command that wrote it).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GridSearchCV

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import (add_common_args, is_smoke, parse_args, result_stem,  # noqa: E402
                      tuner_kwargs, write_results)
from unseen_data import (TRAININGS, WDS, fit_and_score, load, pipeline,  # noqa: E402
                         run_all)

from sgld_tuner import SGLDHyperTuner  # noqa: E402
from sgld_tuner.hyperparams import PerWeightL1  # noqa: E402
from sgld_tuner.search import PlainSearch, Race  # noqa: E402

DATA = ["make_classification", "make_regression", "wine", "iris"]
RACE, OFF, CONTROL = "tuner (defaults: Race())", "race off (PlainSearch())", "control (n_outer=1)"
GRID3, GRID5 = "GridSearchCV 3 lr x 3 wd", "GridSearchCV 5 lr x 3 wd"
BUDGET = "race of lr x max_epochs (E, 3E)"
#: ``--methods`` names
SHORT = {"race": RACE, "off": OFF, "budget": BUDGET, "control": CONTROL, "grid3": GRID3,
         "grid5": GRID5, "plain": "plain net"}


def methods(make, net_step: str, lr: float, epochs: int, seed: int, smoke: bool) -> dict:
    small = tuner_kwargs(dict(n_outer=2, burn_in=1, n_samples=1) if smoke else {})
    lrs5 = [lr * 3.0 ** k for k in range(-2, 3)]
    cut = 2 if smoke else None

    def grid(lrs):
        return GridSearchCV(make(), {f"{net_step}__lr": lrs[:cut],
                                     f"{net_step}__optimizer__weight_decay": list(WDS)[:cut]})

    race = Race(n_lrs=3, extend=0) if smoke else None  # None: the tuner's default race
    # The training budget raced beside the lr: the net's own max_epochs and 3 times it.
    budget = Race(param_grid={"lr": lrs5[1:4] if smoke else lrs5,
                              "max_epochs": [epochs, 3 * epochs]})
    return {
        OFF: SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                            schedule=PlainSearch(), **small),
        RACE: SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                             schedule=race, **small),
        BUDGET: SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                               schedule=budget, **small),
        CONTROL: SGLDHyperTuner(make(), {"l1": PerWeightL1()}, random_state=seed,
                                **{**small, "n_outer": 1}),
        GRID3: grid(lrs5[1:4]),
        GRID5: grid(lrs5),
        "plain net": make(),
    }


def run_one(name: str, training: str, seed: int, smoke: bool,
            only: tuple = tuple(SHORT.values())) -> list[dict]:
    X_tr, X_te, y_tr, y_te, classification = load(name, seed)
    n_out = int(y_tr.max()) + 1 if classification else 1

    def make():
        return pipeline(classification, X_tr.shape[1], n_out, TRAININGS[training], smoke)

    net = make().steps[-1]

    def chosen(estimator):
        params = getattr(estimator, "best_params_", {})
        return {**{key: float(params.get(key, params.get(f"{net[0]}__{key}", np.nan)))
                   for key in ("lr", "max_epochs")}, "own_max_epochs": net[1].max_epochs}

    chosen_methods = {label: estimator for label, estimator in
                      methods(make, net[0], net[1].lr, net[1].max_epochs, seed, smoke).items()
                      if label in only}
    return fit_and_score(chosen_methods,
                         (X_tr, X_te, y_tr, y_te),
                         {"data": name, "training": training, "seed": seed}, chosen)


def _mean_std(values) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def _lead(values) -> str:
    return f"{values.mean():+.3f} ({int((values > 0).sum())}/{len(values)})"


def to_markdown(df: pd.DataFrame, command: str, seeds: list, cpu_total: float) -> str:
    keys = ["data", "training", "seed"]
    score = df.pivot_table(index=keys, columns="method", values="test_score")
    cpu = df.pivot_table(index=keys, columns="method", values="cpu_s")
    warned = df[df.method == RACE].set_index(keys).undertrained_warning
    lines = [
        "# The race of the net's lr inside one fit", "",
        f"`{command}`: {len(seeds)} seed(s), {cpu_total:.0f} s CPU in all. Test score: "
        "accuracy, or R^2 for make_regression; mean ± std over seeds. gain: the race minus "
        "the tuner without it on the same seed (mean ± std, seeds won); vs grid: the race "
        "minus each grid (mean, seeds won); CPU: the race's seconds over each grid's (one "
        "torch thread); undertrained: seeds on which the race warned UndertrainedWarning.", "",
        f"| data | training | {RACE} | {OFF} | {CONTROL} | {GRID3} | {GRID5} | plain net "
        "| gain | vs 3x3 | vs 5x3 | CPU race s (/3x3, /5x3) | undertrained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (data, training), rows in score.groupby(level=["data", "training"], sort=False):
        gain = rows[RACE] - rows[OFF]
        c = cpu.loc[(data, training)].mean()
        lines.append(
            f"| {data} | {training} | {_mean_std(rows[RACE])} | {_mean_std(rows[OFF])} "
            f"| {_mean_std(rows[CONTROL])} "
            f"| {_mean_std(rows[GRID3])} | {_mean_std(rows[GRID5])} "
            f"| {_mean_std(rows['plain net'])} "
            f"| {gain.mean():+.3f} ± {gain.std(ddof=1) if len(gain) > 1 else 0:.3f} "
            f"({int((gain > 0).sum())}/{len(gain)}) "
            f"| {_lead(rows[RACE] - rows[GRID3])} | {_lead(rows[RACE] - rows[GRID5])} "
            f"| {c[RACE]:.2f} ({c[RACE] / c[GRID3]:.2f}, {c[RACE] / c[GRID5]:.2f}) "
            f"| {int(warned.loc[(data, training)].sum())}/{len(gain)} |")
    lines += ["", "The training budget raced beside the lr "
              f"(`Race(param_grid={{'lr': 5 lrs, 'max_epochs': [E, 3E]}})`, E the net's own): "
              "test score, seeds whose refit trains 3E, seeds warned UndertrainedWarning, "
              "CPU over the 5 x 3 grid's, beside the defaults.", "",
              f"| data | training | {RACE} | {BUDGET} | 3E picked | undertrained "
              "(defaults, budget race) | CPU / 5x3 (defaults, budget race) |",
              "|---|---|---|---|---|---|---|"]
    budget = df[df.method == BUDGET].set_index(keys)
    warned_budget = budget.undertrained_warning
    for (data, training), rows in score.groupby(level=["data", "training"], sort=False):
        c = cpu.loc[(data, training)].mean()
        picked = budget.loc[(data, training)]
        epochs = picked.max_epochs
        longer = int((epochs > picked.own_max_epochs).sum())
        lines.append(
            f"| {data} | {training} | {_mean_std(rows[RACE])} | {_mean_std(rows[BUDGET])} "
            f"| {longer}/{len(epochs)} "
            f"| {int(warned.loc[(data, training)].sum())}/{len(epochs)}, "
            f"{int(warned_budget.loc[(data, training)].sum())}/{len(epochs)} "
            f"| {c[RACE] / c[GRID5]:.2f}, {c[BUDGET] / c[GRID5]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=1 if is_smoke() else 5)
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--trainings", default=",".join(TRAININGS))
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {', '.join(SHORT)}: rerun those "
                        "columns only and merge them into the written results (the others "
                        "are kept as they were measured)")
    args = parse_args(parser, argv)
    smoke, seeds = is_smoke(), list(range(args.seeds))
    torch.set_num_threads(1)
    names = ["iris"] if smoke else args.data.split(",")
    trainings = ["sgd"] if smoke else args.trainings.split(",")
    only = tuple(SHORT[m] for m in args.methods.split(",")) if args.methods \
        else tuple(SHORT.values())
    cpu_started = time.process_time()
    df = pd.DataFrame.from_records(run_all(
        names, trainings, seeds, lambda *a: run_one(*a, only=only), smoke))
    command = "python benchmarks/race.py" + (" --smoke" if smoke else "") + \
        ("" if args.data == ",".join(DATA) else f" --data {args.data}") + \
        ("" if args.trainings == ",".join(TRAININGS) else f" --trainings {args.trainings}") + \
        ("" if args.seeds == 5 else f" --seeds {args.seeds}") + \
        (f" --methods {args.methods}" if args.methods else "")
    stem = result_stem("race", args.out_dir)
    cpu = time.process_time() - cpu_started
    commands = [command]
    if args.methods:
        df, commands, cpu = _merged(stem, df, only, command, cpu)
    md = to_markdown(df, "`, then `".join(commands), seeds, cpu)
    print("\n" + md)
    write_results(stem, {"seeds": seeds, "rows": df.to_dict("records"), "commands": commands,
                         "cpu_s": cpu}, md)
    print(f"wrote {stem}.json/.md")


def _merged(stem: str, df: pd.DataFrame, only: tuple, command: str, cpu: float):
    """The written results with the rows rerun (same data, training, seed and method)
    replaced by ``df``'s; a run on a subset of the data or trainings keeps the rest."""
    with open(stem + ".json") as fh:
        old = json.load(fh)
    kept = pd.DataFrame.from_records(old["rows"])
    key = ["data", "training", "seed", "method"]
    rerun = pd.MultiIndex.from_frame(df[key])
    kept = kept[~pd.MultiIndex.from_frame(kept[key]).isin(rerun)]
    commands = old.get("commands", ["python benchmarks/race.py"]) + [command]
    return (pd.concat([kept, df], ignore_index=True), commands,
            old.get("cpu_s", float("nan")) + cpu)


if __name__ == "__main__":
    main()
