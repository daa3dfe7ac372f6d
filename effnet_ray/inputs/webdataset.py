"""WebDataset shards -> samples: tar streams (also gzip'd), `SHARD::KEY` each.

Paths are unique within a shard by construction: a key seen before in the shard (a duplicate
key, two members of one name) gets `#2`, `#3`... in the order met; a key that is not valid
UTF-8 is percent-encoded. Hard and symbolic link members resolve to their
target inside the tar: samples that hold a link are labelled after the shard's other samples,
once a second pass over the stream has read their targets.

A pass reads at most --max-shard-bytes of tar stream (after decompression); a shard that goes
on ends with a row for the rest, unread.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import posixpath
import tarfile
from collections.abc import Iterator, Mapping
from typing import BinaryIO, Protocol, cast

from fsspec.spec import AbstractFileSystem

from effnet_ray.inputs.fetch import check_regular
from effnet_ray.inputs.listing import IMAGE_EXTENSIONS, suffix
from effnet_ray.inputs.samples import (
    SEPARATOR,
    ReadTask,
    Sample,
    ShardTooLarge,
    Skip,
    UniquePaths,
    too_large,
)
from effnet_ray.storage import (
    is_transient,
    open_fs,
    printable,
    redact,
    short_reason,
)

LABEL_EXTENSIONS = (".cls", ".txt")
_LINK_HOPS = 16
# What tarfile asks of the stream at once: against its 10 KiB, 64 KiB halves the CPU of
# passing data that inflates fast; more costs more, as tarfile copies its buffer every read.
_TAR_READ = 64 * 2**10


class _Readable(Protocol):
    def read1(self, size: int, /) -> bytes: ...


class _Unread(io.RawIOBase):
    """`f` with `head`, already read from it, put back in front."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.f.read(size)
        if size < 0:
            size = len(self.head)
        data, self.head = self.head[:size], self.head[size:]
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def _first(f: BinaryIO, size: int) -> bytes:
    """The first `size` bytes of `f` (fewer at its end): a stream's read may return only what
    has arrived."""
    head = b""
    while len(head) < size and (more := f.read(size - len(head))):
        head += more
    return head


def _decompressed(head: bytes, f: BinaryIO) -> _Readable:
    """`f`, whose first bytes were `head`, decompressed as tarfile's "r|*" would (gzip, bzip2,
    xz), by the standard library's readers."""
    raw = _Unread(head, f)
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00\x80")):
        return lzma.LZMAFile(cast(BinaryIO, raw))
    return raw


class _TarStream(io.RawIOBase):
    """A shard's tar stream as tarfile reads it (mode "r|"): decompressed here, and ended
    past `limit` bytes with ShardTooLarge.

    tarfile's own "r|*" decompresses 10 KiB of input at a time with no bound on the output,
    and keeps what it has not given out in one buffer that each 10 KiB read copies again: a
    member it skips (not wanted, or over --max-bytes) of `gzip -9`'d zeros passes at 46 MiB
    per CPU second, and one bzip2 read can inflate to gigabytes. The standard library's
    readers decompress only what a read asks for, so a skipped member passes at
    decompression speed (430 MiB per CPU second there), in memory bounded by tarfile's reads.
    """

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.inner = _decompressed(_first(f, 6), f)
        self.limit, self.passed = limit, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:  # read1: a failure past the last gzip member loses nothing read before it
            data = self.inner.read1(size)
        except gzip.BadGzipFile as exc:
            # bytes that follow the last gzip member are ignored, as tarfile and gzip -d do
            if not self.passed or not str(exc).startswith("Not a gzipped file"):
                raise
            data = b""
        self.passed += len(data)
        if self.passed > self.limit:
            raise ShardTooLarge(f"more than {self.limit} bytes of tar stream; the rest is "
                                "not read")
        return data


def _key(member_name: str) -> tuple[str, str]:
    """WebDataset: the key is the path up to the first dot of the file name."""
    folder, _, name = member_name.rpartition("/")
    stem, dot, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


class _Bad(str):
    """A member that is there but cannot be used; the string is the reason."""


