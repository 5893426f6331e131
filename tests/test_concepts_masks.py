from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.concepts.store import (
    CONCEPTS_JSON,
    CONCEPTS_PARQUET,
    ConceptsError,
    catalog_concepts,
    read_concepts,
    write_concepts,
)
from pipeline.config.concepts import ConceptsConfig
from pipeline.data.array_store import DamagedStoreError, StoreError
from pipeline.data.datasets import CUE_LABEL
from pipeline.data.manifest import classes_of
from pipeline.masks.annotated import annotated_masks, resize_masks
from pipeline.masks.store import STORE_NAME, TABLE_NAME, ImageMasks, MaskStore, write_mask_store

CLASSES = ["cat", "dog", "fish"]


def yaml_catalog(tmp_path: Path, text: str) -> ConceptsConfig:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return ConceptsConfig(catalog=str(path))


# --- concepts ---------------------------------------------------------------------------------


def test_dataset_catalog_gives_world_parts(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]]
) -> None:
    classes = classes_of(manifest)
    concepts, provenance = catalog_concepts(ConceptsConfig(), tiny_world, classes)
    assert list(concepts) == classes
    assert concepts == {cls: world_concepts[cls] for cls in classes}
    assert concepts["mushroom"] == ["stem", "cap", "spots"]
    assert provenance == "dataset catalog world.json"


def test_dataset_without_catalog(tmp_path: Path) -> None:
    with pytest.raises(ConceptsError, match="ships no concept catalog") as info:
        catalog_concepts(ConceptsConfig(), tmp_path, CLASSES)
    assert str(tmp_path / "world.json") in str(info.value)


def test_yaml_catalog(tmp_path: Path) -> None:
    config = yaml_catalog(tmp_path, "fish: [fin, tail]\ncat:\n  - ears\n  - whiskers\ndog: [snout]\n")
    concepts, provenance = catalog_concepts(config, tmp_path / "unused", CLASSES)
    assert concepts == {"cat": ["ears", "whiskers"], "dog": ["snout"], "fish": ["fin", "tail"]}
    assert list(concepts) == CLASSES
    assert provenance == config.catalog


def test_duplicates_removed_preserving_order(tmp_path: Path) -> None:
    config = yaml_catalog(
        tmp_path, "cat: [whiskers, ears, whiskers, ' ears ', tail]\ndog: [snout, snout]\nfish: [fin]\n"
    )
    concepts, _ = catalog_concepts(config, tmp_path, CLASSES)
    assert concepts["cat"] == ["whiskers", "ears", "tail"]
    assert concepts["dog"] == ["snout"]


def test_unknown_class_is_listed_with_the_file(tmp_path: Path) -> None:
    config = yaml_catalog(tmp_path, "cat: [ears]\ndog: [snout]\nfish: [fin]\nzebra: [stripes]\nyak: [horns]\n")
    with pytest.raises(ConceptsError, match=r"unknown class\(es\) \['yak', 'zebra'\]") as info:
        catalog_concepts(config, tmp_path, CLASSES)
    assert str(info.value).startswith(f"{config.catalog}:")


def test_missing_class(tmp_path: Path) -> None:
    config = yaml_catalog(tmp_path, "cat: [ears]\n")
    with pytest.raises(ConceptsError, match=r"no concepts for class\(es\) \['dog', 'fish'\]") as info:
        catalog_concepts(config, tmp_path, CLASSES)
    assert str(config.catalog) in str(info.value)


@pytest.mark.parametrize("value", ["[]", "''", "[ears, '  ']", "[1, 2]", "ears"])
def test_empty_or_invalid_concept_list(tmp_path: Path, value: str) -> None:
    config = yaml_catalog(tmp_path, f"cat: [ears]\ndog: {value}\nfish: [fin]\n")
    with pytest.raises(ConceptsError, match="class 'dog' needs a non-empty list of non-empty strings") as info:
        catalog_concepts(config, tmp_path, CLASSES)
    assert str(config.catalog) in str(info.value)


@pytest.mark.parametrize("text", ["- cat\n- dog\n", "just a string\n", ""])
def test_catalog_not_a_mapping(tmp_path: Path, text: str) -> None:
    config = yaml_catalog(tmp_path, text)
    with pytest.raises(ConceptsError, match="expected a mapping class -> list of concepts") as info:
        catalog_concepts(config, tmp_path, CLASSES)
    assert str(config.catalog) in str(info.value)


