"""The sample boundary, attacked: hostile files, special files, odd names, hostile tar and
Parquet shards. Each item becomes exactly one row (a reason where it cannot be labelled), no
exception escapes, nothing blocks. Runs the decoding stage's own function without Ray."""

import bz2
import gzip
import http.server
import io
import lzma
import os
import socket
import struct
import tarfile
import threading
import time
import tracemalloc
import uuid
import zlib
from pathlib import Path

import fsspec
import fsspec.implementations.local
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from effnet_ray.errors import UserError
from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.inputs.fetch import read_local
from effnet_ray.inputs.parquet import read_footers
from effnet_ray.inputs.reading import read_units
from effnet_ray.inputs.samples import ImageError, ReadTask
from effnet_ray.inputs.webdataset import tar_samples
from effnet_ray.models.registry import PHOTOS, get_spec
from effnet_ray.options import MAX_BYTES, ReadOptions
from effnet_ray.output.rows import reason_kind
from effnet_ray.storage import printable

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

JPEG = (PHOTOS / "coffee.jpg").read_bytes()
SPEC = get_spec("efficientnet-lite0")


def task(**read):
    return ReadTask(ReadOptions(**{"batch_size": 4, **read}), SPEC)


def read(kind, uris, done=(), **options):
    """(path, error) per row, in order, as the decoding stage makes them."""
    batch = {"kind": [kind], "uris": [[printable(str(u)) for u in uris]],
             "sizes": [[-1] * len(uris)], "versions": [[""] * len(uris)],
             "uid": ["0" * 16], "done": [list(done)]}
    rows = []
    for table in read_units(batch, task=task(**options)):
        b = ImageBatch.from_arrow(table)
        assert len(b.images) == sum(e is None for e in b.errors)
        assert b.images.shape[1:] == (224, 224, 3)
        rows += list(zip(b.paths, b.errors, strict=True))
    return rows


def png(width, height, mode="L"):
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


def png_header_claiming(width, height):
    """A valid 1x1 PNG whose header claims another size."""
    data = png(1, 1)
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


# --- image files -------------------------------------------------------------------------

