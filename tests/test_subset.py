from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config.data import SubsetConfig
from pipeline.data.manifest import classes_of, read_manifest
from pipeline.data.subset import SubsetError, read_subset, seen_class_count, select_subset, subset_ids, write_subset


@pytest.fixture(scope="module")
def manifest(tiny_world: Path) -> pa.Table:
    return read_manifest(tiny_world / "manifest.parquet")


def config(**overrides: object) -> SubsetConfig:
    values: dict[str, object] = {"images_per_class": 2, "val_images_per_class": 1, "seed": 0}
    return SubsetConfig(**{**values, **overrides})


def split_of(manifest: pa.Table) -> dict[str, str]:
    return dict(zip(manifest.column("image_id").to_pylist(), manifest.column("split").to_pylist(), strict=True))


def class_of(manifest: pa.Table) -> dict[str, int]:
    return dict(zip(manifest.column("image_id").to_pylist(), manifest.column("class_index").to_pylist(), strict=True))


def seen_names(table: pa.Table) -> list[str]:
    return sorted({row["class_name"] for row in table.to_pylist() if row["seen"]})


def test_same_seed_gives_identical_table(manifest: pa.Table) -> None:
    first, second = select_subset(manifest, config(seed=3)), select_subset(manifest, config(seed=3))
    assert first.equals(second)
    assert first.schema.metadata == second.schema.metadata


def test_different_seeds_give_different_seen_classes(manifest: pa.Table) -> None:
    assert seen_names(select_subset(manifest, config(seed=0))) != seen_names(select_subset(manifest, config(seed=1)))


@pytest.mark.parametrize(
    ("num_classes", "fraction", "expected"),
    [(10, 0.5, 5), (10, 0.3, 3), (10, 0.01, 1), (10, 0.99, 9), (2, 0.5, 1), (2, 0.9, 1), (3, 0.1, 1), (7, 0.6, 4)],
)
def test_seen_class_count(num_classes: int, fraction: float, expected: int) -> None:
    assert seen_class_count(num_classes, fraction) == expected


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 5), (0.3, 3), (0.01, 1), (0.99, 9)])
def test_subset_has_expected_number_of_seen_classes(manifest: pa.Table, fraction: float, expected: int) -> None:
    table = select_subset(manifest, config(seen_fraction=fraction))
    assert len(seen_names(table)) == expected
    rows = table.to_pylist()
    assert len({r["class_index"] for r in rows if r["role"] == "finetune"}) == expected
    assert len({r["class_name"] for r in rows if not r["seen"]}) == 10 - expected


def test_finetune_rows(manifest: pa.Table) -> None:
    table = select_subset(manifest, config(images_per_class=3))
    splits, classes = split_of(manifest), class_of(manifest)
    rows = [r for r in table.to_pylist() if r["role"] == "finetune"]
    seen = {r["class_index"] for r in table.to_pylist() if r["seen"]}
    assert len(seen) == 5
    assert all(r["seen"] and r["class_index"] in seen for r in rows)
    assert all(splits[r["image_id"]] == "train" for r in rows)
    assert all(classes[r["image_id"]] == r["class_index"] for r in rows)
    assert Counter(r["class_index"] for r in rows) == {c: 3 for c in seen}
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 15
    names = classes_of(manifest)
    assert all(r["class_name"] == names[r["class_index"]] for r in table.to_pylist())


def test_val_rows_cover_every_class(manifest: pa.Table) -> None:
    table = select_subset(manifest, config(val_images_per_class=2))
    splits, classes = split_of(manifest), class_of(manifest)
    rows = [r for r in table.to_pylist() if r["role"] == "val"]
    assert all(splits[r["image_id"]] == "val" for r in rows)
    assert all(classes[r["image_id"]] == r["class_index"] for r in rows)
    assert Counter(r["class_index"] for r in rows) == {c: 2 for c in range(10)}
    seen = set(seen_names(table))
    assert all(r["seen"] == (r["class_name"] in seen) for r in rows)
    assert len({r["image_id"] for r in rows}) == 20


def test_splits_are_configurable(manifest: pa.Table) -> None:
    table = select_subset(manifest, config(split="test", val_split="train"))
    splits = split_of(manifest)
    assert {splits[i] for i in subset_ids(table, "finetune")} == {"test"}
    assert {splits[i] for i in subset_ids(table, "val")} == {"train"}


def test_subset_ids(manifest: pa.Table) -> None:
    table = select_subset(manifest, config())
    rows = table.to_pylist()
    assert subset_ids(table, "finetune") == [r["image_id"] for r in rows if r["role"] == "finetune"]
    assert len(subset_ids(table, "finetune")) == 10
    assert len(subset_ids(table, "val")) == 10
    assert len(subset_ids(table, "val", seen=True)) == 5
    assert subset_ids(table, "val", seen=False) == [r["image_id"] for r in rows if r["role"] == "val" and not r["seen"]]
    assert subset_ids(table, "finetune", seen=False) == []
    assert subset_ids(table, "nope") == []


def test_metadata_and_round_trip(manifest: pa.Table, tmp_path: Path) -> None:
    subset_config = config(seed=7)
    table = select_subset(manifest, subset_config)
    write_subset(tmp_path / "subset.parquet", table)
    again, metadata = read_subset(tmp_path / "subset.parquet")
    assert again.equals(table)
    assert metadata["seen_classes"] == sorted(seen_names(table), key=classes_of(manifest).index)
    assert sorted(metadata["seen_classes"] + metadata["unseen_classes"]) == sorted(classes_of(manifest))
    assert not set(metadata["seen_classes"]) & set(metadata["unseen_classes"])
    assert metadata["classes"] == classes_of(manifest)
    assert metadata["config"] == subset_config.model_dump()
    assert SubsetConfig(**metadata["config"]) == subset_config
    assert [f.type for f in again.schema] == [pa.string(), pa.int32(), pa.string(), pa.string(), pa.bool_()]


def test_too_many_finetune_images_names_split_and_class(manifest: pa.Table) -> None:
    first_seen = next(r["class_name"] for r in select_subset(manifest, config()).to_pylist() if r["role"] == "finetune")
    with pytest.raises(SubsetError, match=rf"split 'train' has 6 images of class '{first_seen}', 7 are needed"):
        select_subset(manifest, config(images_per_class=7))


def test_too_many_val_images_names_split_and_class(manifest: pa.Table) -> None:
    per_class = Counter(r["class_index"] for r in manifest.to_pylist() if r["split"] == "val")
    count = per_class[0]
    with pytest.raises(SubsetError, match=rf"split 'val' has {count} images of class 'fish', {count + 1} are needed"):
        select_subset(manifest, config(val_images_per_class=count + 1))


@pytest.mark.parametrize("field", ["split", "val_split"])
def test_unknown_split(manifest: pa.Table, field: str) -> None:
    with pytest.raises(SubsetError, match=r"split 'nowhere' is not in the dataset"):
        select_subset(manifest, config(**{field: "nowhere"}))


def test_read_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.parquet"
    with pytest.raises(SubsetError, match="subset file not found") as info:
        read_subset(path)
    assert str(path) in str(info.value)


def test_read_parquet_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image_id": ["a"]}), path)
    with pytest.raises(SubsetError, match="no 'cft.subset' metadata") as info:
        read_subset(path)
    assert str(path) in str(info.value)


def test_read_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SubsetError, match="not a readable parquet file") as info:
        read_subset(path)
    assert str(path) in str(info.value)
