"""Inputs at scale: object storage, WebDataset and Parquet shards, and every kind of bad image.

Runs the real CLI on a real local Ray against a real S3 API server on loopback (moto_server).
"""

import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image

from effnet_ray.inputs.listing import Source, list_sources, work_units
from effnet_ray.models.registry import PHOTOS
from tests.helpers import S3_SECRET, free_port, one_line_error, run_cli, start_moto

LITE0 = ["--model", "efficientnet-lite0", "--precision", "f32"]


def encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_bomb(width=100_000, height=100_000):
    """A small PNG whose header claims 10 gigapixels: must be refused before decoding."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def bad_and_odd_images():
    """{file name: expected error fragment or None for a good image}."""
    photo = Image.open(PHOTOS / "chelsea.jpg")
    jpeg = (PHOTOS / "chelsea.jpg").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [photo.resize((60, 40)), photo.resize((60, 40)).rotate(180)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    files = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "undecodable"),
        "text.jpg": (b"hello, I am text\n" * 20, "not a recognised image"),
        "random.png": (np.random.default_rng(0).bytes(5000), "not a recognised image"),
        "bomb.png": (png_bomb(), "too many pixels"),
        "cmyk.jpg": (encode(photo.convert("CMYK"), "JPEG"), None),
        "sixteen-bit.png": (encode(Image.fromarray(sixteen), "PNG"), None),
        "palette.png": (encode(photo.convert("P"), "PNG"), None),
        "la.png": (encode(photo.convert("LA"), "PNG"), None),
        "rgba.png": (encode(photo.convert("RGBA"), "PNG"), None),
        "one-pixel.png": (encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), None),
        "animated.gif": (gif.getvalue(), None),
        "exif-rotated.jpg": (encode(photo, "JPEG", exif=exif), None),
        "name with spaces.jpg": (jpeg, None),
        "café ünïcödé 猫.jpg": (jpeg, None),
        "float.tiff": (encode(Image.fromarray(np.ones((8, 8), np.float32)), "TIFF"),
                       "unsupported mode F"),
    }
    return files


def read_rows(folder, filesystem=None):
    return pads.dataset(folder, format="parquet", filesystem=filesystem).to_table().to_pylist()


def test_every_bad_image_is_a_row_with_its_reason(tmp_path, lite0_ir):
    files = bad_and_odd_images()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, (data, _) in files.items():
        (inputs / name).write_bytes(data)
    result = run_cli("label", inputs, "--output", tmp_path / "out", "--model-path", lite0_ir,
                     *LITE0, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {r["path"].rsplit("/", 1)[1]: r for r in read_rows(tmp_path / "out")}
    assert sorted(rows) == sorted(files)
    for name, (_, reason) in files.items():
        row = rows[name]
        if reason is None:
            assert row["error"] is None, (name, row["error"])
            assert row["class_id"] is not None and len(row["logits"]) == 1000
        else:
            assert reason in row["error"], (name, row["error"])
            assert row["class_id"] is None and row["logits"] is None
    bad = sum(reason is not None for _, reason in files.values())
    assert f"{bad} errors" in result.stdout
    assert rows["café ünïcödé 猫.jpg"]["class_id"] == rows["name with spaces.jpg"]["class_id"]

    failing = run_cli("label", inputs, "--output", tmp_path / "out2", "--model-path", lite0_ir,
                      *LITE0, "--fail-on-error", timeout=300)
    one_line_error(failing, f"{bad} images could not be labelled")
    assert len(read_rows(tmp_path / "out2")) == len(files)  # nothing lost either way


def make_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def webdataset_samples():
    jpeg = (PHOTOS / "chelsea.jpg").read_bytes()
    coffee = (PHOTOS / "coffee.jpg").read_bytes()
    return [
        ("cats/0001.jpg", jpeg), ("cats/0001.cls", b"281"),
        ("cats/0001.json", json.dumps({"source": "skimage"}).encode()),
        ("drinks/0002.jpg", coffee), ("drinks/0002.txt", b"a cup of coffee"),
        ("only-text/0003.txt", b"no picture here"),
        ("broken/0004.png", b"\x89PNG\r\n\x1a\n truncated"),
        ("spaces and ü/0005.jpeg", coffee),
    ]


def test_webdataset_shards(tmp_path, lite0_ir):
    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "shard-000.tar", webdataset_samples())
    make_tar(shards / "shard-001.tar", [("x/0006.webp", encode(Image.open(PHOTOS / "rocket.jpg"),
                                                               "WEBP"))])
    result = run_cli("label", shards, "--output", tmp_path / "out", "--model-path", lite0_ir,
                     *LITE0)
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in read_rows(tmp_path / "out")}
    shard0 = str(shards / "shard-000.tar")
    assert sorted(rows) == sorted(
        [f"{shard0}::{k}" for k in ("cats/0001", "drinks/0002", "only-text/0003",
                                    "broken/0004", "spaces and ü/0005")]
        + [f"{shards / 'shard-001.tar'}::x/0006"])
    cat = rows[f"{shard0}::cats/0001"]
    assert 281 <= cat["class_id"] <= 285 and cat["source_label"] == "281"
    assert json.loads(cat["source_metadata"]) == {"source": "skimage"}
    assert rows[f"{shard0}::drinks/0002"]["source_label"] == "a cup of coffee"
    assert rows[f"{shard0}::only-text/0003"]["error"] == "no image in this sample"
    assert "undecodable" in rows[f"{shard0}::broken/0004"]["error"]


def test_a_truncated_shard_keeps_what_it_read_and_says_where_it_stopped(tmp_path, lite0_ir):
    make_tar(tmp_path / "full.tar", webdataset_samples())
    data = (tmp_path / "full.tar").read_bytes()
    cut = tmp_path / "in" / "cut.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    result = run_cli("label", cut, "--output", tmp_path / "out", "--model-path", lite0_ir,
                     *LITE0)
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in read_rows(tmp_path / "out")}
    assert rows[f"{cut}::cats/0001"]["error"] is None
    assert "unreadable shard after" in rows[str(cut)]["error"]


def test_parquet_shards(tmp_path, lite0_ir):
    folder = tmp_path / "pq"
    folder.mkdir()
    chelsea = (PHOTOS / "chelsea.jpg").read_bytes()
    coffee = (PHOTOS / "coffee.jpg").read_bytes()
    pq.write_table(pa.table({"id": ["cat-1", "coffee-2", "missing-3", "junk-4"],
                             "image": [chelsea, coffee, None, b"junk"],
                             "other": [1, 2, 3, 4]}), folder / "part-0.parquet")
    hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": coffee, "path": "c.jpg"}],
                                               hf_image)}), folder / "part-1.parquet")
    result = run_cli("label", folder, "--output", tmp_path / "out", "--model-path", lite0_ir,
                     *LITE0)
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in read_rows(tmp_path / "out")}
    part0, part1 = folder / "part-0.parquet", folder / "part-1.parquet"
    assert sorted(rows) == sorted([f"{part0}::cat-1", f"{part0}::coffee-2",
                                   f"{part0}::missing-3", f"{part0}::junk-4", f"{part1}::0"])
    assert 281 <= rows[f"{part0}::cat-1"]["class_id"] <= 285
    assert rows[f"{part1}::0"]["class_id"] in (967, 968)
    assert rows[f"{part0}::missing-3"]["error"] == "no image bytes in this row"
    assert "not a recognised image" in rows[f"{part0}::junk-4"]["error"]
    wrong = run_cli("label", folder, "--output", tmp_path / "out2", "--model-path", lite0_ir,
                    *LITE0, "--image-column", "jpg")
    one_line_error(wrong, "no image column 'jpg'")


def test_input_and_output_in_s3(s3, s3_env, tmp_path, lite0_ir):
    s3.mkdir("effnet-in")
    s3.mkdir("effnet-out")
    names = ["chelsea.jpg", "coffee.jpg", "camera.png"]
    for name in names:
        s3.put(str(PHOTOS / name), f"effnet-in/photos/{name}")
    s3.pipe("effnet-in/photos/nested/broken.jpg", b"not an image")
    s3.pipe("effnet-in/photos/nested/empty.jpg", b"")
    s3.put(str(PHOTOS / "coffee.jpg"), "effnet-in/photos/odd::name.jpg")
    s3.put(str(PHOTOS / "coffee.jpg"), "effnet-in/odd/photo[1].jpg")
    make_tar(tmp_path / "shard.tar", webdataset_samples()[:3])
    s3.put(str(tmp_path / "shard.tar"), "effnet-in/shards/shard-000.tar")
    result = run_cli("label", "s3://effnet-in/photos", "s3://effnet-in/shards/*.tar",
                     "s3://effnet-in/odd/photo[1].jpg",
                     "--output", "s3://effnet-out/run1", "--model-path", lite0_ir, *LITE0,
                     env=s3_env)
    assert result.returncode == 0, result.stderr
    import pyarrow.fs as pafs

    rows = {r["path"]: r for r in read_rows(
        "effnet-out/run1", pafs.PyFileSystem(pafs.FSSpecHandler(s3)))}
    expected = [f"s3://effnet-in/photos/{n}" for n in names] + [
        "s3://effnet-in/photos/nested/broken.jpg", "s3://effnet-in/shards/shard-000.tar::cats/0001",
        "s3://effnet-in/photos/nested/empty.jpg", "s3://effnet-in/photos/odd::name.jpg",
        "s3://effnet-in/odd/photo[1].jpg"]
    assert sorted(rows) == sorted(expected)
    assert rows["s3://effnet-in/photos/nested/empty.jpg"]["error"] == "empty file"
    assert rows["s3://effnet-in/photos/odd::name.jpg"]["error"] is None
    assert rows["s3://effnet-in/odd/photo[1].jpg"]["error"] is None
    assert rows["s3://effnet-in/photos/coffee.jpg"]["class_id"] in (967, 968)
    assert "not a recognised image" in rows["s3://effnet-in/photos/nested/broken.jpg"]["error"]
    assert "s3://effnet-out/run1" in result.stdout
    # the secret never shows: not in the output, the logs, or the Parquet files
    assert S3_SECRET not in result.stdout + result.stderr
    for key in s3.find("effnet-out/run1"):
        assert S3_SECRET.encode() not in s3.cat_file(key)


def test_storage_options_reach_the_store(s3, s3_env, lite0_ir):
    s3.mkdir("effnet-opts")
    s3.put(str(PHOTOS / "coffee.jpg"), "effnet-opts/in/coffee.jpg")
    env = {**s3_env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    options = json.dumps({"key": s3_env["AWS_ACCESS_KEY_ID"], "secret": S3_SECRET})
    result = run_cli("label", "s3://effnet-opts/in", "--output", "s3://effnet-opts/out",
                     "--model-path", lite0_ir, *LITE0, "--storage-options", options, env=env)
    assert result.returncode == 0, result.stderr
    assert S3_SECRET not in result.stdout + result.stderr
    assert s3.glob("effnet-opts/out/*.parquet")


def test_missing_bucket_is_a_clear_error(s3_env, lite0_ir, tmp_path):
    result = run_cli("label", "s3://no-such-bucket-here/photos", "--output", tmp_path / "o",
                     "--model-path", lite0_ir, *LITE0, env=s3_env)
    one_line_error(result, "s3://no-such-bucket-here/photos")


def test_a_store_that_is_down_is_a_clear_error_not_a_hang(lite0_ir, tmp_path):
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    result = run_cli("label", "s3://effnet-in/photos", "--output", tmp_path / "o",
                     "--model-path", lite0_ir, *LITE0, env=env, timeout=120)
    one_line_error(result, "cannot reach s3://effnet-in/photos")
    assert S3_SECRET not in result.stderr


def test_a_store_that_denies_access_is_a_clear_error(lite0_ir, tmp_path):
    proc, port = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "nobody",
               "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
        result = run_cli("label", PHOTOS, "--output", "s3://locked-bucket/out",
                         "--model-path", lite0_ir, *LITE0, env=env, timeout=120)
        one_line_error(result, "s3://locked-bucket/out")
        assert S3_SECRET not in result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_work_units_group_files_and_keep_shards_whole():
    files = [Source("files", f"s3://b/img{i:05d}.jpg") for i in range(2000)]
    units = list(work_units([*files[:1000], Source("webdataset", "a.tar"), *files[1000:]], 16))
    shards = [u for u in units if u.kind == "webdataset"]
    assert [u.uris for u in shards] == [("a.tar",)]
    sizes = [len(u.uris) for u in units if u.kind == "files"]
    assert sum(sizes) == 2000 and max(sizes) <= 32
    assert 12 <= 2000 / len(sizes) <= 20  # about unit_size on average
    assert [uri for u in units if u.kind == "files" for uri in u.uris] == \
        [s.uri for s in files]  # every file once, in listing order


def test_adding_or_removing_a_file_changes_one_unit():
    files = [Source("files", f"s3://b/img{i:05d}.jpg") for i in range(500)]
    before = {u.uid for u in work_units(files, 16)}
    added = {u.uid for u in work_units([*files[:200], Source("files", "s3://b/img00200a.jpg"),
                                        *files[200:]], 16)}
    removed = {u.uid for u in work_units(files[:300] + files[301:], 16)}
    # the unit holding the change is replaced (by two when the new file ends a unit itself)
    assert len(before - added) == 1 and len(added - before) <= 2
    assert len(before - removed) <= 2 and len(removed - before) == 1


def test_layout_can_be_forced(tmp_path):
    (tmp_path / "shard.bin").write_bytes(b"")
    (tmp_path / "photo.jpg").write_bytes(b"")
    auto = list(list_sources([str(tmp_path)]))
    assert [s.kind for s in auto] == ["files"]  # .bin is neither an image nor a shard
    forced = list(list_sources([str(tmp_path / "shard.bin")], layout="webdataset"))
    assert [(s.kind, s.uri, s.size) for s in forced] == [
        ("webdataset", str(tmp_path / "shard.bin"), 0)]
    os.remove(tmp_path / "shard.bin")


def test_http_inputs_are_read_only_sources(tmp_path, lite0_ir):
    import functools
    import http.server
    import shutil
    import threading

    site = tmp_path / "site"
    site.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(PHOTOS / name, site / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = run_cli("label", f"{base}/chelsea.jpg", f"{base}/coffee.jpg", "--output",
                         tmp_path / "out", "--model-path", lite0_ir, *LITE0)
        assert result.returncode == 0, result.stderr
        rows = {r["path"]: r for r in read_rows(tmp_path / "out")}
        assert sorted(rows) == [f"{base}/chelsea.jpg", f"{base}/coffee.jpg"]
        assert rows[f"{base}/coffee.jpg"]["class_id"] in (967, 968)
        one_line_error(run_cli("label", f"{base}/chelsea.jpg", "--output", f"{base}/out",
                               "--model-path", lite0_ir, *LITE0), "read-only")
    finally:
        server.shutdown()
        server.server_close()


def test_a_unit_fetched_concurrently_from_a_slow_store_keeps_order_and_every_row(
        s3, s3_env, monkeypatch):
    """20 objects behind 50 ms of latency a request, one deleted after listing and one
    empty: the rows come out in listing order, once each, the same as one at a time."""
    from effnet_ray.inputs import fetch
    from effnet_ray.inputs.batch import ImageBatch
    from effnet_ray.inputs.reading import read_units
    from effnet_ray.inputs.samples import ReadTask
    from effnet_ray.models.registry import get_spec
    from effnet_ray.options import ReadOptions
    from tests.helpers import FlakyProxy

    s3.mkdir("effnet-slow")
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix != ".md")
    for i in range(20):
        s3.put(str(photos[i % len(photos)]), f"effnet-slow/u/{i:02d}.jpg")
    s3.pipe("effnet-slow/u/05.jpg", b"")
    proxy = FlakyProxy(int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), delay=0.05)
    options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}",
               "key": s3_env["AWS_ACCESS_KEY_ID"], "secret": s3_env["AWS_SECRET_ACCESS_KEY"]}
    try:
        sources = list(list_sources(["s3://effnet-slow/u"], options=options))
        s3.rm("effnet-slow/u/17.jpg")  # gone between listing and reading
        task = ReadTask(ReadOptions(batch_size=8), get_spec("efficientnet-lite0"), options)
        batch = {"kind": ["files"], "uris": [[s.uri for s in sources]],
                 "sizes": [[s.size for s in sources]],
                 "versions": [[s.version for s in sources]], "uid": ["0" * 16],
                 "done": [[8]]}  # the second part is done: those objects are not fetched

        def rows():
            return [(p, e) for t in read_units(batch, task=task)
                    for p, e in zip(*(lambda b: (b.paths, b.errors))(ImageBatch.from_arrow(t)),
                                    strict=True)]

        concurrent = rows()
        monkeypatch.setattr(fetch, "FETCH_OBJECTS", 1)
        one_by_one = rows()
    finally:
        proxy.close()
    expected = [f"s3://effnet-slow/u/{i:02d}.jpg" for i in range(20) if not 8 <= i < 16]
    assert [p for p, _ in concurrent] == expected
    assert concurrent == one_by_one
    errors = dict(concurrent)
    assert errors["s3://effnet-slow/u/05.jpg"] == "empty file"
    assert "FileNotFoundError" in errors["s3://effnet-slow/u/17.jpg"]
    assert sum(e is None for e in errors.values()) == len(expected) - 2
