"""The grounded_sam backend: QC flags, the whole-object fallback, one embedding per image, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.masks import GroundedSamConfig, MasksConfig
from pipeline.masks.grounded import GroundedSam, grounded_sam_masks, object_prompt, slot_count
from pipeline.masks.grounding import ConceptDetector, Detections, build_grounding_dino
from pipeline.masks.segmenting import BoxSegmenter, build_sam
from pipeline.masks.store import (
    BOX_MARGIN,
    NOISY_MAX_SPILL,
    NOISY_MIN_FILL,
    NOISY_MIN_INSIDE,
    MaskStore,
    box_agreement,
    is_noisy,
    write_mask_store,
)
from tests.helpers.grounded_models import (
    GROUNDING_OVERRIDES,
    TINY_SAM,
    spread_scores,
    tiny_grounding_config,
    tiny_text_encoder,
)

CPU = torch.device("cpu")
CONCEPTS = {"bird": ["long beak", "wings", "red tail"], "car": ["wheels", "door"]}


class ScriptedDetector:
    """Stands in for GroundingDINO: fixed boxes per prompt, so QC outcomes are known in advance."""

    device = CPU

    def __init__(self, boxes: dict[str, list[list[float]]]) -> None:
        self.boxes = boxes
        self.calls: list[list[str]] = []

    def detect(self, image: np.ndarray, prompts: list[str]) -> list[Detections]:
        self.calls.append(list(prompts))
        found = []
        for prompt in prompts:
            boxes = np.array(self.boxes.get(prompt, []), dtype=np.float32).reshape(-1, 4)
            found.append(Detections(boxes, np.full(len(boxes), 0.8, np.float32), 0.8 if len(boxes) else 0.1))
        return found


class CountingSegmenter(BoxSegmenter):
    def __init__(self, sam: torch.nn.Module) -> None:
        super().__init__(sam, CPU)
        self.embedded: list[int] = []

    def embed(self, images: list[np.ndarray]):  # type: ignore[no-untyped-def]
        self.embedded.append(len(images))
        return super().embed(images)


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(TINY_SAM)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> ConceptDetector:
    text_encoder = tiny_text_encoder(tmp_path_factory.mktemp("bert"))
    torch.manual_seed(0)
    model = build_grounding_dino(tiny_grounding_config(text_encoder), GROUNDING_OVERRIDES)
    spread_scores(model)
    return ConceptDetector(
        model, tiny_grounding_config(text_encoder, box_threshold=0.6, text_threshold=0.5, max_boxes=3), CPU
    )


def images(count: int, size: tuple[int, int] = (48, 64)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"img/{i}": (rng.random((*size, 3)) * 255).astype(np.uint8) for i in range(count)}


def config(**changes: object) -> MasksConfig:
    grounded = GroundedSamConfig(images_per_part=changes.pop("images_per_part", 3))
    return MasksConfig(grounded_sam=grounded, resolution=changes.pop("resolution", 16), **changes)


def run(
    models: GroundedSam,
    settings: MasksConfig,
    pictures: dict[str, np.ndarray],
    work: Path,
    loads: list[list[str]] | None = None,
) -> list:
    ids = list(pictures)
    names = ["bird" if i % 2 == 0 else "car" for i in range(len(ids))]

    def load(batch: list[str]) -> list[np.ndarray]:
        if loads is not None:
            loads.append(batch)
        return [pictures[i] for i in batch]

    size = (
        (settings.resolution, settings.resolution) if settings.resolution else next(iter(pictures.values())).shape[:2]
    )
    return list(grounded_sam_masks(models, settings, ids, names, CONCEPTS, load, size, work, progress=False))


def test_qc_flags_union_of_boxes_and_fallback(sam: torch.nn.Module, tmp_path: Path) -> None:
    boxes = {
        "long beak": [[2, 2, 20, 20], [30, 10, 60, 40]],
        "wings": [],
        "red tail": [[0, 0, 64, 48]],
        "car": [[5, 5, 50, 40]],
    }
    detector = ScriptedDetector(boxes)
    segmenter = CountingSegmenter(sam)
    models = GroundedSam(detector, segmenter, {})  # type: ignore[arg-type]
    pictures = images(2)
    results = run(models, config(resolution=None), pictures, tmp_path)
    bird, car = results
    # one detector call per image, the object prompt riding along with the concepts
    assert detector.calls == [["long beak", "wings", "red tail", "bird"], ["wheels", "door", "car"]]
    assert bird.concepts == CONCEPTS["bird"] and not bird.fallback
    assert bird.boxes == [2, 0, 1] and bird.flags()[1] == "no_box"
    embedding = BoxSegmenter(sam, CPU).embed([pictures["img/0"]])
    separate = BoxSegmenter(sam, CPU).segment(embedding, 0, np.array(boxes["long beak"], np.float32))
    np.testing.assert_array_equal(bird.masks[0], separate.any(axis=0))
    # the car's concepts are not found: the whole-object prompt fills in, flagged
    assert car.fallback and car.concepts == ["wheels", "door", "car"]
    assert car.flags()[:2] == ["no_box", "no_box"] and car.flags()[2] in ("fallback", "empty", "full", "noisy")
    assert segmenter.embedded == [2]  # both images have boxes: one encoder call, each image once


def rectangle(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))] = True
    return mask


def test_noisy_flag_keeps_masks_that_follow_their_boxes_and_catches_noise() -> None:
    """What SAM gives for a box (the thing in the box, give or take its box jitter) stays usable; a
    mask that ignores its box (untrained weights: a pattern over the whole image) does not."""
    shape = (120, 160)
    box = np.array([[40, 30, 100, 90]], np.float32)  # 60 x 60 px
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sensible = {
        "the box filled": rectangle(shape, 40, 30, 100, 90),
        "a rectangle inside the box": rectangle(shape, 50, 40, 90, 80),
        "the inscribed ellipse": ((xx + 0.5 - 70) / 30) ** 2 + ((yy + 0.5 - 60) / 30) ** 2 <= 1,
        "a diagonal bar 8 % of the box side wide": (np.abs((xx - 40) - (yy - 30)) <= 3)
        & rectangle(shape, 40, 30, 100, 90),
        "the object 20 % wider than a tight box": rectangle(shape, 34, 24, 106, 96),
    }
    for name, mask in sensible.items():
        assert not is_noisy(mask, box), (name, box_agreement(mask, box))
    two_boxes = np.array([[10, 10, 30, 30], [120, 80, 150, 110]], np.float32)
    assert not is_noisy(rectangle(shape, 10, 10, 30, 30) | rectangle(shape, 122, 82, 148, 108), two_boxes)

    noise = np.random.default_rng(0).random(shape) < 0.6  # like the tiny random SAM: ~60 % everywhere
    big_box = np.array([[10, 10, 150, 100]], np.float32)  # 80 % of the image: most of the noise is inside it
    noisy = {
        "noise, box in the middle": (noise, box, "inside"),
        "noise, box over most of the image": (noise, big_box, "spill"),
        "a speck in its box": (rectangle(shape, 60, 50, 64, 54), box, "fill"),
        "the whole object for a small part's box": (
            rectangle(shape, 20, 10, 150, 115),
            np.array([[60, 40, 80, 60]], np.float32),
            "inside",
        ),
    }
    for name, (mask, boxes, reason) in noisy.items():
        agreement = box_agreement(mask, boxes)
        assert is_noisy(mask, boxes), (name, agreement)
        failed = {
            "fill": agreement["fill"] < NOISY_MIN_FILL,
            "inside": agreement["inside"] < NOISY_MIN_INSIDE,
            "spill": agreement["spill"] > NOISY_MAX_SPILL,
        }
        assert failed[reason], (name, agreement)
    assert box_agreement(noise, big_box)["inside"] > NOISY_MIN_INSIDE  # only the spill outside the box gives it away
    # the enlarged box reaches BOX_MARGIN of the box's size beyond each side, not further
    assert box_agreement(rectangle(shape, 34, 24, 106, 96), box)["inside"] == 1.0 and BOX_MARGIN == pytest.approx(0.1)
    assert box_agreement(rectangle(shape, 20, 10, 120, 110), box)["inside"] < 1.0
    # empty masks and masks without boxes are left to the `empty` and `no_box` flags
    assert not is_noisy(np.zeros(shape, bool), box) and not is_noisy(noise, np.zeros((0, 4), np.float32))


class BoxFillingSegmenter:
    """Stands in for a trained SAM: each box's mask is the ellipse inscribed in it."""

    def embed(self, images: list[np.ndarray]) -> list[tuple[int, int]]:
        return [image.shape[:2] for image in images]

    def segment(self, embeddings: list[tuple[int, int]], index: int, boxes: np.ndarray) -> np.ndarray:
        yy, xx = np.mgrid[: embeddings[index][0], : embeddings[index][1]] + 0.5
        masks = []
        for x0, y0, x1, y1 in boxes:
            masks.append(
                ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 <= 1
            )
        return np.stack(masks)


