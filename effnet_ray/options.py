"""The options of a labeling run: defined, defaulted and validated here, with no I/O.

Every option is a field of one of four frozen sub-configs, grouped by the stage that uses it;
its default, its help text and whether it decides what the output rows are (`identity`: a
rerun that changes one would mix results) live only on that field, and `effnet-ray label`'s
flags are made from the fields. `LabelOptions.build` takes the flat names (`top_k=10`) and
resolves them in this order of precedence: given explicitly > the `--pool` profile > the
field's default. A `LabelOptions` validates itself when made.
Anything that needs a file, a device or the network is checked later, by `preflight`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from PIL import Image

from effnet_ray.errors import UserError
from effnet_ray.models.pools import check_node_labels, check_resources, get_pool, parse_actors
from effnet_ray.models.registry import get_spec

DEFAULT_MODEL = "efficientnet-b7-pytorch"
LAYOUTS = ("auto", "files", "webdataset", "parquet")
# how images are decoded and shrunk: inputs/preprocessing.py
DECODES = ("exact", "fast")
# precision name -> OpenVINO's INFERENCE_PRECISION_HINT (None: the device's default)
# "int8": an INT8 IR from `models quantize`, run at the device's default for the rest
PRECISIONS = {"auto": None, "f32": "f32", "bf16": "bf16", "f16": "f16", "int8": None}
# Pillow's default decompression-bomb threshold, about 9459x9459
MAX_PIXELS = 89_478_485
MAX_BYTES = 128 * 2**20
# A bomb of zeros passes at ~400 MiB per CPU second (gzip -9, bzip2, xz): at most ~3 CPU
# minutes a shard; 10x ImageNet's 6.4 GB validation tar, 20x webdataset's 3 GB shards.
MAX_SHARD_BYTES = 64 * 2**30
_DEVICE = re.compile(r"^(CPU|(GPU|NPU)(\.\d+)?|(AUTO|MULTI|HETERO)(:[A-Z0-9.,]+)?)$")
_JSON = ("actor_resources", "actor_labels", "reader_resources", "reader_labels")


def _option(default: Any = None, *, help: str, identity: bool = False, factory: Any = None,
            shown: str | None = None) -> Any:
    """A field that is also a flag of `effnet-ray label`: `help` says what it does, `shown`
    replaces "(default X)" where the default needs words."""
    meta = {"identity": identity, "help": help, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ReadOptions:
    """Listing and decoding: what is an input, how it is grouped and bounded."""

    layout: str = _option("auto", identity=True,
                          help="auto (by extension), files, webdataset or parquet")
    image_column: str = _option("image", identity=True,
                                help="Parquet inputs: the image bytes column")
    id_column: str = _option("id", identity=True,
                             help="Parquet inputs: the id column, else row numbers")
    unit_size: int = _option(64, identity=True,
                             help="image files per work unit, on average (a shard is one unit); "
                             "a decoding task holds 8 or more units")
    batch_size: int = _option(32, identity=True,
                              help="images per inference-actor call, committed together as one "
                              "output file (OpenVINO gets one image per request)")
    decode: str = _option("exact", identity=True,
                          help="exact: every pixel decoded and resized as the model's published "
                          "evaluation did, to the bit; fast: JPEGs decoded at 1/2-1/8 scale "
                          "(never below the size the model's first resize keeps) and large "
                          "resizes reduced by whole factors first: several times less CPU on "
                          "camera photos, labels the same but for a few borderline images "
                          "(docs/performance.md)")
    max_pixels: int = _option(MAX_PIXELS,
                              help="larger images, decoded or resized, are error rows")
    max_bytes: int = _option(MAX_BYTES, help="larger files, tar members and Parquet values are "
                             "error rows, never read whole")
    max_shard_bytes: int = _option(MAX_SHARD_BYTES, help="the most one shard may expand to "
                                   "(a tar stream after decompression; the images a Parquet "
                                   "shard's rows hold or reference): the rest of a larger one "
                                   "is an error row, unread")


@dataclass(frozen=True)
class InferenceOptions:
    """The model and how the actors run it."""

    model: str = _option(DEFAULT_MODEL, identity=True, help="model name")
    model_path: str = _option("", help="an IR (.xml) to use instead of the prepared one",
                              shown="the prepared model in the cache")
    device: str = _option("CPU", help="OpenVINO device: CPU, GPU, GPU.N, AUTO...")
    precision: str = _option("auto", identity=True,
                             help="f32, bf16, f16, auto (the device's default) or int8 (the "
                             "model from `models quantize`)")
    top_k: int = _option(5, identity=True, help="classes kept per image")
    threads: int = _option(0, help="OpenVINO threads per actor (0: all cores)")
    embeddings: bool = _option(False, identity=True,
                               help="add an embedding column: the pooled features that feed the "
                               "classifier (2560 floats for B7, 1280 for Lite0), from the same "
                               "inference")
    no_logits: bool = _option(False, identity=True,
                              help="leave out the logits column (1000 floats a row) for smaller "
                              "files")
    cache_dir: str | None = _option(None, help="prepared models and compiled blobs",
                                    shown="$EFFNET_RAY_CACHE or ~/.cache/effnet-ray on each "
                                    "machine")


@dataclass(frozen=True)
class PlacementOptions:
    """Where the actors and the decoding tasks run."""

    pool: str = _option("", help="a pool profile from configs/pools (cpu, cpu-pinned, "
                        "intel-gpu...): device and placement in one flag; options given here "
                        "win", shown="none")
    actors: int | str = _option(1, help="OpenVINO actors, or auto (as many as the cluster "
                                "holds)")
    actor_cpus: float = _option(1.0, help="logical CPUs each actor reserves")
    actor_gpus: float | None = _option(None, help="GPUs each actor reserves",
                                       shown="1 with --device GPU, else 0")
    actor_resources: dict = _option(factory=dict, help='Ray resources an actor needs, e.g. '
                                    '\'{"ov_cpu": 1}\'', shown="none")
    actor_labels: dict = _option(factory=dict, help='node labels an actor needs, e.g. '
                                 '\'{"pool": "inference"}\'', shown="none")
    reader_resources: dict = _option(factory=dict, help="Ray resources a decoding task needs",
                                     shown="none")
    reader_labels: dict = _option(factory=dict, help="node labels a decoding task needs",
                                  shown="none")
    address: str | None = _option(None, help="an existing Ray cluster, e.g. auto",
                                  shown="start a new local Ray for the run")


@dataclass(frozen=True)
class RunOptions:
    """How the run behaves around the work."""

    overwrite: bool = _option(False, help="start over, deleting what an earlier run wrote into "
                              "--output (a folder holding anything else is refused)",
                              shown="resume")
    no_compact: bool = _option(False, help="leave the output as one part file per batch when "
                               "the run completes, rather than joining the new parts into "
                               "files of about 256 MB (`effnet-ray compact` can do it later)")
    fail_on_error: bool = _option(False,
                                  help="exit non-zero when any image could not be labelled")
    stall_timeout: float = _option(900.0, help="seconds without a committed image before the "
                                   "run stops (a rerun resumes)")
    break_lease: bool = _option(False, help="take the output over from a run that holds it "
                                "(only when that run is known to be gone)")
    progress_seconds: float = _option(15.0, help="seconds between progress lines when stderr "
                                      "is not a terminal (on a terminal: a live bar)")
    verbose: bool = _option(False, help="show Ray's own INFO logs and progress output too")


GROUPS = {"read": ReadOptions, "inference": InferenceOptions, "placement": PlacementOptions,
          "run": RunOptions}


@dataclass(frozen=True)
class LabelOptions:
    inputs: tuple[str, ...] = _option((), identity=True, help="image files, folders "
                                      "(recursive) or glob patterns, local or URIs")
    output: str = _option("", help="folder for the Parquet files (not an input, nor a folder "
                          "holding one)")
    read: ReadOptions = field(default_factory=ReadOptions)
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    placement: PlacementOptions = field(default_factory=PlacementOptions)
    run: RunOptions = field(default_factory=RunOptions)
    # repr=False: credentials may be in here and must never reach a log line
    storage_options: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        if self.placement.actor_gpus is None:  # Ray places GPU actors by its GPU resource
            gpus = 1.0 if self.inference.device.startswith("GPU") else 0.0
            object.__setattr__(self, "placement", replace(self.placement, actor_gpus=gpus))
        validate(self)

    @classmethod
    def build(cls, inputs: Sequence[str], output: str, **flags: object) -> LabelOptions:
        """Options from flat names (`top_k=10`, as the flags without dashes), in this order
        of precedence: given explicitly > the `pool` profile > the field's default. Values
        may be text, as on a command line; raises UserError on the first fault."""
        names = option_names()
        unknown = set(flags) - set(names) - {"storage_options"}
        if unknown:
            raise UserError(f"unknown option(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in flags.items() if v is not None}
        if given.get("pool"):  # the profile's settings, unless given explicitly
            given = {**get_pool(str(given["pool"])), **given}
        storage = parse_json_object("storage-options", given.pop("storage_options", None))
        for name in _JSON:
            if name in given:
                given[name] = parse_json_object(name.replace("_", "-"), given[name])
        if "actors" in given:
            given["actors"] = parse_actors(given["actors"])
        for name, kind in _numeric().items():
            if name in given:
                given[name] = _number(name, given[name], kind)
        groups = {group: kind(**{k: v for k, v in given.items() if names.get(k) == group})
                  for group, kind in GROUPS.items()}
        return cls(inputs=tuple(inputs), output=str(output), storage_options=storage, **groups)

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


def parse_json_object(option: str, text: object) -> dict:
    """A JSON object given as text (a flag) or already as a dict (Python); {} for nothing."""
    if not text:
        return {}
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        raise UserError(f"--{option} must be a JSON object, not {type(text).__name__}")
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
    if read.decode not in DECODES:
        raise UserError(f"unknown decoding '{read.decode}' (use {', '.join(DECODES)})")
    for name in ("batch_size", "unit_size", "max_pixels", "max_bytes", "max_shard_bytes"):
        _positive(name, getattr(read, name))
    _positive("actor_cpus", place.actor_cpus)
    _positive("stall_timeout", run.stall_timeout)
    _positive("progress_seconds", run.progress_seconds)
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if pillow_limit and read.max_pixels > pillow_limit:
        raise UserError(f"--max-pixels must be at most {pillow_limit} (Pillow's hard limit in "
                        f"this process), not {read.max_pixels}")
    if (place.actor_gpus or 0.0) < 0:
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
