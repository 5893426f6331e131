"""GroundingDINO and SAM with random weights in small configs: shapes, geometry, batching, loading."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.masks import GroundingDinoConfig, SamConfig
from pipeline.masks.grounding import (
    ConceptDetector,
    GroundingError,
    build_grounding_dino,
    caption,
    cxcywh_to_xyxy,
    load_grounding_dino,
    resolve_text_encoder,
)
from pipeline.masks.segmenting import SAM_ARCHITECTURES, BoxSegmenter, build_sam, load_sam
from pipeline.models.weights import ModelFileError, file_sha256
from tests.helpers.grounded_models import (
    GROUNDING_OVERRIDES,
    TINY_SAM,
    spread_scores,
    tiny_grounding_config,
    tiny_text_encoder,
)

CPU = torch.device("cpu")
PROMPTS = ["long beak", "wings", "red tail"]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_text_encoder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def grounding_model(text_encoder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_grounding_dino(tiny_grounding_config(text_encoder), GROUNDING_OVERRIDES)
    spread_scores(model)
    return model


@pytest.fixture
def detector(grounding_model: torch.nn.Module, text_encoder: Path) -> ConceptDetector:
    return ConceptDetector(
        grounding_model, tiny_grounding_config(text_encoder, box_threshold=0.0, text_threshold=0.0), CPU
    )


def random_image(height: int = 72, width: int = 120, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_caption_is_lower_case_with_one_period() -> None:
    assert caption("Long Beak") == "long beak."
    assert caption(" wings. ") == "wings."


def test_box_conversion_cxcywh_to_xyxy() -> None:
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.1, 0.2]])
    np.testing.assert_allclose(cxcywh_to_xyxy(boxes).numpy(), [[0, 0, 1, 1], [0.2, 0.65, 0.3, 0.85]], atol=1e-6)


def test_detections_are_pixel_boxes_of_the_original_image(
    detector: ConceptDetector, grounding_model: torch.nn.Module
) -> None:
    """Boxes come back as x0 y0 x1 y1 pixels of the *original* image, from the model's normalised cx cy w h."""
    image = random_image(72, 120)
    results = detector.detect(image, PROMPTS)
    assert len(results) == 3
    tensor = detector.preprocess(image)
    assert tensor.shape == (3, 96, 160)  # shorter side 96, aspect kept
    with torch.no_grad():
        raw = grounding_model(tensor[None], captions=[caption(PROMPTS[0])])
    scores = raw["pred_logits"][0].sigmoid().max(dim=1).values
    order = scores.argsort(descending=True, stable=True)[: detector.config.max_boxes]
    expected = cxcywh_to_xyxy(raw["pred_boxes"][0, order]) * torch.tensor([120, 72, 120, 72])
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 120)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 72)
    first = results[0]
    assert first.boxes.shape == (detector.config.max_boxes, 4) and first.boxes.dtype == np.float32
    np.testing.assert_allclose(first.boxes, expected.numpy(), atol=1e-3)
    np.testing.assert_allclose(first.scores, scores[order].numpy(), atol=1e-5)
    assert (first.boxes[:, 2] >= first.boxes[:, 0]).all() and (first.boxes[:, 3] >= first.boxes[:, 1]).all()
    assert first.best_score == pytest.approx(float(scores.max()), abs=1e-5)


def test_prompts_batched_equal_one_by_one(detector: ConceptDetector) -> None:
    image = random_image(seed=1)
    together = detector.detect(image, PROMPTS)
    for prompt, batched in zip(PROMPTS, together, strict=True):
        (alone,) = detector.detect(image, [prompt])
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-4)
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-2)


def test_backbone_runs_once_per_image(detector: ConceptDetector) -> None:
    """Prompts of two token lengths make two model calls; the Swin backbone still computes once."""
    computed: list[int] = []
    handle = detector.model.backbone[0].patch_embed.register_forward_hook(
        lambda module, args, out: computed.append(args[0].shape[0])
    )
    try:
        detector.detect(random_image(), PROMPTS + ["wheel", "door"])
        detector.detect(random_image(seed=9), ["wheel"])
    finally:
        handle.remove()
    assert computed == [1, 1]