def test_catalog_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConceptsError, match="concept catalog not found") as info:
        catalog_concepts(ConceptsConfig(catalog=str(path)), tmp_path, CLASSES)
    assert str(path) in str(info.value)


def test_catalog_invalid_yaml(tmp_path: Path) -> None:
    config = yaml_catalog(tmp_path, "cat: [ears\ndog: {\n")
    with pytest.raises(ConceptsError, match="not valid YAML") as info:
        catalog_concepts(config, tmp_path, CLASSES)
    assert str(config.catalog) in str(info.value)


def test_artifact_round_trip(tmp_path: Path) -> None:
    concepts = {"cat": ["ears", "whiskers"], "dog": ["snout"], "fish": ["fin", "tail", "eye"]}
    write_concepts(tmp_path, concepts, {"source": "catalog", "file": "x.yaml"})
    assert read_concepts(tmp_path) == concepts
    payload = json.loads((tmp_path / CONCEPTS_JSON).read_text())
    assert payload["provenance"] == {"source": "catalog", "file": "x.yaml"}
    assert payload["format_version"] == 1
    table = pq.read_table(tmp_path / CONCEPTS_PARQUET)
    pairs = list(zip(table.column("class_name").to_pylist(), table.column("concept").to_pylist(), strict=True))
    assert pairs == [(cls, c) for cls, names in concepts.items() for c in names]
    assert table.column("weight").to_pylist() == [1.0] * 6
    assert table.schema.field("weight").type == pa.float32()


def test_read_concepts_errors(tmp_path: Path) -> None:
    with pytest.raises(ConceptsError, match="concepts table not found"):
        read_concepts(tmp_path)
    (tmp_path / CONCEPTS_PARQUET).write_bytes(b"not parquet")
    with pytest.raises(ConceptsError, match="not a readable parquet file"):
        read_concepts(tmp_path)
    pq.write_table(pa.table({"class_name": ["cat"]}), tmp_path / CONCEPTS_PARQUET)
    with pytest.raises(ConceptsError, match=r"missing column\(s\) \['concept'\]"):
        read_concepts(tmp_path)


# --- mask store -------------------------------------------------------------------------------

RESOLUTION = (4, 5)


def mask_results() -> list[ImageMasks]:
    rng = np.random.default_rng(0)
    nineteen = np.ones(RESOLUTION, dtype=bool)
    nineteen[0, 0] = False
    a = np.stack([rng.random(RESOLUTION) > 0.5, np.zeros(RESOLUTION, bool), np.ones(RESOLUTION, bool)])
    b = np.stack([nineteen, np.zeros(RESOLUTION, bool)])
    b[1, 2, 3] = True
    c = np.stack([rng.random(RESOLUTION) > 0.7])
    return [
        ImageMasks("img/a", "cat", ["ears", "whiskers", "fur"], a, scores=[0.9, 0.1, 0.5]),
        ImageMasks("img/b", "dog", ["snout", "tail"], b, missing=[False, True]),
        ImageMasks("img/c", "fish", ["fin"], c),
    ]


@pytest.fixture
def store(tmp_path: Path) -> tuple[MaskStore, pa.Table, list[ImageMasks]]:
    results = mask_results()
    table = write_mask_store(tmp_path, results, RESOLUTION, backend="test")
    return MaskStore(tmp_path), table, results


def test_mask_store_round_trip(store: tuple[MaskStore, pa.Table, list[ImageMasks]], tmp_path: Path) -> None:
    masks, _, results = store
    assert (tmp_path / STORE_NAME).is_dir() and (tmp_path / TABLE_NAME).is_file()
    assert masks.backend == "test"
    assert masks.resolution == RESOLUTION
    assert masks.image_ids == ["img/a", "img/b", "img/c"]
    stacked = masks.concept_masks(["img/c", "img/a", "img/b"])
    assert stacked.shape == (3, 3, *RESOLUTION) and stacked.dtype == bool
    np.testing.assert_array_equal(stacked[1], results[0].masks)
    np.testing.assert_array_equal(stacked[2, :2], results[1].masks)
    np.testing.assert_array_equal(stacked[0, :1], results[2].masks)
    assert not stacked[2, 2].any()
    assert not stacked[0, 1:].any()


