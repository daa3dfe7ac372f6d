"""Benchmark: `evaluate` and `report` on a synthetic output of a million rows.

Writes an output folder shaped like `label`'s (the columns evaluate and report read, in
part files of --rows-per-file rows; no logits, which neither reads), with class folders as
ground truth for 90% of the rows and 1% error rows, then times `evaluate_table` after reading
and the whole `report` (thumbnails point at files that do not exist, so the page shows
placeholders: the time is that of reading, counting and drawing).

    .venv/bin/python benchmarks/bench_evaluate.py [--rows 1000000] [--rows-per-file 25000]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effnet_ray.evaluate import evaluate
from effnet_ray.registry import load_class_names, load_wnids
from effnet_ray.report import write_report


def synthetic(folder: Path, rows: int, per_file: int) -> None:
    rng = np.random.default_rng(0)
    names, wnids = load_class_names("imagenet_2012.txt"), load_wnids("imagenet_2012.txt")
    for start in range(0, rows, per_file):
        n = min(per_file, rows - start)
        actual = rng.integers(0, 1000, n)
        ids = rng.integers(0, 1000, (n, 5)).astype(np.int32)
        right = rng.random(n) < 0.84
        ids[right, 0] = actual[right]
        probs = np.sort(rng.dirichlet(np.ones(6), n)[:, :5], axis=1)[:, ::-1]
        error = rng.random(n) < 0.01
        has_truth = rng.random(n) < 0.9
        paths = [f"/data/{wnids[a]}/{start + i:08d}.JPEG" if t else f"/data/misc/{start + i}.jpg"
                 for i, (a, t) in enumerate(zip(actual, has_truth, strict=True))]
        ok = ~error
        table = pa.table({
            "path": paths,
            "model": ["efficientnet-b7-pytorch"] * n,
            "class_id": pa.array(np.where(ok, ids[:, 0], 0), pa.int32(), mask=error),
            "label": pa.array([names[i] for i in ids[:, 0]], mask=error),
            "top_k_ids": pa.array([r.tolist() for r in ids], pa.list_(pa.int32()),
                                  mask=error),
            "top_k_probs": pa.array([r.tolist() for r in probs.astype(np.float32)],
                                    pa.list_(pa.float32()), mask=error),
            "error": pa.array(np.where(error, "undecodable image (synthetic)", None),
                              pa.string()),
            "source_label": pa.nulls(n, pa.string()),
        })
        pq.write_table(table, folder / f"part-{start // per_file:016x}-0000000-n{n}-e0.parquet")


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-file", type=int, default=25_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        started = time.perf_counter()
        synthetic(out, args.rows, args.rows_per_file)
        files = len(list(out.iterdir()))
        print(f"cpu: {cpu()}; {args.rows} rows in "
              f"{files} files, written in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        result = evaluate(str(out))
        print(f"evaluate: {time.perf_counter() - started:.1f} s (top-1 {result.top1:.4f} on "
              f"{result.images} images, {result.errors} errors, "
              f"{result.without_ground_truth} without ground truth)")
        started = time.perf_counter()
        write_report(str(out), str(Path(tmp) / "report.html"))
        size = (Path(tmp) / "report.html").stat().st_size
        print(f"report: {time.perf_counter() - started:.1f} s, {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
