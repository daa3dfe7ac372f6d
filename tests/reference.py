"""An independent, literal reading of OMZ's accuracy-check steps and a plain OpenVINO run.

Written from OMZ's resize.py / crop.py (releases/2021/4), not from effnet_ray, so the
product's preprocessing and inference are compared against something they do not share.
"""

import numpy as np
import openvino as ov
from PIL import Image


def pillow_reader(path):
    return np.array(Image.open(path).convert("RGB"))


def resize_greater(data, size):
    image_h, image_w = data.shape[:2]
    if image_h > image_w:
        new_w, new_h = size, int(size * image_h / image_w)
    else:
        new_w, new_h = int(size * image_w / image_h), size
    return np.array(Image.fromarray(data).resize((new_w, new_h), Image.BICUBIC))


def resize_exact(data, width, height):
    return np.array(Image.fromarray(data).resize((width, height), Image.BICUBIC))


def pillow_crop(data, new_height, new_width):
    height, width = data.shape[:2]
    i = int(round((height - new_height) / 2.0))
    j = int(round((width - new_width) / 2.0))
    return np.array(Image.fromarray(data).crop((j, i, j + new_width, i + new_height)))


def central_fraction_crop(data, fraction):
    height, width = data.shape[:2]
    return pillow_crop(data, int(height * fraction), int(width * fraction))


def omz_preprocess(path, model):
    """RGB HxWx3 uint8 as OMZ feeds the model (before its channel reversal)."""
    data = pillow_reader(path)
    if model == "efficientnet-b7-pytorch":
        return pillow_crop(resize_greater(data, 632), 600, 600)
    if model == "efficientnet-b7_auto_aug":
        return resize_exact(central_fraction_crop(data, 0.875), 600, 600)
    if model == "efficientnet-lite0":
        return pillow_crop(resize_greater(data, 256), 224, 224)
    raise ValueError(model)


def to_ir_input(rgb, layout, color):
    x = rgb.astype(np.float32)
    if color == "BGR":
        x = x[..., ::-1]
    x = x[None]
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


class PlainOpenVINO:
    """One process, one synchronous request, f32, no pre-processing in the graph."""

    def __init__(self, xml_path):
        self.compiled = ov.Core().compile_model(
            str(xml_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        shape = tuple(self.compiled.inputs[0].get_shape())
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"

    def logits(self, rgb, color):
        return self.compiled(to_ir_input(rgb, self.layout, color))[0][0]


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