def test_union_is_any_over_usable_slots(store: tuple[MaskStore, pa.Table, list[ImageMasks]]) -> None:
    """QC-flagged slots (full, empty, no_annotation) are left out of the union the loss uses."""
    masks, _, results = store
    union = masks.union(["img/b", "img/a", "img/c"])
    assert union.shape == (3, *RESOLUTION)
    np.testing.assert_array_equal(union[0], results[1].masks[0])  # "tail" is no_annotation
    np.testing.assert_array_equal(union[1], results[0].masks[0])  # "fur" covers everything: full
    np.testing.assert_array_equal(union[2], results[2].masks[0])
    np.testing.assert_array_equal(masks.usable_slots(["img/a"]), [[True, False, False]])
    assert masks.usable(["img/a", "img/b", "img/c"]).all()


def test_image_without_usable_mask_and_fallback_flag(tmp_path: Path) -> None:
    full = np.ones((1, *RESOLUTION), dtype=bool)
    whole = np.zeros((1, *RESOLUTION), dtype=bool)
    whole[0, 1:3, 1:4] = True
    results = [
        ImageMasks("img/none", "cat", ["ears"], np.zeros((1, *RESOLUTION), bool), scores=[0.2], boxes=[0]),
        ImageMasks("img/full", "cat", ["ears"], full, boxes=[2]),
        ImageMasks(
            "img/fb",
            "cat",
            ["ears", "cat"],
            np.concatenate([np.zeros((1, *RESOLUTION), bool), whole]),
            boxes=[0, 1],
            fallback=True,
        ),
    ]
    assert [r.flags() for r in results] == [["no_box"], ["full"], ["no_box", "fallback"]]
    assert [r.usable() for r in results] == [False, False, True]
    table = write_mask_store(tmp_path, results, RESOLUTION, backend="test")
    assert table.column("boxes").to_pylist() == [0, 2, 0, 1]
    store = MaskStore(tmp_path)
    np.testing.assert_array_equal(store.usable(["img/none", "img/full", "img/fb"]), [False, False, True])
    np.testing.assert_array_equal(store.union(["img/fb"])[0], whole[0])
    assert not store.union(["img/full"]).any()


def test_streamed_store_spans_shards(tmp_path: Path) -> None:
    """A generator written shard by shard (3 images per shard) equals the list it came from."""
    rng = np.random.default_rng(1)
    results = [
        ImageMasks(f"img/{i}", "cat", ["a", "b"][: 1 + i % 2], rng.random((1 + i % 2, *RESOLUTION)) > 0.5)
        for i in range(8)
    ]
    table = write_mask_store(
        tmp_path,
        iter(results),
        RESOLUTION,
        "test",
        image_count=8,
        max_concepts=2,
        images_per_shard=3,
        provenance={"k": 1},
    )
    store = MaskStore(tmp_path)
    assert store.provenance == {"k": 1}
    assert table.num_rows == sum(len(r.concepts) for r in results)
    for result, stored in zip(results, store.concept_masks([r.image_id for r in results]), strict=True):
        np.testing.assert_array_equal(stored[: len(result.concepts)], result.masks)
        assert not stored[len(result.concepts) :].any()
    with pytest.raises(StoreError, match="7 results for the 8 images"):
        write_mask_store(tmp_path / "short", iter(results[:7]), RESOLUTION, "test", image_count=8, max_concepts=2)


def test_mask_table_and_flags(store: tuple[MaskStore, pa.Table, list[ImageMasks]]) -> None:
    masks, table, results = store
    assert masks.table.equals(table)
    rows = table.to_pylist()
    assert [(r["image_id"], r["row"], r["slot"], r["concept"]) for r in rows] == [
        ("img/a", 0, 0, "ears"),
        ("img/a", 0, 1, "whiskers"),
        ("img/a", 0, 2, "fur"),
        ("img/b", 1, 0, "snout"),
        ("img/b", 1, 1, "tail"),
        ("img/c", 2, 0, "fin"),
    ]
    assert [r["flag"] for r in rows] == ["ok", "empty", "full", "ok", "no_annotation", "ok"]
    assert rows[3]["area_fraction"] == pytest.approx(0.95)
    assert rows[4]["area_fraction"] == pytest.approx(0.05)
    assert rows[0]["area_fraction"] == pytest.approx(results[0].masks[0].mean())
    assert [r["score"] for r in rows[:3]] == pytest.approx([0.9, 0.1, 0.5])
    assert [r["score"] for r in rows[3:]] == [None, None, None]
    assert masks.flags() == {"empty": 1, "full": 1, "no_annotation": 1, "ok": 3}


