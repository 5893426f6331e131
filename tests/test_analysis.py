"""`cft analyze` on real timm architectures with random weights: the hooks read what the model
computes (attention equals timm's own, the logit lens at the last layer is the model's output),
leave the model as it was, and the whole analysis runs for a ViT and a ConvNeXt."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from torch import nn

from pipeline.analysis.measure import ProbeSet, analyze, read_model
from pipeline.analysis.probes import AnalysisError, ModelProbe, attention_probabilities

SAE = {"layer": -1, "expansion": 2, "k": 4, "steps": 30, "batch_size": 64, "lr": 1e-3, "max_tokens": 4000}


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5
    )
    return model.eval()


def tiny_convnext(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("convnext_atto", num_classes=5, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    return model.eval()


def probes(count: int = 12, masks: bool = True) -> ProbeSet:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    corrupted = np.clip(clean.astype(int) + rng.integers(-60, 61, clean.shape), 0, 255).astype(np.uint8)
    object_masks = np.zeros((count, 32, 32), dtype=bool)
    object_masks[:, 8:24, 8:24] = True
    return ProbeSet(clean, corrupted, rng.integers(0, 5, count), object_masks if masks else None)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float() / 255.0


def test_attention_is_the_one_timm_computes() -> None:
    model = tiny_vit()
    attention = model.blocks[1].attn
    attention.fused_attn = False  # timm's explicit path materialises the probabilities (before attn_drop)
    seen: list[torch.Tensor] = []
    attention.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))
    inputs: list[torch.Tensor] = []
    attention.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(attention_probabilities(attention, inputs[0]), seen[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [tiny_vit, tiny_convnext], ids=["vit", "convnext"])
def test_logit_lens_at_the_last_layer_is_the_models_output_and_hooks_are_removed(
    build: Callable[[], nn.Module],
) -> None:
    model = build()
    probe = ModelProbe(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), probe.capture() as captured:
        logits = model(x)
    torch.testing.assert_close(probe.logit_lens(len(probe.layers) - 1, captured), logits)
    assert len(captured.tokens) == len(captured.hidden) == len(probe.layers)
    assert len(captured.attention) == (len(probe.layers) if probe.kind == "vit" else 0)
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in probe.layers)
    assert all(not layer.mlp.act._forward_hooks for layer in probe.layers)
    if probe.kind == "convnext":  # earlier stages are narrower than the head: no lens there
        assert probe.logit_lens(0, captured) is None


def test_read_model_logit_lens_at_the_last_layer_equals_accuracy() -> None:
    model, data = tiny_vit(), probes(20)
    with torch.no_grad():
        predictions = model(normalize(torch.from_numpy(data.clean))).argmax(dim=1).numpy()
    data.labels[:10] = predictions[:10]  # half right, whatever the random weights predict
    data.labels[10:] = (predictions[10:] + 1) % 5
    readout = read_model(
        model, normalize, data.clean, data.labels, data.masks, 7, torch.device("cpu"), 2, torch.arange(5)
    )
    assert readout.accuracy == 0.5
    assert readout.layers[-1]["logit_lens_accuracy"] == pytest.approx(0.5)
    assert {"attention_entropy", "attention_distance", "object_attention", "active_share", "hoyer"} <= set(
        readout.layers[0]
    )
    assert len(readout.heads) == 3 * 3 and readout.pooled[0].shape == (20, 48)


def test_analysis_of_vits_compares_every_model_with_the_base() -> None:
    models = {"base": (tiny_vit(0), normalize), "other": (tiny_vit(1), normalize)}
    result = analyze(models, probes(), batch_size=5, device=torch.device("cpu"), sae=SAE, seed=0)
    by_key = {(row["model"], row["input"], row["layer"]): row for row in result.layers}
    assert len(by_key) == 2 * 2 * 3
    assert all(
        by_key["base", kind, layer]["cka_to_base"] == pytest.approx(1.0)
        for kind in ("clean", "corrupted")
        for layer in range(3)
    )
    assert by_key["other", "clean", 2]["cka_to_base"] < 0.99  # different random weights
    assert 0 < by_key["base", "corrupted", 0]["cka_clean_corrupted"] <= 1
    assert result.models["base"]["cka_last"] == pytest.approx(1.0) and result.models["base"]["sae_overlap"] == 1.0
    assert result.models["other"]["sae_fvu"] > result.models["base"]["sae_fvu"]  # another model's tokens fit worse
    assert {row["head"] for row in result.heads} == {0, 1, 2}
    assert any("SAE: layer 2" in note for note in result.notes)


def test_analysis_of_a_convnext_skips_attention_with_a_note() -> None:
    models = {"base": (tiny_convnext(0), normalize), "other": (tiny_convnext(1), normalize)}
    result = analyze(models, probes(masks=False), batch_size=6, device=torch.device("cpu"), sae=SAE, seed=0)
    assert any("no attention" in note for note in result.notes)
    assert not result.heads and all("attention_entropy" not in row for row in result.layers)
    assert len({row["layer"] for row in result.layers}) == 5  # blocks over all stages
    lens = [row for row in result.layers if "logit_lens_accuracy" in row]
    assert {row["layer"] for row in lens} == {4}  # the last stage's block only


def test_models_other_than_vits_and_convnexts_are_refused() -> None:
    with pytest.raises(AnalysisError, match="Sequential is neither"):
        ModelProbe(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


def test_register_tokens_are_prefix_tokens_and_dinov2_classifiers_have_no_logit_lens() -> None:
    """DINOv2 with registers: the class token and 4 registers come before the patches; Meta's
    linear head reads several blocks' class tokens at once, so no single layer has a lens."""
    import pipeline.models.dinov2_classifier  # noqa: F401  (registers dinov2_*_lc with timm)

    torch.manual_seed(0)
    model = timm.create_model(
        "dinov2_vits14_reg_lc",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=4,
        num_heads=2,
    ).eval()
    probe = ModelProbe(model)
    assert probe.prefix_tokens == 5 and probe.grid == (4, 4) and probe.lens_layers == []
    result = analyze({"base": (model, normalize)}, probes(8), batch_size=4, device=torch.device("cpu"), sae=SAE, seed=0)
    rows = [row for row in result.layers if row["input"] == "clean"]
    assert all("logit_lens_accuracy" not in row and 0 <= row["object_attention"] <= 1 for row in rows)
