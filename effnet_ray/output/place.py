"""The output folder as a place: where it may be, what in it is ours, and starting over.

The output is the only place this tool deletes anything, and there only what it wrote: its
part files, its manifest, its lease and its temporary files. An output that is, or holds, an
input is refused; an output inside an input folder is fine (listing passes over it).
"""

from __future__ import annotations

import os

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import is_glob
from effnet_ray.output.layout import LEASE, is_ours
from effnet_ray.storage import (
    display,
    is_local,
    is_read_only,
    named_errors,
    names_in,
    open_fs,
    protocols,
    redact,
)

# Object stores whose first path segment is a bucket (or container) that must exist.
BUCKET_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def _normal(fs: AbstractFileSystem, path: str) -> str:
    """A comparable name: links resolved on local disks, no trailing slash."""
    path = os.path.realpath(path) if is_local(fs) else display(fs, path)
    return path.rstrip("/") or "/"


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_existing(fs: AbstractFileSystem, path: str, shown: str) -> None:
    """Refuse an output that a command reads or rewrites if it is missing or not a folder."""
    if not fs.exists(path):
        raise UserError(f"{shown} does not exist")
    if not fs.isdir(path):
        raise UserError(f"{shown} is not an output folder")


def check_place(output: str, inputs: tuple[str, ...], storage_options: dict
                ) -> tuple[AbstractFileSystem, str]:
    """The output's filesystem and path, once it is known not to be a file, a read-only
    store, an input or a folder holding an input."""
    fs, path = open_fs(output, storage_options)
    shown = redact(output)
    if is_read_only(fs):
        raise UserError(f"output {shown}: http(s) stores are read-only")
    with named_errors(output):
        if fs.isfile(path):
            raise UserError(f"output {shown} exists and is not a folder")
        bucket = path.split("/", 1)[0]
        if set(protocols(fs)) & BUCKET_STORES:
            try:  # info, not exists: exists answers False for any error, denial included
                fs.info(bucket)
            except FileNotFoundError:
                raise UserError(f"output {shown}: bucket {bucket} does not exist; create it "
                                "first (effnet-ray never creates buckets)") from None
    out = _normal(fs, path)
    for item in inputs:
        in_fs, in_path = open_fs(item, storage_options)
        if type(in_fs) is not type(fs):
            continue
        if is_glob(item) and not (os.path.lexists(in_path) if is_local(in_fs) else False):
            in_path = in_path[:min(in_path.index(c) for c in "*?[" if c in in_path)]
            in_path = in_path.rsplit("/", 1)[0] or "/"
        if _within(_normal(in_fs, in_path), out):
            raise UserError(f"output {shown} is or holds the input {redact(item)}; results "
                            "go into a folder of their own (it may be inside an input folder)")
    return fs, path


def clear(fs: AbstractFileSystem, path: str) -> int:
    """--overwrite: delete what this tool wrote, after checking that nothing else is there
    (a folder of other files is someone's data, not an old run). Returns files deleted."""
    where = display(fs, path)
    with named_errors(where):
        names = names_in(fs, path)
        foreign = sorted(n for n in names if not is_ours(n))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                              if len(foreign) > 5 else "")
            raise UserError(f"output {redact(where)} holds files this tool did not write "
                            f"({shown}); --overwrite only replaces an output of effnet-ray: "
                            "choose an empty or new folder")
        doomed = [n for n in names if n != LEASE]
        for name in doomed:
            fs.rm_file(f"{path}/{name}")
    return len(doomed)
