"""The one typed configuration of a labeling run, built and validated in one place.

Everything that can be checked before work starts is checked here, so a bad argument costs
one line on stderr and no cluster time. Defaults live only in this file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import openvino as ov

from effnet_ray.errors import UserError
from effnet_ray.inference import CAPABILITY, PRECISIONS
from effnet_ray.ir import (
    check_contract,
    default_cache_dir,
    ir_sha256,
    local_ir,
    metadata,
    prepared_path,
    read_ir,
)
from effnet_ray.listing import LAYOUTS, check_inputs
from effnet_ray.pools import check_labels, check_resources, get_pool
from effnet_ray.preprocessing import MAX_PIXELS
from effnet_ray.registry import get_spec
from effnet_ray.resume import check_resumable, identity
from effnet_ray.storage import display, is_read_only, named_errors, open_fs

DEFAULT_MODEL = "efficientnet-b7-pytorch"
_JSON_OPTIONS = ("storage_options", "actor_resources", "actor_labels", "reader_resources",
                 "reader_labels")
_DEVICE = re.compile(r"^(CPU|(GPU|NPU)(\.\d+)?|(AUTO|MULTI|HETERO)(:[A-Z0-9.,]+)?)$")


@dataclass(frozen=True)
class LabelConfig:
    inputs: tuple[str, ...]
    output: str
    model: str = DEFAULT_MODEL
    model_path: str = ""
    device: str = "CPU"
    precision: str = "auto"
    top_k: int = 5
    batch_size: int = 32
    pool: str = ""
    actors: int | str = 1  # or "auto": as many as the cluster holds
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    actor_resources: dict = field(default_factory=dict)
    actor_labels: dict = field(default_factory=dict)
    reader_resources: dict = field(default_factory=dict)
    reader_labels: dict = field(default_factory=dict)
    threads: int = 0
    unit_size: int = 64
    address: str | None = None
    cache_dir: str = ""
    overwrite: bool = False
    layout: str = "auto"
    image_column: str = "image"
    id_column: str = "id"
    max_pixels: int = MAX_PIXELS
    fail_on_error: bool = False
    # repr=False: credentials may be in here and must never reach a log line
    storage_options: dict = field(default_factory=dict, repr=False)
    random_weights: bool = field(default=False, compare=False)
    ir_sha256: str = field(default="", compare=False)


def _check_device(device: str, precision: str, local: bool) -> None:
    if not _DEVICE.match(device):
        raise UserError(f"unknown device '{device}' (use CPU, GPU, GPU.N, NPU or AUTO[:list])")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if not local:
        return  # the cluster's nodes, not this machine, have the device
    core = ov.Core()
    available = core.available_devices
    wanted = device.split(":", 1)[1].split(",") if ":" in device else [device]
    for name in wanted:
        if name in ("AUTO", "MULTI", "HETERO"):
            continue
        if name not in available and not any(a.startswith(name + ".") for a in available):
            raise UserError(f"device {name} is not available here (available: "
                            f"{', '.join(available)}); use --address to run on a cluster")
    if precision != "auto" and ":" not in device and device not in ("AUTO",):
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if CAPABILITY[precision] not in caps:
            raise UserError(f"device {device} cannot infer in {precision} here "
                            f"(it supports {', '.join(caps)}); use --precision auto or f32")


def _check_output(cfg: LabelConfig) -> str:
    """The output's display name, once it is known to be a writable folder that this run
    may resume into (or, with --overwrite, replace)."""
    fs, path = open_fs(cfg.output, cfg.storage_options)
    if is_read_only(fs):
        raise UserError(f"output {cfg.output}: http(s) stores are read-only")
    with named_errors(cfg.output):
        if fs.isfile(path):
            raise UserError(f"output {cfg.output} exists and is not a folder")
    if not cfg.overwrite:
        check_resumable(fs, path, identity(cfg, cfg.ir_sha256))
    probe = f"{path.rstrip('/')}/.effnet-ray-write-probe"
    try:
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # any store's refusal, named without its credentials
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UserError(f"output {cfg.output} is not writable ({reason})") from None
    return display(fs, path)


def clear_output(output: str, options: dict) -> None:
    fs, path = open_fs(output, options)
    with named_errors(output):
        for entry in fs.ls(path, detail=False):
            fs.rm(entry, recursive=True)


def parse_json_object(option: str, text: str | dict | None) -> dict:
    if not text:
        return {}
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--{option} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise UserError(f"--{option} must be a JSON object")
    return value


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be positive, not {value}")


def build_label_config(inputs: list[str] | tuple[str, ...], output: str, **options: object
                       ) -> LabelConfig:
    """Validate every option and resolve the model file; raises UserError on the first fault."""
    known = set(LabelConfig.__dataclass_fields__) - {"inputs", "output", "random_weights",
                                                      "ir_sha256"}
    unknown = set(options) - known
    if unknown:
        raise UserError(f"unknown option(s): {', '.join(sorted(unknown))}")
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("pool"):  # the profile's settings, unless given explicitly
        options = {**get_pool(str(options["pool"])), **options}
    for name in _JSON_OPTIONS:
        options[name] = parse_json_object(name.replace("_", "-"), options.get(name))
    if str(options.get("device", "")).startswith("GPU") and "actor_gpus" not in options:
        options["actor_gpus"] = 1.0  # Ray places GPU actors by its GPU resource
    if options.get("actors") is not None:
        options["actors"] = _actors(options["actors"])
    storage = options["storage_options"]
    # absolute local paths: a rerun from another folder is the same run
    inputs = tuple(display(*open_fs(str(i), storage)) for i in inputs)
    cfg = LabelConfig(inputs=inputs, output=str(output), **options)
    spec = get_spec(cfg.model)
    if cfg.layout not in LAYOUTS:
        raise UserError(f"unknown layout '{cfg.layout}' (use {', '.join(LAYOUTS)})")
    for name in ("batch_size", "actor_cpus", "unit_size", "max_pixels"):
        _positive(name, getattr(cfg, name))
    if cfg.actor_gpus < 0:
        raise UserError(f"--actor-gpus must be 0 or positive, not {cfg.actor_gpus}")
    check_resources(cfg.actor_resources, "--actor-resources")
    check_resources(cfg.reader_resources, "--reader-resources")
    check_labels(cfg.actor_labels, "--actor-labels")
    check_labels(cfg.reader_labels, "--reader-labels")
    if not 1 <= cfg.top_k <= spec.output.classes:
        raise UserError(f"--top-k must be between 1 and {spec.output.classes}, not {cfg.top_k}")
    if cfg.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or positive, not {cfg.threads}")
    _check_device(cfg.device, cfg.precision, local=cfg.address is None)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.model_path:
        model_path = (display(*open_fs(cfg.model_path, storage)) if "://" in cfg.model_path
                      else str(Path(cfg.model_path).expanduser().resolve()))
    else:
        model_path = str(prepared_path(cache, cfg.model))
        if not Path(model_path).is_file():
            raise UserError(f"model {cfg.model} is not prepared in {cache}: run "
                            f"`effnet-ray models prepare {cfg.model}` or pass --model-path")
    local = local_ir(model_path, cache, storage)
    model = read_ir(local)
    check_contract(model, spec, model_path)
    check_inputs(cfg.inputs, cfg.storage_options)
    cfg = replace(cfg, model_path=model_path,
                  random_weights=bool(metadata(model).get("random_weights")),
                  ir_sha256=ir_sha256(local))
    return replace(cfg, output=_check_output(cfg))


def _actors(value: object) -> int | str:
    if value == "auto":
        return "auto"
    try:
        actors = int(value)
    except (TypeError, ValueError):
        actors = 0
    if actors <= 0 or isinstance(value, bool) or str(actors) != str(value).strip():
        raise UserError(f"--actors must be a positive number or auto, not {value}")
    return actors
