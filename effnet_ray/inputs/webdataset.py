"""Shards -> samples: WebDataset tar streams (also gzip'd) and Parquet files of image bytes.

Paths are `SHARD::KEY` (tar) and `SHARD::ID` (Parquet), unique within a shard by
construction: a key or id seen before in the shard (a duplicate key, two members of one name,
a repeated id) gets `#2`, `#3`... in the order met; a null id is the row number; a tar key
that is not valid UTF-8 is percent-encoded. Hard and symbolic link members resolve to their
target inside the tar: samples that hold a link are labelled after the shard's other samples,
once a second pass over the stream has read their targets.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator

from effnet_ray.inputs.fetch import check_regular
from effnet_ray.inputs.listing import IMAGE_EXTENSIONS, suffix
from effnet_ray.inputs.samples import SEPARATOR, ReadTask, Sample, Skip, UniquePaths, too_large
from effnet_ray.storage import (
    is_transient,
    open_fs,
    printable,
    redact,
    short_reason,
)

LABEL_EXTENSIONS = (".cls", ".txt")
_LINK_HOPS = 16


def _key(member_name: str) -> tuple[str, str]:
    """WebDataset: the key is the path up to the first dot of the file name."""
    folder, _, name = member_name.rpartition("/")
    stem, dot, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


class _Bad(str):
    """A member that is there but cannot be used; the string is the reason."""


def _member_value(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int,
                  read: bool) -> bytes | _Bad | None:
    if member.size > limit:
        return _Bad(f"member {member.name} is {too_large(member.size, limit)}")
    if not read:
        return None
    return tar.extractfile(member).read()


def _link_target(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return posixpath.normpath(member.linkname)
    folder = posixpath.dirname(member.name)
    return posixpath.normpath(posixpath.join(folder, member.linkname).lstrip("/"))


def tar_samples(uri: str, size: int | None, version: str | None, task: ReadTask,
                skip: Skip) -> Iterator[Sample | None]:
    """Stream a WebDataset shard: consecutive members with one key form one sample."""
    shard = printable(redact(uri))
    limit = task.options.max_bytes
    unique = UniquePaths()
    fs, path = open_fs(uri, task.storage_options)
    regular = 0  # samples emitted in order, without links
    deferred: list[tuple[str, dict]] = []  # (key, {ext: archive name}) of samples with links
    links: dict[str, str] = {}
    key, members, names, has_link = None, {}, {}, False

    def sample(key: str, members: dict, index: int | None) -> Sample | None:
        item = unique(f"{shard}{SEPARATOR}{printable(key, local=False)}")
        if index is not None and skip(index):
            return None
        return _sample_from(item, members, size, version)

    def emit() -> Iterator[Sample | None]:
        nonlocal regular
        if key is None:
            return
        if has_link:
            deferred.append((key, dict(names)))
            return
        yield sample(key, members, regular)
        regular += 1

    try:
        check_regular(fs, path)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                member_key, ext = _key(member.name)
                if member_key != key or ext in names:
                    yield from emit()
                    key, members, names, has_link = member_key, {}, {}, False
                names[ext] = member.name
                if member.issym() or member.islnk():
                    links[member.name] = _link_target(member)
                    has_link = True
                elif not member.isfile():
                    members[ext] = _Bad(f"member {member.name} is not a regular file")
                else:
                    members[ext] = _member_value(tar, member, limit,
                                                 read=not has_link and not skip(regular))
            yield from emit()
    except Exception as exc:  # the shard's boundary: keep what was read, say where it stopped
        if is_transient(exc, fs):
            raise
        reason = short_reason(exc)
        if key is not None and not has_link:
            if members:
                yield sample(key, members, None)
            else:
                yield Sample(unique(f"{shard}{SEPARATOR}{key}"),
                             error=f"truncated shard ({reason})")
        for dkey, _ in deferred:
            yield Sample(unique(f"{shard}{SEPARATOR}{printable(dkey, local=False)}"),
                         error=f"link target not read: the shard is unreadable ({reason})")
        yield Sample(shard, error=f"unreadable shard after {key or 'its start'} ({reason})")
        return
    if deferred:
        yield from _linked_samples(fs, path, shard, deferred, links, task, skip, regular,
                                   unique, size, version)


def _resolve(name: str, links: dict[str, str]) -> str | None:
    for _ in range(_LINK_HOPS):
        if name not in links:
            return name
        name = links[name]
    return None  # a link loop


def _linked_samples(fs: object, path: str, shard: str, deferred: list, links: dict,
                    task: ReadTask, skip: Skip, first: int, unique: UniquePaths,
                    size: int | None, version: str | None) -> Iterator[Sample | None]:
    """Second pass: read the members that samples with links need, then emit them."""
    limit = task.options.max_bytes
    todo = [(first + i, key, names) for i, (key, names) in enumerate(deferred)]
    wanted = {_resolve(name, links) for index, _, names in todo if not skip(index)
              for name in names.values()} - {None}
    found: dict[str, bytes | _Bad] = {}
    problem = None
    if wanted:
        try:
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        found[member.name] = _member_value(tar, member, limit, read=True)
        except Exception as exc:
            if is_transient(exc, fs):
                raise
            problem = short_reason(exc)
    for index, key, names in todo:
        item = unique(f"{shard}{SEPARATOR}{printable(key, local=False)}")
        if skip(index):
            yield None
            continue
        members = {}
        for ext, name in names.items():
            target = _resolve(name, links)
            if target in found:
                members[ext] = found[target]
            else:
                why = "a link loop" if target is None else f"no regular member {target}"
                members[ext] = _Bad(f"link {name} leads to {why}"
                                    + (f" (shard unreadable: {problem})" if problem else ""))
        yield _sample_from(item, members, size, version)


def _text(value: bytes | _Bad | None) -> str | None:
    if value is None or isinstance(value, _Bad):
        return None
    return value.decode("utf-8", "replace")


def _sample_from(path: str, members: dict, size: int | None, version: str | None) -> Sample:
    images = sorted(ext for ext in members if suffix("x" + ext) in IMAGE_EXTENSIONS)
    label = next((_text(members[e]).strip() for e in LABEL_EXTENSIONS
                  if _text(members.get(e)) is not None), None)
    found = Sample(path, source_label=label, metadata=_text(members.get(".json")), size=size,
                   version=version)
    if not images:
        found.error = "no image in this sample"
    elif isinstance(members[images[0]], _Bad):
        found.error = str(members[images[0]])
    else:
        found.data = members[images[0]]
    return found


