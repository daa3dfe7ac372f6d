"""Work units -> samples -> `ImageBatch`es: the CPU stage. It runs as Ray tasks that feed
the inference actors, or, on a one-node CPU cluster, in threads of the actors themselves
(`run/inference.DecodingClassifier`).

This module is the one sample boundary: whatever goes wrong while reading, decoding or
preprocessing one file, tar member or Parquet row (or a whole shard) becomes that row's (or
the shard's) reason; only a store failure that may pass (`storage.is_transient`) escapes,
after its retries, so that the work unit fails and a rerun labels those images instead of
committing them as errors.

Work is bounded per item: only regular files and regular tar members are opened, at most
`max_bytes` are read of any of them (the listing's size is checked before reading, and the
read itself stops one byte past the limit, because a store or a file can lie), and
preprocessing refuses any image, decoded or intermediate, above `max_pixels`.

Each work unit is streamed and yields one batch per `batch_size` samples: the rows one actor
call labels and one output part commits. Parts a previous run committed are skipped before
their bytes are read (files, Parquet row groups) or decoded (members of a tar stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from effnet_ray.inputs.batch import ImageBatch, stack
from effnet_ray.inputs.files import file_samples
from effnet_ray.inputs.parquet import parquet_samples
from effnet_ray.inputs.preprocessing import preprocess_bytes, shrinks_when_fast
from effnet_ray.inputs.samples import ImageError, ReadTask, Sample, Skip, describe
from effnet_ray.inputs.webdataset import tar_samples
from effnet_ray.models.registry import ModelSpec
from effnet_ray.storage import (
    ATTEMPTS,
    local_path,
    printable,
    short_reason,
    wait_or_raise,
)


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


# One reader per shard layout; a shard is one work unit.
SHARD_READERS = {"webdataset": tar_samples, "parquet": parquet_samples}


def unit_samples(kind: str, uris: list[str], sizes: list, versions: list, task: ReadTask,
                 skip: Skip) -> Iterator[Sample | None]:
    """Samples of a unit in a fixed order; None where `skip(index)` says the row is done."""
    if kind == "files":
        return file_samples(uris, sizes, versions, task, skip)
    read_shard = SHARD_READERS[kind]
    (uri,), (size,), (version,) = uris, sizes, versions
    return resuming(lambda s: read_shard(uri, size, version, task, s), skip)


def preprocess_sample(sample: Sample, task: ReadTask) -> np.ndarray | None:
    if sample.error is not None or sample.data is None:
        return None
    try:
        if task.options.decode == "exact":  # for the summary's hint
            sample.large_jpeg = shrinks_when_fast(sample.data, task.spec)
        return preprocess_bytes(sample.data, task.spec, task.options.max_pixels,
                                task.options.decode)
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
        images=stack(images, spec.input.height, spec.input.width),
        large_jpegs=sum(s.large_jpeg for s in samples))


def unit_batches(units: dict[str, np.ndarray], task: ReadTask) -> Iterator[ImageBatch]:
    """The batches of work units (columns kind, uris, sizes, versions, uid, done), in order,
    without the parts an earlier run committed; each knows the CPU its making took in the
    thread that made it."""
    clock = time.thread_time()
    for batch in _unit_batches(units, task):
        batch.decode_seconds = time.thread_time() - clock
        yield batch
        clock = time.thread_time()


def _unit_batches(units: dict[str, np.ndarray], task: ReadTask) -> Iterator[ImageBatch]:
    size = task.options.batch_size
    for kind, uris, sizes, versions, uid, done in zip(
            units["kind"], units["uris"], units["sizes"], units["versions"], units["uid"],
            units["done"], strict=True):
        done = {int(d) for d in done}
        first = 0
        samples: list[Sample] = []
        images: list[np.ndarray] = []
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