def test_masks_that_follow_their_boxes_are_ok_and_random_sam_masks_are_noisy(
    sam: torch.nn.Module, tmp_path: Path
) -> None:
    boxes = {
        "long beak": [[2, 2, 20, 20], [30, 10, 60, 40]],
        "wings": [[10, 20, 40, 46]],
        "red tail": [[40, 5, 62, 30]],
        "wheels": [[5, 5, 50, 40]],
        "door": [[20, 10, 44, 44]],
    }
    pictures = images(2)
    sensible = run(
        GroundedSam(ScriptedDetector(boxes), BoxFillingSegmenter(), {}), config(), pictures, tmp_path / "sensible"
    )  # type: ignore[arg-type]
    assert [r.flags() for r in sensible] == [["ok", "ok", "ok"], ["ok", "ok"]] and not any(r.fallback for r in sensible)

    # the tiny random-weight SAM on the same boxes: a pattern over the whole image, whatever the box
    random_sam = run(
        GroundedSam(ScriptedDetector(boxes), BoxSegmenter(sam, CPU), {}), config(), pictures, tmp_path / "random"
    )  # type: ignore[arg-type]
    flags = [flag for r in random_sam for flag in r.flags()]
    assert [r.concepts[-1] for r in random_sam] == [
        "bird",
        "car",
    ]  # no concept usable: the object prompt was tried, found no box
    assert flags == ["noisy", "noisy", "noisy", "no_box", "noisy", "noisy", "no_box"]
    write_mask_store(tmp_path / "store", random_sam, (16, 16), "grounded_sam")
    store = MaskStore(tmp_path / "store")
    assert store.flags() == {"no_box": 2, "noisy": 5}
    assert not store.usable([r.image_id for r in random_sam]).any()  # fine-tuning would leave these images out


