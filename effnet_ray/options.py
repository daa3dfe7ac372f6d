"""The options of a labeling run: defined, defaulted and validated here, with no I/O.

Every option is a field of one of four frozen sub-configs, grouped by the stage that uses it;
its default lives only on that field, and `identity=True` marks the options that decide what
the output rows are (a rerun that changes one of them would mix results). The command line
and the Python API pass the same flat names (`top_k=10`); `build_options` resolves them in
this order of precedence: given explicitly > the `--pool` profile > the field's default.
Anything that needs a file, a device or the network is checked later, by `preflight`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from PIL import Image

from effnet_ray.errors import UserError
from effnet_ray.models.pools import check_node_labels, check_resources, get_pool, parse_actors
from effnet_ray.models.registry import get_spec

DEFAULT_MODEL = "efficientnet-b7-pytorch"
LAYOUTS = ("auto", "files", "webdataset", "parquet")
# precision name -> OpenVINO's INFERENCE_PRECISION_HINT (None: the device's default)
# "int8": an INT8 IR from `models quantize`, run at the device's default for the rest
PRECISIONS = {"auto": None, "f32": "f32", "bf16": "bf16", "f16": "f16", "int8": None}
# Pillow's default decompression-bomb threshold, about 9459x9459
MAX_PIXELS = 89_478_485
MAX_BYTES = 128 * 2**20
_DEVICE = re.compile(r"^(CPU|(GPU|NPU)(\.\d+)?|(AUTO|MULTI|HETERO)(:[A-Z0-9.,]+)?)$")
_JSON = ("storage_options", "actor_resources", "actor_labels", "reader_resources",
         "reader_labels")


def _option(default: Any = None, *, identity: bool = False, factory: Any = None) -> Any:
    meta = {"identity": identity}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ReadOptions:
    """Listing and the decoding tasks: what is an input, how it is grouped and bounded."""

    layout: str = _option("auto", identity=True)
    image_column: str = _option("image", identity=True)
    id_column: str = _option("id", identity=True)
    unit_size: int = _option(64, identity=True)  # image files per work unit, on average
    batch_size: int = _option(32, identity=True)  # images per actor call = per output file
    max_pixels: int = _option(MAX_PIXELS)
    max_bytes: int = _option(MAX_BYTES)


@dataclass(frozen=True)
class InferenceOptions:
    model: str = _option(DEFAULT_MODEL, identity=True)
    model_path: str = _option("")  # "": the prepared model in the cache
    device: str = _option("CPU")
    precision: str = _option("auto", identity=True)
    top_k: int = _option(5, identity=True)
    threads: int = _option(0)  # 0: all cores
    embeddings: bool = _option(False, identity=True)  # the pooled features, as a column
    no_logits: bool = _option(False, identity=True)  # drop the 1000 logits
    cache_dir: str | None = _option(None)  # None: each machine's default cache


@dataclass(frozen=True)
class PlacementOptions:
    pool: str = _option("")
    actors: int | str = _option(1)  # or "auto": as many as the cluster holds
    actor_cpus: float = _option(1.0)
    actor_gpus: float | None = _option(None)  # None: 1 with a GPU device, else 0
    actor_resources: dict = _option(factory=dict)
    actor_labels: dict = _option(factory=dict)
    reader_resources: dict = _option(factory=dict)
    reader_labels: dict = _option(factory=dict)
    address: str | None = _option(None)  # None: start a local Ray for the run


@dataclass(frozen=True)
class RunOptions:
    overwrite: bool = _option(False)
    fail_on_error: bool = _option(False)
    stall_timeout: float = _option(900.0)  # seconds without a commit before the run stops
    break_lease: bool = _option(False)
    progress_seconds: float = _option(15.0)  # between progress lines, off a terminal
    verbose: bool = _option(False)  # Ray's own INFO logs and progress UI on the console


GROUPS = {"read": ReadOptions, "inference": InferenceOptions, "placement": PlacementOptions,
          "run": RunOptions}


@dataclass(frozen=True)
class LabelOptions:
    inputs: tuple[str, ...] = _option((), identity=True)
    output: str = _option("")
    read: ReadOptions = field(default_factory=ReadOptions)
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    placement: PlacementOptions = field(default_factory=PlacementOptions)
    run: RunOptions = field(default_factory=RunOptions)
    # repr=False: credentials may be in here and must never reach a log line
    storage_options: dict = field(default_factory=dict, repr=False)

    def identity(self) -> dict:
        """The options that decide what the rows are, by their flat names."""
        found = {"inputs": list(self.inputs)}
        for group in GROUPS:
            sub = getattr(self, group)
            found.update({f.name: getattr(sub, f.name) for f in fields(sub)
                          if f.metadata.get("identity")})
        return found


def option_names() -> dict[str, str]:
    """Flat option name -> the group it belongs to."""
    return {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


def default(name: str) -> object:
    """An option's default, for help texts."""
    cls = GROUPS[option_names()[name]]
    value = next(f for f in fields(cls) if f.name == name)
    return value.default


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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _numeric() -> dict[str, type]:
    """Options whose fields are numbers, by their annotations: the type lives on the field."""
    kinds = {"int": int, "float": float, "float | None": float}
    return {f.name: kinds[f.type] for cls in GROUPS.values() for f in fields(cls)
            if f.type in kinds}


