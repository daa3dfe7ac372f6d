"""Damaged files of our own: a part or compacted file that cannot be read, that holds other
rows than its name (or the compaction record) says, or that is not a file of this tool.

A file gets its name only once it is whole, so names alone say what is done; but a file can
be damaged afterwards: truncated by hand, by a copy or by a failing disk, or replaced. A run
that resumes therefore reads every part's and compacted file's footer (`check_footers`): its
last `TAIL` bytes in one ranged read, parsed by pyarrow, then its row count compared with the
name's and its columns with those every file of ours has (`REQUIRED`). One that fails is
damaged: the run removes it and labels its rows again (`resume.tidy`).

Cost: one small read a file. On a local disk ~0.1-0.2 ms, nearly all of it pyarrow parsing
the footer (4-6 s for the ~32,000 parts of a million images on 2 busy vCPUs), `THREADS` reads
in flight because a local path may be a network file system. On object stores one ranged GET
a file through fsspec's concurrent `cat_ranges`, the sizes coming from one listing: as many in
flight as the client's connection pool allows (botocore's default is 10; about a minute for
32,000 parts at 20 ms a GET). Damage inside the data pages under an intact footer is not seen
there: the readers that meet it (`compact`, `evaluate`, `report`) name the file and its
repair (`reading`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.output.rows import output_schema
from effnet_ray.storage import is_local, is_transient, retrying, short_reason

MAGIC = b"PAR1"
SMALLEST = 12  # the two magics and the footer's length: a Parquet file is never shorter
TAIL = 64 * 1024  # a part's footer is ~3 KB; a longer one costs a second read
WINDOW = 512  # files whose tails are fetched together (at most 32 MiB in memory)
THREADS = 16  # local reads in flight
_LONGER = "a footer longer than the tail read"
# The columns every part and compacted file has had, with their types: a Parquet file of the
# right length without them was put there by someone else.
REQUIRED = [f for f in output_schema(1) if f.name in (
    "path", "model", "class_id", "label", "top_k_ids", "top_k_probs", "error")]


def check_footers(fs: AbstractFileSystem, folder: str, expected: dict[str, int]
                  ) -> dict[str, str]:
    """The damaged files among `expected` (file name -> rows it must hold), each with why;
    one that is gone since the folder was listed (a broken link) is damaged too."""
    damaged = {}
    for name, size, tail in _tails(fs, folder, sorted(expected)):
        problem = _problem(tail, size, expected[name])
        if problem == _LONGER and size is not None:
            length = int.from_bytes(tail[-8:-4], "little") + 8
            tail = retrying(partial(fs.cat_file, f"{folder}/{name}", size - length, size), fs)
            problem = _problem(tail, size, expected[name])
        if problem:
            damaged[name] = problem
    return damaged


def _problem(tail: bytes, size: int | None, rows: int) -> str | None:
    """Why a file whose last bytes are `tail` is not a file of ours of `rows` rows."""
    if size is None:
        return "gone since it was listed: a broken link?"
    if size < SMALLEST:
        return "empty" if size == 0 else f"only {size} bytes"
    if tail[-4:] != MAGIC:
        return "no Parquet footer: cut short or overwritten"
    length = int.from_bytes(tail[-8:-4], "little")
    if length + SMALLEST > size:
        return "its footer is cut short"
    if length + 8 > len(tail):
        return _LONGER
    try:
        metadata = pq.read_metadata(pa.BufferReader(tail[-(length + 8):]))
        schema = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:  # parsing memory: no store is involved
        return f"unreadable footer ({short_reason(exc)})"
    if metadata.num_rows != rows:
        return f"holds {metadata.num_rows} rows, its name says {rows}"
    for wanted in REQUIRED:
        at = schema.get_field_index(wanted.name)
        if at < 0:
            return f"no {wanted.name} column: not a file of this tool"
        if not schema.field(at).type.equals(wanted.type):
            return f"its {wanted.name} column holds {schema.field(at).type}, not {wanted.type}"
    return None


def _tails(fs: AbstractFileSystem, folder: str, names: list[str]
           ) -> Iterator[tuple[str, int | None, bytes]]:
    """(name, size, last bytes) of every file, `WINDOW` files at a time; size None for one
    that is gone."""
    local = is_local(fs)
    sizes = {} if local else {i["name"].rstrip("/").rsplit("/", 1)[-1]: i["size"]
                              for i in retrying(lambda: fs.ls(folder, detail=True), fs)}
    with ThreadPoolExecutor(THREADS) as pool:
        for start in range(0, len(names), WINDOW):
            window = names[start:start + WINDOW]
            if local:  # threads: a local path may be a network file system (NFS, EFS)
                yield from pool.map(_local_tail, [f"{folder}/{n}" for n in window], window)
            else:
                yield from _remote_tails(fs, folder, window, sizes)


def _local_tail(path: str, name: str) -> tuple[str, int | None, bytes]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL))
            return name, size, f.read()
    except FileNotFoundError:
        return name, None, b""


def _remote_tails(fs: AbstractFileSystem, folder: str, names: list[str], sizes: dict[str, int]
                  ) -> Iterator[tuple[str, int | None, bytes]]:
    """Through fsspec's `cat_ranges`: concurrent on object stores, as many requests in flight
    as the client's connection pool allows."""
    yield from ((n, None, b"") for n in names if n not in sizes)
    yield from ((n, sizes[n], b"") for n in names if n in sizes and sizes[n] < SMALLEST)
    names = [n for n in names if n in sizes and sizes[n] >= SMALLEST]
    paths = [f"{folder}/{n}" for n in names]
    starts = [max(0, sizes[n] - TAIL) for n in names]
    ends = [sizes[n] for n in names]
    results = fs.cat_ranges(paths, starts, ends, on_error="return") if paths else []
    for name, path, begin, end, result in zip(names, paths, starts, ends, results, strict=True):
        if isinstance(result, Exception) and is_transient(result, fs):
            try:  # once more on its own, with retries
                result = retrying(partial(fs.cat_file, path, begin, end), fs)
            except FileNotFoundError as exc:
                result = exc
        if isinstance(result, FileNotFoundError):
            yield name, None, b""
        elif isinstance(result, Exception):
            raise result
        else:
            yield name, sizes[name], result


def damaged_line(where: str, name: str, reason: str, more: int = 0) -> UserError:
    """A damaged file that a rerun of `label` removes and labels again (its footer says so)."""
    others = f" (and {more} more)" if more else ""
    return UserError(f"{where}/{name} is damaged ({reason}){others}; rerun the `effnet-ray "
                     f"label` command that made {where}: it removes damaged files and labels "
                     "their rows again")


def is_damage(exc: BaseException) -> bool:
    """Whether an error reading a file of ours says the file is damaged, not the store:
    pyarrow's own errors, and the bare OSError it raises for undecodable pages."""
    if isinstance(exc, pa.ArrowException) and not isinstance(exc, OSError):
        return True
    return type(exc) is OSError and exc.errno is None and not is_transient(exc)


@contextmanager
def reading(where: str, name: str) -> Iterator[None]:
    """A file of ours whose rows cannot be read, named with its repair. Its footer was
    whole, so a rerun would count it as done: it has to be deleted first."""
    try:
        yield
    except Exception as exc:
        if not is_damage(exc):
            raise
        raise UserError(f"{where}/{name} is damaged ({short_reason(exc)}); delete it, then "
                        f"rerun the `effnet-ray label` command that made {where} to label "
                        "its rows again") from exc
