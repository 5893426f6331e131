"""The dataset manifest: one parquet row per image, the contract every stage reads.

Required columns (any source):

=============  ========  =================================================================
column         type      meaning
=============  ========  =================================================================
image_id       string    unique id, stable across runs (``<split>/<index>`` for the world)
source         string    where the pixels are, relative to the manifest's folder: an image
                         file, or an array store (zarr)
source_index   int64     row in the array store; -1 when ``source`` is an image file
class_index    int32     0-based index into the class list in the file's metadata
class_name     string    readable class name, equal to ``classes[class_index]``
split          string    e.g. train, test, or an out-of-distribution split
=============  ========  =================================================================

Sources may add columns (the world adds ``background_class``, ``rendering``, ``factor`` and
``factor_value``). The ordered class list is stored in the parquet schema metadata under
``cft.classes`` (JSON), so class indices mean the same thing in every later stage; image folders
also store ``cft.readable_names`` (class id -> the name used in prompts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.utils.atomic import write_with
from pipeline.utils.errors import CftError

REQUIRED_COLUMNS: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "source": pa.string(),
    "source_index": pa.int64(),
    "class_index": pa.int32(),
    "class_name": pa.string(),
    "split": pa.string(),
}
MANIFEST_NAME = "manifest.parquet"
CLASSES_KEY = b"cft.classes"
READABLE_NAMES_KEY = b"cft.readable_names"  # optional: class name -> name used in prompts (image folders)


class ManifestError(CftError):
    """A manifest that breaks the contract; the message names the file and the problem."""


def build_manifest(
    columns: dict[str, list | np.ndarray], classes: list[str], extra_types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    fields = [pa.field(name, dtype, nullable=False) for name, dtype in REQUIRED_COLUMNS.items()]
    fields += [pa.field(name, dtype) for name, dtype in (extra_types or {}).items()]
    schema = pa.schema(fields, metadata={CLASSES_KEY: json.dumps(classes).encode()})
    table = pa.Table.from_pydict({field.name: columns[field.name] for field in fields}, schema=schema)
    validate(table, "<new manifest>")
    return table


def classes_of(table: pa.Table) -> list[str]:
    metadata = table.schema.metadata or {}
    if CLASSES_KEY not in metadata:
        raise ManifestError("manifest has no class list in its metadata (key 'cft.classes')")
    return list(json.loads(metadata[CLASSES_KEY]))


def readable_names_of(table: pa.Table) -> dict[str, str] | None:
    """The dataset's own readable class names (from a class-name file), if it has them."""
    raw = (table.schema.metadata or {}).get(READABLE_NAMES_KEY)
    return json.loads(raw) if raw else None


def validate(table: pa.Table, name: str) -> None:
    """Raise :class:`ManifestError` naming ``name`` if ``table`` breaks the contract."""
    for column, dtype in REQUIRED_COLUMNS.items():
        if column not in table.column_names:
            raise ManifestError(f"{name}: missing column '{column}'")
        if table.schema.field(column).type != dtype:
            raise ManifestError(
                f"{name}: column '{column}' has type {table.schema.field(column).type}, expected {dtype}"
            )
        if table.column(column).null_count:
            raise ManifestError(f"{name}: column '{column}' has {table.column(column).null_count} null value(s)")
    try:
        classes = classes_of(table)
    except ManifestError as exc:
        raise ManifestError(f"{name}: {exc}") from None
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    if len(np.unique(ids)) != len(ids):
        raise ManifestError(f"{name}: image_id values are not unique")
    class_index = table.column("class_index").to_numpy()
    if len(class_index) and (class_index.min() < 0 or class_index.max() >= len(classes)):
        raise ManifestError(f"{name}: class_index outside 0..{len(classes) - 1}")
    names = table.column("class_name").to_numpy(zero_copy_only=False)
    expected = np.asarray(classes, dtype=object)[class_index] if len(class_index) else names
    mismatched = np.flatnonzero(names != expected)
    if len(mismatched):
        row = int(mismatched[0])
        raise ManifestError(
            f"{name}: row {row} has class_name {names[row]!r} but class_index {class_index[row]} is {expected[row]!r}"
        )


def write_manifest(path: str | Path, table: pa.Table) -> None:
    validate(table, str(path))
    write_with(path, lambda tmp: pq.write_table(table, tmp))


def read_manifest(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found (run `cft prepare` first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable parquet file ({exc})") from exc
    validate(table, str(path))
    return table


def split_rows(table: pa.Table, split: str) -> pa.Table:
    rows = table.filter(pc.equal(table.column("split"), split))
    if rows.num_rows == 0:
        known = sorted(set(table.column("split").to_pylist()))
        raise ManifestError(f"manifest has no rows in split '{split}'; splits: {known}")
    return rows