def _member_value(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | _Bad:
    """A regular member's bytes, or why they cannot be used."""
    if member.size > limit:
        return _Bad(f"member {member.name} is {too_large(member.size, limit)}")
    data = tar.extractfile(member)
    if data is None:  # only regular members (and hard links to them) have data
        return _Bad(f"member {member.name} is not a regular file")
    return data.read()


def _link_target(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return posixpath.normpath(member.linkname)
    folder = posixpath.dirname(member.name)
    return posixpath.normpath(posixpath.join(folder, member.linkname).lstrip("/"))


class _Stream:
    """One pass over a shard's members: consecutive members with one key form a sample.

    Samples without links are given out as they end, in order (`regular` counts them);
    samples that hold a link wait, as their key and member names, for the second pass.
    """

    key: str | None
    members: dict[str, bytes | _Bad | None]  # {ext: the bytes, why not usable, None: not read}
    names: dict[str, str]  # {ext: archive name}
    has_link: bool

    def __init__(self, shard: str, size: int | None, version: str | None, skip: Skip,
                 limit: int) -> None:
        self.shard, self.size, self.version, self.skip, self.limit = (shard, size, version,
                                                                     skip, limit)
        self.unique = UniquePaths()
        self.regular = 0
        self.deferred: list[tuple[str, dict[str, str]]] = []  # (key, {ext: archive name})
        self.links: dict[str, str] = {}
        self._start(None)

    def _start(self, key: str | None) -> None:
        self.key, self.members, self.names, self.has_link = key, {}, {}, False

    def path(self, key: str) -> str:
        return self.unique(f"{self.shard}{SEPARATOR}{printable(key, local=False)}")

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[Sample | None]:
        """Take one member; yields the sample it ends, if any."""
        if member.isdir():
            return
        key, ext = _key(member.name)
        if key != self.key or ext in self.names:
            yield from self.end()
            self._start(key)
        self.names[ext] = member.name
        if member.issym() or member.islnk():
            self.links[member.name] = _link_target(member)
            self.has_link = True
        elif not member.isfile():
            self.members[ext] = _Bad(f"member {member.name} is not a regular file")
        else:
            read = not self.has_link and not self.skip(self.regular)
            # a member too large says so even when it is not read
            self.members[ext] = (_member_value(tar, member, self.limit)
                                 if read or member.size > self.limit else None)

    def end(self) -> Iterator[Sample | None]:
        """The sample being gathered is complete."""
        if self.key is None:
            return
        if self.has_link:
            self.deferred.append((self.key, dict(self.names)))
            return
        path = self.path(self.key)
        yield None if self.skip(self.regular) else _sample_from(path, self.members, self.size,
                                                                self.version)
        self.regular += 1

    def broken(self, reason: str, stopped: str = "unreadable shard") -> Iterator[Sample]:
        """The stream failed or passed --max-shard-bytes: what was gathered, the samples
        waiting on links, and a row for the shard saying where it stopped."""
        if self.key is not None and not self.has_link:
            if self.members:
                yield _sample_from(self.path(self.key), self.members, self.size, self.version)
            else:
                yield Sample(self.unique(f"{self.shard}{SEPARATOR}{self.key}"),
                             error=f"truncated shard ({reason})")
        for key, _ in self.deferred:
            yield Sample(self.path(key), error=f"link target not read: {stopped} ({reason})")
        yield Sample(self.shard,
                     error=f"{stopped} after {self.key or 'its start'} ({reason})")


def tar_samples(uri: str, size: int | None, version: str | None, task: ReadTask,
                skip: Skip) -> Iterator[Sample | None]:
    """Stream a WebDataset shard: consecutive members with one key form one sample."""
    stream = _Stream(printable(redact(uri)), size, version, skip, task.options.max_bytes)
    fs, path = open_fs(uri, task.storage_options)
    try:
        check_regular(fs, path)
        with fs.open(path, "rb") as f, _open_tar(f, task) as tar:
            for member in tar:
                yield from stream.add(tar, member)
            yield from stream.end()
    except ShardTooLarge as exc:
        yield from stream.broken(str(exc), exc.stopped)
        return
    except Exception as exc:  # the shard's boundary: keep what was read, say where it stopped
        if is_transient(exc, fs):
            raise
        yield from stream.broken(short_reason(exc))
        return
    if stream.deferred:
        yield from _linked_samples(fs, path, stream, task)


def _open_tar(f: BinaryIO, task: ReadTask) -> tarfile.TarFile:
    return tarfile.open(fileobj=_TarStream(f, task.options.max_shard_bytes), mode="r|",
                        bufsize=_TAR_READ)


def _resolve(name: str, links: dict[str, str]) -> str | None:
    for _ in range(_LINK_HOPS):
        if name not in links:
            return name
        name = links[name]
    return None  # a link loop


def _linked_samples(fs: AbstractFileSystem, path: str, stream: _Stream, task: ReadTask
                    ) -> Iterator[Sample | None]:
    """Second pass: read the members that samples with links need, then emit them."""
    limit, skip, links = task.options.max_bytes, stream.skip, stream.links
    todo = [(stream.regular + i, key, names) for i, (key, names) in enumerate(stream.deferred)]
    wanted = {_resolve(name, links) for index, _, names in todo if not skip(index)
              for name in names.values()} - {None}
    found: dict[str, bytes | _Bad] = {}
    problem = None
    if wanted:
        try:
            with fs.open(path, "rb") as f, _open_tar(f, task) as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        found[member.name] = _member_value(tar, member, limit)
        except Exception as exc:
            if is_transient(exc, fs):
                raise
            problem = short_reason(exc)
    for index, key, names in todo:
        item = stream.path(key)
        if skip(index):
            yield None
            continue
        members: dict[str, bytes | _Bad] = {}
        for ext, name in names.items():
            target = _resolve(name, links)
            if target in found:
                members[ext] = found[target]
            else:
                why = "a link loop" if target is None else f"no regular member {target}"
                members[ext] = _Bad(f"link {name} leads to {why}"
                                    + (f" (shard unreadable: {problem})" if problem else ""))
        yield _sample_from(item, members, stream.size, stream.version)


def _text(value: bytes | _Bad | None) -> str | None:
    if value is None or isinstance(value, _Bad):
        return None
    return value.decode("utf-8", "replace")


def _sample_from(path: str, members: Mapping[str, bytes | _Bad | None], size: int | None,
                 version: str | None) -> Sample:
    images = sorted(ext for ext in members if suffix("x" + ext) in IMAGE_EXTENSIONS)
    labels = (_text(members.get(e)) for e in LABEL_EXTENSIONS)
    label = next((text.strip() for text in labels if text is not None), None)
    found = Sample(path, source_label=label, metadata=_text(members.get(".json")), size=size,
                   version=version)
    image = members[images[0]] if images else _Bad("no image in this sample")
    if isinstance(image, _Bad):
        found.error = str(image)
    else:
        found.data = image
    return found