def test_shared_backbone_features_equal_separate_ones(detector: ConceptDetector) -> None:
    from groundingdino.util.misc import NestedTensor

    image = detector.preprocess(random_image())
    mask = torch.zeros((1, *image.shape[1:]), dtype=torch.bool)
    with torch.no_grad():
        shared = detector.model.backbone[0](NestedTensor(image[None].expand(3, -1, -1, -1), mask.expand(3, -1, -1)))
        separate = detector.model.backbone[0](NestedTensor(image[None].repeat(3, 1, 1, 1), mask.repeat(3, 1, 1)))
    for key in separate:
        torch.testing.assert_close(shared[key].tensors, separate[key].tensors)


def test_thresholds_filter_boxes(grounding_model: torch.nn.Module, text_encoder: Path) -> None:
    image = random_image(seed=2)
    loose = ConceptDetector(
        grounding_model, tiny_grounding_config(text_encoder, box_threshold=0.0, text_threshold=0.0, max_boxes=900), CPU
    ).detect(image, PROMPTS)
    # The threshold sits in the widest gap between scores of the middle half, not on a score: the
    # second pass recomputes the scores, and a box scoring exactly the threshold may land either side.
    ranked = np.sort(np.concatenate([d.scores for d in loose]))
    middle = ranked[len(ranked) // 4 : 3 * len(ranked) // 4]
    widest = int(np.argmax(np.diff(middle)))
    threshold = float(middle[widest] + middle[widest + 1]) / 2
    strict = ConceptDetector(
        grounding_model,
        tiny_grounding_config(text_encoder, box_threshold=threshold, text_threshold=0.0, max_boxes=900),
        CPU,
    ).detect(image, PROMPTS)
    for before, after in zip(loose, strict, strict=True):
        assert len(before.boxes) == GROUNDING_OVERRIDES["num_queries"]
        assert (after.scores > threshold).all() and len(after.boxes) == int((before.scores > threshold).sum())
    nothing = ConceptDetector(grounding_model, tiny_grounding_config(text_encoder, box_threshold=0.999999), CPU).detect(
        image, PROMPTS
    )
    assert all(len(d.boxes) == 0 and d.boxes.shape == (0, 4) for d in nothing)
    assert all(d.best_score < 0.999999 for d in nothing)  # still reported, for QC


def test_text_threshold_reads_the_concepts_own_words(grounding_model: torch.nn.Module, text_encoder: Path) -> None:
    """Scores on [CLS], [SEP] and the period do not count as finding the concept."""
    detector = ConceptDetector(grounding_model, tiny_grounding_config(text_encoder), CPU)
    image = random_image(seed=3)
    tensor = detector.preprocess(image)
    with torch.no_grad():
        raw = grounding_model(tensor[None], captions=["wings."])
    logits = raw["pred_logits"][0].sigmoid()  # tokens: [CLS] wings . [SEP]
    word = logits[:, 1]
    threshold = float(word.max()) + 1e-3  # just above the best word score
    config = tiny_grounding_config(text_encoder, box_threshold=0.0, text_threshold=threshold)
    (found,) = ConceptDetector(grounding_model, config, CPU).detect(image, ["wings"])
    assert len(found.boxes) == 0
    config = tiny_grounding_config(
        text_encoder, box_threshold=0.0, text_threshold=float(word.max()) - 1e-3, max_boxes=900
    )
    (found,) = ConceptDetector(grounding_model, config, CPU).detect(image, ["wings"])
    assert len(found.boxes) == int((word > float(word.max()) - 1e-3).sum()) >= 1


def test_text_encoder_offline_fails_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(
        GroundingError, match=r"huggingface-cli download bert-base-uncased.*text_encoder to a local directory"
    ):
        resolve_text_encoder("bert-base-uncased")
    assert time.perf_counter() - started < 10
    with pytest.raises(GroundingError, match="text encoder directory not found"):
        resolve_text_encoder(str(tmp_path / "no-such-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GroundingError, match="without config.json"):
        resolve_text_encoder(str(tmp_path / "empty"))


def test_unknown_grounding_config_names_the_shipped_ones(text_encoder: Path) -> None:
    with pytest.raises(GroundingError, match="GroundingDINO_SwinT_OGC.py"):
        build_grounding_dino(tiny_grounding_config(text_encoder, config="GroundingDINO_Tiny.py"))


def test_grounding_checkpoint_round_trip(grounding_model: torch.nn.Module, text_encoder: Path, tmp_path: Path) -> None:
    """Random weights saved like the published file ({"model": state dict}) load back through the users' path."""
    path = tmp_path / "groundingdino.pth"
    torch.save({"model": {f"module.{k}": v for k, v in grounding_model.state_dict().items()}}, path)
    config = tiny_grounding_config(text_encoder, checkpoint=path, sha256=file_sha256(path))
    loaded, provenance = load_grounding_dino(config, GROUNDING_OVERRIDES)
    assert provenance["sha256"] == file_sha256(path) and provenance["unexpected_weights"] == 0
    for (name, expected), (_, actual) in zip(
        grounding_model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(actual, expected, msg=name)
    image = random_image(seed=4)
    config = tiny_grounding_config(text_encoder, box_threshold=0.0, text_threshold=0.0)
    a = ConceptDetector(grounding_model, config, CPU).detect(image, PROMPTS)
    b = ConceptDetector(loaded, config, CPU).detect(image, PROMPTS)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-4)


def test_grounding_checkpoint_problems_are_named(
    grounding_model: torch.nn.Module, text_encoder: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(ModelFileError, match="missing.pth: GroundingDINO checkpoint not found"):
        load_grounding_dino(tiny_grounding_config(text_encoder, checkpoint=missing), GROUNDING_OVERRIDES)
    partial = tmp_path / "partial.pth"
    state = dict(list(grounding_model.state_dict().items())[:10])
    torch.save({"model": state}, partial)
    with pytest.raises(ModelFileError, match="partial.pth: .* weights of the model are not in the checkpoint"):
        load_grounding_dino(tiny_grounding_config(text_encoder, checkpoint=partial), GROUNDING_OVERRIDES)
    with pytest.raises(ModelFileError, match="differs from the GroundingDINO checksum"):
        load_grounding_dino(
            tiny_grounding_config(text_encoder, checkpoint=partial, sha256="0" * 64), GROUNDING_OVERRIDES
        )
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="corrupt.pth: not a readable PyTorch checkpoint"):
        load_grounding_dino(tiny_grounding_config(text_encoder, checkpoint=corrupt), GROUNDING_OVERRIDES)


def test_pickled_extras_load_only_from_a_pinned_file(
    grounding_model: torch.nn.Module, text_encoder: Path, tmp_path: Path
) -> None:
    """Published GroundingDINO files may pickle training args; unpickling runs code, so it needs a pinned sha256."""
    path = tmp_path / "with_args.pth"
    torch.save({"model": grounding_model.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ModelFileError, match="set its sha256 in params"):
        load_grounding_dino(tiny_grounding_config(text_encoder, checkpoint=path), GROUNDING_OVERRIDES)
    loaded, _ = load_grounding_dino(
        tiny_grounding_config(text_encoder, checkpoint=path, sha256=file_sha256(path)), GROUNDING_OVERRIDES
    )
    assert isinstance(loaded, torch.nn.Module)


# --- SAM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(TINY_SAM)


def test_sam_presets_match_segment_anything() -> None:
    from segment_anything import sam_model_registry

    ours = build_sam(SAM_ARCHITECTURES["vit_b"])
    theirs = sam_model_registry["vit_b"]()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_each_image_is_embedded_once(sam: torch.nn.Module) -> None:
    segmenter = BoxSegmenter(sam, CPU)
    batches: list[int] = []
    handle = sam.image_encoder.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        images = [random_image(72, 120, seed=s) for s in range(3)]
        embeddings = segmenter.embed(images)
        for index in range(3):
            segmenter.segment(embeddings, index, np.array([[10, 10, 60, 50], [0, 0, 120, 72]], dtype=np.float32))
    finally:
        handle.remove()
    assert batches == [3]


def test_boxes_batched_equal_one_by_one_and_masks_have_image_size(sam: torch.nn.Module) -> None:
    segmenter = BoxSegmenter(sam, CPU, boxes_per_batch=2)
    image = random_image(72, 120, seed=5)
    embeddings = segmenter.embed([image])
    boxes = np.array([[10, 10, 60, 50], [0, 0, 120, 72], [30, 5, 90, 70]], dtype=np.float32)
    together = segmenter.segment(embeddings, 0, boxes)
    assert together.shape == (3, 72, 120) and together.dtype == bool
    for index, box in enumerate(boxes):
        np.testing.assert_array_equal(together[index], segmenter.segment(embeddings, 0, box[None])[0])
    assert segmenter.segment(embeddings, 0, np.zeros((0, 4), np.float32)).shape == (0, 72, 120)


def test_batched_embeddings_equal_single_ones(sam: torch.nn.Module) -> None:
    segmenter = BoxSegmenter(sam, CPU)
    images = [random_image(72, 120, seed=6), random_image(100, 50, seed=7)]
    together = segmenter.embed(images)
    for index, image in enumerate(images):
        alone = segmenter.embed([image])
        torch.testing.assert_close(together.embeddings[index], alone.embeddings[0], atol=1e-4, rtol=1e-4)
        assert together.input_sizes[index] == alone.input_sizes[0]
    assert together.input_sizes == [(154, 256), (256, 128)]  # longest side 256, rounded like SAM


def test_sam_checkpoint_round_trip(sam: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    loaded, provenance = load_sam(SamConfig(model_type="vit_b", checkpoint=path), architecture=TINY_SAM)
    assert provenance == {"model_type": "vit_b", "checkpoint": str(path), "sha256": file_sha256(path)}
    for (name, expected), (_, actual) in zip(sam.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(actual, expected, msg=name)
    with pytest.raises(ModelFileError, match="sam.pth: weights do not fit the model .*image_encoder.pos_embed"):
        load_sam(SamConfig(model_type="vit_b", checkpoint=path))  # tiny weights for a vit_b


def test_full_size_vit_b_weights_load_through_params(tmp_path: Path) -> None:
    """Real-size SAM vit_b with random weights, saved as a plain state dict like the published
    sam_vit_b_01ec64.pth, loads back through load_sam with its checksum pinned."""
    torch.manual_seed(0)
    original = build_sam(SAM_ARCHITECTURES["vit_b"])
    path = tmp_path / "sam_vit_b.pth"
    torch.save(original.state_dict(), path)
    loaded, provenance = load_sam(SamConfig(model_type="vit_b", checkpoint=path, sha256=file_sha256(path)))
    assert provenance["sha256"] == file_sha256(path)
    torch.testing.assert_close(loaded.image_encoder.pos_embed, original.image_encoder.pos_embed)
    torch.testing.assert_close(
        loaded.mask_decoder.iou_prediction_head.layers[0].weight,
        original.mask_decoder.iou_prediction_head.layers[0].weight,
    )
    assert sum(p.numel() for p in loaded.parameters()) > 90_000_000


def test_grounding_config_defaults_are_documented() -> None:
    config = GroundingDinoConfig()
    assert (config.box_threshold, config.text_threshold) == (0.35, 0.25)
    assert config.text_encoder == "bert-base-uncased"
