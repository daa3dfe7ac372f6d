"""The Ray cluster a run uses: started or attached, sized, and watched so it never hangs.

Without `--address` a run starts a Ray of its own (never one that a `ray start` left behind
in Ray's temp folder). Before any task is submitted, the actor pool and the decoding tasks
must fit the cluster together: a pool that leaves the decoding stage no CPU (or not its
memory) on any node it may use would wait forever, so it is refused, and `--actors auto`
is sized to leave room. While the run goes, `Watchdog` notices when nothing is committed
for a while, says what Ray is waiting for, and past `--stall-timeout` stops the run.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time

import ray

from effnet_ray.errors import STOP_SIGNALS, UserError
from effnet_ray.options import PlacementOptions
from effnet_ray.run.console import quiet_ray
from effnet_ray.run.placement import auto_actors, decoders_per_actor, fitting_actors

log = logging.getLogger(__name__)

# Two decoding tasks per CPU Ray has free for them. The inference threads use every core of
# a node, so decoding at one task per free CPU could never use more than those CPUs, and
# becomes the bottleneck as soon as inference is cheap (a small model, INT8, a GPU); the
# second task also fills the gaps of the first (its start, its reads, handing over a batch).
# Decoding that runs ahead of inference is stopped by Ray Data's backpressure.
READER_CPUS = 0.5
REACH_SECONDS = 5.0
# Seconds without a commit after which a run says what it waits for (then every as often).
QUIET_SECONDS = 120.0


def start_ray(address: str | None, verbose: bool = False) -> bool:
    """Attach to `address` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    level = logging.INFO if verbose else logging.WARNING
    # ray.init makes SIGTERM exit at once (sys.exit), skipping the run's own ending; the
    # handlers the caller had (the CLI's: stop as on Ctrl-C) are put back after it.
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, logging_level=level, log_to_driver=True)
        else:  # "local": a new Ray, whatever RAY_ADDRESS or a stale cluster file says
            # Nobody scrapes the metrics or reads the task events of a Ray that lives for one
            # run without a dashboard, and both grow with the run: Ray Data's stats actor
            # and the GCS (docs/scale.md).
            ray.init(address="local", include_dashboard=False, logging_level=level,
                     _system_config={"enable_metrics_collection": False,
                                     "task_events_report_interval_ms": 0})
    except UserError:
        raise
    except Exception as exc:  # Ray's own start-up timeout is a bare Exception
        raise UserError(f"cannot start or reach Ray at {address or 'local'}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
                        ) from exc
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in handlers.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(signum, handler)
    quiet_ray(verbose)
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing answers at `address`."""
    from ray._private.services import canonicalize_bootstrap_address

    if "://" in address:  # ray://host:port (Ray Client) or http://head:8265
        target = address.split("://", 1)[1].split("/", 1)[0]
    else:
        target = canonicalize_bootstrap_address(address) or ""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"no Ray cluster found at {address} (start one with `ray start "
                        "--head`, or leave out --address to start a local Ray)")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_SECONDS).close()
    except OSError as exc:
        raise UserError(f"cannot reach Ray at {address} "
                        f"({exc.strerror or type(exc).__name__})") from exc


def _has_labels(node: dict, wanted: dict) -> bool:
    """Plain `key: value` selectors; those with operators (!, in(...)) are Ray's to judge."""
    return all(node.get(k) == v for k, v in wanted.items()
               if not v.startswith("!") and "(" not in v)


def leaves_room(nodes: list[tuple[dict, bool, bool]], actors: int, actor: dict,
                reader: dict) -> bool:
    """Whether `actors` actors can be placed so that some node a reader may use still holds
    one reader. `nodes`: (resources, actors may run there, readers may run there).
    Actors go first where readers may not run, then onto reader nodes one by one."""
    free = [dict(resources) for resources, _, _ in nodes]
    order = sorted(range(len(nodes)), key=lambda i: nodes[i][2])
    left = actors
    for i in order:
        if not nodes[i][1]:
            continue
        while left and fitting_actors([free[i]], actor) >= 1:
            for key, amount in actor.items():
                free[i][key] = free[i].get(key, 0) - amount
            left -= 1
        if not left:
            break
    if left:
        return False
    return any(fitting_actors([free[i]], reader) >= 1
               for i in range(len(nodes)) if nodes[i][2])


def alive_nodes() -> list[dict]:
    """The connected cluster's live nodes, as Ray reports them when the run starts."""
    return [n for n in ray.nodes() if n["Alive"]]


