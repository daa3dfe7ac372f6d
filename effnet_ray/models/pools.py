"""Pool profiles (`configs/pools/*.toml`) and the arithmetic of fitting actors onto nodes.

A profile is a named set of `label` options for one cluster layout (CPU-only nodes; CPU nodes
for decoding plus Intel GPU nodes for inference...), selected with `--pool NAME`; options
given on the command line win over the profile. `actors = "auto"` sizes the pool from the
cluster Ray reports when the run starts (`cluster.pool_size`). Nothing here talks to Ray.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from effnet_ray.errors import UserError
from effnet_ray.models.configs import configs_dir, no_extra, read_toml, take

_NUMBER = (int, float)
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "device": str, "actors": (int, str), "actor_cpus": _NUMBER, "threads": int,
    "actor_gpus": _NUMBER, "actor_resources": dict, "actor_labels": dict,
    "reader_resources": dict, "reader_labels": dict,
}


def parse_pool(data: dict, where: str) -> dict:
    no_extra(data, {"description", *_FIELDS}, where)
    take(data, "description", str, where)
    # each value has its field's kind (`take` checked it), so Any rather than object
    options: dict[str, Any] = {name: take(data, name, kind, where)
                               for name, kind in _FIELDS.items()}
    try:
        options["actors"] = parse_actors(options["actors"])
    except UserError:
        raise UserError(f"{where}: 'actors' must be a positive number or \"auto\"") from None
    for name in ("actor_resources", "reader_resources"):
        check_resources(options[name], f"{where}: '{name}'")
    for name in ("actor_labels", "reader_labels"):
        check_node_labels(options[name], f"{where}: '{name}'")
    return options


def check_resources(resources: dict, where: str) -> None:
    for key, amount in resources.items():
        if key in ("CPU", "GPU", "memory"):
            raise UserError(f"{where}: give {key} with its own option, not as a resource")
        if not isinstance(amount, _NUMBER) or isinstance(amount, bool) or amount <= 0:
            raise UserError(f"{where}: resource {key} needs a positive amount, not {amount!r}")


def parse_actors(value: object) -> int | str:
    """`--actors`: a positive whole number or "auto", from the command line or a profile."""
    if value == "auto":
        return "auto"
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
        raise UserError(f"--actors must be a positive number or auto, not {value}")
    return int(text)


def check_node_labels(labels: dict, where: str) -> None:
    for key, value in labels.items():
        if not isinstance(value, str):
            raise UserError(f"{where}: label {key} needs a string value, not {value!r}")


@cache
def all_pools() -> dict[str, dict]:
    return {path.stem: parse_pool(read_toml(path), str(path))
            for path in sorted((configs_dir() / "pools").glob("*.toml"))}


def get_pool(name: str) -> dict:
    pools = all_pools()
    if name not in pools:
        raise UserError(f"unknown pool '{name}'; known pools: {', '.join(pools)}")
    return pools[name]


