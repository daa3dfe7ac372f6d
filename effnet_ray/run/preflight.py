"""Everything a run must know and hold before any work starts: the I/O of preparing a run.

`prepare_run` turns validated options into a `RunPlan`: the device is there and can run the
precision, the model file is found, checksummed and fits its contract, the inputs are listed
into work units (their first Parquet shard has the image column), the output is a place of
its own, leased to this run, and either resumable or cleared for a fresh start. A fault is
one `UserError`, raised before Ray starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import Unit, list_sources, work_units
from effnet_ray.inputs.parquet import read_footers
from effnet_ray.models.cache import default_cache_dir, int8_path, local_ir, prepared_path
from effnet_ray.models.ir import check_contract, ir_sha256, metadata, read_ir
from effnet_ray.models.registry import ModelSpec, get_spec
from effnet_ray.options import LabelOptions
from effnet_ray.output.lease import Lease
from effnet_ray.output.manifest import check_resumable, identity_of
from effnet_ray.output.place import check_place, clear
from effnet_ray.storage import display, is_local, open_fs, redact

log = logging.getLogger(__name__)

# precision -> the OPTIMIZATION_CAPABILITIES entry a device needs for it
CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16", "int8": "INT8"}


@dataclass(frozen=True)
class RunPlan:
    options: LabelOptions
    spec: ModelSpec
    model_path: str  # absolute path or URI of the IR
    ir_sha256: str
    random_weights: bool
    units: tuple[Unit, ...]
    fs: AbstractFileSystem  # the output's
    path: str
    lease: Lease
    manifest: dict | None  # the manifest a resumed run continues
    shard_rows: dict[str, int | None]  # rows of each Parquet unit, from its footer

    @property
    def output(self) -> str:
        """The output's name as shown to people."""
        return redact(self.output_uri)

    @property
    def output_uri(self) -> str:
        """The output's name as the run's processes open it."""
        return display(self.fs, self.path)

    @property
    def identity(self) -> dict:
        return identity_of(self.options, self.ir_sha256)


def check_device(device: str, precision: str) -> None:
    """The device exists on this machine and can infer in `precision`."""
    import openvino as ov

    core = ov.Core()
    available = core.available_devices
    wanted = device.split(":", 1)[1].split(",") if ":" in device else [device]
    for name in wanted:
        if name in ("AUTO", "MULTI", "HETERO"):
            continue
        if name not in available and not any(a.startswith(name + ".") for a in available):
            raise UserError(f"device {name} is not available here (available: "
                            f"{', '.join(available)}); use --address to run on a cluster")
    if precision in CAPABILITY and ":" not in device and device != "AUTO":
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if CAPABILITY[precision] not in caps:
            raise UserError(f"device {device} cannot infer in {precision} here "
                            f"(it supports {', '.join(caps)}); use --precision auto or f32")


def resolve_model(options: LabelOptions, spec: ModelSpec) -> tuple[str, str, bool]:
    """(model path, IR sha256, random weights) of the IR the run will use."""
    inference, storage = options.inference, options.storage_options
    cache = Path(inference.cache_dir) if inference.cache_dir else default_cache_dir()
    if inference.model_path:
        fs, path = open_fs(inference.model_path, storage)
        model_path = str(Path(path).expanduser().resolve()) if is_local(fs) \
            else display(fs, path)
    elif inference.precision == "int8":
        model_path = str(int8_path(prepared_path(cache, spec.name)))
        if not Path(model_path).is_file():
            raise UserError(f"no INT8 model of {spec.name} in {cache}: run `effnet-ray models "
                            f"quantize {spec.name} --calibration PHOTOS...` or pass "
                            "--model-path")
    else:
        model_path = str(prepared_path(cache, spec.name))
        if not Path(model_path).is_file():
            raise UserError(f"model {spec.name} is not prepared in {cache}: run "
                            f"`effnet-ray models prepare {spec.name}` or pass --model-path")
    local = local_ir(model_path, cache, storage)
    model = read_ir(local)
    check_contract(model, spec, redact(model_path))
    return model_path, ir_sha256(local), bool(metadata(model).get("random_weights"))


def list_units(options: LabelOptions, exclude: str
               ) -> tuple[tuple[Unit, ...], dict[str, int | None]]:
    """The work units, and the rows of each Parquet unit from its shard's footer."""
    started = time.time()
    read = options.read
    units = tuple(work_units(list_sources(options.inputs, read.layout, options.storage_options,
                                          exclude=exclude), read.unit_size))
    if not units:
        raise UserError(f"no images found in {', '.join(redact(i) for i in options.inputs)}")
    parquet = [u for u in units if u.kind == "parquet"]
    footers = read_footers([u.uris[0] for u in parquet], read.image_column,
                           options.storage_options)
    # s3fs keeps every listed key's details (~1 KB a key) in the filesystem instance, which
    # fsspec keeps for the process; nothing reads them again once the footers are read.
    for item in options.inputs:
        open_fs(item, options.storage_options)[0].invalidate_cache()
    log.info("listed %d sources in %d work units (%.1f s)", sum(len(u.uris) for u in units),
             len(units), time.time() - started)
    return units, {u.uid: footers[u.uris[0]] for u in parquet}


def prepare_run(options: LabelOptions) -> RunPlan:
    spec = get_spec(options.inference.model)
    if options.placement.address is None:  # a cluster's nodes, not this machine, have it
        check_device(options.inference.device, options.inference.precision)
    model_path, sha256, random_weights = resolve_model(options, spec)
    fs, path = check_place(options.output, options.inputs, options.storage_options)
    lease = Lease.acquire(fs, path, options.run.break_lease)
    try:
        units, shard_rows = list_units(options, display(fs, path))
        manifest = None
        if options.run.overwrite:
            clear(fs, path)
        else:
            manifest = check_resumable(fs, path, identity_of(options, sha256))
    except BaseException:
        lease.release()
        raise
    return RunPlan(options=options, spec=spec, model_path=model_path, ir_sha256=sha256,
                   random_weights=random_weights, units=units, fs=fs, path=path, lease=lease,
                   manifest=manifest, shard_rows=shard_rows)
