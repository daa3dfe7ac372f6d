"""Bounded byte reads: a file, an object or an http body, never more than `--max-bytes` of
it, never a FIFO or a device; a unit's objects on an async object store fetched several at
a time."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.inputs.samples import ImageError, ReadTask, Skip, too_large
from effnet_ray.storage import (
    LOCAL,
    is_local,
    is_read_only,
    is_transient,
    local_path,
    open_fs,
    protocol_of,
    retrying,
)

# Objects of a unit fetched at once from an object store: each GET costs 20-100 ms of
# latency, so one at a time leaves a decoding CPU waiting on the network.
FETCH_OBJECTS = 16


# Bytes a read asks for at once when the size is not known (see `read_within`).
READ_STEP = 2**20


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISDIR, "a folder"))


def within(data: bytes, limit: int) -> bytes:
    """`data`, read up to one byte past `limit`, if it is not past it: a file or a store may
    hold more than it said."""
    if len(data) > limit:
        raise ImageError(too_large(len(data), limit))
    return data


def read_within(f: BinaryIO, limit: int, expected: int | None = None) -> bytes:
    """`f` to its end, if that is at most `limit` bytes away (`within`).

    Read in steps, because a stream's read may return what has arrived so far (an http body
    sent in pieces was cut to its first piece), and Python allocates the whole size a read
    asks for: asking for `limit` at once would map and unmap 128 MiB per photo, which in an
    actor that decodes beside OpenVINO's threads costs every core a TLB shootdown. The
    first step asks for the size the caller `expected`; once that has come, one byte tells
    whether there is more.
    """
    parts, got = [], 0
    while chunk := f.read(min(limit + 1 - got, _next_step(got, expected))):
        parts.append(chunk)
        got += len(chunk)
        if got > limit:
            break
    return within(parts[0] if len(parts) == 1 else b"".join(parts), limit)


def _next_step(got: int, expected: int | None) -> int:
    if expected is None or got > expected:
        return READ_STEP
    return expected - got or 1


def read_local(path: str, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; never blocks on a FIFO, never reads a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        for test, what in _SPECIAL:
            if test(status.st_mode):
                raise ImageError(f"not a regular file ({what})")
        if status.st_size > limit:
            raise ImageError(too_large(status.st_size, limit))
        with os.fdopen(os.dup(fd), "rb") as f:  # it may have grown since; /proc says 0
            return read_within(f, limit, status.st_size)
    finally:
        os.close(fd)


def read_object(uri: str, size: int | None, task: ReadTask) -> bytes:
    limit = task.options.max_bytes
    fs, path = open_fs(local_path(uri), task.storage_options)
    if is_local(fs):
        return read_local(path, limit)
    if size is not None and size > limit:
        raise ImageError(too_large(size, limit))
    if size == 0:  # S3 answers a ranged GET of an empty object with 416
        return b""
    if is_read_only(fs):  # http(s): a server may ignore ranges; a stream stops at the limit
        def fetch() -> bytes:
            with fs.open(path, "rb", block_size=0) as f:
                return read_within(f, limit, size)
    else:
        def fetch() -> bytes:
            return within(fs.cat_file(path, start=0, end=limit + 1), limit)
    return retrying(fetch, fs)


def _concurrent_store(uris: list[str], task: ReadTask) -> AbstractFileSystem | None:
    """The store a unit's objects can be fetched from concurrently: one async object store
    (S3, GCS, Azure); local disks gain nothing and http(s) servers may ignore ranges."""
    protocols = {protocol_of(u) for u in uris}
    if len(protocols) != 1 or protocols & set(LOCAL):
        return None
    fs, _ = open_fs(uris[0], task.storage_options)
    return fs if getattr(fs, "async_impl", False) and not is_read_only(fs) else None


def _windows(todo: list[int], sizes: list, limit: int) -> Iterator[list[int]]:
    """Consecutive objects fetched together: at most FETCH_OBJECTS, and at most `limit` bytes
    as listed, so a window holds no more than one object at the byte limit would."""
    window: list[int] = []
    held = 0
    for index in todo:
        size = sizes[index] if sizes[index] is not None else limit
        if window and (len(window) == FETCH_OBJECTS or held + size > limit):
            yield window
            window, held = [], 0
        window.append(index)
        held += size
    if window:
        yield window


def _fetched(fs: AbstractFileSystem, uris: list[str], sizes: list, task: ReadTask,
             skip: Skip) -> Iterator[tuple[int, bytes | Exception]]:
    """(index, bytes or the error) of each object not skipped, in order, FETCH_OBJECTS at a
    time; each read stops one byte past the limit. An object whose fetch failed in a way
    that may pass is fetched again on its own, with retries."""
    limit = task.options.max_bytes
    todo = [i for i in range(len(uris)) if not skip(i)]
    for window in _windows(todo, sizes, limit):
        ranged = [i for i in window if sizes[i] != 0 and not (sizes[i] or 0) > limit]
        paths = [open_fs(uris[i], task.storage_options)[1] for i in ranged]
        results: dict[int, bytes | Exception] = dict(zip(
            ranged, fs.cat_ranges(paths, [0] * len(paths), [limit + 1] * len(paths),
                                  on_error="return") if paths else [], strict=True))
        for i in window:
            result = results.get(i)  # None: not fetched with the window
            if result is None or (isinstance(result, Exception) and is_transient(result)):
                try:
                    result = read_object(uris[i], sizes[i], task)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    result = exc
            elif isinstance(result, bytes) and len(result) > limit:
                result = ImageError(too_large(len(result), limit))
            yield i, result


def _one_by_one(uris: list[str], sizes: list, task: ReadTask, skip: Skip
                ) -> Iterator[tuple[int, bytes | Exception]]:
    for i, uri in enumerate(uris):
        if skip(i):
            continue
        try:
            yield i, read_object(uri, sizes[i], task)
        except Exception as exc:
            if protocol_of(uri) not in LOCAL and is_transient(exc):
                raise
            yield i, exc


def check_regular(fs: AbstractFileSystem, path: str) -> None:
    """Refuse a local shard that is not a regular file before opening it (a FIFO blocks)."""
    if is_local(fs) and not stat.S_ISREG(os.stat(path).st_mode):
        raise UserError("not a regular file")


def contents(uris: list[str], sizes: list, task: ReadTask, skip: Skip
             ) -> Iterator[tuple[int, bytes | Exception]]:
    """(index, bytes or the error) of each object not skipped, in order: FETCH_OBJECTS at a
    time from an async object store, else one by one."""
    fs = _concurrent_store(uris, task) if FETCH_OBJECTS > 1 else None
    return _fetched(fs, uris, sizes, task, skip) if fs else _one_by_one(uris, sizes, task, skip)
