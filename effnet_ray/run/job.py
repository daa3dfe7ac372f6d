"""The labeling job on Ray Data, given a `RunPlan`: skip what is done -> read+preprocess ->
infer+commit -> summary.

    work units ──resume (drop committed parts)──> reading/preprocessing (Ray tasks, half a
    CPU each) ──> ImageBatch (uint8 HxWx3 images) ──> inference (OpenVINO actor pool)
    ──commit──> OUT/part-*.parquet, one per batch

On a one-node cluster running OpenVINO on CPU, the actors read and preprocess their work
units themselves, in threads (`Pool.decoders`), and no batch crosses the object store."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import ray

from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import Unit
from effnet_ray.inputs.reading import read_units
from effnet_ray.inputs.samples import ReadTask
from effnet_ray.models.registry import load_class_names
from effnet_ray.output.commit import Committer
from effnet_ray.output.compaction import compact_new_parts
from effnet_ray.output.faults import OutputFailed
from effnet_ray.output.lease import LeaseLost
from effnet_ray.output.manifest import end_run, start_run
from effnet_ray.output.resume import Committed, scan, tidy
from effnet_ray.output.rows import reason_kind
from effnet_ray.run.cluster import (
    READER_CPUS,
    Watchdog,
    actor_decoders,
    alive_nodes,
    cpus_of,
    pool_size,
    start_ray,
)
from effnet_ray.run.inference import Classifier, DecodingClassifier, ModelFile
from effnet_ray.run.placement import actor_request
from effnet_ray.run.preflight import RunPlan
from effnet_ray.run.progress import LogLines, Reporter, Tracker
from effnet_ray.storage import is_transient, printable, short_reason

log = logging.getLogger(__name__)

# Batches an actor holds at once: one being inferred while the next is unpacked, so the
# request queue never runs dry between batches.
CONCURRENT_CALLS = 2
# Work units per decoding task, at least: Ray Data takes ~0.1 s to notice that a task ended
# and start the next (ray.wait timeouts in its executor), so a unit of 64 small photos per
# task would leave a decoder idle for a third of its time.
UNITS_PER_TASK = 8
# Decoding tasks per CPU of the cluster, at least, so the last tasks end close together.
TASKS_PER_CPU = 2
# One block per unit would cost Ray ~2 ms a block (62,500 units of a million images: 2 min
# before the first image); 1,000 blocks keep a big cluster's decoders busy and take seconds.
MAX_READ_BLOCKS = 1000
# Peak of decoding one image (benchmarks/bench_decode_memory.py, Pillow 13): its bytes, plus
# 8.0-8.5 bytes per pixel of the largest accepted image (decoded RGBX + the RGB copy), plus
# the process; the base also holds a batch of preprocessed images (32 x 1.08 MB for B7).
DECODE_BASE_MEMORY = 256 * 2**20
DECODE_BYTES_PER_PIXEL = 9
# Above this share of the CPU, the summary suggests fast decoding.
DECODE_SHARE_HINT = 0.25
# ... of a run long enough for it to matter (a few photos decode in no time either way),
# where at least this share of the images are JPEGs that fast decoding shrinks.
DECODE_SECONDS_HINT = 10.0
LARGE_JPEGS_HINT = 0.25


@dataclass(frozen=True)
class Summary:
    images: int  # rows in the output, this run's and earlier runs'
    errors: int
    this_run: int  # rows this run committed
    wall_seconds: float
    output: str
    top_classes: tuple[tuple[str, int], ...] = ()  # this run's most frequent, with counts
    reasons: tuple[tuple[str, int], ...] = ()  # this run's errors by reason
    decode_cpu_seconds: float = 0.0  # reading, decoding and preprocessing, this run
    inference_cpu_seconds: float = 0.0  # the actors' CPU besides decoding, this run
    decoding: str = "exact"  # --decode
    large_jpegs: int = 0  # this run's images that `--decode fast` would decode smaller

    @property
    def labelled(self) -> int:
        return self.images - self.errors

    @property
    def images_per_second(self) -> float:
        return self.this_run / self.wall_seconds if self.wall_seconds else 0.0

    def __str__(self) -> str:
        earlier = self.images - self.this_run
        resumed = f" ({earlier} from earlier runs)" if earlier else ""
        lines = [f"labelled {self.labelled} images{resumed}, {self.errors} errors, "
                 f"{self.images_per_second:.2f} images/s, {self.wall_seconds:.1f} s wall; "
                 f"output: {self.output}"]
        if self.top_classes:
            lines.append("most frequent this run: " + ", ".join(
                f"{name} {count}" for name, count in self.top_classes))
        if self.reasons:
            lines.append("errors this run: " + ", ".join(
                f"{reason} {count}" for reason, count in self.reasons))
        if self.decode_cpu_seconds + self.inference_cpu_seconds > 0:
            lines.append(f"CPU this run: decoding {self.decode_cpu_seconds:.1f} s, inference "
                         f"{self.inference_cpu_seconds:.1f} s")
        if self.decode_share > DECODE_SHARE_HINT and self.decoding == "exact" and \
                self.decode_cpu_seconds >= DECODE_SECONDS_HINT and \
                self.large_jpegs >= LARGE_JPEGS_HINT * self.this_run:
            lines.append(f"decoding took {self.decode_share:.0%} of the CPU: --decode fast "
                         f"decodes the {self.large_jpegs} large JPEGs in a fraction of the "
                         "time (see --help)")
        return "\n".join(lines)

    @property
    def decode_share(self) -> float:
        spent = self.decode_cpu_seconds + self.inference_cpu_seconds
        return self.decode_cpu_seconds / spent if spent else 0.0


def decode_memory(max_pixels: int, max_bytes: int) -> int:
    """The Ray memory a decoding task reserves: what the largest image it accepts costs."""
    return DECODE_BASE_MEMORY + max_bytes + DECODE_BYTES_PER_PIXEL * max_pixels


def _placement(resources: dict, labels: dict) -> dict:
    """map_batches arguments that pin a stage to the nodes carrying resources or labels."""
    return {**({"resources": resources} if resources else {}),
            **({"label_selector": labels} if labels else {})}


def _items(units: list[Unit], committed: Committed) -> list[dict]:
    """Units as Ray rows; names that are not valid UTF-8 travel percent-encoded."""
    return [{"kind": u.kind, "uris": [printable(s.uri) for s in u.sources],
             "sizes": [-1 if s.size is None else s.size for s in u.sources],
             "versions": [s.version for s in u.sources], "uid": u.uid,
             "done": committed.done_starts(u.uid)} for u in units]


def read_tasks(units: int, cpus: float) -> int:
    """How many decoding tasks share `units` work units on a cluster of `cpus` CPUs."""
    wanted = max(math.ceil(units / UNITS_PER_TASK), math.ceil(TASKS_PER_CPU * cpus))
    return max(1, min(units, wanted, MAX_READ_BLOCKS))


@dataclass(frozen=True)
class Actors:
    """The inference actors of a run; `decoders` > 0: each decodes its own work units in
    that many threads, rather than being fed by decoding tasks. `cpus`: the cluster's."""

    actors: int
    decoders: int = 0
    cpus: float = 0.0


