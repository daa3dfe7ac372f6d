"""The output rows: one per input image, the model's answer or the reason there is none;
and how a file of them is committed so that a crash never leaves half of one that counts."""

from __future__ import annotations

import io
import os
import re
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.storage import is_local, retrying

# Readers (pyarrow, Ray Data, Spark) skip names starting with "."; so does the resume scan.
TMP_PREFIX = ".tmp-"
_CHUNK = re.compile(r"^part-([0-9a-f]{16})-(\d{7,})-n(\d+)-e(\d+)(-last)?\.parquet$")


@dataclass(frozen=True)
class Chunk:
    """One committed file: rows `first`.. of a work unit (`last`: the unit's final rows).

    Its name carries all of this, so listing names tells what is done without opening files.
    """

    uid: str
    first: int
    rows: int
    errors: int
    last: bool

    @property
    def name(self) -> str:
        return (f"{self.key}-n{self.rows}-e{self.errors}"
                f"{'-last' if self.last else ''}.parquet")

    @property
    def key(self) -> str:
        return f"part-{self.uid}-{self.first:07d}"

    @classmethod
    def parse(cls, name: str) -> Chunk | None:
        match = _CHUNK.match(name)
        if not match:
            return None
        uid, first, rows, errors, last = match.groups()
        return cls(uid, int(first), int(rows), int(errors), last is not None)


def output_schema(classes: int) -> pa.Schema:
    return pa.schema([
        ("path", pa.string()),
        ("model", pa.string()),
        ("class_id", pa.int32()),
        ("label", pa.string()),
        ("top_k_ids", pa.list_(pa.int32())),
        ("top_k_labels", pa.list_(pa.string())),
        ("top_k_probs", pa.list_(pa.float32())),
        ("logits", pa.list_(pa.float32(), classes)),
        ("error", pa.string()),
        ("source_label", pa.string()),
        ("source_metadata", pa.string()),
    ])


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and probabilities of the k largest logits per row, best first."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return ids.astype(np.int32), np.take_along_axis(probs, ids, axis=1).astype(np.float32)


def result_table(paths: list[str], model: str, logits: np.ndarray, errors: list[str | None],
                 labels: tuple[str, ...], k: int, source_labels: list[str | None],
                 source_metadata: list[str | None]) -> pa.Table:
    """Rows with `error` set carry nulls in every model column.

    `source_label`/`source_metadata` carry what a WebDataset sample brought along (.cls or
    .txt, .json); they are null for plain image files.
    """
    ok = np.array([e is None for e in errors], dtype=bool)
    ids, probs = softmax_top_k(logits, k)
    n, classes = logits.shape

    def per_row(values: list) -> list:
        return [v if good else None for v, good in zip(values, ok, strict=True)]

    top_ids = [row.tolist() for row in ids]
    columns = {
        "path": pa.array(paths, pa.string()),
        "model": pa.array([model] * n, pa.string()),
        "class_id": pa.array(per_row(ids[:, 0].tolist()), pa.int32()),
        "label": pa.array(per_row([labels[i[0]] for i in top_ids]), pa.string()),
        "top_k_ids": pa.array(per_row(top_ids), pa.list_(pa.int32())),
        "top_k_labels": pa.array(per_row([[labels[j] for j in i] for i in top_ids]),
                                 pa.list_(pa.string())),
        "top_k_probs": pa.array(per_row([row.tolist() for row in probs]),
                                pa.list_(pa.float32())),
        "logits": pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(logits, dtype=np.float32).ravel()), classes,
            mask=pa.array(~ok)),
        "error": pa.array(errors, pa.string()),
        "source_label": pa.array(source_labels, pa.string()),
        "source_metadata": pa.array(source_metadata, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=output_schema(classes))


def put_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Make `path` appear whole or not at all, whatever instant the process dies.

    Local disks: write a hidden temporary file beside it, fsync, rename over. Object stores:
    one PUT (or a multipart upload) only shows the object once it is complete.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def commit_chunk(fs: AbstractFileSystem, folder: str, chunk: Chunk, table: pa.Table) -> None:
    """Commit `table` under the chunk's name. A retried batch whose error count came out
    differently leaves a second file for the same rows; the scan at the end of the run (or
    at the start of the next) keeps one, so commits need no listing of their own."""
    data = parquet_bytes(table)
    retrying(lambda: put_atomic(fs, f"{folder}/{chunk.name}", data))
