"""A sample is one row of the output: a path plus the image's bytes or the reason there are
none. This module holds what every reader of samples shares: the sample, what a reading task
carries, the wording of an item's reason, and the `SHARD::KEY` paths of samples inside
shards."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from effnet_ray.models.registry import ModelSpec
from effnet_ray.options import ReadOptions
from effnet_ray.storage import short_reason

Skip = Callable[[int], bool]


@dataclass
class Sample:
    path: str
    data: bytes | None = None
    error: str | None = None
    source_label: str | None = None
    metadata: str | None = None
    size: int | None = None
    version: str | None = None
    large_jpeg: bool = False  # `--decode fast` would decode it smaller


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


class ImageError(Exception):
    """An input that is not a usable image; its message is the row's `error`."""


class ShardTooLarge(Exception):
    """A shard that expanded past --max-shard-bytes; its message says what passed it."""

    stopped = "larger than --max-shard-bytes"


SEPARATOR = "::"


class UniquePaths:
    """Paths never given twice: a repeat gets `#2`, `#3`... (the first free one)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, path: str) -> str:
        unique, n = path, 2
        while unique in self.seen:
            unique, n = f"{path}#{n}", n + 1
        self.seen.add(unique)
        return unique


def shards_of(path: str) -> Iterator[str]:
    """The shards a sample's path (`SHARD::KEY`) may name, longest first: a key may hold
    the separator too."""
    parts = path.split(SEPARATOR)
    for i in range(len(parts) - 1, 0, -1):
        yield SEPARATOR.join(parts[:i])
