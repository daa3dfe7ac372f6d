"""`models quantize`: a real NNCF INT8 IR of Lite0 (real weights) calibrated on real photos,
its provenance, its accuracy guard, and `label` running it."""

import json

import numpy as np
import openvino as ov
import pytest

from effnet_ray.models.ir import ir_sha256, metadata
from effnet_ray.models.registry import PHOTOS, get_spec
from effnet_ray.prepare.quantize import contract_tensor
from tests.helpers import one_line_error, run_cli
from tests.reference import omz_preprocess

SPEC = get_spec("efficientnet-lite0")


@pytest.fixture(scope="module")
def int8(lite0_ir, many_photos, tmp_path_factory):
    dest = tmp_path_factory.mktemp("int8")
    result = run_cli("models", "quantize", "efficientnet-lite0", "--model-path", lite0_ir,
                     "--calibration", many_photos, "--subset-size", "60", "--output", dest)
    assert result.returncode == 0, result.stderr
    return dest / "model.xml", result


def test_the_ir_is_really_quantized_and_says_where_it_came_from(int8, lite0_ir):
    path, result = int8
    model = ov.Core().read_model(str(path))
    kinds = {op.get_type_name() for op in model.get_ordered_ops()}
    assert "FakeQuantize" in kinds
    meta = metadata(model)
    assert meta["precision"] == "int8" and meta["source_sha256"] == ir_sha256(lite0_ir)
    assert meta["calibration_photos"] == 60 and meta["held_out"] == 12
    assert meta["nncf"] and meta["model"] == "efficientnet-lite0"
    assert "held-out photos" in result.stdout


def test_int8_top1_equals_f32_on_the_bundled_photos_and_variants(int8, lite0_ir, many_photos,
                                                                   odd_photos):
    path, _ = int8
    core = ov.Core()
    f32 = core.compile_model(str(lite0_ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    q = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    photos = [p for p in PHOTOS.iterdir() if p.suffix != ".md"] + \
        sorted(many_photos.iterdir()) + sorted(odd_photos.iterdir())
    agree = []
    for photo in photos:
        x = contract_tensor(omz_preprocess(photo, "efficientnet-lite0"), SPEC)
        agree.append(np.argmax(f32(x)[0]) == np.argmax(q(x)[0]))
    assert np.mean(agree) >= 0.9, f"{np.mean(agree):.2%} of {len(agree)}"


def test_label_runs_the_int8_model(int8, lite0_ir, tmp_path):
    path, _ = int8
    out = tmp_path / "out"
    result = run_cli("label", PHOTOS, "--output", out, "--model", "efficientnet-lite0",
                     "--model-path", path, "--precision", "int8")
    assert result.returncode == 0, result.stderr
    identity = json.loads((out / "_manifest.json").read_text())["identity"]
    assert identity["precision"] == "int8" and identity["ir_sha256"] == ir_sha256(path)


def test_int8_without_a_quantized_model_names_the_command(tmp_path):
    result = run_cli("label", PHOTOS, "--output", tmp_path / "out", "--model",
                     "efficientnet-lite0", "--precision", "int8", "--cache-dir", tmp_path)
    one_line_error(result, "effnet-ray models quantize efficientnet-lite0")


def test_an_empty_or_unreadable_calibration_set_is_one_line(lite0_ir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"not a photo")
    one_line_error(run_cli("models", "quantize", "efficientnet-lite0", "--model-path",
                           lite0_ir, "--calibration", empty, "--output", tmp_path / "q"),
                   "no usable calibration photo")
    one_line_error(run_cli("models", "quantize", "efficientnet-lite0", "--model-path",
                           lite0_ir, "--calibration", broken, "--output", tmp_path / "q"),
                   "no usable calibration photo", "3 unreadable")
    assert not (tmp_path / "q").exists()


def test_the_guard_refuses_a_model_that_disagrees(lite0_ir, many_photos, tmp_path):
    """Calibrated on black frames only, INT8 Lite0 cannot label photos: the held-out photos
    (every fifth input, in name order) show it and nothing is written."""
    from PIL import Image

    folder = tmp_path / "calibration"
    folder.mkdir()
    photos = sorted(many_photos.iterdir())
    for i in range(25):
        name = folder / f"{i:02d}.jpg"
        if i % 5 == 0:
            name.write_bytes(photos[i].read_bytes())
        else:
            Image.new("RGB", (300, 300)).save(name)
    result = run_cli("models", "quantize", "efficientnet-lite0", "--model-path", lite0_ir,
                     "--calibration", folder, "--subset-size", "20", "--output", tmp_path / "q")
    one_line_error(result, "agrees with", "below --min-agreement 90%", "nothing was written")
    assert not (tmp_path / "q").exists()
    bad = run_cli("models", "quantize", "efficientnet-lite0", "--model-path", lite0_ir,
                  "--calibration", folder, "--min-agreement", "1.5", "--output", tmp_path / "q")
    one_line_error(bad, "--min-agreement must be between 0 and 1")
