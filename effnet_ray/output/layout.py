"""The output folder's vocabulary: every name this tool writes there, and the timestamps its
records carry. `is_ours` answers from here alone, so nothing else decides what in a folder
belongs to this tool.

    part-<unit id>-<first row, 7 digits>-n<rows>-e<errors>[-last].parquet   a committed part
    compact-<generation>-<n>.parquet                                         a compacted file
    _manifest.json   how the rows were made, and each run
    _lease.json      the run that holds the output
    _compaction.json which parts each compacted file holds
    .tmp-*           a write in progress (a crash may leave one: it never counts)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from effnet_ray.storage import TMP_PREFIX

MANIFEST = "_manifest.json"
LEASE = "_lease.json"
RECORD = "_compaction.json"
COMPACT = re.compile(r"^compact-[0-9a-f]{8}-\d{5}\.parquet$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(seconds: float | None = None) -> str:
    """UTC time as the manifest, the lease and the compaction record write it."""
    return time.strftime(TIME_FORMAT, time.gmtime(seconds))


def compact_name(generation: str, index: int) -> str:
    return f"compact-{generation}-{index:05d}.parquet"


UID = re.compile(r"[0-9a-f]{16}")  # a work unit's id (`fullmatch`)
_PART = re.compile(r"^part-([0-9a-f]{16})-(\d{7,})-n(\d+)-e(\d+)(-last)?\.parquet$")


@dataclass(frozen=True)
class Part:
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
        return (f"part-{self.uid}-{self.first:07d}-n{self.rows}-e{self.errors}"
                f"{'-last' if self.last else ''}.parquet")

    @classmethod
    def parse(cls, name: str) -> Part | None:
        match = _PART.match(name)
        if not match:
            return None
        uid, first, rows, errors, last = match.groups()
        return cls(uid, int(first), int(rows), int(errors), last is not None)


def staged(name: str) -> str:
    return TMP_PREFIX + name


def is_ours(name: str) -> bool:
    return (Part.parse(name) is not None or COMPACT.match(name) is not None
            or name in (MANIFEST, LEASE, RECORD) or name.startswith(TMP_PREFIX))
