"""Inputs -> sources (image files, WebDataset tar shards, Parquet shards) -> work units.

Listing runs once, in the driver, before Ray starts. A unit is what one read task handles:
about `unit_size` image files, or one shard. So a million small files become ~15,000 tasks,
not a million, and a shard is streamed by the one task that reads it.

A unit's id comes from its content (names, sizes, modification times or ETags), and file
units are cut where a file's name hashes to a boundary (content-defined, like rsync's
chunks), not every `unit_size` files: a file added, removed or replaced changes one unit, so a
resumed run redoes only that unit.

Layouts are detected per file by extension (`.tar`, `.tgz`, `.tar.gz` -> WebDataset,
`.parquet` -> Parquet, anything else -> an image file) unless `--layout` forces one. In
folders, regular files without an image extension are taken only when their first bytes are
those of an image format; a file named explicitly is always taken (a broken one becomes an
error row), and so is a FIFO, socket or device with an image extension (a row that says what
it is, never opened). Local folders are walked with symbolic links followed, each real folder
once, so a link loop ends; the output folder is never listed as input.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.storage import (
    display,
    is_local,
    named_errors,
    open_fs,
    protocol_of,
    protocols,
    redact,
    unreachable,
)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
})
SHARD_KINDS = {".tar": "webdataset", ".tgz": "webdataset", ".tar.gz": "webdataset",
               ".parquet": "parquet"}
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


@dataclass(frozen=True, slots=True)  # one per image, kept for the run: 40 bytes less each
class Source:
    """One listed file: an image file or a shard, with what the listing knows of it."""

    kind: str  # "files", "webdataset" or "parquet"
    uri: str
    size: int | None = None
    version: str = ""  # modification time (ns) or ETag: a replaced file gets another


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGIC)


def suffix(path: str) -> str:
    """The extension that decides the layout, `.tar.gz` included, lower-cased."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".tar.gz"):
        return ".tar.gz"
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int | None
    version: str
    regular: bool  # a regular file (or an object of a store)


def _local_entry(path: str) -> _Entry:
    try:
        st = os.stat(path)
    except OSError:  # a broken link or a link loop: a row will say which
        return _Entry(path, None, "", False)
    return _Entry(path, st.st_size, str(st.st_mtime_ns), stat.S_ISREG(st.st_mode))


def _walk_local(root: str, exclude: str | None) -> list[_Entry]:
    """Every non-folder below `root`, links followed, each real folder once, sorted."""
    found: list[_Entry] = []
    seen: set[tuple[int, int]] = set()
    if exclude and os.path.isdir(exclude):  # the output counts as a folder already walked
        st = os.stat(exclude)
        seen.add((st.st_dev, st.st_ino))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"cannot list {folder}: {exc.strerror or exc}") from None
        folders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(entry.path)
            else:
                found.append(_local_entry(entry.path))
        stack += reversed(folders)  # depth first, in name order: the same names every time
    return sorted(found, key=lambda e: e.path)


def _remote_entry(path: str, info: dict) -> _Entry:
    version = next((str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash",
                                             "LastModified", "last_modified", "mtime",
                                             "updated") if info.get(k)), "")
    return _Entry(path, info.get("size"), version, True)


def _remote_files(fs: AbstractFileSystem, path: str, exclude: str | None) -> list[_Entry]:
    found = fs.find(path, detail=True)
    prefix = exclude.rstrip("/") + "/" if exclude else None
    return [_remote_entry(p, info) for p, info in sorted(found.items())
            if info.get("type") != "directory" and not (prefix and p.startswith(prefix))]


def _is_dir(fs: AbstractFileSystem, path: str) -> bool:
    return os.path.isdir(path) if is_local(fs) else fs.isdir(path)


def _files(fs: AbstractFileSystem, path: str, exclude: str | None) -> list[_Entry]:
    if is_local(fs):
        return _walk_local(path, exclude)
    return _remote_files(fs, path, exclude)


