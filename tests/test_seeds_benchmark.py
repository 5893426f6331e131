"""`benchmarks/seeds.py`: a seed sweep as DVC experiments (queued, run, tabulated from `dvc exp show`)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.project import run, tiny_project


def load_seeds_script() -> ModuleType:  # benchmarks/ is scripts, not a package
    spec = importlib.util.spec_from_file_location(
        "seeds", Path(__file__).resolve().parents[1] / "benchmarks" / "seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed copy of the repository with tiny params: the baseline of the experiments."""
    root = tiny_project(tmp_path_factory.mktemp("sweep"))
    git = ["git", "-c", "user.name=cft tests", "-c", "user.email=tests@cft.invalid"]
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-q", "-m", "tiny pipeline"], root)
    return root


@pytest.mark.slow  # two whole pipelines through DVC's queue: minutes
def test_a_sweep_queues_one_experiment_per_seed_and_tables_them_from_dvc_exp_show(project: Path) -> None:
    output = run(
        [sys.executable, "benchmarks/seeds.py", "sweep", "--seeds", "3", "4", "--methods", "cft", "plain"]
        + ["--against", "base", "plain"],
        project,
    )
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, stdout_only=True))
    seeds = load_seeds_script()
    found = seeds.experiments(["seed3", "seed4"], shown)
    for seed in (3, 4):
        params = seeds.file_contents(found[f"seed{seed}"], "params")["params.yaml"]
        assert params["data"]["seed"] == params["base"]["seed"] == params["finetune"]["train"]["seed"] == seed
        assert params["data"]["subset"]["seed"] == seed and params["finetune"]["methods"] == ["cft", "plain"]
    # the table's cells are the experiments' committed metrics files (read here from git, not DVC)
    committed = {
        seed: json.loads(
            run(["git", "show", f"{found[f'seed{seed}']['rev']}:metrics/cft.json"], project, stdout_only=True)
        )
        for seed in (3, 4)
    }
    assert committed[3] != committed[4]  # the seed reaches data, subset, base and fine-tuning
    values = [committed[3]["ood_acc"], committed[4]["ood_acc"]]
    base = [
        json.loads(run(["git", "show", f"{found[f'seed{s}']['rev']}:metrics/base.json"], project, stdout_only=True))
        for s in (3, 4)
    ]
    expected = seeds.cell(values)
    row = next(line for line in output.splitlines() if line.startswith("| summary | ood_acc |"))
    assert row.split(" | ")[3] == expected, row  # columns: summary, ood_acc, base, cft, plain
    assert "| benchmark | metric | base | cft | plain |" in output and "| backgrounds | bg_gap |" in output
    mean, low, high = seeds.paired_interval(values, [b["ood_acc"] for b in base])
    assert f"| ood_acc | cft | {mean:+.3f} [{low:+.3f}, {high:+.3f}] |" in output
    # the table alone, as a user reruns it later, reads the same experiments
    again = run(
        [sys.executable, "benchmarks/seeds.py", "table", "--seeds", "3", "4", "--against", "base", "plain"], project
    )
    assert again.splitlines()[-5:] == output.splitlines()[-5:]
    # a commit made after queueing: the experiments stay those of the commit they were queued on
    queued_on = run(["git", "rev-parse", "HEAD"], project, stdout_only=True).strip()
    git = ["git", "-c", "user.name=cft tests", "-c", "user.email=tests@cft.invalid"]
    run([*git, "commit", "-q", "--allow-empty", "-m", "a later commit"], project)
    later = [sys.executable, "benchmarks/seeds.py", "table", "--seeds", "3", "4", "--against", "base", "plain"]
    refused = subprocess.run(later, cwd=project, capture_output=True, text=True)
    assert refused.returncode != 0 and "--rev <commit>" in refused.stderr
    assert run([*later, "--rev", queued_on], project).splitlines()[-5:] == output.splitlines()[-5:]
    with pytest.raises(SystemExit, match=r"no finished experiment named \['seed5'\]"):
        seeds.experiments(["seed3", "seed5"], shown)


def test_each_seed_sets_every_seed_param_and_the_methods_with_the_base_model() -> None:
    seeds = load_seeds_script()
    arguments = seeds.seed_overrides(7, ["cft", "fgbg"], ["evaluate.relevance=false"])
    assert arguments[::2] == ["-S"] * (len(arguments) // 2)
    assert arguments[1::2] == [
        "data.seed=7",
        "data.subset.seed=7",
        "base.seed=7",
        "finetune.train.seed=7",
        "finetune.methods=[cft,fgbg]",
        "evaluate.models=[base,cft,fgbg]",
        "evaluate.relevance=false",
    ]
    assert seeds.experiment_name("", 2) == "seed2" and seeds.experiment_name("bg", 2) == "bg-seed2"


def student_t_cdf_above_zero(quantile: float, df: int, steps: int = 20000) -> float:
    """∫_0^q of Student's t density (Simpson's rule): an independent check of the table."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = [
        math.exp(log_norm - (df + 1) / 2 * math.log1p((quantile * i / steps) ** 2 / df)) for i in range(steps + 1)
    ]
    h = quantile / steps
    return h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))


def test_t_quantiles_are_the_975_points() -> None:
    seeds = load_seeds_script()
    for df, quantile in enumerate(seeds.T_975, start=1):
        assert student_t_cdf_above_zero(quantile, df) == pytest.approx(0.475, abs=2e-4), df


def test_paired_differences_by_hand() -> None:
    seeds = load_seeds_script()
    mean, low, high = seeds.paired_interval([0.7, 0.8, 0.6], [0.6, 0.6, 0.6])
    differences = [0.1, 0.2, 0.0]
    half = 4.303 * statistics.stdev(differences) / math.sqrt(3)
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1 - half) and high == pytest.approx(0.1 + half)
    results = [
        {"summary": {"plain": {"ood_acc": r}, "cft": {"ood_acc": v}, "base": {}}}
        for v, r in ((0.7, 0.6), (0.8, 0.6), (0.6, 0.6))
    ]
    table = seeds.paired_table(results, ["plain"])
    assert f"| ood_acc | cft | +0.100 [{0.1 - half:+.3f}, {0.1 + half:+.3f}] |" in table
    assert "| ood_acc | plain |" not in table and "| ood_acc | base |" not in table
