"""Benchmark: a DuckDB `group by label` over a million-row output, before and after
`effnet-ray compact`, and the compaction itself.

    .venv/bin/python benchmarks/bench_compact.py [--rows 1000000] [--rows-per-file 25]

25 rows a file is what `label` writes at the defaults (a million images: 40,000 files).
"""

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
from synthetic import cpu, synthetic

from effnet_ray.output.compaction import compact

QUERY = "select label, count(*) from read_parquet('{}/*.parquet') group by 1 order by 2 desc"


def query_seconds(folder: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        duckdb.sql(QUERY.format(folder)).fetchall()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-file", type=int, default=25)
    parser.add_argument("--target-size", type=int, default=256 * 10**6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        synthetic(out, args.rows, args.rows_per_file)
        files = len(list(out.glob("*.parquet")))
        print(f"cpu: {cpu()}; {args.rows} rows in {files} part files")
        before = query_seconds(out)
        print(f"duckdb group by label, {files} files: {before:.2f} s (best of 3)")
        started = time.perf_counter()
        written, rows = compact(str(out), args.target_size)
        print(f"compact: {rows} rows into {written} files in {time.perf_counter() - started:.1f} s")
        after = query_seconds(out)
        print(f"duckdb group by label, {written} files: {after:.2f} s (best of 3); "
              f"{before / after:.0f}x faster")


if __name__ == "__main__":
    main()
