"""Inputs -> sources (image files, WebDataset tar shards, Parquet shards) -> work units.

Listing runs once, in the driver, before Ray starts. A unit is what one read task handles:
about `unit_size` image files, or one shard. So a million small files become ~15,000 tasks,
not a million, and a shard is streamed by the one task that reads it.

A unit's id comes from its content, and file units are cut where a file's name hashes to a
boundary (content-defined, like rsync's chunks), not every `unit_size` files: a file added to
or removed from a folder changes one unit, so a resumed run redoes only that unit.

Layouts are detected per file by extension (`.tar` -> WebDataset, `.parquet` -> Parquet,
anything else -> an image file) unless `--layout` forces one. In folders, files without an
image extension are taken only when their first bytes are those of an image format; a file
named explicitly is always taken (a broken one becomes an error row).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.storage import display, named_errors, open_fs

LAYOUTS = ("auto", "files", "webdataset", "parquet")
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
})
SHARD_KINDS = {".tar": "webdataset", ".parquet": "parquet"}
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


@dataclass(frozen=True)
class Source:
    kind: str  # "files", "webdataset" or "parquet"
    uri: str


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGIC)


def suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[1].lower() if "." in name else ""


def is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _classify(fs: AbstractFileSystem, path: str, layout: str, explicit: bool) -> str | None:
    if layout != "auto":
        return layout
    ext = suffix(path)
    if ext in SHARD_KINDS:
        return SHARD_KINDS[ext]
    if explicit or ext in IMAGE_EXTENSIONS:
        return "files"
    try:
        with fs.open(path, "rb") as f:
            return "files" if looks_like_image(f.read(16)) else None
    except OSError:
        return None


def _matches(fs: AbstractFileSystem, path: str, item: str) -> list[tuple[str, bool]]:
    """(file, named explicitly) pairs for one input."""
    if is_glob(item):
        found = sorted(fs.glob(path))
        if not found:
            raise UserError(f"input pattern {item} matches nothing")
        files = []
        for p in found:
            files += [(f, False) for f in sorted(fs.find(p))] if fs.isdir(p) else [(p, True)]
        return files
    if fs.isdir(path):
        return [(f, False) for f in sorted(fs.find(path))]
    if fs.isfile(path):
        return [(path, True)]
    raise UserError(f"input {item} does not exist")


def check_inputs(inputs: Iterable[str], options: dict | None = None) -> None:
    """Fail before any work when an input names nothing or its store cannot be reached."""
    inputs = list(inputs)
    if not inputs:
        raise UserError("no input given")
    for item in inputs:
        fs, path = open_fs(item, options)
        with named_errors(item):
            if is_glob(item):
                if not fs.glob(path):
                    raise UserError(f"input pattern {item} matches nothing")
            elif not fs.exists(path):
                raise UserError(f"input {item} does not exist")


def list_sources(inputs: Iterable[str], layout: str = "auto",
                 options: dict | None = None) -> Iterator[Source]:
    """Every source once, in a stable order (inputs in the given order, files sorted)."""
    seen: set[str] = set()
    for item in inputs:
        fs, path = open_fs(item, options)
        with named_errors(item):
            for file, explicit in _matches(fs, path, item):
                kind = _classify(fs, file, layout, explicit)
                uri = display(fs, file)
                if kind and uri not in seen:
                    seen.add(uri)
                    yield Source(kind, uri)


@dataclass(frozen=True)
class Unit:
    kind: str
    uris: tuple[str, ...]
    uid: str = field(init=False)

    def __post_init__(self) -> None:
        text = "\n".join((self.kind, *self.uris)).encode()
        object.__setattr__(self, "uid", hashlib.blake2b(text, digest_size=8).hexdigest())


def _ends_unit(uri: str, unit_size: int) -> bool:
    digest = hashlib.blake2b(uri.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % unit_size == 0


def work_units(sources: Iterable[Source], unit_size: int) -> Iterator[Unit]:
    """Image files in units of `unit_size` on average (at most twice that); shards alone."""
    pending: list[str] = []
    for source in sources:
        if source.kind == "files":
            pending.append(source.uri)
            if _ends_unit(source.uri, unit_size) or len(pending) == 2 * unit_size:
                yield Unit("files", tuple(pending))
                pending = []
        else:
            yield Unit(source.kind, (source.uri,))
    if pending:
        yield Unit("files", tuple(pending))
