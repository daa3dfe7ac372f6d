"""`--decode fast` against exact decoding: what it changes in the image and in the logits,
on the bundled photos and on camera-size variants of them, for every contract; and large
images in every format decoding within the pixel limit and the memory a decoding slot
reserves."""

import io
import json
import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
from PIL import Image

from effnet_ray.inputs.preprocessing import (
    decode,
    preprocess_bytes,
    shrinks_when_fast,
    smallest_scale,
)
from effnet_ray.models.registry import PHOTOS, get_spec
from effnet_ray.options import MAX_PIXELS, ReadOptions
from effnet_ray.run.inference import with_contract_input
from effnet_ray.run.job import DECODE_BYTES_PER_PIXEL
from tests.helpers import B7_SEEDS

CONTRACTS = ["efficientnet-lite0", *B7_SEEDS]
# benchmarks/bench_decode_fast.py, OpenVINO at f32 (AMD EPYC): fast against exact, Lite0's
# logits 0.023-0.063 (median) and 0.092 (worst) relative L2 apart on 12 and 48 MP photos,
# where the default precision (bf16) alone moves them 0.041 (median) and 0.075 from f32. B7
# with random weights magnifies every pixel change: fast moves its logits 0.13-0.16
# (median), 0.59 at worst, and bf16 alone 0.05-0.06, 0.16 at worst. The bounds leave room
# for other photos.
RELATIVE_L2 = {"efficientnet-lite0": 0.15, "efficientnet-b7-pytorch": 0.8,
               "efficientnet-b7_auto_aug": 0.8}


def _photos() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir())
            if p.suffix in (".jpg", ".png")]


