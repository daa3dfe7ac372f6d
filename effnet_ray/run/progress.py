"""How far a run is: images committed of images listed, speed, time left, errors.

The listing knows the total for image files and Parquet shards (their footers count the
rows); a tar shard's samples are known once its last part is committed, so until then shards
are counted apart. Images committed by earlier runs count as done. A run reports to a
`Reporter`: a live tqdm bar in a terminal, one log line every few seconds elsewhere (logs,
CI, `ray job logs`), or any callable a Python caller passes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class ProgressState:
    done: int  # images committed, this run's and earlier runs'
    total: int  # images known to exist (shards not yet read are not in it)
    errors: int  # error rows among them
    shards_open: int  # tar shards whose size is not known yet
    started: float = field(default_factory=time.time)
    done_at_start: int = 0

    @property
    def this_run(self) -> int:
        return self.done - self.done_at_start

    @property
    def rate(self) -> float:
        seconds = time.time() - self.started
        return self.this_run / seconds if seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 and self.total >= self.done else None

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        eta = self.eta_seconds
        parts = [f"progress: {self.done}/{self.total} images{pct}", f"{self.rate:.2f} images/s",
                 f"ETA {_duration(eta)}" if eta is not None else "ETA unknown",
                 f"{self.errors} errors"]
        if self.shards_open:
            parts.append(f"{self.shards_open} tar shards not counted yet")
        return ", ".join(parts)


Reporter = Callable[[ProgressState], None]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


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
        """The bar, opened on the first call, brought up to `state`."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        if self.bar is None:  # `initial`: the rate and ETA count this run's images only
            self.bar = tqdm(total=state.total, initial=state.done_at_start, unit="img",
                            dynamic_ncols=True, file=sys.stderr, smoothing=0.05)
            self._redirect.enter_context(
                logging_redirect_tqdm(loggers=[logging.getLogger("effnet_ray")]))
        self.bar.total = state.total
        self.bar.set_postfix_str(f"{state.errors} errors" + (
            f", {state.shards_open} tar shards not counted yet" if state.shards_open else ""),
            refresh=False)
        self.bar.update(state.done - self.bar.n)
        return self.bar


def reporter_for(stream: object, every: float) -> LogLines | Bar:
    """A bar where a person watches a terminal, log lines anywhere else."""
    return Bar() if getattr(stream, "isatty", lambda: False)() else LogLines(every)
