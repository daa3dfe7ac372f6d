"""How far a run is: images committed of images listed, speed, time left, errors.

The listing knows the total for image files and Parquet shards (their footers count the
rows); a tar shard's samples are known once its last part is committed. Until then a shard
counts as its byte size times the samples per byte of the tar shards read completely (in this
run or an earlier one), or as their mean samples where its size is unknown, and never as fewer
samples than it has committed plus one. So the total is an estimate until the last shard is
read, and done never exceeds it. Before any tar shard is complete nothing measured says how
many samples a byte holds (a default guess is off tenfold between thumbnails and camera
photos), so the total is only a lower bound and there is no ETA until one is. Images committed
by earlier runs count as done.

A run reports to a `Reporter`: a live tqdm bar in a terminal, one log line every few seconds
elsewhere (logs, CI, `ray job logs`), or any callable a Python caller passes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from effnet_ray.inputs.listing import Unit
from effnet_ray.output.resume import Committed

log = logging.getLogger(__name__)


@dataclass
class ProgressState:
    done: int  # images committed, this run's and earlier runs'
    total: int  # images in all: exact, estimated (`estimated`) or a lower bound; >= done
    errors: int  # error rows among them
    shards_open: int  # shards whose samples are not known yet
    started: float = field(default_factory=time.time)
    done_at_start: int = 0
    estimated: bool = False  # the open shards' samples in `total` are estimates

    @property
    def exact(self) -> bool:
        return not self.shards_open

    @property
    def this_run(self) -> int:
        return self.done - self.done_at_start

    @property
    def rate(self) -> float:
        seconds = time.time() - self.started
        return self.this_run / seconds if seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this run's rate; None while the total is only a lower bound."""
        rate = self.rate
        if rate <= 0 or not (self.exact or self.estimated):
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        eta = self.eta_seconds
        if self.exact or self.estimated:
            mark = "" if self.exact else "~"
            pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
            counts = f"{self.done}/{mark}{self.total} images{pct}"
            when = f"ETA {mark}{_duration(eta)}" if eta is not None else "ETA unknown"
        else:
            counts, when = f"{self.done}/{self.total}+ images", "ETA once a shard is read"
        parts = [f"progress: {counts}", f"{self.rate:.2f} images/s", when,
                 f"{self.errors} errors"]
        if self.shards_open:
            parts.append(_open_shards(self))
        return ", ".join(parts)


Reporter = Callable[[ProgressState], None]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _open_shards(state: ProgressState) -> str:
    how = "estimated from their sizes" if state.estimated else "not counted yet"
    return f"{state.shards_open} shards {how}"


@dataclass
class _Open:
    """A shard whose samples are not known yet."""

    size: int | None  # bytes, from the listing
    done: int  # rows committed
    guess: int | None  # fixed estimate (a Parquet shard whose footer failed: its error row)
    counted: int = 0  # what it adds to the total at present


