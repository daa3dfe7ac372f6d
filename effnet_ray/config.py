"""The one typed configuration of a labeling run, built and validated in one place.

Everything that can be checked before work starts is checked here, so a bad argument costs
one line on stderr and no cluster time. Defaults live only in this file.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import openvino as ov

from effnet_ray.errors import UserError
from effnet_ray.inference import CAPABILITY, PRECISIONS
from effnet_ray.ir import check_contract, default_cache_dir, metadata, prepared_path, read_ir
from effnet_ray.listing import check_inputs
from effnet_ray.registry import get_spec

DEFAULT_MODEL = "efficientnet-b7-pytorch"
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
    batch_size: int = 8
    actors: int = 1
    actor_cpus: float = 1.0
    threads: int = 0
    unit_size: int = 16
    address: str | None = None
    cache_dir: str = ""
    overwrite: bool = False
    random_weights: bool = field(default=False, compare=False)


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


def _check_output(output: str, overwrite: bool) -> None:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {output} exists and is not a folder")
    if out.is_dir() and any(out.glob("*.parquet")):
        if not overwrite:
            raise UserError(f"output {output} already holds results; pass --overwrite to "
                            "replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".effnet-ray-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output {output} is not writable ({exc.strerror or exc})") from None


def clear_output(output: str) -> None:
    for path in Path(output).iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be positive, not {value}")


def build_label_config(inputs: list[str] | tuple[str, ...], output: str, **options: object
                       ) -> LabelConfig:
    """Validate every option and resolve the model file; raises UserError on the first fault."""
    known = set(LabelConfig.__dataclass_fields__) - {"inputs", "output", "random_weights"}
    unknown = set(options) - known
    if unknown:
        raise UserError(f"unknown option(s): {', '.join(sorted(unknown))}")
    options = {k: v for k, v in options.items() if v is not None}
    cfg = LabelConfig(inputs=tuple(str(i) for i in inputs), output=str(output), **options)
    spec = get_spec(cfg.model)
    check_inputs(list(cfg.inputs))
    for name in ("batch_size", "actors", "actor_cpus", "unit_size"):
        _positive(name, getattr(cfg, name))
    if not 1 <= cfg.top_k <= spec.output.classes:
        raise UserError(f"--top-k must be between 1 and {spec.output.classes}, not {cfg.top_k}")
    if cfg.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or positive, not {cfg.threads}")
    _check_device(cfg.device, cfg.precision, local=cfg.address is None)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.model_path:
        model_path = Path(cfg.model_path).expanduser().resolve()
    else:
        model_path = prepared_path(cache, cfg.model)
        if not model_path.is_file():
            raise UserError(f"model {cfg.model} is not prepared in {cache}: run "
                            f"`effnet-ray models prepare {cfg.model}` or pass --model-path")
    model = read_ir(model_path)
    check_contract(model, spec, str(model_path))
    _check_output(cfg.output, cfg.overwrite)
    return LabelConfig(**{
        **cfg.__dict__,
        "model_path": str(model_path),
        "cache_dir": str(cache),
        "output": str(Path(cfg.output).resolve()),
        "random_weights": bool(metadata(model).get("random_weights")),
    })
