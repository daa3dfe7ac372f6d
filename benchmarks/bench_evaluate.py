"""Benchmark: `evaluate` and `report` on a synthetic output of a million rows.

Writes an output folder shaped like `label`'s (the columns evaluate and report read, in
part files of --rows-per-file rows; no logits, which neither reads), with class folders as
ground truth for 90% of the rows and 1% error rows, then times `evaluate_table` after reading
and the whole `report` (thumbnails point at files that do not exist, so the page shows
placeholders: the time is that of reading, counting and drawing).

    .venv/bin/python benchmarks/bench_evaluate.py [--rows 1000000] [--rows-per-file 25000]
"""

import argparse
import tempfile
import time
from pathlib import Path

from synthetic import cpu, synthetic

from effnet_ray.results.evaluate import evaluate
from effnet_ray.results.report import write_report


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
