"""Ground truth for an output's rows, from where datasets keep it.

Three sources, in this order of precedence for each row:
1. `--ground-truth FILE`: a CSV whose header holds `path` and `class_id`, or ImageNet's
   validation format, one `NAME CLASS_ID` per line. An entry matches a row whose `path` it
   equals, else whose file name it equals, else whose file name without extension equals its
   own (WebDataset keys carry no extension). A file name listed twice matches by full path only.
2. A WebDataset sample's `.cls` (the `source_label` column): a class index, or a WordNet id.
3. ImageNet-style class folders: a row whose file sits in a folder named by a WordNet id
   (`.../n01440764/x.JPEG`, also inside a shard's key) gets that class.
Everything is vectorised over Arrow arrays: a million rows take seconds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from effnet_ray.errors import UserError
from effnet_ray.storage import named_errors, open_fs, redact

UNKNOWN = -1
_WNID = r"(?:^|/|::)(n\d{8})/[^/]+$"


@dataclass(frozen=True)
class GroundTruth:
    """Class index per row (UNKNOWN where there is none) and where each came from."""

    classes: np.ndarray  # int32
    counts: dict[str, int]  # source -> rows it gave a class to


def read_truth_file(uri: str, storage_options: dict | None = None) -> pa.Table:
    """The file's entries as a table (key: string, class_id: int32)."""
    fs, path = open_fs(uri, storage_options)
    with named_errors(uri):
        data = fs.cat_file(path)
    text = data.decode("utf-8", "replace")
    first = text.split("\n", 1)[0]
    shown = redact(uri)
    if "," in first and {"path", "class_id"} <= {c.strip() for c in first.split(",")}:
        try:
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
                column_types={"path": pa.string(), "class_id": pa.int32()},
                include_columns=["path", "class_id"]))
        except pa.ArrowInvalid as exc:
            raise UserError(f"{shown} is not a ground-truth CSV ({str(exc)[:120]})") from None
        return table.rename_columns(["key", "class_id"]).drop_null()
    keys, classes = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, value = line.strip().rpartition(" ")
        if not name or not value.lstrip("-").isdigit():
            raise UserError(f"{shown} line {number} is not `NAME CLASS_ID` nor a CSV with "
                            "path and class_id columns")
        keys.append(name.strip())
        classes.append(int(value))
    return pa.table({"key": pa.array(keys, pa.string()),
                     "class_id": pa.array(classes, pa.int32())})


def _names(paths: pa.Array) -> tuple[pa.Array, pa.Array]:
    """File names (after the last / or ::) and the same without their extension."""
    names = pc.replace_substring_regex(paths, pattern=r"^.*(/|::)", replacement="")
    stems = pc.replace_substring_regex(names, pattern=r"\.[^.]*$", replacement="")
    return names, stems


def _lookup(keys: pa.Array, entries: pa.Table, column: pa.Array) -> np.ndarray:
    """Class per key where `column` (the entries' keys, transformed) matches, else UNKNOWN;
    keys listed more than once match nothing."""
    unique = pc.value_counts(column)
    once = unique.filter(pc.equal(unique.field("counts"), 1)).field("values")
    keep = pc.is_in(column, value_set=once)
    index = pc.index_in(keys, value_set=column.filter(keep)).fill_null(-1)
    found = index.to_numpy(zero_copy_only=False)
    values = entries.column("class_id").filter(keep).to_numpy(zero_copy_only=False)
    result = np.full(len(keys), UNKNOWN, np.int32)
    hit = found >= 0
    result[hit] = values[found[hit]]
    return result


def from_file(paths: pa.Array, entries: pa.Table) -> np.ndarray:
    keys = entries.column("key").combine_chunks()
    names, stems = _names(paths)
    key_names, key_stems = _names(keys)
    result = _lookup(paths, entries, keys)
    for mine, theirs in ((names, key_names), (stems, key_stems)):
        todo = result == UNKNOWN
        if not todo.any():
            break
        result[todo] = _lookup(mine, entries, theirs)[todo]
    return result


def from_source_labels(labels: pa.Array, wnids: tuple[str, ...]) -> np.ndarray:
    text = pc.utf8_trim_whitespace(labels.cast(pa.string()))
    numeric = pc.match_substring_regex(text, pattern=r"^\d+$")
    as_int = pc.if_else(numeric, text, None).cast(pa.int32())
    result = as_int.fill_null(UNKNOWN).to_numpy(zero_copy_only=False).astype(np.int32)
    by_wnid = pc.index_in(text, value_set=pa.array(wnids))
    wnid_hit = by_wnid.fill_null(UNKNOWN).to_numpy(zero_copy_only=False)
    result = np.where(result == UNKNOWN, wnid_hit, result).astype(np.int32)
    result[(result < 0) | (result >= len(wnids))] = UNKNOWN
    return result


def from_folders(paths: pa.Array, wnids: tuple[str, ...]) -> np.ndarray:
    folder = pc.extract_regex(paths, pattern=_WNID.replace("(n", "(?P<wnid>n")).field("wnid")
    index = pc.index_in(folder, value_set=pa.array(wnids))
    return index.fill_null(UNKNOWN).to_numpy(zero_copy_only=False).astype(np.int32)


def ground_truth(paths: pa.Array, source_labels: pa.Array, wnids: tuple[str, ...],
                 entries: pa.Table | None = None) -> GroundTruth:
    paths = paths.combine_chunks() if isinstance(paths, pa.ChunkedArray) else paths
    labels = source_labels.combine_chunks() if isinstance(source_labels, pa.ChunkedArray) \
        else source_labels
    classes = np.full(len(paths), UNKNOWN, np.int32)
    counts = {}
    sources = [("file", lambda: from_file(paths, entries))] if entries is not None else []
    sources += [("source_label", lambda: from_source_labels(labels, wnids)),
                ("class folder", lambda: from_folders(paths, wnids))]
    for name, find in sources:
        todo = classes == UNKNOWN
        if not todo.any():
            break
        found = find()
        take = todo & (found != UNKNOWN)
        classes[take] = found[take]
        counts[name] = int(take.sum())
    return GroundTruth(classes, counts)
