"""`effnet-ray compact`: a finished output's many small parts -> a few large files.

Readers (DuckDB, Spark, Athena) are slow on tens of thousands of small files. Compaction
rewrites the parts into `compact-<generation>-<n>.parquet` files of about `--target-size`,
keeping each part's rows together and the parts in the order of their first path (for a
folder listing, that is path order), and records in `_compaction.json` which parts each file
holds, in order. That record is what keeps resume exact: a rerun knows every compacted part
is done without opening a file, and rows of a work unit whose inputs changed are cut out of
the file that holds them.

A compaction commits in one atomic write, the record: the new files are first written under
hidden names; once the record names them, the parts it covers are deleted and the hidden
files renamed into place. A crash before the record leaves the old parts (the hidden files are
removed as leftovers); a crash after it leaves a record that the next `label` or `compact`
finishes. Our scan counts every row exactly once at every instant; a reader listing the
folder during the last step may briefly miss rows, never see them twice.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.storage import TMP_PREFIX, named_errors, open_fs, put_atomic, redact
from effnet_ray.writing import Part, parquet_options

log = logging.getLogger(__name__)

RECORD = "_compaction.json"
COMPACT = re.compile(r"^compact-[0-9a-f]{8}-\d{5}\.parquet$")
DEFAULT_TARGET = 256 * 10**6
# Row groups of about this many bytes (in the files; about 2x that in memory while written).
ROW_GROUP_BYTES = 64 * 10**6
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """`256MB`, `1GiB`, `500000`: bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise UserError(f"--target-size must be a size like 256MB or 1GiB, not {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise UserError(f"--target-size must be positive, not {text!r}")
    return size


@dataclass(frozen=True)
class CompactFile:
    name: str
    parts: tuple[Part, ...]  # in the order of their rows

    def to_json(self) -> dict:
        return {"name": self.name, "parts": [[p.uid, p.first, p.rows, p.errors, p.last]
                                             for p in self.parts]}


def read_record(fs: AbstractFileSystem, folder: str) -> list[CompactFile]:
    try:
        data = fs.cat_file(f"{folder}/{RECORD}")
    except FileNotFoundError:
        return []
    try:
        files = json.loads(data)["files"]
        return [CompactFile(f["name"], tuple(Part(*p) for p in f["parts"])) for f in files]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{redact(folder)}/{RECORD} is damaged; pass --overwrite to start "
                        "over") from None


def write_record(fs: AbstractFileSystem, folder: str, files: list[CompactFile]) -> None:
    data = json.dumps({"files": [f.to_json() for f in files]}, separators=(",", ":"))
    with named_errors(folder):
        put_atomic(fs, f"{folder}/{RECORD}", data.encode())


def staged(name: str) -> str:
    return TMP_PREFIX + name


def finish(fs: AbstractFileSystem, folder: str, files: list[CompactFile], names: set[str]
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


def _write(fs: AbstractFileSystem, folder: str, name: str, tables: Iterable[pa.Table],
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


def _group_rows(bytes_per_row: float) -> int:
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
        with fs.open(f"{folder}/{f.name}", "rb") as handle:
            table = pq.read_table(handle)
        offsets = _offsets(f)
        slices = [table.slice(*offsets[(p.uid, p.first)]) for p in parts]
        name = f"compact-{generation}-{index:05d}.parquet"
        per_row = fs.size(f"{folder}/{f.name}") / max(1, table.num_rows)
        _write(fs, folder, name, slices, table.schema, _group_rows(per_row))
        kept.append(CompactFile(name, parts))
        written.append(name)
    write_record(fs, folder, kept)
    finish(fs, folder, kept, {staged(name) for name in written})
    for f in replaced:
        fs.rm_file(f"{folder}/{f.name}")
    return kept


def compact(out: str, target_size: int = DEFAULT_TARGET, storage_options: dict | None = None,
            break_lease: bool = False) -> tuple[int, int]:
    """Compact a finished output; (files written, rows) — (0, rows) if nothing to do."""
    from effnet_ray.lease import Lease
    from effnet_ray.resume import read_manifest, scan, tidy, write_manifest

    fs, folder = open_fs(out, storage_options)
    shown = redact(out)
    with named_errors(out):
        if not fs.isdir(folder):
            raise UserError(f"{shown} does not exist")
    lease = Lease.acquire(fs, folder, break_lease)
    try:
        manifest = read_manifest(fs, folder)
        if not manifest or manifest.get("status") != "complete":
            raise UserError(f"{shown} is not a finished output of effnet-ray label; rerun the "
                            "same label command to finish it, then compact")
        committed = scan(fs, folder)
        tidy(fs, folder, committed, None)
        files, in_files = committed.record, committed.compacted
        parts = [p for starts in committed.parts.values() for p in starts.values()]
        rows = sum(p.rows for p in parts)
        loose = [p for p in parts if (p.uid, p.first) not in in_files]
        if not loose:
            log.info("%s is compacted already (%d files)", shown, len(files))
            return 0, rows
        sizes = {n.rsplit("/", 1)[-1]: s for n, s in
                 ((i["name"], i["size"]) for i in fs.ls(folder, detail=True))}
        total_bytes = sum(sizes.get(p.name, 0) for p in loose) + sum(
            sizes.get(f.name, 0) for f in files)
        per_row = max(1.0, total_bytes / max(1, rows))
        per_file = max(1, int(target_size / per_row))

        def table_of(part: Part) -> pa.Table:
            if (part.uid, part.first) in in_files:
                return read_rows(fs, folder, in_files[(part.uid, part.first)], part)
            with fs.open(f"{folder}/{part.name}", "rb") as handle:
                return pq.read_table(handle)

        first_path = {}
        schemas = []
        for part in parts:  # a loose part's path column and footer, not its rows
            if (part.uid, part.first) in in_files:
                table = table_of(part)
                schema = table.schema
            else:
                with fs.open(f"{folder}/{part.name}", "rb") as handle:
                    parquet = pq.ParquetFile(handle)
                    schema = parquet.schema_arrow
                    table = parquet.read(columns=["path"])
            schemas.append(schema)
            first_path[(part.uid, part.first)] = table.column("path")[0].as_py() \
                if table.num_rows else ""
        schema = pa.unify_schemas(schemas)
        order = sorted(parts, key=lambda p: (first_path[(p.uid, p.first)], p.uid, p.first))
        groups, current, count = [], [], 0
        for part in order:
            if current and count + part.rows > per_file:
                groups.append(current)
                current, count = [], 0
            current.append(part)
            count += part.rows
        if current:
            groups.append(current)
        generation = uuid.uuid4().hex[:8]
        new = []
        for index, group in enumerate(groups):
            name = f"compact-{generation}-{index:05d}.parquet"
            _write(fs, folder, name, (table_of(p) for p in group), schema,
                   _group_rows(per_row))
            new.append(CompactFile(name, tuple(group)))
        write_record(fs, folder, new)  # the commit point
        tidy(fs, folder, scan(fs, folder), None)  # rename into place, delete what it covers
        manifest.setdefault("compactions", []).append({
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": len(new),
            "rows": rows, "target_size": target_size})
        write_manifest(fs, folder, manifest)
        return len(new), rows
    finally:
        lease.release()
