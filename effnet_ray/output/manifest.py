"""`_manifest.json`: what an output's rows were made with, and each run that wrote them.

A rerun whose identity (model, IR checksum, precision, top-k, grouping, inputs...) differs
from the manifest's would mix results, and is refused before any work.
"""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Iterable
from importlib import metadata as package_metadata

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.options import LabelOptions, default, option_names
from effnet_ray.output.layout import COMPACT, MANIFEST, Part, timestamp
from effnet_ray.storage import display, named_errors, names_in, normal_uri, put_atomic

VERSIONED = ("effnet-ray", "ray", "openvino", "pyarrow", "numpy", "pillow", "fsspec")


def identity_of(options: LabelOptions, ir_sha256: str) -> dict:
    """What an output's rows are made with: the options that decide them, the inputs by what
    they name, and the IR's checksum."""
    return {**options.identity(), "inputs": input_identity(options.inputs),
            "ir_sha256": ir_sha256}


def input_identity(inputs: Iterable[str]) -> list[str]:
    """Inputs as an identity holds them: what each names (`storage.normal_uri`), once, in
    sorted order. Listing takes every file once whatever the order or repetition of the
    inputs, and a unit that another order groups differently is redone on resume (its old
    parts removed), so neither changes a row."""
    return sorted({normal_uri(i) for i in inputs})


def read_manifest(fs: AbstractFileSystem, path: str) -> dict | None:
    """The manifest, or None without one. One that is not JSON or not shaped as `start_run`
    writes it is refused: which rows may be mixed into the output depends on it."""
    where = f"{display(fs, path)}/{MANIFEST}"
    with named_errors(where):
        if not fs.exists(f"{path}/{MANIFEST}"):
            return None
        text = fs.cat_file(f"{path}/{MANIFEST}")
    try:
        manifest = json.loads(text)
        problem = _shape_problem(manifest)
    except (ValueError, RecursionError):
        problem = "not JSON"
    if problem:
        raise UserError(f"{where} is damaged ({problem}); rerun the `effnet-ray label` "
                        "command with --overwrite to start over")
    return manifest


def _shape_problem(manifest: object) -> str | None:
    """What in a manifest is not as `start_run` and `compact` write it, or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if not isinstance(manifest.get("identity"), dict):
        return "identity is not an object"
    runs = manifest.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        return "runs is not a list of objects"
    if not isinstance(manifest.get("status", ""), str):
        return "status is not text"
    if not isinstance(manifest.get("compactions", []), list):
        return "compactions is not a list"
    return None


def check_resumable(fs: AbstractFileSystem, path: str, wanted: dict) -> dict | None:
    """The manifest to continue, or None for an empty folder; refuses a mixed output."""
    where = display(fs, path)
    manifest = read_manifest(fs, path)
    if manifest is None:
        with named_errors(where):
            names = names_in(fs, path)
        parquet = sorted(n for n in names if n.endswith(".parquet"))
        foreign = [n for n in parquet if not (Part.parse(n) or COMPACT.match(n))]
        if foreign:
            raise UserError(f"output {where} holds Parquet files of another tool "
                            f"({', '.join(foreign[:3])}); choose an empty or new folder")
        if parquet:
            raise UserError(f"output {where} holds results of an earlier run without its "
                            "manifest; pass --overwrite to start over")
        return None
    identity = manifest.get("identity", {})
    # an option added since the output was made counts as its default there
    had = {k: _meaning(k, identity.get(k, _default(k))) for k in wanted}
    now = {k: _meaning(k, wanted[k]) for k in wanted}
    differ = [k for k in wanted if had[k] != now[k]]
    if differ:
        what = "; ".join(_difference(k, had[k], now[k]) for k in differ)
        raise UserError(f"output {where} holds results made differently ({what}); rerun with "
                        "the same settings to resume, or pass --overwrite to start over")
    return manifest


def _default(name: str) -> object:
    return default(name) if name in option_names() else None


def _meaning(name: str, value: object) -> object:
    """An identity entry as compared: inputs by what they name, in any order, each once (a
    manifest may hold them as typed)."""
    if name == "inputs" and isinstance(value, list):
        return input_identity(value)
    return value


def _difference(name: str, had: object, now: object) -> str:
    if name == "inputs" and isinstance(had, list) and isinstance(now, list):
        there, here = sorted(set(had) - set(now)), sorted(set(now) - set(had))
        return "inputs: " + ", ".join(
            f"{_show(side)} only {where}" for side, where in ((there, "there"), (here, "now"))
            if side)
    return f"{name}: {_show(had)} there, {_show(now)} now"


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            found[name] = None
    return found



def start_run(fs: AbstractFileSystem, path: str, manifest: dict | None, wanted: dict,
              extra: dict) -> dict:
    """Record a run's start; an earlier run still marked running was killed."""
    manifest = manifest or {"identity": wanted, "runs": []}
    for run in manifest["runs"]:
        if run.get("status") == "running":
            run["status"] = "interrupted"
    manifest["runs"].append({"started": timestamp(), "ended": None, "status": "running",
                             "host": socket.gethostname(), "versions": versions(), **extra})
    manifest["status"] = "incomplete"
    write_manifest(fs, path, manifest)
    return manifest


def end_run(fs: AbstractFileSystem, path: str, manifest: dict, status: str,
            counts: dict) -> None:
    manifest["runs"][-1].update(ended=timestamp(), status=status, **counts)
    if status == "complete":
        manifest["status"] = "complete"
    write_manifest(fs, path, manifest)


def write_manifest(fs: AbstractFileSystem, path: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    with named_errors(display(fs, path)):
        put_atomic(fs, f"{path}/{MANIFEST}", data)
