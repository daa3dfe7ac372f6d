"""Work units -> samples -> preprocessed chunks: the CPU stage that runs as Ray tasks.

A sample is (path, bytes or a reason, existing label, existing metadata). Each task streams
its unit and yields one chunk per `batch_size` samples: the rows that one inference call
labels and one output file commits. Chunks a previous run committed are skipped before
their bytes are read (files, Parquet row groups) or decoded (members of a tar stream).
Anything that cannot be read or decoded is a row with its reason; nothing is dropped. A
store error that may pass is retried, resuming a shard where it broke off; if it persists,
the task fails rather than commit rows that a rerun could still label.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effnet_ray.errors import UserError
from effnet_ray.listing import IMAGE_EXTENSIONS, suffix
from effnet_ray.preprocessing import MAX_PIXELS, ImageError, preprocess_bytes
from effnet_ray.registry import get_spec
from effnet_ray.storage import (
    ATTEMPTS,
    PERMANENT,
    backoff,
    named_errors,
    open_fs,
    retrying,
    short_reason,
)

ROWS_PER_BATCH = 8
SHARD_SEPARATOR = "::"
LABEL_EXTENSIONS = (".cls", ".txt")


@dataclass
class Sample:
    path: str
    data: bytes | None = None
    error: str | None = None
    label: str | None = None
    metadata: str | None = None


@dataclass(frozen=True)
class ReadOptions:
    model: str
    storage_options: dict | None = None
    image_column: str = "image"
    id_column: str = "id"
    max_pixels: int = MAX_PIXELS
    batch_size: int = 32


Skip = Callable[[int], bool]


def file_samples(uris: list[str], opts: ReadOptions, skip: Skip) -> Iterator[Sample | None]:
    for index, uri in enumerate(uris):
        if skip(index):
            yield None
            continue
        fs, path = open_fs(uri, opts.storage_options)
        try:
            yield Sample(uri, data=retrying(lambda: fs.cat_file(path)))  # noqa: B023
        except PERMANENT as exc:
            yield Sample(uri, error=f"unreadable object ({short_reason(exc)})")


def _key(member_name: str) -> tuple[str, str]:
    """WebDataset: the key is the path up to the first dot of the file name."""
    folder, _, name = member_name.rpartition("/")
    stem, dot, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def _sample_from(shard: str, key: str, members: dict[str, bytes]) -> Sample:
    path = f"{shard}{SHARD_SEPARATOR}{key}"
    images = [ext for ext in members if suffix("x" + ext) in IMAGE_EXTENSIONS]
    label = next((members[e].decode("utf-8", "replace").strip() for e in LABEL_EXTENSIONS
                  if e in members), None)
    metadata = members[".json"].decode("utf-8", "replace") if ".json" in members else None
    if not images:
        return Sample(path, error="no image in this sample", label=label, metadata=metadata)
    return Sample(path, data=members[sorted(images)[0]], label=label, metadata=metadata)


def tar_samples(uri: str, opts: ReadOptions, skip: Skip) -> Iterator[Sample | None]:
    """Stream a WebDataset shard: consecutive members with one key form one sample."""
    key, members, index = None, {}, 0
    fs, path = open_fs(uri, opts.storage_options)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _key(member.name)
                if member_key != key and key is not None:
                    yield None if skip(index) else _sample_from(uri, key, members)
                    members, index = {}, index + 1
                key = member_key
                if not skip(index):
                    members[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as exc:  # a truncated shard: say where it stopped
        reason = short_reason(exc)
        if members:
            yield _sample_from(uri, key, members)
        elif key is not None:
            yield Sample(f"{uri}{SHARD_SEPARATOR}{key}", error=f"truncated shard ({reason})")
        yield Sample(uri, error=f"unreadable shard after {key or 'its start'} ({reason})")
        return
    if key is not None:
        yield None if skip(index) else _sample_from(uri, key, members)


def _missing_image_column(names: list[str], opts: ReadOptions) -> str | None:
    if opts.image_column in names:
        return None
    return f"no image column '{opts.image_column}' (columns: {', '.join(names[:20])})"


def check_parquet_columns(uri: str, opts: ReadOptions) -> None:
    """A wrong --image-column is an argument error: found on the first shard, before work."""
    fs, path = open_fs(uri, opts.storage_options)
    with named_errors(uri), fs.open(path, "rb") as f:
        missing = _missing_image_column(pq.ParquetFile(f).schema_arrow.names, opts)
    if missing:
        raise UserError(f"{uri} has {missing}; choose one with --image-column")


def _image_bytes(value: object) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value if isinstance(value, bytes) else None


def parquet_samples(uri: str, opts: ReadOptions, skip: Skip) -> Iterator[Sample | None]:
    """Rows of a Parquet shard; row groups whose rows are all done are not read."""
    fs, path = open_fs(uri, opts.storage_options)
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = _missing_image_column(names, opts)
            if missing:
                yield Sample(uri, error=missing)
                return
            columns = [opts.image_column] + ([opts.id_column] if opts.id_column in names else [])
            row = 0
            for group in range(parquet.num_row_groups):
                count = parquet.metadata.row_group(group).num_rows
                if all(skip(i) for i in range(row, row + count)):
                    yield from [None] * count
                    row += count
                    continue
                for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=[group],
                                                  columns=columns):
                    ids = (batch.column(opts.id_column).to_pylist() if len(columns) == 2
                           else range(row, row + batch.num_rows))
                    for value, ident in zip(batch.column(0).to_pylist(), ids, strict=True):
                        data = _image_bytes(value)
                        sample_path = f"{uri}{SHARD_SEPARATOR}{ident}"
                        if skip(row):
                            yield None
                        elif data is None:
                            yield Sample(sample_path, error="no image bytes in this row")
                        else:
                            yield Sample(sample_path, data=data)
                        row += 1
    except (pa.ArrowInvalid, ValueError) as exc:
        yield Sample(uri, error=f"unreadable Parquet shard ({short_reason(exc)})")


def _resuming(read: Callable[[Skip], Iterator[Sample | None]], skip: Skip
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
        except PERMANENT:
            raise
        except Exception:  # stores raise anything from OSError to botocore errors
            if attempt == ATTEMPTS - 1:
                raise
            backoff(attempt)


def unit_samples(kind: str, uris: list[str], opts: ReadOptions, skip: Skip
                 ) -> Iterator[Sample | None]:
    """Samples of a unit in a fixed order; None where `skip(index)` says the row is done."""
    if kind == "files":
        return file_samples(uris, opts, skip)
    read_shard = tar_samples if kind == "webdataset" else parquet_samples
    (uri,) = uris
    return _resuming(lambda s: read_shard(uri, opts, s), skip)


def preprocess_sample(sample: Sample, opts: ReadOptions) -> np.ndarray | None:
    if sample.error is not None:
        return None
    try:
        return preprocess_bytes(sample.data, get_spec(opts.model), opts.max_pixels)
    except ImageError as exc:
        sample.error = str(exc)
    except MemoryError:
        sample.error = "not enough memory to decode"
    return None


CHUNK_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("first", pa.int64()),
    ("last", pa.bool_()),
    ("paths", pa.list_(pa.string())),
    ("errors", pa.list_(pa.string())),
    ("source_labels", pa.list_(pa.string())),
    ("source_metadata", pa.list_(pa.string())),
    # the decoded uint8 HxWx3 images of the rows without an error, back to back
    ("pixels", pa.large_binary()),
])


def _chunk(uid: str, first: int, last: bool, samples: list[Sample], images: list[np.ndarray]
           ) -> pa.Table:
    pixels = np.stack(images) if images else np.zeros(0, np.uint8)
    offsets = pa.py_buffer(np.array([0, pixels.nbytes], dtype=np.int64))
    return pa.Table.from_arrays([
        pa.array([uid]), pa.array([first], pa.int64()), pa.array([last]),
        pa.array([[s.path for s in samples]]), pa.array([[s.error for s in samples]]),
        pa.array([[s.label for s in samples]]), pa.array([[s.metadata for s in samples]]),
        pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1,
                                         [None, offsets, pa.py_buffer(pixels)]),
    ], schema=CHUNK_SCHEMA)


def read_units(batch: dict[str, np.ndarray], *, options: ReadOptions) -> Iterator[pa.Table]:
    """Ray Data map_batches function over work units (columns kind, uris, uid, done)."""
    size = options.batch_size
    for kind, uris, uid, done in zip(batch["kind"], batch["uris"], batch["uid"], batch["done"],
                                     strict=True):
        done = {int(d) for d in done}
        first, samples, images = 0, [], []
        skip = lambda i: i // size * size in done  # noqa: B023, E731
        for index, sample in enumerate(unit_samples(str(kind), [str(u) for u in uris],
                                                    options, skip)):
            if index // size * size != first:
                if first not in done:
                    yield _chunk(str(uid), first, False, samples, images)
                first, samples, images = index // size * size, [], []
            if sample is not None:
                image = preprocess_sample(sample, options)
                samples.append(sample)
                if image is not None:
                    images.append(image)
        if first not in done:  # an empty unit still commits its (empty) last chunk
            yield _chunk(str(uid), first, True, samples, images)
