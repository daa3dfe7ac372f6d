"""Local paths and fsspec URIs (s3://, gs://, az://, abfs://, http(s)://, file://) alike.

Credentials and endpoints come from each store's own environment and config files (for S3:
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles...) plus `--storage-options`. Neither the
options nor anything derived from them is ever put into a message, a log line or the output.
"""

from __future__ import annotations

import random
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import fsspec
import pyarrow.fs as pafs
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError

# Fail in seconds, not minutes, when a store is down: botocore's defaults retry for long.
_DEFAULTS = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                             "retries": {"max_attempts": 3, "mode": "standard"}}},
}
READ_ONLY = ("http", "https")
# Errors that say something about the object, not the moment: retrying cannot help.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
             UserError, tarfile.TarError, EOFError, ValueError, TypeError, UnicodeError)
# On top of botocore's own 3 attempts per call: rides out a blip of ~15 s.
ATTEMPTS = 5
FIRST_WAIT = 0.5
T = TypeVar("T")


def open_fs(uri: str, options: dict | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and the path within it; `options` apply to remote stores only."""
    protocol = fsspec.utils.get_protocol(uri)
    kwargs = {} if protocol in ("file", "local") else {**_DEFAULTS.get(protocol, {}),
                                                        **(options or {})}
    try:
        return fsspec.core.url_to_fs(uri, **kwargs)
    except ImportError as exc:
        raise UserError(f"{uri}: this store needs an extra package ({exc.name}); "
                        "pip install 'effnet-ray[cloud]'") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{uri}: bad storage options ({type(exc).__name__})") from None


def protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    """fsspec gives a filesystem's protocol as a string or a tuple of aliases."""
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs: AbstractFileSystem) -> bool:
    return bool({"file", "local"} & set(protocols(fs)))


def is_read_only(fs: AbstractFileSystem) -> bool:
    return bool(set(READ_ONLY) & set(protocols(fs)))


def display(fs: AbstractFileSystem, path: str) -> str:
    """The name users see: an absolute local path, or the full URI."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@contextmanager
def named_errors(uri: str) -> Iterator[None]:
    """Turn a store's failure into one line naming the URI (never its credentials)."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{uri} does not exist") from None
    except PermissionError:
        raise UserError(f"access to {uri} is denied") from None
    except Exception as exc:  # stores raise anything from OSError to botocore errors
        raise UserError(f"cannot reach {uri}: {short_reason(exc)}") from None


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def pyarrow_fs(fs: AbstractFileSystem) -> pafs.FileSystem | None:
    """For pyarrow and Ray Data; None (their native local I/O) for local paths."""
    return None if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def backoff(attempt: int) -> None:
    time.sleep(FIRST_WAIT * 2**attempt * random.uniform(0.5, 1.5))


def retrying(call: Callable[[], T]) -> T:
    """`call()`, retried with exponential backoff while its errors look transient."""
    for attempt in range(ATTEMPTS - 1):
        try:
            return call()
        except PERMANENT:
            raise
        except Exception:  # stores raise anything from OSError to botocore errors
            backoff(attempt)
    return call()
