"""Benchmark: peak resident memory of decoding and preprocessing ONE image at the pixel limit.

The decode stage's Ray memory reservation must cover the largest image it accepts: a task that
decodes a 89-megapixel photo holds the encoded bytes, Pillow's decoded image (4 bytes per
pixel for RGB), its copies and conversions, and any resize intermediate at the same time. If
the reservation is lower, Ray packs too many decode tasks onto a node and the kernel's OOM
killer (or Ray's memory monitor) ends them. This script measures what that peak is.

Each case is an image made here with numpy and Pillow (gradient, waves and a little noise, so
that the compressed formats have realistic sizes), kept just under `MAX_PIXELS`. For every
case and model a fresh subprocess imports the modules, reads the encoded file into memory and
runs `preprocess_bytes(data, get_spec(model), MAX_PIXELS)`; its RSS high-water mark (VmHWM in
/proc/self/status) is the peak. A second fresh subprocess per case only imports the modules and
holds the same bytes: its VmHWM is the baseline, and peak minus baseline is what decoding and
preprocessing cost. A refusal by `preprocess_bytes` is reported as the row's result.

The summary fits `reserve = base + a * max_pixels + max_bytes`: `base` is the interpreter and
imports (baseline minus the encoded bytes), `a` the largest increment per allowed pixel.

    .venv/bin/python benchmarks/bench_decode_memory.py [--models ...] [--cases ...] [--keep DIR]
"""

import argparse
import hashlib
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import effnet_ray.inputs.preprocessing as preprocessing
from effnet_ray.models.registry import get_spec
from effnet_ray.options import MAX_BYTES, MAX_PIXELS

MODELS = ("efficientnet-b7-pytorch", "efficientnet-b7_auto_aug", "efficientnet-lite0")
MIB = 2**20
# 9400 x 9500 = 89,300,000 pixels, just under MAX_PIXELS (89,478,485)
FULL = (9400, 9500)


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    kind: str  # how `make_image` builds and saves it
    note: str = ""

    @property
    def pixels(self) -> int:
        return self.width * self.height


CASES = (
    Case("jpeg-rgb-q90", *FULL, "jpeg-rgb"),
    Case("png-rgb", *FULL, "png-rgb"),
    Case("png-gray16", *FULL, "png-gray16", "mode I;16"),
    Case("png-rgba", *FULL, "png-rgba"),
    Case("tiff-rgb-raw", *FULL, "tiff-rgb", "uncompressed"),
    Case("jpeg-cmyk-q90", *FULL, "jpeg-cmyk"),
    # Extreme aspect ratios (PNG: JPEG allows at most 65535 px per side): does resizing a
    # strip to 600x600 (auto_aug) build a new-width x old-height intermediate?
    Case("strip-1x300000", 1, 300_000, "png-rgb", "tall"),
    Case("strip-300000x1", 300_000, 1, "png-rgb", "wide"),
    Case("strip-4x80000", 4, 80_000, "png-rgb", "tall"),
    Case("strip-80000x4", 80_000, 4, "png-rgb", "wide"),
    Case("strip-1x1000000", 1, 1_000_000, "png-rgb", "tall, 1 MP"),
    # Just inside the resize_short_side limit: short side 1 -> 632 (b7-pytorch) gives
    # 632 x 141,568 = 89.47 MP; short side 1 -> 256 (lite0) gives 256 x 349,440 = 89.46 MP.
    Case("tiny-1x224", 1, 224, "png-rgb", "b7 limit"),
    Case("tiny-1x1365", 1, 1365, "png-rgb", "lite0 limit"),
    # Near MAX_PIXELS and aspect 223.3, just inside b7-pytorch's limit (resized to
    # 632 x 141,131 = 89.2 MP): decoded image, horizontal-pass temp and result all near 89 MP.
    Case("wide-141355x633", 141_355, 633, "png-rgb", "b7 limit"),
    Case("tall-633x141355", 633, 141_355, "png-rgb", "b7 limit"),
)


# ---------------------------------------------------------------------------------------
# child side: runs in a fresh interpreter, prints one JSON line


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, path: str, model: str) -> None:
    specs = {name: get_spec(name) for name in MODELS}
    data = Path(path).read_bytes()
    result = {"before": status_bytes("VmHWM")}
    if mode == "peak":
        start = time.perf_counter()
        try:
            array = preprocessing.preprocess_bytes(data, specs[model], MAX_PIXELS)
            result["result"] = "ok " + "x".join(map(str, array.shape))
        except Exception as exc:  # a refusal is a result, not a failure of the benchmark
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["seconds"] = time.perf_counter() - start
    result["hwm"] = status_bytes("VmHWM")
    result["encoded"] = len(data)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------
# parent side: makes the images, runs the children, prints the table


