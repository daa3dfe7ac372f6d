"""Local paths and fsspec URIs (s3://, gs://, az://, abfs://, http(s)://, file://) alike.

Credentials and endpoints come from each store's own environment and config files (for S3:
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles...) plus `--storage-options`. Neither the
options nor a URI's userinfo (`https://user:password@host/...`) ever reach a message, a log
line or the output: every name shown passes through `redact`.

Errors are sorted here, in one place: `is_transient` says which failures of a store may pass
(connection refused or reset, timeouts, 5xx, throttling) and are worth retrying; everything
else, and every error of a local file, says something about the object itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError

log = logging.getLogger(__name__)

# Fail in seconds, not minutes, when a store is down: botocore's defaults retry for long.
_DEFAULTS = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                             "retries": {"max_attempts": 3, "mode": "standard"}}},
}
READ_ONLY = ("http", "https")
# Readers (pyarrow, Ray Data, Spark) skip names starting with "."; so does the resume scan.
TMP_PREFIX = ".tmp-"
LOCAL = ("file", "local")
# On top of botocore's own 3 attempts per call: rides out a blip of ~15 s.
ATTEMPTS = 5
FIRST_WAIT = 0.5
_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_TRANSIENT_ERRNO = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                    errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.ENETDOWN, getattr(errno, "EREMOTEIO", errno.EIO)}
# botocore's and aiohttp's names for a connection that failed or timed out
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ProxyConnectionError", "ClientConnectionError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError",
                    "ServerTimeoutError", "FSTimeoutError", "ResponseStreamingError"}
_THROTTLING = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout",
               "RequestLimitExceeded", "TooManyRequestsException", "ServiceUnavailable"}
T = TypeVar("T")
_warned = False


def protocol_of(uri: str) -> str:
    """The scheme before `://`; anything else is a local path. Unlike fsspec's own parsing,
    `::` is never a chain separator, so `x::y.jpg` is a file name."""
    match = _PROTOCOL.match(uri)
    return match.group(1).lower() if match else "file"


def redact(uri: str) -> str:
    """`uri` without the password or token of its userinfo."""
    if "@" not in uri or "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _lower_scheme(uri: str) -> str:
    """`uri` with its scheme in lower case: schemes are case-insensitive (RFC 3986), fsspec's
    stores know theirs in lower case only."""
    match = _PROTOCOL.match(uri)
    return match.group(1).lower() + uri[match.end(1):] if match else uri


def open_fs(uri: str, options: dict | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and the path within it; `options` apply to remote stores only. Local
    paths (plain or `file://`) come out absolute, with `.`, `..` and repeated slashes
    resolved as text, as `normal_uri` names them."""
    protocol = protocol_of(uri)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise UserError(f"{redact(uri)}: this store needs an extra package ({exc.name}); "
                        "pip install 'effnet-ray[cloud]'") from None
    except ValueError:
        raise UserError(f"{redact(uri)}: unknown protocol '{protocol}://' (known: file, s3, "
                        "gs, az, abfs, http, https...)") from None
    if not _PROTOCOL.match(uri):  # a plain local path: taken as it is, never re-parsed
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))
    uri = _lower_scheme(uri)
    local = protocol in LOCAL
    kwargs = {} if local else {**_DEFAULTS.get(protocol, {}), **(options or {})}
    try:
        fs = cls(**kwargs)
    except (ValueError, TypeError) as exc:  # the message names the option, never its value
        reason = str(exc).splitlines()[0][:120] if not options else type(exc).__name__
        raise UserError(f"{redact(uri)}: bad storage options for {protocol} ({reason})") \
            from None
    return fs, _local_path(uri) if local else fs._strip_protocol(uri)


def _local_path(uri: str) -> str:
    """The absolute path a `file://` (or `local://`) URI names. `file://localhost/p` is `/p`
    (RFC 8089); other text after `//` is a relative path, as fsspec reads it."""
    match = _PROTOCOL.match(uri)
    rest = uri[match.end():] if match else uri
    host, slash, tail = rest.partition("/")
    if host.lower() == "localhost":
        rest = slash + tail or "/"
    return os.path.abspath(fsspec.filesystem("file")._strip_protocol(f"file://{rest}"))


