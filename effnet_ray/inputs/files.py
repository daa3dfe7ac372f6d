"""The `files` layout: a work unit of image files (or objects) -> one sample per file."""

from __future__ import annotations

from collections.abc import Iterator

from effnet_ray.inputs.fetch import contents
from effnet_ray.inputs.samples import ReadTask, Sample, Skip, describe
from effnet_ray.storage import redact


def file_samples(uris: list[str], sizes: list, versions: list, task: ReadTask, skip: Skip
                 ) -> Iterator[Sample | None]:
    results = contents(uris, sizes, task, skip)
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
