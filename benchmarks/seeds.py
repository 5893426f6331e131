"""A seed sweep with DVC's experiments: one queued experiment per seed, then one table over them.

Each seed is an experiment of this repository's pipeline (``dvc.yaml``, ``params.yaml``), queued
with ``data.seed``, ``data.subset.seed``, ``base.seed`` and ``finetune.train.seed`` all set to the
seed (plus any ``-S`` overrides, the same for every seed), run by DVC's queue, and read back from
``dvc exp show --json`` (every model's compact metrics, ``metrics/<model>.json``) and from the
experiment's cached outputs (``results/evaluate``, per benchmark, through ``dvc.api.DVCFileSystem``).
What a user would type, step by step:

    python benchmarks/seeds.py queue --seeds 0 1 2 --methods cft plain fgbg   # dvc exp run --queue -n seed0 -S data.seed=0 ...
    dvc queue start -j 1; dvc queue status                                      # or: python benchmarks/seeds.py run -j 1 (waits)
    python benchmarks/seeds.py table --seeds 0 1 2 --against base plain fgbg   # markdown tables from the experiments

or all three: ``python benchmarks/seeds.py sweep --seeds 0 1 2 --methods cft plain fgbg``. ``--name``
prefixes the experiment names (``<name>-seed0``), so sweeps with other overrides on the same
commit stay apart; ``table`` reads the experiments of the current commit, or of ``--rev <commit>``
(``sweep`` reads those of the commit it queued on, even if a commit is made while it runs). Other settings:
``-S evaluate.shortcut_tests={}`` etc., exactly as ``dvc exp run -S`` takes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS = (
    "accuracy",
    "accuracy_seen",
    "accuracy_unseen",
    "miou",
    "background_share",
    "accuracy_family_high",
    "accuracy_family_low",
    "bg_gap",
    "only_bg_accuracy",
)
PAIRED_KEYS = (
    "ood_acc",
    "ood_seen",
    "ood_unseen",
    "id_acc",
    "forgetting",
    "cue_drop",
    "bg_drop",
    "cue_lift",
    "c_high",
    "c_low",
    "c_seen",
    "c_unseen",
    "c_rel_ce",
    "bg_gap",
    "only_bg",
)
# corruption benchmarks' family accuracies, added to each seed's summary (mean over such benchmarks)
FAMILY_KEYS = {"c_high": "accuracy_family_high", "c_low": "accuracy_family_low"}
# Student's t, 0.975 quantile, for 1..30 degrees of freedom (checked against the t density by
# numerical integration in tests/test_seeds_benchmark.py); more seeds keep the value for 30, a
# little wider than exact.
T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


SEED_PARAMS = ("data.seed", "data.subset.seed", "base.seed", "finetune.train.seed")


def experiment_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}" if name else f"seed{seed}"


def seed_overrides(seed: int, methods: list[str] | None, overrides: list[str]) -> list[str]:
    """``-S`` arguments of one seed's experiment: the seed params, the methods (fine-tuned and
    evaluated, with the base model), then the user's overrides."""
    sets = [f"{key}={seed}" for key in SEED_PARAMS]
    if methods is not None:
        sets += [f"finetune.methods=[{','.join(methods)}]", f"evaluate.models=[{','.join(['base', *methods])}]"]
    return [argument for value in [*sets, *overrides] for argument in ("-S", value)]


def dvc(*args: str, capture: bool = False) -> str:
    """Run ``dvc <args>`` (the one beside this Python first); stop with its message on failure."""
    executable = Path(sys.executable).with_name("dvc")
    command = [str(executable) if executable.exists() else "dvc", *args]
    result = subprocess.run(command, capture_output=capture, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"`dvc {' '.join(args)}` failed ({result.returncode}){': ' + result.stderr[-2000:] if capture else ''}"
        )
    return result.stdout if capture else ""


def queue(seeds: list[int], name: str, methods: list[str] | None, overrides: list[str]) -> None:
    for seed in seeds:
        dvc("exp", "run", "--queue", "-n", experiment_name(name, seed), *seed_overrides(seed, methods, overrides))


def run_queue(jobs: int) -> None:
    """Every queued experiment, ``jobs`` at a time; returns when all have finished."""
    dvc("exp", "run", "--run-all", "-j", str(jobs))


def _records(node: Any) -> Iterator[dict[str, Any]]:
    """Every experiment record (a dict with ``rev``, ``name`` and ``data``) in ``dvc exp show --json``."""
    if isinstance(node, list):
        for item in node:
            yield from _records(item)
    elif isinstance(node, dict):
        if isinstance(node.get("data"), dict) and "rev" in node:
            yield node
        for key in ("experiments", "revs"):
            yield from _records(node.get(key))


def experiments(names: list[str], shown: Any) -> dict[str, dict[str, Any]]:
    """name -> record of the named experiments in ``dvc exp show --json`` output; a missing or
    failed one stops the script, naming it."""
    found = {
        record["name"]: record
        for record in _records(shown)
        if record.get("name") in names and not record.get("error") and record["data"].get("metrics")
    }
    missing = [name for name in names if name not in found]
    if missing:
        raise SystemExit(
            f"no finished experiment named {missing} derived from this commit (dvc exp show; dvc queue status; "
            "--rev <commit> for experiments queued on an earlier commit)"
        )
    return found


