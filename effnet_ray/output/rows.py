"""The output rows, one per input: the model's answer or the reason there is none; and the
commit of a batch's rows as one output part, so that a crash never leaves half of one that
counts and a run that lost its lease never writes into the output."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effnet_ray.inputs.batch import ImageBatch

# An error's details, in parentheses after its reason ("undecodable image (...)").
_REASON_DETAIL = r"\s*\(.*$"


def reason_kind(error: str) -> str:
    """An error row's reason without its details, for counting rows by reason."""
    return re.sub(_REASON_DETAIL, "", error).strip()


def output_schema(classes: int, embedding: int | None = None, logits: bool = True
                  ) -> pa.Schema:
    """The rows' columns, in order; `logits` unless --no-logits, `embedding` with
    --embeddings."""
    schema = pa.schema([
        ("path", pa.string()),
        ("model", pa.string()),
        ("class_id", pa.int32()),
        ("label", pa.string()),
        ("top_k_ids", pa.list_(pa.int32())),
        ("top_k_labels", pa.list_(pa.string())),
        ("top_k_probs", pa.list_(pa.float32())),
        *([("logits", pa.list_(pa.float32(), classes))] if logits else []),
        ("error", pa.string()),
        ("source_label", pa.string()),
        ("source_metadata", pa.string()),
        ("input_size", pa.int64()),
        ("input_version", pa.string()),
    ])
    if embedding:
        schema = schema.append(pa.field("embedding", pa.list_(pa.float32(), embedding)))
    return schema


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first, ties to the lower index: a
    stable descending argsort's first k, without sorting all 1,000 classes of every row."""
    k = min(k, scores.shape[1])
    if k == scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    ids = np.empty((len(scores), k), dtype=np.int64)
    for row, (values, bound) in enumerate(zip(scores, kth, strict=True)):
        candidates = np.flatnonzero(values >= bound)  # ascending: ties keep index order
        if len(candidates) < k:  # NaNs, which compare false: the full sort puts them last
            candidates = np.arange(len(values))
        ids[row] = candidates[np.argsort(-values[candidates], kind="stable")[:k]]
    return ids


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and probabilities of the k largest logits per row, best first."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = top_k_ids(logits, k)
    return ids.astype(np.int32), np.take_along_axis(probs, ids, axis=1).astype(np.float32)


def _per_row(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    """A fixed-size list per row: `values` (one row per good row) there, null on errors."""
    every = np.zeros((len(ok), values.shape[1]), dtype=np.float32)
    every[ok] = values
    return pa.FixedSizeListArray.from_arrays(pa.array(every.ravel()), values.shape[1],
                                             mask=pa.array(~ok))


def result_table(batch: ImageBatch, logits: np.ndarray, model: str,
                 class_names: tuple[str, ...], k: int, embeddings: np.ndarray | None = None,
                 keep_logits: bool = True) -> pa.Table:
    """The batch's rows; `logits` (and `embeddings`) have one row per image of the batch.

    Rows with `error` set carry nulls in every model column. `source_label` and
    `source_metadata` carry what a WebDataset sample brought along (.cls or .txt, .json).
    """
    n, classes = batch.rows, logits.shape[1]
    ok = np.array([e is None for e in batch.errors], dtype=bool)
    every = np.zeros((n, classes), dtype=np.float32)
    every[ok] = logits
    ids, probs = softmax_top_k(every, k)

    def per_row(values: list) -> list:
        return [v if good else None for v, good in zip(values, ok, strict=True)]

    top_ids = [row.tolist() for row in ids]
    values = {
        "path": batch.paths,
        "model": [model] * n,
        "class_id": per_row(ids[:, 0].tolist()),
        "label": per_row([class_names[i[0]] for i in top_ids]),
        "top_k_ids": per_row(top_ids),
        "top_k_labels": per_row([[class_names[j] for j in i] for i in top_ids]),
        "top_k_probs": per_row([row.tolist() for row in probs]),
        "logits": _per_row(logits, ok),
        "error": batch.errors,
        "source_label": batch.source_labels,
        "source_metadata": batch.source_metadata,
        "input_size": batch.input_sizes,
        "input_version": batch.input_versions,
        "embedding": None if embeddings is None else _per_row(embeddings, ok),
    }
    schema = output_schema(classes, None if embeddings is None else embeddings.shape[1],
                           keep_logits)
    return pa.Table.from_arrays([values[f.name] if isinstance(values[f.name], pa.Array)
                                 else pa.array(values[f.name], f.type) for f in schema],
                                schema=schema)


def parquet_options(schema: pa.Schema) -> dict:
    """How every output file is written: dictionary encoding on the string columns only; it
    pays for repeated labels, while on the logits it costs five times the rest of the write
    and makes the file larger."""
    strings = (pa.string(), pa.large_string())
    return {"use_dictionary": [
        f.name if f.type in strings else f"{f.name}.list.element" for f in schema
        if f.type in strings or (pa.types.is_list(f.type) and f.type.value_type in strings)]}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **parquet_options(table.schema))
    return sink.getvalue()


