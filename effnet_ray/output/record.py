"""`_compaction.json` and the compacted files it describes.

The record lists, for each compacted file, the parts it holds in the order of their rows, so
a part's rows are found (and cut out) without reading any other file, and a rerun knows every
compacted part is done from the record alone. A compacted file is written under a hidden
(staged) name and takes its own once the record that names it is committed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.output.damage import reading
from effnet_ray.output.layout import COMPACT, RECORD, UID, Part, compact_name, staged
from effnet_ray.output.rows import parquet_options
from effnet_ray.storage import named_errors, put_atomic, redact

# Row groups of about this many bytes (in the files; about 2x that in memory while written).
ROW_GROUP_BYTES = 64 * 10**6


@dataclass(frozen=True)
class CompactFile:
    name: str
    parts: tuple[Part, ...]  # in the order of their rows

    def to_json(self) -> dict:
        return {"name": self.name, "parts": [[p.uid, p.first, p.rows, p.errors, p.last]
                                             for p in self.parts]}


def read_record(fs: AbstractFileSystem, folder: str) -> list[CompactFile]:
    """The record's files; one that is not a record of ours (damaged, or edited into another
    shape) is refused, since which rows are done depends on it."""
    try:
        data = fs.cat_file(f"{folder}/{RECORD}")
    except FileNotFoundError:
        return []
    try:
        files = _files(json.loads(data))
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, _Shape) else "not JSON"
        where = f"{redact(folder)}/{RECORD}"
        raise UserError(f"{where} is damaged ({reason}); the compacted files cannot be "
                        "trusted without it: delete it and the compact-*.parquet files, then "
                        "rerun the `effnet-ray label` command that made the output to label "
                        "their rows again (or pass --overwrite to start over)") from None
    return files


class _Shape(ValueError):
    """What in a record's JSON is not as `write_record` writes it."""


def _files(data: object) -> list[CompactFile]:
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise _Shape("no list of files")
    files, seen = [], set()
    for f in data["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("parts"), list):
            raise _Shape("a file without its list of parts")
        name = f.get("name")
        if not isinstance(name, str) or not COMPACT.fullmatch(name) or name in seen:
            raise _Shape(f"a file named {json.dumps(name)[:60]}")
        seen.add(name)
        parts = tuple(_part(p) for p in f["parts"])
        if len({(p.uid, p.first) for p in parts}) < len(parts):
            raise _Shape(f"{name} holds the same part twice")
        files.append(CompactFile(name, parts))
    held = [(p.uid, p.first) for f in files for p in f.parts]
    if len(set(held)) < len(held):
        raise _Shape("a part held by two files")
    return files


def _part(value: object) -> Part:
    """[uid, first, rows, errors, last], as `CompactFile.to_json` writes a part."""
    if isinstance(value, list) and len(value) == 5:
        uid, first, rows, errors, last = value
        counts = (first, rows, errors)
        if (isinstance(uid, str) and UID.fullmatch(uid)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for n in counts)
                and errors <= rows and isinstance(last, bool)):
            return Part(uid, first, rows, errors, last)
    raise _Shape(f"a part {json.dumps(value)[:60]}")


def write_record(fs: AbstractFileSystem, folder: str, files: list[CompactFile]) -> None:
    data = json.dumps({"files": [f.to_json() for f in files]}, separators=(",", ":"))
    with named_errors(folder):
        put_atomic(fs, f"{folder}/{RECORD}", data.encode())


def unstage(fs: AbstractFileSystem, folder: str, files: list[CompactFile], names: set[str]
           ) -> None:
    """Rename the record's files still under their hidden names into place."""
    for f in files:
        if f.name not in names and staged(f.name) in names:
            fs.mv(f"{folder}/{staged(f.name)}", f"{folder}/{f.name}")


def _offsets(f: CompactFile) -> dict[tuple[str, int], tuple[int, int]]:
    offsets, row = {}, 0
    for part in f.parts:
        offsets[(part.uid, part.first)] = (row, part.rows)
        row += part.rows
    return offsets


def read_rows(fs: AbstractFileSystem, folder: str, f: CompactFile, part: Part,
              columns: list[str] | None = None) -> pa.Table:
    start, rows = _offsets(f)[(part.uid, part.first)]
    with fs.open(f"{folder}/{f.name}", "rb") as handle:
        return pq.read_table(handle, columns=columns).slice(start, rows)


def write_compacted(fs: AbstractFileSystem, folder: str, name: str, tables: Iterable[pa.Table],
           schema: pa.Schema, group_rows: int) -> None:
    """One file; parts are gathered into row groups of `group_rows` (a row group per part
    would make readers scan tens of thousands of tiny groups)."""
    with fs.open(f"{folder}/{staged(name)}", "wb") as handle, \
            pq.ParquetWriter(handle, schema, **parquet_options(schema)) as writer:
        pending, count = [], 0
        for table in tables:
            pending.append(_conform(table, schema))
            count += table.num_rows
            if count >= group_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=group_rows)
                pending, count = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=group_rows)


def group_rows(bytes_per_row: float) -> int:
    return max(1024, int(ROW_GROUP_BYTES / bytes_per_row))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns in the schema's order; one an older part lacks is null there."""
    columns = [table.column(f.name) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def cut(fs: AbstractFileSystem, folder: str, files: list[CompactFile],
        drop: set[tuple[str, int]]) -> list[CompactFile]:
    """Rewrite the compacted files that hold parts in `drop` without those rows (their
    images are labelled again); returns the new record, already committed."""
    generation = uuid.uuid4().hex[:8]
    kept: list[CompactFile] = []
    replaced, written = [], []
    for index, f in enumerate(files):
        if not any((p.uid, p.first) in drop for p in f.parts):
            kept.append(f)
            continue
        parts = tuple(p for p in f.parts if (p.uid, p.first) not in drop)
        replaced.append(f)
        if not parts:
            continue
        with reading(redact(folder), f.name), fs.open(f"{folder}/{f.name}", "rb") as handle:
            table = pq.read_table(handle)
        offsets = _offsets(f)
        slices = [table.slice(*offsets[(p.uid, p.first)]) for p in parts]
        name = compact_name(generation, index)
        per_row = fs.size(f"{folder}/{f.name}") / max(1, table.num_rows)
        write_compacted(fs, folder, name, slices, table.schema, group_rows(per_row))
        kept.append(CompactFile(name, parts))
        written.append(name)
    write_record(fs, folder, kept)
    unstage(fs, folder, kept, {staged(name) for name in written})
    for f in replaced:
        fs.rm_file(f"{folder}/{f.name}")
    return kept
