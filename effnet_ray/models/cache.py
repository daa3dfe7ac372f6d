"""The per-machine model cache: prepared IRs, INT8 IRs beside them, IRs fetched from object
stores (once per machine, verified by checksum) and OpenVINO's compiled blobs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.models.ir import ir_sha256
from effnet_ray.storage import (
    TMP_PREFIX,
    atomic_folder,
    display,
    is_local,
    named_errors,
    open_fs,
    redact,
    retrying,
)


def default_cache_dir() -> Path:
    """$EFFNET_RAY_CACHE, else $XDG_CACHE_HOME/effnet-ray, else ~/.cache/effnet-ray."""
    if os.environ.get("EFFNET_RAY_CACHE"):
        return Path(os.environ["EFFNET_RAY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "effnet-ray"


def prepared_path(cache: Path, name: str, random_seed: int | None = None) -> Path:
    folder = name if random_seed is None else f"{name}-random-seed{random_seed}"
    return cache / "models" / folder / "model.xml"


def int8_path(source: Path) -> Path:
    """Where `models quantize` puts the INT8 IR of a prepared model: a folder beside it."""
    return source.parent.with_name(source.parent.name + "-int8") / "model.xml"


def local_ir(model_path: str, cache: Path, storage_options: dict | None = None,
             expected_sha256: str | None = None) -> Path:
    """A local, checksum-verified copy of the IR at `model_path` (a path or a store URI).

    An IR on an object store is fetched once per machine into `cache/fetched/<sha256>/`,
    under a lock and complete before it gets that name; a local path is used in place. With
    `expected_sha256` (the driver's), a node whose copy differs is refused instead of
    labelling with another model.
    """
    fs, path = open_fs(model_path, storage_options)
    if is_local(fs):
        local = Path(path)
        if expected_sha256 and ir_sha256(local) != expected_sha256:
            raise UserError(f"model file {local} on this node differs from the one the run "
                            "was started with (sha256); use an object-store URI for the IR")
        return local
    if not path.endswith(".xml"):
        raise UserError(f"model file {model_path} is not an OpenVINO IR (.xml)")
    fetched = cache / "fetched"
    # one fetch per machine: actors starting together wait for the first one's copy
    with one_at_a_time(fetched):
        if expected_sha256 and (fetched / expected_sha256 / "model.xml").is_file():
            return fetched / expected_sha256 / "model.xml"
        return _fetch(fs, path, model_path, fetched, expected_sha256)


@contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """Processes of one machine that write into `folder` take turns (actors starting
    together on a node)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fetch(fs: AbstractFileSystem, path: str, model_path: str, fetched: Path,
           expected_sha256: str | None) -> Path:
    with TemporaryDirectory(prefix=TMP_PREFIX, dir=fetched) as tmp:
        with named_errors(display(fs, path)):
            for source, name in ((path, "model.xml"), (path[:-4] + ".bin", "model.bin")):
                retrying(partial(fs.get_file, source, f"{tmp}/{name}"), fs)
        digest = ir_sha256(f"{tmp}/model.xml")
        if expected_sha256 and digest != expected_sha256:
            raise UserError(f"model file {redact(model_path)} changed since the run started "
                            "(sha256)")
        with atomic_folder(fetched / digest) as dest:
            for name in ("model.xml", "model.bin"):
                os.rename(f"{tmp}/{name}", dest / name)
    return fetched / digest / "model.xml"