def test_random_weight_grounded_sam_gives_no_usable_mask(
    detector: ConceptDetector, sam: torch.nn.Module, tmp_path: Path
) -> None:
    """The user's report: random-weight GroundingDINO + SAM used to flag every mask it found `ok`."""
    results = run(GroundedSam(detector, BoxSegmenter(sam, CPU), {}), config(), images(7), tmp_path)
    flags = [flag for r in results for flag in r.flags()]
    segmented = [flag for flag in flags if flag not in ("no_box", "empty")]
    assert segmented and "ok" not in flags and "fallback" not in flags
    assert segmented.count("noisy") >= 0.9 * len(segmented), flags


def test_skip_policy_leaves_unfound_images_unusable_and_unembedded(sam: torch.nn.Module, tmp_path: Path) -> None:
    detector = ScriptedDetector({"long beak": [[2, 2, 20, 20]], "car": [[5, 5, 50, 40]]})
    segmenter = CountingSegmenter(sam)
    results = run(GroundedSam(detector, segmenter, {}), config(on_all_missing="skip"), images(2), tmp_path)  # type: ignore[arg-type]
    assert detector.calls == [["long beak", "wings", "red tail"], ["wheels", "door"]]  # no object prompt
    assert not results[1].fallback and not results[1].usable() and results[1].flags() == ["no_box", "no_box"]
    assert segmenter.embedded == [1]  # the car image has no box: SAM never sees it


def test_object_prompt_uses_the_readable_class_name() -> None:
    assert object_prompt(config(), "n01530575") == "brambling"
    assert object_prompt(config(object_prompt="a photo of a {class}"), "school_bus") == "a photo of a school bus"
    assert slot_count(config(), ["bird", "car"], CONCEPTS) == 4
    assert slot_count(config(on_all_missing="skip"), ["car"], CONCEPTS) == 2


