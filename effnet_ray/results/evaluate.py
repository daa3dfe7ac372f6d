"""An output's rows against ground truth: accuracy as OMZ's accuracy checker counts it.

top-1: the row's best class is the true one; top-5: the true class is among its five best
(`--top-k` >= 5 needed). Only rows with ground truth and without an error are evaluated;
rows without ground truth and error rows are counted apart, never as right or wrong.
Calibration is the expected calibration error of the top-1 probability over 15 equal bins.
Columns are read once with pyarrow and everything else is numpy over whole arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.models.registry import get_spec, load_class_names, load_wnids
from effnet_ray.output.damage import check_footers, damaged_line, is_damage, reading
from effnet_ray.output.place import check_existing
from effnet_ray.output.resume import scan
from effnet_ray.results.truth import UNKNOWN, ground_truth, read_truth_file
from effnet_ray.storage import is_local, named_errors, open_fs, redact, short_reason

COLUMNS = ["path", "model", "class_id", "top_k_ids", "top_k_probs", "error", "source_label"]
ECE_BINS = 15
CONFUSED = 10
_FILE = "__fragment_index"  # pyarrow's: which of the dataset's files a row came from


@dataclass
class Evaluation:
    model: str
    rows: int  # every row of the output
    errors: int  # rows that could not be labelled
    without_ground_truth: int  # labelled rows no source gave a class to
    images: int  # rows evaluated: labelled and with ground truth
    top1: float | None
    top5: float | None  # None when the rows keep fewer than 5 classes
    ece: float | None
    ground_truth: dict[str, int]  # source -> rows it gave a class to
    per_class: list[dict] = field(default_factory=list)
    confused_pairs: list[dict] = field(default_factory=list)
    # what in the ground-truth file gave rows no class: {kind, count, message}
    ground_truth_problems: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_output(out: str, columns: list[str], storage_options: dict | None = None
                ) -> pa.Table:
    """Columns of the rows an output counts, as one table: its parts and recorded compacted
    files, not leftovers or duplicates (`resume.scan`). A file that cannot be read, or that
    holds other rows than its name says, is named with its repair."""
    fs, path = open_fs(out, storage_options)
    shown = redact(out)
    with named_errors(out):
        check_existing(fs, path, shown)
    holding = scan(fs, path).holding
    files = sorted(holding)
    if not files:
        raise UserError(f"{shown} holds no results")
    filesystem = None if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    with named_errors(out):
        try:
            dataset = pads.dataset([f"{path}/{n}" for n in files], format="parquet",
                                   filesystem=filesystem)
            present = [c for c in columns if c in dataset.schema.names]
            table = dataset.to_table(columns=[*present, _FILE])
        except Exception as exc:
            if not (is_damage(exc) or isinstance(exc, FileNotFoundError)):
                raise
            raise _damaged(fs, path, shown, holding, columns, exc) from exc
    which = table.column(_FILE).to_numpy()
    found = np.bincount(which, minlength=len(files))
    for name, rows in zip(files, found.tolist(), strict=True):
        if rows != holding[name]:
            raise damaged_line(shown, name, f"holds {rows} rows, its name says {holding[name]}")
    if any(c not in table.column_names for c in columns if c != "source_label"):
        raise _damaged(fs, path, shown, holding, columns, None)  # the first file lacks it
    wrong = _not_ours(table)
    if wrong.any():  # a later file lacks a column: its rows read as nulls there
        raise damaged_line(shown, files[which[np.argmax(wrong)]],
                           "rows without the columns every file of this tool has")
    if table.num_rows == 0:
        raise UserError(f"{shown} holds no results")
    return table.drop_columns([_FILE])


def _not_ours(table: pa.Table) -> np.ndarray:
    """Rows no file of ours holds: without a path or a model, or labelled without classes."""
    labelled = table.column("error").is_null()
    wrong = pc.or_(table.column("path").is_null(), table.column("model").is_null())
    for name in ("class_id", "label", "top_k_ids", "top_k_probs"):
        if name in table.column_names:
            wrong = pc.or_(wrong, pc.and_(labelled, table.column(name).is_null()))
    return wrong.to_numpy()


def _damaged(fs: AbstractFileSystem, path: str, shown: str, holding: dict[str, int],
             columns: list[str], exc: Exception | None) -> UserError:
    """The line naming the file that made reading an output fail (or read wrongly): a
    damaged footer first, then damage under a whole footer, found by reading the files one
    by one."""
    with named_errors(shown):
        damaged = check_footers(fs, path, holding)
        if damaged:
            name, reason = next(iter(damaged.items()))
            return damaged_line(shown, name, reason, len(damaged) - 1)
        for name in sorted(holding):
            with reading(shown, name), fs.open(f"{path}/{name}", "rb") as f:
                parquet = pq.ParquetFile(f)
                parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names])
    why = f" ({short_reason(exc)})" if exc else ""
    return UserError(f"the files of {shown} cannot be read together{why}")


def _top_ids(table: pa.Table) -> np.ndarray:
    """The rows' top-k class ids as an (n, k) array (rows here all have k entries)."""
    ids = table.column("top_k_ids").combine_chunks()
    k = pc.list_value_length(ids)
    width = pc.min(k).as_py() or 0
    if table.num_rows and pc.max(k).as_py() != width:
        raise UserError("the output's rows keep different numbers of classes")
    return pc.list_flatten(ids).to_numpy(zero_copy_only=False).reshape(len(ids), width)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
                      ) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width bin, weighted."""
    if not len(confidence):
        return 0.0
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = np.bincount(which, minlength=bins)
    right = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    sure = np.bincount(which, weights=confidence.astype(np.float64), minlength=bins)
    used = total > 0
    return float(np.sum(np.abs(right[used] - sure[used])) / len(confidence))


def evaluate_table(table: pa.Table, truth_entries: pa.Table | None = None) -> Evaluation:
    model = table.column("model")[0].as_py()
    spec = get_spec(model)
    names, wnids = load_class_names(spec.class_names), load_wnids(spec.class_names)
    labels = table.column("source_label") if "source_label" in table.column_names \
        else pa.nulls(table.num_rows, pa.string())
    truth = ground_truth(table.column("path"), labels, wnids, truth_entries)
    ok = table.column("error").is_null().to_numpy(zero_copy_only=False)
    known = truth.classes != UNKNOWN
    chosen = ok & known
    kept = table.filter(pa.array(chosen))
    actual = truth.classes[chosen]
    ids = _top_ids(kept)
    images = int(chosen.sum())
    evaluation = Evaluation(model=model, rows=table.num_rows, errors=int((~ok).sum()),
                            without_ground_truth=int((ok & ~known).sum()), images=images,
                            top1=None, top5=None, ece=None, ground_truth=truth.counts,
                            ground_truth_problems=truth.problems)
    if not images:
        return evaluation
    top1 = ids[:, 0] == actual
    evaluation.top1 = float(top1.mean())
    if ids.shape[1] >= 5:
        evaluation.top5 = float((ids[:, :5] == actual[:, None]).any(axis=1).mean())
    confidence = pc.list_element(kept.column("top_k_probs"), 0).to_numpy(
        zero_copy_only=False)
    evaluation.ece = calibration_error(confidence, top1)
    classes = len(names)
    support = np.bincount(actual, minlength=classes)
    right = np.bincount(actual, weights=top1, minlength=classes)
    evaluation.per_class = [{"class_id": int(c), "label": names[c], "images": int(support[c]),
                             "top1": float(right[c] / support[c])}
                            for c in np.flatnonzero(support)]
    wrong = ~top1
    pairs = actual[wrong].astype(np.int64) * classes + ids[wrong, 0]
    values, counts = np.unique(pairs, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:CONFUSED]
    evaluation.confused_pairs = [
        {"true": int(values[i] // classes), "true_label": names[values[i] // classes],
         "predicted": int(values[i] % classes), "predicted_label": names[values[i] % classes],
         "images": int(counts[i])} for i in order]
    return evaluation


def evaluate(out: str, ground_truth_file: str | None = None,
             storage_options: dict | None = None) -> Evaluation:
    entries = read_truth_file(ground_truth_file, storage_options) if ground_truth_file \
        else None
    return evaluate_table(read_output(out, COLUMNS, storage_options), entries)


def describe(e: Evaluation) -> str:
    """The evaluation as a person reads it."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    sources = ", ".join(f"{k}: {v}" for k, v in e.ground_truth.items() if v) or "none"
    lines = [f"model {e.model}: {e.images} images evaluated (ground truth from {sources})",
             f"top-1 {pct(e.top1)}  top-5 {pct(e.top5)}  calibration error (ECE) "
             f"{'n/a' if e.ece is None else f'{e.ece:.4f}'}",
             f"not evaluated: {e.without_ground_truth} without ground truth, "
             f"{e.errors} error rows (of {e.rows} rows)"]
    if e.ground_truth_problems:
        lines.append("in the ground-truth file:")
        lines += [f"  {p['message']}" for p in e.ground_truth_problems]
    if e.confused_pairs:
        lines.append("most confused (true -> predicted: images):")
        lines += [f"  {p['true_label']} -> {p['predicted_label']}: {p['images']}"
                  for p in e.confused_pairs]
    worst = sorted(e.per_class, key=lambda c: (c["top1"], -c["images"]))[:5]
    if worst:
        lines.append("worst classes (top-1, images):")
        lines += [f"  {c['label']}: {pct(c['top1'])} of {c['images']}" for c in worst]
    return "\n".join(lines)