def build_dataset(plan: RunPlan, units: list[Unit], committed: Committed, pool: Actors
                  ) -> ray.data.Dataset:
    options, place = plan.options, plan.options.placement
    items = _items(units, committed)
    blocks = min(len(items), MAX_READ_BLOCKS) if pool.decoders \
        else read_tasks(len(items), pool.cpus)
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=blocks)
    # Every batch a task yields is a block of its own, so it moves on as soon as it is made
    # rather than with the rest of its task's (Ray Data would gather yields into blocks of
    # up to 128 MiB: a whole task's output, for a small model).
    ds.context.target_max_block_size = 1
    task = ReadTask(options.read, plan.spec, options.storage_options)
    classifier = {"options": options.inference, "spec": plan.spec,
                  "model_file": ModelFile(plan.model_path, plan.ir_sha256,
                                          options.storage_options),
                  "commit": Committer(plan.output_uri, plan.lease.token,
                                      options.storage_options)}
    calls = CONCURRENT_CALLS
    if pool.decoders:
        calls = pool.decoders
        classifier["read"] = task
        # A call yields tiny rows of committed parts while it decodes; Ray Data's generator
        # backpressure (2 unread yields) would pause decoding until the driver's executor
        # comes round. Private in Ray 2.60; an unknown attribute is merely ignored.
        ds.context._max_num_blocks_in_streaming_gen_buffer = None
    else:
        # The memory reservation bounds decoding per node and, being unlike the actors'
        # arguments, keeps Ray Data from fusing decoding into the actors' calls, where it
        # would stall inference.
        ds = ds.map_batches(partial(read_units, task=task), batch_size=1,
                            num_cpus=READER_CPUS,
                            memory=decode_memory(options.read.max_pixels,
                                                 options.read.max_bytes),
                            batch_format="numpy",
                            **_placement(place.reader_resources, place.reader_labels))
    # One batch (or one work unit) per call; the actor commits each batch as one part.
    return ds.map_batches(
        DecodingClassifier if pool.decoders else Classifier,
        fn_constructor_kwargs=classifier,
        batch_size=1,
        batch_format="numpy" if pool.decoders else "pyarrow",
        num_cpus=place.actor_cpus,
        num_gpus=place.actor_gpus,
        **_placement(place.actor_resources, place.actor_labels),
        compute=ray.data.ActorPoolStrategy(
            size=pool.actors,
            max_tasks_in_flight_per_actor=calls * 2,
            max_concurrent_calls_per_actor=calls,
            enable_true_multi_threading=True,
        ),
    )


