"""The labeling job: list -> read+preprocess (CPU tasks) -> infer (actors) -> Parquet.

    inputs ──listing──> work units ──reading/preprocessing (Ray tasks, 1 CPU each)──>
        uint8 HxWx3 batches ──inference (OpenVINO actor pool)──> rows ──writing──> OUT/*.parquet
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import pyarrow.dataset as pads
import ray

from effnet_ray.config import LabelConfig, clear_output
from effnet_ray.errors import UserError
from effnet_ray.inference import Classifier, InferenceSettings
from effnet_ray.listing import list_sources, work_units
from effnet_ray.reading import ReadOptions, check_parquet_columns, read_units
from effnet_ray.storage import named_errors, open_fs, pyarrow_fs

# Batches an actor holds at once: one being inferred while the next is unpacked, so the
# request queue never runs dry between batches.
CONCURRENT_CALLS = 2
# One block per unit would cost Ray ~2 ms a block (62,500 units of a million images: 2 min
# before the first image); 1,000 blocks keep a big cluster's decoders busy and take seconds.
MAX_READ_BLOCKS = 1000
# Enough for the largest image decoding accepts (MAX_PIXELS RGB) plus its resized copy.
DECODE_MEMORY = 512 * 2**20


@dataclass(frozen=True)
class Summary:
    images: int
    labelled: int
    errors: int
    wall_seconds: float
    output: str

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds else 0.0

    def __str__(self) -> str:
        return (f"labelled {self.labelled} images, {self.errors} errors, "
                f"{self.images_per_second:.2f} images/s, {self.wall_seconds:.1f} s wall; "
                f"output: {self.output}")


def _start_ray(address: str | None) -> bool:
    """Attach to `address` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            ray.init(include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start or reach Ray at {address or 'local'}: {exc}") from None
    return True


def read_options(cfg: LabelConfig) -> ReadOptions:
    return ReadOptions(model=cfg.model, storage_options=cfg.storage_options,
                       image_column=cfg.image_column, id_column=cfg.id_column,
                       max_pixels=cfg.max_pixels)


def build_dataset(cfg: LabelConfig, units: list[tuple[str, list[str]]]) -> ray.data.Dataset:
    settings = InferenceSettings(
        model_path=cfg.model_path, model=cfg.model, device=cfg.device,
        precision=cfg.precision, top_k=cfg.top_k, threads=cfg.threads,
        cache_dir=os.path.join(cfg.cache_dir, "compiled"),
    )
    ds = ray.data.from_items([{"kind": kind, "uris": uris} for kind, uris in units],
                             override_num_blocks=min(len(units), MAX_READ_BLOCKS))
    # The memory reservation bounds decoding per node and, being unlike the actors'
    # arguments, keeps Ray Data from fusing decoding into the actors, where it would stall
    # inference.
    ds = ds.map_batches(read_units, fn_kwargs={"options": read_options(cfg)}, batch_size=1,
                        num_cpus=1, memory=DECODE_MEMORY, batch_format="numpy")
    return ds.map_batches(
        Classifier,
        fn_constructor_kwargs={"settings": settings},
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=cfg.actor_cpus,
        compute=ray.data.ActorPoolStrategy(
            size=cfg.actors,
            max_tasks_in_flight_per_actor=CONCURRENT_CALLS * 2,
            max_concurrent_calls_per_actor=CONCURRENT_CALLS,
            enable_true_multi_threading=True,
        ),
    )


def count_rows(cfg: LabelConfig) -> tuple[int, int]:
    """(rows, rows with an error), read back from what was written."""
    fs, path = open_fs(cfg.output, cfg.storage_options)
    with named_errors(cfg.output):
        table = pads.dataset(path, filesystem=pyarrow_fs(fs), format="parquet").to_table(
            columns=["error"])
    return table.num_rows, table.num_rows - table.column("error").null_count


def run(cfg: LabelConfig) -> Summary:
    if cfg.random_weights:
        print(f"warning: {cfg.model_path} has random weights: its labels mean nothing",
              file=sys.stderr)
    started = time.time()
    units = list(work_units(list_sources(cfg.inputs, cfg.layout, cfg.storage_options),
                            cfg.unit_size))
    if not units:
        raise UserError(f"no images found in {', '.join(cfg.inputs)}")
    first_parquet = next((uris[0] for kind, uris in units if kind == "parquet"), None)
    if first_parquet:
        check_parquet_columns(first_parquet, read_options(cfg))
    print(f"listed {sum(len(u) for _, u in units)} sources in {len(units)} work units "
          f"({time.time() - started:.1f} s)", file=sys.stderr)
    if cfg.overwrite:
        clear_output(cfg.output, cfg.storage_options)
    owns_ray = _start_ray(cfg.address)
    fs, path = open_fs(cfg.output, cfg.storage_options)
    try:
        build_dataset(cfg, units).write_parquet(path, filesystem=pyarrow_fs(fs))
    finally:
        if owns_ray:
            ray.shutdown()
    wall = time.time() - started
    rows, errors = count_rows(cfg)
    return Summary(images=rows, labelled=rows - errors, errors=errors, wall_seconds=wall,
                   output=cfg.output)