class Tracker:
    """A run's `ProgressState`, kept up to date from the parts the actors report.

    Open shards are re-estimated whenever a tar shard completes (their number at most, once
    per shard); every other part costs O(1).
    """

    def __init__(self, units: Iterable[Unit], committed: Committed,
                 shard_rows: Mapping[str, int | None]) -> None:
        self.known = 0  # images whose count is exact
        self.open: dict[str, _Open] = {}
        self.counted = 0  # sum of the open shards' `counted`
        self.read_rows = self.read_bytes = 0  # tar shards read completely, with a size
        self.read_shards = self.read_shard_rows = 0  # tar shards read completely
        self.unmeasured = 0  # open tar shards (the others have a fixed guess)
        done = errors = 0
        for unit in units:
            parts = committed.parts.get(unit.uid, {}).values()
            before = sum(p.rows for p in parts)
            done += before
            errors += sum(p.errors for p in parts)
            last = next((p.first + p.rows for p in parts if p.last), None)
            if unit.kind == "files":
                self.known += len(unit.sources)
            elif unit.kind == "parquet" and shard_rows.get(unit.uid) is not None:
                self.known += shard_rows[unit.uid] or 0
            elif last is not None:  # its last part says its length, even with parts to redo
                self.known += max(last, before)
                if unit.kind == "webdataset":
                    self._measure(unit.sources[0].size, max(last, before))
            else:
                tar = unit.kind == "webdataset"
                self.unmeasured += tar
                self.open[unit.uid] = _Open(unit.sources[0].size, before, None if tar else 1)
        self.state = ProgressState(done=done, total=0, errors=errors, shards_open=0,
                                   done_at_start=done)
        self._estimate()

    def add(self, stats: pa.Table) -> None:
        """Count the parts of one report (rows of `run/inference.py`'s `part_row`)."""
        self.state.done += pc.sum(stats.column("rows")).as_py() or 0
        self.state.errors += pc.sum(stats.column("errors")).as_py() or 0
        closed = False
        for part in pc.list_flatten(stats.column("parts")).to_pylist():
            shard = self.open.get(part["uid"])
            if shard is None:
                continue
            shard.done += part["rows"]
            if part["last"]:  # its length is known now
                del self.open[part["uid"]]
                self.counted -= shard.counted
                rows = max(part["first"] + part["rows"], shard.done)
                self.known += rows
                if shard.guess is None:
                    self.unmeasured -= 1
                    self._measure(shard.size, rows)
                closed = True
            else:
                self._count(shard)
        if closed:
            self._estimate()
        else:
            self._show()

    def _measure(self, size: int | None, rows: int) -> None:
        """Learn from a tar shard read completely."""
        self.read_shards += 1
        self.read_shard_rows += rows
        if size:
            self.read_bytes += size
            self.read_rows += rows

    def _guess(self, shard: _Open) -> int | None:
        """A shard's samples as far as the shards read tell; None if nothing tells."""
        if shard.guess is not None:
            return shard.guess
        if shard.size is not None and self.read_bytes:
            return round(shard.size * self.read_rows / self.read_bytes)
        if self.read_shards:
            return round(self.read_shard_rows / self.read_shards)
        return None

    def _count(self, shard: _Open) -> None:
        # A part that is not a shard's last is committed only once the next sample was read:
        # a shard with rows committed and its last part still to come has one more at least.
        floor = shard.done + 1 if shard.done else 0
        guess = self._guess(shard)
        new = floor if guess is None else max(guess, floor)
        self.counted += new - shard.counted
        shard.counted = new

    def _estimate(self) -> None:
        """Re-estimate every open shard from what the shards read say now."""
        self.counted = 0
        for shard in self.open.values():
            shard.counted = 0
            self._count(shard)
        self._show()

    def _show(self) -> None:
        state = self.state
        state.shards_open = len(self.open)
        state.estimated = bool(self.open) and (self.read_shards > 0 or not self.unmeasured)
        state.total = max(self.known + self.counted, state.done)


class LogLines:
    """One log line every `every` seconds, and one at the end."""

    def __init__(self, every: float) -> None:
        self.every, self.last = every, time.time()

    def __call__(self, state: ProgressState) -> None:
        if time.time() - self.last >= self.every:
            self.last = time.time()
            log.info(state.line())

    def close(self, state: ProgressState) -> None:
        log.info(state.line())


class Bar:
    """A live bar on a terminal; log lines print above it instead of through it."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self._redirect = ExitStack()  # log lines go through the bar while it is shown

    def __call__(self, state: ProgressState) -> None:
        self._show(state)

    def close(self, state: ProgressState) -> None:
        self._show(state).close()
        self._redirect.close()

    def _show(self, state: ProgressState) -> tqdm:
        """The bar, opened on the first call, brought up to `state`. While the total is only
        a lower bound the bar has none: a count and a rate, no ETA."""
        total = state.total if state.exact or state.estimated else None
        if self.bar is None:  # `initial`: the rate and ETA count this run's images only
            self.bar = tqdm(total=total, initial=state.done_at_start, unit="img",
                            dynamic_ncols=True, file=sys.stderr, smoothing=0.05)
            self._redirect.enter_context(
                logging_redirect_tqdm(loggers=[logging.getLogger("effnet_ray")]))
        self.bar.total = total
        self.bar.set_postfix_str(f"{state.errors} errors" + (
            f", {_open_shards(state)}" if state.shards_open else ""), refresh=False)
        self.bar.update(state.done - self.bar.n)
        return self.bar


def reporter_for(stream: object, every: float) -> LogLines | Bar:
    """A bar where a person watches a terminal, log lines anywhere else."""
    return Bar() if getattr(stream, "isatty", lambda: False)() else LogLines(every)
