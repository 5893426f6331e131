"""Stages on several processes (gloo, on the CPU) against one: `cft finetune` under torchrun (same
weights; a rank killed mid-run resumes), `cft evaluate` and `cft masks` sharded by parts (the same
bytes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.data.manifest import classes_of, read_manifest
from pipeline.utils.checkpoint import STATE_NAME
from pipeline.utils.distributed import Ranks
from tests.helpers.ranks import run_ranks
from tests.helpers.tiny import TINY_EVALUATE
from tests.helpers.training import finetune_inputs

pytestmark = pytest.mark.slow  # several fine-tuning processes: about a minute

REPO = Path(__file__).resolve().parents[1]
# 15 fine-tuning images in batches of 4: shares of 2 and 2, and a last batch of 3 split 1 and 2
SCHEDULE = {"epochs": 4, "batch_size": 4, "lr": 1e-3, "lr_step_epochs": 2, "overlay_images": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def project(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs of `cft finetune` on disk (tiny world, subset, concept masks, a random base model) and params."""
    root = tmp_path_factory.mktemp("distributed")
    finetune_inputs(tiny_world, root, images_per_class=3)
    params = {
        "finetune": {
            "train": {**SCHEDULE, "allow_chance": True},
            "cft": {"objective": "relevance"},
            "plain": {"objective": "labels", "corruptions": ["gaussian_noise", "contrast"], "corrupted_share": 0.5},
        }
    }
    # 30 test images in parts of 7: five parts, three on rank 0 and two on rank 1
    params["evaluate"] = {**TINY_EVALUATE, "models": ["base"], "part_size": 7, "device": "cpu", "workers": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data").symlink_to(tiny_world)
    return root


def finetune_command(project: Path, method: str, name: str) -> list[str]:
    return [
        "cft", "finetune", method, "--params", str(project / "params.yaml"), "--base", str(project / "base"),
        "--data", str(project / "data"), "--subset", str(project / "subset"), "--masks", str(project / "masks"),
        "--out", str(project / name / "model"), "--checkpoints", str(project / name / "checkpoints"),
        "--metrics", str(project / name / "metrics.json"), "--plots", str(project / name / "plots"),
    ]  # fmt: skip


def torchrun(processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--no-python",
    ]


def environment() -> dict[str, str]:
    # one thread per process: two processes on two cores, and sums in the same order in both runs
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def weights(project: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(project / name / "model" / "model.safetensors")


def without_key_bias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights without the key third of each qkv bias. Adding a constant to every key shifts a
    query's scores by the same amount, which softmax ignores: the model computes the same for any
    key bias, its gradient is rounding noise around zero, and AdamW, which divides by the gradient's
    running magnitude, moves it by about lr per step in whatever direction the noise points. Two
    float32 summation orders give two noises, so these entries drift apart by up to lr × steps
    (3.5e-3 measured) while every other weight agrees to 1e-5."""
    kept = dict(state)
    for name, tensor in state.items():
        if name.endswith("attn.qkv.bias"):
            third = len(tensor) // 3
            kept[name] = torch.cat([tensor[:third], tensor[2 * third :]])
    return kept


@pytest.mark.parametrize("method", ["cft", "plain"])
def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(project: Path, method: str) -> None:
    run(finetune_command(project, method, f"one-{method}"))
    output = run(torchrun(2) + finetune_command(project, method, f"two-{method}"))
    assert output.count(f"finetune/{method} -> ") == 1  # one rank writes and reports
    one, two = without_key_bias(weights(project, f"one-{method}")), without_key_bias(weights(project, f"two-{method}"))
    assert one.keys() == two.keys()
    base = without_key_bias(load_file(project / "base" / "model.safetensors"))
    # float32 sums over two shares instead of one batch round differently; AdamW carries that over
    # 16 steps to about 1e-5, a thousandth of how far training moved each tensor (measured: ≤ 0.14 %)
    for name in one:
        difference = (one[name] - two[name]).abs().max().item()
        moved = (one[name] - base[name]).abs().max().item()
        assert moved > 1e-3 and difference <= 5e-3 * moved, (name, difference, moved)


def rank_process(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the worker process with ``RANK=rank`` among the launcher's children."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in variables:
            return int(pid)
    raise AssertionError(f"no rank {rank} among the launcher's children {children}")


def test_a_rank_killed_mid_run_and_a_rerun_resume_to_the_uninterrupted_weights(project: Path) -> None:
    run(torchrun(2) + finetune_command(project, "cft", "uninterrupted"))
    command = torchrun(2) + finetune_command(project, "cft", "killed")
    state = project / "killed" / "checkpoints" / STATE_NAME
    launcher = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not state.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert launcher.poll() is None, "the run ended before it could be interrupted"
    os.kill(rank_process(launcher, 1), signal.SIGKILL)  # after the first epoch's state, before the last
    launcher.communicate(timeout=300)
    assert launcher.returncode != 0 and not (project / "killed" / "model").exists()
    output = run(command)
    assert "resuming after epoch" in output
    resumed, uninterrupted = weights(project, "killed"), weights(project, "uninterrupted")
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


def test_shares_cover_a_batch_once_in_order() -> None:
    for count in (0, 1, 3, 7, 64):
        for world in (1, 2, 3, 8):
            shares = [Ranks(rank, world).share(count) for rank in range(world)]
            covered = [index for share in shares for index in range(count)[share]]
            assert covered == list(range(count))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def invoke(arguments: list[str]) -> None:
    """One `cft` command in this process; a failure raises (also in a spawned rank)."""
    from typer.testing import CliRunner

    from stages.cli import app

    result = CliRunner().invoke(app, arguments)
    if result.exit_code != 0:
        raise RuntimeError(f"cft {' '.join(arguments)}: exit {result.exit_code}\n{result.output}")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_sharded_evaluate_writes_the_bytes_of_one_process(project: Path) -> None:
    def arguments(name: str) -> list[str]:
        return [
            "evaluate", "test", "base", "--params", str(project / "params.yaml"), "--models", str(project),
            "--data", str(project / "data"), "--subset", str(project / "subset"),
            "--out", str(project / name / "results"), "--work", str(project / name / "work"),
        ]  # fmt: skip

    run_ranks(1, invoke, arguments("evaluate-one"))  # one thread per process in both runs: the same sums
    run_ranks(2, invoke, arguments("evaluate-two"))
    one, two = tree_bytes(project / "evaluate-one" / "results"), tree_bytes(project / "evaluate-two" / "results")
    assert set(one) == {"base/scores.json", "base/predictions.parquet", "base/overlay.npz"}
    assert one == two
    assert len(list((project / "evaluate-two" / "work").rglob("part-*.npz"))) == 5  # each rank wrote its parts


def invoke_with_tiny_sam(arguments: list[str]) -> None:
    """`cft masks` with SAM's vit_b preset swapped for the tiny architecture (as the single-process
    mask tests do: a vit_b embedding takes 20 s on this CPU)."""
    from pipeline.masks.segmenting import SAM_ARCHITECTURES
    from tests.helpers.grounded_models import TINY_SAM

    SAM_ARCHITECTURES["vit_b"] = TINY_SAM
    invoke(arguments)


def test_sharded_grounded_sam_masks_write_the_bytes_of_one_process(project: Path, tmp_path: Path) -> None:
    from pipeline.concepts.store import write_concepts
    from tests.helpers.grounded_models import save_tiny_grounded_sam, tiny_grounded_sam_params

    save_tiny_grounded_sam(tmp_path)
    classes = classes_of(read_manifest(project / "data" / "manifest.parquet"))
    write_concepts(tmp_path / "concepts", {c: ["head", "wheels"] for c in classes}, {"source": "test"})
    params = tiny_grounded_sam_params(tmp_path, images_per_part=4)  # 15 images: parts of 4, 4, 4, 3, two per rank
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def arguments(name: str) -> list[str]:
        return [
            "masks", "--params", str(tmp_path / "params.yaml"), "--data", str(project / "data"),
            "--subset", str(project / "subset"), "--concepts", str(tmp_path / "concepts"),
            "--out", str(tmp_path / name / "masks"), "--work", str(tmp_path / name / "work"),
            "--sheet", str(tmp_path / name / "masks.png"), "--metrics", str(tmp_path / name / "masks.json"),
        ]  # fmt: skip

    run_ranks(1, invoke_with_tiny_sam, arguments("one"))  # one thread per process in both runs: the same sums
    run_ranks(2, invoke_with_tiny_sam, arguments("two"))
    one, two = tree_bytes(tmp_path / "one"), tree_bytes(tmp_path / "two")
    parts = {name for name in one if "/part-" in name}
    assert len(parts) == 4 and {name for name in two if "/part-" in name} == parts
    assert one == two  # the store, its QC table, the metrics, the contact sheet and every part


def test_ddp_measurement_behind_the_all_reduce_choice(tmp_path: Path) -> None:
    """What pipeline/utils/distributed.py says of DistributedDataParallel on the CFT objective holds
    for the installed torch (benchmarks/ddp_gradients.py, batch 2 over 2 gloo processes): its default
    gives the gradient of one process, as our all-reduce does, also with the competitor pass; with
    ``static_graph`` the gradient is silently wrong; ``find_unused_parameters`` raises."""
    rows_file = tmp_path / "ddp.json"
    run(torchrun(2)[:-1] + ["benchmarks/ddp_gradients.py", "--batch", "2", "--repeats", "1", "--json", str(rows_file)])
    rows = {(row["objective"], row["way"]): row for row in json.loads(rows_file.read_text())}
    assert {objective for objective, _ in rows} == {"paper objective", "with competitors"}
    for objective in ("paper objective", "with competitors"):
        assert rows[objective, "all-reduce"]["gradient_gap"] < 1e-5
        assert rows[objective, "ddp"]["gradient_gap"] < 1e-5
        assert rows[objective, "ddp static_graph"]["gradient_gap"] > 0.1
        assert "ready only once" in rows[objective, "ddp find_unused"]["error"]


def test_sharded_analyze_writes_the_bytes_of_one_process(project: Path, tmp_path: Path) -> None:
    # two models × (clean, corrupted) = four passes, two per rank; the second model is the base
    # model's artifact under another name (the sharing does not care what the weights are)
    models = tmp_path / "models"
    models.mkdir()
    (models / "base").symlink_to(project / "base")
    (models / "cft").symlink_to(project / "base")
    analyze = {"models": ["base", "cft"], "images": 12, "batch_size": 5, "device": "cpu"}
    analyze["sae"] = {"steps": 20, "batch_size": 64, "max_tokens": 256}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"finetune": {"methods": ["cft"]}, "analyze": analyze}))

    def arguments(name: str) -> list[str]:
        out = tmp_path / name
        return [
            "analyze", "--params", str(params), "--models", str(models), "--data", str(project / "data"),
            "--metrics", str(out / "analyze.json"), "--tables", str(out / "tables"), "--figure", str(out / "layers.png"),
        ]  # fmt: skip

    run_ranks(1, invoke, arguments("one"))
    run_ranks(2, invoke, arguments("two"))
    one, two = tree_bytes(tmp_path / "one"), tree_bytes(tmp_path / "two")
    assert {"analyze.json", "layers.png", "tables/layers.csv", "tables/heads.csv"} <= set(one)
    assert one == two
