"""Faults where the output lives, and signals: one line naming the output, what failed and
how to resume; nothing lost, and the rerun completes exactly once. Real Ray, a real S3 API
server (moto) whose bucket is deleted under the run, a real file system that fills up
(tmpfs), real SIGTERMs."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import CLI, IMAGES, one_line_error, rows_by_name, run_cli


def job_args(lite0_ir):
    return ["--model", "efficientnet-lite0", "--model-path", lite0_ir, "--precision", "f32",
            "--batch-size", "4", "--unit-size", "8"]


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(*args, env=None):
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finished(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# The run's own INFO lines: what it listed, where it runs, how far it is.
INFO = ("progress:", "listed ", "inference:", "resuming:")


def messages(stderr):
    """Everything the run said but its INFO lines: warnings, errors, anything of Ray's."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(INFO)]


def test_an_output_bucket_that_does_not_exist_is_refused_and_not_created(
        s3, s3_env, many_photos, lite0_ir):
    result = run_cli("label", many_photos, "--output", "s3://no-such-bucket/out",
                     *job_args(lite0_ir), env=s3_env)
    one_line_error(result, "bucket no-such-bucket does not exist", "create it first")
    s3.invalidate_cache()
    assert not s3.exists("no-such-bucket")


def test_a_bucket_deleted_under_the_run_stops_it_with_one_line_and_the_rerun_completes(
        s3, s3_env, many_photos, lite0_ir):
    s3.mkdir("vanishing")
    out = "s3://vanishing/out"
    proc = start("label", many_photos, "--output", out, *job_args(lite0_ir), env=s3_env)

    def parts():
        s3.invalidate_cache()
        return s3.exists("vanishing/out") and any("part-" in p for p in s3.ls("vanishing/out"))

    wait_for(parts, what="a first commit")

    def deleted():  # the run keeps writing while the bucket is emptied
        try:
            s3.rm("vanishing", recursive=True)
        except OSError:
            return False
        return True

    wait_for(deleted, timeout=60, what="the bucket deleted")
    result = finished(proc)
    one_line_error(result, f"output {out}", "gone", "rerun the same command to resume")
    assert len(messages(result.stderr)) == 1, result.stderr
    assert result.returncode == 2
    s3.mkdir("vanishing")
    again = run_cli("label", many_photos, "--output", out, *job_args(lite0_ir), env=s3_env)
    assert again.returncode == 0, again.stderr
    assert len(rows_by_name("vanishing/out", s3)) == IMAGES


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 192 KiB (tmpfs): room for a few parts, not for 21."""
    where = tmp_path / "disk"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_the_rerun_completes(
        small_disk, many_photos, lite0_ir):
    out = small_disk / "out"
    result = run_cli("label", many_photos, "--output", out, *job_args(lite0_ir))
    one_line_error(result, f"output {out}", "no space left", "rerun the same command")
    assert len(messages(result.stderr)) == 1, result.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli("label", many_photos, "--output", out, *job_args(lite0_ir))
    assert again.returncode == 0, again.stderr
    assert len(rows_by_name(out)) == IMAGES


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_run_like_ctrl_c_and_the_rerun_completes(
        tmp_path, many_photos, lite0_ir, signum):
    """SIGTERM (kill, Kubernetes, `ray job stop`) and SIGHUP (the terminal or ssh session
    closed); the rerun after the second is the rerun after the first, so it runs once."""
    out = tmp_path / "out"
    proc = start("label", many_photos, "--output", out, *job_args(lite0_ir))
    wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2, what="two commits")
    proc.send_signal(signum)
    result = finished(proc, timeout=120)
    assert result.returncode == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr
    assert messages(result.stderr)[-1] == \
        "effnet-ray: terminated; rerun the same command to resume", result.stderr
    manifest = json.loads((Path(out) / "_manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"
    assert not (Path(out) / "_lease.json").exists()  # released: the rerun needs no wait
    if signum != signal.SIGTERM:
        return
    again = run_cli("label", many_photos, "--output", out, *job_args(lite0_ir))
    assert again.returncode == 0, again.stderr
    assert len(rows_by_name(out)) == IMAGES
    shutil.rmtree(out)
