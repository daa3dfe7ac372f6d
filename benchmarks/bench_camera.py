"""Benchmark: `label` on camera-size photos, exact and fast decoding, against 500x375 photos.

The same photos (the bundled ones, each enlarged with grain, which makes JPEGs as large and
as slow to decode as a camera's: ~3.6 MiB at 12 MP) at 500x375, 4032x3024 (12 MP) and
8000x6000 (48 MP); for B7 (random weights, default precision) and Lite0, `label`'s steady
state N / (t(2N) - t(N)) over whole CLI runs, with `--decode exact` and `--decode fast`, and
each rate's ratio to the 500x375 run of the same model. A folder of N photos holds each
enlarged photo many times over (hard links): decoding costs the same, and making 200
48 MP photos would take longer than labelling them.

    .venv/bin/python benchmarks/bench_camera.py [--images 100] [--models lite0 b7]
"""

import argparse
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
from effnet_ray.prepare.convert import prepare_model  # noqa: E402

CLI = str(Path(sys.executable).parent / "effnet-ray")
SIZES = {"500x375": (500, 375), "12MP": (4032, 3024), "48MP": (8000, 6000)}
MODELS = {"lite0": ("efficientnet-lite0", None), "b7": ("efficientnet-b7-pytorch", 0)}
CASES = [("500x375", "exact"), ("12MP", "exact"), ("12MP", "fast"), ("48MP", "exact"),
         ("48MP", "fast")]


def folders(root: Path, size: tuple[int, int], images: int) -> tuple[Path, Path]:
    """Folders of `images` and 2x`images` photos of `size`."""
    made = []
    for i, path in enumerate(sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))):
        big = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        noise = np.random.default_rng(i).normal(0, 8, (size[1], size[0], 3))
        big = Image.fromarray(np.clip(np.asarray(big) + noise, 0, 255).astype(np.uint8))
        made.append(root / f"base-{i}.jpg")
        big.save(made[-1], quality=92)
    pair = []
    for count in (images, 2 * images):
        folder = root / f"photos-{count}"
        folder.mkdir()
        for n in range(count):
            (folder / f"{n:05d}.jpg").hardlink_to(made[n % len(made)])
        pair.append(folder)
    return pair[0], pair[1]


def steady_state(pair: tuple[Path, Path], images: int, name: str, model: Path, decoding: str,
                 root: Path) -> float:
    times = []
    for folder in pair:
        out = Path(tempfile.mkdtemp(dir=root, prefix="out-"))
        # units of 8 photos: a large collection has many units to decode at once, which a
        # folder of a few hundred photos in units of 64 would not show
        times.append(run([CLI, "label", str(folder), "-o", str(out), "--model", name,
                          "--model-path", str(model), "--decode", decoding, "--unit-size", "8",
                          "--no-compact"]))
    return images / (times[1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="N; runs N and 2N photos")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                        help="500x375 always runs: the others' ratios are to it")
    args = parser.parse_args()
    print(f"cpu: {cpu()}; steady state between {args.images} and {2 * args.images} photos",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs = {}
        for label, size in SIZES.items():
            if label not in args.sizes and label != "500x375":
                continue
            (root / label).mkdir()
            pairs[label] = folders(root / label, size, args.images)
        for key in args.models:
            name, seed = MODELS[key]
            model = prepare_model(name, default_cache_dir(), random_seed=seed)
            base = None
            for size, decoding in CASES:
                if size not in pairs:
                    continue
                rate = steady_state(pairs[size], args.images, name, model, decoding, root)
                base = base or rate
                print(f"  {name:24} {size:8} --decode {decoding:5}: {rate:6.2f} img/s, "
                      f"{rate / base:.2f} of 500x375", flush=True)


if __name__ == "__main__":
    main()
