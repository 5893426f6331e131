"""The whole method over several seeds: base, plain fine-tuning and CFT, mean ± spread per split.

Each seed runs prepare → base → concepts → masks → finetune (every method) → evaluate through the
`cft` commands, in its own folder, with ``data.seed``, ``data.subset.seed``, ``base.seed`` and
``finetune.train.seed`` all set to the seed (everything else from the params file). Outputs of an
earlier run in the same folder are reused (a stage is skipped when its output exists), so adding
a method to ``finetune.methods`` only trains that method and re-evaluates. Any other change of
params, or of the pipeline's code, stops the script (``stamp.json`` in each seed folder records
both): use a new ``--work`` folder then.

    python benchmarks/seeds.py --seeds 0 1 2 --work /tmp/cft-seeds    # prints a markdown table
    python benchmarks/seeds.py --seeds 0 1 2 --methods --work /tmp/cft-base   # the base model alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

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


def check_reusable(root: Path, params: dict[str, Any]) -> None:
    """Outputs in ``root`` are reused only if the same code made them from the same params (a new
    method may be added); otherwise stop rather than mix stale models into the table."""
    from pipeline.utils.checkpoint import source_digest

    stamp_path = root / "stamp.json"
    stamp = {"code": source_digest(), "params": params}
    if stamp_path.is_file():
        old = json.loads(stamp_path.read_text())
        changed = [] if old["code"] == stamp["code"] else ["pipeline code"]
        changed += [f"params '{key}'" for key in params if key != "finetune" and old["params"].get(key) != params[key]]
        earlier = old["params"]["finetune"]
        changed += [
            f"params 'finetune.{key}'"
            for key in params["finetune"]
            if key != "methods" and key in earlier and earlier[key] != params["finetune"][key]
        ]
        if changed:
            raise SystemExit(f"{root}: made with different {', '.join(changed)}; use a new --work folder")
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True))


def run_seed(seed: int, params_file: Path, work: Path, methods: list[str] | None = None) -> dict[str, Any]:
    root = work / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(params_file.read_text())
    if methods is not None:
        params["finetune"]["methods"] = methods
    params["data"]["seed"] = seed
    params["data"].setdefault("subset", {})["seed"] = seed
    params["base"]["seed"] = seed
    params["finetune"]["train"]["seed"] = seed
    check_reusable(root, params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    def cft(*args: str, unless: str | None = None) -> None:
        """Run one stage; ``unless`` names its output, which (from an earlier run) skips it."""
        if unless is not None and Path(unless).exists():
            return
        subprocess.run(
            [sys.executable, "-m", "stages.cli", *args, "--params", str(root / "params.yaml")],
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )

    data, subset = str(root / "data/prepared"), str(root / "data/subset")
    cft("prepare", "--out", data, "--subset", subset, "--metrics", str(root / "results/prepare.json"), unless=subset)
    cft(
        "base",
        "--data",
        data,
        "--out",
        str(root / "models/base"),
        "--metrics",
        str(root / "results/base.json"),
        "--plots",
        str(root / "plots/base"),
        unless=str(root / "models/base"),
    )
    if params["finetune"]["methods"]:  # the base model alone needs neither concepts nor masks
        cft("concepts", "--data", data, "--out", str(root / "data/concepts"), unless=str(root / "data/concepts"))
        masks = str(root / "data/masks")
        cft(
            "masks",
            "--data",
            data,
            "--subset",
            subset,
            "--concepts",
            str(root / "data/concepts"),
            "--out",
            masks,
            "--sheet",
            str(root / "plots/masks.png"),
            unless=masks,
        )
    for method in params["finetune"]["methods"]:
        cft(
            "finetune",
            method,
            "--base",
            str(root / "models/base"),
            "--data",
            data,
            "--subset",
            subset,
            "--masks",
            str(root / "data/masks"),
            "--out",
            str(root / f"models/{method}"),
            "--checkpoints",
            str(root / f"checkpoints/{method}"),
            "--metrics",
            str(root / f"results/finetune/{method}.json"),
            "--plots",
            str(root / f"plots/finetune/{method}"),
            unless=str(root / f"models/{method}"),
        )
    models = ["base", *params["finetune"]["methods"]]
    params["evaluate"]["models"] = models
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    benchmarks = list(params["evaluate"]["benchmarks"])
    for benchmark in benchmarks:
        # the models not yet scored, in one call: they share each decoded batch and one process
        # start-up, and score as they would alone (tests/test_stages.py); a model added later runs alone
        missing = [model for model in models if not (root / "results/evaluate" / benchmark / model).exists()]
        if missing:
            cft(
                "evaluate",
                benchmark,
                *missing,
                "--models",
                str(root / "models"),
                "--data",
                data,
                "--subset",
                subset,
                "--out",
                str(root / "results/evaluate" / benchmark),
                "--work",
                str(root / "checkpoints/evaluate" / benchmark),
            )
    cft(
        "report",
        "--results",
        str(root / "results/evaluate"),
        "--metrics",
        str(root / "metrics"),
        "--plots",
        str(root / "plots/summary"),
    )
    from pipeline.reports.summary import read_results

    per_benchmark = read_results(root / "results/evaluate", benchmarks, models)
    summary = {model: json.loads((root / "metrics" / f"{model}.json").read_text()) for model in models}
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cft-seeds"))
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="fine-tuning methods (default: the params' finetune.methods); none: the base model alone",
    )
    parser.add_argument(
        "--against",
        nargs="*",
        default=["plain", "fgbg"],
        help="reference models of the paired differences (those that were run)",
    )
    args = parser.parse_args(argv)
    results = [run_seed(seed, args.params.resolve(), args.work.resolve(), args.methods) for seed in args.seeds]
    print(f"seeds {args.seeds}; cells are mean ± half the range over seeds")
    print(table(results))
    references = [name for name in args.against if name in results[0]["summary"]]
    if references and len(results) > 1:
        print(f"\npaired differences over seeds {args.seeds}: mean [95% t interval]")
        print(paired_table(results, references))


if __name__ == "__main__":
    main()
