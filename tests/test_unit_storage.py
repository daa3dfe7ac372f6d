"""Storage: names, redaction, protocols and the sorting of errors; no Ray, no network."""

import errno
import logging
import os

import pytest
from botocore.exceptions import ClientError

from effnet_ray.errors import UserError
from effnet_ray.storage import (
    is_transient,
    local_path,
    named_errors,
    normal_uri,
    open_fs,
    printable,
    protocol_of,
    put_atomic,
    redact,
    retrying,
    write_fault,
)

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray


@pytest.mark.parametrize("uri, protocol", [
    ("/data/x.jpg", "file"), ("x::y.jpg", "file"), ("rel/a[1].jpg", "file"),
    ("s3://b/k", "s3"), ("S3://b/k", "s3"), ("file:///x", "file"), ("https://h/x", "https"),
    ("c:/x", "file"),
])
def test_protocol_is_what_precedes_the_scheme_separator(uri, protocol):
    assert protocol_of(uri) == protocol


def test_a_double_colon_name_is_a_local_file_not_a_url_chain(tmp_path):
    target = tmp_path / "x::y.jpg"
    target.write_bytes(b"abc")
    fs, path = open_fs(str(target))
    assert path == str(target) and fs.cat_file(path) == b"abc"


@pytest.mark.parametrize("name", ["file:x.jpg", "local:y.png", "a::b.jpg", "s3:not-a-uri"])
def test_a_plain_name_is_a_local_path_whatever_it_looks_like(name):
    fs, path = open_fs(name)
    assert path == os.path.join(os.getcwd(), name) and "file" in fs.protocol


@pytest.mark.parametrize("typed", ["in", "in/", "./in", "in//", "./x/../in/.", "{cwd}/in",
                                   "{cwd}/in/", "{cwd}//in", "file://{cwd}/in",
                                   "FILE://{cwd}/./in/", "file://in", "Local://{cwd}/in",
                                   "file://localhost{cwd}/in", "file://LOCALHOST{cwd}/in/"])
