"""`label --embeddings`: the pooled features that feed the classifier, equal to a plain
single-process OpenVINO run of the same IR with that node added as an output."""

import json

import numpy as np
import openvino as ov
import pyarrow.dataset as pads
import pytest

from effnet_ray.models.registry import get_spec
from tests.helpers import B7_SEEDS, F32_TOLERANCE, one_line_error, run_cli
from tests.reference import omz_preprocess, rel_l2, to_ir_input

PHOTO_NAMES = ["wide.jpg", "tall.jpg", "small.png", "gray.png", "rgba.png"]


class PlainWithFeatures:
    """One process, f32, with the input of the 1000-way matrix multiply as a second output
    (found here by its shape, independently of how the product finds it)."""

    def __init__(self, xml):
        model = ov.Core().read_model(str(xml))
        classifier = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
                      and list(op.get_output_partial_shape(0).to_shape()) == [1, 1000]]
        assert len(classifier) == 1
        model.add_outputs([classifier[0].input_value(0)])
        self.compiled = ov.Core().compile_model(model, "CPU",
                                                {"INFERENCE_PRECISION_HINT": "f32"})
        shape = tuple(self.compiled.inputs[0].get_shape())
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"

    def __call__(self, rgb, color):
        out = self.compiled(to_ir_input(rgb, self.layout, color))
        return out[0][0], np.asarray(out[1]).reshape(-1)


def check(out, ir, name, size):
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    plain = PlainWithFeatures(ir)
    color = get_spec(name).input.color
    for row in rows:
        assert row["error"] is None
        logits, features = plain(omz_preprocess(row["path"], name), color)
        assert len(row["embedding"]) == size == len(features)
        assert rel_l2(row["embedding"], features) < F32_TOLERANCE, row["path"]
        assert rel_l2(row["logits"], logits) < F32_TOLERANCE, row["path"]


def test_lite0_embeddings_equal_plain_openvino(lite0_ir, odd_photos, tmp_path):
    out = tmp_path / "out"
    result = run_cli("label", *[odd_photos / p for p in PHOTO_NAMES], "--output", out,
                     "--model", "efficientnet-lite0", "--model-path", lite0_ir, "--precision",
                     "f32", "--embeddings", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    check(out, lite0_ir, "efficientnet-lite0", 1280)
    identity = json.loads((out / "_manifest.json").read_text())["identity"]
    assert identity["embeddings"] is True and identity["no_logits"] is False
    again = run_cli("label", *[odd_photos / p for p in PHOTO_NAMES], "--output", out,
                    "--model", "efficientnet-lite0", "--model-path", lite0_ir, "--precision",
                    "f32", "--batch-size", "2")
    one_line_error(again, "made differently", "embeddings")


def test_no_logits_leaves_the_column_out(lite0_ir, odd_photos, tmp_path):
    out = tmp_path / "out"
    result = run_cli("label", odd_photos / "wide.jpg", "--output", out, "--model",
                     "efficientnet-lite0", "--model-path", lite0_ir, "--no-logits",
                     "--embeddings")
    assert result.returncode == 0, result.stderr
    table = pads.dataset(str(out), format="parquet").to_table()
    assert "logits" not in table.column_names and "embedding" in table.column_names
    assert table.column("top_k_ids")[0].as_py()  # the labels are still there


@pytest.mark.b7
@pytest.mark.parametrize("name", B7_SEEDS)
def test_b7_embeddings_equal_plain_openvino(b7_irs, odd_photos, tmp_path, name):
    out = tmp_path / "out"
    result = run_cli("label", *[odd_photos / p for p in PHOTO_NAMES[:3]], "--output", out,
                     "--model", name, "--model-path", b7_irs[name], "--precision", "f32",
                     "--embeddings", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    check(out, b7_irs[name], name, 2560)
