"""The arithmetic of fitting actors and decoding onto a cluster's nodes. Nothing here talks
to Ray: `cluster` reads the nodes and asks."""

from __future__ import annotations

import math

# Decoding a photo costs ~2.5% of a B7 inference on the same core: 1 CPU in 16 is ample.
DECODE_SHARE = 1 / 16


# Decoding threads in one actor, at most (see decoders_per_actor).
MAX_DECODERS_PER_ACTOR = 8


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