def test_special_files_are_rows_and_never_block(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "socket.jpg"))
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.symlink(tmp_path / "gone", tmp_path / "dangling.jpg")
    names = ["fifo.jpg", "socket.jpg", "loop.jpg", "zero.jpg", "dangling.jpg"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        rows=read("files", [tmp_path / n for n in names])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a special file blocked"
    reasons = dict(zip(names, (e for _, e in result["rows"]), strict=True))
    assert "a FIFO" in reasons["fifo.jpg"]
    assert "not a regular file" in reasons["socket.jpg"]
    assert "symbolic link loop" in reasons["loop.jpg"]
    assert "a character device" in reasons["zero.jpg"]
    assert "FileNotFoundError" in reasons["dangling.jpg"]
    sock.close()


def test_byte_limit_is_checked_before_and_while_reading(tmp_path):
    (tmp_path / "big.jpg").write_bytes(JPEG)
    (tmp_path / "sparse.tiff").touch()
    os.truncate(tmp_path / "sparse.tiff", 5 * 2**30)  # 5 GiB that cost nothing on disk
    rows = read("files", [tmp_path / "big.jpg", tmp_path / "sparse.tiff"],
                max_bytes=len(JPEG) - 1)
    assert all("larger than --max-bytes" in e for _, e in rows)
    assert read("files", [tmp_path / "big.jpg"], max_bytes=len(JPEG)) == \
        [(str(tmp_path / "big.jpg"), None)]


def test_a_file_larger_than_its_size_says_is_read_whole_and_still_bounded():
    # /proc files are regular files that report a size of 0 and then give their content
    status = Path("/proc/self/status")
    assert os.stat(status).st_size == 0
    assert read_local(str(status), 2**20).startswith(b"Name:")
    with pytest.raises(ImageError, match="larger than --max-bytes"):
        read_local(str(status), 16)


def test_reading_a_photo_allocates_its_size_not_the_limit(tmp_path):
    # Python allocates what a read asks for: 128 MiB per photo, mapped and unmapped, cost
    # every core of an actor that decodes a TLB shootdown.
    (tmp_path / "photo.jpg").write_bytes(JPEG)
    tracemalloc.start()
    try:
        assert read_local(str(tmp_path / "photo.jpg"), MAX_BYTES) == JPEG
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(JPEG) + 65536


@pytest.fixture
def trickling_server():
    """An http server that sends each body in 4 KiB pieces, 5 ms apart, without a length."""
    class Trickle(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_GET(self):
            body = JPEG * (3 if self.path.startswith("/big") else 1)
            self.send_response(200)
            self.end_headers()
            try:
                for start in range(0, len(body), 4096):
                    self.wfile.write(body[start:start + 4096])
                    self.wfile.flush()
                    time.sleep(0.005)
            except OSError:  # the reader stopped at its limit
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_body_that_arrives_in_pieces_is_read_whole_and_still_bounded(trickling_server):
    # a stream's read gives what has arrived so far: the first piece alone was labelled
    # "undecodable" before
    rows = read("files", [f"{trickling_server}/a.jpg", f"{trickling_server}/big.jpg"],
                max_bytes=2 * len(JPEG))
    assert rows[0] == (f"{trickling_server}/a.jpg", None)
    assert "larger than --max-bytes" in rows[1][1]


@pytest.mark.parametrize("data, reason", [
    (png(1, 8000), "too many pixels after resizing 1x8000 to 256x2048000"),
    (png(10_000_000, 1), "too many pixels after resizing"),
    (png_header_claiming(100_000, 100_000), "too many pixels"),
    (png_header_claiming(20_000, 20_000), "too many pixels"),  # over Pillow's hard limit
    (b"", "empty file"),
    (b"hello" * 100, "not a recognised image format"),
    (JPEG[: len(JPEG) // 3], "undecodable"),
    (png(300, 200, "I;16"), None),
], ids=["1x8000", "10000000x1", "bomb", "over-pillow-limit", "empty", "text", "truncated",
        "16-bit"])
def test_hostile_images_become_rows(tmp_path, data, reason):
    (tmp_path / "x.png").write_bytes(data)
    ((path, error),) = read("files", [tmp_path / "x.png"])
    assert path == str(tmp_path / "x.png")
    if reason is None:
        assert error is None
    else:
        assert reason in error


def test_names_that_are_not_utf8_are_read_and_kept_losslessly(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff.jpg"
    with open(raw, "wb") as f:
        f.write(JPEG)
    ((path, error),) = read("files", [os.fsdecode(raw)])
    assert error is None
    from urllib.parse import unquote_to_bytes

    assert path.startswith("file://") and unquote_to_bytes(path[7:]) == raw


def test_a_file_gone_since_listing_is_a_row(tmp_path):
    ((_, error),) = read("files", [tmp_path / "never.jpg"])
    assert "unreadable object" in error and "FileNotFoundError" in error


# --- WebDataset shards -------------------------------------------------------------------

def tar_bytes(members, mode="w"):
    """members: (name, bytes | ('sym'|'hard'|'fifo', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for name, value in members:
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                kind, target = value
                info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                             "fifo": tarfile.FIFOTYPE}[kind]
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def shard(tmp_path, members, name="s.tar", mode="w"):
    path = tmp_path / name
    path.write_bytes(tar_bytes(members, mode))
    return path


def test_links_in_a_shard_resolve_to_their_targets(tmp_path):
    path = shard(tmp_path, [
        ("a.jpg", JPEG), ("a.cls", b"967"),
        ("b.jpg", ("hard", "a.jpg")), ("b.cls", b"967"),
        ("dir/c.jpg", ("sym", "../a.jpg")),
        ("d.jpg", ("sym", "missing.jpg")),
        ("e.jpg", ("sym", "f.jpg")), ("f.jpg", ("sym", "e.jpg")),
        ("g.jpg", ("sym", "h.jpg")), ("h.jpg", JPEG),  # a link to a later member
    ])
    rows = dict(read("webdataset", [path]))
    s = f"{path}::"
    assert set(rows) == {s + k for k in ("a", "b", "dir/c", "d", "e", "f", "g", "h")}
    assert rows[s + "a"] is None and rows[s + "b"] is None and rows[s + "dir/c"] is None
    assert rows[s + "g"] is None and rows[s + "h"] is None
    assert "no regular member missing.jpg" in rows[s + "d"]
    assert "link loop" in rows[s + "e"] and "link loop" in rows[s + "f"]


def test_duplicate_keys_and_names_give_one_row_each_with_unique_paths(tmp_path):
    path = shard(tmp_path, [("a.jpg", JPEG), ("b.jpg", JPEG), ("a.jpg", JPEG),
                            ("a.jpg", b"junk"), ("a.png", JPEG)])
    rows = read("webdataset", [path])
    s = f"{path}::"
    assert [p for p, _ in rows] == [s + "a", s + "b", s + "a#2", s + "a#3"]
    assert [e is None for _, e in rows] == [True, True, True, False]


def test_odd_members_become_rows(tmp_path):
    raw = os.fsdecode(b"k\xff")
    path = shard(tmp_path, [(f"{raw}.jpg", JPEG), ("p.jpg", ("fifo", "")),
                            ("big.jpg", JPEG + b"x" * 100), ("x::y.jpg", JPEG)])
    rows = dict(read("webdataset", [path], max_bytes=len(JPEG)))
    s = f"{path}::"
    assert rows[s + "k%FF"] is None and rows[s + "x::y"] is None
    assert "not a regular file" in rows[s + "p"]
    assert "larger than --max-bytes" in rows[s + "big"]


def keys(rows):
    return [(p.rsplit("::", 1)[-1], e) for p, e in rows]


def test_compressed_shards_read_like_plain_ones(tmp_path):
    members = [("a.jpg", JPEG), ("a.cls", b"1"), ("b.jpg", JPEG)]
    plain = read("webdataset", [shard(tmp_path, members)])
    # compression is found by content, not by name, as tarfile's "r|*" finds it
    for name, mode in [("s.tgz", "w:gz"), ("s.tar.gz", "w:gz"), ("gz.tar", "w:gz"),
                       ("bz.tar", "w:bz2"), ("xz.tar", "w:xz")]:
        assert keys(read("webdataset", [shard(tmp_path, members, name, mode)])) == keys(plain)


class Trickle(io.RawIOBase):
    """A stream that gives at most `step` bytes a read, as a socket may."""

    def __init__(self, data, step):
        self.data, self.step = data, step

    def readable(self):
        return True

    def read(self, size=-1):
        size = self.step if size < 0 else min(size, self.step)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_a_shard_that_arrives_a_few_bytes_a_read_is_read_whole(tmp_path, monkeypatch, mode):
    path = shard(tmp_path, [("a.jpg", JPEG), ("b.jpg", JPEG)], mode=mode)
    real_open = fsspec.implementations.local.LocalFileSystem.open
    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "open",
                        lambda self, p, mode="rb", **kw: Trickle(Path(p).read_bytes(), 2)
                        if p == str(path) else real_open(self, p, mode, **kw))
    assert keys(read("webdataset", [path])) == [("a", None), ("b", None)]


def test_gzip_members_and_bytes_after_the_last_are_read_as_gzip_d_reads_them(tmp_path):
    members = [("a.jpg", JPEG), ("b.jpg", JPEG), ("c.jpg", JPEG)]
    data = tar_bytes(members)
    plain = keys(read("webdataset", [shard(tmp_path, members)]))
    half = len(data) // 2
    members_twice = gzip.compress(data[:half]) + gzip.compress(data[half:])
    for name, packed in [("members.tgz", members_twice),
                         ("zeros.tgz", gzip.compress(data) + bytes(4096)),
                         ("junk.tgz", gzip.compress(data) + b"trailing junk" * 100)]:
        (tmp_path / name).write_bytes(packed)
        assert keys(read("webdataset", [tmp_path / name])) == plain, name


OPENERS = {"gzip": lambda path: gzip.open(path, "wb", compresslevel=9),
           "bzip2": lambda path: bz2.open(path, "wb"),
           "xz": lambda path: lzma.open(path, "wb", preset=1),
           "plain": lambda path: open(path, "wb")}


def packed_shard(path, members, packing="gzip"):
    """A tar shard written as a stream through `packing`; members: (name, bytes, or the
    number of zero bytes it holds)."""
    with OPENERS[packing](path) as packed, open("/dev/zero", "rb") as zeros, \
            tarfile.open(fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, value in members:
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
                tar.addfile(info)
                continue
            info.size = value if isinstance(value, int) else len(value)
            tar.addfile(info, zeros if isinstance(value, int) else io.BytesIO(value))
    return path


@pytest.mark.parametrize("packing", ["gzip", "bzip2", "xz"])
def test_a_member_that_inflates_hugely_is_skipped_in_bounded_memory(tmp_path, packing):
    """64 MiB of zeros pack into kilobytes (gzip) or bytes (bzip2). tarfile's own "r|*"
    inflates each 10 KiB read at once, unbounded (~10 MiB a read for gzip, the whole member
    for bzip2) and copies that buffer on every read, which made skipping such a member take
    time quadratic in it; the sample after it waited. Memory bounded per read means time
    linear in the member, at decompression speed."""
    path = packed_shard(tmp_path / "bomb.tar", [("zeros.jpg", 64 * 2**20),
                                                ("photo.jpg", JPEG)], packing)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        samples = list(tar_samples(str(path), None, "", task(max_bytes=len(JPEG)),
                                   lambda i: False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(s.path.rsplit("::")[1], s.data == JPEG) for s in samples] == \
        [("zeros", False), ("photo", True)]
    assert "larger than --max-bytes" in samples[0].error and samples[1].error is None
    assert peak < 2 * 2**20


@pytest.mark.parametrize("packing", ["gzip", "plain"])
def test_a_shard_past_max_shard_bytes_ends_with_a_row_for_the_rest(tmp_path, packing):
    members = [("a.jpg", JPEG), ("l.jpg", ("sym", "a.jpg")), ("zeros.jpg", 2**20),
               ("b.jpg", JPEG)]
    path = packed_shard(tmp_path / "s.tar", members, packing)
    rows = read("webdataset", [path], max_shard_bytes=2**19)
    s = f"{path}::"
    assert [p for p, _ in rows] == [s + "a", s + "zeros", s + "l", str(path)]
    assert rows[0][1] is None
    assert rows[2][1].startswith("link target not read: larger than --max-shard-bytes")
    assert rows[3][1] == (f"larger than --max-shard-bytes after zeros (more than {2**19} bytes "
                          "of tar stream; the rest is not read)")
    # the bound counts the tar stream, after decompression: the whole shard passes under a
    # larger one
    whole = dict(read("webdataset", [path], max_shard_bytes=2**21))
    assert set(whole) == {s + k for k in ("a", "l", "zeros", "b")}
    assert whole[s + "zeros"] == "not a recognised image format"


def test_a_broken_shard_keeps_what_it_read_and_adds_a_shard_row(tmp_path):
    data = tar_bytes([("a.jpg", JPEG), ("b.jpg", JPEG), ("c.jpg", JPEG)])
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 1000)
    (tmp_path / "gz.tgz").write_bytes(b"\x1f\x8b\x08\x00 not gzip")
    rows = read("webdataset", [tmp_path / "t.tar"])
    assert rows[0] == (f"{tmp_path}/t.tar::a", None)
    assert rows[-1][0] == f"{tmp_path}/t.tar" and "unreadable shard after" in rows[-1][1]
    for bad in ("junk.tar", "gz.tgz"):
        rows = read("webdataset", [tmp_path / bad])
        assert rows[-1][0] == str(tmp_path / bad) and "unreadable shard" in rows[-1][1]


def test_a_fifo_named_like_a_shard_is_a_row(tmp_path):
    os.mkfifo(tmp_path / "f.tar")
    ((path, error),) = read("webdataset", [tmp_path / "f.tar"])
    assert path == str(tmp_path / "f.tar") and "not a regular file" in error


def test_resumed_shard_reads_give_the_same_paths(tmp_path):
    path = shard(tmp_path, [(f"{k}.jpg", JPEG) for k in "abcabcab"]
                 + [("z.jpg", ("sym", "a.jpg"))])
    full = read("webdataset", [path])
    resumed = read("webdataset", [path], done=[0])
    assert resumed == full[4:]


# --- Parquet shards ----------------------------------------------------------------------

def parquet(tmp_path, table, name="p.parquet", **kw):
    path = tmp_path / name
    pq.write_table(table, path, **kw)
    return path


def test_duplicate_and_null_ids_give_unique_paths(tmp_path):
    path = parquet(tmp_path, pa.table({"image": [JPEG] * 5, "id": ["x", "x", None, "3", "x"]}),
                   row_group_size=2)
    rows = read("parquet", [path])
    s = f"{path}::"
    assert [p for p, _ in rows] == [s + "x", s + "x#2", s + "2", s + "3", s + "x#3"]
    assert read("parquet", [path], done=[0]) == rows[4:]


def test_a_string_image_column_is_an_argument_error(tmp_path):
    path = parquet(tmp_path, pa.table({"image": ["not bytes"], "id": [1]}))
    with pytest.raises(UserError, match="holds string, not image bytes"):
        read_footers([str(path)], "image", None)
    ((_, error),) = read("parquet", [path])
    assert "holds string" in error


def test_the_column_check_passes_over_a_corrupt_first_shard(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 garbage")
    good = parquet(tmp_path, pa.table({"image": [JPEG]}), name="b.parquet")
    assert read_footers([str(tmp_path / "a.parquet"), str(good)], "image", None) == {
        str(tmp_path / "a.parquet"): None, str(good): 1}
    with pytest.raises(UserError, match="no image column 'jpg'"):
        read_footers([str(tmp_path / "a.parquet"), str(good)], "jpg", None)


def test_a_corrupt_page_is_a_shard_row_not_a_crash(tmp_path):
    path = parquet(tmp_path, pa.table({"image": [JPEG] * 4, "id": list(range(4))}),
                   row_group_size=2)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    rows = read("parquet", [path])
    assert rows[-1][0] == str(path) and "unreadable Parquet shard" in rows[-1][1]


def test_oversized_and_missing_values_are_rows(tmp_path):
    path = parquet(tmp_path, pa.table({"image": [JPEG, None, JPEG + b"x"]}))
    rows = read("parquet", [path], max_bytes=len(JPEG))
    assert [e for _, e in rows][0] is None
    assert "no image bytes" in rows[1][1] and "larger than --max-bytes" in rows[2][1]


@pytest.mark.parametrize("hugging_face", [False, True])
def test_a_value_over_max_bytes_is_never_copied_out_of_arrow(tmp_path, hugging_face):
    """Python's heap (where `bytes` live; Arrow's pool is not traced) stays far below the
    64 MiB value: only its length is read."""
    big = b"\xff" * (64 << 20)
    values = [{"bytes": big, "path": None}, {"bytes": JPEG, "path": None}] if hugging_face \
        else [big, JPEG]
    path = parquet(tmp_path, pa.table({"image": pa.array(values, HF_IMAGE if hugging_face
                                                          else pa.binary())}))
    del big, values
    tracemalloc.start()
    try:
        rows = read("parquet", [path], max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows[0][1] == f"larger than --max-bytes ({64 << 20} > {1 << 20} bytes)"
    assert rows[1][1] is None
    assert peak < 16 << 20


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_shard(path, images):
    """A Parquet shard of Hugging Face image structs ({"bytes", "path"} or None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, HF_IMAGE)}), path)
    return path


def test_an_image_referenced_beside_the_shard_is_read(tmp_path):
    (tmp_path / "d" / "imgs").mkdir(parents=True)
    (tmp_path / "d" / "imgs" / "a.jpg").write_bytes(JPEG)
    path = hf_shard(tmp_path / "d" / "p.parquet", [
        {"bytes": None, "path": "imgs/a.jpg"}, {"bytes": None, "path": "./imgs/../imgs/a.jpg"},
        {"bytes": JPEG, "path": "held/bytes/win.jpg"}, {"bytes": None, "path": None},
        {"bytes": None, "path": ""}, None])
    assert [e for _, e in read("parquet", [path])] == \
        [None, None, None] + ["no image bytes in this row"] * 3


def test_an_image_referenced_beside_a_shard_on_a_store_is_read_from_that_store():
    fs = fsspec.filesystem("memory")
    folder = f"/refs-{uuid.uuid4().hex}"
    fs.pipe_file(f"{folder}/imgs/a.jpg", JPEG)
    fs.pipe_file("/secret.jpg", JPEG)
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(
        [{"bytes": None, "path": "imgs/a.jpg"}, {"bytes": None, "path": "../secret.jpg"}],
        HF_IMAGE)}), buf)
    fs.pipe_file(f"{folder}/p.parquet", buf.getvalue())
    try:
        (_, ok), (_, outside) = read("parquet", [f"memory://{folder}/p.parquet"])
    finally:
        fs.rm(folder, recursive=True)
        fs.rm_file("/secret.jpg")
    assert ok is None and "only a reference outside the shard's folder" in outside