def file_contents(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """path -> contents of an experiment's ``params`` or ``metrics`` files, as ``dvc exp show --json`` gives them."""
    return {path: entry.get("data", {}) for path, entry in (record["data"].get(kind) or {}).items()}


def seed_results(record: dict[str, Any]) -> dict[str, Any]:
    """One experiment's per-benchmark scores and per-model summary (its metrics, plus the
    corruption families' accuracies averaged over the corruption benchmarks)."""
    from dvc.api import DVCFileSystem

    from pipeline.reports.summary import SCORES_NAME, read_results

    params = file_contents(record, "params")["params.yaml"]
    models, benchmarks = params["evaluate"]["models"], list(params["evaluate"]["benchmarks"])
    metrics = {Path(path).stem: values for path, values in file_contents(record, "metrics").items()}
    summary = {model: dict(metrics[model]) for model in models}
    files = DVCFileSystem(".", rev=record["rev"])
    with tempfile.TemporaryDirectory() as folder:
        for benchmark in benchmarks:
            for model in models:
                (Path(folder) / benchmark / model).mkdir(parents=True)
                files.get_file(
                    f"results/evaluate/{benchmark}/{model}/{SCORES_NAME}", f"{folder}/{benchmark}/{model}/{SCORES_NAME}"
                )
        per_benchmark = read_results(Path(folder), benchmarks, models)
    corrupted = [r for r in per_benchmark.values() if r["benchmark"].get("kind") in ("corrupted", "imagenet_c")]
    for model in models:
        for key, score in FAMILY_KEYS.items():
            values = [r["models"][model][score] for r in corrupted if score in r["models"][model]]
            if values:
                summary[model][key] = statistics.mean(values)
    return {"benchmarks": {name: result["models"] for name, result in per_benchmark.items()}, "summary": summary}


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(results: list[dict[str, Any]]) -> str:
    benchmarks = list(results[0]["benchmarks"])
    models = list(results[0]["benchmarks"][benchmarks[0]])
    lines = ["| benchmark | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for benchmark in benchmarks:
        for metric in METRICS:
            # a metric of an empty group (a tiny split's unseen classes) is absent in some seeds
            if any(metric not in r["benchmarks"][benchmark][m] for r in results for m in models):
                continue
            row = [cell([r["benchmarks"][benchmark][m][metric] for r in results]) for m in models]
            lines.append(f"| {benchmark} | {metric} | " + " | ".join(row) + " |")
    for key in results[0]["summary"][models[0]]:
        row = [cell([r["summary"][m][key] for r in results if key in r["summary"][m]]) for m in models]
        lines.append(f"| summary | {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_interval(values: list[float], references: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its 95% t interval: (mean, low, high)."""
    differences = [value - reference for value, reference in zip(values, references, strict=True)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    df = len(differences) - 1
    half = T_975[min(df, len(T_975)) - 1] * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def paired_table(results: list[dict[str, Any]], references: list[str]) -> str:
    """Each model minus each reference model, per summary metric: mean difference over seeds [95% interval]."""
    models = list(results[0]["summary"])
    lines = [
        "| metric | model | " + " | ".join(f"− {reference}" for reference in references) + " |",
        "|---|---|" + "---|" * len(references),
    ]
    for key in PAIRED_KEYS:
        for model in models:
            cells = []
            for reference in references:
                pairs = [(r["summary"][model].get(key), r["summary"][reference].get(key)) for r in results]
                if model == reference or any(a is None or b is None for a, b in pairs):
                    cells.append("")
                    continue
                mean, low, high = paired_interval([a for a, _ in pairs], [b for _, b in pairs])
                cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
            if any(cells):
                lines.append(f"| {key} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(seeds: list[int], results: list[dict[str, Any]], against: list[str]) -> None:
    print(f"seeds {seeds}; cells are mean ± half the range over seeds")
    print(table(results))
    references = [name for name in against if name in results[0]["summary"]]
    if references and len(results) > 1:
        print(f"\npaired differences over seeds {seeds}: mean [95% t interval]")
        print(paired_table(results, references))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["queue", "run", "table", "sweep"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="", help="prefix of the experiment names (<name>-seed<N>)")
    parser.add_argument(
        "--methods", nargs="+", default=None, help="fine-tuning methods (default: the params' finetune.methods)"
    )
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], help="as dvc exp run -S")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once")
    parser.add_argument(
        "--rev",
        default=None,
        help="commit the experiments were queued on (default: HEAD; `sweep` uses the commit it queued on)",
    )
    parser.add_argument(
        "--against", nargs="*", default=["plain", "fgbg"], help="reference models of the paired differences"
    )
    args = parser.parse_args(argv)
    # the experiments' baseline, fixed before queueing: a commit made while a sweep runs must not hide them
    rev = (
        args.rev
        or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    )
    if args.action in ("queue", "sweep"):
        queue(args.seeds, args.name, args.methods, args.overrides)
    if args.action in ("run", "sweep"):
        run_queue(args.jobs)
    if args.action in ("table", "sweep"):
        names = [experiment_name(args.name, seed) for seed in args.seeds]
        found = experiments(names, json.loads(dvc("exp", "show", "--json", "--rev", rev, capture=True)))
        print_tables(args.seeds, [seed_results(found[name]) for name in names], args.against)


if __name__ == "__main__":
    main()