def test_unknown_image_id_is_named(store: tuple[MaskStore, pa.Table, list[ImageMasks]]) -> None:
    masks, _, _ = store
    np.testing.assert_array_equal(masks.rows(["img/c", "img/a"]), [2, 0])
    with pytest.raises(StoreError, match=r"\['img/zzz'\]"):
        masks.rows(["img/a", "img/zzz"])
    with pytest.raises(StoreError, match="img/zzz"):
        masks.union(["img/zzz"])


def test_wrong_mask_shape_raises(tmp_path: Path) -> None:
    bad = ImageMasks("img/x", "cat", ["ears", "tail"], np.zeros((2, 4, 4), dtype=bool))
    with pytest.raises(StoreError, match=r"img/x: masks of shape \(2, 4, 4\), expected \(2, 4, 5\)"):
        write_mask_store(tmp_path, [bad], RESOLUTION, backend="test")
    too_few = ImageMasks("img/y", "cat", ["ears", "tail"], np.zeros((1, 4, 5), dtype=bool))
    with pytest.raises(StoreError, match="img/y"):
        write_mask_store(tmp_path, [too_few], RESOLUTION, backend="test")


def test_mask_store_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        MaskStore(tmp_path)


def sharded_store(path: Path) -> tuple[list[str], Path]:
    """Five images in shards of two (files c/0, c/1, c/2); the third shard's masks are all empty."""
    rng = np.random.default_rng(3)
    masks = [rng.random((1, *RESOLUTION)) > 0.5 for _ in range(4)] + [np.zeros((1, *RESOLUTION), bool)]
    results = [ImageMasks(f"img/{i}", "cat", ["ears"], mask) for i, mask in enumerate(masks)]
    write_mask_store(path, results, RESOLUTION, "test", images_per_shard=2)
    return [r.image_id for r in results], path / STORE_NAME / "masks" / "c"


def shard(root: Path, index: int) -> Path:
    return root / str(index) / "0" / "0" / "0"


def test_every_shard_is_written_even_when_empty(tmp_path: Path) -> None:
    """zarr skips all-empty shards by default; the store writes them, so a missing one means damage."""
    ids, root = sharded_store(tmp_path)
    assert [shard(root, i).is_file() for i in range(3)] == [True, True, True]
    assert not MaskStore(tmp_path).concept_masks(ids[4:]).any()


def test_deleted_mask_shard_is_named_at_open(tmp_path: Path) -> None:
    """zarr reads a missing shard as all-False masks: the store must refuse to open instead."""
    ids, root = sharded_store(tmp_path)
    shard(root, 1).unlink()
    with pytest.raises(
        DamagedStoreError, match=rf"{shard(root, 1)}: shard file missing \(1 of 3 in .*masks\.zarr/masks\)"
    ):
        MaskStore(tmp_path)


def test_shard_deleted_after_open_is_named_on_read(tmp_path: Path) -> None:
    ids, root = sharded_store(tmp_path)
    store = MaskStore(tmp_path)
    shard(root, 2).unlink()
    assert store.concept_masks(ids[:4]).shape == (4, 1, *RESOLUTION)  # shards 0 and 1 are intact
    with pytest.raises(DamagedStoreError, match=rf"{shard(root, 2)}: shard file missing \(rows 4..4\)"):
        store.union(ids)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "emptied"])
def test_damaged_mask_shard_is_named_on_read(tmp_path: Path, damage: str) -> None:
    ids, root = sharded_store(tmp_path)
    path = shard(root, 1)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        data[8] ^= 0x10  # in the first chunk's compressed data, not the shard index
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    store = MaskStore(tmp_path)
    with pytest.raises(
        DamagedStoreError,
        match=rf"{path}: shard file unreadable \(ValueError: Stored and computed checksum do not match",
    ):
        store.union(ids[1:3])
    np.testing.assert_array_equal(
        store.concept_masks(ids[:1])[0, 0], MaskStore(tmp_path).concept_masks(ids[:1])[0, 0]
    )  # other shards read


