"""Benchmark: `label` with B7 against OpenVINO alone, at the default precision and in INT8.

For the default precision it prints OpenVINO's own throughput two ways, benchmark_app on
random data and the actors' compiled model fed the same preprocessed photos `label` reads
(the fairer anchor: a CPU kernel's speed can depend on the values), `label`'s steady state
N / (t(2N) - t(N)) over whole CLI runs (start-up, actor start and compilation cancel out),
and the ratios. Then it quantizes the IR with `models quantize` and prints `label` in INT8
against `label` at the default precision, end to end, same photos, same sitting.

B7 has random weights here (seed 0): judge speed on it, accuracy on Lite0 (tests).
Not a test: this machine's speed drifts by 10-15% within minutes; compare ratios of one run.

    .venv/bin/python benchmarks/bench_label.py [--images 160] [--repeats 2] [--no-int8]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import benchmark_app, imagenet_like, openvino_on_photos, preprocessed  # noqa: E402
from synthetic import cpu  # noqa: E402

from effnet_ray.models.cache import default_cache_dir, int8_path  # noqa: E402
from effnet_ray.models.registry import get_spec  # noqa: E402
from effnet_ray.prepare.convert import prepare_model  # noqa: E402

MODEL = "efficientnet-b7-pytorch"
CLI = str(Path(sys.executable).parent / "effnet-ray")


def run(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def steady_state(folders: tuple[Path, Path], images: int, model: Path, root: Path,
                 tag: str) -> float:
    """Images/s of `label` between N and 2N photos, over two fresh outputs."""
    times = []
    for folder in folders:
        out = Path(tempfile.mkdtemp(dir=root, prefix=f"out-{tag}-"))
        times.append(run([CLI, "label", str(folder), "-o", str(out), "--overwrite",
                          "--model", MODEL, "--model-path", str(model)]))
    rate = images / (times[1] - times[0])
    print(f"label {tag}: {images} photos {times[0]:.1f} s, {2 * images} photos "
          f"{times[1]:.1f} s; steady state {rate:.2f} img/s", flush=True)
    return rate


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160, help="N; runs N and 2N photos")
    parser.add_argument("--repeats", type=int, default=2, help="N/2N pairs to average")
    parser.add_argument("--seconds", type=int, default=20, help="each OpenVINO-alone run")
    parser.add_argument("--calibration", type=int, default=32,
                        help="photos `models quantize` calibrates on (--subset-size)")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 comparison")
    args = parser.parse_args()
    spec = get_spec(MODEL)
    model = prepare_model(MODEL, default_cache_dir(), random_seed=0)
    print(f"{MODEL} (random weights, seed 0) on {cpu()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = imagenet_like(root / "photos", 2 * args.images + args.calibration)
        names = sorted(photos.iterdir())
        folders = {}
        for count in (args.images, 2 * args.images):
            folders[count] = root / f"photos-{count}"
            folders[count].mkdir()
            for name in names[:count]:
                (folders[count] / name.name).hardlink_to(name)
        pair = (folders[args.images], folders[2 * args.images])
        if not args.no_int8:
            calibration = root / "calibration"
            calibration.mkdir()
            for name in names[2 * args.images:]:
                (calibration / name.name).hardlink_to(name)
            started = time.perf_counter()
            run([CLI, "models", "quantize", MODEL, "--model-path", str(model), "--calibration",
                 str(calibration), "--subset-size", str(args.calibration),
                 "--min-agreement", "0"])
            print(f"models quantize, {args.calibration} photos: "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        images = preprocessed(photos, spec, 16)
        # OpenVINO alone brackets the label runs, and default and INT8 pairs alternate:
        # the machine's speed drifts.
        app = [benchmark_app(model, seconds=args.seconds)]
        alone = [openvino_on_photos(model, spec, images, seconds=args.seconds)]
        default, int8 = [], []
        for _ in range(args.repeats):
            default.append(steady_state(pair, args.images, model, root, "default"))
            if not args.no_int8:
                int8.append(steady_state(pair, args.images, int8_path(model), root, "int8"))
        app.append(benchmark_app(model, seconds=args.seconds))
        alone.append(openvino_on_photos(model, spec, images, seconds=args.seconds))
    print(f"\nOpenVINO alone, THROUGHPUT hint, default precision: benchmark_app (random data) "
          f"{mean(app):.2f} img/s ({app[0]:.2f}, {app[1]:.2f}); the actors' model on these "
          f"photos {mean(alone):.2f} img/s ({alone[0]:.2f}, {alone[1]:.2f})")
    print(f"label steady state, default precision: {mean(default):.2f} img/s "
          f"({', '.join(f'{r:.2f}' for r in default)})")
    print(f"B7 ratio label / OpenVINO alone on the same photos: {mean(default) / mean(alone):.3f}"
          f"  (against benchmark_app's random data: {mean(default) / mean(app):.3f})")
    if int8:
        print(f"label steady state, INT8: {mean(int8):.2f} img/s "
              f"({', '.join(f'{r:.2f}' for r in int8)})")
        print(f"INT8 / default precision, label end to end: {mean(int8) / mean(default):.3f}")


if __name__ == "__main__":
    main()