def photo_like(width: int, height: int, channels: int, top: int, noise: int,
               seed: int = 0) -> np.ndarray:
    """Gradients plus large waves plus uniform noise of +-`noise`, built in row chunks."""
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if top == 255 else np.uint16
    out = np.empty((height, width, channels), dtype)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    rows = max(1, 2**22 // max(width, 1))
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        y = (np.arange(start, stop, dtype=np.float32) / max(height - 1, 1))[:, None]
        for c in range(channels):
            wave = np.sin(2 * np.pi * (x * (2 + c) + y * (3 - c) + 0.3 * c))
            value = 0.15 + 0.35 * (x if c % 2 else 1 - x) * y + 0.25 * (1 + wave)
            value = value * (top - 2 * noise) + noise
            value += rng.integers(-noise, noise + 1, value.shape, dtype=np.int32)
            out[start:stop, :, c] = np.clip(value, 0, top).astype(dtype)
    return out


def make_image(case: Case, path: Path) -> None:
    w, h = case.width, case.height
    if case.kind == "png-gray16":
        Image.fromarray(photo_like(w, h, 1, 65535, 48)[:, :, 0]).save(path, "PNG")
        return
    channels = 4 if case.kind == "png-rgba" else 3
    image = Image.fromarray(photo_like(w, h, channels, 255, 3))
    if case.kind == "jpeg-rgb":
        image.save(path, "JPEG", quality=90)
    elif case.kind == "jpeg-cmyk":
        image.convert("CMYK").save(path, "JPEG", quality=90)
    elif case.kind == "tiff-rgb":
        image.save(path, "TIFF")  # Pillow's default: no compression
    else:
        image.save(path, "PNG")


def run_child(mode: str, path: Path, model: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(path), model]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"crash": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / MIB:9.1f}"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES],
                        choices=[c.name for c in CASES])
    parser.add_argument("--keep", type=Path, help="write the images here and keep them")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    args = parser.parse_args()

    source = Path(preprocessing.__file__)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    print(f"cpu: {cpu_model()}; python {platform.python_version()}; numpy {np.__version__}; "
          f"Pillow {Image.__version__}")
    print(f"preprocessing: {source} (sha256 {digest}); MAX_PIXELS {MAX_PIXELS:,}; "
          f"MAX_BYTES {MAX_BYTES:,}")
    print("MiB = 2**20 bytes; peak/baseline are VmHWM of a fresh subprocess; "
          "B/px = increment / the image's pixels\n")

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_decode_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    header = (f"{'case':<16} {'WxH':>15} {'model':<24} {'encoded':>9} {'baseline':>9} "
              f"{'peak':>9} {'increment':>9} {'B/px':>8} {'s':>5}  result")
    rows = []
    try:
        print(header)
        print("-" * len(header))
        for case in (c for c in CASES if c.name in args.cases):
            suffix = ".tif" if case.kind.startswith("tiff") else (
                ".jpg" if case.kind.startswith("jpeg") else ".png")
            path = folder / (case.name + suffix)
            if not path.exists():
                make_image(case, path)
            base = run_child("baseline", path, MODELS[0], args.timeout)
            for model in args.models:
                peak = run_child("peak", path, model, args.timeout)
                row = {"case": case, "model": model, **peak, "baseline": base.get("hwm")}
                rows.append(row)
                size = f"{case.width}x{case.height}"
                if "crash" in peak or "crash" in base:
                    print(f"{case.name:<16} {size:>15} {model:<24} "
                          f"CRASH {peak.get('crash') or base.get('crash')}")
                    continue
                increment = peak["hwm"] - base["hwm"]
                row["increment"] = increment
                result = peak.get("result") or peak["error"]
                note = f" [{case.note}]" if case.note else ""
                print(f"{case.name:<16} {size:>15} {model:<24} {mib(peak['encoded'])} "
                      f"{mib(base['hwm'])} {mib(peak['hwm'])} {mib(increment)} "
                      f"{increment / case.pixels:8.2f} {peak['seconds']:5.1f}  {result}{note}",
                      flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    done = [r for r in rows if "increment" in r]
    ok = [r for r in done if "result" in r]
    if not ok:
        print("\nno case was accepted")
        return
    print()
    top_peak = max(done, key=lambda r: r["hwm"])
    top_inc = max(done, key=lambda r: r["increment"])
    print(f"max peak:      {top_peak['hwm'] / MIB:8.1f} MiB  "
          f"({top_peak['case'].name}, {top_peak['model']})")
    print(f"max increment: {top_inc['increment'] / MIB:8.1f} MiB  "
          f"({top_inc['case'].name}, {top_inc['model']})")
    over_bytes = sorted({r["case"].name for r in done if r["encoded"] > MAX_BYTES})
    if over_bytes:
        print(f"encoded above MAX_BYTES ({MAX_BYTES / MIB:.0f} MiB), refused by the reader "
              f"before decoding: {', '.join(over_bytes)}")

    # base: the interpreter plus imports, without the encoded bytes it holds
    base = max(r["baseline"] - r["encoded"] for r in done)
    base_mib = math.ceil(base / MIB / 10) * 10

    def fit(selected: list[dict]) -> tuple[float, dict]:
        worst = max(selected, key=lambda r: r["increment"])
        return math.ceil(worst["increment"] / MAX_PIXELS * 2) / 2, worst

    full = [r for r in ok if r["case"].pixels * 2 > MAX_PIXELS]
    a_all, worst_all = fit(ok)
    print(f"base = max(baseline - encoded) = {base / MIB:.1f} MiB -> {base_mib} MiB")
    if full:
        a_full, worst_full = fit(full)
        print(f"a over accepted near-limit images: {a_full:.1f} B per max_pixel "
              f"(set by {worst_full['case'].name}, {worst_full['model']})")
    print(f"a over all accepted cases:         {a_all:.1f} B per max_pixel "
          f"(set by {worst_all['case'].name}, {worst_all['model']})")
    choices = [(a_full, "near-limit images")] if full else []
    if not full or a_all > a_full:
        choices.append((a_all, "all accepted cases"))
    for a, label in choices:
        total = base_mib * MIB + a * MAX_PIXELS + MAX_BYTES
        print(f"suggested ({label}): reserve = {base_mib} MiB + {a:.1f} * max_pixels + "
              f"max_bytes = {total / MIB:.0f} MiB at the defaults")
    if full and a_all > a_full:
        print("cases not covered by the near-limit a (increment grows with the resize "
              "intermediate, not with the image's pixels):")
        for r in ok:
            if r["increment"] > a_full * MAX_PIXELS:
                print(f"  {r['case'].name} {r['model']}: {r['increment'] / MIB:.1f} MiB = "
                      f"{r['increment'] / r['case'].pixels:,.0f} B per image pixel")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
