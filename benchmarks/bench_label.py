"""Benchmark: `label`'s steady-state throughput against OpenVINO's own, same IR and settings.

Prints (a) benchmark_app's saturated throughput (THROUGHPUT hint, mean of a run before and
one after the label runs), (b) `label`'s steady-state throughput on real photos,
N / (t(2N) - t(N)) so that Ray start-up, actor start and compilation cancel out, averaged over
repeated pairs, and their ratio. Not a test: this machine's speed drifts by 10-15% within
minutes, so single pairs scatter; compare ratios taken in one run.

    .venv/bin/python benchmarks/bench_label.py [--images 32] [--repeats 2] [--precision auto]
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import effnet_ray
from effnet_ray.cli import PHOTOS, prepare_model
from effnet_ray.ir import default_cache_dir
from effnet_ray.listing import IMAGE_EXTENSIONS


def benchmark_app(model_path: Path, device: str, precision: str, seconds: int) -> float:
    cmd = [str(Path(sys.executable).parent / "benchmark_app"), "-m", str(model_path), "-d",
           device, "-hint", "throughput", "-t", str(seconds)]
    if precision != "auto":
        cmd += ["-infer_precision", precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Throughput:\s+([\d.]+) FPS", out).group(1))


def photo_folder(root: Path, count: int) -> Path:
    """`count` real photos: the bundled ones, repeated under distinct names."""
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in IMAGE_EXTENSIONS)
    folder = root / f"photos-{count}"
    folder.mkdir()
    for i in range(count):
        src = photos[i % len(photos)]
        shutil.copy(src, folder / f"{i:05d}-{src.name}")
    return folder


def label_seconds(folder: Path, out: Path, args: argparse.Namespace, model_path: Path) -> float:
    started = time.perf_counter()
    effnet_ray.label([str(folder)], str(out), model=args.model, model_path=str(model_path),
                     precision=args.precision, device=args.device, batch_size=args.batch_size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-b7-pytorch")
    parser.add_argument("--images", type=int, default=32, help="N; runs N and 2N images")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--batch-size", type=int, help="default: label's default")
    parser.add_argument("--seconds", type=int, default=30, help="benchmark_app duration")
    parser.add_argument("--repeats", type=int, default=2, help="N/2N pairs to average")
    args = parser.parse_args()

    model_path = prepare_model(args.model, default_cache_dir(), random_seed=0)
    print(f"model {args.model} (random weights, seed 0): {model_path}", flush=True)
    # benchmark_app runs before and after the label runs: the machine's speed drifts, and
    # the mean of both brackets the label runs in time.
    before = benchmark_app(model_path, args.device, args.precision, args.seconds)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, large = photo_folder(root, args.images), photo_folder(root, 2 * args.images)
        for i in range(args.repeats):
            t_small = label_seconds(small, root / f"out-small-{i}", args, model_path)
            t_large = label_seconds(large, root / f"out-large-{i}", args, model_path)
            rates.append(args.images / (t_large - t_small))
            print(f"label, {args.images} images: {t_small:.1f} s; {2 * args.images} images: "
                  f"{t_large:.1f} s; steady state {rates[-1]:.2f} img/s", flush=True)
    after = benchmark_app(model_path, args.device, args.precision, args.seconds)
    ov_fps = (before + after) / 2
    steady = sum(rates) / len(rates)
    print(f"\nbenchmark_app ({args.device}, {args.precision}, THROUGHPUT hint): "
          f"{ov_fps:.2f} img/s (before {before:.2f}, after {after:.2f})")
    print(f"label steady state, N/(t(2N)-t(N)), mean of {len(rates)}: {steady:.2f} img/s")
    print(f"ratio label / benchmark_app: {steady / ov_fps:.3f} "
          f"(per repeat: {', '.join(f'{r / ov_fps:.3f}' for r in rates)})")


if __name__ == "__main__":
    main()
