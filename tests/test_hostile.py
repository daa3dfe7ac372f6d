"""Hostile inputs, outputs and cluster states against the real CLI on a real local Ray.

Each run must end with every input exactly once (a row with its reason where it cannot be
labelled), no traceback, in bounded time, and nothing outside the output touched. The
per-item cases are unit-tested in test_unit_reading.py; here they go through the whole job.
"""

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from effnet_ray.models.registry import PHOTOS
from tests.helpers import CLI, one_line_error, run_cli

JPEG = (PHOTOS / "coffee.jpg").read_bytes()


def lite0(ir):
    return ["--model", "efficientnet-lite0", "--model-path", ir, "--precision", "f32",
            "--batch-size", "4", "--unit-size", "4"]


def rows(folder):
    return pads.dataset(str(folder), format="parquet").to_table().to_pylist()


def tar_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, value in members:
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type, info.linkname = value
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def png(width, height):
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder of what a scraped dataset holds, and how many rows each input must give."""
    root = tmp_path_factory.mktemp("hostile")
    expected = {}

    def put(name, data, count=1):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[str(path)] = count

    put("good.jpg", JPEG)
    put("1x8000.png", png(1, 8000))
    put("wide.png", png(100_000, 1))
    put("x::y.jpg", JPEG)
    put("photo[1].jpg", JPEG)
    put("big.jpg", JPEG + b"\0" * 3_000_000)
    with open(os.fsencode(root) + b"/bad-\xff-name.jpg", "wb") as f:
        f.write(JPEG)
    expected[os.fsdecode(os.fsencode(root) + b"/bad-\xff-name.jpg")] = 1
    os.mkfifo(root / "fifo.jpg")
    expected[str(root / "fifo.jpg")] = 1
    os.symlink(root / "loop.jpg", root / "loop.jpg")
    expected[str(root / "loop.jpg")] = 1
    os.symlink("/dev/zero", root / "zero.jpg")
    expected[str(root / "zero.jpg")] = 1
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    expected[str(root / "sock.jpg")] = 1
    os.symlink(root / "sub", root / "linked-sub")  # followed; sub/ is listed once only
    (root / "sub").mkdir()
    (root / "sub" / "in-sub.jpg").write_bytes(JPEG)  # one row, under one of its two names
    os.symlink(root, root / "sub" / "loop-up")
    put("shards/links.tar", tar_of([("a.jpg", JPEG), ("b.jpg", (tarfile.LNKTYPE, "a.jpg")),
                                    ("c.jpg", (tarfile.SYMTYPE, "a.jpg")), ("a.jpg", JPEG)]),
        count=4)
    gz = io.BytesIO()
    with tarfile.open(fileobj=gz, mode="w:gz") as tar:
        info = tarfile.TarInfo("k.jpg")
        info.size = len(JPEG)
        tar.addfile(info, io.BytesIO(JPEG))
    put("shards/zipped.tgz", gz.getvalue())
    table = pa.table({"image": [JPEG, None, JPEG, JPEG], "id": ["a", "a", None, "b"]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    put("shards/ids.parquet", sink.getvalue(), count=4)
    corrupt = bytearray(sink.getvalue())
    corrupt[4:44] = b"\xff" * 40  # the first page header
    put("shards/aaa-corrupt.parquet", bytes(corrupt))  # sorts first: not an argument error
    yield root, expected, sock
    sock.close()


def test_a_hostile_folder_gives_every_input_exactly_once(hostile, lite0_ir, tmp_path):
    root, expected, _ = hostile
    out = tmp_path / "out"
    started = time.time()
    result = run_cli("label", root, "--output", out, *lite0(lite0_ir), "--max-bytes",
                     2_000_000, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - started < 300
    found = rows(out)
    paths = [r["path"] for r in found]
    assert len(paths) == len(set(paths)), "a path is in the output twice"
    by_input = {}
    for path in paths:
        if path.startswith("file://"):
            from urllib.parse import unquote_to_bytes

            path = os.fsdecode(unquote_to_bytes(path[7:]))
        owner = next((k for k in expected if path == k or path.startswith(k + "::")), path)
        by_input[owner] = by_input.get(owner, 0) + 1
    for name, count in expected.items():
        if count is not None:
            assert by_input.get(name) == count, (name, by_input.get(name))
    assert sum(p.endswith("/in-sub.jpg") for p in paths) == 1
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in found}
    assert errors["good.jpg"] is None and errors["x::y.jpg"] is None
    assert errors["photo[1].jpg"] is None and errors["in-sub.jpg"] is None
    assert "too many pixels" in errors["1x8000.png"] and "too many pixels" in errors["wide.png"]
    assert "larger than --max-bytes" in errors["big.jpg"]
    assert "a FIFO" in errors["fifo.jpg"] and "a character device" in errors["zero.jpg"]
    assert "link loop" in errors["loop.jpg"] and "not a regular file" in errors["sock.jpg"]
    assert "unreadable Parquet shard" in errors["aaa-corrupt.parquet"]
    links = {r["path"].rsplit("::", 1)[1]: r["error"] for r in found
             if "links.tar::" in r["path"]}
    assert links == {"a": None, "b": None, "c": None, "a#2": None}


def test_an_output_that_would_destroy_inputs_is_refused(tmp_path, lite0_ir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(PHOTOS / "coffee.jpg", inputs / "coffee.jpg")
    for output in ("", str(inputs), str(tmp_path)):
        result = run_cli("label", inputs, "--output", output, "--overwrite", *lite0(lite0_ir))
        one_line_error(result)
        assert (inputs / "coffee.jpg").read_bytes() == JPEG
    result = run_cli("label", inputs, "--output", inputs / "labels", *lite0(lite0_ir))
    assert result.returncode == 0, result.stderr
    again = run_cli("label", inputs, "--output", inputs / "labels", *lite0(lite0_ir))
    assert again.returncode == 0, again.stderr  # its own parts are not inputs
    assert len(rows(inputs / "labels")) == 1


def test_overwrite_refuses_a_folder_of_someone_elses_files(tmp_path, lite0_ir):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"years of work")
    result = run_cli("label", PHOTOS / "coffee.jpg", "--output", out, "--overwrite",
                     *lite0(lite0_ir))
    one_line_error(result, "did not write", "thesis.pdf")
    assert (out / "thesis.pdf").read_bytes() == b"years of work"


def test_a_second_run_into_a_held_output_is_refused_naming_the_holder(tmp_path, lite0_ir,
                                                                       many_photos):
    out = tmp_path / "out"
    first = subprocess.Popen([*CLI, "label", str(many_photos), "--output", str(out),
                              *map(str, lite0(lite0_ir))], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "_lease.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    second = run_cli("label", many_photos, "--output", out, *lite0(lite0_ir))
    one_line_error(second, "in use by another run", f"process {first.pid}")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    manifest = (out / "_manifest.json").read_text()
    assert '"status": "complete"' in manifest and not (out / "_lease.json").exists()


def test_placement_that_starves_decoding_is_refused_before_work(tmp_path, lite0_ir):
    for args in (["--actors", "2"], ["--actor-cpus", "2"]):
        result = run_cli("label", PHOTOS, "--output", tmp_path / "out", *lite0(lite0_ir),
                         *args, timeout=300)
        one_line_error(result, "decoding task")
        assert not list((tmp_path / "out").glob("part-*"))


def test_a_stalled_run_says_so_and_stops(tmp_path, lite0_ir):
    started = time.time()
    result = run_cli("label", PHOTOS, "--output", tmp_path / "out", *lite0(lite0_ir),
                     "--reader-labels", '{"pool": "in(nowhere)"}', "--stall-timeout", "20",
                     timeout=300)
    one_line_error(result, "nothing was committed for 20 s", "rerun the same command")
    assert "nothing committed for" in result.stderr  # what it was waiting for
    assert time.time() - started < 150


def test_a_stale_cluster_file_does_not_stop_a_local_run(tmp_path, lite0_ir):
    tmp_dir = Path("/tmp/ray")
    tmp_dir.mkdir(exist_ok=True)
    record = tmp_dir / "ray_current_cluster"
    saved = record.read_bytes() if record.exists() else None
    record.write_text("127.0.0.1:9\n")  # nothing listens there
    try:
        started = time.time()
        result = run_cli("label", PHOTOS / "coffee.jpg", "--output", tmp_path / "out",
                         *lite0(lite0_ir), env={"RAY_ADDRESS": "127.0.0.1:9"}, timeout=300)
        assert result.returncode == 0, result.stderr
        assert time.time() - started < 120
    finally:
        if saved is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(saved)


def test_a_replaced_image_is_labelled_again(tmp_path, lite0_ir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted(PHOTOS.glob("*.*")):
        if p.suffix != ".md":
            shutil.copy(p, inputs / p.name)
    out = tmp_path / "out"
    assert run_cli("label", inputs, "--output", out, *lite0(lite0_ir)).returncode == 0
    before = {r["path"]: r["class_id"] for r in rows(out)}
    shutil.copy(PHOTOS / "chelsea.jpg", inputs / "coffee.jpg")  # another picture, same name
    result = run_cli("label", inputs, "--output", out, *lite0(lite0_ir))
    assert result.returncode == 0, result.stderr
    after = {r["path"]: r["class_id"] for r in rows(out)}
    assert sorted(after) == sorted(before)
    assert after[str(inputs / "coffee.jpg")] == before[str(inputs / "chelsea.jpg")]


def test_messages_tell_the_truth(tmp_path, lite0_ir):
    result = run_cli("label", "nosuch://bucket/x", "--output", tmp_path / "o", *lite0(lite0_ir))
    one_line_error(result, "unknown protocol 'nosuch://'")
    result = run_cli("label", "http://user:hunter2@127.0.0.1:9/x.jpg", "--output",
                     tmp_path / "o", *lite0(lite0_ir))
    one_line_error(result, "cannot reach", "***@127.0.0.1:9")
    assert "hunter2" not in result.stderr
    started = time.time()
    result = run_cli("label", PHOTOS, "--output", tmp_path / "o", *lite0(lite0_ir),
                     "--address", "127.0.0.1:9")  # nothing listens: not minutes of retries
    one_line_error(result, "cannot reach Ray at 127.0.0.1:9")
    assert time.time() - started < 60 and not (tmp_path / "o").exists()