@pytest.mark.parametrize("reference", [
    "{tmp}/secret.jpg", "../secret.jpg", "imgs/../../secret.jpg", "./../secret.jpg",
    "file://{tmp}/secret.jpg", "https://example.com/secret.jpg", "s3://b/secret.jpg",
    "/etc/shadow", "..", ".", "//etc/shadow"])
def test_an_image_referenced_outside_the_shard_folder_is_not_read(tmp_path, reference):
    (tmp_path / "secret.jpg").write_bytes(JPEG)  # labelled if it were followed
    reference = reference.format(tmp=tmp_path)
    path = hf_shard(tmp_path / "d" / "p.parquet", [{"bytes": None, "path": reference}])
    ((_, error),) = read("parquet", [path])
    assert error == ("no image bytes in this row, only a reference outside the shard's "
                     f"folder ({reference}; only paths inside it are read)")


def test_a_referenced_file_is_bounded_like_any_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "big.jpg").write_bytes(JPEG + b"x")
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    (folder / "sub").mkdir()
    path = hf_shard(folder / "p.parquet", [
        {"bytes": None, "path": name} for name in (
            "big.jpg", "fifo.jpg", "zero.jpg", "gone\n.jpg", "sub/", "nul\0.jpg",
            "https://u:hunter2@h/x.jpg")])
    errors = [e for _, e in read("parquet", [path], max_bytes=len(JPEG))]
    assert [reason_kind(e) for e in errors] == \
        ["no image bytes in this row, only a reference that could not be read"] * 6 \
        + ["no image bytes in this row, only a reference outside the shard's folder"]
    assert "big.jpg: larger than --max-bytes" in errors[0]
    assert "fifo.jpg: not a regular file (a FIFO)" in errors[1]
    assert "zero.jpg: not a regular file (a character device)" in errors[2]
    assert "gone\\n.jpg: unreadable object (FileNotFoundError" in errors[3]
    assert "sub/: not a regular file (a folder)" in errors[4]
    assert "nul\\x00.jpg: unreadable object (ValueError" in errors[5]
    assert not any("\n" in e or "\0" in e for e in errors)
    assert "hunter2" not in errors[6] and "https://***@h/x.jpg" in errors[6]