def test_images_of_another_size_need_a_resolution(sam: torch.nn.Module, tmp_path: Path) -> None:
    pictures = {**images(1), "img/odd": images(1, (40, 40))["img/0"]}
    models = GroundedSam(ScriptedDetector({}), BoxSegmenter(sam, CPU), {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="img/odd: 40x40 pixels, unlike the first image's 64x48; set masks.resolution"):
        run(models, config(resolution=None), pictures, tmp_path)


def test_real_models_embed_each_image_once_and_store_round_trip(
    detector: ConceptDetector, sam: torch.nn.Module, tmp_path: Path
) -> None:
    segmenter = CountingSegmenter(sam)
    encoder_images: list[int] = []
    backbone_images: list[int] = []
    hooks = [
        sam.image_encoder.register_forward_hook(lambda module, args, out: encoder_images.append(args[0].shape[0])),
        detector.model.backbone[0].patch_embed.register_forward_hook(
            lambda module, args, out: backbone_images.append(args[0].shape[0])
        ),
    ]
    try:
        results = run(GroundedSam(detector, segmenter, {"k": "v"}), config(), images(7), tmp_path / "work")
    finally:
        for hook in hooks:
            hook.remove()
    assert backbone_images == [1] * 7  # GroundingDINO's Swin: once per image, for all its prompts
    assert sum(encoder_images) <= 7 and all(n <= 4 for n in encoder_images)  # SAM: at most once per image
    assert sum(encoder_images) == sum(any(b for b in r.boxes) for r in results)
    assert [r.image_id for r in results] == list(images(7))
    assert all(r.masks.shape == (len(r.concepts), 16, 16) for r in results)
    write_mask_store(tmp_path / "store", results, (16, 16), "grounded_sam", provenance={"k": "v"})
    store = MaskStore(tmp_path / "store")
    stored = store.concept_masks([r.image_id for r in results])
    for result, masks in zip(results, stored, strict=True):
        np.testing.assert_array_equal(masks[: len(result.concepts)], result.masks)
    assert store.table.column("boxes").to_pylist() == [b for r in results for b in r.boxes]


class Interrupted(RuntimeError):
    pass


def test_interrupted_run_resumes_with_identical_results(
    detector: ConceptDetector, sam: torch.nn.Module, tmp_path: Path
) -> None:
    models = GroundedSam(detector, BoxSegmenter(sam, CPU), {})
    pictures = images(8)
    reference = run(models, config(), pictures, tmp_path / "reference")

    loads: list[list[str]] = []
    crashing = dict(pictures)

    def crash_on_third_part(batch: list[str]) -> list[np.ndarray]:
        loads.append(batch)
        if "img/6" in batch:
            raise Interrupted("killed")
        return [crashing[i] for i in batch]

    ids = list(pictures)
    names = ["bird" if i % 2 == 0 else "car" for i in range(len(ids))]
    with pytest.raises(Interrupted):
        list(
            grounded_sam_masks(
                models, config(), ids, names, CONCEPTS, crash_on_third_part, (16, 16), tmp_path / "work", progress=False
            )
        )
    assert loads == [["img/0", "img/1", "img/2"], ["img/3", "img/4", "img/5"], ["img/6", "img/7"]]

    loads.clear()
    resumed = run(models, config(), pictures, tmp_path / "work", loads)
    assert loads == [["img/6", "img/7"]]  # the two finished parts are not recomputed
    for a, b in zip(reference, resumed, strict=True):
        assert (a.image_id, a.concepts, a.boxes, a.fallback, a.noisy) == (
            b.image_id,
            b.concepts,
            b.boxes,
            b.fallback,
            b.noisy,
        )
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.scores == pytest.approx(b.scores)

    loads.clear()
    changed = MasksConfig(
        resolution=16, grounded_sam=GroundedSamConfig(images_per_part=3, grounding={"box_threshold": 0.5})
    )
    run(models, changed, pictures, tmp_path / "work", loads)
    assert len(loads) == 3  # other params: nothing reused
    assert len([p for p in (tmp_path / "work").iterdir()]) == 1  # the old run's parts are removed


def test_torn_part_file_is_recomputed(sam: torch.nn.Module, tmp_path: Path) -> None:
    models = GroundedSam(
        ScriptedDetector({"long beak": [[2, 2, 20, 20]], "car": [[5, 5, 50, 40]]}), BoxSegmenter(sam, CPU), {}
    )  # type: ignore[arg-type]
    pictures = images(4)
    first = run(models, config(), pictures, tmp_path)
    (part,) = [p for p in next(tmp_path.iterdir()).iterdir() if p.name.startswith("part-00000000")]
    part.write_bytes(part.read_bytes()[:100])
    loads: list[list[str]] = []
    again = run(models, config(), pictures, tmp_path, loads)
    assert loads == [["img/0", "img/1", "img/2"]]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.masks, b.masks)


