"""Benchmark: what the driver costs at millions of keys, without Ray: listing an S3 prefix and
grouping it into work units, the resume scan of a finished output, the work left, the rows
handed to Ray Data, the progress count, and the memory each holds.

The store is s3fs itself with its S3 calls answered by a generator (keys spread over 1,000
prefixes, 3 KB each, ETags and dates as S3 gives them, 1,000 keys a LIST page as S3 pages),
so s3fs's own parsing and caching are measured and the network is not: on S3 each page is a
sequential request of ~20-100 ms, counted here as `LIST calls`. The output holds one part name
per batch of a finished run. Ray's hand-over (ray.data.from_items) is not measured here.

Each size runs in a fresh process: times and RSS (current and peak, /proc). Bytes per key of
what stays in memory come from a separate run under tracemalloc at `--traced` keys (exact,
and linear in the keys; tracemalloc would slow the large runs several times over).

    .venv/bin/python benchmarks/bench_driver_scale.py [--keys 1000000 3000000] [--traced 100000]
"""

import argparse
import datetime
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import fsspec
from s3fs import S3FileSystem
from synthetic import cpu

from effnet_ray.inputs.listing import list_sources, work_units
from effnet_ray.options import LabelOptions, ReadOptions
from effnet_ray.output.layout import MANIFEST, RECORD, Part, compact_name
from effnet_ray.output.manifest import end_run, start_run
from effnet_ray.output.record import CompactFile, read_record, write_record
from effnet_ray.output.resume import Committed, scan, tidy
from effnet_ray.run.job import _items
from effnet_ray.run.progress import Tracker
from effnet_ray.storage import open_fs

BUCKET, PREFIXES = "bench", 1000
INPUT, OUTPUT = f"s3://{BUCKET}/images", f"s3://{BUCKET}/out"
STORAGE = {"key": "bench", "secret": "bench"}  # never used: no request leaves the process
PAGE = 1000  # keys a ListObjectsV2 page holds
PARTS_A_FILE = 40_000  # parts a compacted file holds; the record is per part whatever it is
MIB = 2**20


class FakeS3:
    """ListObjectsV2 and HeadObject for `keys` images and the output's part names."""

    def __init__(self, keys: int) -> None:
        self.keys, self.per = keys, keys // PREFIXES
        self.parts: list[str] = []
        self.calls = 0
        self.date = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

    def key(self, k: int) -> str:
        return f"images/{k // self.per:03d}/{k // self.per + PREFIXES * (k % self.per):08d}.jpg"

    def content(self, key: str, k: int) -> dict:
        return {"Key": key, "LastModified": self.date + datetime.timedelta(seconds=k),
                "ETag": f'"{k:032x}"', "ChecksumAlgorithm": ["CRC64NVME"],
                "ChecksumType": "FULL_OBJECT", "Size": 3000 + k % 1000,
                "StorageClass": "STANDARD"}

    async def call(self, fs: S3FileSystem, method: str, *args: object, **kw: object) -> dict:
        self.calls += 1
        if method == "head_object":
            raise FileNotFoundError(kw["Key"])
        assert method == "list_objects_v2", method
        prefix, start = str(kw["Prefix"]), int(str(kw.get("ContinuationToken", 0)))
        if kw.get("MaxKeys") == 1:  # is it a folder?
            return {"KeyCount": 1, "Contents": [{"Key": prefix + "x", "Size": 0}]}
        if prefix == "images/" and kw.get("Delimiter") == "/":  # its sub-folders
            return {"CommonPrefixes": [{"Prefix": f"images/{p:03d}/"} for p in range(PREFIXES)],
                    "KeyCount": PREFIXES, "IsTruncated": False}
        if prefix == "images/":
            end = min(start + PAGE, self.keys)
            contents = [self.content(self.key(k), k) for k in range(start, end)]
        else:
            end = min(start + PAGE, len(self.parts))
            contents = [self.content("out/" + name, i)
                        for i, name in enumerate(self.parts[start:end], start)]
        more = end < (self.keys if prefix == "images/" else len(self.parts))
        return {"Contents": contents, "KeyCount": len(contents), "IsTruncated": more,
                **({"NextContinuationToken": str(end)} if more else {})}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else rss()


