"""Ground truth for an output's rows, from where datasets keep it.

Three sources, in this order of precedence for each row:
1. `--ground-truth FILE`: a CSV whose header holds `path` and `class_id` (separated by commas,
   semicolons or tabs), or ImageNet's validation format, one `NAME CLASS_ID` per line. An
   entry matches a row whose `path` it equals, else whose file name it equals, else whose file
   name without extension equals its own (WebDataset keys carry no extension); the first of
   these steps that finds entries decides.
2. A WebDataset sample's `.cls` (the `source_label` column): a class index, or a WordNet id.
3. ImageNet-style class folders: a row whose file sits in a folder named by a WordNet id
   (`.../n01440764/x.JPEG`, also inside a shard's key) gets that class.

The file is read as people save it: UTF-8 with or without Excel's byte-order mark, UTF-16 with
one, any line ends. A line that cannot be an entry (too few or too many fields, a class id
that is not an integer, no path) stops the evaluation with one line naming the file, the line
and the value. What can only be judged against the rows and the model is counted and
reported instead (`GroundTruth.problems`), never dropped in silence: rows given a class id
outside the model's (-1, 1000 for ImageNet), rows that entries with different classes match
(a path listed twice with two classes), entries that match no row, rows whose `.cls` names
no class of the model. Rows the file speaks for take no class from the other sources.
Everything but reading the file is vectorised over Arrow arrays: a million rows take seconds.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from effnet_ray.errors import UserError
from effnet_ray.inputs.fetch import check_regular
from effnet_ray.storage import named_errors, open_fs, redact

UNKNOWN = -1
NO_ENTRY, CONFLICT = -1, -2  # `from_file`: no entry matches; entries with different classes
_WNID = r"(?:^|/|::)(n\d{8})/[^/]+$"
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_DELIMITERS = ",;\t"  # Excel writes ';' where ',' is the decimal comma
_INT64 = 2**63 - 1


@dataclass(frozen=True)
class GroundTruth:
    """Class index per row (UNKNOWN where there is none), where each came from, and what in
    the ground-truth file gave rows no class."""

    classes: np.ndarray  # int32
    counts: dict[str, int]  # source -> rows it gave a class to
    problems: list[dict] = field(default_factory=list)  # {kind, count, message}


def read_truth_file(uri: str, storage_options: dict | None = None) -> pa.Table:
    """The file's entries as a table (key: string, class_id: int64, line: int64)."""
    fs, path = open_fs(uri, storage_options)
    shown = redact(uri)
    with named_errors(uri):
        try:
            check_regular(fs, path)  # a FIFO would block, a device never end
        except UserError:
            raise UserError(f"{shown} is not a regular file") from None
        data = fs.cat_file(path)
    text = _text(data, shown)
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), None)
    if first is None:
        raise UserError(f"{shown} is empty: no ground truth in it")
    delimiter = next((d for d in _DELIMITERS if _is_header(first, d)), None)
    keys, classes, lines = (_csv(text, delimiter, shown) if delimiter
                            else _imagenet(text, shown))
    if not keys:
        raise UserError(f"{shown} has a header but no entries")
    return pa.table({"key": pa.array(keys, pa.string()),
                     "class_id": pa.array(classes, pa.int64()),
                     "line": pa.array(lines, pa.int64())})