def _number(name: str, value: object, kind: type) -> Any:
    if isinstance(value, bool):
        raise UserError(f"{_flag(name)} must be a number, not {value}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{_flag(name)} must be a number, not {value!r}") from None


def build_options(inputs: list[str] | tuple[str, ...], output: str, **given: object
                  ) -> LabelOptions:
    """Resolve and validate every option; raises UserError on the first fault."""
    names = option_names()
    unknown = set(given) - set(names) - {"storage_options"}
    if unknown:
        raise UserError(f"unknown option(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("pool"):  # the profile's settings, unless given explicitly
        given = {**get_pool(str(given["pool"])), **given}
    for name in _JSON:
        if name in given or name == "storage_options":
            given[name] = parse_json_object(name.replace("_", "-"), given.get(name))
    if "actors" in given:
        given["actors"] = parse_actors(given["actors"])
    for name, kind in _numeric().items():
        if name in given:
            given[name] = _number(name, given[name], kind)
    storage = given.pop("storage_options", {})
    groups = {group: cls(**{k: v for k, v in given.items() if names.get(k) == group})
              for group, cls in GROUPS.items()}
    placement = groups["placement"]
    if placement.actor_gpus is None:  # Ray places GPU actors by its GPU resource
        gpus = 1.0 if groups["inference"].device.startswith("GPU") else 0.0
        groups["placement"] = replace(placement, actor_gpus=gpus)
    options = LabelOptions(inputs=tuple(str(i) for i in inputs), output=str(output),
                           storage_options=storage, **groups)
    validate(options)
    return options


def validate(options: LabelOptions) -> None:
    """Every check that needs nothing but the options themselves."""
    if not options.inputs:
        raise UserError("no input given")
    if any(not str(i).strip() for i in options.inputs):
        raise UserError("an input is an empty string")
    if not options.output.strip():
        raise UserError("--output is empty: name a folder for the results")
    read, inference, place, run = (options.read, options.inference, options.placement,
                                   options.run)
    if read.layout not in LAYOUTS:
        raise UserError(f"unknown layout '{read.layout}' (use {', '.join(LAYOUTS)})")
    for name in ("batch_size", "unit_size", "max_pixels", "max_bytes"):
        _positive(name, getattr(read, name))
    _positive("actor_cpus", place.actor_cpus)
    _positive("stall_timeout", run.stall_timeout)
    _positive("progress_seconds", run.progress_seconds)
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if pillow_limit and read.max_pixels > pillow_limit:
        raise UserError(f"--max-pixels must be at most {pillow_limit} (Pillow's hard limit in "
                        f"this process), not {read.max_pixels}")
    if place.actor_gpus < 0:
        raise UserError(f"--actor-gpus must be 0 or positive, not {place.actor_gpus}")
    check_resources(place.actor_resources, "--actor-resources")
    check_resources(place.reader_resources, "--reader-resources")
    check_node_labels(place.actor_labels, "--actor-labels")
    check_node_labels(place.reader_labels, "--reader-labels")
    spec = get_spec(inference.model)
    if not 1 <= inference.top_k <= spec.output.classes:
        raise UserError(f"--top-k must be between 1 and {spec.output.classes}, "
                        f"not {inference.top_k}")
    if inference.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or positive, not {inference.threads}")
    if not _DEVICE.match(inference.device):
        raise UserError(f"unknown device '{inference.device}' "
                        "(use CPU, GPU, GPU.N, NPU or AUTO[:list])")
    if inference.precision not in PRECISIONS:
        raise UserError(f"unknown precision '{inference.precision}' "
                        f"(use {', '.join(PRECISIONS)})")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"{_flag(name)} must be positive, not {value}")
