"""OpenVINO inference in Ray actors: compile once, keep every stream busy, label batches.

The compiled model takes the preprocessed uint8 NHWC RGB image as it travels through the
object store; PrePostProcessor converts type, layout and colour order inside the graph, so
nothing float32 crosses the wire and the conversion runs in OpenVINO's threads.

An actor call reads as `commit(label(batch))`: labelling is pure, and the commit
(`writing.Committer`, injected) writes the rows as one output part before the call returns,
so a part is done exactly when Ray sees its task finish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import pyarrow as pa
import ray
from openvino.preprocess import ColorFormat, PrePostProcessor

from effnet_ray.batch import ImageBatch
from effnet_ray.ir import check_contract, default_cache_dir, local_ir, pooled_features, read_ir
from effnet_ray.options import PRECISIONS, InferenceOptions
from effnet_ray.registry import ModelSpec, load_class_names
from effnet_ray.writing import Part, result_table


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


def compile_settings(options: InferenceOptions) -> dict:
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if PRECISIONS[options.precision]:
        config["INFERENCE_PRECISION_HINT"] = PRECISIONS[options.precision]
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

    def __init__(self, options: InferenceOptions, spec: ModelSpec, model_file: ModelFile,
                 commit: Callable[[ImageBatch, pa.Table], Part]) -> None:
        self.options, self.spec, self.commit = options, spec, commit
        self.class_names = load_class_names(spec.class_names)
        self.compiled = compile_model(options, spec, model_file)
        # Twice the device's optimal number of requests: the spare ones wait inside
        # OpenVINO, so a stream never idles while Python refills the queue (the actor runs
        # at Ray's worker niceness and shares the cores with decoding).
        optimal = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.queue = ov.AsyncInferQueue(self.compiled, 2 * optimal)
        self.queue.set_callback(self._finished)
        self.submit_lock = threading.Lock()

    @staticmethod
    def _finished(request: ov.InferRequest, userdata: tuple) -> None:
        outputs, row, countdown = userdata
        for index, array in enumerate(outputs):
            array[row] = request.get_output_tensor(index).data.reshape(-1)
        countdown.done()

    def infer(self, images: np.ndarray) -> list[np.ndarray]:
        """One array per compiled output (logits, then embeddings), a row per image."""
        outputs = [np.zeros((len(images), int(np.prod(port.get_shape()[1:]))), np.float32)
                   for port in self.compiled.outputs]
        countdown = _Countdown(len(images))
        for row in range(len(images)):
            with self.submit_lock:
                self.queue.start_async({0: images[row:row + 1]}, (outputs, row, countdown))
        if len(images):
            countdown.wait()
        return outputs

    def label(self, batch: ImageBatch) -> pa.Table:
        logits, *embeddings = self.infer(batch.images)
        return result_table(batch, logits, self.spec.name, self.class_names,
                            self.options.top_k, embeddings=embeddings[0] if embeddings else None,
                            keep_logits=not self.options.no_logits)

    def __call__(self, table: pa.Table) -> pa.Table:
        """Label and commit each batch (a row of `table`); return what was committed."""
        parts, classes, reasons = [], [], []
        for row in range(table.num_rows):
            batch = ImageBatch.from_arrow(table, row)
            rows = self.label(batch)
            parts.append(self.commit(batch, rows))
            classes.append(rows.column("class_id").drop_null())
            reasons.append(rows.column("error").drop_null())
        return pa.table({"uid": [p.uid for p in parts], "first": [p.first for p in parts],
                         "last": [p.last for p in parts],
                         "rows": [p.rows for p in parts], "errors": [p.errors for p in parts],
                         "classes": pa.array([c.to_pylist() for c in classes],
                                             pa.list_(pa.int32())),
                         "reasons": pa.array([r.to_pylist() for r in reasons],
                                             pa.list_(pa.string()))})
