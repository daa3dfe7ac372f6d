"""One run per output at a time: a lease file, `_lease.json`, in the output.

A run creates the lease before it touches anything else in the output (create-if-absent:
a hard link on local disks, an `If-None-Match: *` PUT on S3) and renews its heartbeat every
`HEARTBEAT` seconds while it runs. A second run is refused with one line naming the holder
(host, process, start time), unless the holder is gone: a holder on this host whose process
has died is taken over at once (so "rerun the same command" after a kill -9 works
immediately); any other holder once its heartbeat is older than `EXPIRY`, or at once with
`--break-lease`. Taking over is conditional on the lease being the one judged stale (a rename
on local disks, an `If-Match` PUT on S3), so two runs cannot both win. Other stores have no
conditional write in fsspec: there the lease is written and read back, which narrows but
does not close the race.

Every commit checks that the lease still carries its run's token (`check_holder`), so the
workers of a killed driver cannot write into a run that started after it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.output.faults import OutputFailed
from effnet_ray.output.layout import LEASE, timestamp
from effnet_ray.storage import (
    TMP_PREFIX,
    display,
    is_local,
    is_transient,
    named_errors,
    precondition_failed,
    protocols,
    put_atomic,
    redact,
    retrying,
)

log = logging.getLogger(__name__)

HEARTBEAT = 30.0
EXPIRY = 600.0


class LeaseLost(Exception):
    """The output's lease no longer names this run: another run took it over."""


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    process_start: str  # the process's start in /proc ticks: a reused pid differs
    started: str
    heartbeat: float

    def describe(self) -> str:
        if self == UNREADABLE:
            return "an unreadable lease"
        age = time.time() - self.heartbeat
        return (f"process {self.pid} on {self.host}, started {self.started}, last heartbeat "
                f"{age:.0f} s ago")

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.process_start


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        return "alive"


def _new_holder(token: str) -> Holder:
    pid = os.getpid()
    return Holder(token=token, host=socket.gethostname(), pid=pid,
                  process_start=_process_start(pid),
                  started=timestamp(),
                  heartbeat=time.time())


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), sort_keys=True).encode()


def read_holder(fs: AbstractFileSystem, folder: str) -> tuple[Holder | None, str | None]:
    """The holder and the lease's version (ETag on S3), or (None, None) without a lease."""
    path = f"{folder}/{LEASE}"
    try:
        if is_local(fs):
            with open(path, "rb") as f:
                data, version = f.read(), None
        else:
            info = retrying(lambda: fs.info(path), fs)
            data = retrying(lambda: fs.cat_file(path), fs)
            version = info.get("ETag")
    except FileNotFoundError:
        return None, None
    return _decode(data), version


# The lease's fields and their JSON types; `pid` and `heartbeat` are checked further below.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "token": str, "host": str, "pid": int, "process_start": str, "started": str,
    "heartbeat": (int, float)}
UNREADABLE = Holder("", "?", 0, "", "unknown", 0.0)  # long expired: taken over