def test_masks_that_differ_from_their_table_are_an_error(tmp_path: Path) -> None:
    """A shard from another run (valid checksums, other masks) does not pass as this store's."""
    ids, root = sharded_store(tmp_path / "a")
    other = [
        ImageMasks(
            f"img/{i}", "cat", ["ears"], np.ones((1, *RESOLUTION), bool) if i == 0 else np.zeros((1, *RESOLUTION), bool)
        )
        for i in range(5)
    ]
    write_mask_store(tmp_path / "b", other, RESOLUTION, "test", images_per_shard=2)
    shard(root, 0).write_bytes(shard(tmp_path / "b" / STORE_NAME / "masks" / "c", 0).read_bytes())
    store = MaskStore(tmp_path / "a")
    with pytest.raises(
        DamagedStoreError,
        match=r"masks\.zarr: the masks of 2 image\(s\) differ from masks\.parquet, e\.g\. img/0 slot 0 covers 1\.0000",
    ):
        store.union(ids)
    assert store.concept_masks(ids[2:]).shape == (3, 1, *RESOLUTION)


def test_store_and_table_of_other_sizes_are_an_error(tmp_path: Path) -> None:
    ids, _ = sharded_store(tmp_path)
    group = zarr.open_group(str(tmp_path / STORE_NAME), mode="r+")
    group.attrs["image_ids"] = ids[:4]
    with pytest.raises(StoreError, match=r"masks of shape \(5, 1, 4, 5\), but its attributes say \(4, 1, 4, 5\)"):
        MaskStore(tmp_path)


# --- annotated backend ------------------------------------------------------------------------


def train_ids(manifest: pa.Table, count: int = 8) -> list[str]:
    train = manifest.filter(pc.equal(manifest.column("split"), "train"))
    return train.column("image_id").to_pylist()[3 : 3 + count]


def part_labels(tiny_world: Path, manifest: pa.Table, image_ids: list[str]) -> np.ndarray:
    group = zarr.open_group(str(tiny_world / "world.zarr"), mode="r")
    index = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("source_index").to_pylist(), strict=True))
    return np.stack([group["train/part_labels"][index[i]] for i in image_ids])


def test_annotated_masks_match_part_labels(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]]
) -> None:
    ids = train_ids(manifest)
    results, size = annotated_masks(tiny_world, manifest, ids, world_concepts, None, progress=False)
    labels = part_labels(tiny_world, manifest, ids)
    assert size == (32, 32) == labels.shape[1:]
    names = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("class_name").to_pylist(), strict=True))
    assert [r.image_id for r in results] == ids
    assert any(len(r.concepts) != len(results[0].concepts) for r in results)
    for result, label_map in zip(results, labels, strict=True):
        assert result.class_name == names[result.image_id]
        assert result.concepts == world_concepts[result.class_name]
        assert result.masks.dtype == bool and result.masks.shape == (len(result.concepts), 32, 32)
        assert result.missing == [False] * len(result.concepts)
        for k in range(len(result.concepts)):
            np.testing.assert_array_equal(result.masks[k], label_map == k + 1)
        # the concepts cover the object except its cue (the world's sticker: none of the named parts)
        np.testing.assert_array_equal(result.masks.any(axis=0), (label_map > 0) & (label_map != CUE_LABEL))
        assert result.masks.any()


def test_unknown_concept_gets_empty_mask_flagged(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]], tmp_path: Path
) -> None:
    ids = train_ids(manifest, 4)
    concepts = {cls: [names[0].upper(), "unicorn horn"] for cls, names in world_concepts.items()}
    results, size = annotated_masks(tiny_world, manifest, ids, concepts, None, progress=False)
    labels = part_labels(tiny_world, manifest, ids)
    for result, label_map in zip(results, labels, strict=True):
        assert result.missing == [False, True]
        np.testing.assert_array_equal(result.masks[0], label_map == 1)
        assert not result.masks[1].any()
    table = write_mask_store(tmp_path, results, size, backend="annotated")
    flags = table.column("flag").to_pylist()
    assert flags[1::2] == ["no_annotation"] * 4
    assert "no_annotation" not in flags[0::2]
    assert MaskStore(tmp_path).flags()["no_annotation"] == 4