@pytest.mark.parametrize("referenced", [False, True])
def test_a_parquet_shard_past_max_shard_bytes_ends_with_a_row_for_the_rest(tmp_path,
                                                                           referenced):
    # one file referenced by every row costs a read each time: the bound counts them all
    (tmp_path / "a.jpg").write_bytes(JPEG)
    image = {"bytes": None, "path": "a.jpg"} if referenced else {"bytes": JPEG, "path": None}
    path = hf_shard(tmp_path / "p.parquet", [image] * 6)
    rows = read("parquet", [path], max_shard_bytes=2 * len(JPEG) + 1)
    assert [p for p, _ in rows] == [f"{path}::{i}" for i in range(3)] + [str(path)]
    assert [e for _, e in rows[:3]] == [None] * 3
    assert rows[3][1] == (f"larger than --max-shard-bytes after row 2 (more than "
                          f"{2 * len(JPEG) + 1} bytes of images, held or referenced; the rest "
                          "is not read)")


def test_batches_follow_the_batch_size(tmp_path):
    path = parquet(tmp_path, pa.table({"image": [JPEG] * 9}))
    batch = {"kind": ["parquet"], "uris": [[str(path)]], "sizes": [[-1]], "versions": [[""]],
             "uid": ["0" * 16], "done": [[]]}
    firsts = [(b.first, b.rows, b.last) for b in (ImageBatch.from_arrow(t) for t in
                                                   read_units(batch, task=task()))]
    assert firsts == [(0, 4, False), (4, 4, False), (8, 1, True)]
