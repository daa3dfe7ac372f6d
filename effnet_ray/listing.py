"""Inputs -> the list of images to label, grouped into work units.

Files with an image extension are always taken (a broken one becomes an error row); other
files in a folder are taken only when their first bytes are those of an image format.
A file named explicitly is always taken.
"""

from __future__ import annotations

import glob as globmod
from collections.abc import Iterator
from pathlib import Path

from effnet_ray.errors import UserError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
})
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGIC)


def _sniff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return looks_like_image(f.read(16))
    except OSError:
        return False


def is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _from_folder(folder: Path) -> Iterator[str]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_EXTENSIONS or _sniff(path):
            yield str(path)


def check_inputs(inputs: list[str]) -> None:
    """Fail before any work when an input names nothing."""
    if not inputs:
        raise UserError("no input given")
    for item in inputs:
        if is_glob(item):
            if not globmod.glob(item, recursive=True):
                raise UserError(f"input pattern {item} matches nothing")
        elif not Path(item).exists():
            raise UserError(f"input {item} does not exist")


def list_images(inputs: list[str]) -> list[str]:
    """Absolute paths of every image, each once, in a stable order."""
    seen: dict[str, None] = {}
    for item in inputs:
        if is_glob(item):
            matches = [Path(p) for p in sorted(globmod.glob(item, recursive=True))]
        else:
            matches = [Path(item)]
        for path in matches:
            if path.is_dir():
                seen.update(dict.fromkeys(_from_folder(path.resolve())))
            elif path.is_file():
                seen[str(path.resolve())] = None
    return list(seen)


def work_units(paths: list[str], unit_size: int) -> list[list[str]]:
    return [paths[i:i + unit_size] for i in range(0, len(paths), unit_size)]