def normal_uri(uri: str) -> str:
    """What an input names, spelt as a run names it (the listing's names, hence the `path`
    column and the work units), without I/O: a local path, plain or `file://`, absolute with
    `~` expanded and `.`, `..`, repeated and trailing slashes resolved as text; a store's URI
    with the store's first scheme in lower case (`S3A://b/p/` is `s3://b/p`) and no trailing
    slash (an http(s) URL keeps its path: a server may tell `/p/` from `/p`); userinfo
    hidden (`redact`). Symbolic links are not followed: the rows are named through them.
    A scheme not installed here keeps its path as written."""
    if not _PROTOCOL.match(uri):
        return os.path.abspath(os.path.expanduser(uri))
    uri = _lower_scheme(uri)
    try:
        cls = fsspec.get_filesystem_class(protocol_of(uri))
    except (ImportError, ValueError):
        return redact(uri)
    names = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
    if set(names) & set(LOCAL):
        return _local_path(uri)
    path = cls._strip_protocol(uri)
    if not any(path.startswith(f"{name}://") for name in names):
        path = f"{names[0]}://{path.rstrip('/') or path}"
    return redact(path)


def protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    """fsspec gives a filesystem's protocol as a string or a tuple of aliases."""
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs: AbstractFileSystem) -> bool:
    return bool(set(LOCAL) & set(protocols(fs)))


def is_read_only(fs: AbstractFileSystem) -> bool:
    return bool(set(READ_ONLY) & set(protocols(fs)))


def display(fs: AbstractFileSystem, path: str) -> str:
    """The name a run uses: an absolute local path, or the full URI."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 8:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return True
    code, status = _status(exc)
    if code or status:
        return code in _THROTTLING or status >= 500 or status == 429
    http_status = getattr(exc, "status", None)  # aiohttp's ClientResponseError (http stores)
    if isinstance(http_status, int) and type(exc).__name__ == "ClientResponseError":
        return http_status >= 500 or http_status == 429
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO


def _status(exc: BaseException) -> tuple[str, int]:
    """(error code, HTTP status) of an object store's client error, else ("", 0)."""
    response = getattr(exc, "response", None)  # botocore's ClientError
    if not isinstance(response, dict):
        return "", 0
    return (response.get("Error", {}).get("Code", ""),
            response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def precondition_failed(exc: BaseException) -> bool:
    """Whether a conditional write (If-Match) was refused because the object changed."""
    return any(_status(e)[0] == "PreconditionFailed" or _status(e)[1] == 412
               for e in _chain(exc))


def is_transient(exc: BaseException, fs: AbstractFileSystem | None = None) -> bool:
    """Whether `exc` is a store failure that may pass. A local file's error never is: a
    symlink loop, a socket or a corrupt file stays what it is however often it is read."""
    if fs is not None and is_local(fs):
        return False
    if isinstance(exc, (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError)):
        return False
    return any(_transient_one(e) for e in _chain(exc))


# What an OSError's errno means for a place being written to.
_WRITE_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.ENOENT: "the folder is gone",
                 errno.EIO: "an input/output error of the device"}
_STORE_FAULTS = {"NoSuchBucket": "the bucket is gone", "AccessDenied": "permission denied",
                 "AllAccessDisabled": "permission denied", "InvalidAccessKeyId":
                 "the credentials are refused", "SignatureDoesNotMatch":
                 "the credentials are refused", "QuotaExceeded": "the store's quota is used up"}


def write_fault(exc: BaseException) -> str:
    """What went wrong writing to a folder or a store, in words: no space, a bucket that is
    gone, permission, throttling... else the error's own short reason. The deepest cause
    is the most precise: a client library wraps it in errors of its own."""
    for e in reversed(list(_chain(exc))):
        code, status = _status(e)
        if code in _STORE_FAULTS:
            return _STORE_FAULTS[code]
        if code in _THROTTLING or status in (429, 503):
            return f"the store is throttling requests ({code or status})"
        if isinstance(e, OSError) and e.errno in _WRITE_FAULTS:
            return _WRITE_FAULTS[e.errno]
    if any(isinstance(e, PermissionError) for e in _chain(exc)):
        return "permission denied"
    if any(isinstance(e, FileNotFoundError) for e in _chain(exc)):
        return "the folder or bucket is gone"
    if is_transient(exc):
        return f"the store did not answer ({short_reason(exc)})"
    return short_reason(exc)


