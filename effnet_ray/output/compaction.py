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

import logging
import re
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.output.damage import damaged_line, reading
from effnet_ray.output.layout import Part, compact_name, timestamp
from effnet_ray.output.lease import Lease
from effnet_ray.output.manifest import read_manifest, write_manifest
from effnet_ray.output.place import check_existing
from effnet_ray.output.record import (
    CompactFile,
    group_rows,
    read_rows,
    write_compacted,
    write_record,
)
from effnet_ray.output.resume import Committed, scan, tidy
from effnet_ray.storage import display, named_errors, open_fs, redact

log = logging.getLogger(__name__)

DEFAULT_TARGET = 256 * 10**6
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


def compact(out: str, target_size: int = DEFAULT_TARGET, storage_options: dict | None = None,
            break_lease: bool = False) -> tuple[int, int]:
    """Compact a finished output; (files written, rows) — (0, rows) if nothing to do."""
    fs, folder = open_fs(out, storage_options)
    shown = redact(out)
    with named_errors(out):
        check_existing(fs, folder, shown)
    lease = Lease.acquire(fs, folder, break_lease)
    try:
        manifest = read_manifest(fs, folder)
        if not manifest or manifest.get("status") != "complete":
            raise UserError(f"{shown} is not a finished output of effnet-ray label; rerun the "
                            "same label command to finish it, then compact")
        committed = scan(fs, folder, verify=True)
        if committed.damaged:  # compact cannot label rows again; label can
            name, reason = next(iter(committed.damaged.items()))
            raise damaged_line(shown, name, reason, len(committed.damaged) - 1)
        tidy(fs, folder, committed, None)
        parts = [p for starts in committed.parts.values() for p in starts.values()]
        rows = sum(p.rows for p in parts)
        if all((p.uid, p.first) in committed.compacted for p in parts):
            log.info("%s is compacted already (%d files)", shown, len(committed.record))
            return 0, rows
        files = _rewrite(fs, folder, committed, parts, target_size)
        manifest.setdefault("compactions", []).append({
            "at": timestamp(), "files": files, "rows": rows, "target_size": target_size})
        write_manifest(fs, folder, manifest)
        return files, rows
    finally:
        lease.release()


def compact_new_parts(fs: AbstractFileSystem, folder: str, manifest: dict,
                      committed: Committed, target_size: int = DEFAULT_TARGET) -> int:
    """The end of a complete run, under its lease: the parts not in a compacted file yet
    become compacted files of their own, beside those already there, so a resumed run
    rewrites only what it added. `committed`: the output as the run's end scanned and tidied
    it. Returns the files written."""
    loose = [p for starts in committed.parts.values() for p in starts.values()
             if (p.uid, p.first) not in committed.compacted]
    if not loose:
        return 0
    files = _rewrite(fs, folder, committed, loose, target_size, keep=committed.record)
    manifest.setdefault("compactions", []).append({
        "at": timestamp(), "files": files, "rows": sum(p.rows for p in loose),
        "target_size": target_size})
    write_manifest(fs, folder, manifest)
    return files


def _rewrite(fs: AbstractFileSystem, folder: str, committed: Committed, parts: list[Part],
             target_size: int, keep: list[CompactFile] | None = None) -> int:
    """Write `parts` into new compacted files in path order, commit them with the record
    (beside the compacted files to `keep`), and remove what they replace; returns the number
    of files written."""
    per_row = _bytes_per_row(fs, folder, committed, parts)
    schema, order = _in_path_order(fs, folder, committed, parts)
    generation = uuid.uuid4().hex[:8]
    new = []
    for index, group in enumerate(_groups(order, max(1, int(target_size / per_row)))):
        name = compact_name(generation, index)
        write_compacted(fs, folder, name, (_table_of(fs, folder, committed, p) for p in group),
                        schema, group_rows(per_row))
        new.append(CompactFile(name, tuple(group)))
    write_record(fs, folder, [*(keep or []), *new])  # the commit point
    tidy(fs, folder, scan(fs, folder), None)  # rename into place, delete what it covers
    return len(new)


def _bytes_per_row(fs: AbstractFileSystem, folder: str, committed: Committed,
                   parts: list[Part]) -> float:
    sizes = {i["name"].rsplit("/", 1)[-1]: i["size"] for i in fs.ls(folder, detail=True)}
    total = sum(sizes.get(p.name, 0) for p in parts
                if (p.uid, p.first) not in committed.compacted)
    holding = {committed.compacted[(p.uid, p.first)].name for p in parts
               if (p.uid, p.first) in committed.compacted}
    total += sum(sizes.get(name, 0) for name in holding)
    return max(1.0, total / max(1, sum(p.rows for p in parts)))


def _table_of(fs: AbstractFileSystem, folder: str, committed: Committed, part: Part
              ) -> pa.Table:
    """A part's rows, from its own file or from the compacted file that holds it."""
    held = committed.compacted.get((part.uid, part.first))
    with reading(display(fs, folder), held.name if held else part.name):
        if held:
            return read_rows(fs, folder, held, part)
        with fs.open(f"{folder}/{part.name}", "rb") as handle:
            return pq.read_table(handle)


def _in_path_order(fs: AbstractFileSystem, folder: str, committed: Committed,
                   parts: list[Part]) -> tuple[pa.Schema, list[Part]]:
    """The schema every part fits, and the parts in the order of their first path; a loose
    part's path column and footer are read, not its rows."""
    first_path, schemas = {}, []
    for part in parts:
        if (part.uid, part.first) in committed.compacted:
            table = _table_of(fs, folder, committed, part)
            schema = table.schema
        else:
            with reading(display(fs, folder), part.name), \
                    fs.open(f"{folder}/{part.name}", "rb") as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                table = parquet.read(columns=["path"])
        schemas.append(schema)
        first_path[(part.uid, part.first)] = table.column("path")[0].as_py() \
            if table.num_rows else ""
    order = sorted(parts, key=lambda p: (first_path[(p.uid, p.first)], p.uid, p.first))
    return pa.unify_schemas(schemas), order


def _groups(parts: list[Part], per_file: int) -> Iterator[list[Part]]:
    """Consecutive parts of about `per_file` rows; a part is never split."""
    current: list[Part] = []
    count = 0
    for part in parts:
        if current and count + part.rows > per_file:
            yield current
            current, count = [], 0
        current.append(part)
        count += part.rows
    if current:
        yield current
