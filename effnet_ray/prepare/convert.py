"""PyTorch network -> OpenVINO IR that honours a model's contract (needs the `convert` extra).

The IR takes exactly what the contract says (layout, colour order, 0-255 values) because the
normalisation and channel handling are part of the converted graph, as in OMZ's conversions.
"""

from __future__ import annotations

from pathlib import Path

import geffnet
import numpy as np
import openvino as ov
import torch
from PIL import Image

from effnet_ray import __version__
from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import IMAGE_EXTENSIONS
from effnet_ray.models.cache import prepared_path
from effnet_ray.models.ir import check_contract, file_sha256, read_ir, save_ir, set_metadata
from effnet_ray.models.registry import PHOTOS, ModelSpec, get_spec
from effnet_ray.prepare.weights import resolve_weights

DARK = 0.15  # dark copies of the calibration photos keep very dark inputs in range


class ContractInput(torch.nn.Module):
    """Turns the contract's input (layout, colour order, 0-255) into the network's input."""

    mean: torch.Tensor  # buffers: saved with the graph, moved with the module
    scale: torch.Tensor

    def __init__(self, net: torch.nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.nhwc = spec.input.layout == "NHWC"
        self.bgr = spec.input.color == "BGR"
        self.register_buffer("mean", torch.tensor(spec.source.mean).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(spec.source.scale).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.bgr:
            x = x.flip(1)
        return self.net((x - self.mean) / self.scale)


def create_network(spec: ModelSpec) -> torch.nn.Module:
    """gen-efficientnet's network with static 'same' padding.

    With the default dynamic padding, OpenVINO's PyTorch frontend mis-converts the padding
    arithmetic at sizes where a stride-2 input is odd (600x600: logits off by 4-60%); the
    export variant computes the pads once, in Python, at the first forward pass.
    """
    with geffnet.config.set_layer_config(exportable=True):
        return geffnet.create_model(spec.source.architecture, pretrained=False)


def load_weights(net: torch.nn.Module, path: Path, spec: ModelSpec) -> None:
    """Load a state dict, mapping lukemelas-style keys (`_conv_stem`, `_blocks.N`) by order."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"weights file {path} is not a PyTorch checkpoint ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds no state dict")
    target = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if set(given) != set(target):
        if len(given) != len(target) or not all(k.startswith("_") for k in given):
            missing = sorted(set(target) - set(given))[:3]
            raise UserError(f"weights file {path} does not fit {spec.source.architecture} "
                            f"({len(given)} tensors, expected {len(target)}; missing e.g. "
                            f"{missing})")
        given = dict(zip(target, given.values(), strict=True))
    for key, value in given.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise UserError(f"weights file {path} does not fit {spec.source.architecture}: "
                            f"{key} has shape {tuple(value.shape)}, expected "
                            f"{tuple(target[key].shape)}")
    net.load_state_dict(given, strict=False)


def calibration_batch(size: int) -> torch.Tensor:
    """The bundled photos, squashed to size x size, bright and dark, normalised NCHW RGB."""
    images = []
    for path in sorted(p for p in PHOTOS.iterdir() if p.suffix in IMAGE_EXTENSIONS):
        image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(image, dtype=np.float32))
    stack = np.stack(images + [im * DARK for im in images])
    return torch.from_numpy(stack.transpose(0, 3, 1, 2).copy())


def random_network(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """Seeded random weights whose logits depend on the picture and are well conditioned.

    Untrained BatchNorm statistics make B7's activations collapse so that every image gives
    the same logits. The statistics are re-estimated on the bundled photos, dark copies
    included, in one batch: averaging per-batch variances instead underestimates the spread
    between batches, and over 55 blocks that error makes some photos' logits explode (1e5)
    and turn chaotic (f32 and f64 disagree by 60%). With one batch, f32 stays within 2e-5 of
    f64 on real photos.
    """
    torch.manual_seed(seed)
    net = create_network(spec)
    mean = torch.tensor(spec.source.mean).view(1, 3, 1, 1)
    scale = torch.tensor(spec.source.scale).view(1, 3, 1, 1)
    batch = (calibration_batch(spec.input.height) - mean) / scale
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        net(batch)
    return net.eval()


def pretrained_network(spec: ModelSpec, weights: Path) -> torch.nn.Module:
    net = create_network(spec)
    load_weights(net, weights, spec)
    return net.eval()


def to_openvino(spec: ModelSpec, net: torch.nn.Module, meta: dict) -> ov.Model:
    wrapper = ContractInput(net, spec).eval()
    example = torch.zeros(spec.input.shape)
    with torch.no_grad():
        wrapper(example)  # fixes the static 'same' pads at the contract's size
        model = ov.convert_model(wrapper, example_input=example)
    model.reshape(list(spec.input.shape))
    model.inputs[0].get_tensor().set_names({spec.input.name})
    model.inputs[0].get_node().set_friendly_name(spec.input.name)
    model.inputs[0].get_node().set_layout(ov.Layout(spec.input.layout))
    model.outputs[0].get_tensor().set_names({spec.output.name})
    set_metadata(model, {
        "model": spec.name,
        "effnet_ray_version": __version__,
        "input": {"layout": spec.input.layout, "color": spec.input.color},
        **meta,
    })
    return model


def prepare(spec: ModelSpec, dest: Path, weights: Path | None = None,
            random_seed: int | None = None) -> Path:
    """Build the IR for `spec` at `dest` (…/model.xml) from verified weights or a seed."""
    if random_seed is None:
        if weights is None:
            raise UserError(f"{spec.name}: no weights file and no seed to build it from")
        net = pretrained_network(spec, weights)
        meta = {"random_weights": False, "weights_sha256": file_sha256(weights)}
    else:
        net = random_network(spec, random_seed)
        meta = {"random_weights": True, "seed": random_seed, "weights_sha256": None}
    save_ir(to_openvino(spec, net, meta), dest)
    check_contract(read_ir(dest), spec, str(dest))
    return dest


def prepare_model(name: str, cache: Path, weights: Path | None = None,
                  weights_url: str | None = None, random_seed: int | None = None,
                  verify: bool = True, force: bool = False) -> Path:
    """The prepared IR of model `name` in `cache`: the one there if it fits the contract,
    else built from verified weights (or seeded random ones)."""
    spec = get_spec(name)
    dest = prepared_path(cache, name, random_seed)
    if dest.is_file() and not force:
        try:
            check_contract(read_ir(dest), spec, str(dest))
        except UserError as exc:
            raise UserError(f"{exc} (rebuild it with --force)") from None
        return dest
    if random_seed is None:
        weights = resolve_weights(spec, cache, weights, weights_url, verify)
    return prepare(spec, dest, weights, random_seed)
