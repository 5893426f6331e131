from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.corruptions.families import FAMILIES
from pipeline.data.manifest import read_manifest
from pipeline.models.factory import load_model_artifact
from stages.cli import app
from tests.helpers.tiny import TINY_FINETUNE, TINY_SPLITS, tiny_params

runner = CliRunner()


def cli(params: Path) -> Callable[..., str]:
    """``cft <args> --params <params>`` in process; fails the test on a non-zero exit, else returns the output."""

    def invoke(*args: str) -> str:
        result = runner.invoke(app, [*args, "--params", str(params)])
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def run_until_masks(invoke: Callable[..., str], root: Path) -> str:
    """prepare -> base -> concepts -> masks into ``root``; the masks stage's output."""
    invoke(
        "prepare",
        "--out",
        str(root / "data"),
        "--subset",
        str(root / "subset"),
        "--metrics",
        str(root / "m/prepare.json"),
    )
    invoke(
        "base",
        "--data",
        str(root / "data"),
        "--out",
        str(root / "models/base"),
        "--metrics",
        str(root / "m/base.json"),
        "--plots",
        str(root / "p/base"),
    )
    invoke("concepts", "--data", str(root / "data"), "--out", str(root / "concepts"))
    return invoke(
        "masks",
        "--data",
        str(root / "data"),
        "--subset",
        str(root / "subset"),
        "--concepts",
        str(root / "concepts"),
        "--out",
        str(root / "masks"),
        "--work",
        str(root / "work"),
        "--sheet",
        str(root / "p/masks.png"),
    )