def cpus_of(nodes: list[dict]) -> float:
    return sum(n["Resources"].get("CPU", 0) for n in nodes)


def pool_size(alive: list[dict], actors: int | str, actor: dict[str, float],
              actor_labels: dict, reader: dict[str, float], reader_labels: dict) -> int:
    """The number of actors on the `alive` nodes, checked against what decoding needs;
    refuses what Ray would otherwise wait on forever."""
    nodes = [(n["Resources"], _has_labels(n.get("Labels", {}), actor_labels),
              _has_labels(n.get("Labels", {}), reader_labels)) for n in alive]
    actor_nodes = [r for r, for_actors, _ in nodes if for_actors]
    if fitting_actors(actor_nodes, actor) < 1:
        wanted = f"{actor}, labels {actor_labels}" if actor_labels else str(actor)
        raise UserError(f"no node of the cluster has what an inference actor asks for: {wanted}")
    if not any(fitting_actors([r], reader) for r, _, for_readers in nodes if for_readers):
        raise UserError(f"no node of the cluster has what a decoding task asks for: "
                        f"{_show(reader)}")
    total_cpus = cpus_of(alive)
    if actors == "auto":
        count = auto_actors(actor_nodes, actor, total_cpus)
        while count > 1 and not leaves_room(nodes, count, actor, reader):
            count -= 1
        if not leaves_room(nodes, count, actor, reader):
            raise UserError(f"an inference actor ({_show(actor)}) leaves no node with what a "
                            f"decoding task needs ({_show(reader)}); lower --actor-cpus")
        return count
    if not leaves_room(nodes, int(actors), actor, reader):
        most = max((n for n in range(int(actors)) if n and leaves_room(nodes, n, actor, reader)),
                   default=0)
        hint = f"use --actors {most} or fewer" if most else "lower --actor-cpus"
        raise UserError(f"{actors} inference actor(s) of {_show(actor)} leave no node with what "
                        f"a decoding task needs ({_show(reader)}) on this cluster "
                        f"({total_cpus:g} CPUs); {hint}")
    return int(actors)


def actor_decoders(alive: list[dict], actors: int, actor: dict[str, float],
                   reader: dict[str, float], placement: PlacementOptions, device: str) -> int:
    """Decoding threads per actor when the actors decode their own work units, else 0.

    They do on a cluster of one node, with OpenVINO on its CPU and decoding not placed
    apart: there, decoding tasks would run beside the actors anyway, and a thread in the
    actor's process costs less than a task that hands every batch over through the object
    store. With more nodes, decoding runs as tasks wherever there is room, also on nodes
    without an actor; with a GPU, decoding is most of the CPU work and scales in processes.
    """
    if (len(alive) != 1 or device != "CPU" or placement.reader_resources
            or placement.reader_labels):
        return 0
    return decoders_per_actor(alive[0]["Resources"], actors, actor, reader)


def _show(request: dict) -> str:
    return ", ".join(f"{k} {v / 2**30:.2f} GiB" if k == "memory" else f"{k} {v:g}"
                     for k, v in request.items())


def waiting_for() -> str:
    """What Ray is waiting for, as a user can act on it."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "!=", "ALIVE")], raise_on_missing_output=False)
        pending = [a for a in actors
                   if a.state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING")]
    except Exception as exc:  # the state API is best effort
        return f"(Ray's state is unavailable: {type(exc).__name__})"
    parts = [f"free {_show({k: free.get(k, 0) for k in ('CPU', 'GPU', 'memory') if k in total})}"
             f" of {_show({k: total[k] for k in ('CPU', 'GPU', 'memory') if k in total})}"]
    if pending:
        parts.append(f"{len(pending)} actor(s) not placed yet")
    return "; ".join(parts)


class Watchdog:
    """Stops a run that commits nothing for `limit` seconds while work remains; says what
    it is waiting for every QUIET_SECONDS before that."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.last = time.time()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="effnet-ray-watchdog")

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def committed(self) -> None:
        self.last = time.time()

    def _watch(self) -> None:
        said = self.last
        while not self._stop.wait(1.0):
            quiet = time.time() - self.last
            if quiet >= self.limit:
                self.fired = True
                _thread.interrupt_main()
                return
            if time.time() - max(said, self.last) >= min(QUIET_SECONDS, self.limit / 2):
                said = time.time()
                log.warning("nothing committed for %.0f s: %s", quiet, waiting_for())
