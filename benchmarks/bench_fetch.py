"""Benchmark: one decoding task reading a unit of 64 photos from S3 (moto_server) behind a
proxy that holds every request 50 ms, one object at a time against FETCH_OBJECTS at once.

    .venv/bin/python benchmarks/bench_fetch.py [--objects 64] [--delay 0.05]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import s3fs  # noqa: E402
from synthetic import cpu  # noqa: E402

from effnet_ray.inputs import fetch  # noqa: E402
from effnet_ray.inputs.listing import list_sources  # noqa: E402
from effnet_ray.inputs.reading import read_units  # noqa: E402
from effnet_ray.inputs.samples import ReadTask
from effnet_ray.models.registry import (
    PHOTOS,  # noqa: E402
    get_spec,  # noqa: E402
)
from effnet_ray.options import ReadOptions  # noqa: E402
from tests.helpers import FlakyProxy, start_moto  # noqa: E402


def seconds(task: ReadTask, sources: list) -> float:
    batch = {"kind": ["files"], "uris": [[s.uri for s in sources]],
             "sizes": [[s.size for s in sources]], "versions": [[s.version for s in sources]],
             "uid": ["0" * 16], "done": [[]]}
    started = time.perf_counter()
    rows = sum(t.column("paths")[0].as_py().__len__() for t in read_units(batch, task=task))
    assert rows == len(sources)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    proc, port = start_moto()
    proxy = FlakyProxy(port, delay=args.delay)
    try:
        direct = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}")
        direct.mkdir("bench-fetch")
        photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
        for i in range(args.objects):
            direct.put(str(photos[i % len(photos)]), f"bench-fetch/u/{i:03d}.jpg")
        options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}
        sources = list(list_sources(["s3://bench-fetch/u"], options=options))
        task = ReadTask(ReadOptions(), get_spec("efficientnet-lite0"), options)
        concurrent = fetch.FETCH_OBJECTS
        print(f"cpu: {cpu()}; {len(sources)} objects, {args.delay * 1000:.0f} ms a request")
        for at_once in (1, concurrent):
            fetch.FETCH_OBJECTS = at_once
            took = seconds(task, sources)
            print(f"FETCH_OBJECTS={at_once}: {took:.2f} s, {len(sources) / took:.1f} images/s "
                  "(decode and preprocess included)")
    finally:
        proxy.close()
        proc.terminate()


if __name__ == "__main__":
    main()