def test_a_local_input_is_named_by_what_it_means_not_how_it_is_typed(typed, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normal_uri(typed.format(cwd=tmp_path)) == f"{tmp_path}/in"
    assert open_fs(typed.format(cwd=tmp_path))[1] == f"{tmp_path}/in"


@pytest.mark.parametrize("typed, meant", [
    ("s3://b/p/", "s3://b/p"), ("S3://b/p", "s3://b/p"), ("s3a://b/p//", "s3://b/p"),
    ("s3://b/", "s3://b"), ("gs://b/p/", "gs://b/p"), ("GCS://b/p", "gs://b/p"),
    ("memory://x/", "memory:///x"),
    # keys are case-sensitive and may hold dots; a server may tell /p/ from /p
    ("s3://B/P/../q", "s3://B/P/../q"), ("HTTPS://h/p/", "https://h/p/"),
    ("https://user:hunter2@h/p", "https://***@h/p"),
    ("nosuch://b/p/", "nosuch://b/p/"),
])
def test_a_uri_is_named_by_its_store_and_path_not_how_it_is_typed(typed, meant):
    assert normal_uri(typed) == meant


def test_different_inputs_keep_different_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ["in", "in2", "IN", "in/sub", "in/*.jpg", "in/[ab].jpg", "/in", "s3://b/in",
             "s3://b/IN", "s3://in", "gs://b/in", "https://h/in", "https://h/in/", "in ",
             "in.", "x::in"]
    assert len({normal_uri(n) for n in names}) == len(names)


def test_a_glob_is_named_like_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normal_uri("./in/**/*.jpg") == normal_uri("in//**/*.jpg") == \
        f"{tmp_path}/in/**/*.jpg"


@pytest.mark.parametrize("typed", ["in/", "../x/in", "~/in", "s3a://b/p/", "FILE:///a/./b",
                                   "https://u:p@h/x", "weird:/no-slashes", "nosuch://b/p/"])
def test_naming_twice_changes_nothing(typed):
    assert normal_uri(normal_uri(typed)) == normal_uri(typed)


def test_symbolic_links_are_kept_in_names(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert normal_uri(f"{tmp_path}/link/") == f"{tmp_path}/link"
    # `..` is resolved as text, as the listing names files, not through the link
    assert normal_uri(f"{tmp_path}/link/../other") == f"{tmp_path}/other"


def test_open_fs_names_what_normal_uri_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for typed in ["in/", "file://{cwd}/x/../in/", "FILE://{cwd}//in"]:
        fs, path = open_fs(typed.format(cwd=tmp_path))
        assert path == f"{tmp_path}/in" == normal_uri(typed.format(cwd=tmp_path))
    fs, path = open_fs("S3://b/p/")
    assert path == "b/p" and "s3" in fs.protocol


def test_unknown_protocol_is_named_as_such():
    with pytest.raises(UserError, match=r"unknown protocol 'nosuch://'"):
        open_fs("nosuch://bucket/x")


def test_credentials_in_a_url_are_redacted():
    assert redact("https://user:hunter2@example.com/a.jpg") == "https://***@example.com/a.jpg"
    assert redact("s3://bucket/a@b.jpg") == "s3://bucket/a@b.jpg"
    assert redact("/local/a@b.jpg") == "/local/a@b.jpg"
    with pytest.raises(UserError) as caught, named_errors("https://u:hunter2@h/x"):
        raise FileNotFoundError("x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("exc, transient", [
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (OSError(errno.ECONNRESET, "reset"), True),
    (OSError(errno.EIO, "corrupt page header"), False),
    (OSError("Couldn't deserialize thrift"), False),
    (FileNotFoundError(), False),
    (ValueError("bad"), False),
    (UserError("x"), False),
])
def test_only_store_failures_that_may_pass_are_transient(exc, transient):
    assert is_transient(exc) is transient


def test_a_botocore_style_error_is_transient_by_status():
    class ClientError(Exception):
        def __init__(self, code, status):
            self.response = {"Error": {"Code": code},
                             "ResponseMetadata": {"HTTPStatusCode": status}}

    wrapped = OSError(errno.EIO, "wrapped")
    wrapped.__cause__ = ClientError("InternalError", 500)
    assert is_transient(wrapped)
    assert is_transient(ClientError("SlowDown", 503))
    assert not is_transient(ClientError("AccessDenied", 403))


def test_a_local_error_is_never_transient():
    fs, _ = open_fs("/tmp")
    assert not is_transient(ConnectionResetError(), fs)


def test_retrying_retries_transient_errors_only(monkeypatch, caplog):
    monkeypatch.setattr("effnet_ray.storage.FIRST_WAIT", 0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError()
        return "ok"

    monkeypatch.setattr("effnet_ray.storage._warned", False)
    with caplog.at_level(logging.DEBUG, logger="effnet_ray.storage"):
        assert retrying(flaky) == "ok" and len(calls) == 3
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG]  # said once, then quietly
    calls.clear()

    def broken():
        calls.append(1)
        raise ValueError("corrupt")

    with pytest.raises(ValueError):
        retrying(broken)
    assert len(calls) == 1


def test_named_errors_leaves_bugs_alone():
    with pytest.raises(KeyError), named_errors("/x"):
        raise KeyError("a bug")
    with pytest.raises(UserError, match="cannot reach /x"), named_errors("/x"):
        raise ConnectionRefusedError("refused")


def test_names_that_are_not_utf8_round_trip(tmp_path):
    raw = os.fsdecode(b"caf\xe9-\xff.jpg")
    name = printable(str(tmp_path / raw))
    name.encode("utf-8")
    assert name.startswith("file://") and local_path(name) == str(tmp_path / raw)
    assert printable("plain é.jpg") == "plain é.jpg" == local_path("plain é.jpg")
    assert printable(os.fsdecode(b"k\xff"), local=False) == "k%FF"


def test_put_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    fs, path = open_fs(str(tmp_path))
    put_atomic(fs, f"{path}/f", b"one")
    put_atomic(fs, f"{path}/f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def _client_error(code, status):
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("make, words", [
    (lambda: OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (lambda: OSError(errno.EROFS, "Read-only file system"), "read-only"),
    (lambda: PermissionError(errno.EACCES, "denied"), "permission denied"),
    (lambda: _client_error("NoSuchBucket", 404), "the bucket is gone"),
    (lambda: _client_error("AccessDenied", 403), "permission denied"),
    (lambda: _client_error("SlowDown", 503), "throttling"),
    (lambda: FileNotFoundError(errno.ENOENT, "gone"), "the folder is gone"),
])
def test_a_write_fault_is_named_in_words(make, words):
    try:
        try:
            raise make()
        except Exception as inner:  # as s3fs raises it: an OSError from the client error
            raise OSError(errno.EIO, "write failed") from inner
    except OSError as exc:
        assert words in write_fault(exc)
