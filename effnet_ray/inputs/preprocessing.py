"""Image bytes -> the fixed-size uint8 RGB array a model's contract asks for.

`exact` decoding reproduces OMZ's accuracy-check arithmetic (resize.py, crop.py) to the bit,
because a one-pixel offset of the crop changes B7's logits by 2e-3 or more. `fast` decoding
spends less CPU on large photos: a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
domain (libjpeg's scaled IDCT), never below the size the contract's first resize shrinks it
to, and a resize that still shrinks by more than `REDUCING_GAP` first reduces by a whole
factor (a box filter), then resamples as the contract says (docs/performance.md: what each
costs and changes). The result is always HxWx3 uint8 RGB; layout, colour order and float
conversion happen inside the compiled model.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from effnet_ray.inputs.samples import ImageError
from effnet_ray.models.registry import ModelSpec, Step
from effnet_ray.options import MAX_PIXELS

# Pillow: with a gap of 3 or more the two-step resize is "indistinguishable from fair
# resampling in most cases"; the measured effect on logits is in docs/performance.md.
REDUCING_GAP = 3.0
T = TypeVar("T")
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_CONVERTIBLE = {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr"}
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode(data: bytes, max_pixels: int = MAX_PIXELS, reduce_for: ModelSpec | None = None
           ) -> Image.Image:
    """Decode to 8-bit RGB, upright as the camera's EXIF orientation says; with `reduce_for`,
    a JPEG as small as that contract's first resize allows (`fast` decoding).

    The pixel count is checked on the header, before any pixel is decoded, so a
    decompression bomb costs nothing. Pillow's own process-wide limit is left as it is (a
    library must not change it for its caller); its warning is silenced here, where our
    limit applies, and its hard error (twice its limit, the most `--max-pixels` allows)
    reads as ours. Orientation is applied because a sideways photo costs
    accuracy; OMZ's OpenCV reader does the same (its Pillow reader does not, which matters
    only for photos carrying the tag). Animated images give their first frame. Alpha is
    dropped, not composited, as `Image.convert('RGB')` in OMZ's reader does.
    """
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"too many pixels ({width}x{height} > {max_pixels})")
        if reduce_for is not None:
            scale = smallest_scale(reduce_for.preprocess, width, height)
            if scale <= 0.5:  # DCT scaling halves at least
                image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy of an image without the tag
        return _to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"too many pixels (over {max_pixels})") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageError(f"undecodable image ({exc})") from None


def shrinks_when_fast(data: bytes, spec: ModelSpec) -> bool:
    """Whether `fast` decoding would decode this image smaller: a JPEG whose header says it
    is large enough for DCT scaling. Reads the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format == "JPEG" and \
                    smallest_scale(spec.preprocess, *image.size) <= 0.5
    except Exception:  # not an image the header parser knows: decoding will say why
        return False


def _to_rgb(image: Image.Image) -> Image.Image:
    """16-bit images are scaled to 8 bits (Pillow's own conversion would clip them white)."""
    if image.mode in _SIXTEEN_BIT:  # in place: a 16-bit image costs 4 more bytes a pixel
        wide = np.asarray(image, dtype=np.uint32)
        np.minimum(wide, 65535, out=wide)
        wide //= 257
        image = Image.fromarray(wide.astype(np.uint8), "L")
        del wide
    if image.mode not in _CONVERTIBLE:
        raise ImageError(f"unsupported mode {image.mode}")
    # convert() of an RGB image is a whole copy: 48 MB and ~10 ms for a 12 MP photo
    return image if image.mode == "RGB" else image.convert("RGB")


def _given(value: T | None, step: Step) -> T:
    """A field the step's op needs: there, since contracts are validated on load."""
    if value is None:
        raise ValueError(f"preprocessing step {step.op} lacks a field its op needs")
    return value


def smallest_scale(steps: tuple[Step, ...], width: int, height: int) -> float:
    """The smallest fraction of a `width`x`height` image at which every resize of `steps`
    still shrinks it (or keeps its size), whichever way up the photo turns out to be: decoding
    that small changes only detail the resize discards. 1.0 where a crop of whole pixels
    comes first."""
    def upright(w: int, h: int) -> float:
        kept = 1.0  # what the fraction crops before the first resize keep of each side
        for step in steps:
            if step.op == "central_fraction_crop":
                kept *= _given(step.fraction, step)
            elif step.op == "resize_short_side":
                return _given(step.size, step) / (min(w, h) * kept)
            elif step.op == "resize":
                return max(_given(step.width, step) / (w * kept),
                           _given(step.height, step) / (h * kept))
            else:
                return 1.0
        return 1.0

    return min(1.0, max(upright(width, height), upright(height, width)))


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


def _resize(image: Image.Image, size: tuple[int, int], step: Step, max_pixels: int,
            fast: bool) -> Image.Image:
    """Refuse a resize whose result alone would exceed the pixel limit: a 1x8000 image
    resized to a short side of 256 would be 256 x 2,048,000."""
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"too many pixels after resizing {image.size[0]}x{image.size[1]} "
                         f"to {size[0]}x{size[1]} (> {max_pixels})")
    return image.resize(size, _RESAMPLE[step.interpolation],
                        reducing_gap=REDUCING_GAP if fast else None)


def apply_step(image: Image.Image, step: Step, max_pixels: int = MAX_PIXELS,
               fast: bool = False) -> Image.Image:
    width, height = image.size
    if step.op == "resize_short_side":
        size = short_side_size(width, height, _given(step.size, step))
        return _resize(image, size, step, max_pixels, fast)
    if step.op == "resize":
        size = (_given(step.width, step), _given(step.height, step))
        return _resize(image, size, step, max_pixels, fast)
    if step.op == "center_crop":
        box = centered_box(width, height, _given(step.width, step), _given(step.height, step))
        return image.crop(box)
    if step.op == "central_fraction_crop":
        # max(1, ...) keeps 1-pixel images usable where OMZ would produce an empty crop.
        fraction = _given(step.fraction, step)
        crop_w = max(1, int(width * fraction))
        crop_h = max(1, int(height * fraction))
        return image.crop(centered_box(width, height, crop_w, crop_h))
    raise ValueError(f"unknown preprocessing op {step.op}")


def preprocess_image(image: Image.Image, spec: ModelSpec, max_pixels: int = MAX_PIXELS,
                     fast: bool = False) -> np.ndarray:
    for step in spec.preprocess:
        image = apply_step(image, step, max_pixels, fast)
    array = np.asarray(image, dtype=np.uint8)
    expected = (spec.input.height, spec.input.width, 3)
    if array.shape != expected:
        raise ImageError(f"preprocessing gave {array.shape}, expected {expected}")
    return array


def preprocess_bytes(data: bytes, spec: ModelSpec, max_pixels: int = MAX_PIXELS,
                     decoding: str = "exact") -> np.ndarray:
    """`decoding`: one of options.DECODES (see this module's docstring)."""
    fast = decoding == "fast"
    return preprocess_image(decode(data, max_pixels, spec if fast else None), spec, max_pixels,
                            fast)
