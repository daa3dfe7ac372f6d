import tomllib

import pytest

from effnet_ray.errors import UserError
from effnet_ray.models.configs import configs_dir
from effnet_ray.models.registry import all_specs, get_spec, load_class_names, parse_spec


def test_both_seeds_and_the_demo_model_are_registered():
    assert {"efficientnet-b7-pytorch", "efficientnet-b7_auto_aug",
            "efficientnet-lite0"} <= set(all_specs())


def test_seed_contracts_are_the_omz_ones():
    pt = get_spec("efficientnet-b7-pytorch")
    assert (pt.input.name, pt.input.layout, pt.input.shape, pt.input.color) == (
        "data", "NCHW", (1, 3, 600, 600), "BGR")
    assert (pt.output.name, pt.output.kind, pt.output.classes) == ("prob", "logits", 1000)
    aa = get_spec("efficientnet-b7_auto_aug")
    assert (aa.input.name, aa.input.layout, aa.input.shape, aa.input.color) == (
        "sub/placeholder_port_0", "NHWC", (1, 600, 600, 3), "BGR")
    assert aa.output.name == "efficientnet-b7/model/head/dense/MatMul"
    assert pt.source.weights_sha256.startswith("076e3472")


def test_imagenet_labels():
    labels = load_class_names("imagenet_2012.txt")
    assert len(labels) == 1000
    assert labels[0] == "tench"
    assert labels[281] == "tabby" and labels[285] == "Egyptian cat"
    assert labels[967] == "espresso" and labels[968] == "cup"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model 'nope'.*efficientnet-b7-pytorch"):
        get_spec("nope")


def _raw(name):
    return tomllib.loads((configs_dir() / "models" / f"{name}.toml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["input"].update(layout="CHWN"), "layout must be"),
    (lambda d: d["input"].update(color="RGBA"), "color must be"),
    (lambda d: d["input"].update(shape=[1, 3, 600]), "is not a 1x3xHxW"),
    (lambda d: d["preprocess"].append({"op": "sharpen"}), "unknown preprocessing op"),
    (lambda d: d["preprocess"][1].update(width=599), "must end at the input size"),
    (lambda d: d["output"].update(kind="probabilities"), "only 'logits'"),
    (lambda d: d.update(colour="BGR"), "unknown keys"),
    (lambda d: d["source"].update(weights_sha256="abc"), "not a sha256"),
])
def test_invalid_contract_is_refused(mutate, message):
    data = _raw("efficientnet-b7-pytorch")
    mutate(data)
    with pytest.raises(UserError, match=message):
        parse_spec(data, "test.toml")
