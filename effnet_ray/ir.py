"""OpenVINO IR files: read them, check them against a contract, describe them.

The IR carries its own provenance in rt_info under `effnet_ray` (model name, weights checksum,
whether the weights are random), so a file found on disk says what it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from xml.etree import ElementTree

import numpy as np
import openvino as ov
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.registry import ModelSpec
from effnet_ray.storage import (
    TMP_PREFIX,
    atomic_folder,
    display,
    is_local,
    named_errors,
    open_fs,
    redact,
    retrying,
)

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


def complexity(model: ov.Model) -> tuple[int, int]:
    """(parameters, FLOPs) the way model cards count them.

    Parameters: elements of the floating-point constants that feed a computation (weights,
    biases, folded BatchNorm scales). FLOPs: 2 per multiply-accumulate of convolutions and
    matrix products, plus one per output element of elementwise arithmetic.
    """
    params = 0
    flops = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            if op.get_output_element_type(0).is_real() and _feeds_arithmetic(op):
                params += int(np.prod(op.get_output_shape(0), dtype=np.int64))
        elif kind in ("Convolution", "GroupConvolution"):
            out = op.get_output_shape(0)
            weights = op.input(1).get_shape()
            per_output = int(np.prod(weights[-2:])) * (
                weights[2] if kind == "GroupConvolution" else weights[1])
            flops += 2 * int(np.prod(out, dtype=np.int64)) * per_output
        elif kind == "MatMul":
            a = op.input(0).get_shape()
            transpose_a = op.get_attributes().get("transpose_a", False)
            k = a[-2] if transpose_a else a[-1]
            flops += 2 * int(np.prod(op.get_output_shape(0), dtype=np.int64)) * k
        elif kind in ("Add", "Multiply", "Subtract", "Divide", "Sigmoid", "Swish", "Clamp",
                      "ReduceMean", "Relu", "HSwish"):
            flops += int(np.prod(op.get_output_shape(0), dtype=np.int64))
    return params, flops


def _feeds_arithmetic(const: ov.Node) -> bool:
    arithmetic = {"Convolution", "GroupConvolution", "MatMul", "Add", "Multiply", "Subtract"}
    for target in const.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() == "Convert":  # compressed weights are decompressed first
            return _feeds_arithmetic(node)
        if node.get_type_name() in arithmetic:
            return True
    return False


def default_cache_dir() -> Path:
    """$EFFNET_RAY_CACHE, else $XDG_CACHE_HOME/effnet-ray, else ~/.cache/effnet-ray."""
    if os.environ.get("EFFNET_RAY_CACHE"):
        return Path(os.environ["EFFNET_RAY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "effnet-ray"


def prepared_path(cache: Path, name: str, random_seed: int | None = None) -> Path:
    folder = name if random_seed is None else f"{name}-random-seed{random_seed}"
    return cache / "models" / folder / "model.xml"


def int8_path(source: Path) -> Path:
    """Where `models quantize` puts the INT8 IR of a prepared model: a folder beside it."""
    return source.parent.with_name(source.parent.name + "-int8") / "model.xml"


def local_ir(model_path: str, cache: Path, storage_options: dict | None = None,
             expected_sha256: str | None = None) -> Path:
    """A local, checksum-verified copy of the IR at `model_path` (a path or a store URI).

    An IR on an object store is fetched once per machine into `cache/fetched/<sha256>/`,
    under a lock and complete before it gets that name; a local path is used in place. With
    `expected_sha256` (the driver's), a node whose copy differs is refused instead of
    labelling with another model.
    """
    fs, path = open_fs(model_path, storage_options)
    if is_local(fs):
        local = Path(path)
        if expected_sha256 and ir_sha256(local) != expected_sha256:
            raise UserError(f"model file {local} on this node differs from the one the run "
                            "was started with (sha256); use an object-store URI for the IR")
        return local
    if not path.endswith(".xml"):
        raise UserError(f"model file {model_path} is not an OpenVINO IR (.xml)")
    fetched = cache / "fetched"
    # one fetch per machine: actors starting together wait for the first one's copy
    with one_at_a_time(fetched):
        if expected_sha256 and (fetched / expected_sha256 / "model.xml").is_file():
            return fetched / expected_sha256 / "model.xml"
        return _fetch(fs, path, model_path, fetched, expected_sha256)


@contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """Processes of one machine that write into `folder` take turns (actors starting
    together on a node)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fetch(fs: AbstractFileSystem, path: str, model_path: str, fetched: Path,
           expected_sha256: str | None) -> Path:
    with TemporaryDirectory(prefix=TMP_PREFIX, dir=fetched) as tmp:
        with named_errors(display(fs, path)):
            for source, name in ((path, "model.xml"), (path[:-4] + ".bin", "model.bin")):
                retrying(lambda s=source, n=name: fs.get_file(s, f"{tmp}/{n}"), fs)
        digest = ir_sha256(f"{tmp}/model.xml")
        if expected_sha256 and digest != expected_sha256:
            raise UserError(f"model file {redact(model_path)} changed since the run started "
                            "(sha256)")
        with atomic_folder(fetched / digest) as dest:
            for name in ("model.xml", "model.bin"):
                os.rename(f"{tmp}/{name}", dest / name)
    return fetched / digest / "model.xml"