class Tally:
    """This run's classes and error reasons, from what the actors report per part."""

    def __init__(self) -> None:
        self.classes: Counter[int] = Counter()
        self.reasons: Counter[str] = Counter()
        self.decode_seconds = 0.0
        self.inference_seconds = 0.0
        self.large_jpegs = 0

    def add(self, stats: pa.Table) -> None:
        self.decode_seconds += pc.sum(stats.column("decode_seconds")).as_py() or 0.0
        self.inference_seconds += pc.sum(stats.column("inference_seconds")).as_py() or 0.0
        self.large_jpegs += pc.sum(stats.column("large_jpegs")).as_py() or 0
        self.classes.update(pc.list_flatten(stats.column("classes")).to_pylist())
        self.reasons.update(reason_kind(r) for r in
                            pc.list_flatten(stats.column("reasons")).to_pylist())


def _actors(plan: RunPlan) -> Actors:
    """Actors for the connected cluster, sized against what decoding needs."""
    options, place = plan.options, plan.options.placement
    request = actor_request(place.actor_cpus, place.actor_gpus or 0.0, place.actor_resources)
    reader = {"CPU": READER_CPUS,
              "memory": decode_memory(options.read.max_pixels, options.read.max_bytes),
              **place.reader_resources}
    nodes = alive_nodes()
    actors = pool_size(nodes, place.actors, request, place.actor_labels, reader,
                       place.reader_labels)
    decoders = actor_decoders(nodes, actors, request, reader, place, options.inference.device)
    log.info("inference: %d actor(s) on %s, each %s; decoding %s", actors,
             options.inference.device, request,
             f"in {decoders} thread(s) of each actor" if decoders else "in Ray tasks")
    return Actors(actors, decoders, cpus_of(nodes))


def _tracker(plan: RunPlan, committed: Committed) -> Tracker:
    """The run's progress, from what is listed and what `committed` holds."""
    return Tracker(plan.units, committed, plan.shard_rows)


def _label(plan: RunPlan, units: list[Unit], committed: Committed, pool: Actors,
           report: Reporter, tally: Tally) -> int:
    """Run the pipeline over `units`; the rows committed, reported as they come and counted
    into `tally`."""
    options = plan.options
    tracker = _tracker(plan, committed)
    state = tracker.state
    report(state)
    try:
        with Watchdog(options.run.stall_timeout) as watchdog:
            try:
                for stats in build_dataset(plan, units, committed, pool).iter_batches(
                        batch_size=None, batch_format="pyarrow"):
                    watchdog.committed()
                    tally.add(stats)
                    tracker.add(stats)
                    report(state)
                    if plan.lease.lost.is_set():
                        raise plan.lease.loss()
            except KeyboardInterrupt:
                if not watchdog.fired:
                    raise
                raise UserError(f"nothing was committed for {options.run.stall_timeout:.0f} s "
                                f"(after {state.this_run} images), so the run stopped; rerun "
                                "the same command to resume") from None
    except (ray.exceptions.RayError, LeaseLost, OutputFailed) as exc:
        cause = _root(exc)
        if isinstance(cause, LeaseLost):
            raise UserError(f"the run stopped after committing {state.this_run} images: "
                            f"{cause}") from exc
        if isinstance(cause, OutputFailed):  # Ray Data appends lines of its own to it
            raise UserError(f"the run stopped after committing {state.this_run} images: "
                            f"{str(cause).splitlines()[0]}; rerun the same command to resume"
                            ) from exc
        if is_transient(cause) or isinstance(cause, (OSError, ray.exceptions.RayError)):
            raise UserError(f"the run stopped after committing {state.this_run} images: "
                            f"{short_reason(cause)}; rerun the same command to resume") from exc
        raise
    return state.this_run


def _root(exc: BaseException) -> BaseException:
    """The error under Ray's task-error wrappers."""
    for _ in range(8):
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(exc, ray.exceptions.RayError) or inner is None:
            break
        exc = inner
    return exc


