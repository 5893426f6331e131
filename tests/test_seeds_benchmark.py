"""`benchmarks/seeds.py`: the whole method per seed through the CLI, then one table over seeds."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import app
from tests.helpers.tiny import tiny_params


def load_seeds_script() -> ModuleType:  # benchmarks/ is scripts, not a package
    spec = importlib.util.spec_from_file_location(
        "seeds", Path(__file__).resolve().parents[1] / "benchmarks" / "seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_table_over_seeds_with_every_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = load_seeds_script()

    def in_process(command: list[str], check: bool, cwd: Path) -> None:
        """The script's ``python -m stages.cli <args>``, run in this process (no start-up per stage)."""
        assert command[1:3] == ["-m", "stages.cli"] and check
        result = CliRunner().invoke(app, command[3:])
        assert result.exit_code == 0, result.output

    monkeypatch.setattr(seeds, "subprocess", SimpleNamespace(run=in_process))
    params = tiny_params(tmp_path / "params.yaml")
    seeds.main(["--seeds", "3", "4", "--params", str(params), "--work", str(tmp_path / "work")])
    table = capsys.readouterr().out
    assert "| benchmark | metric | base | cft | plain |" in table
    assert "| swapped_bg | miou |" in table and "| summary | ood_acc |" in table
    assert "| backgrounds | bg_gap |" in table and "| summary | only_bg |" in table
    for seed in (3, 4):
        results = tmp_path / f"work/seed{seed}/results/evaluate"
        assert {(path.parent.name, path.name) for path in results.glob("*/*")} == {
            (b, m) for b in ("test", "swapped_bg", "backgrounds") for m in ("base", "cft", "plain")
        }
        assert sorted(path.name for path in (tmp_path / f"work/seed{seed}/metrics").iterdir()) == [
            "base.json",
            "cft.json",
            "plain.json",
        ]
    first = (tmp_path / "work/seed3/plots/summary/metrics.csv").read_text()
    second = (tmp_path / "work/seed4/plots/summary/metrics.csv").read_text()
    assert first != second  # the seed reaches data, subset, base and fine-tuning
    spread = [line for line in table.splitlines() if line.startswith("| test | accuracy_seen |")]
    assert spread and "±" in spread[0]
    assert (
        "paired differences over seeds [3, 4]" in table and "| ood_acc | cft | " in table
    )  # against plain (fgbg was not run)


def test_outputs_of_other_code_or_params_are_not_reused(tmp_path: Path) -> None:
    seeds = load_seeds_script()
    params = yaml.safe_load(tiny_params(tmp_path / "params.yaml").read_text())
    root = tmp_path / "seed0"
    root.mkdir()
    seeds.check_reusable(root, params)
    seeds.check_reusable(root, params)  # same code, same params: reuse
    with_method = {
        **params,
        "finetune": {
            **params["finetune"],
            "methods": ["cft", "plain", "fgbg"],
            "fgbg": {"objective": "relevance", "masks": "object"},
        },
    }
    seeds.check_reusable(root, with_method)  # a new method: the others are reused
    changed = {**params, "base": {**params["base"], "lr": 0.5}}
    with pytest.raises(SystemExit, match="seed0: made with different params 'base'; use a new --work folder"):
        seeds.check_reusable(root, changed)
    stamp = json.loads((root / "stamp.json").read_text())
    (root / "stamp.json").write_text(json.dumps({**stamp, "code": "0" * 64}))
    with pytest.raises(SystemExit, match="made with different pipeline code;"):
        seeds.check_reusable(root, with_method)


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
