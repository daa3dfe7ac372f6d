"""The output rows: one per input image, the model's answer or the reason there is none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


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