def _jpeg(image: Image.Image, size: tuple[int, int] | None = None, grain: bool = False,
          seed: int = 0) -> bytes:
    if size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    if grain:
        noise = np.random.default_rng(seed).normal(0, 8, (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def camera_photos():
    """The bundled photos as 12 MP JPEGs, smooth (understating the change) and with grain
    (overstating it)."""
    return [_jpeg(im, (4032, 3024), grain, i) for i, im in enumerate(_photos())
            for grain in (False, True)]


def test_exact_is_the_default():
    data = (PHOTOS / "chelsea.jpg").read_bytes()
    spec = get_spec("efficientnet-lite0")
    assert ReadOptions().decode == "exact"
    assert np.array_equal(preprocess_bytes(data, spec), preprocess_bytes(data, spec,
                                                                         decoding="exact"))


@pytest.mark.parametrize("model", CONTRACTS)
def test_photos_of_the_models_own_size_decode_the_same_either_way(model):
    """Below twice the first resize's size nothing is scaled: fast is exact, to the bit.
    (Lite0 keeps 256 pixels of the short side: the 1000x872 photo is scaled for it.)"""
    spec = get_spec(model)
    same = 0
    for path in sorted(PHOTOS.iterdir()):
        data = path.read_bytes()
        if path.suffix not in (".jpg", ".png") or shrinks_when_fast(data, spec):
            continue
        assert np.array_equal(preprocess_bytes(data, spec, decoding="fast"),
                              preprocess_bytes(data, spec)), path.name
        same += 1
    assert same >= 6


@pytest.mark.parametrize("model", CONTRACTS)
@pytest.mark.parametrize("size", [(4032, 3024), (3024, 4032), (8000, 6000), (1600, 1200),
                                  (9000, 700)])
def test_a_fast_decode_is_never_smaller_than_the_first_resize_keeps(model, size):
    spec = get_spec(model)
    data = _jpeg(Image.new("RGB", size, (90, 120, 150)))
    decoded = decode(data, MAX_PIXELS, reduce_for=spec)
    needed = smallest_scale(spec.preprocess, *size)
    assert decoded.width >= size[0] * needed - 1 and decoded.height >= size[1] * needed - 1
    if needed <= 0.5:
        assert decoded.width * decoded.height <= size[0] * size[1] / 4 + size[0] + size[1]


@pytest.mark.parametrize("model", CONTRACTS)
@pytest.mark.parametrize("size", [(4032, 3024), (8000, 6000), (1600, 1200), (500, 375)])
def test_the_summary_counts_as_large_the_jpegs_that_fast_decoding_shrinks(model, size):
    """What the summary's hint counts is what `decode` then does: the header alone says it."""
    spec = get_spec(model)
    image = Image.new("RGB", size, (90, 120, 150))
    data = _jpeg(image)
    shrunk = decode(data, MAX_PIXELS, reduce_for=spec).size != size
    assert shrinks_when_fast(data, spec) == shrunk
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert not shrinks_when_fast(png.getvalue(), spec)  # no DCT scaling for PNG
    assert not shrinks_when_fast(data[:20], spec)  # a header cut short: no, and no raise
    assert not shrinks_when_fast(b"", spec)


def _relative_l2(compiled: ov.CompiledModel, spec: object, data: bytes) -> tuple[float, bool]:
    exact = compiled({0: preprocess_bytes(data, spec)[None]})[0][0].astype(np.float64)
    fast = compiled({0: preprocess_bytes(data, spec, decoding="fast")[None]})[0][0]
    return (float(np.linalg.norm(fast - exact) / np.linalg.norm(exact)),
            bool(np.argmax(fast) == np.argmax(exact)))


def _compiled(path, spec) -> ov.CompiledModel:
    core = ov.Core()
    return core.compile_model(with_contract_input(core.read_model(path), spec), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})


def test_fast_logits_of_camera_photos_stay_within_the_measured_tolerance(lite0_ir,
                                                                          camera_photos):
    spec = get_spec("efficientnet-lite0")
    compiled = _compiled(lite0_ir, spec)
    bundled = [p.read_bytes() for p in sorted(PHOTOS.iterdir()) if p.suffix == ".jpg"]
    results = [_relative_l2(compiled, spec, data) for data in camera_photos + bundled]
    assert max(d for d, _ in results) < RELATIVE_L2["efficientnet-lite0"]
    assert sum(same for _, same in results) >= len(results) - 2


@pytest.mark.b7
@pytest.mark.parametrize("model", B7_SEEDS)
def test_fast_b7_logits_of_camera_photos_stay_within_the_measured_tolerance(b7_irs, model,
                                                                            camera_photos):
    spec = get_spec(model)
    compiled = _compiled(b7_irs[model], spec)
    distances = [_relative_l2(compiled, spec, data)[0] for data in camera_photos[:4]]
    assert max(distances) < RELATIVE_L2[model]


_PEAK = """
import sys, json
from effnet_ray.inputs.preprocessing import preprocess_bytes
from effnet_ray.models.registry import get_spec
from effnet_ray.options import MAX_PIXELS

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

import io
from PIL import Image

spec = get_spec("efficientnet-b7-pytorch")
small = io.BytesIO()
Image.new("RGB", (700, 700), (9, 99, 199)).save(small, format="JPEG")
preprocess_bytes(small.getvalue(), spec, MAX_PIXELS, "exact")  # first-use allocations
data = open(sys.argv[1], "rb").read()
before = hwm()
image = preprocess_bytes(data, spec, MAX_PIXELS, sys.argv[2])
print(json.dumps({"before": before, "after": hwm(), "shape": list(image.shape)}))
"""


def _made(kind: str, size: tuple[int, int]) -> tuple[bytes, int]:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    waves = (127 + 60 * np.sin(x / 37.0) + 60 * np.cos(y / 23.0)).astype(np.uint8)
    buf = io.BytesIO()
    if kind == "tiff16":
        Image.fromarray(waves.astype(np.uint16) * 257).save(buf, format="TIFF")
    else:
        rgb = np.stack([waves, waves[::-1], np.roll(waves, 50, axis=1)], axis=-1)
        Image.fromarray(rgb).save(buf, format="JPEG" if kind == "jpeg" else "PNG",
                                  **({"quality": 90} if kind == "jpeg" else {"compress_level": 1}))
    return buf.getvalue(), width * height


@pytest.mark.parametrize("kind, decoding", [("jpeg", "exact"), ("jpeg", "fast"),
                                            ("png", "fast"), ("tiff16", "exact")])
def test_a_48_megapixel_image_decodes_within_the_memory_a_decoding_slot_reserves(
        tmp_path, kind, decoding):
    """PNG and TIFF have no scaled decoding: fast and exact cost them the same memory."""
    data, pixels = _made(kind, (8000, 6000))
    path = tmp_path / f"big.{kind}"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), decoding],
                         capture_output=True, text=True, check=True).stdout
    peak = json.loads(out)
    assert peak["shape"] == [600, 600, 3]
    grew = peak["after"] - peak["before"]
    assert grew <= DECODE_BYTES_PER_PIXEL * pixels + len(data), grew / pixels
