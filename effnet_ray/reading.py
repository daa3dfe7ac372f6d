"""Work units -> preprocessed images: the CPU stage that runs as Ray tasks.

Each task reads and decodes the files of one unit and yields small batches, so a unit of
many images never sits in memory as one block. A file that cannot be read or decoded
yields a row with its reason and an all-zero image that inference skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from effnet_ray.preprocessing import MAX_PIXELS, ImageError, preprocess_bytes
from effnet_ray.registry import get_spec

ROWS_PER_BATCH = 16


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load(path: str, model: str, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    spec = get_spec(model)
    try:
        data = read_bytes(path)
    except OSError as exc:
        return None, f"unreadable file ({exc.strerror or exc})"
    try:
        return preprocess_bytes(data, spec, max_pixels), None
    except ImageError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "not enough memory to decode"


def read_and_preprocess(batch: dict[str, np.ndarray], *, model: str,
                        max_pixels: int = MAX_PIXELS) -> Iterator[dict[str, np.ndarray]]:
    spec = get_spec(model)
    blank = np.zeros((spec.input.height, spec.input.width, 3), dtype=np.uint8)
    for paths in batch["paths"]:
        for start in range(0, len(paths), ROWS_PER_BATCH):
            chunk = [str(p) for p in paths[start:start + ROWS_PER_BATCH]]
            images, errors = [], []
            for path in chunk:
                image, error = load(path, model, max_pixels)
                images.append(blank if image is None else image)
                errors.append(error or "")
            yield {
                "path": np.array(chunk, dtype=object),
                "image": np.stack(images),
                "error": np.array(errors, dtype=object),
            }
