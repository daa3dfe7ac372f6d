"""The two EfficientNet-B7 seeds: contracts, size and numbers of the IRs `prepare` writes."""

import openvino as ov
import pytest
import torch

from effnet_ray.models.complexity import complexity
from effnet_ray.models.ir import metadata
from effnet_ray.models.registry import get_spec
from tests.helpers import B7_SEEDS, F32_TOLERANCE, normalised
from tests.reference import (
    PlainOpenVINO,
    omz_preprocess,
    pillow_crop,
    pillow_reader,
    rel_l2,
    resize_greater,
)

pytestmark = pytest.mark.b7


@pytest.mark.parametrize("name", B7_SEEDS)
def test_ir_honours_the_omz_contract(b7_irs, name):
    spec = get_spec(name)
    model = ov.Core().read_model(b7_irs[name])
    port, out = model.inputs[0], model.outputs[0]
    assert spec.input.name in port.get_names()
    assert tuple(port.get_shape()) == spec.input.shape
    assert port.get_element_type() == ov.Type.f32
    assert str(port.get_node().get_layout()) == f"[{','.join(spec.input.layout)}]"
    assert spec.output.name in out.get_names()
    assert tuple(out.get_shape()) == (1, 1000)
    meta = metadata(model)
    assert meta["random_weights"] is True and meta["seed"] == 0
    assert meta["input"] == {"layout": spec.input.layout, "color": spec.input.color}


@pytest.mark.parametrize("name", B7_SEEDS)
def test_parameters_and_operations_match_the_card(b7_irs, name):
    params, flops = complexity(ov.Core().read_model(b7_irs[name]))
    card = get_spec(name).card
    print(f"{name}: {params / 1e6:.3f} MParams (card {card.mparams}), "
          f"{flops / 1e9:.3f} GFLOPs (card {card.gflops})")
    assert abs(params / 1e6 - card.mparams) / card.mparams < 0.01
    assert abs(flops / 1e9 - card.gflops) / card.gflops < 0.03


@pytest.fixture(scope="module")
def torch_logits(b7_net, odd_photos):
    """PyTorch's logits per (model, photo), fed RGB normalised by hand, not by the IR."""
    spec = get_spec("efficientnet-b7-pytorch")
    out = {}
    for name in B7_SEEDS:
        for photo in ("wide.jpg", "tall.jpg", "gray.png"):
            rgb = omz_preprocess(odd_photos / photo, name)
            with torch.no_grad():
                out[name, photo] = b7_net(normalised(rgb, spec)).numpy()[0]
    return out


@pytest.mark.parametrize("name", B7_SEEDS)
def test_ir_equals_its_pytorch_source(b7_irs, torch_logits, odd_photos, name):
    plain = PlainOpenVINO(b7_irs[name])
    for photo in ("wide.jpg", "tall.jpg", "gray.png"):
        got = plain.logits(omz_preprocess(odd_photos / photo, name), "BGR")
        assert rel_l2(got, torch_logits[name, photo]) < F32_TOLERANCE, photo


def test_random_logits_depend_on_the_picture(torch_logits):
    values = [v for (name, _), v in torch_logits.items() if name == B7_SEEDS[0]]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert rel_l2(values[i], values[j]) > 0.01


def test_tolerance_is_far_below_a_one_pixel_crop_shift(b7_irs, odd_photos):
    plain = PlainOpenVINO(b7_irs["efficientnet-b7-pytorch"])
    resized = resize_greater(pillow_reader(odd_photos / "tall.jpg"), 632)
    centred = pillow_crop(resized, 600, 600)
    height, width = resized.shape[:2]
    top, left = int(round((height - 600) / 2.0)), int(round((width - 600) / 2.0))
    shifted = resized[top + 1:top + 601, left:left + 600]  # the same window, one row lower
    change = rel_l2(plain.logits(shifted, "BGR"), plain.logits(centred, "BGR"))
    print(f"one-pixel shift changes the logits by {change:.2e}")
    assert change > 20 * F32_TOLERANCE
