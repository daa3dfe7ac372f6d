"""The labeling job: list -> skip what is done -> read+preprocess -> infer+commit.

    inputs ──listing──> work units ──resume (drop committed chunks)──>
        reading/preprocessing (Ray tasks, 1 CPU each) ──> chunks of uint8 HxWx3 images ──>
        inference (OpenVINO actor pool) ──writing──> OUT/part-*.parquet, one per chunk
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import pyarrow.compute as pc
import ray

from effnet_ray.config import LabelConfig, clear_output
from effnet_ray.errors import UserError
from effnet_ray.inference import Classifier, InferenceSettings
from effnet_ray.listing import Unit, list_sources, work_units
from effnet_ray.pools import actor_request, pool_size
from effnet_ray.reading import ReadOptions, check_parquet_columns, read_units
from effnet_ray.resume import (
    Committed,
    end_run,
    identity,
    read_manifest,
    scan,
    start_run,
    tidy,
)
from effnet_ray.storage import open_fs, short_reason

# Batches an actor holds at once: one being inferred while the next is unpacked, so the
# request queue never runs dry between batches.
CONCURRENT_CALLS = 2
# One block per unit would cost Ray ~2 ms a block (62,500 units of a million images: 2 min
# before the first image); 1,000 blocks keep a big cluster's decoders busy and take seconds.
MAX_READ_BLOCKS = 1000
# Enough for the largest image decoding accepts (MAX_PIXELS RGB) plus its resized copy.
DECODE_MEMORY = 512 * 2**20
PROGRESS_SECONDS = 15


@dataclass(frozen=True)
class Summary:
    images: int  # rows in the output, this run's and earlier runs'
    errors: int
    this_run: int  # rows this run committed
    wall_seconds: float
    output: str

    @property
    def labelled(self) -> int:
        return self.images - self.errors

    @property
    def images_per_second(self) -> float:
        return self.this_run / self.wall_seconds if self.wall_seconds else 0.0

    def __str__(self) -> str:
        earlier = self.images - self.this_run
        resumed = f" ({earlier} from earlier runs)" if earlier else ""
        return (f"labelled {self.labelled} images{resumed}, {self.errors} errors, "
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
                       max_pixels=cfg.max_pixels, batch_size=cfg.batch_size)


def _placement(resources: dict, labels: dict) -> dict:
    """map_batches arguments that pin a stage to the nodes carrying resources or labels."""
    return {**({"resources": resources} if resources else {}),
            **({"label_selector": labels} if labels else {})}


def build_dataset(cfg: LabelConfig, units: list[Unit], committed: Committed, actors: int
                  ) -> ray.data.Dataset:
    settings = InferenceSettings(
        model_path=cfg.model_path, model=cfg.model, device=cfg.device,
        precision=cfg.precision, top_k=cfg.top_k, threads=cfg.threads,
        cache_dir=cfg.cache_dir or None, ir_sha256=cfg.ir_sha256, output=cfg.output,
        storage_options=cfg.storage_options,
    )
    items = [{"kind": u.kind, "uris": list(u.uris), "uid": u.uid,
              "done": committed.done_starts(u.uid)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_READ_BLOCKS))
    # The memory reservation bounds decoding per node and, being unlike the actors'
    # arguments, keeps Ray Data from fusing decoding into the actors, where it would stall
    # inference.
    ds = ds.map_batches(read_units, fn_kwargs={"options": read_options(cfg)}, batch_size=1,
                        num_cpus=1, memory=DECODE_MEMORY, batch_format="numpy",
                        **_placement(cfg.reader_resources, cfg.reader_labels))
    # One chunk per call: the actor commits exactly the rows of one output file.
    return ds.map_batches(
        Classifier,
        fn_constructor_kwargs={"settings": settings},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cfg.actor_cpus,
        num_gpus=cfg.actor_gpus,
        **_placement(cfg.actor_resources, cfg.actor_labels),
        compute=ray.data.ActorPoolStrategy(
            size=actors,
            max_tasks_in_flight_per_actor=CONCURRENT_CALLS * 2,
            max_concurrent_calls_per_actor=CONCURRENT_CALLS,
            enable_true_multi_threading=True,
        ),
    )


def _label(cfg: LabelConfig, units: list[Unit], committed: Committed) -> int:
    """Run the pipeline over `units`; the rows committed, with a progress line now and then."""
    rows = errors = 0
    started = last_report = time.time()
    request = actor_request(cfg.actor_cpus, cfg.actor_gpus, cfg.actor_resources)
    owns_ray = _start_ray(cfg.address)
    try:
        actors = pool_size(cfg.actors, request, cfg.actor_labels)
        print(f"inference: {actors} actor(s) on {cfg.device}, each {request}", file=sys.stderr)
        for stats in build_dataset(cfg, units, committed, actors).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            rows += pc.sum(stats.column("rows")).as_py() or 0
            errors += pc.sum(stats.column("errors")).as_py() or 0
            if time.time() - last_report >= PROGRESS_SECONDS:
                last_report = time.time()
                print(f"progress: {rows} images committed this run ({errors} errors), "
                      f"{rows / (last_report - started):.2f} images/s", file=sys.stderr)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a task that failed for good: what is committed stays
        raise UserError(f"the run stopped after committing {rows} images: "
                        f"{short_reason(exc)}; rerun the same command to resume") from None
    finally:
        if owns_ray:
            ray.shutdown()
    return rows


def run(cfg: LabelConfig) -> Summary:
    if cfg.random_weights:
        print(f"warning: {cfg.model_path} has random weights: its labels mean nothing",
              file=sys.stderr)
    started = time.time()
    units = list(work_units(list_sources(cfg.inputs, cfg.layout, cfg.storage_options),
                            cfg.unit_size))
    if not units:
        raise UserError(f"no images found in {', '.join(cfg.inputs)}")
    first_parquet = next((u.uris[0] for u in units if u.kind == "parquet"), None)
    if first_parquet:
        check_parquet_columns(first_parquet, read_options(cfg))
    print(f"listed {sum(len(u.uris) for u in units)} sources in {len(units)} work units "
          f"({time.time() - started:.1f} s)", file=sys.stderr)
    if cfg.overwrite:
        clear_output(cfg.output, cfg.storage_options)
    fs, path = open_fs(cfg.output, cfg.storage_options)
    committed = scan(fs, path)
    stale = tidy(fs, path, committed, units)
    if stale:
        print(f"removed {stale} result files whose work units changed (files added or "
              "removed); their images are labelled again",
              file=sys.stderr)
    todo = [u for u in units if not committed.complete(u.uid, cfg.batch_size)]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} work units are done "
              f"({committed.totals()[0]} images); skipping them", file=sys.stderr)
    manifest = start_run(fs, path, read_manifest(fs, path), identity(cfg, cfg.ir_sha256),
                         run_settings(cfg))
    status, this_run = "failed", 0
    try:
        this_run = _label(cfg, todo, committed) if todo else 0
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        final = scan(fs, path)
        tidy(fs, path, final, units)
        missing = sum(not final.complete(u.uid, cfg.batch_size) for u in units)
        if status == "complete" and missing:
            status = "incomplete"
        images, errors = final.totals()
        end_run(fs, path, manifest, status, {"images": images, "errors": errors,
                                             "this_run": this_run})
    if missing:
        raise UserError(f"{missing} work units have no committed results although the run "
                        "finished; rerun the same command to label them")
    return Summary(images=images, errors=errors, this_run=this_run,
                   wall_seconds=time.time() - started, output=cfg.output)


def run_settings(cfg: LabelConfig) -> dict:
    """What the manifest records about how a run ran (never the storage options)."""
    return {"model_path": cfg.model_path, "random_weights": cfg.random_weights,
            "device": cfg.device, "pool": cfg.pool, "actors": cfg.actors,
            "actor_cpus": cfg.actor_cpus, "actor_gpus": cfg.actor_gpus,
            "actor_resources": cfg.actor_resources, "actor_labels": cfg.actor_labels,
            "threads": cfg.threads, "address": cfg.address}
