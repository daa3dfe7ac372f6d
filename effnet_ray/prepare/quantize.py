"""`effnet-ray models quantize`: an INT8 IR from the user's own photos, with an accuracy guard.

Calibration photos are any inputs `label` accepts (folders, shards, URIs), read and
preprocessed by the same code as the labeling job, so NNCF sees exactly what the model will.
Part of them is held out: the INT8 IR and its source are run on those, and an INT8 IR whose
top-1 agrees with its source on fewer than `--min-agreement` of them is not written. NNCF is
imported here only (the `quantize` extra); `label` never needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import list_sources, work_units
from effnet_ray.inputs.reading import preprocess_sample, unit_samples
from effnet_ray.inputs.samples import ReadTask
from effnet_ray.models.ir import check_contract, ir_sha256, metadata, read_ir, save_ir, set_metadata
from effnet_ray.models.registry import ModelSpec
from effnet_ray.options import ReadOptions
from effnet_ray.storage import redact

log = logging.getLogger(__name__)

SUBSET_SIZE = 300  # calibration photos used by default
MIN_AGREEMENT = 0.9
HOLDOUT_SHARE = 0.2


@dataclass(frozen=True)
class Guard:
    held_out: int
    top1_agreement: float
    top5_overlap: float


def calibration_images(inputs: list[str], spec: ModelSpec, storage_options: dict | None,
                       limit: int) -> tuple[list[np.ndarray], int]:
    """Up to `limit` preprocessed images (uint8 HxWx3 RGB) and how many inputs could not be
    used."""
    task = ReadTask(ReadOptions(), spec, storage_options)
    images, unusable = [], 0
    for unit in work_units(list_sources(inputs, options=storage_options),
                           task.options.unit_size):
        samples = unit_samples(unit.kind, list(unit.uris),
                               [s.size for s in unit.sources],
                               [s.version for s in unit.sources], task, lambda i: False)
        for sample in samples:
            image = preprocess_sample(sample, task) if sample is not None else None
            if image is None:
                unusable += 1
                continue
            images.append(image)
            if len(images) >= limit:
                return images, unusable
    return images, unusable


def contract_tensor(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """A uint8 HxWx3 RGB image as the IR's f32 input: colour order and layout of the
    contract, values 0-255 (the IR normalises inside)."""
    x = image.astype(np.float32)
    if spec.input.color == "BGR":
        x = x[..., ::-1]
    x = x[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if spec.input.layout == "NCHW" else x)


def _top5(compiled: ov.CompiledModel, images: list[np.ndarray], spec: ModelSpec
          ) -> np.ndarray:
    return np.stack([np.argsort(-compiled(contract_tensor(i, spec))[0][0], kind="stable")[:5]
                     for i in images])


def agreement(source: ov.Model, quantized: ov.Model, images: list[np.ndarray],
              spec: ModelSpec) -> Guard:
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    a = _top5(core.compile_model(source, "CPU", f32), images, spec)
    b = _top5(core.compile_model(quantized, "CPU", f32), images, spec)
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b, strict=True)])
    return Guard(len(images), float(np.mean(a[:, 0] == b[:, 0])), float(overlap))


def quantize(spec: ModelSpec, source_path: Path, inputs: list[str], dest: Path,
             subset_size: int = SUBSET_SIZE, min_agreement: float = MIN_AGREEMENT,
             storage_options: dict | None = None) -> tuple[Path, Guard]:
    try:
        import nncf
    except ImportError:
        raise UserError("quantize needs NNCF: pip install 'effnet-ray[quantize]'") from None
    if not 0 <= min_agreement <= 1:
        raise UserError(f"--min-agreement must be between 0 and 1, not {min_agreement}")
    if subset_size < 1:
        raise UserError(f"--subset-size must be positive, not {subset_size}")
    model = read_ir(source_path)
    check_contract(model, spec, str(source_path))
    shown = ", ".join(redact(i) for i in inputs)
    holdout_wanted = max(1, round(subset_size * HOLDOUT_SHARE)) if min_agreement else 0
    images, unusable = calibration_images(inputs, spec, storage_options,
                                          subset_size + holdout_wanted)
    if not images:
        raise UserError(f"no usable calibration photo in {shown} ({unusable} unreadable)")
    held = images[::5][:holdout_wanted] if min_agreement and len(images) > 1 else []
    held_ids = {id(i) for i in held}
    calibration = [i for i in images if id(i) not in held_ids] or images
    if min_agreement and not held:
        raise UserError("one usable calibration photo leaves none to check the INT8 model "
                        "on; give more photos, or pass --min-agreement 0")
    log.info("calibrating on %d photos (%d held out, %d unreadable)", len(calibration),
             len(held), unusable)
    # Full bias correction: on Lite0 and the bundled photos and variants, top-1 agreement
    # with f32 was 92.9% against 88.9% with NNCF's fast default (the MIXED preset: 87.9%).
    quantized = nncf.quantize(model, nncf.Dataset(calibration,
                                                  lambda i: contract_tensor(i, spec)),
                              subset_size=len(calibration), fast_bias_correction=False)
    guard = agreement(model, quantized, held, spec) if held else Guard(0, 1.0, 1.0)
    if held and guard.top1_agreement < min_agreement:
        raise UserError(f"the INT8 model agrees with {source_path.name}'s top-1 on "
                        f"{guard.top1_agreement:.0%} of {len(held)} held-out photos, below "
                        f"--min-agreement {min_agreement:.0%}; nothing was written (more or "
                        "more typical calibration photos may help)")
    set_metadata(quantized, {**metadata(model), "precision": "int8",
                             "source_sha256": ir_sha256(source_path),
                             "calibration_photos": len(calibration),
                             "held_out": len(held), "top1_agreement": guard.top1_agreement,
                             "top5_overlap": guard.top5_overlap,
                             "nncf": nncf.__version__})
    return save_ir(quantized, dest), guard
