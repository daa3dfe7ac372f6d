"""Work units -> samples -> `ImageBatch`es: the CPU stage that runs as Ray tasks.

A sample is one row of the output: a path plus the image's bytes or the reason there are
none. This module is the one sample boundary: whatever goes wrong while reading, decoding or
preprocessing one file, tar member or Parquet row (or a whole shard) becomes that row's (or
the shard's) reason; only a store failure that may pass (`storage.is_transient`) escapes,
after its retries, so that the task fails and a rerun labels those images instead of
committing them as errors.

Work is bounded per item: only regular files and regular tar members are opened, at most
`max_bytes` are read of any of them (the listing's size is checked before reading, and the
read itself stops one byte past the limit, because a store or a file can lie), and
preprocessing refuses any image, decoded or intermediate, above `max_pixels`.

Each task streams its unit and yields one batch per `batch_size` samples: the rows one actor
call labels and one output part commits. Parts a previous run committed are skipped before
their bytes are read (files, Parquet row groups) or decoded (members of a tar stream).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from fsspec.spec import AbstractFileSystem

from effnet_ray.batch import ImageBatch, stack
from effnet_ray.options import ReadOptions
from effnet_ray.preprocessing import ImageError, preprocess_bytes
from effnet_ray.registry import ModelSpec
from effnet_ray.storage import (
    ATTEMPTS,
    LOCAL,
    is_local,
    is_read_only,
    is_transient,
    local_path,
    open_fs,
    printable,
    protocol_of,
    redact,
    retrying,
    short_reason,
    wait_or_raise,
)

Skip = Callable[[int], bool]
# Objects of a unit fetched at once from an object store: each GET costs 20-100 ms of
# latency, so one at a time leaves a decoding CPU waiting on the network.
FETCH_OBJECTS = 16
# Bytes a read asks for at once when the size is not known (see `read_within`).
READ_STEP = 2**20
_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISDIR, "a folder"))


@dataclass
class Sample:
    path: str
    data: bytes | None = None
    error: str | None = None
    source_label: str | None = None
    metadata: str | None = None
    size: int | None = None
    version: str | None = None


@dataclass(frozen=True)
class ReadTask:
    """Everything a decoding task needs, and nothing else."""

    options: ReadOptions
    spec: ModelSpec
    # repr=False: credentials may be in here and must never reach a log line
    storage_options: dict | None = None

    def __repr__(self) -> str:
        return f"ReadTask({self.options!r}, model={self.spec.name})"


def too_large(size: int, limit: int) -> str:
    return f"larger than --max-bytes ({size} > {limit} bytes)"


def describe(exc: BaseException) -> str:
    """A row's reason for an error of one item (the sample boundary's wording)."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "unreadable object (a symbolic link loop)"
    if isinstance(exc, OSError) and exc.errno == errno.ENXIO:
        return "not a regular file (a socket or a device without a reader)"
    return f"unreadable object ({short_reason(exc)})"


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


def _concurrent(uris: list[str], task: ReadTask) -> AbstractFileSystem | None:
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
    window, held = [], 0
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
        results = dict(zip(ranged, fs.cat_ranges(paths, [0] * len(paths),
                                                 [limit + 1] * len(paths), on_error="return")
                           if paths else [], strict=True))
        for i in window:
            result = results.get(i)
            if i not in results or (isinstance(result, Exception) and is_transient(result)):
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


def file_samples(uris: list[str], sizes: list, versions: list, task: ReadTask, skip: Skip
                 ) -> Iterator[Sample | None]:
    fs = _concurrent(uris, task) if FETCH_OBJECTS > 1 else None
    results = _fetched(fs, uris, sizes, task, skip) if fs else _one_by_one(uris, sizes, task,
                                                                          skip)
    upcoming = next(results, None)
    for index, (uri, version) in enumerate(zip(uris, versions, strict=True)):
        if upcoming is None or upcoming[0] != index:
            yield None  # skipped: done by an earlier run
            continue
        sample = Sample(redact(uri), size=sizes[index], version=version)
        if isinstance(upcoming[1], Exception):
            sample.error = describe(upcoming[1])
        else:
            sample.data = upcoming[1]
        upcoming = next(results, None)
        yield sample


