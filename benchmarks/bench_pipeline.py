"""Benchmark: how much of the machine `label` turns into images/s when inference is cheap.

EfficientNet-Lite0 (real weights) on ImageNet-like JPEGs (500x375, quality 90). The ceiling
is what the cores could do if nothing but decoding and inference cost anything:
cores / (decode + cores / openvino), with decode the CPU seconds per photo in one process and
openvino the images/s of OpenVINO alone on these preprocessed photos. `label`'s steady state
is (big - small) / (t(big) - t(small)) over whole CLI runs, so start-up cancels out. The
machine's speed drifts: the anchors run before and after the label runs, which repeat.

    .venv/bin/python benchmarks/bench_pipeline.py [--small 1000] [--big 4000] [--repeats 3]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import (  # noqa: E402
    benchmark_app,
    decode_seconds,
    imagenet_like,
    openvino_on_photos,
    preprocessed,
    run_with_stage_cpu,
)
from synthetic import cpu  # noqa: E402

from effnet_ray.models.cache import default_cache_dir  # noqa: E402
from effnet_ray.models.registry import get_spec  # noqa: E402
from effnet_ray.prepare.convert import prepare_model  # noqa: E402

MODEL = "efficientnet-lite0"


def label_run(folder: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    """Wall seconds of a whole CLI run, and CPU ms per image by stage in its steady state."""
    cmd = [str(Path(sys.executable).parent / "effnet-ray"), "label", str(folder), "-o", str(out),
           "--model", MODEL, *extra]
    return run_with_stage_cpu(cmd, out, len(os.listdir(folder)))


def subset(source: Path, folder: Path, count: int) -> Path:
    folder.mkdir()
    for f in sorted(source.iterdir())[:count]:
        os.link(f, folder / f.name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3, help="small/big pairs to average")
    parser.add_argument("--seconds", type=int, default=15, help="each OpenVINO-alone run")
    parser.add_argument("label_args", nargs="*", help="more `label` options, after --")
    args = parser.parse_args()
    spec = get_spec(MODEL)
    model = prepare_model(MODEL, default_cache_dir())
    cores = os.cpu_count()
    print(f"{MODEL} (real weights) on {cpu()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = imagenet_like(root / "photos", args.big)
        small = subset(photos, root / "small", args.small)
        decodes = [decode_seconds(photos, spec)]
        images = preprocessed(photos, spec)
        app = benchmark_app(model, seconds=args.seconds)
        alone = [openvino_on_photos(model, spec, images, seconds=args.seconds)]
        rates = []
        for i in range(args.repeats):
            t_small, _ = label_run(small, root / f"out-small-{i}", args.label_args)
            t_big, stages = label_run(photos, root / f"out-big-{i}", args.label_args)
            rates.append((args.big - args.small) / (t_big - t_small))
            print(f"label {args.small} photos: {t_small:.1f} s; {args.big}: {t_big:.1f} s; "
                  f"steady state {rates[-1]:.1f} img/s", flush=True)
        alone.append(openvino_on_photos(model, spec, images, seconds=args.seconds))
        decodes.append(decode_seconds(photos, spec))
    openvino = sum(alone) / len(alone)
    decode = sum(decodes) / len(decodes)
    ceiling = cores / (decode + cores / openvino)
    steady = sum(rates) / len(rates)
    print(f"\ndecode + preprocess, one process: {decode * 1000:.2f} ms of CPU per photo "
          f"(before {decodes[0] * 1000:.2f}, after {decodes[1] * 1000:.2f})")
    print(f"benchmark_app (random data): {app:.1f} img/s; OpenVINO alone on these photos: "
          f"{openvino:.1f} img/s (before {alone[0]:.1f}, after {alone[1]:.1f})")
    print(f"ceiling {cores} / ({decode:.4f} + {cores} / {openvino:.1f}) = {ceiling:.1f} img/s")
    print(f"label steady state: {steady:.1f} img/s")
    print(f"pipeline efficiency, label / ceiling: {steady / ceiling:.3f}")
    rate = stages.pop("images/s in the window", 0)
    print(f"\nCPU per image by stage, last big run, 25-85% of its images ({rate:.1f} img/s); "
          f"the ceiling spends {decode * 1000:.2f} on decoding and {cores * 1000 / openvino:.2f} "
          f"on inference, {1000 * (decode + cores / openvino):.2f} ms in all:")
    for stage, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:6.2f} ms  {stage}")
    print(f"  {sum(stages.values()):6.2f} ms  in all")


if __name__ == "__main__":
    main()