def run(plan: RunPlan, progress: Reporter | None = None) -> Summary:
    """Label what the plan's output does not hold yet; the plan's lease is released at the
    end, whatever happens. `progress` is called with a `ProgressState` after every commit
    (default: a log line every `--progress-seconds`)."""
    report = progress or LogLines(plan.options.run.progress_seconds)
    options, fs, path = plan.options, plan.fs, plan.path
    batch_size = options.read.batch_size
    started = time.time()
    owns_ray = False
    try:
        if plan.random_weights:
            log.warning("%s has random weights: its labels mean nothing", plan.model_path)
        committed = scan(fs, path, verify=True)  # damaged files are labelled again
        stale = tidy(fs, path, committed, plan.units)
        if stale:
            log.info("removed %d result files whose work units changed (files added, removed "
                     "or replaced); their images are labelled again", stale)
        todo = [u for u in plan.units if not committed.complete(u.uid, batch_size)]
        if len(todo) < len(plan.units):
            log.info("resuming: %d of %d work units are done (%d images); skipping them",
                     len(plan.units) - len(todo), len(plan.units), committed.totals()[0])
        owns_ray = start_ray(options.placement.address, options.run.verbose) if todo \
            else False
        pool = _actors(plan) if todo else Actors(0)
        plan.lease.start_heartbeat()
        manifest = start_run(fs, path, plan.manifest, plan.identity, run_settings(plan))
        status, this_run, tally = "failed", 0, Tally()
        try:
            this_run = _label(plan, todo, committed, pool, report, tally) if todo else 0
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            ending, final = _record_end(plan, manifest, status, this_run, tally)
            if hasattr(report, "close") and final is not None:
                state = _tracker(plan, final).state
                state.started, state.done_at_start = started, state.done - this_run
                report.close(state)
        if status == "complete" and final is not None and not ending.unfinished_units \
                and not options.run.no_compact:
            _compact_new_parts(plan, manifest, final)
    finally:
        if owns_ray:
            ray.shutdown()
        plan.lease.release()
    if ending.unfinished_units:
        raise UserError(f"{ending.unfinished_units} work units have no committed results "
                        "although the run finished; rerun the same command to label them")
    names = load_class_names(plan.spec.class_names)
    return Summary(images=ending.images, errors=ending.errors, this_run=this_run,
                   wall_seconds=time.time() - started, output=plan.output,
                   top_classes=tuple((names[c], n) for c, n in tally.classes.most_common(5)),
                   reasons=tuple(tally.reasons.most_common()),
                   decode_cpu_seconds=tally.decode_seconds,
                   inference_cpu_seconds=tally.inference_seconds,
                   decoding=plan.options.read.decode, large_jpegs=tally.large_jpegs)


class Ending(NamedTuple):
    """What the output holds once a run ends."""

    unfinished_units: int  # work units without all their parts
    images: int
    errors: int


def _record_end(plan: RunPlan, manifest: dict, status: str, this_run: int, tally: Tally
                ) -> tuple[Ending, Committed | None]:
    """Tidy and record the run's end in the manifest; what the output holds now. A failure
    here is logged, never raised over the error that ended the run."""
    fs, path = plan.fs, plan.path
    try:
        final = scan(fs, path)
        tidy(fs, path, final, plan.units)
        missing = sum(not final.complete(u.uid, plan.options.read.batch_size)
                      for u in plan.units)
        if status == "complete" and missing:
            status = "incomplete"
        images, errors = final.totals()
        end_run(fs, path, manifest, status, {
            "images": images, "errors": errors, "this_run": this_run,
            "decode_cpu_seconds": round(tally.decode_seconds, 1),
            "inference_cpu_seconds": round(tally.inference_seconds, 1)})
        return Ending(missing, images, errors), final
    except Exception as exc:
        if status == "complete":
            raise
        # a run that failed already says why; a failing output would only say it again
        (log.debug if status == "failed" else log.warning)(
            "could not record the run's end in the manifest: %s", short_reason(exc))
        return Ending(0, 0, 0), None


def _compact_new_parts(plan: RunPlan, manifest: dict, final: Committed) -> None:
    """Readers are slow on thousands of small files: a complete run joins the parts it added
    into large files, under its lease, with `compact`'s crash guarantees (a kill leaves what
    the next `label` or `compact` finishes)."""
    started = time.time()
    files = compact_new_parts(plan.fs, plan.path, manifest, final)
    if files:
        log.info("joined the new parts into %d file(s) (%.1f s)", files,
                 time.time() - started)


def run_settings(plan: RunPlan) -> dict:
    """What the manifest records about how a run ran (never the storage options)."""
    inference, place = plan.options.inference, plan.options.placement
    return {"model_path": plan.model_path, "random_weights": plan.random_weights,
            "device": inference.device, "pool": place.pool, "actors": place.actors,
            "actor_cpus": place.actor_cpus, "actor_gpus": place.actor_gpus,
            "actor_resources": place.actor_resources, "actor_labels": place.actor_labels,
            "threads": inference.threads, "address": place.address}
