"""OpenVINO IR files: read them, check them against a contract, describe them.

The IR carries its own provenance in rt_info under `effnet_ray` (model name, weights checksum,
whether the weights are random), so a file found on disk says what it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree

import openvino as ov

from effnet_ray.errors import UserError
from effnet_ray.models.registry import ModelSpec
from effnet_ray.storage import atomic_folder

META_KEY = "effnet_ray"


def read_ir(path: str | Path, core: ov.Core | None = None) -> ov.Model:
    path = Path(path)
    if path.suffix != ".xml":
        raise UserError(f"model file {path} is not an OpenVINO IR (.xml)")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if not path.with_suffix(".bin").is_file():
        raise UserError(f"model file {path} has no weights file {path.with_suffix('.bin').name}")
    _check_xml(path)
    try:
        return (core or ov.Core()).read_model(path)
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip() and "Exception from" not in ln]
        reason = lines[-1].strip() if lines else "unreadable"
        raise UserError(f"model file {path} is corrupt: {reason}") from None


def _check_xml(path: Path) -> None:
    """Refuse a file that is not well-formed IR XML before OpenVINO tries every frontend."""
    try:
        for _, element in ElementTree.iterparse(path, events=("start",)):
            if element.tag != "net":
                raise UserError(f"model file {path} is not an OpenVINO IR (root <{element.tag}>)")
            break
        for _ in ElementTree.iterparse(path):
            pass
    except ElementTree.ParseError as exc:
        raise UserError(f"model file {path} is corrupt: {exc}") from None


def _names(port: ov.Output) -> set[str]:
    return set(port.get_names())


def check_contract(model: ov.Model, spec: ModelSpec, source: str) -> None:
    """Refuse an IR whose tensors do not fit the contract, naming the first mismatch."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"{source}: expected 1 input and 1 output for {spec.name}, found "
                        f"{len(model.inputs)} and {len(model.outputs)}")
    port, out = model.inputs[0], model.outputs[0]
    if spec.input.name not in _names(port):
        raise UserError(f"{source}: input is named {sorted(_names(port))}, "
                        f"{spec.name} expects '{spec.input.name}'")
    if port.get_partial_shape().is_dynamic:
        raise UserError(f"{source}: input shape {port.get_partial_shape()} is dynamic, "
                        f"{spec.name} expects {list(spec.input.shape)} ({spec.input.layout})")
    shape = tuple(port.get_shape())
    if shape != spec.input.shape:
        raise UserError(f"{source}: input shape {list(shape)} does not match "
                        f"{list(spec.input.shape)} ({spec.input.layout}) of {spec.name}")
    if port.get_element_type() != ov.Type.f32:
        raise UserError(f"{source}: input type {port.get_element_type()} is not f32")
    if spec.output.name not in _names(out):
        raise UserError(f"{source}: output is named {sorted(_names(out))}, "
                        f"{spec.name} expects '{spec.output.name}'")
    out_shape = out.get_partial_shape()
    if out_shape.is_dynamic or tuple(out.get_shape()) != (1, spec.output.classes):
        raise UserError(f"{source}: output shape {out_shape} is not [1,{spec.output.classes}]")
    meta = metadata(model)
    if meta.get("model") not in (None, spec.name):
        raise UserError(f"{source}: this IR was prepared for {meta['model']}, not {spec.name}")


# Ops between the classifier's matrix multiply and the logits (bias, casts, reshapes).
_AFTER_CLASSIFIER = {"Add", "Convert", "Reshape", "Squeeze", "Unsqueeze", "Multiply"}


def _is_constant(port: ov.Output) -> bool:
    node = port.get_node()
    while node.get_type_name() == "Convert":  # compressed weights are decompressed first
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def pooled_features(model: ov.Model, source: str) -> ov.Output:
    """The pooled features that feed the classifier: walk from the logits back to the
    classifier's matrix multiply and take its data input. Works on any IR that fits a
    contract (ours, or OMZ's converter's), whatever its node names."""
    port = model.outputs[0].get_node().input_value(0)
    for _ in range(16):
        node = port.get_node()
        kind = node.get_type_name()
        if kind == "MatMul":
            data = [v for v in node.input_values() if not _is_constant(v)]
            if len(data) == 1:
                return data[0]
            break
        if kind not in _AFTER_CLASSIFIER:
            break
        data = [v for v in node.input_values() if not _is_constant(v)]
        if len(data) != 1:
            break
        port = data[0]
    raise UserError(f"{source}: cannot find the classifier's matrix multiply behind the "
                    "logits, so no embeddings can be taken from this IR")


def metadata(model: ov.Model) -> dict:
    if not model.has_rt_info([META_KEY, "json"]):
        return {}
    return json.loads(model.get_rt_info([META_KEY, "json"]).astype(str))


def set_metadata(model: ov.Model, meta: dict) -> None:
    model.set_rt_info(json.dumps(meta, sort_keys=True), [META_KEY, "json"])


def file_sha256(*paths: str | Path, block: int = 1 << 20) -> str:
    """One digest over the files' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while data := f.read(block):
                digest.update(data)
    return digest.hexdigest()


def ir_sha256(xml: str | Path) -> str:
    """The IR's checksum: its graph and its weights."""
    return file_sha256(xml, Path(xml).with_suffix(".bin"))


def save_ir(model: ov.Model, dest: Path) -> Path:
    """Write model.xml/.bin into `dest`'s folder atomically: a crash leaves no half IR."""
    with atomic_folder(dest.parent, replace=True) as tmp:
        ov.save_model(model, tmp / dest.name, compress_to_fp16=False)
    return dest
