"""Benchmark: the full loop at scale: label N images in WebDataset shards, SIGKILL at half,
rerun, compact; what it costs in time and memory, and whether every image is there once.

The images are distinct small JPEGs (a few KB: one base photo per 1,000, each copy made
distinct by a comment segment carrying its number), in shards of 1,000. The model is a nearly
free IR that honours the Lite0 contract (a mean over the pixels and a 3x1000 matrix), so the
pipeline, not the model, is measured. `label` runs as a whole CLI process; once a second the
driver's RSS and the whole process tree's (Ray's own processes included) are sampled.

It prints: time to the first commit, images/s per tenth of the run, RSS at 10/50/90% and
the growth per 100,000 images, the ETA shown at half against the time the rest took, the
rerun's time to its first new commit, every path exactly once (read back with pyarrow),
files and bytes before and after `compact`, and a DuckDB `group by label` before and after.

    .venv/bin/python benchmarks/bench_scale.py [--images 1000000] [--keep DIR]
"""

import argparse
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import psutil
import pyarrow.dataset as pads
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import cpu  # noqa: E402

from effnet_ray.models.registry import PHOTOS, get_spec  # noqa: E402

CLI = str(Path(sys.executable).parent / "effnet-ray")
SHARD = 1000
_PROGRESS = re.compile(r"progress: (\d+)/~?(\d+) images.*?ETA (~?[\dhms]+|unknown)")


def free_ir(folder: Path) -> Path:
    """An IR that fits the Lite0 contract and costs nothing to run."""
    spec = get_spec("efficientnet-lite0")
    image = ops.parameter(list(spec.input.shape), np.float32, name=spec.input.name)
    image.output(0).set_names({spec.input.name})
    mean = ops.reduce_mean(image, ops.constant(np.array([2, 3])), keep_dims=False)
    weights = np.random.default_rng(0).normal(0, 1, (3, spec.output.classes))
    logits = ops.matmul(mean, ops.constant(weights.astype(np.float32)), False, False)
    logits.output(0).set_names({spec.output.name})
    path = folder / "free" / "model.xml"
    path.parent.mkdir(parents=True)
    ov.save_model(ov.Model([ops.result(logits)], [image]), path)
    return path


