"""Work units -> samples -> preprocessed batches: the CPU stage that runs as Ray tasks.

A sample is (path, bytes or a reason, existing label, existing metadata). Each task streams
its unit and yields small batches, so a shard never sits in memory whole. Anything that
cannot be read or decoded yields a row with its reason and an all-zero image that inference
skips; nothing is dropped.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effnet_ray.errors import UserError
from effnet_ray.listing import IMAGE_EXTENSIONS, suffix
from effnet_ray.preprocessing import MAX_PIXELS, ImageError, preprocess_bytes
from effnet_ray.registry import get_spec
from effnet_ray.storage import named_errors, open_fs, short_reason

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


def file_samples(uris: list[str], opts: ReadOptions) -> Iterator[Sample]:
    for uri in uris:
        try:
            fs, path = open_fs(uri, opts.storage_options)
            yield Sample(uri, data=fs.cat_file(path))
        except Exception as exc:  # any store failure is this input's error, not the run's
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


def tar_samples(uri: str, opts: ReadOptions) -> Iterator[Sample]:
    """Stream a WebDataset shard: consecutive members with one key form one sample."""
    key, members = None, {}
    try:
        fs, path = open_fs(uri, opts.storage_options)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _key(member.name)
                if member_key != key and key is not None:
                    yield _sample_from(uri, key, members)
                    members = {}
                key = member_key
                members[ext] = tar.extractfile(member).read()
    except Exception as exc:  # a truncated or unreachable shard: say where it stopped
        reason = short_reason(exc)
        if members:
            yield _sample_from(uri, key, members)
        elif key is not None:
            yield Sample(f"{uri}{SHARD_SEPARATOR}{key}", error=f"truncated shard ({reason})")
        yield Sample(uri, error=f"unreadable shard after {key or 'its start'} ({reason})")
        return
    if key is not None:
        yield _sample_from(uri, key, members)


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


def parquet_samples(uri: str, opts: ReadOptions) -> Iterator[Sample]:
    try:
        fs, path = open_fs(uri, opts.storage_options)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = _missing_image_column(names, opts)
            if missing:
                yield Sample(uri, error=missing)
                return
            columns = [opts.image_column] + ([opts.id_column] if opts.id_column in names else [])
            row = 0
            for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
                ids = (batch.column(opts.id_column).to_pylist() if len(columns) == 2
                       else range(row, row + batch.num_rows))
                for value, ident in zip(batch.column(0).to_pylist(), ids, strict=True):
                    data = _image_bytes(value)
                    sample_path = f"{uri}{SHARD_SEPARATOR}{ident}"
                    yield (Sample(sample_path, data=data) if data is not None
                           else Sample(sample_path, error="no image bytes in this row"))
                row += batch.num_rows
    except (OSError, pa.ArrowException, ValueError) as exc:
        yield Sample(uri, error=f"unreadable Parquet shard ({short_reason(exc)})")


def unit_samples(kind: str, uris: list[str], opts: ReadOptions) -> Iterator[Sample]:
    if kind == "files":
        yield from file_samples(uris, opts)
        return
    read_shard = tar_samples if kind == "webdataset" else parquet_samples
    for uri in uris:
        yield from read_shard(uri, opts)


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


def _batch(samples: list[Sample], images: list[np.ndarray]) -> dict[str, np.ndarray]:
    def text(values: list[str | None]) -> np.ndarray:
        return np.array([v or "" for v in values], dtype=object)

    return {
        "path": np.array([s.path for s in samples], dtype=object),
        "image": np.stack(images),
        "error": text([s.error for s in samples]),
        "source_label": text([s.label for s in samples]),
        "source_metadata": text([s.metadata for s in samples]),
    }


def read_units(batch: dict[str, np.ndarray], *, options: ReadOptions
               ) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data map_batches function over work units (columns `kind`, `uris`)."""
    spec = get_spec(options.model)
    blank = np.zeros((spec.input.height, spec.input.width, 3), dtype=np.uint8)
    for kind, uris in zip(batch["kind"], batch["uris"], strict=True):
        samples, images = [], []
        for sample in unit_samples(str(kind), [str(u) for u in uris], options):
            image = preprocess_sample(sample, options)
            samples.append(sample)
            images.append(blank if image is None else image)
            if len(samples) == ROWS_PER_BATCH:
                yield _batch(samples, images)
                samples, images = [], []
        if samples:
            yield _batch(samples, images)

