"""Benchmark: the full loop at scale: label N images in WebDataset shards, SIGKILL at half,
rerun, compact; then a folder of image files and an S3 prefix on moto; what each costs in
time and memory, and whether every image is there once.

The images are distinct small JPEGs (a few KB: one base photo per 1,000, each copy made
distinct by a comment segment carrying its number), in shards of 1,000, as files in one
folder, and as objects under one prefix of a moto_server on loopback. The model is a nearly
free IR that honours the Lite0 contract (a mean over the pixels and a 3x1000 matrix), so the
pipeline, not the model, is measured. `label` runs as a whole CLI process; once a second the
RSS of the driver and of every process of its tree (Ray's own processes included) is sampled.

It prints: time to the first commit, images/s per tenth of the run, RSS at 10/50/90% and
the growth per 100,000 images (in all and for each process that grew), the ETA shown at half
against the time the rest took, the rerun's time to its first new commit, every path exactly
once (read back with pyarrow), files and bytes before and after `compact`, and a DuckDB
`group by label` before and after.

    .venv/bin/python benchmarks/bench_scale.py [--images 1000000] [--files 200000]
        [--s3 100000] [--keep DIR]
"""

import argparse
import concurrent.futures
import io
import json
import os
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import cpu  # noqa: E402

from effnet_ray.models.registry import PHOTOS, get_spec  # noqa: E402
from tests.helpers import S3_SECRET, start_moto  # noqa: E402

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


def _bases() -> list[bytes]:
    bases = []
    for path in sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png")):
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize((96, 72)).save(buf, format="JPEG", quality=85)
        bases.append(buf.getvalue())
    return bases


def jpeg(bases: list[bytes], n: int) -> bytes:
    """The n-th distinct JPEG: a base photo with a comment segment carrying n."""
    base = bases[n % len(bases)]
    tag = f"effnet-ray scale {n}".encode()
    return base[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + base[2:]


def shards(folder: Path, images: int) -> Path:
    """`images` distinct JPEGs of a few KB in tar shards of SHARD samples (.jpg and .cls)."""
    bases = _bases()
    folder.mkdir(parents=True)
    for first in range(0, images, SHARD):
        with tarfile.open(folder / f"shard-{first // SHARD:06d}.tar", "w") as tar:
            for n in range(first, min(first + SHARD, images)):
                for ext, payload in ((".jpg", jpeg(bases, n)), (".cls", str(n % 1000).encode())):
                    info = tarfile.TarInfo(f"{n:08d}{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder


def files(folder: Path, images: int) -> Path:
    """`images` distinct JPEGs as files in one folder."""
    bases = _bases()
    folder.mkdir(parents=True)
    for n in range(images):
        (folder / f"{n:08d}.jpg").write_bytes(jpeg(bases, n))
    return folder


def s3_objects(env: dict, images: int) -> str:
    """`images` distinct JPEGs as objects under one prefix of the S3 server in `env`."""
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket="scale")
    bases = _bases()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.put_object(Bucket="scale", Key=f"photos/{n:08d}.jpg",
                                                  Body=jpeg(bases, n)), range(images)))
    return "s3://scale/photos/"


def _name(p: psutil.Process) -> str:
    """A process's short name: Ray's workers name themselves `ray::...`."""
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    script = next((c for c in cmd[1:] if c.endswith(".py") or c.startswith("effnet")), "")
    return Path(script or (cmd[0] if cmd else p.name())).name