def _decode(data: bytes) -> Holder:
    """The holder a lease names; UNREADABLE for one that is not a lease as `_encode` writes
    it (not JSON, another shape, a field of another type), so it is taken over, never
    trusted: a pid of another type or a heartbeat that is not a finite number would fail
    later, far from here."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return UNREADABLE
    if not (isinstance(fields, dict) and fields.keys() == _FIELDS.keys()
            and all(isinstance(fields[k], t) and not isinstance(fields[k], bool)
                    for k, t in _FIELDS.items())
            and 0 < fields["pid"] < 2**31 and math.isfinite(fields["heartbeat"])):
        return UNREADABLE
    return Holder(**{**fields, "heartbeat": float(fields["heartbeat"])})


def _is_s3(fs: AbstractFileSystem) -> bool:
    return bool({"s3", "s3a"} & set(protocols(fs)))


def _create(fs: AbstractFileSystem, folder: str, data: bytes) -> bool:
    """Write the lease if there is none; False if there is one."""
    path = f"{folder}/{LEASE}"
    if is_local(fs):
        tmp = f"{folder}/{TMP_PREFIX}{LEASE}.{uuid.uuid4().hex}"
        put_atomic(fs, tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True
    if _is_s3(fs):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def _replace(fs: AbstractFileSystem, folder: str, data: bytes, stale: Holder,
             version: str | None) -> bool:
    """Write the lease over `stale` only if it is still the one there."""
    path = f"{folder}/{LEASE}"
    if is_local(fs):
        aside = f"{folder}/{TMP_PREFIX}{LEASE}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return _create(fs, folder, data)
        with open(aside, "rb") as f:
            same = _decode(f.read()) == stale
        if not same:  # another run took it over between our read and the rename
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        return _create(fs, folder, data)
    if _is_s3(fs) and version:
        try:
            fs.pipe_file(path, data, IfMatch=version)
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        return True
    fs.pipe_file(path, data)
    holder, _ = read_holder(fs, folder)
    return holder is not None and _encode(holder) == data


class Lease:
    """The lease a run holds on its output, renewed by a daemon thread until `release`."""

    def __init__(self, fs: AbstractFileSystem, folder: str, holder: Holder,
                 made_folder: bool = False) -> None:
        self.fs, self.folder, self.holder = fs, folder, holder
        self.made_folder = made_folder  # a run that leaves nothing removes it again
        self.lost = threading.Event()
        self.gone = False  # the output itself vanished, rather than another run taking it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.holder.token

    @classmethod
    def acquire(cls, fs: AbstractFileSystem, folder: str, break_lease: bool = False) -> Lease:
        where = display(fs, folder)
        mine = _new_holder(uuid.uuid4().hex)
        with named_errors(where):
            mine_folder = is_local(fs) and not os.path.exists(folder)
            try:
                fs.makedirs(folder, exist_ok=True)
                created = _create(fs, folder, _encode(mine))
            except (PermissionError, NotADirectoryError, IsADirectoryError, OSError) as exc:
                if is_transient(exc, fs) or isinstance(exc, FileExistsError):
                    raise
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise UserError(f"output {where} is not writable ({reason})") from exc
            if created:
                return cls(fs, folder, mine, mine_folder)
            holder, version = read_holder(fs, folder)
            if holder is None:  # released between our two calls
                if _create(fs, folder, _encode(mine)):
                    return cls(fs, folder, mine, mine_folder)
            elif not (break_lease or holder.is_dead_here()
                      or time.time() - holder.heartbeat > EXPIRY):
                raise UserError(f"output {where} is in use by another run ({holder.describe()}"
                                f"); wait for it, or pass --break-lease if it is gone")
            elif _replace(fs, folder, _encode(mine), holder, version):
                log.warning("took over the lease of a run that is gone (%s)",
                            holder.describe() if holder else "unknown")
                return cls(fs, folder, mine, mine_folder)
        raise UserError(f"output {where} was taken by another run just now; try again")

    def start_heartbeat(self, every: float = HEARTBEAT) -> None:
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True,
                                        name="effnet-ray-lease")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                holder, version = read_holder(self.fs, self.folder)
                if holder is None or holder.token != self.token:
                    self.gone = holder is None and not self.fs.exists(self.folder)
                    self.lost.set()
                    return
                fresh = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
                if is_local(self.fs):  # os.replace: the lease never vanishes for a reader
                    put_atomic(self.fs, f"{self.folder}/{LEASE}", _encode(fresh))
                elif not _replace(self.fs, self.folder, _encode(fresh), holder, version):
                    self.lost.set()
                    return
                self.holder = fresh
            except Exception as exc:  # a store blip: the next beat tries again
                log.debug("lease heartbeat failed: %s", exc)

    def loss(self) -> LeaseLost | OutputFailed:
        """Why the lease was lost, as the error that stops the run."""
        if self.gone:
            return OutputFailed(f"output {redact(display(self.fs, self.folder))}: the folder "
                                "or bucket is gone")
        return LeaseLost("another run took the output over")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        try:
            holder, _ = read_holder(self.fs, self.folder)
            if holder is not None and holder.token == self.token:
                self.fs.rm_file(f"{self.folder}/{LEASE}")
                if self.made_folder and not os.listdir(self.folder):
                    os.rmdir(self.folder)
        except Exception as exc:  # an output that failed is reported by what ended the run
            log.debug("could not release the lease of %s: %s", self.folder, exc)


def check_holder(fs: AbstractFileSystem, folder: str, token: str) -> None:
    holder, _ = read_holder(fs, folder)
    if holder is None and not retrying(lambda: fs.exists(folder), fs):
        raise OutputFailed(f"output {redact(display(fs, folder))}: the folder or bucket is gone")
    if holder is None or holder.token != token:
        raise LeaseLost(f"the lease of {display(fs, folder)} no longer names this run "
                        "(another run took the output over); nothing more is written")
