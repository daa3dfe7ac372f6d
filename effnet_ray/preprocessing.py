"""Image bytes -> the fixed-size uint8 RGB array a model's contract asks for.

Every step reproduces OMZ's accuracy-check arithmetic (resize.py, crop.py) exactly, because a
one-pixel offset of the crop changes B7's logits by 2e-3 or more. The result is always HxWx3
uint8 RGB; layout, colour order and float conversion happen inside the compiled model.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from effnet_ray.registry import ModelSpec, Step

# Larger images are refused before their pixels are decoded (Pillow reads only the header).
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(Exception):
    """An input that is not a usable image; its message is the row's `error`."""


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode to RGB, upright as the camera's EXIF orientation says.

    Orientation is applied because a sideways photo costs accuracy; OMZ's OpenCV reader does
    the same (its Pillow reader does not, which matters only for photos carrying the tag).
    Alpha is dropped, not composited, as `Image.convert('RGB')` in OMZ's reader does.
    """
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"too many pixels ({width}x{height} > {max_pixels})")
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too many pixels (decompression bomb)") from None
    except OSError as exc:
        raise ImageError(f"undecodable image ({exc})") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"undecodable image ({exc})") from None


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """OMZ resize.py `aspect_ratio_scale: greater`: short side to `size`, long side truncated."""
    if height > width:
        return size, int(size * height / width)
    return int(size * width / height), size


def centered_box(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int, int, int]:
    """OMZ crop.py with Pillow: the offset rounds half to even (Python's round), not floor."""
    left = int(round((width - crop_w) / 2.0))
    top = int(round((height - crop_h) / 2.0))
    return left, top, left + crop_w, top + crop_h


def apply_step(image: Image.Image, step: Step) -> Image.Image:
    width, height = image.size
    if step.op == "resize_short_side":
        size = short_side_size(width, height, step.size)
        return image.resize(size, _RESAMPLE[step.interpolation])
    if step.op == "resize":
        return image.resize((step.width, step.height), _RESAMPLE[step.interpolation])
    if step.op == "center_crop":
        return image.crop(centered_box(width, height, step.width, step.height))
    if step.op == "central_fraction_crop":
        # max(1, ...) keeps 1-pixel images usable where OMZ would produce an empty crop.
        crop_w = max(1, int(width * step.fraction))
        crop_h = max(1, int(height * step.fraction))
        return image.crop(centered_box(width, height, crop_w, crop_h))
    raise ValueError(f"unknown preprocessing op {step.op}")


def preprocess_image(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    for step in spec.preprocess:
        image = apply_step(image, step)
    array = np.asarray(image, dtype=np.uint8)
    expected = (spec.input.height, spec.input.width, 3)
    if array.shape != expected:
        raise ImageError(f"preprocessing gave {array.shape}, expected {expected}")
    return array


def preprocess_bytes(data: bytes, spec: ModelSpec, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return preprocess_image(decode(data, max_pixels), spec)
