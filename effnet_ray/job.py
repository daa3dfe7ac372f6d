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
from effnet_ray.listing import list_images, work_units
from effnet_ray.reading import read_and_preprocess

# Batches an actor holds at once: one being inferred while the next is unpacked, so the
# request queue never runs dry between batches.
CONCURRENT_CALLS = 2
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


def build_dataset(cfg: LabelConfig, paths: list[str]) -> ray.data.Dataset:
    units = work_units(paths, cfg.unit_size)
    settings = InferenceSettings(
        model_path=cfg.model_path, model=cfg.model, device=cfg.device,
        precision=cfg.precision, top_k=cfg.top_k, threads=cfg.threads,
        cache_dir=os.path.join(cfg.cache_dir, "compiled"),
    )
    ds = ray.data.from_items([{"paths": u} for u in units], override_num_blocks=len(units))
    # The memory reservation bounds decoding per node and, being unlike the actors'
    # arguments, keeps Ray Data from fusing decoding into the actors, where it would stall
    # inference.
    ds = ds.map_batches(read_and_preprocess, fn_kwargs={"model": cfg.model}, batch_size=1,
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


def count_rows(output: str) -> tuple[int, int]:
    table = pads.dataset(output, format="parquet").to_table(columns=["error"])
    errors = table.column("error").null_count
    return table.num_rows, table.num_rows - errors


def run(cfg: LabelConfig) -> Summary:
    if cfg.random_weights:
        print(f"warning: {cfg.model_path} has random weights: its labels mean nothing",
              file=sys.stderr)
    paths = list_images(list(cfg.inputs))
    if not paths:
        raise UserError(f"no images found in {', '.join(cfg.inputs)}")
    if cfg.overwrite:
        clear_output(cfg.output)
    started = time.time()
    owns_ray = _start_ray(cfg.address)
    try:
        build_dataset(cfg, paths).write_parquet(cfg.output)
    finally:
        if owns_ray:
            ray.shutdown()
    wall = time.time() - started
    rows, errors = count_rows(cfg.output)
    return Summary(images=rows, labelled=rows - errors, errors=errors, wall_seconds=wall,
                   output=cfg.output)
