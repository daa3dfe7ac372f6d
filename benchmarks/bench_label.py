"""Benchmark: `label`'s steady-state throughput against OpenVINO's own, same IR and settings.

Prints (a) benchmark_app's saturated throughput (THROUGHPUT hint, mean of a run before and
one after), (b) `label`'s steady-state throughput on real photos, i.e. N / (t(2N) - t(N)) on
one running Ray, so that actor start and compilation cancel out, and their ratio. Not a
test: numbers drift 10-30% between runs on shared machines, the ratio taken in one run is
what to compare.

    .venv/bin/python benchmarks/bench_label.py [--images 48] [--precision auto] [--model NAME]
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray

import effnet_ray
from effnet_ray.cli import prepare_model
from effnet_ray.ir import default_cache_dir
from effnet_ray.listing import IMAGE_EXTENSIONS

PHOTOS = Path(effnet_ray.__file__).parent / "data" / "photos"


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


class OutputWatcher(threading.Thread):
    """Records (time, rows written) as Parquet files appear: Ray Data writes block by block,
    so the output grows while the job runs and its slope is the in-run throughput."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.samples, self.stop = folder, [], threading.Event()

    def run(self) -> None:
        counted: dict[str, int] = {}
        while not self.stop.wait(0.25):
            for path in self.folder.glob("*.parquet"):
                if path.name not in counted:
                    try:
                        counted[path.name] = pq.ParquetFile(path).metadata.num_rows
                    except Exception:  # still being written
                        continue
                    self.samples.append((time.perf_counter(), sum(counted.values())))

    def steady_rate(self, total: int) -> float:
        """Slope between the first output reaching 25% and the last reaching 100%."""
        start = next((t, n) for t, n in self.samples if n >= total / 4)
        end = self.samples[-1]
        return (end[1] - start[1]) / (end[0] - start[0])


def label_run(folder: Path, out: Path, args: argparse.Namespace, model_path: Path,
              count: int) -> tuple[float, float]:
    """(wall seconds, in-run steady rows/s) of one `label` run."""
    out.mkdir()
    watcher = OutputWatcher(out)
    watcher.start()
    started = time.perf_counter()
    effnet_ray.label([str(folder)], str(out), model=args.model, model_path=str(model_path),
                     precision=args.precision, device=args.device, batch_size=args.batch_size)
    wall = time.perf_counter() - started
    watcher.stop.set()
    watcher.join()
    return wall, watcher.steady_rate(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-b7-pytorch")
    parser.add_argument("--images", type=int, default=48, help="N; runs N and 2N images")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30, help="benchmark_app duration")
    args = parser.parse_args()

    model_path = prepare_model(args.model, default_cache_dir(), random_seed=0)
    print(f"model {args.model} (random weights, seed 0): {model_path}", flush=True)
    # benchmark_app runs before and after the label runs: the machine's speed drifts, and
    # the mean of both brackets the label runs in time.
    before = benchmark_app(model_path, args.device, args.precision, args.seconds)
    # One Ray for both runs, started before them: Ray's start-up varies by seconds, which
    # the N/2N difference would otherwise turn into throughput. A warm-up run loads every
    # library into the worker processes.
    ray.init(include_dashboard=False, logging_level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm, small = photo_folder(root, 2), photo_folder(root, args.images)
        large = photo_folder(root, 2 * args.images)
        label_run(warm, root / "out-warm", args, model_path, 2)
        t_small, _ = label_run(small, root / "out-small", args, model_path, args.images)
        t_large, in_run = label_run(large, root / "out-large", args, model_path,
                                    2 * args.images)
    ray.shutdown()
    after = benchmark_app(model_path, args.device, args.precision, args.seconds)
    ov_fps = (before + after) / 2
    steady = args.images / (t_large - t_small)
    print(f"\nbenchmark_app ({args.device}, {args.precision}, THROUGHPUT hint): "
          f"{ov_fps:.2f} img/s (before {before:.2f}, after {after:.2f})")
    print(f"label, {args.images} images: {t_small:.1f} s; {2 * args.images} images: "
          f"{t_large:.1f} s")
    print(f"label steady state, N/(t(2N)-t(N)): {steady:.2f} img/s, "
          f"ratio to benchmark_app {steady / ov_fps:.3f}")
    print(f"label steady state, output slope of the 2N run: {in_run:.2f} img/s, "
          f"ratio to benchmark_app {in_run / ov_fps:.3f}")


if __name__ == "__main__":
    main()
