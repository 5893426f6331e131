"""The DVC pipeline end to end on a small world, in a copy of the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import run, tiny_project
from tests.helpers.tiny import TINY_EVALUATE

pytestmark = pytest.mark.slow  # whole `dvc repro` runs: minutes

MODELS = ("base", "cft", "plain", "corruptions", "corruptions_high", "corruptions_low")  # the repository's methods


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("project"))


def test_repro_runs_every_stage(project: Path) -> None:
    output = run(["dvc", "repro"], project)
    models = MODELS
    evaluations = [f"evaluate@{benchmark}-{model}" for benchmark in ("test", "swapped_bg") for model in models]
    for stage in (
        "prepare",
        "base",
        "concepts",
        "masks",
        *(f"finetune@{model}" for model in models[1:]),
        *evaluations,
        "report",
        "analyze",
    ):
        assert f"Running stage '{stage}'" in output
    details = json.loads((project / "results" / "base.json").read_text())
    assert "swapped_bg" in details["accuracy"]
    assert sorted(path.name for path in (project / "metrics").iterdir()) == sorted(f"{model}.json" for model in models)
    shown = run(["dvc", "metrics", "show"], project)
    rows = [line for line in shown.splitlines() if line.startswith("metrics/")]
    assert len(rows) == len(models) and max(len(line) for line in shown.splitlines()) <= 140, shown
    analysed = json.loads((project / "results" / "analyze.json").read_text())
    assert sorted(analysed) == sorted(models) and (project / "plots/analyze/layers.png").is_file()
    assert (project / "models" / "base" / "model.safetensors").is_file()
    assert (project / "dvc.lock").is_file()


def test_second_repro_is_a_no_op(project: Path) -> None:
    before = (project / "models" / "base" / "model.safetensors").stat().st_mtime_ns
    output = run(["dvc", "repro"], project)
    assert "Running stage" not in output
    assert (project / "models" / "base" / "model.safetensors").stat().st_mtime_ns == before


def test_base_param_change_reruns_only_base(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base"]["lr"] = params["base"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    assert "Running stage 'base'" in output
    assert "Running stage 'prepare'" not in output


def test_cft_param_change_reruns_only_cft_and_its_evaluations(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["cft"]["foreground_weight"] = 0.25
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    evaluations = {f"evaluate@{benchmark}-cft" for benchmark in TINY_EVALUATE["benchmarks"]}
    assert ran == {"finetune@cft", *evaluations, "report", "analyze"}, ran


def test_analyze_param_change_reruns_only_analyze(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["analyze"]["severity"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    assert ran == {"analyze"}, ran


def test_benchmark_change_reruns_only_that_benchmark_and_the_report(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["benchmarks"]["swapped_bg"]["limit"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    assert ran == {f"evaluate@swapped_bg-{model}" for model in MODELS} | {"report"}, ran
    evaluated = json.loads((project / "results/evaluate/swapped_bg/base/scores.json").read_text())
    assert evaluated["scores"]["images"] == 20


def test_concepts_param_change_reruns_concepts_but_not_masks_when_concepts_are_the_same(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["concepts"]["filters"]["max_concepts"] = 7  # filters apply to LLM answers; the catalog is unchanged
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    assert "Running stage 'concepts'" in output
    for stage in ("prepare", "base", "masks", "finetune@cft", "evaluate@test-base"):
        assert f"Running stage '{stage}'" not in output


# Outputs DVC caches (and so pushes): git ignores them; a clone gets them only from the remote.
CACHED_OUTS = (
    "data/prepared",
    "data/subset",
    "data/concepts",
    "data/masks",
    "models/base",
    "models/cft",
    "models/plain",
    "results/evaluate/test/cft",
)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def assert_same_tree(pulled: Path, original: Path) -> None:
    pulled_files, original_files = tree_bytes(pulled), tree_bytes(original)
    assert sorted(pulled_files) == sorted(original_files), f"{pulled}: other files than {original}"
    changed = [name for name in original_files if pulled_files[name] != original_files[name]]
    assert not changed, f"{pulled}: differs from {original} in {changed[:5]}"


def dvc_status(cwd: Path) -> dict:
    output = run(["dvc", "status", "--json"], cwd)
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_outputs_pushed_to_a_remote_pull_into_a_clone_without_recomputing_masks(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "add", "-d", "store", str(remote)], project)
    git = ["git", "-c", "user.name=cft tests", "-c", "user.email=tests@cft.invalid"]
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-q", "-m", "pipeline and its outputs"], project)
    # every column of `dvc exp show` legible: DVC squeezes a table wider than 1024 characters into "…"
    table = run(["dvc", "exp", "show"], project)
    assert "metrics/cft.json:ood_acc" in table and "…" not in table, table[:2000]
    run(["dvc", "push"], project)
    assert any(path.is_file() for path in remote.rglob("*"))

    clone = tmp_path_factory.mktemp("clone") / "project"
    run(["git", "clone", "-q", str(project), str(clone)], clone.parent)
    # git brings dvc.lock, metrics/ and plots/ (DVC git-ignores only cached outputs, so `git add -A`
    # committed the `cache: false` metrics and plots); the cached outputs must come from the remote.
    for out in CACHED_OUTS:
        assert not (clone / out).exists(), out
    run(["dvc", "pull"], clone)
    assert (clone / "data/masks/masks.zarr").is_dir() and (clone / "data/masks/masks.parquet").is_file()
    for out in CACHED_OUTS:
        assert_same_tree(clone / out, project / out)

    # The resumable work folders (checkpoints/) are local scratch, not stage outputs: a clone
    # without them is up to date, and `dvc repro` recomputes nothing (above all not the masks).
    assert dvc_status(clone) == {}
    output = run(["dvc", "repro"], clone)
    assert "Running stage" not in output, output
