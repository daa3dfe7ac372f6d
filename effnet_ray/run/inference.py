"""OpenVINO inference in Ray actors: compile once, keep every stream busy, label batches.

The compiled model takes the preprocessed uint8 NHWC RGB image as it travels through the
object store; PrePostProcessor converts type, layout and colour order inside the graph, so
nothing float32 crosses the wire and the conversion runs in OpenVINO's threads.

An actor call yields `commit(label(batch))` for each batch it is given (`Classifier`) or
decodes from its work units (`DecodingClassifier`): labelling is pure, and the commit
(`writing.Committer`, injected) writes the rows as one output part before the call yields
its row, so a part is done exactly when the driver hears of it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import pyarrow as pa
import pyarrow.compute as pc
import ray
from openvino.preprocess import ColorFormat, PrePostProcessor

from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.inputs.reading import unit_batches
from effnet_ray.inputs.samples import ReadTask
from effnet_ray.models.cache import default_cache_dir, local_ir, one_at_a_time
from effnet_ray.models.ir import check_contract, pooled_features, read_ir
from effnet_ray.models.registry import ModelSpec, load_class_names
from effnet_ray.options import PRECISIONS, InferenceOptions
from effnet_ray.output.layout import Part
from effnet_ray.output.rows import result_table

REQUESTS_PER_OPTIMAL = 4
# A call over a work unit reports its committed parts to the driver at most this often: each
# report is a block that Ray Data keeps metadata and stats of in the driver and its stats
# actor until the run ends, so one per part (32 images) would grow them with the run.
REPORT_SECONDS = 1.0


@dataclass(frozen=True)
class ModelFile:
    """The IR a run uses, as the driver resolved and checksummed it."""

    path: str
    sha256: str
    # repr=False: credentials for fetching it may be in here
    storage_options: dict = field(default_factory=dict, repr=False)


def with_contract_input(model: ov.Model, spec: ModelSpec) -> ov.Model:
    """Accept 1xHxWx3 uint8 RGB and convert to what the IR's contract says."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ColorFormat.RGB)
    ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if spec.input.color == "BGR":
        ppp.input().preprocess().convert_color(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout(spec.input.layout))
    return ppp.build()


def compile_settings(options: InferenceOptions) -> dict[str, str | int]:
    config: dict[str, str | int] = {"PERFORMANCE_HINT": "THROUGHPUT"}
    precision = PRECISIONS[options.precision]
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    return config


def openvino_device(device: str, ray_gpu_ids: list[str], visible_gpus: list[str]) -> str:
    """The OpenVINO device for an actor Ray gave `ray_gpu_ids`.

    Ray numbers Intel GPUs as Level Zero does and hides the others from an actor with
    ZE_AFFINITY_MASK. OpenVINO's GPU plugin runs on OpenCL, which may or may not honour that
    mask: if OpenVINO sees just the actor's GPUs, they are GPU.0..; if it sees all of them,
    Ray's id is the index (both enumerate the node's GPUs in the same, PCI, order).
    An explicit GPU.N, or a run without Ray GPUs, is left as it is.
    """
    if device != "GPU" or not ray_gpu_ids:
        return device
    if len(visible_gpus) <= len(ray_gpu_ids):
        return "GPU.0" if len(visible_gpus) > 1 else "GPU"
    return f"GPU.{ray_gpu_ids[0]}"


def compile_model(options: InferenceOptions, spec: ModelSpec, model_file: ModelFile,
                  core: ov.Core | None = None) -> ov.CompiledModel:
    core = core or ov.Core()
    cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    # compiled blobs: an actor restarting on a node it ran on skips compilation
    core.set_property({"CACHE_DIR": str(cache / "compiled")})
    path = local_ir(model_file.path, cache, model_file.storage_options, model_file.sha256)
    model = read_ir(path, core)
    check_contract(model, spec, model_file.path)
    if options.embeddings:  # a second output of the same graph: no second inference
        model.add_outputs([pooled_features(model, model_file.path)])
    gpus = [d for d in core.available_devices if d.startswith("GPU")]
    device = openvino_device(options.device, _ray_gpu_ids(), gpus)
    config = compile_settings(options)
    if not device.startswith(("CPU", "GPU", "NPU")):
        config.pop("INFERENCE_NUM_THREADS", None)
    # OpenVINO writes a blob in place: two processes compiling the same model into one
    # cache at once abort (std::filesystem error) when one replaces the other's file.
    with one_at_a_time(cache / "compiled"):
        return core.compile_model(with_contract_input(model, spec), device, config)