def child(keys: int, traced: bool) -> dict:
    """One size in this process: seconds, LIST calls and bytes of each step."""
    if traced:
        tracemalloc.start()
    store = FakeS3(keys)
    S3FileSystem._call_s3 = lambda fs, method, *a, **kw: store.call(fs, method, *a, **kw)
    read = ReadOptions()
    out: dict = {"keys": keys}
    base = held()

    started = time.perf_counter()
    units = tuple(work_units(list_sources([INPUT], options=STORAGE, exclude=OUTPUT),
                             read.unit_size))
    out["list_s"], out["list_calls"] = time.perf_counter() - started, store.calls
    out["units"] = len(units)
    out["list_peak"] = (tracemalloc.get_traced_memory()[1] if traced else peak_rss()) - base
    fs, path = open_fs(OUTPUT, STORAGE)
    listed = held()
    out["dircache_entries"] = sum(len(v) for v in fs.dircache.values())
    fs.invalidate_cache()  # what s3fs's listing cache holds, apart from the units
    out["units_bytes"] = held() - base
    out["dircache_bytes"] = listed - base - out["units_bytes"]

    store.parts = sorted(  # a finished run's parts: one a batch
        Part(u.uid, first, min(read.batch_size, len(u.sources) - first), 0,
             first + read.batch_size >= len(u.sources)).name
        for u in units for first in range(0, len(u.sources), read.batch_size))
    out["parts"] = len(store.parts)
    store.calls, before = 0, held()
    started = time.perf_counter()
    committed = scan(fs, path)
    out["scan_s"], out["scan_calls"] = time.perf_counter() - started, store.calls
    fs.invalidate_cache()
    out["committed_bytes"] = held() - before

    started = time.perf_counter()
    todo = [u for u in units if not committed.complete(u.uid, read.batch_size)]
    out["todo_s"], out["todo"] = time.perf_counter() - started, len(todo)
    started = time.perf_counter()
    tidy(fs, path, committed, units)
    out["tidy_s"] = time.perf_counter() - started
    started = time.perf_counter()
    Tracker(units, committed, {})
    out["tracker_s"] = time.perf_counter() - started

    before = held()
    started = time.perf_counter()
    items = _items(list(units), Committed())  # a first run hands every unit to Ray Data
    out["items_s"] = time.perf_counter() - started
    out["items_bytes"] = held() - before
    del items

    memory = fsspec.filesystem("memory")
    parts = [p for name in store.parts if (p := Part.parse(name))]
    write_record(memory, "/record", [
        CompactFile(compact_name("0" * 8, i), tuple(parts[i:i + PARTS_A_FILE]))
        for i in range(0, len(parts), PARTS_A_FILE)])
    out["record_bytes"] = len(memory.cat_file(f"/record/{RECORD}"))
    before = held()
    started = time.perf_counter()
    record = read_record(memory, "/record")
    out["record_s"], out["record_held"] = time.perf_counter() - started, held() - before
    del record
    options = LabelOptions.build([INPUT], "memory://manifest")
    manifest = start_run(memory, "/manifest", None, options.identity(), {})
    end_run(memory, "/manifest", manifest, "complete", {"images": keys, "errors": 0})
    out["manifest_bytes"] = len(memory.cat_file(f"/manifest/{MANIFEST}"))
    out["rss_end"], out["rss_peak"] = rss(), peak_rss()
    return out


def run_child(keys: int, traced: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(keys)] + (["--trace"] if traced else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{keys} keys: exit {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--traced", type=int, default=100_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.trace)))
        return
    read = ReadOptions()
    print(f"cpu: {cpu()}; python {sys.version.split()[0]}; unit size {read.unit_size}, "
          f"batch size {read.batch_size}")
    t = run_child(args.traced, traced=True)
    n = t["keys"]
    print(f"\nheld in memory, bytes per key (tracemalloc, {n:,} keys):")
    print(f"  listing peak {t['list_peak'] / n:7.0f}  (s3fs's info dicts, our entries, units)")
    print(f"  units        {t['units_bytes'] / n:7.0f}  (kept for the whole run)")
    print(f"  s3fs cache   {t['dircache_bytes'] / n:7.0f}  ({t['dircache_entries']:,} info dicts "
          "left in the listing's fsspec instance)")
    print(f"  scan         {t['committed_bytes'] / n:7.0f}  ({t['parts']:,} parts)")
    print(f"  Ray items    {t['items_bytes'] / n:7.0f}  (the list given to from_items)")
    print(f"  manifest     {t['manifest_bytes']:7d}  bytes in all, whatever the keys")
    print(f"  compaction record {t['record_bytes'] / n:.1f} bytes of JSON a key, "
          f"{t['record_held'] / n:.0f} in memory once read, "
          f"read in {t['record_s'] / t['parts'] * 1e6:.1f} us a part (every scan of a compacted "
          "output)")
    print(f"\n{'keys':>10} {'units':>7} {'list s':>7} {'LISTs':>6} {'parts':>7} {'scan s':>7} "
          f"{'LISTs':>5} {'todo s':>6} {'tidy s':>6} {'count s':>7} {'items s':>7} "
          f"{'RSS MiB':>7} {'peak MiB':>8}")
    for keys in args.keys:
        r = run_child(keys, traced=False)
        print(f"{keys:>10,} {r['units']:>7,} {r['list_s']:>7.1f} {r['list_calls']:>6,} "
              f"{r['parts']:>7,} {r['scan_s']:>7.1f} {r['scan_calls']:>5,} {r['todo_s']:>6.2f} "
              f"{r['tidy_s']:>6.2f} {r['tracker_s']:>7.2f} {r['items_s']:>7.1f} "
              f"{r['rss_end'] / MIB:>7.0f} {r['rss_peak'] / MIB:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
