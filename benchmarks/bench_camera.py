"""Benchmark: `label` on camera-size photos, exact and fast decoding, against 500x375 photos.

The same photos (the bundled ones, each enlarged with grain, which makes JPEGs as large and
as slow to decode as a camera's: ~3.6 MiB at 12 MP) at 500x375, 4032x3024 (12 MP) and
8000x6000 (48 MP); for B7 (random weights, default precision) and Lite0, with `--decode
exact` and `--decode fast`. Each case is one CLI run over N photos; its rate is taken inside
the run, from the commit times of its parts between the first and the last tenth of the
images, so Ray's start, the model's compilation and the last batches' drain stay out. The
machine drifts by 5-10% between minutes, so the cases run in rounds, each round every case
once, and a case's ratio to 500x375 is taken within its round; the median over the rounds
is printed, with the CPU per image the larger run's manifest records. A folder of N photos
holds each enlarged photo many times over (hard links): decoding costs the same, and making
200 48 MP photos would take longer than labelling them.

    .venv/bin/python benchmarks/bench_camera.py [--images 200] [--rounds 2] [--models lite0 b7]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_label import run  # noqa: E402
from synthetic import cpu  # noqa: E402

from effnet_ray.models.cache import default_cache_dir  # noqa: E402
from effnet_ray.models.registry import PHOTOS  # noqa: E402
from effnet_ray.options import DECODES  # noqa: E402
from effnet_ray.output.layout import MANIFEST, Part  # noqa: E402
from effnet_ray.prepare.convert import prepare_model  # noqa: E402

CLI = str(Path(sys.executable).parent / "effnet-ray")
SIZES = {"500x375": (500, 375), "12MP": (4032, 3024), "48MP": (8000, 6000)}
MODELS = {"lite0": ("efficientnet-lite0", None), "b7": ("efficientnet-b7-pytorch", 0)}
CASES = [("500x375", "exact"), ("12MP", "exact"), ("12MP", "fast"), ("48MP", "exact"),
         ("48MP", "fast")]
# The rate counts the images committed between these two fractions of the run.
FROM, TO = 0.1, 0.9


def folder(root: Path, size: tuple[int, int], images: int) -> Path:
    """A folder of `images` photos of `size`."""
    made = []
    for i, path in enumerate(sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))):
        big = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        noise = np.random.default_rng(i).normal(0, 8, (size[1], size[0], 3))
        big = Image.fromarray(np.clip(np.asarray(big) + noise, 0, 255).astype(np.uint8))
        made.append(root / f"base-{i}.jpg")
        big.save(made[-1], quality=92)
    photos = root / "photos"
    photos.mkdir()
    for n in range(images):
        (photos / f"{n:05d}.jpg").hardlink_to(made[n % len(made)])
    return photos


def in_run_rate(out: Path) -> float:
    """Images per second between the commits that pass FROM and TO of the output's images."""
    commits = sorted((p.stat().st_mtime, part.rows) for p in out.glob("part-*.parquet")
                     if (part := Part.parse(p.name)))
    total = sum(rows for _, rows in commits)
    done, start = 0, None
    for when, rows in commits:
        done += rows
        if start is None and done >= FROM * total:
            start = (when, done)
        elif start and done >= TO * total:
            return (done - start[1]) / (when - start[0])
    raise SystemExit(f"{out}: too few commits for a rate ({len(commits)})")


def label(photos: Path, name: str, model: Path, decoding: str, root: Path) -> tuple[float, str]:
    """The run's rate, and its CPU per image as its manifest records it (decoding; inference
    and the rest of the actor)."""
    out = Path(tempfile.mkdtemp(dir=root, prefix="out-"))
    # units of 8 photos: a large collection has many units to decode at once, which a
    # folder of a few hundred photos in units of 64 would not show
    run([CLI, "label", str(photos), "-o", str(out), "--model", name, "--model-path", str(model),
         "--decode", decoding, "--unit-size", "8", "--no-compact"])
    last = json.loads((out / MANIFEST).read_text())["runs"][-1]
    per_image = 1000 / last["images"]
    return in_run_rate(out), (f"decoding {per_image * last['decode_cpu_seconds']:.0f} ms, "
                              f"inference {per_image * last['inference_cpu_seconds']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="photos per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                        help="500x375 always runs: the others' ratios are to it")
    parser.add_argument("--decodes", nargs="+", default=list(DECODES), choices=list(DECODES),
                        help="of the large photos")
    args = parser.parse_args()
    cases = [(size, decoding) for size, decoding in CASES if size == "500x375"
             or (size in args.sizes and decoding in args.decodes)]
    print(f"cpu: {cpu()}; {args.images} photos a run, {args.rounds} rounds, rates from "
          f"{FROM:.0%} to {TO:.0%} of each run's images", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = {}
        for size in dict.fromkeys(size for size, _ in cases):
            (root / size).mkdir()
            photos[size] = folder(root / size, SIZES[size], args.images)
        for key in args.models:
            name, seed = MODELS[key]
            model = prepare_model(name, default_cache_dir(), random_seed=seed)
            rates: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
            ratios: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
            cpu_split = {}
            for _ in range(args.rounds):
                for case in cases:
                    rate, cpu_split[case] = label(photos[case[0]], name, model, case[1], root)
                    rates[case].append(rate)
                    ratios[case].append(rate / rates[cases[0]][-1])
            for case in cases:
                print(f"  {name:24} {case[0]:8} --decode {case[1]:5}: "
                      f"{statistics.median(rates[case]):6.2f} img/s "
                      f"({', '.join(f'{r:.2f}' for r in rates[case])}), "
                      f"{statistics.median(ratios[case]):.2f} of 500x375 "
                      f"({', '.join(f'{r:.2f}' for r in ratios[case])}); CPU per image: "
                      f"{cpu_split[case]}", flush=True)


if __name__ == "__main__":
    main()
