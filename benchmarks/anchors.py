"""What `label` is measured against: OpenVINO alone, fed random data by benchmark_app or the
same preprocessed photos through the model the actors compile; decoding's CPU cost; and
ImageNet-like photos to feed both."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image

from effnet_ray.inputs.listing import IMAGE_EXTENSIONS
from effnet_ray.inputs.preprocessing import preprocess_bytes
from effnet_ray.models.ir import ir_sha256
from effnet_ray.models.registry import PHOTOS, ModelSpec
from effnet_ray.options import InferenceOptions
from effnet_ray.run.inference import ModelFile, compile_model


def benchmark_app(model_path: Path, seconds: int = 20) -> float:
    """benchmark_app's saturated throughput on CPU at the default precision (THROUGHPUT
    hint, random input data)."""
    cmd = [str(Path(sys.executable).parent / "benchmark_app"), "-m", str(model_path), "-d",
           "CPU", "-hint", "throughput", "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Throughput:\s+([\d.]+) FPS", out).group(1))


def openvino_on_photos(model_path: Path, spec: ModelSpec, images: np.ndarray,
                       precision: str = "auto", seconds: float = 20.0) -> float:
    """Images/s of the model exactly as an actor compiles it (uint8 input, same hints),
    fed the preprocessed photos round and round for `seconds`: OpenVINO alone, no Ray."""
    options = InferenceOptions(model=spec.name, precision=precision)
    compiled = compile_model(options, spec, ModelFile(str(model_path), ir_sha256(model_path)))
    queue = ov.AsyncInferQueue(compiled, compiled.get_property(
        "OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    for i in range(len(queue)):  # warm-up: first inferences allocate
        queue.start_async({0: images[i % len(images)][None]})
    queue.wait_all()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        queue.start_async({0: images[done % len(images)][None]})
        done += 1
    queue.wait_all()
    return done / (time.perf_counter() - started)


def imagenet_like(folder: Path, count: int, size: tuple[int, int] = (500, 375),
                  quality: int = 90) -> Path:
    """`count` distinct JPEGs shaped like ImageNet's typical photo: seeded crops, flips
    and scales of the bundled photos, each saved at `size` and `quality`."""
    rng = np.random.default_rng(0)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir())
              if p.suffix in IMAGE_EXTENSIONS]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((left, top, left + cw, top + ch)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image.save(folder / f"{i:06d}.jpg", quality=quality)
    return folder


def decode_seconds(folder: Path, spec: ModelSpec, count: int = 400) -> float:
    """CPU seconds to decode and preprocess one photo in one process (contract steps)."""
    files = sorted(folder.iterdir())[:count]
    data = [f.read_bytes() for f in files]
    preprocess_bytes(data[0], spec)
    started = time.process_time()
    for blob in data:
        preprocess_bytes(blob, spec)
    return (time.process_time() - started) / len(data)


def preprocessed(folder: Path, spec: ModelSpec, count: int = 64) -> np.ndarray:
    return np.stack([preprocess_bytes(f.read_bytes(), spec)
                     for f in sorted(folder.iterdir())[:count]])


def _cpu_by_process() -> dict[int, tuple[float, str]]:
    """CPU seconds so far and a name, for every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(pid)] = ((int(fields[11]) + int(fields[12])) / tick,
                           _stage(name or stat.split("(", 1)[1].split(")")[0]))
    return found


def _stage(command: str) -> str:
    # A task worker between two tasks is ray::IDLE; the only tasks of a run decode.
    if "read_units" in command or command.startswith("ray::IDLE"):
        return "decoding tasks"
    if "Classifier" in command:
        return "inference actors"
    if "effnet-ray label" in command:
        return "driver"
    if "ray" in command:
        return "Ray's own processes"
    return "everything else"


def committed_images(output: Path) -> int:
    """Rows committed so far, from the part names alone (as `resume.scan` reads them)."""
    from effnet_ray.output.layout import Part

    try:
        return sum(part.rows for name in os.listdir(output) if (part := Part.parse(name)))
    except FileNotFoundError:
        return 0


def run_with_stage_cpu(cmd: list[str], output: Path, total: int) -> tuple[float, dict]:
    """Run a `label` command; its wall seconds and, over the middle of its steady state
    (from 25% to 85% of the images committed), CPU milliseconds per image by stage."""
    samples = []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        samples.append((committed_images(output), time.perf_counter(), _cpu_by_process()))
        time.sleep(0.25)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()}")
    window = [s for s in samples if 0.25 * total <= s[0] <= 0.85 * total]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        return seconds, {}
    (first, t0, before), (last, t1, after) = window[0], window[-1]
    images, stages = last - first, {}
    for pid, (cpu, stage) in after.items():
        stages[stage] = stages.get(stage, 0.0) + cpu - before.get(pid, (0.0, ""))[0]
    per_image = {stage: 1000 * cpu / images for stage, cpu in stages.items()}
    per_image["images/s in the window"] = images / (t1 - t0)
    return seconds, per_image