def _text(data: bytes, shown: str) -> str:
    """The file's text: UTF-8, an Excel byte-order mark dropped, or UTF-16 with its mark."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError(f"{shown} is not valid UTF-16 text; save it as UTF-8") from None
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{shown} line {line} is not UTF-8 text (byte "
                        f"{data[exc.start]:#04x}); save the file as UTF-8") from None


def _is_header(line: str, delimiter: str) -> bool:
    fields = {f.strip().lower() for f in next(csv.reader([line], delimiter=delimiter), [])}
    return {"path", "class_id"} <= fields


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _class_id(value: str, shown: str, line: int, what: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise UserError(f"{shown} line {line}: {what} {_show(value)} is not an integer")
    return max(-_INT64 - 1, min(int(value), _INT64))  # beyond int64 is out of range anyway


def _csv(text: str, delimiter: str, shown: str) -> tuple[list[str], list[int], list[int]]:
    keys: list[str] = []
    classes: list[int] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    try:
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            if header is None:
                header = [f.strip().lower() for f in row]
                at_path, at_class = header.index("path"), header.index("class_id")
                continue
            line = reader.line_num
            if len(row) != len(header):
                hint = (f"; a path holding {delimiter!r} must be in double quotes"
                        if len(row) > len(header) else "")
                raise UserError(f"{shown} line {line} has {len(row)} fields where the header "
                                f"has {len(header)} ({_show(delimiter.join(row))}){hint}")
            key = row[at_path].strip()
            if not key:
                raise UserError(f"{shown} line {line}: no path")
            classes.append(_class_id(row[at_class], shown, line, "class_id"))
            keys.append(key)
            lines.append(line)
    except csv.Error as exc:
        raise UserError(f"{shown} line {reader.line_num} is not CSV ({exc})") from None
    return keys, classes, lines


def _imagenet(text: str, shown: str) -> tuple[list[str], list[int], list[int]]:
    """ImageNet's validation format: `NAME CLASS_ID`, the name may hold spaces."""
    keys: list[str] = []
    classes: list[int] = []
    lines: list[int] = []
    for line, raw in enumerate(io.StringIO(text, newline=""), 1):
        fields = raw.strip().rsplit(None, 1)
        if not fields:
            continue
        if len(fields) < 2:
            hint = (" (a CSV needs a header line naming its path and class_id columns)"
                    if any(d in raw for d in _DELIMITERS) else "")
            raise UserError(f"{shown} line {line}: expected `NAME CLASS_ID`, found "
                            f"{_show(raw.strip())}{hint}")
        keys.append(fields[0])
        classes.append(_class_id(fields[1], shown, line, "class id"))
        lines.append(line)
    return keys, classes, lines


def _key_names(keys: pa.Array) -> tuple[pa.Array, pa.Array]:
    """`_names` of the entries' keys, where a backslash separates folders too (paths typed
    on Windows: `C:\\photos\\a.jpg` is matched by its name `a.jpg`)."""
    return _names(pc.replace_substring(keys, pattern="\\", replacement="/"))


def _names(paths: pa.Array) -> tuple[pa.Array, pa.Array]:
    """File names (after the last / or ::) and the same without their extension."""
    names = pc.replace_substring_regex(paths, pattern=r"^.*(/|::)", replacement="")
    stems = pc.replace_substring_regex(names, pattern=r"\.[^.]*$", replacement="")
    return names, stems


def _lookup(values: pa.Array, keys: pa.Array, classes: pa.Array) -> np.ndarray:
    """Per value, the first entry whose key equals it; NO_ENTRY where none does, CONFLICT
    where those that do give different classes."""
    groups = pa.table({"key": keys, "class_id": classes,
                       "entry": pa.array(np.arange(len(keys)))}).group_by("key").aggregate(
        [("class_id", "min"), ("class_id", "max"), ("entry", "min")])
    index = pc.index_in(values, value_set=groups.column("key").combine_chunks()).fill_null(-1)
    found = index.to_numpy(zero_copy_only=False)
    same = pc.equal(groups.column("class_id_min"), groups.column("class_id_max")).to_numpy()
    first = groups.column("entry_min").to_numpy()
    result = np.full(len(values), NO_ENTRY, np.int64)
    hit = found >= 0
    result[hit] = np.where(same[found[hit]], first[found[hit]], CONFLICT)
    return result