def _exists(fs: AbstractFileSystem, path: str) -> bool:
    """Literally there: a local name (even a dangling link or a FIFO) or a store's object."""
    if is_local(fs):
        return os.path.lexists(path)
    try:
        fs.info(path)
    except FileNotFoundError as exc:
        if unreachable(exc) is not None:
            raise
        return False
    return True


def _matches(fs: AbstractFileSystem, path: str, item: str, exclude: str | None
             ) -> list[tuple[_Entry, bool]]:
    """(file, named explicitly) pairs for one input. A name that exists is taken literally,
    even when it holds glob characters (`photo[1].jpg`)."""
    if _exists(fs, path):
        if _is_dir(fs, path):
            return [(e, False) for e in _files(fs, path, exclude)]
        entry = _local_entry(path) if is_local(fs) else _remote_entry(path, fs.info(path))
        return [(entry, True)]
    if not is_glob(item):
        raise UserError(f"input {redact(item)} does not exist")
    matched = sorted(fs.glob(path))
    if not matched:
        raise UserError(f"input pattern {redact(item)} matches nothing")
    entries: list[tuple[_Entry, bool]] = []
    for p in matched:
        if _is_dir(fs, p):
            entries += [(e, False) for e in _files(fs, p, exclude)]
        else:
            entries.append((_local_entry(p) if is_local(fs)
                            else _remote_entry(p, fs.info(p)), True))
    return entries


def _classify(fs: AbstractFileSystem, entry: _Entry, layout: str, explicit: bool
              ) -> str | None:
    if layout != "auto":
        return layout
    ext = suffix(entry.path)
    if ext in SHARD_KINDS:
        return SHARD_KINDS[ext]
    if explicit or ext in IMAGE_EXTENSIONS:
        return "files"
    if not entry.regular:
        return None  # never opened: a FIFO would block, a device never ends
    try:
        with fs.open(entry.path, "rb") as f:
            return "files" if looks_like_image(f.read(16)) else None
    except OSError:
        return None


def list_sources(inputs: Iterable[str], layout: str = "auto", options: dict | None = None,
                 exclude: str | None = None) -> Iterator[Source]:
    """Every source once, in a stable order (inputs in the given order, files sorted).
    `exclude` (the output folder: a local path or a URI) is never listed."""
    seen: set[str] = set()
    for item in inputs:
        fs, path = open_fs(item, options)
        same_store = exclude and protocol_of(exclude) in protocols(fs)
        skip = fs._strip_protocol(exclude) if same_store else None
        with named_errors(item):
            for entry, explicit in _matches(fs, path, item, skip):
                kind = _classify(fs, entry, layout, explicit)
                uri = display(fs, entry.path)
                if kind and uri not in seen:
                    seen.add(uri)
                    yield Source(kind, uri, entry.size, entry.version)


@dataclass(frozen=True)
class Unit:
    kind: str
    sources: tuple[Source, ...]
    uid: str = field(init=False)

    def __post_init__(self) -> None:
        text = "\n".join([self.kind] + [f"{s.uri}\t{s.size}\t{s.version}"
                                        for s in self.sources])
        digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8)
        object.__setattr__(self, "uid", digest.hexdigest())

    @property
    def uris(self) -> tuple[str, ...]:
        return tuple(s.uri for s in self.sources)


def _ends_unit(uri: str, unit_size: int) -> bool:
    digest = hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % unit_size == 0


def work_units(sources: Iterable[Source], unit_size: int) -> Iterator[Unit]:
    """Image files in units of `unit_size` on average (at most twice that); shards alone."""
    pending: list[Source] = []
    for source in sources:
        if source.kind == "files":
            pending.append(source)
            if _ends_unit(source.uri, unit_size) or len(pending) == 2 * unit_size:
                yield Unit("files", tuple(pending))
                pending = []
        else:
            yield Unit(source.kind, (source,))
    if pending:
        yield Unit("files", tuple(pending))