def unreachable(exc: FileNotFoundError) -> BaseException | None:
    """The connection failure behind a "not found" (fsspec's http store reports a server it
    cannot reach as a missing file), or None for a file that really is missing."""
    return next((e for e in _chain(exc) if e is not exc and _transient_one(e)), None)


class Unreachable(UserError):
    """A store that did not answer, or answered with an error of its own."""


def names_in(fs: AbstractFileSystem, path: str) -> list[str]:
    """The names directly in a folder, as the store says now; none if there is no folder."""
    fs.invalidate_cache()
    if not fs.isdir(path):
        return []
    return [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]


@contextmanager
def named_errors(uri: str) -> Iterator[None]:
    """A store's failure as one line naming the URI (never its credentials). Only store
    errors are translated: anything else is a bug and keeps its traceback."""
    shown = redact(uri)
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as exc:
        cause = unreachable(exc)
        if cause is not None:
            raise Unreachable(f"cannot reach {shown}: {short_reason(cause)}") from exc
        raise UserError(f"{shown} does not exist") from None
    except PermissionError:
        raise UserError(f"access to {shown} is denied") from None
    except (IsADirectoryError, NotADirectoryError) as exc:  # the wrong kind of entry: not a fault
        where = redact(str(exc.filename)) if exc.filename else shown
        if isinstance(exc, IsADirectoryError):
            raise UserError(f"{where} is a folder where a file is expected; move it away") \
                from None
        raise UserError(f"{where}: a part of this path is a file, not a folder") from None
    except Exception as exc:
        if is_transient(exc) or _is_store_error(exc):
            raise Unreachable(f"cannot reach {shown}: {short_reason(exc)}") from exc
        raise


def _is_store_error(exc: BaseException) -> bool:
    """OSErrors and the stores' own client errors (botocore, aiohttp) that are not bugs."""
    return any(isinstance(e, OSError) or type(e).__module__.split(".")[0]
               in ("botocore", "aiobotocore", "aiohttp", "azure", "google")
               for e in _chain(exc))


def short_reason(exc: BaseException) -> str:
    text = redact(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def wait_or_raise(exc: Exception, attempt: int, fs: AbstractFileSystem | None) -> None:
    """The one retry policy: back off after a transient error, raise anything else and the
    last attempt's error."""
    global _warned
    if attempt >= ATTEMPTS - 1 or not is_transient(exc, fs):
        raise exc
    level = logging.DEBUG if _warned else logging.WARNING  # once a process, then quietly
    _warned = True
    log.log(level, "a store error that may pass, retrying: %s", short_reason(exc))
    time.sleep(FIRST_WAIT * 2**attempt * random.uniform(0.5, 1.5))


def retrying(call: Callable[[], T], fs: AbstractFileSystem | None = None) -> T:
    """`call()`, retried with exponential backoff while its errors are transient."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except Exception as exc:
            wait_or_raise(exc, attempt, fs)
    raise AssertionError("unreachable")


def printable(name: str, local: bool = True) -> str:
    """`name` as valid UTF-8, losslessly. A name that is not (local file systems allow any
    bytes; Python keeps the odd ones as surrogates) becomes a percent-encoded `file://` URI
    (RFC 8089) when `local`, else just percent-encoded; `local_path` inverts the first."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        quoted = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe="/")
        return f"file://{quoted}" if local else quoted


def local_path(name: str) -> str:
    """The inverse of `printable` for local names."""
    if name.startswith("file://"):
        return os.fsdecode(urllib.parse.unquote_to_bytes(name[len("file://"):]))
    return name


def put_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Make `path` appear whole or not at all, whatever instant the process dies.

    Local disks: write a hidden temporary file beside it, fsync, rename over. Object stores:
    one PUT (or a multipart upload) only shows the object once it is complete.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    with _temporary(Path(folder), name) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@contextmanager
def atomic_folder(dest: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside `dest` that becomes `dest` when the block ends without an
    error (replacing an older `dest` if `replace`, else leaving one another process made
    first); removed in every other case."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(dest.parent, dest.name) as tmp:
        tmp.mkdir()
        yield tmp
        if replace and dest.is_dir():
            shutil.rmtree(dest)
        if not dest.is_dir():
            os.rename(tmp, dest)


@contextmanager
def _temporary(folder: Path, name: str) -> Iterator[Path]:
    tmp = folder / f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}"
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
