"""The payload from the decoding tasks to the inference actors: one `ImageBatch` per output
part, carried through Ray's object store as a one-row Arrow table.

A batch holds every row of one part, in order: its path, its reason if it could not be
decoded, what a WebDataset sample brought along, and the input's size and version; the
preprocessed images of the rows without a reason travel together as one uint8 array
(N x H x W x 3, 4x smaller than float32). `to_arrow`/`from_arrow` are each other's inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("first", pa.int64()),
    ("last", pa.bool_()),
    ("paths", pa.list_(pa.string())),
    ("errors", pa.list_(pa.string())),
    ("source_labels", pa.list_(pa.string())),
    ("source_metadata", pa.list_(pa.string())),
    ("input_sizes", pa.list_(pa.int64())),
    ("input_versions", pa.list_(pa.string())),
    ("shape", pa.list_(pa.int64())),
    ("pixels", pa.large_binary()),
    ("decode_seconds", pa.float64()),
    ("large_jpegs", pa.int64()),
])


@dataclass
class ImageBatch:
    """Rows `first`.. of work unit `uid`; `last`: the unit's final rows."""

    uid: str
    first: int
    last: bool
    paths: list[str]
    errors: list[str | None]
    source_labels: list[str | None]
    source_metadata: list[str | None]
    input_sizes: list[int | None]
    input_versions: list[str | None]
    images: np.ndarray  # uint8, one HxWx3 image per row whose error is None
    decode_seconds: float = 0.0  # CPU spent reading, decoding and preprocessing the rows
    large_jpegs: int = 0  # rows that `--decode fast` would decode smaller

    def __post_init__(self) -> None:
        good = sum(e is None for e in self.errors)
        if len(self.images) != good:
            raise ValueError(f"{len(self.images)} images for {good} rows without an error")

    @property
    def rows(self) -> int:
        return len(self.paths)

    def to_arrow(self) -> pa.Table:
        images = np.ascontiguousarray(self.images, dtype=np.uint8)
        offsets = pa.py_buffer(np.array([0, images.nbytes], dtype=np.int64))
        return pa.Table.from_arrays([
            pa.array([self.uid]), pa.array([self.first], pa.int64()), pa.array([self.last]),
            pa.array([self.paths]), pa.array([self.errors]), pa.array([self.source_labels]),
            pa.array([self.source_metadata]), pa.array([self.input_sizes], pa.list_(pa.int64())),
            pa.array([self.input_versions], pa.list_(pa.string())),
            pa.array([list(images.shape)], pa.list_(pa.int64())),
            pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1,
                                             [None, offsets, pa.py_buffer(images)]),
            pa.array([self.decode_seconds], pa.float64()),
            pa.array([self.large_jpegs], pa.int64()),
        ], schema=SCHEMA)

    @classmethod
    def from_arrow(cls, table: pa.Table, row: int = 0) -> ImageBatch:
        def value(name: str) -> Any:  # of the column's type in SCHEMA
            return table.column(name)[row].as_py()

        shape = tuple(value("shape"))
        pixels = table.column("pixels")[row].as_buffer()
        images = np.frombuffer(pixels, np.uint8).reshape(shape) if pixels is not None \
            else np.zeros(shape, np.uint8)
        return cls(uid=value("uid"), first=value("first"), last=value("last"),
                   paths=value("paths"), errors=value("errors"),
                   source_labels=value("source_labels"),
                   source_metadata=value("source_metadata"),
                   input_sizes=value("input_sizes"), input_versions=value("input_versions"),
                   images=images, decode_seconds=value("decode_seconds"),
                   large_jpegs=value("large_jpegs"))


def stack(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The batch's images as one array; an empty batch keeps the image shape."""
    if images:
        return np.stack(images)
    return np.zeros((0, height, width, 3), np.uint8)
