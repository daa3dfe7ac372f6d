"""OpenVINO inference in Ray actors: compile once, keep every stream busy, commit rows.

The compiled model takes the preprocessed uint8 NHWC RGB image as it travels through the
object store; PrePostProcessor converts type, layout and colour order inside the graph, so
nothing float32 crosses the wire and the conversion runs in OpenVINO's threads.

Each call labels one chunk and commits it as one output file before returning, so a chunk
is done exactly when Ray sees its task finish; a task retried after an actor died rewrites
the same file name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import pyarrow as pa
import ray
from openvino.preprocess import ColorFormat, PrePostProcessor

from effnet_ray.ir import check_contract, default_cache_dir, local_ir, read_ir
from effnet_ray.registry import ModelSpec, get_spec, load_labels
from effnet_ray.storage import open_fs
from effnet_ray.writing import Chunk, commit_chunk, result_table

PRECISIONS = {"auto": None, "f32": "f32", "bf16": "bf16", "f16": "f16"}
CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


@dataclass(frozen=True)
class InferenceSettings:
    model_path: str
    model: str
    device: str = "CPU"
    precision: str = "auto"
    top_k: int = 5
    threads: int = 0
    cache_dir: str | None = None  # None: each node's default (ir.default_cache_dir)
    ir_sha256: str = ""
    output: str = ""
    # repr=False: credentials may be in here and must never reach a log line
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


def compile_settings(settings: InferenceSettings) -> dict:
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if PRECISIONS[settings.precision]:
        config["INFERENCE_PRECISION_HINT"] = PRECISIONS[settings.precision]
    if settings.threads:
        config["INFERENCE_NUM_THREADS"] = settings.threads
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


def compile_model(settings: InferenceSettings, core: ov.Core | None = None) -> ov.CompiledModel:
    core = core or ov.Core()
    cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    # compiled blobs: an actor restarting on a node it ran on skips compilation
    core.set_property({"CACHE_DIR": str(cache / "compiled")})
    spec = get_spec(settings.model)
    path = local_ir(settings.model_path, cache, settings.storage_options, settings.ir_sha256)
    model = read_ir(path, core)
    check_contract(model, spec, settings.model_path)
    gpus = [d for d in core.available_devices if d.startswith("GPU")]
    device = openvino_device(settings.device, _ray_gpu_ids(), gpus)
    config = compile_settings(settings)
    if not device.startswith(("CPU", "GPU", "NPU")):
        config.pop("INFERENCE_NUM_THREADS", None)
    return core.compile_model(with_contract_input(model, spec), device, config)


def _ray_gpu_ids() -> list[str]:
    if not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


class _Countdown:
    def __init__(self, count: int) -> None:
        self._count = count
        self._cond = threading.Condition()

    def done(self) -> None:
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._count == 0)


class Classifier:
    """Ray Data callable class: one compiled model and one request queue per actor.

    Several batches may be in the actor at once (Ray's concurrent calls); they share the
    queue, so the device never idles while one batch is being turned into rows.
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.spec = get_spec(settings.model)
        self.labels = load_labels(self.spec.labels)
        self.compiled = compile_model(settings)
        # Twice the device's optimal number of requests: the spare ones wait inside
        # OpenVINO, so a stream never idles while Python refills the queue (the actor runs
        # at Ray's worker niceness and shares the cores with decoding).
        optimal = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.queue = ov.AsyncInferQueue(self.compiled, 2 * optimal)
        self.queue.set_callback(self._finished)
        self.submit_lock = threading.Lock()
        self.fs, self.folder = open_fs(settings.output, settings.storage_options)

    @staticmethod
    def _finished(request: ov.InferRequest, userdata: tuple) -> None:
        logits, row, countdown = userdata
        logits[row] = request.get_output_tensor(0).data[0]
        countdown.done()

    def infer(self, images: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(images), self.spec.output.classes), dtype=np.float32)
        countdown = _Countdown(len(images))
        for row in range(len(images)):
            with self.submit_lock:
                self.queue.start_async({0: images[row:row + 1]}, (logits, row, countdown))
        if len(images):
            countdown.wait()
        return logits

    def label_chunk(self, chunk: dict) -> pa.Table:
        errors = chunk["errors"]
        good = [i for i, e in enumerate(errors) if e is None]
        height, width = self.spec.input.height, self.spec.input.width
        images = np.frombuffer(chunk["pixels"], np.uint8).reshape(len(good), height, width, 3)
        logits = np.zeros((len(errors), self.spec.output.classes), dtype=np.float32)
        logits[good] = self.infer(images)
        return result_table(chunk["paths"], self.spec.name, logits, errors, self.labels,
                            self.settings.top_k, chunk["source_labels"],
                            chunk["source_metadata"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Label and commit each chunk (a row of `batch`); return what was committed."""
        committed = []
        for i in range(batch.num_rows):
            chunk = {name: batch.column(name)[i] for name in batch.column_names}
            chunk = {k: v.as_buffer() if k == "pixels" else v.as_py() for k, v in chunk.items()}
            table = self.label_chunk(chunk)
            done = Chunk(chunk["uid"], chunk["first"], table.num_rows,
                         table.num_rows - table.column("error").null_count, chunk["last"])
            commit_chunk(self.fs, self.folder, done, table)
            committed.append(done)
        return pa.table({"rows": [c.rows for c in committed],
                         "errors": [c.errors for c in committed]})
