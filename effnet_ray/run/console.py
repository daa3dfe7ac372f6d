"""What reaches a person's console: our messages, and none of Ray's routine noise.

Ray Data logs INFO lines and a progress UI to the console, and the driver's native core
worker writes known-harmless warnings straight to file descriptor 2 (ray-project/ray#53727,
"constructor arguments in the object store"), beyond the reach of Python's logging. Unless
`--verbose`, Ray Data's console handler is raised to WARNING and the native lines are
filtered out of fd 2; everything still goes to Ray's own log files in its session folder
(/tmp/ray/session_latest/logs).
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading

# Native lines known to be harmless, held back unless --verbose.
NATIVE_NOISE = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments "
               rb"in the object store"),
)
# Ray Data's own warnings that only describe what we chose.
RAY_DATA_NOISE = ("Progress bars disabled",)


class _DropRayDataNoise(logging.Filter):
    """Ray Data's errors are a failed task's traceback: the run reports that failure itself,
    in one line, and the traceback stays in Ray's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and not any(
            text in record.getMessage() for text in RAY_DATA_NOISE)


def quiet_ray(verbose: bool) -> None:
    """Ray Data's INFO lines and progress UI off the console unless `verbose`."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # the console one
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
            if not verbose:
                handler.addFilter(_DropRayDataNoise())


class NativeStderrFilter:
    """Route fd 2 through a pipe that drops NATIVE_NOISE lines; `sys.stderr` keeps writing
    to the original stream (a terminal stays a terminal for the progress bar)."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        sys.stderr = io.TextIOWrapper(io.FileIO(self.original, "w", closefd=False),
                                      line_buffering=True, errors="backslashreplace")
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True,
                                        name="effnet-ray-stderr")
        self._thread.start()

    def _pump(self, read_end: int) -> None:
        with open(read_end, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                if not any(p.search(line) for p in NATIVE_NOISE):
                    os.write(self.original, line)

    def close(self) -> None:
        """Let the last lines through (Ray's processes may still hold the pipe open)."""
        sys.stderr.flush()
        os.dup2(self.original, 2)
        self._thread.join(timeout=0.5)
