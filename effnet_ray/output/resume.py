"""What is already done: committed part files, the run manifest, and what a rerun skips.

The output folder is the only record. Each committed part is one Parquet file whose name
(`layout.Part`) says which unit and rows it holds and how many of them are errors:

    part-<unit id>-<first row, 7 digits>-n<rows>-e<errors>[-last].parquet

A file gets that name only once it is whole (`storage.put_atomic`), so listing the folder's
names tells a rerun what to skip: ~40,000 names for a million images at the defaults, a few
dozen list calls on an object store. `-last` marks the final part of a unit, so a shard whose
length nobody knew in advance is known to be complete.

A file can still be damaged after it was committed (cut short by a copy or a failing disk,
replaced). The scan of a run that resumes (`scan(..., verify=True)`) therefore also reads
every part's and compacted file's footer (`damage.check_footers`): a file that is not
Parquet or holds other rows than its name says is not done, and `tidy` removes it, so its
rows are labelled again.

`_manifest.json` says what the rows were made with; a rerun that would mix results of another
model, precision, top-k or grouping into the folder is refused before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.inputs.listing import Unit
from effnet_ray.inputs.samples import shards_of
from effnet_ray.output.damage import check_footers, reading
from effnet_ray.output.layout import COMPACT, LEASE, RECORD, Part, staged
from effnet_ray.output.record import (
    CompactFile,
    cut,
    read_record,
    read_rows,
    unstage,
    write_record,
)
from effnet_ray.storage import TMP_PREFIX, display, named_errors, names_in, printable, redact

log = logging.getLogger(__name__)


@dataclass
class Committed:
    """The parts in an output folder, by unit id and first row."""

    parts: dict[str, dict[int, Part]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)  # same rows committed twice
    leftovers: list[str] = field(default_factory=list)  # temporary files of a crashed write
    record: list[CompactFile] = field(default_factory=list)  # `compact`'s files
    compacted: dict[tuple[str, int], CompactFile] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # what the folder held when scanned
    holding: dict[str, int] = field(default_factory=dict)  # files of the rows counted: rows
    damaged: dict[str, str] = field(default_factory=dict)  # file -> why (`verify` only)

    def add(self, part: Part) -> None:
        starts = self.parts.setdefault(part.uid, {})
        if part.first in starts:  # a retried part that came out differently: keep one
            part, extra = sorted((part, starts[part.first]), key=lambda c: c.name)
            self.duplicates.append(extra.name)
        starts[part.first] = part

    def done_starts(self, uid: str) -> list[int]:
        return sorted(self.parts.get(uid, {}))

    def complete(self, uid: str, batch_size: int) -> bool:
        starts = self.parts.get(uid, {})
        last = [c.first for c in starts.values() if c.last]
        return bool(last) and all(s in starts for s in range(0, last[0] + 1, batch_size))

    def totals(self) -> tuple[int, int]:
        """(rows, errors) over every committed part."""
        parts = [c for starts in self.parts.values() for c in starts.values()]
        return sum(c.rows for c in parts), sum(c.errors for c in parts)


def scan(fs: AbstractFileSystem, path: str, verify: bool = False) -> Committed:
    """What the folder holds, from its names (and the compaction record); with `verify`, a
    part or compacted file whose footer is damaged or disagrees with its name is not done
    but `damaged`."""
    committed = Committed()
    where = display(fs, path)
    with named_errors(where):
        names = names_in(fs, path)
    committed.names = set(names)
    with named_errors(where):
        committed.record = read_record(fs, path) if RECORD in names else []
    recorded = {f.name for f in committed.record}
    pending = {staged(name) for name in recorded}
    loose = []
    for name in sorted(names):
        part = Part.parse(name)
        if part:
            loose.append(part)
        elif COMPACT.match(name) and name not in recorded:
            committed.leftovers.append(name)  # an earlier compaction's
        elif (name.startswith(TMP_PREFIX) and not name.startswith(TMP_PREFIX + LEASE)
              and name not in pending):
            committed.leftovers.append(name)  # the lease's own are its heartbeat's
    present = {f.name: f.name if f.name in names else staged(f.name) for f in committed.record
               if f.name in names or staged(f.name) in names}
    if verify:
        expected = {p.name: p.rows for p in loose}
        expected.update({present[f.name]: sum(p.rows for p in f.parts)
                         for f in committed.record if f.name in present})
        with named_errors(where):
            committed.damaged = check_footers(fs, path, expected)
    for part in loose:
        if part.name not in committed.damaged:
            committed.add(part)
    for f in committed.record:
        held = present.get(f.name)
        if held is None or held in committed.damaged:
            continue  # its parts are not done: loose copies of them count, if any
        committed.holding[held] = sum(p.rows for p in f.parts)
        for part in f.parts:  # a compacted part is done; a loose copy of it is extra
            loose_copy = committed.parts.get(part.uid, {}).get(part.first)
            if loose_copy is not None:
                committed.duplicates.append(loose_copy.name)
            committed.parts.setdefault(part.uid, {})[part.first] = part
            committed.compacted[(part.uid, part.first)] = f
    committed.holding.update({p.name: p.rows for starts in committed.parts.values()
                              for p in starts.values()
                              if (p.uid, p.first) not in committed.compacted})
    return committed


def tidy(fs: AbstractFileSystem, path: str, committed: Committed,
         units: Iterable[Unit] | None) -> int:
    """Remove what must not count: crashed writes, duplicates, and parts of units that no
    longer exist although some of their images are still listed (a file added to or removed
    from their unit: those images are redone in their new unit). Parts whose images are all
    gone from the inputs stay: results are not thrown away because inputs were moved.
    Parts inside `compact`'s files are cut out of them. Damaged files go first, the record
    rewritten without those it named. Without `units` (compact itself), only leftovers and
    duplicates go. Returns how many parts went."""
    with named_errors(display(fs, path)):
        if committed.damaged:
            _remove_damaged(fs, path, committed)
        unstage(fs, path, committed.record, committed.names)
    redo: list[Part] = []
    if units is not None:
        units = list(units)
        wanted = {u.uid for u in units}
        stale = [c for uid in committed.parts if uid not in wanted
                 for c in committed.parts[uid].values()]
        listed = {printable(redact(uri)) for u in units for uri in u.uris} if stale else set()
        redo = [c for c in stale
                if any(_is_listed(p, listed) for p in _paths(fs, path, committed, c))]
    for part in redo:
        del committed.parts[part.uid][part.first]
    cut_out = {(p.uid, p.first) for p in redo if (p.uid, p.first) in committed.compacted}
    if cut_out:
        with named_errors(display(fs, path)):
            committed.record = cut(fs, path, committed.record, cut_out)
    loose = [c.name for c in redo if (c.uid, c.first) not in cut_out]
    with named_errors(display(fs, path)):
        for name in committed.leftovers + committed.duplicates + loose:
            try:
                fs.rm_file(f"{path}/{name}")
            except FileNotFoundError:  # a retried write renamed it meanwhile
                pass
    committed.leftovers, committed.duplicates = [], []
    return len(redo)


def _remove_damaged(fs: AbstractFileSystem, path: str, committed: Committed) -> None:
    """Delete the damaged files; the record first stops naming those it named (its write is
    the commit point: their parts are no longer done), so a crash in between leaves only a
    leftover."""
    bad = committed.damaged
    kept = [f for f in committed.record if f.name not in bad and staged(f.name) not in bad]
    if len(kept) < len(committed.record):
        write_record(fs, path, kept)
        committed.record = kept
    for name in bad:
        try:
            fs.rm_file(f"{path}/{name}")
        except FileNotFoundError:
            pass
    shown = "; ".join(f"{name}: {why}" for name, why in list(bad.items())[:3])
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    log.warning("removed %d damaged result file%s of %s (%s%s); the images whose rows they "
                "held are labelled again", len(bad), "s" if len(bad) > 1 else "",
                display(fs, path), shown, more)
    committed.damaged = {}


def _is_listed(row_path: str, listed: set[str]) -> bool:
    """Whether a row's path names a listed file, or a sample of a listed shard."""
    return row_path in listed or any(s in listed for s in shards_of(row_path))


def _paths(fs: AbstractFileSystem, folder: str, committed: Committed, part: Part
           ) -> list[str]:
    with named_errors(display(fs, folder)):
        if (part.uid, part.first) in committed.compacted:
            held = committed.compacted[(part.uid, part.first)]
            with reading(display(fs, folder), held.name):
                rows = read_rows(fs, folder, held, part, columns=["path"])
            return rows.column("path").to_pylist()
        with reading(display(fs, folder), part.name), fs.open(f"{folder}/{part.name}", "rb") as f:
            return pq.read_table(f, columns=["path"]).column("path").to_pylist()


