"""Plain helpers and constants shared by several test modules (no fixtures: those are in
conftest.py). Test modules import shared things from here and from tests.reference only."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "effnet_ray.cli"]
IMAGES = 84  # 21 parts of 4: long enough to be killed part-way, short enough for CI
S3_SECRET = "secret-effnet-9f8e7d6c5b4a"
B7_SEEDS = ("efficientnet-b7-pytorch", "efficientnet-b7_auto_aug")
# Measured f32 disagreement between PyTorch and OpenVINO on these networks is 1e-6 to 5e-6
# (summation order); a one-pixel crop shift moves the logits by 2e-3 or more.
F32_TOLERANCE = 1e-4


def run_cli(*args, env=None, timeout=900, cwd=None):
    """Run effnet-ray as users do: a separate process, exit code and stderr kept."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def one_line_error(result, *fragments):
    """Non-zero exit, no traceback, the error on one line (progress output may precede it);
    a user error, not an internal one (a bug)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "effnet-ray: internal error" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("effnet-ray: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def normalised(rgb, spec):
    """RGB HxWx3 uint8 as the PyTorch source takes it: mean/scale by hand, NCHW."""
    import torch

    x = (rgb.astype(np.float32) - np.array(spec.source.mean, np.float32)) / np.array(
        spec.source.scale, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def rows_by_name(folder, filesystem=None):
    """{file name: row} of an output folder; fails on any name seen twice."""
    table = pads.dataset(str(folder), format="parquet", filesystem=filesystem).to_table()
    rows = {}
    for row in table.to_pylist():
        name = row["path"].rsplit("/", 1)[-1]
        assert name not in rows, f"{name} is in the output twice"
        rows[name] = row
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(extra_env=None):
    """A moto_server on a free loopback port: (process, port), once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(extra_env or {})})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


class S3Requests:
    """moto_server's own request recorder: which objects a run really fetched."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def _call(self, action):
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/{action}",
                                    data=None if action.startswith("download") else b"") as r:
            return r.read().decode()

    def __enter__(self):
        self._call("reset-recording")
        self._call("start-recording")
        return self

    def __exit__(self, *exc):
        self._call("stop-recording")

    def gets(self):
        """The bucket/key of every GET, in order, repeats included."""
        text, requests, decoder, at = self._call("download-recording"), [], json.JSONDecoder(), 0
        # moto writes each record and its newline apart: concurrent requests (a resume
        # reading part footers at once) can put two records on one line
        while (at := len(text) - len(text[at:].lstrip())) < len(text):
            record, at = decoder.raw_decode(text, at)
            requests.append(record)
        return [urllib.parse.unquote(urllib.parse.urlsplit(r["url"]).path).lstrip("/")
                for r in requests if r["method"] == "GET"]

    def fetched(self):
        return set(self.gets())


def pids_where(proc_file, matches):
    """Processes whose /proc/PID/<proc_file> (cmdline, environ...) satisfies `matches`."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and matches((entry / proc_file).read_bytes()):
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def debian_tool(command, package=None):
    """The path of a command from Debian's packages, installed here if missing (the tests run
    as root in CI, where apt-get works)."""
    import shutil

    path = shutil.which(command)
    if path is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package or command], check=True,
                       capture_output=True)
        path = shutil.which(command)
    assert path, f"{command} could not be installed"
    return path


class FlakyProxy:
    """A TCP proxy in front of the S3 server that can drop every connection for a while (a
    bucket that blips) or hold each request for `delay` seconds (a store far away), on the
    real network path."""

    def __init__(self, port, delay=0.0):
        self.target = ("127.0.0.1", port)
        self.delay = delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down = False
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for a, b, wait in ((client, upstream, self.delay), (upstream, client, 0.0)):
                threading.Thread(target=self._pump, args=(a, b, wait), daemon=True).start()

    @staticmethod
    def _pump(src, dst, wait):
        try:
            while data := src.recv(65536):
                time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def blip(self, seconds):
        self.down = True
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open = []
        time.sleep(seconds)
        self.down = False

    def close(self):
        self.server.close()