def resuming(read: Callable[[Skip], Iterator[Sample | None]], skip: Skip
             ) -> Iterator[Sample | None]:
    """`read`, reopened after a transient store error and continued past what it yielded."""
    yielded = 0
    for attempt in range(ATTEMPTS):
        try:
            for index, sample in enumerate(read(lambda i: i < yielded or skip(i))):  # noqa: B023
                if index >= yielded:
                    yielded += 1
                    yield sample
            return
        except Exception as exc:
            wait_or_raise(exc, attempt, None)


def unit_samples(kind: str, uris: list[str], sizes: list, versions: list, task: ReadTask,
                 skip: Skip) -> Iterator[Sample | None]:
    """Samples of a unit in a fixed order; None where `skip(index)` says the row is done."""
    from effnet_ray.shards import parquet_samples, tar_samples

    if kind == "files":
        return file_samples(uris, sizes, versions, task, skip)
    read_shard = tar_samples if kind == "webdataset" else parquet_samples
    (uri,), (size,), (version,) = uris, sizes, versions
    return resuming(lambda s: read_shard(uri, size, version, task, s), skip)


def preprocess_sample(sample: Sample, task: ReadTask) -> np.ndarray | None:
    if sample.error is not None:
        return None
    try:
        return preprocess_bytes(sample.data, task.spec, task.options.max_pixels)
    except Exception as exc:  # the sample boundary: any failure is this row's reason
        sample.error = describe(exc) if isinstance(exc, (ImageError, MemoryError)) \
            else f"undecodable image ({short_reason(exc)})"
    finally:
        sample.data = None
    return None


def _batch(uid: str, first: int, last: bool, samples: list[Sample], images: list[np.ndarray],
           spec: ModelSpec) -> ImageBatch:
    return ImageBatch(
        uid=uid, first=first, last=last, paths=[printable(s.path) for s in samples],
        errors=[s.error for s in samples], source_labels=[s.source_label for s in samples],
        source_metadata=[s.metadata for s in samples], input_sizes=[s.size for s in samples],
        input_versions=[s.version for s in samples],
        images=stack(images, spec.input.height, spec.input.width))


def unit_batches(units: dict[str, np.ndarray], task: ReadTask) -> Iterator[ImageBatch]:
    """The batches of work units (columns kind, uris, sizes, versions, uid, done), in order,
    without the parts an earlier run committed."""
    size = task.options.batch_size
    for kind, uris, sizes, versions, uid, done in zip(
            units["kind"], units["uris"], units["sizes"], units["versions"], units["uid"],
            units["done"], strict=True):
        done = {int(d) for d in done}
        first, samples, images = 0, [], []
        skip = lambda i: i // size * size in done  # noqa: B023, E731
        sizes = [None if s is None or s < 0 else int(s) for s in sizes]
        for index, sample in enumerate(unit_samples(
                str(kind), [local_path(str(u)) for u in uris], sizes, [str(v) for v in versions],
                task, skip)):
            if index // size * size != first:
                if first not in done:
                    yield _batch(str(uid), first, False, samples, images, task.spec)
                first, samples, images = index // size * size, [], []
            if sample is not None:
                image = preprocess_sample(sample, task)
                samples.append(sample)
                if image is not None:
                    images.append(image)
        if first not in done:  # an empty unit still commits its (empty) last part
            yield _batch(str(uid), first, True, samples, images, task.spec)


def read_units(units: dict[str, np.ndarray], *, task: ReadTask) -> Iterator[pa.Table]:
    """Ray Data map_batches function: `unit_batches` as the decoding stage's blocks."""
    for batch in unit_batches(units, task):
        yield batch.to_arrow()
