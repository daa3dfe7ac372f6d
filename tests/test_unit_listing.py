"""Listing: special files, link loops, odd names, the output folder passed over, and unit
ids that follow the files' content; no Ray."""

import os
import socket

import pytest

from effnet_ray.errors import UserError
from effnet_ray.inputs.listing import Source, list_sources, suffix, work_units

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\0" * 20


def listed(*inputs, **kw):
    return [(s.kind, s.uri) for s in list_sources([str(i) for i in inputs], **kw)]


def test_links_to_folders_are_followed_once_and_loops_end(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes(JPEG_HEAD)
    os.symlink(real, tmp_path / "linked")
    os.symlink(tmp_path, real / "up")  # a loop back to the top
    found = listed(tmp_path)
    assert found == [("files", str(real / "a.jpg"))] or found == [
        ("files", str(tmp_path / "linked" / "a.jpg"))]


def test_special_files_are_listed_by_extension_but_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe-without-extension")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    (tmp_path / "noext").write_bytes(JPEG_HEAD)
    assert listed(tmp_path) == [("files", str(tmp_path / "noext")),
                                ("files", str(tmp_path / "pipe.jpg"))]
    sock.close()


@pytest.mark.parametrize("name", ["x::y.jpg", "photo[1].jpg", "star*.jpg", "what?.jpg"])
def test_a_name_with_special_characters_is_taken_literally(tmp_path, name):
    (tmp_path / name).write_bytes(JPEG_HEAD)
    (tmp_path / "other1.jpg").write_bytes(JPEG_HEAD)
    assert listed(tmp_path / name) == [("files", str(tmp_path / name))]


def test_globs_still_work_and_a_pattern_matching_nothing_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEG_HEAD)
    (tmp_path / "b.png").write_bytes(JPEG_HEAD)
    assert listed(f"{tmp_path}/*.jpg") == [("files", str(tmp_path / "a.jpg"))]
    with pytest.raises(UserError, match="matches nothing"):
        listed(f"{tmp_path}/*.gif")
    with pytest.raises(UserError, match="does not exist"):
        listed(tmp_path / "nope")


def test_the_output_inside_an_input_is_not_listed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEG_HEAD)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-x.parquet").write_bytes(b"PAR1")
    (tmp_path / "out" / "b.jpg").write_bytes(JPEG_HEAD)
    assert listed(tmp_path, exclude=str(tmp_path / "out")) == [
        ("files", str(tmp_path / "a.jpg"))]


def test_shard_suffixes(tmp_path):
    assert suffix("a/b.TAR.GZ") == ".tar.gz" and suffix("b.tgz") == ".tgz"
    for name in ("a.tar", "b.tgz", "c.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.parquet").write_bytes(b"")
    assert [k for k, _ in listed(tmp_path)] == ["webdataset"] * 3 + ["parquet"]


def test_names_that_are_not_utf8_are_listed(tmp_path):
    raw = os.fsencode(tmp_path) + b"/\xff\xfe.jpg"
    with open(raw, "wb") as f:
        f.write(JPEG_HEAD)
    (units,) = list(work_units(list_sources([str(tmp_path)]), 4))
    assert units.uris == (os.fsdecode(raw),)


def test_a_replaced_file_changes_its_unit_and_only_its_unit(tmp_path):
    for i in range(40):
        (tmp_path / f"{i:02d}.jpg").write_bytes(JPEG_HEAD)
    before = list(work_units(list_sources([str(tmp_path)]), 4))
    os.utime(tmp_path / "17.jpg", ns=(1, 1))
    after = list(work_units(list_sources([str(tmp_path)]), 4))
    changed = {u.uid for u in before} ^ {u.uid for u in after}
    assert len(changed) == 2  # the old unit and the new one
    assert [u.uris for u in before] == [u.uris for u in after]


def test_units_keep_shards_whole():
    sources = [Source("files", f"/f{i}.jpg") for i in range(10)] + \
        [Source("webdataset", "/s.tar")]
    units = list(work_units(sources, 3))
    assert units[-1].kind == "webdataset" and units[-1].uris == ("/s.tar",)
    assert sum(len(u.uris) for u in units) == 11
    assert all(len(u.uris) <= 6 for u in units)