def test_cft_masks_with_grounded_sam_from_params(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The users' path: checkpoints and a GroundingDINO config named in params.yaml, the stage CLI,
    the store, its QC table and metrics, the contact sheet; a rerun resumes from the finished parts.
    SAM's vit_b preset is swapped for the tiny architecture (a vit_b embedding takes 20 s on this
    CPU); loading real-size vit_b weights is tested in test_grounding_models."""
    import json

    import yaml
    from typer.testing import CliRunner

    from pipeline.concepts.store import write_concepts
    from pipeline.config.data import SubsetConfig
    from pipeline.data.manifest import read_manifest
    from pipeline.data.subset import SUBSET_NAME, select_subset, subset_ids, write_subset
    from pipeline.masks.segmenting import SAM_ARCHITECTURES
    from pipeline.models.weights import file_sha256
    from stages.cli import app
    from tests.helpers.grounded_models import save_tiny_grounded_sam, tiny_grounded_sam_params

    manifest = read_manifest(tiny_world / "manifest.parquet")
    subset = select_subset(manifest, SubsetConfig(images_per_class=1, val_images_per_class=1))
    write_subset(tmp_path / "subset" / SUBSET_NAME, subset)
    seen = len(subset_ids(subset, "finetune"))
    classes = sorted(set(manifest.column("class_name").to_pylist()))
    write_concepts(tmp_path / "concepts", {c: ["head", "wheels"] for c in classes}, {"source": "test"})

    save_tiny_grounded_sam(tmp_path)
    monkeypatch.setitem(SAM_ARCHITECTURES, "vit_b", TINY_SAM)
    params = tiny_grounded_sam_params(tmp_path, images_per_part=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    arguments = [
        "masks",
        "--params",
        str(tmp_path / "params.yaml"),
        "--data",
        str(tiny_world),
        "--subset",
        str(tmp_path / "subset"),
        "--concepts",
        str(tmp_path / "concepts"),
        "--out",
        str(tmp_path / "masks"),
        "--work",
        str(tmp_path / "work"),
        "--sheet",
        str(tmp_path / "masks.png"),
        "--metrics",
        str(tmp_path / "masks.json"),
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    store = MaskStore(tmp_path / "masks")
    assert store.backend == "grounded_sam" and len(store.image_ids) == seen and store.resolution == (16, 16)
    assert store.provenance["sam"]["sha256"] == file_sha256(tmp_path / "sam_vit_b.pth")
    assert store.provenance["grounding"]["checkpoint"] == str(tmp_path / "dino.pth")
    assert store.provenance["box_threshold"] == 0.6
    metrics = json.loads((tmp_path / "masks.json").read_text())
    assert metrics["images"] == seen and sum(metrics["flags"].values()) == store.table.num_rows
    assert (tmp_path / "masks.png").stat().st_size > 0
    first = store.concept_masks(store.image_ids)

    # a rerun with the same params reuses every finished part: the store comes out identical
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("part-*.npz"))
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("part-*.npz")) == before
    np.testing.assert_array_equal(MaskStore(tmp_path / "masks").concept_masks(store.image_ids), first)

    # a wrong checksum is refused before any work, naming the file
    params["masks"]["grounded_sam"]["sam"]["sha256"] = "0" * 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and "sam_vit_b.pth: sha256" in result.output


def test_image_files_decode_to_rgb_and_bad_files_are_named(tmp_path: Path) -> None:
    """grounded_sam reads image files named by the manifest; corrupt ones stop with their path."""
    import pyarrow as pa
    from PIL import Image

    from pipeline.data.array_store import StoreError
    from pipeline.data.datasets import load_image_list

    Image.fromarray(np.full((5, 7), 200, np.uint8), mode="L").save(tmp_path / "grey.png")
    Image.new("CMYK", (4, 3), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows = pa.table({"source": ["grey.png", "cmyk.jpg"], "source_index": [-1, -1]})
    grey, cmyk = load_image_list(tmp_path, rows)
    assert grey.shape == (5, 7, 3) and grey.dtype == np.uint8 and (grey == 200).all()
    assert cmyk.shape == (3, 4, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 50  # CMYK magenta ink -> RGB magenta
    with pytest.raises(StoreError, match="broken.jpg: not a readable image"):
        load_image_list(tmp_path, pa.table({"source": ["broken.jpg"], "source_index": [-1]}))
    with pytest.raises(StoreError, match="gone.png: image file not found"):
        load_image_list(tmp_path, pa.table({"source": ["gone.png"], "source_index": [-1]}))


def test_grounded_sam_params_need_checkpoints_and_a_class_placeholder() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"grounded_sam.grounding.checkpoint and grounded_sam.sam.checkpoint"):
        MasksConfig(backend="grounded_sam")
    with pytest.raises(ValidationError, match=r"must contain \{class\}"):
        MasksConfig(object_prompt="a thing")
    with pytest.raises(ValidationError, match="model_type"):
        MasksConfig(grounded_sam={"sam": {"model_type": "vit_t"}})
