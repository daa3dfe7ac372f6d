"""Benchmark: listing a million keys, grouping them into work units, and reading back
what a finished run committed (the resume scan).

A simulated store (fsspec's in-memory filesystem, keys spread over 1,000 prefixes) isolates
what effnet-ray itself costs: finding the keys, classifying them, grouping them into units,
handing the units to Ray Data, and deciding from the output's file names which units are
done. A real object store adds its listing latency on top: S3's ListObjectsV2 returns 1,000
keys a page, so 1M keys are 1,000 sequential requests and the ~40,000 result files 40.

    .venv/bin/python benchmarks/bench_listing.py [--keys 1000000]
"""

import argparse
import time

import fsspec
import ray
from fsspec.implementations.memory import MemoryFile

from effnet_ray.inputs.listing import list_sources, work_units
from effnet_ray.options import ReadOptions
from effnet_ray.output.layout import Part
from effnet_ray.output.resume import scan
from effnet_ray.run.job import MAX_READ_BLOCKS, _items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    unit_size, batch_size = ReadOptions().unit_size, ReadOptions().batch_size

    fs = fsspec.filesystem("memory")
    fs.store.clear()
    for i in range(args.keys):
        path = f"/bucket/images/{i % 1000:03d}/{i:07d}.jpg"
        fs.store[path] = MemoryFile(fs, path, b"")
    started = time.perf_counter()
    units = list(work_units(list_sources(["memory://bucket/images"]), unit_size))
    listed = time.perf_counter() - started
    print(f"listed and grouped {args.keys} keys into {len(units)} units of {unit_size}: "
          f"{listed:.1f} s ({args.keys / listed:,.0f} keys/s)")

    for unit in units:  # what a finished run leaves: one file per part
        for first in range(0, len(unit.uris), batch_size):
            rows = min(batch_size, len(unit.uris) - first)
            name = Part(unit.uid, first, rows, 0, first + rows == len(unit.uris)).name
            fs.store[f"/out/{name}"] = MemoryFile(fs, f"/out/{name}", b"")
    started = time.perf_counter()
    committed = scan(fs, "/out")
    done = sum(committed.complete(u.uid, batch_size) for u in units)
    scanned = time.perf_counter() - started
    print(f"resume scan: {sum(map(len, committed.parts.values()))} committed files, "
          f"{done}/{len(units)} units complete: {scanned:.1f} s")

    ray.init(include_dashboard=False, logging_level="ERROR")
    started = time.perf_counter()
    items = _items(units, committed)  # the rows a run hands to Ray Data
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_READ_BLOCKS))
    print(f"Ray Data dataset of {ds.count()} units: {time.perf_counter() - started:.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
