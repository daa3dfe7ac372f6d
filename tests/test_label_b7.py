"""`label` with both B7 seeds writes the logits a plain single-process OpenVINO run gives."""

import pyarrow.dataset as pads
import pytest

from effnet_ray.models.registry import get_spec
from tests.helpers import B7_SEEDS, F32_TOLERANCE, run_cli
from tests.reference import PlainOpenVINO, omz_preprocess, rel_l2

pytestmark = pytest.mark.b7
ODD_PHOTOS = ["wide.jpg", "tall.jpg", "small.png", "gray.png", "rgba.png", "odd602.png"]


@pytest.mark.parametrize("name", B7_SEEDS)
def test_label_equals_plain_openvino(b7_irs, odd_photos, tmp_path, name):
    inputs = [odd_photos / p for p in ODD_PHOTOS]
    result = run_cli("label", *inputs, "--output", tmp_path / "out", "--model", name,
                     "--model-path", b7_irs[name], "--precision", "f32", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stderr  # the IR says its labels mean nothing
    rows = pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in inputs)
    plain = PlainOpenVINO(b7_irs[name])
    color = get_spec(name).input.color
    for row in rows:
        assert row["error"] is None and row["model"] == name
        expected = plain.logits(omz_preprocess(row["path"], name), color)
        assert rel_l2(row["logits"], expected) < F32_TOLERANCE, row["path"]
