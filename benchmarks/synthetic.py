"""A synthetic output shaped like `label`'s, for benchmarks: the columns evaluate, report
and DuckDB read (no logits), part files named as `label` names them, a finished manifest."""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effnet_ray.models.registry import load_class_names, load_wnids
from effnet_ray.output.manifest import write_manifest
from effnet_ray.storage import open_fs


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
        name = f"part-{start // per_file:016x}-0000000-n{n}-e{int(error.sum())}-last.parquet"
        pq.write_table(table, folder / name)
    fs, path = open_fs(str(folder))
    write_manifest(fs, path, {"identity": {}, "runs": [], "status": "complete"})


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return "unknown CPU"
