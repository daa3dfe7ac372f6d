"""Benchmark: what `--decode fast` changes and what it saves, on large photos.

For each contract (Lite0 with its real weights, both B7 seeds with seeded random weights) and
for the bundled photos enlarged to 12 MP (4032x3024) and 48 MP (8000x6000) two ways, it
prints the logits' relative L2 distance between fast and exact decoding and their top-1
agreement (OpenVINO at f32, so that only decoding differs), and the CPU time per photo of
decoding + preprocessing, exact and fast, with their ratio. The enlargements:
- smooth: bicubic upscaling, which has no fine detail: it understates the difference;
- grain: the same plus Gaussian noise (sigma 8) per pixel, finer than any lens resolves:
  it overstates it.
PNG and WebP have no DCT scaling; their rows show what the reduced resize alone saves and
changes. For scale, each model's row "bf16" gives the distance between the default precision
(bf16 on CPUs that have it) and f32, both on exact decoding.

    .venv/bin/python benchmarks/bench_decode_fast.py [--photos 7] [--no-b7]
"""

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic import cpu  # noqa: E402
from effnet_ray.inputs.preprocessing import preprocess_bytes  # noqa: E402
from effnet_ray.models.cache import default_cache_dir  # noqa: E402
from effnet_ray.models.registry import PHOTOS, get_spec  # noqa: E402
from effnet_ray.prepare.convert import prepare_model  # noqa: E402
from effnet_ray.run.inference import with_contract_input  # noqa: E402

SIZES = {"12MP": (4032, 3024), "48MP": (8000, 6000)}


def photos(count: int) -> list[Image.Image]:
    found = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
    return [Image.open(p).convert("RGB") for p in found[:count]]


def enlarged(image: Image.Image, size: tuple[int, int], grain: bool, seed: int) -> Image.Image:
    big = image.resize(size, Image.Resampling.BICUBIC)
    if not grain:
        return big
    noise = np.random.default_rng(seed).normal(0, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(big) + noise, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def cpu_ms(data: bytes, spec: object, decoding: str, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        preprocess_bytes(data, spec, decoding=decoding)
        best = min(best, time.process_time() - start)
    return 1000 * best


def logits(compiled: ov.CompiledModel, array: np.ndarray) -> np.ndarray:
    return compiled({0: array[None]})[0][0].astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=7)
    parser.add_argument("--no-b7", action="store_true")
    args = parser.parse_args()
    cache = default_cache_dir()
    models = {"efficientnet-lite0": prepare_model("efficientnet-lite0", cache)}
    if not args.no_b7:
        for name in ("efficientnet-b7-pytorch", "efficientnet-b7_auto_aug"):
            models[name] = prepare_model(name, cache, random_seed=0)
    core = ov.Core()
    print(f"cpu: {cpu()}; {args.photos} photos; OpenVINO f32")
    sources = photos(args.photos)
    inputs = {(size, fmt, grain): [encoded(enlarged(im, dims, grain, i), fmt)
                                   for i, im in enumerate(sources)]
              for size, dims in SIZES.items() for fmt in ("JPEG", "PNG")
              for grain in (False, True) if fmt == "JPEG" or (grain and size == "12MP")}
    print("\nlogits, fast against exact (per photo: median and worst relative L2; top-1 "
          "agreement)")
    for name, path in models.items():
        spec = get_spec(name)
        graph = with_contract_input(core.read_model(path), spec)
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        default = core.compile_model(graph, "CPU")
        reference = [preprocess_bytes(d, spec) for d in inputs[("12MP", "JPEG", True)]]
        bf16 = [np.linalg.norm(logits(default, a) - logits(compiled, a))
                / np.linalg.norm(logits(compiled, a)) for a in reference]
        precision = default.get_property("INFERENCE_PRECISION_HINT")
        print(f"  {name:26} default precision ({precision}) against f32, exact decoding: "
              f"rel L2 median {np.median(bf16):.2e}, worst {max(bf16):.2e}")
        for (size, fmt, grain), datas in inputs.items():
            distances, agree = [], 0
            for data in datas:
                exact = logits(compiled, preprocess_bytes(data, spec, decoding="exact"))
                fast = logits(compiled, preprocess_bytes(data, spec, decoding="fast"))
                distances.append(np.linalg.norm(fast - exact) / np.linalg.norm(exact))
                agree += int(np.argmax(fast) == np.argmax(exact))
            print(f"  {name:26} {size} {fmt:4} {'grain ' if grain else 'smooth'}: rel L2 median "
                  f"{np.median(distances):.2e}, worst {max(distances):.2e}; top-1 "
                  f"{agree}/{len(datas)}")
    print("\nCPU ms per photo, decoding + preprocessing (best of 2), B7 contract")
    spec = get_spec("efficientnet-b7-pytorch")
    small = encoded(sources[0].resize((500, 375)), "JPEG")
    base = cpu_ms(small, spec, "exact")
    print(f"  500x375 JPEG: exact {base:.1f}")
    for size, dims in SIZES.items():
        for fmt in ("JPEG", "PNG", "WEBP"):
            data = encoded(enlarged(sources[0], dims, True, 0), fmt)
            exact, fast = cpu_ms(data, spec, "exact"), cpu_ms(data, spec, "fast")
            print(f"  {size} {fmt:4} ({len(data) / 2**20:.1f} MiB): exact {exact:.0f}, fast "
                  f"{fast:.0f}, fast/exact {fast / exact:.2f}")


if __name__ == "__main__":
    main()