def _ray_gpu_ids() -> list[str]:
    if not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


class Inferring:
    """A batch in OpenVINO's requests: its outputs fill in row by row."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs
        self._left = len(outputs[0]) if outputs else 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def done(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._left -= 1
            self._error = self._error or error
            if self._left == 0:
                self._cond.notify_all()

    def wait(self) -> list[np.ndarray]:
        """One array per compiled output (logits, then embeddings), a row per image."""
        with self._cond:
            self._cond.wait_for(lambda: self._left == 0)
        if self._error is not None:
            raise self._error
        return self.outputs


class Classifier:
    """Ray Data callable class: one compiled model and its requests per actor.

    Several batches may be in the actor at once (Ray's concurrent calls); they share the
    requests, so the device never idles while one batch is being turned into rows. No
    request has a Python callback: OpenVINO's threads would wait for the GIL at the end of
    every inference, and with decoding threads in the process they waited long enough to
    leave the cores half idle. One thread of ours collects finished requests instead.
    """

    def __init__(self, options: InferenceOptions, spec: ModelSpec, model_file: ModelFile,
                 commit: Callable[[ImageBatch, pa.Table], Part]) -> None:
        self.options, self.spec, self.commit = options, spec, commit
        self.class_names = load_class_names(spec.class_names)
        self.compiled = compile_model(options, spec, model_file)
        # Spare requests wait inside OpenVINO, so a stream never idles while Python, behind
        # the GIL, refills or collects the others: with 2x the optimal number the cores of a
        # Lite0 actor that decodes were 97% busy, with 4x 99%.
        optimal = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(REQUESTS_PER_OPTIMAL * optimal):
            self.idle.put(self.compiled.create_infer_request())
        self.running: queue.SimpleQueue = queue.SimpleQueue()  # in the order they started
        # Concurrent first calls into OpenVINO's Python API deadlocked here (a C++ static
        # initialiser waiting for the GIL that the rival thread held): one start at a time.
        self.start_lock = threading.Lock()
        self.cpu = CpuSplit(decodes_here=False)
        threading.Thread(target=self._collect, daemon=True, name="effnet-ray-collect").start()

    def _collect(self) -> None:
        while True:
            request, inferring, row = self.running.get()
            try:
                request.wait()
                for index, array in enumerate(inferring.outputs):
                    array[row] = request.get_output_tensor(index).data.reshape(-1)
            except Exception as exc:  # the batch's caller raises it
                inferring.done(exc)
            else:
                inferring.done()
            finally:
                self.idle.put(request)

    def submit(self, images: np.ndarray) -> Inferring:
        """Start every image of a batch; `Inferring.wait` gives the outputs."""
        inferring = Inferring([
            np.zeros((len(images), int(np.prod(port.get_shape()[1:]))), np.float32)
            for port in self.compiled.outputs])
        for row in range(len(images)):
            request = self.idle.get()
            with self.start_lock:
                request.start_async({0: images[row:row + 1]})
            self.running.put((request, inferring, row))
        return inferring

    def infer(self, images: np.ndarray) -> list[np.ndarray]:
        """One array per compiled output (logits, then embeddings), a row per image."""
        return self.submit(images).wait()

    def label(self, batch: ImageBatch, inferring: Inferring | None = None) -> pa.Table:
        logits, *embeddings = (inferring or self.submit(batch.images)).wait()
        return result_table(batch, logits, self.spec.name, self.class_names,
                            self.options.top_k, embeddings=embeddings[0] if embeddings else None,
                            keep_logits=not self.options.no_logits)

    def label_and_commit(self, batch: ImageBatch, inferring: Inferring | None = None) -> pa.Table:
        """Label and commit one batch; what was committed, as a row for the driver."""
        rows = self.label(batch, inferring)
        part = self.commit(batch, rows)
        return part_row(part, rows, *self.cpu.charge(batch), large_jpegs=batch.large_jpegs)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        """Ray Data stage over decoded batches (a row of `table` each)."""
        for row in range(table.num_rows):
            yield self.label_and_commit(ImageBatch.from_arrow(table, row))


class DecodingClassifier(Classifier):
    """A `Classifier` that decodes its own work units: decoding runs in threads of the
    actor's process (Pillow releases the GIL), beside OpenVINO's, rather than in tasks that
    hand every batch over through Ray's object store. Each call decodes one unit and infers
    its batches one behind: batch k is inferred while batch k+1 is decoded."""

    def __init__(self, options: InferenceOptions, spec: ModelSpec, model_file: ModelFile,
                 commit: Callable[[ImageBatch, pa.Table], Part], read: ReadTask) -> None:
        super().__init__(options, spec, model_file, commit)
        self.read = read
        self.cpu = CpuSplit(decodes_here=True)

    def __call__(self, units: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        """Ray Data stage over work units; committed parts are reported together, at most
        every REPORT_SECONDS and at the end of the call."""
        behind, unreported, reported = None, [], time.monotonic()
        for batch in unit_batches(units, self.read):
            ahead = (batch, self.submit(batch.images))
            if behind:
                unreported.append(self.label_and_commit(*behind))
                if time.monotonic() - reported >= REPORT_SECONDS:
                    yield joined(unreported)
                    unreported, reported = [], time.monotonic()
            behind = ahead
        if behind:
            unreported.append(self.label_and_commit(*behind))
        if unreported:
            yield joined(unreported)


class CpuSplit:
    """This actor's CPU, split between decoding and the rest (inference, turning outputs into
    rows, committing), charged batch by batch. The rest is the process's CPU time less the
    decoding done in it; running totals keep concurrent batches from being counted twice."""

    def __init__(self, decodes_here: bool) -> None:
        self.decodes_here = decodes_here
        self._lock = threading.Lock()
        self._start = time.process_time()
        self._decoded = 0.0  # in this process
        self._charged = 0.0  # to inference so far

    def charge(self, batch: ImageBatch) -> tuple[float, float]:
        """(decoding, inference) CPU seconds of one finished batch."""
        with self._lock:
            if self.decodes_here:
                self._decoded += batch.decode_seconds
            rest = max(0.0, time.process_time() - self._start - self._decoded - self._charged)
            self._charged += rest
            return batch.decode_seconds, rest


PART = pa.struct([("uid", pa.string()), ("first", pa.int64()), ("last", pa.bool_()),
                  ("rows", pa.int64()), ("errors", pa.int64())])


def part_row(part: Part, rows: pa.Table, decode_seconds: float = 0.0,
             inference_seconds: float = 0.0, large_jpegs: int = 0) -> pa.Table:
    """A committed part as a report for the driver: where it is, its counts, its classes and
    reasons, the CPU its decoding and its inference took, and its large JPEGs."""
    return _report([{"uid": part.uid, "first": part.first, "last": part.last,
                     "rows": part.rows, "errors": part.errors}],
                   rows.column("class_id").drop_null().to_pylist(),
                   rows.column("error").drop_null().to_pylist(),
                   decode_seconds, inference_seconds, large_jpegs)


def joined(reports: list[pa.Table]) -> pa.Table:
    """Reports as one report. It is one row: with `job.py`'s block size of one byte, Ray Data
    would make each row of a yielded table a block of its own."""
    table = pa.concat_tables(reports)
    return _report(pc.list_flatten(table.column("parts")).to_pylist(),
                   pc.list_flatten(table.column("classes")).to_pylist(),
                   pc.list_flatten(table.column("reasons")).to_pylist(),
                   pc.sum(table.column("decode_seconds")).as_py() or 0.0,
                   pc.sum(table.column("inference_seconds")).as_py() or 0.0,
                   pc.sum(table.column("large_jpegs")).as_py() or 0)


def _report(parts: list[dict], classes: list[int], reasons: list[str], decode_seconds: float,
            inference_seconds: float, large_jpegs: int) -> pa.Table:
    return pa.table({"parts": pa.array([parts], pa.list_(PART)),
                     "rows": [sum(p["rows"] for p in parts)],
                     "errors": [sum(p["errors"] for p in parts)],
                     "decode_seconds": [decode_seconds],
                     "inference_seconds": [inference_seconds],
                     "large_jpegs": [large_jpegs],
                     "classes": pa.array([classes], pa.list_(pa.int32())),
                     "reasons": pa.array([reasons], pa.list_(pa.string()))})
