"""Benchmark: a gzip'd tar shard whose first member is MiB of zeros and whose second is a
photo: how long until both samples are out (the zeros skipped as too large, or read), in
wall and CPU seconds (CPU time is the figure that holds on a busy machine).
gzip's level 9 (its default, and tarfile's) packs zeros about 1000:1, level 1 about 200:1.

    .venv/bin/python benchmarks/bench_tar_skip.py [--mib 256] [--level 9] [--repeats 3]
"""

import argparse
import gzip
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic import cpu  # noqa: E402

from effnet_ray.inputs.samples import ReadTask  # noqa: E402
from effnet_ray.inputs.webdataset import tar_samples  # noqa: E402
from effnet_ray.models.registry import PHOTOS, get_spec  # noqa: E402
from effnet_ray.options import ReadOptions  # noqa: E402


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def make_shard(path: Path, size: int, level: int) -> None:
    photo = (PHOTOS / "coffee.jpg").read_bytes()
    with gzip.open(path, "wb", compresslevel=level) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        big = tarfile.TarInfo("zeros.jpg")
        big.size = size
        tar.addfile(big, io.BufferedReader(Zeros(size), 2**20))
        small = tarfile.TarInfo("photo.jpg")
        small.size = len(photo)
        tar.addfile(small, io.BytesIO(photo))


def seconds(path: Path, max_bytes: int) -> tuple[float, float]:
    """(wall, CPU) seconds until both samples are out."""
    task = ReadTask(ReadOptions(max_bytes=max_bytes), get_spec("efficientnet-lite0"))
    wall, cpu_time = time.perf_counter(), time.process_time()
    samples = list(tar_samples(str(path), path.stat().st_size, "", task, lambda i: False))
    took = time.perf_counter() - wall, time.process_time() - cpu_time
    assert [s.path.rsplit("::")[1] for s in samples] == ["zeros", "photo"], samples
    assert samples[1].error is None, samples[1].error
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--level", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bomb.tar.gz"
        make_shard(path, args.mib * 2**20, args.level)
        print(f"cpu: {cpu()}; {path.stat().st_size} bytes gzip'd at level {args.level}, "
              f"{args.mib} MiB inflated")
        for what, limit in (("skipped (larger than --max-bytes)", 2**20),
                            ("read whole", args.mib * 2**20)):
            runs = [seconds(path, limit) for _ in range(args.repeats)]
            wall, cpu_time = min(w for w, _ in runs), min(c for _, c in runs)
            print(f"zeros {what}: best of {args.repeats}: {wall:.2f} s wall, {cpu_time:.2f} s "
                  f"CPU ({args.mib / cpu_time:.0f} MiB per CPU second)")


if __name__ == "__main__":
    main()
