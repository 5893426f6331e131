"""Many-image arrays in zarr 3 with sharding: one chunk per image, a few hundred chunks per shard.

One chunk per image lets readers fetch any image alone; sharding packs the chunks into few files,
which is what makes DVC fast (a 10k-chunk unsharded store took 130 s to ``dvc pull``, sharded 2 s).

Reads are verified, because zarr alone does not: a missing shard file reads as the fill value
(all zeros, all False) without a word, and only the shard *index* carries a checksum (crc32c),
so a flipped byte in an image's data decodes silently into other pixels. Writers therefore store
every shard, empty ones included, and add a crc32c to every chunk; readers check at open that
every shard file the array's shape implies exists, and turn a decode or checksum failure into a
:class:`DamagedStoreError` naming the shard file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.utils.errors import CftError

DEFAULT_IMAGES_PER_SHARD = 512


class StoreError(CftError):
    """A store that is missing or does not hold what the manifest says; names the path."""


class DamagedStoreError(CftError):
    """A store whose files are missing, truncated or fail their checksums; names the file.

    Deliberately not a :class:`StoreError`: callers that treat a StoreError as "this dataset has no
    such array" (e.g. no object masks) must not read a damaged store as an absent one.
    """


_DAMAGED_HINT = "the store is incomplete or damaged: `dvc pull` it again, or rerun the stage that writes it"


def create_image_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    attributes: dict[str, Any] | None = None,
) -> zarr.Array:
    """An empty sharded array with one chunk per image (first axis), written verifiably: every
    chunk carries a crc32c, and empty chunks and shards are stored too, so that readers can
    require every shard file to exist."""
    dtype = np.dtype(dtype)
    count = shape[0]
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(1, *shape[1:]),
        shards=(max(1, min(count, images_per_shard)), *shape[1:]),
        compressors=[
            BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle" if np.dtype(dtype).kind == "b" else "shuffle"),
            Crc32cCodec(),
        ],
        fill_value=False if np.dtype(dtype).kind == "b" else 0,
        attributes=attributes or {},
        config={"write_empty_chunks": True},
    )


def write_image_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Write ``data`` (first axis = images) as a sharded array with one chunk per image."""
    array = create_image_array(group, name, data.shape, data.dtype, images_per_shard, attributes)
    if data.shape[0]:
        array[...] = data


def open_store(path: str | Path) -> zarr.Group:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: array store not found")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise StoreError(f"{path}: not a readable zarr group ({exc})") from exc


def open_array(path: str | Path, name: str) -> zarr.Array:
    """Array ``name`` of the store at ``path``, after checking that all its shard files exist."""
    group = open_store(path)
    try:
        array = group[name]
    except KeyError as exc:
        raise StoreError(f"{path}: has no array '{name}'") from exc
    if not isinstance(array, zarr.Array):
        raise StoreError(f"{path}: '{name}' is a group, not an array")
    check_shard_files(array)
    return array


def _shard_shape(array: zarr.Array) -> tuple[int, ...]:
    return tuple(array.shards or array.chunks)


def shard_file(array: zarr.Array, coords: Sequence[int]) -> Path | str:
    """Where the shard (or, unsharded, the chunk) at grid position ``coords`` is stored: a file
    path for a local store, else the store's URL and the key."""
    key = array.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    root = getattr(array.store_path.store, "root", None)
    if root is None:
        return f"{array.store_path}/{key}"
    return Path(root) / array.path / key


def check_shard_files(array: zarr.Array) -> None:
    """Every shard file that ``array``'s shape implies exists (zarr would read a missing one as the
    fill value). Costs one ``stat`` per shard; stores that are not local directories are skipped."""
    if getattr(array.store_path.store, "root", None) is None:
        return
    grid = [math.ceil(size / step) for size, step in zip(array.shape, _shard_shape(array), strict=True)]
    missing = [
        path
        for coords in itertools.product(*(range(n) for n in grid))
        if not (path := Path(shard_file(array, coords))).is_file()
    ]
    if missing:
        total = math.prod(grid)
        raise DamagedStoreError(
            f"{missing[0]}: shard file missing ({len(missing)} of {total} in {Path(array.store_path.store.root) / array.path}); {_DAMAGED_HINT}"
        )


def read_rows(array: zarr.Array, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows ``indices`` of ``array`` (any order), reading contiguous runs as slices, one shard at a
    time: a shard file that is missing or fails to decode is a DamagedStoreError naming it."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return np.zeros((0, *array.shape[1:]), dtype=array.dtype)
    if indices.min() < 0 or indices.max() >= array.shape[0]:
        raise StoreError(f"{array.store_path}: row index out of range 0..{array.shape[0] - 1}")
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    out = np.empty((len(indices), *array.shape[1:]), dtype=array.dtype)
    per_shard = _shard_shape(array)[0]
    # A new run starts at every gap and at every shard boundary.
    breaks = np.flatnonzero((np.diff(sorted_indices) != 1) | (np.diff(sorted_indices // per_shard) != 0)) + 1
    start = 0
    for run in np.split(sorted_indices, breaks):
        out[order[start : start + len(run)]] = _read_run(array, int(run[0]), int(run[-1]) + 1, per_shard)
        start += len(run)
    return out


def _read_run(array: zarr.Array, begin: int, end: int, per_shard: int) -> np.ndarray:
    """Rows ``begin:end`` of ``array``, all within one shard along the first axis."""
    other_axes = [
        range(math.ceil(size / step)) for size, step in zip(array.shape[1:], _shard_shape(array)[1:], strict=True)
    ]
    files = [shard_file(array, coords) for coords in itertools.product([begin // per_shard], *other_axes)]
    for path in files:
        if isinstance(path, Path) and not path.is_file():
            raise DamagedStoreError(f"{path}: shard file missing (rows {begin}..{end - 1}); {_DAMAGED_HINT}")
    try:
        return array[begin:end]
    except MemoryError:
        raise
    except Exception as exc:  # zarr and numcodecs raise ValueError, RuntimeError, ... for bad bytes
        raise DamagedStoreError(
            f"{', '.join(map(str, files))}: shard file unreadable ({type(exc).__name__}: {exc}); {_DAMAGED_HINT}"
        ) from exc