def test_annotated_resolution(tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]]) -> None:
    ids = train_ids(manifest, 4)
    results, size = annotated_masks(tiny_world, manifest, ids, world_concepts, 16, progress=False)
    full, _ = annotated_masks(tiny_world, manifest, ids, world_concepts, None, progress=False)
    labels = part_labels(tiny_world, manifest, ids)
    assert size == (16, 16)
    for small, large, label_map in zip(results, full, labels, strict=True):
        assert small.masks.shape == (len(small.concepts), 16, 16) and small.masks.dtype == bool
        np.testing.assert_array_equal(small.masks, large.masks[:, ::2, ::2])
        for k in range(len(small.concepts)):
            np.testing.assert_array_equal(small.masks[k], label_map[::2, ::2] == k + 1)


def test_annotated_needs_part_catalog(tmp_path: Path, manifest: pa.Table) -> None:
    with pytest.raises(
        StoreError,
        match="annotated needs part annotations that come with the data .*a dataset without part annotations.*masks.backend: grounded_sam",
    ):
        annotated_masks(tmp_path, manifest, train_ids(manifest, 1), {}, None, progress=False)


def test_resize_masks_nearest_and_dtype() -> None:
    labels = np.arange(2 * 6 * 9, dtype=np.uint8).reshape(2, 6, 9)
    resized = resize_masks(labels, (3, 4))
    assert resized.dtype == np.uint8 and resized.shape == (2, 3, 4)
    rows, cols = np.floor(np.arange(3) * 6 / 3).astype(int), np.floor(np.arange(4) * 9 / 4).astype(int)
    np.testing.assert_array_equal(resized, labels[:, rows][:, :, cols])
    masks = np.random.default_rng(1).random((3, 2, 8, 8)) > 0.5
    small = resize_masks(masks, (4, 4))
    assert small.dtype == bool and small.shape == (3, 2, 4, 4)
    np.testing.assert_array_equal(small, masks[..., ::2, ::2])
    up = resize_masks(masks[0, 0], (16, 16))
    np.testing.assert_array_equal(up, masks[0, 0].repeat(2, axis=0).repeat(2, axis=1))
    assert resize_masks(masks, (8, 8)) is masks


def test_finetuning_leaves_out_images_without_a_usable_mask(tmp_path: Path) -> None:
    from pipeline.config.finetune import FinetuneConfig, TrainSchedule
    from pipeline.data.datasets import ArraySplit
    from pipeline.training.finetune import FinetuneInputs, _with_masks

    found = np.zeros((1, *RESOLUTION), dtype=bool)
    found[0, 1, 1] = True
    results = [
        ImageMasks("img/a", "cat", ["ears"], found),
        ImageMasks("img/b", "cat", ["ears"], np.zeros((1, *RESOLUTION), bool), boxes=[0]),
        ImageMasks("img/c", "cat", ["ears"], found.copy()),
    ]
    write_mask_store(tmp_path / "masks", results, RESOLUTION, "test")
    data = ArraySplit(
        np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3), np.array([0, 1, 2]), ["img/a", "img/b", "img/c"]
    )
    inputs = FinetuneInputs(base_model=tmp_path, dataset=tmp_path, subset=tmp_path, masks=tmp_path / "masks")

    def config(objective: dict) -> FinetuneConfig:
        return FinetuneConfig(method="m", train=TrainSchedule(), objective=objective)

    kept = _with_masks(config({"objective": "relevance"}), inputs, data)
    assert kept.image_ids == ["img/a", "img/c"] and kept.labels.tolist() == [0, 2]
    np.testing.assert_array_equal(kept.images, data.images[[0, 2]])
    assert _with_masks(config({"objective": "labels"}), inputs, data) is data  # plain fine-tuning uses every image
    assert _with_masks(config({"objective": "relevance", "masks": "object"}), inputs, data) is data
    write_mask_store(tmp_path / "none", results[1:2], RESOLUTION, "test")
    nothing = FinetuneInputs(base_model=tmp_path, dataset=tmp_path, subset=tmp_path, masks=tmp_path / "none")
    with pytest.raises(ValueError, match="no fine-tuning image has a usable concept mask"):
        _with_masks(
            config({"objective": "relevance"}), nothing, ArraySplit(data.images[1:2], data.labels[1:2], ["img/b"])
        )