def from_file(paths: pa.Array, entries: pa.Table) -> np.ndarray:
    """Per row, the index of the entry that gives its class, NO_ENTRY or CONFLICT: by path,
    else file name, else file name without extension; the first step that matches decides."""
    keys = entries.column("key").combine_chunks()
    classes = entries.column("class_id").combine_chunks()
    names, stems = _names(paths)
    key_names, key_stems = _key_names(keys)
    result = np.full(len(paths), NO_ENTRY, np.int64)
    for mine, theirs in ((paths, keys), (names, key_names), (stems, key_stems)):
        todo = result == NO_ENTRY
        if not todo.any():
            break
        result[todo] = _lookup(mine, theirs, classes)[todo]
    return result


def _file_problems(paths: pa.Array, entries: pa.Table, entry: np.ndarray, classes: int
                   ) -> list[dict]:
    """What in the file gave rows no class, counted, each with an example."""
    given = entries.column("class_id").to_numpy()
    lines = entries.column("line").to_numpy()
    problems = []
    matched = np.flatnonzero(entry >= 0)
    outside = matched[(given[entry[matched]] < 0) | (given[entry[matched]] >= classes)]
    if len(outside):
        example = entry[outside[0]]
        problems.append({"kind": "class_out_of_range", "count": len(outside), "message": (
            f"{len(outside)} rows: class id outside 0-{classes - 1} (e.g. line "
            f"{lines[example]}: {given[example]})")})
    conflict = np.flatnonzero(entry == CONFLICT)
    if len(conflict):
        problems.append({"kind": "conflicting_classes", "count": len(conflict), "message": (
            f"{len(conflict)} rows: matched by entries with different classes (e.g. "
            f"{paths[int(conflict[0])].as_py()})")})
    keys = entries.column("key").combine_chunks()
    names, stems = _names(paths)
    key_names, key_stems = _key_names(keys)
    met = pc.or_(pc.or_(pc.is_in(keys, value_set=paths), pc.is_in(key_names, value_set=names)),
                 pc.is_in(key_stems, value_set=stems))
    unmet = np.flatnonzero(~met.to_numpy(zero_copy_only=False))
    if len(unmet):
        example = unmet[0]
        problems.append({"kind": "unmatched_entries", "count": len(unmet), "message": (
            f"{len(unmet)} entries match no row (e.g. line {lines[example]}: "
            f"{keys[int(example)].as_py()})")})
    return problems


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
    counts, problems = {}, []
    open_rows = np.ones(len(paths), bool)  # rows no source has spoken for yet
    if entries is not None:
        entry = from_file(paths, entries)
        given = entries.column("class_id").to_numpy()[np.maximum(entry, 0)]
        take = (entry >= 0) & (given >= 0) & (given < len(wnids))
        classes[take] = given[take]
        counts["file"] = int(take.sum())
        problems = _file_problems(paths, entries, entry, len(wnids))
        open_rows = entry == NO_ENTRY
    sources = [("source_label", lambda: from_source_labels(labels, wnids)),
               ("class folder", lambda: from_folders(paths, wnids))]
    for name, find in sources:
        todo = open_rows & (classes == UNKNOWN)
        if not todo.any():
            break
        found = find()
        take = todo & (found != UNKNOWN)
        classes[take] = found[take]
        counts[name] = int(take.sum())
        if name == "source_label":
            problems += _label_problems(paths, labels, todo & (found == UNKNOWN), len(wnids))
    return GroundTruth(classes, counts, problems)


def _label_problems(paths: pa.Array, labels: pa.Array, unused: np.ndarray, classes: int
                    ) -> list[dict]:
    """Rows whose source label was given but names no class of the model."""
    given = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(labels.cast(pa.string()))), 0)
    ignored = np.flatnonzero(unused & (given.to_numpy(zero_copy_only=False) > 0))
    if not len(ignored):
        return []
    example = int(ignored[0])
    shown = str(labels[example].as_py()).strip()[:40]
    return [{"kind": "unusable_source_labels", "count": len(ignored), "message": (
        f"{len(ignored)} rows: source label (.cls) neither a class id in 0-{classes - 1} nor "
        f"a WordNet id, ignored (e.g. {paths[example].as_py()}: {shown!r})")}]
