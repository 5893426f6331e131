from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.manifest import (
    REQUIRED_COLUMNS,
    ManifestError,
    build_manifest,
    classes_of,
    read_manifest,
    write_manifest,
)


def columns(**overrides: list) -> dict[str, list]:
    base = {
        "image_id": ["train/0", "train/1", "test/0"],
        "source": ["store.zarr/train", "store.zarr/train", "store.zarr/test"],
        "source_index": [0, 1, 0],
        "class_index": [0, 1, 1],
        "class_name": ["cat", "dog", "dog"],
        "split": ["train", "train", "test"],
    }
    return {**base, **overrides}


def test_world_manifest_schema(tiny_world: Path) -> None:
    table = read_manifest(tiny_world / "manifest.parquet")
    for name, dtype in REQUIRED_COLUMNS.items():
        assert table.schema.field(name).type == dtype
    assert {"background_class", "rendering", "factor", "factor_value"} <= set(table.column_names)
    assert classes_of(table)[:2] == ["fish", "bird"]


def test_round_trip(tmp_path: Path) -> None:
    table = build_manifest(columns(), ["cat", "dog"])
    write_manifest(tmp_path / "m.parquet", table)
    again = read_manifest(tmp_path / "m.parquet")
    assert again.equals(table) and classes_of(again) == ["cat", "dog"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_id": ["a", "a", "b"]}, "not unique"),
        ({"class_index": [0, 2, 1]}, r"class_index outside 0\.\.1"),
        ({"class_name": ["cat", "cat", "dog"]}, "row 1 has class_name 'cat' but class_index 1 is 'dog'"),
    ],
)
def test_invalid_manifests_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        build_manifest(columns(**overrides), ["cat", "dog"])


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match=f"{path}: not a readable parquet file"):
        read_manifest(path)
    without_split = pa.table({k: v for k, v in columns().items() if k != "split"})
    pq.write_table(without_split, path)
    with pytest.raises(ManifestError, match=f"{path}: missing column 'source_index'|{path}: column"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "absent.parquet")