class Sampler:
    """Once a second: the RSS of the driver and of each process of its tree, and the last
    progress line."""

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
                rss = driver.memory_info().rss
                each = {}
                for p in driver.children(recursive=True):
                    try:
                        each[f"{_name(p)} ({p.pid})"] = p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            found = _PROGRESS.findall(self.log.read_text(errors="replace"))
            done, total_images, eta = (int(found[-1][0]), int(found[-1][1]), found[-1][2]) \
                if found else (0, 0, "unknown")
            self.samples.append({"t": time.time() - started, "driver": rss,
                                 "tree": rss + sum(each.values()), "each": each,
                                 "done": done, "total": total_images, "eta": eta})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def label(inputs: Path | str, out: Path, model: Path, log: Path, *more: str,
          env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([CLI, "label", str(inputs), "-o", str(out), "--model",
                                 "efficientnet-lite0", "--model-path", str(model),
                                 "--progress-seconds", "1", *more],
                                stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


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
        each = {name: (rss - lo["each"][name]) / 2**20 / grown
                for name, rss in hi["each"].items() if name in lo["each"]}
        grew = sorted(((g, name) for name, g in each.items() if abs(g) >= 0.5), reverse=True)
        if grew:
            print("    of which: " + ", ".join(f"{name} {g:+.1f}" for g, name in grew))


def files_and_bytes(out: Path) -> str:
    files = list(out.glob("*.parquet"))
    return f"{len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB"


def group_by(out: Path) -> float:
    started = time.perf_counter()
    duckdb.sql(f"select label, count(*) from read_parquet('{out}/*.parquet') group by label"
               ).fetchall()
    return time.perf_counter() - started


def exactly_once(out: Path | str, n: int, fs_options: dict | None = None) -> str:
    table = pads.dataset(str(out).removeprefix("s3://"), format="parquet",
                         filesystem=_arrow_fs(fs_options)).to_table(columns=["path"])
    distinct = len(set(table.column("path").to_pylist()))
    return (f"exactly once: {table.num_rows} rows, {distinct} distinct paths, {n} images: "
            f"{'yes' if table.num_rows == distinct == n else 'NO'}")


def _arrow_fs(env: dict | None):  # noqa: ANN202 - pyarrow's filesystem types
    if not env:
        return None
    from pyarrow import fs

    return fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"],
                           access_key=env["AWS_ACCESS_KEY_ID"],
                           secret_key=env["AWS_SECRET_ACCESS_KEY"],
                           region=env["AWS_DEFAULT_REGION"])


def loop_over_shards(root: Path, model: Path, n: int, kill_at: float) -> None:
    """Label shards, SIGKILL at `kill_at`, rerun, compact."""
    started = time.perf_counter()
    inputs = shards(root / "shards", n)
    print(f"made {n} JPEGs in {n // SHARD} shards in {time.perf_counter() - started:.0f} s",
          flush=True)
    out = root / "out"
    proc = label(inputs, out, model, root / "first.log", "--no-compact")
    first = Sampler(proc, root / "first.log")
    while proc.poll() is None and (not first.samples
                                   or first.samples[-1]["done"] < kill_at * n):
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
    # the first progress line counts what earlier runs committed
    done_at_start = next((s["done"] for s in rerun.samples if s["done"]), 0)
    report_run("rerun", rerun.samples, n, done_at_start)
    eta = seconds(half["eta"]) if half["eta"] != "unknown" else None
    print(f"ETA shown at {half['done']} images: {half['eta']}; the rest took {rest:.0f} s "
          "in the rerun (start-up included)" + (f": ETA / real {eta / rest:.2f}" if eta else ""))
    print(exactly_once(out, n))
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


def one_run(name: str, inputs: Path | str, out: Path | str, model: Path, log: Path, n: int,
            env: dict | None = None) -> None:
    """Label `inputs` in one run, compaction at its end included."""
    started = time.time()
    proc = label(inputs, out, model, log, env=env)
    sampler = Sampler(proc, log)
    proc.wait()
    sampler.stop()
    if proc.returncode:
        sys.exit(f"{name} failed:\n{log.read_text()[-3000:]}")
    report_run(name, sampler.samples, n, 0)
    print(f"  {n / (time.time() - started):.0f} images/s from start to end "
          f"({time.time() - started:.0f} s); {exactly_once(out, n, env)}")
    if isinstance(out, Path):
        print(f"  output: {files_and_bytes(out)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000,
                        help="images in tar shards: label, SIGKILL, rerun, compact (0: skip)")
    parser.add_argument("--files", type=int, default=200_000,
                        help="images as files in one folder, one run (0: skip)")
    parser.add_argument("--s3", type=int, default=100_000,
                        help="images as objects under an S3 prefix on moto, one run (0: skip)")
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"cpu: {cpu()}; {args.images} images in shards of {SHARD}, {args.files} files, "
          f"{args.s3} S3 objects", flush=True)
    try:
        model = free_ir(root)
        if args.images:
            loop_over_shards(root, model, args.images, args.kill_at)
        if args.files:
            started = time.perf_counter()
            folder = files(root / "files", args.files)
            print(f"made {args.files} files in {time.perf_counter() - started:.0f} s",
                  flush=True)
            one_run("a folder of files", folder, root / "out-files", model,
                    root / "files.log", args.files)
        if args.s3:
            moto, port = start_moto()
            env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                   "AWS_ACCESS_KEY_ID": "effnetkey", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                   "AWS_DEFAULT_REGION": "us-east-1"}
            try:
                started = time.perf_counter()
                prefix = s3_objects(env, args.s3)
                print(f"put {args.s3} objects in {time.perf_counter() - started:.0f} s",
                      flush=True)
                one_run("an S3 prefix on moto", prefix, "s3://scale/out/", model,
                        root / "s3.log", args.s3, env)
            finally:
                moto.terminate()
                moto.wait(timeout=30)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
