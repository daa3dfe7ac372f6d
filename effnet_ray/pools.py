"""Pool profiles (`configs/pools/*.toml`) and the arithmetic of fitting actors onto nodes.

A profile is a named set of `label` options for one cluster layout (CPU-only nodes; CPU nodes
for decoding plus Intel GPU nodes for inference...), selected with `--pool NAME`; options
given on the command line win over the profile. `actors = "auto"` sizes the pool from the
cluster Ray reports when the run starts (`cluster.pool_size`). Nothing here talks to Ray.
"""

from __future__ import annotations

import math
from functools import cache

from effnet_ray.errors import UserError
from effnet_ray.registry import configs_dir, no_extra, read_toml, take

_NUMBER = (int, float)
_FIELDS = {
    "device": str, "actors": (int, str), "actor_cpus": _NUMBER, "threads": int,
    "actor_gpus": _NUMBER, "actor_resources": dict, "actor_labels": dict,
    "reader_resources": dict, "reader_labels": dict,
}
# Decoding a photo costs ~2.5% of a B7 inference on the same core: 1 CPU in 16 is ample.
DECODE_SHARE = 1 / 16
# Decoding threads in one actor, at most (see decoders_per_actor).
MAX_DECODERS_PER_ACTOR = 8


def parse_pool(data: dict, where: str) -> dict:
    no_extra(data, {"description", *_FIELDS}, where)
    take(data, "description", str, where)
    options = {name: take(data, name, kind, where) for name, kind in _FIELDS.items()}
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


def actor_request(cpus: float, gpus: float, resources: dict) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **resources}


def fitting_actors(nodes: list[dict[str, float]], request: dict[str, float]) -> int:
    """How many actors of `request` the nodes hold, one node at a time (Ray cannot split an
    actor across nodes)."""
    return sum(min(math.floor(node.get(key, 0) / amount + 1e-9)
                   for key, amount in request.items() if amount > 0) for node in nodes)


def auto_actors(nodes: list[dict[str, float]], request: dict[str, float], total_cpus: float
                ) -> int:
    """As many actors as fit on `nodes` (those an actor may use), leaving DECODE_SHARE of the
    cluster's `total_cpus` (at least one) to the decoding tasks, without which the actors
    would wait forever."""
    actors = fitting_actors(nodes, request)
    spare = max(1.0, total_cpus * DECODE_SHARE)
    while actors > 1 and total_cpus - actors * request.get("CPU", 0) < spare:
        actors -= 1
    return actors


def decoders_per_actor(node: dict[str, float], actors: int, actor: dict[str, float],
                       reader: dict[str, float]) -> int:
    """Decoding threads for each of `actors` actors on `node` when they decode their own
    work units, or 0 when decoding tasks serve the node better.

    In all, as many threads as decoding tasks would fit on the whole node: the actors'
    OpenVINO threads span every core, and decoding takes what they leave. More than
    MAX_DECODERS_PER_ACTOR threads in one process would queue on the GIL between Pillow's
    calls, where tasks, each a process, would not.
    """
    free = {key: node.get(key, 0) - (0 if key == "CPU" else actors * actor.get(key, 0))
            for key in reader}
    threads = max(1, math.ceil(fitting_actors([free], reader) / actors))
    return threads if threads <= MAX_DECODERS_PER_ACTOR else 0