def shards(folder: Path, images: int) -> Path:
    """`images` distinct JPEGs of a few KB in tar shards of SHARD samples (.jpg and .cls)."""
    bases = []
    for path in sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png")):
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize((96, 72)).save(buf, format="JPEG", quality=85)
        bases.append(buf.getvalue())
    folder.mkdir(parents=True)
    for first in range(0, images, SHARD):
        with tarfile.open(folder / f"shard-{first // SHARD:06d}.tar", "w") as tar:
            for n in range(first, min(first + SHARD, images)):
                base = bases[n % len(bases)]
                tag = f"effnet-ray scale {n}".encode()
                data = base[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag \
                    + base[2:]
                for ext, payload in ((".jpg", data), (".cls", str(n % 1000).encode())):
                    info = tarfile.TarInfo(f"{n:08d}{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder


class Sampler:
    """Once a second: the driver's RSS, the whole tree's, and the last progress line."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.time()
        while not self._stop.wait(1.0):
            try:
                driver = psutil.Process(self.proc.pid)
                tree = [driver, *driver.children(recursive=True)]
                rss = driver.memory_info().rss
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            found = _PROGRESS.findall(self.log.read_text(errors="replace"))
            done, total_images, eta = (int(found[-1][0]), int(found[-1][1]), found[-1][2]) \
                if found else (0, 0, "unknown")
            self.samples.append({"t": time.time() - started, "driver": rss, "tree": total,
                                 "done": done, "total": total_images, "eta": eta})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def label(inputs: Path, out: Path, model: Path, log: Path, *more: str) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([CLI, "label", str(inputs), "-o", str(out), "--model",
                                 "efficientnet-lite0", "--model-path", str(model),
                                 "--progress-seconds", "1", *more],
                                stdout=f, stderr=subprocess.STDOUT)


def seconds(text: str) -> float | None:
    match = re.fullmatch(r"~?(?:(\d+)h)?(\d+)m(\d+)?s?", text)
    if not match:
        return None
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def at(samples: list[dict], fraction: float, n: int) -> dict:
    return next((s for s in samples if s["done"] >= fraction * n), samples[-1])


def report_run(name: str, samples: list[dict], n: int, start_done: int) -> None:
    first = next((s["t"] for s in samples if s["done"] > start_done), None)
    print(f"{name}: first commit {first:.1f} s after start" if first is not None else
          f"{name}: no commit")
    eta_from = next((s["t"] for s in samples if s["eta"] != "unknown"), None)
    print(f"  ETA shown from {eta_from:.0f} s" if eta_from is not None else "  no ETA shown")
    tenths = []
    for k in range(10):
        span = (n - start_done) / 10
        a = at(samples, (start_done + k * span) / n, n)
        b = at(samples, (start_done + (k + 1) * span) / n, n)
        if b["t"] > a["t"]:
            tenths.append((b["done"] - a["done"]) / (b["t"] - a["t"]))
    print("  images/s per tenth: " + ", ".join(f"{r:.0f}" for r in tenths))
    for f in (0.1, 0.5, 0.9):
        s = at(samples, f, n)
        if s["done"] >= f * n > start_done:  # a rerun's start is not its 10%
            print(f"  at {f:.0%}: driver {s['driver'] / 2**20:.0f} MiB, tree "
                  f"{s['tree'] / 2**20:.0f} MiB")
    # from a fifth into the run to nine tenths: start-up (actors compiling, decoding threads
    # warming up) and shut-down are not growth
    lo = at(samples, (start_done + 0.2 * (n - start_done)) / n, n)
    hi = at(samples, (start_done + 0.9 * (n - start_done)) / n, n)
    grown = (hi["done"] - lo["done"]) / 1e5
    if grown > 0:
        print(f"  growth per 100,000 images ({lo['done']}-{hi['done']}): driver "
              f"{(hi['driver'] - lo['driver']) / 2**20 / grown:+.1f} MiB, tree "
              f"{(hi['tree'] - lo['tree']) / 2**20 / grown:+.1f} MiB")


def files_and_bytes(out: Path) -> str:
    files = list(out.glob("*.parquet"))
    return f"{len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB"


def group_by(out: Path) -> float:
    started = time.perf_counter()
    duckdb.sql(f"select label, count(*) from read_parquet('{out}/*.parquet') group by label"
               ).fetchall()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    n = args.images
    print(f"cpu: {cpu()}; {n} images in shards of {SHARD}", flush=True)
    try:
        model = free_ir(root)
        started = time.perf_counter()
        inputs = shards(root / "shards", n)
        print(f"made {n} JPEGs in {n // SHARD} shards in {time.perf_counter() - started:.0f} s",
              flush=True)
        out = root / "out"
        proc = label(inputs, out, model, root / "first.log", "--no-compact")
        first = Sampler(proc, root / "first.log")
        while proc.poll() is None and (not first.samples
                                       or first.samples[-1]["done"] < args.kill_at * n):
            time.sleep(0.2)
        half = first.samples[-1] if first.samples else {"eta": "unknown", "done": 0}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first.stop()
        time.sleep(10)  # Ray's workers outlive a killed driver by a few seconds
        report_run("first run (killed at half)", first.samples, n, 0)
        rerun_started = time.time()
        proc = label(inputs, out, model, root / "rerun.log", "--no-compact")
        rerun = Sampler(proc, root / "rerun.log")
        proc.wait()
        rerun.stop()
        rest = time.time() - rerun_started
        if proc.returncode:
            sys.exit(f"the rerun failed:\n{(root / 'rerun.log').read_text()[-3000:]}")
        done_at_start = rerun.samples[0]["done"] if rerun.samples else 0
        report_run("rerun", rerun.samples, n, done_at_start)
        eta = seconds(half["eta"]) if half["eta"] != "unknown" else None
        print(f"ETA shown at {half['done']} images: {half['eta']}; the rest took {rest:.0f} s "
              "in the rerun (start-up included)"
              + (f": ETA / real {eta / rest:.2f}" if eta else ""))
        table = pads.dataset(str(out), format="parquet").to_table(columns=["path"])
        paths = table.column("path")
        distinct = len(set(paths.to_pylist()))
        print(f"exactly once: {table.num_rows} rows, {distinct} distinct paths, {n} images: "
              f"{'yes' if table.num_rows == distinct == n else 'NO'}")
        before = files_and_bytes(out)
        query_before = group_by(out)
        started = time.perf_counter()
        compacted = subprocess.run([CLI, "compact", str(out)], capture_output=True, text=True)
        took = time.perf_counter() - started
        print(f"compact: {before} -> {files_and_bytes(out)} in {took:.0f} s "
              f"({compacted.stdout.strip() or compacted.stderr.strip()})")
        print(f"duckdb group by label: {query_before:.2f} s on parts, {group_by(out):.2f} s "
              "compacted")
        manifest = json.loads((out / "_manifest.json").read_text())
        print(f"manifest: {len(json.dumps(manifest)) / 1024:.1f} KiB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