@pytest.mark.parametrize("command", [[], ["prepare"], ["base"], ["concepts"], ["masks"], ["finetune"], ["evaluate"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output or "prepare" in result.output


def test_invalid_params_exit_with_named_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  lr: -1\n")
    result = runner.invoke(app, ["base", "--params", str(params), "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "base.lr: Input should be greater than 0" in result.output


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml")
    result = runner.invoke(app, ["base", "--params", str(params), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "manifest not found (run `cft prepare` first)" in result.output


def test_prepare_then_base(tmp_path: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml")
    data, model_dir = tmp_path / "data", tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(data),
            "--subset",
            str(tmp_path / "subset"),
            "--metrics",
            str(tmp_path / "prepare.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(data / "manifest.parquet").num_rows == sum(TINY_SPLITS.values())
    result = runner.invoke(
        app,
        [
            "base",
            "--params",
            str(params),
            "--data",
            str(data),
            "--out",
            str(model_dir),
            "--metrics",
            str(tmp_path / "base.json"),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert result.exit_code == 0, result.output
    model, spec = load_model_artifact(model_dir)
    assert spec["class_names"][0] == "fish" and spec["create_kwargs"]["img_size"] == 32
    metrics = json.loads((tmp_path / "base.json").read_text())
    assert set(metrics["accuracy"]) == set(TINY_SPLITS) - {"pretrain", "train"}
    assert all(0.0 <= value <= 1.0 for value in metrics["accuracy"].values())
    assert "shortcut_gap" in metrics and "cue_gap" in metrics
    for name in ("training.csv", "accuracy.csv", "training.png", "accuracy.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    assert len((tmp_path / "plots" / "training.csv").read_text().splitlines()) == 1 + 2


def test_base_rejects_a_phase_on_a_missing_split(tmp_path: Path, tiny_world: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml", phases=[{"split": "imagenet", "epochs": 1}])
    result = runner.invoke(
        app, ["base", "--params", str(params), "--data", str(tiny_world), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "split 'imagenet' is not in" in result.output


def test_whole_method_through_the_cli(tmp_path: Path) -> None:
    """prepare -> base -> concepts -> masks -> finetune (cft, plain, and on high-frequency
    corruptions) -> evaluate (also under corruptions) -> report, on a tiny world."""
    params = tiny_params(tmp_path / "params.yaml")
    settings = yaml.safe_load(params.read_text())
    settings["finetune"]["methods"].append("noisy")
    settings["finetune"]["noisy"] = {"objective": "labels", "corruptions": ["high"], "corrupted_share": 1.0}
    settings["evaluate"]["benchmarks"]["corrupted"] = {
        "kind": "corrupted",
        "of": {"kind": "split", "split": "test", "limit": 6},
        "corruptions": ["gaussian_noise", "pixelate", "fog", "contrast"],
        "severities": [1, 5],
    }
    settings["analyze"] = {"images": 8, "batch_size": 4, "sae": {"steps": 20, "expansion": 2}}
    params.write_text(yaml.safe_dump(settings))
    invoke = cli(params)
    output = run_until_masks(invoke, tmp_path)
    assert "ok " in output and (tmp_path / "p/masks.png").stat().st_size > 0
    for method in ("cft", "plain", "noisy"):
        output = invoke(
            "finetune",
            method,
            "--base",
            str(tmp_path / "models/base"),
            "--data",
            str(tmp_path / "data"),
            "--subset",
            str(tmp_path / "subset"),
            "--masks",
            str(tmp_path / "masks"),
            "--out",
            str(tmp_path / f"models/{method}"),
            "--checkpoints",
            str(tmp_path / f"ckpt/{method}"),
            "--metrics",
            str(tmp_path / f"m/{method}.json"),
            "--plots",
            str(tmp_path / f"p/{method}"),
        )
        assert "background share of relevance" in output
        curves = (tmp_path / f"p/{method}/curves.csv").read_text().splitlines()
        assert len(curves) == 1 + 3  # header, the base model (epoch 0), two epochs
        _, spec = load_model_artifact(tmp_path / f"models/{method}")
        assert spec["finetune"]["method"] == method and len(spec["finetune"]["seen_classes"]) == 5
    assert (tmp_path / "p/cft/relevance.png").stat().st_size > 0
    for benchmark in ("test", "swapped_bg", "corrupted", "backgrounds"):
        # base alone, then the two methods in one call (sharing each batch): the same results
        output = invoke(
            "evaluate",
            benchmark,
            "base",
            "--models",
            str(tmp_path / "models"),
            "--data",
            str(tmp_path / "data"),
            "--subset",
            str(tmp_path / "subset"),
            "--out",
            str(tmp_path / f"results/{benchmark}"),
            "--work",
            str(tmp_path / f"ckpt/evaluate/{benchmark}"),
        )
        output += invoke(
            "evaluate",
            benchmark,
            "cft",
            "plain",
            "noisy",
            "--models",
            str(tmp_path / "models"),
            "--data",
            str(tmp_path / "data"),
            "--subset",
            str(tmp_path / "subset"),
            "--out",
            str(tmp_path / f"results/{benchmark}"),
            "--work",
            str(tmp_path / f"ckpt/evaluate/{benchmark}"),
        )
        assert f"{benchmark} / cft: accuracy" in output and f"{benchmark} / base: accuracy" in output
        for model in ("base", "cft", "plain", "noisy"):
            assert (tmp_path / f"results/{benchmark}/{model}/predictions.parquet").stat().st_size > 0
            assert (tmp_path / f"results/{benchmark}/{model}/overlay.npz").is_file() == (benchmark != "corrupted")
    invoke(
        "report",
        "--results",
        str(tmp_path / "results"),
        "--metrics",
        str(tmp_path / "metrics"),
        "--plots",
        str(tmp_path / "p/summary"),
    )
    models = ("base", "cft", "plain", "noisy")
    compact = {model: json.loads((tmp_path / f"metrics/{model}.json").read_text()) for model in models}
    assert sorted(path.name for path in (tmp_path / "metrics").iterdir()) == sorted(f"{m}.json" for m in models)
    assert compact["base"]["forgetting"] == 0.0 and compact["base"]["c_rel_ce"] == 1.0
    usual = {"ood_acc", "ood_seen", "ood_unseen", "id_acc", "forgetting", "cue_lift", "bg_drop", "bg_gap", "only_bg"}
    assert set(compact["cft"]) == usual | {"c_unseen", "c_rel_ce"}
    assert set(compact["noisy"]) == usual | {"c_seen", "c_unseen", "c_rel_ce"}
    corrupted = json.loads((tmp_path / "results/corrupted/noisy/scores.json").read_text())
    assert corrupted["trained_corruptions"] == list(FAMILIES["high"])
    assert corrupted["benchmark"]["images"] == 6 * 4 * 2
    scores = corrupted["scores"]
    assert scores["accuracy_corruptions_seen"] == pytest.approx(
        (scores["accuracy_gaussian_noise"] + scores["accuracy_pixelate"]) / 2, abs=1e-6
    )
    assert scores["accuracy_family_low"] == pytest.approx(
        (scores["accuracy_fog"] + scores["accuracy_contrast"]) / 2, abs=1e-6
    )
    assert compact["noisy"]["c_seen"] == round(scores["accuracy_corruptions_seen"], 4)
    cells = (tmp_path / "results/corrupted/noisy/corruptions.csv").read_text().splitlines()
    assert len(cells) == 1 + 4 * 2 and cells[1].startswith("gaussian_noise,high,1,6,")
    detail = (tmp_path / "p/summary/metrics.csv").read_text().splitlines()
    header = detail[0].split(",")
    assert {
        "accuracy",
        "accuracy_seen",
        "accuracy_unseen",
        "miou",
        "miou_seen",
        "miou_unseen",
        "background_share",
        "ap",
        "pixel_accuracy",
    } <= set(header)
    rows = [dict(zip(header, line.split(","), strict=True)) for line in detail[1:]]
    assert {(row["benchmark"], row["model"]) for row in rows} == {
        (b, m) for b in ("test", "swapped_bg", "corrupted", "backgrounds") for m in models
    }
    swapped_cft = next(row for row in rows if row["benchmark"] == "swapped_bg" and row["model"] == "cft")
    # corruptions and the backgrounds variants are reported apart
    assert compact["cft"]["ood_acc"] == round(float(swapped_cft["accuracy"]), 4)
    variants = json.loads((tmp_path / "results/backgrounds/cft/scores.json").read_text())["scores"]
    assert variants["images"] == 14
    assert compact["cft"]["bg_gap"] == round(variants["accuracy_mixed_same"] - variants["accuracy_mixed_rand"], 4)
    assert compact["cft"]["only_bg"] == round(variants["accuracy_only_bg"], 4)
    for name in (
        "accuracy.png",
        "miou.png",
        "metrics.csv",
        "relevance_test.png",
        "relevance_swapped_bg.png",
        "corruptions_corrupted.png",
        "corruptions.csv",
        "corruption_severity.csv",
        "spurious.png",
        "spurious.csv",
    ):
        assert (tmp_path / "p/summary" / name).stat().st_size > 0
    output = invoke(
        "analyze",
        "--models",
        str(tmp_path / "models"),
        "--data",
        str(tmp_path / "data"),
        "--metrics",
        str(tmp_path / "analyze.json"),
        "--tables",
        str(tmp_path / "p/analyze"),
        "--figure",
        str(tmp_path / "p/analyze/layers.png"),
    )
    analysed = json.loads((tmp_path / "analyze.json").read_text())
    assert sorted(analysed) == sorted(models) and analysed["base"]["cka_last"] == 1.0
    assert "analyze: 4 models, 8 probe images" in output
    layers = (tmp_path / "p/analyze/layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 4 * 2  # models x inputs x the tiny ViT's one block
    assert (tmp_path / "p/analyze/layers.png").stat().st_size > 0 and (tmp_path / "p/analyze/heads.csv").is_file()


def test_finetune_names_an_unknown_method(tmp_path: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml")
    result = runner.invoke(
        app,
        [
            "finetune",
            "robust",
            "--params",
            str(params),
            "--out",
            "o",
            "--checkpoints",
            "c",
            "--metrics",
            "m.json",
            "--plots",
            "p",
        ],
    )
    assert result.exit_code == 2
    assert "no fine-tuning method 'finetune.robust'; defined: ['cft', 'plain']" in result.output


def test_concepts_from_an_llm_through_the_cli(
    tmp_path: Path, tiny_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.concepts.store import read_concepts
    from tests.helpers.llm_server import Reply, ScriptedLLM, concepts_json

    monkeypatch.setenv("CFT_TEST_LLM_KEY", "sk-never-in-artifacts")

    def script(name: str, earlier: int) -> Reply:
        if name == "rocket":
            return Reply(200, "I cannot help with that.")
        return Reply(200, concepts_json("wings", f"{name} shape", "blue sky", "pointed tip"))

    with ScriptedLLM(script) as server:
        params = tmp_path / "params.yaml"
        llm = {
            "model": "openai/local",
            "api_base": server.url,
            "api_key_env": "CFT_TEST_LLM_KEY",
            "cache_dir": str(tmp_path / "cache"),
            "backoff_s": 0.0,
            "max_retries": 1,
        }
        params.write_text(yaml.safe_dump({"concepts": {"source": "llm", "llm": llm}}))
        result = runner.invoke(
            app, ["concepts", "--params", str(params), "--data", str(tiny_world), "--out", str(tmp_path / "concepts")]
        )
        assert result.exit_code == 2
        assert "1 class(es) without valid concepts after 1 retries: ['rocket']" in result.output
        assert not (tmp_path / "concepts").exists()

        llm["on_invalid"] = "fallback"
        params.write_text(yaml.safe_dump({"concepts": {"source": "llm", "llm": llm}}))
        result = runner.invoke(
            app, ["concepts", "--params", str(params), "--data", str(tiny_world), "--out", str(tmp_path / "concepts")]
        )
        assert result.exit_code == 0, result.output
        assert "fallbacks ['rocket']" in result.output
        requests = server.count()
        rerun = runner.invoke(
            app, ["concepts", "--params", str(params), "--data", str(tiny_world), "--out", str(tmp_path / "concepts")]
        )
        assert rerun.exit_code == 0 and server.count() == requests + 2  # only the invalid class is asked again
    concepts = read_concepts(tmp_path / "concepts")
    assert concepts["fish"] == ["wings", "pointed tip"] and concepts["rocket"] == ["rocket"]
    payload = json.loads((tmp_path / "concepts" / "concepts.json").read_text())
    assert payload["provenance"]["model"] == "openai/local" and len(payload["provenance"]["prompt_sha256"]) == 16
    assert payload["filter_stats"]["fish"]["dropped"]["names_class"] == ["fish shape"]
    assert payload["filter_stats"]["fish"]["dropped"]["context"] == ["blue sky"]
    for path in [*(tmp_path / "concepts").iterdir(), *(tmp_path / "cache").iterdir()]:
        assert "sk-never-in-artifacts" not in path.read_bytes().decode(errors="ignore")


MODEL_FAMILIES = {
    "convnextv2": {"model": "convnextv2_atto", "model_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}},
    "dinov2_linear_head": {
        "model": "dinov2_vits14_lc",
        "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
    },
}


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_cft_runs_on_every_model_family(tmp_path: Path, family: str) -> None:
    """base -> masks -> finetune cft -> evaluate through the CLI for the CNN and the DINOv2 classifier."""
    params = tiny_params(tmp_path / "params.yaml", **MODEL_FAMILIES[family], phases=[{"split": "train", "epochs": 1}])
    config = yaml.safe_load(params.read_text())
    config["finetune"] = {
        **TINY_FINETUNE,
        "methods": ["cft"],
        "train": {**TINY_FINETUNE["train"], "epochs": 1, "lr": 1e-3},
    }
    params.write_text(yaml.safe_dump(config))
    invoke = cli(params)
    run_until_masks(invoke, tmp_path)
    invoke(
        "finetune",
        "cft",
        "--base",
        str(tmp_path / "models/base"),
        "--data",
        str(tmp_path / "data"),
        "--subset",
        str(tmp_path / "subset"),
        "--masks",
        str(tmp_path / "masks"),
        "--out",
        str(tmp_path / "models/cft"),
        "--checkpoints",
        str(tmp_path / "ckpt/cft"),
        "--metrics",
        str(tmp_path / "m/cft.json"),
        "--plots",
        str(tmp_path / "p/cft"),
    )
    base, spec = load_model_artifact(tmp_path / "models/base")
    tuned, _ = load_model_artifact(tmp_path / "models/cft")
    assert spec["timm_name"] == MODEL_FAMILIES[family]["model"]
    assert any(
        not torch.equal(a, b) for a, b in zip(base.state_dict().values(), tuned.state_dict().values(), strict=True)
    )
    invoke(
        "evaluate",
        "test",
        "base",
        "cft",
        "--models",
        str(tmp_path / "models"),
        "--data",
        str(tmp_path / "data"),
        "--subset",
        str(tmp_path / "subset"),
        "--out",
        str(tmp_path / "results/test"),
        "--work",
        str(tmp_path / "ckpt/evaluate/test"),
    )
    scores = {
        model: json.loads((tmp_path / f"results/test/{model}/scores.json").read_text())["scores"]
        for model in ("base", "cft")
    }
    assert 0.0 < scores["cft"]["miou"] < 1.0 and scores["cft"]["miou"] != scores["base"]["miou"]
