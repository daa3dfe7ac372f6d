"""The files of `configs/`: where they are, and reading their TOML tables with every fault
named by file and key."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from effnet_ray.errors import UserError


def configs_dir() -> Path:
    """The configs folder: inside the installed wheel, or at the top of a source checkout."""
    packaged = Path(str(resources.files("effnet_ray"))) / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def take(table: dict, key: str, kind: type | tuple[type, ...], where: str) -> object:
    if key not in table:
        raise UserError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def no_extra(table: dict, allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise UserError(f"{where}: unknown keys {sorted(extra)}")


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
