"""Resume and faults: a killed driver, a killed actor, a store that blips; nothing lost,
nothing twice, and done inputs never read again.

Every run is the real CLI in its own process on a real local Ray; kills are real SIGKILLs.
"""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from effnet_ray.errors import UserError
from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.inputs.listing import list_sources, work_units
from effnet_ray.models.registry import PHOTOS
from effnet_ray.output.commit import Committer
from effnet_ray.output.lease import Lease, LeaseLost, _replace, check_holder, read_holder
from effnet_ray.storage import open_fs
from tests.helpers import (
    CLI,
    IMAGES,
    FlakyProxy,
    S3Requests,
    one_line_error,
    pids_where,
    rows_by_name,
    run_cli,
)


def job_args(lite0_ir):
    return ["--model", "efficientnet-lite0", "--model-path", lite0_ir, "--precision", "f32",
            "--batch-size", "4", "--unit-size", "8"]


@pytest.fixture(scope="module")
def reference(many_photos, lite0_ir, tmp_path_factory):
    """An uninterrupted run: what every interrupted and resumed run must end up with."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run_cli("label", many_photos, "--output", out, *job_args(lite0_ir))
    assert result.returncode == 0, result.stderr
    rows = rows_by_name(out)
    assert len(rows) == IMAGES and not any(r["error"] for r in rows.values())
    return rows


def assert_same_results(rows, reference):
    assert sorted(rows) == sorted(reference)
    for name, row in rows.items():
        ref = reference[name]
        assert row["error"] is None and row["top_k_ids"] == ref["top_k_ids"], name
        np.testing.assert_allclose(row["logits"], ref["logits"], rtol=1e-5, atol=1e-5)


def start_cli(*args, log, env=None):
    return subprocess.Popen([*CLI, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until_still(count, seconds=3.0, timeout=60):
    """Ray's workers outlive a killed driver by a few seconds and commit what they hold."""
    last, since = count(), time.time()
    deadline = time.time() + timeout
    while time.time() - since < seconds and time.time() < deadline:
        time.sleep(0.2)
        now = count()
        if now != last:
            last, since = now, time.time()
    return last


def committed_paths(files, open_file=open):
    paths = []
    for name in files:
        with open_file(name, "rb") as f:
            paths += pq.read_table(f, columns=["path"]).column("path").to_pylist()
    return paths


def manifest(folder):
    return json.loads((Path(folder) / "_manifest.json").read_text())


def test_killed_driver_then_rerun_finishes_without_reading_done_inputs(
        many_photos, reference, lite0_ir, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(many_photos, inputs)
    out = tmp_path / "out"
    args = ["label", inputs, "--output", out, *job_args(lite0_ir)]
    with open(tmp_path / "first.log", "w") as log:
        proc = start_cli(*args, log=log)
        wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2, what="two commits")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until_still(lambda: len(list(out.glob("part-*.parquet"))))
    done = committed_paths(sorted(out.glob("part-*.parquet")))
    assert 0 < len(done) < IMAGES, "the kill came too late to test anything"
    assert manifest(out)["status"] == "incomplete"
    # The rerun cannot read what it should skip: those inputs are gone.
    for path in done:
        os.remove(path)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_same_results(rows_by_name(out), reference)
    runs = manifest(out)["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "complete"]
    assert runs[-1]["this_run"] == IMAGES - len(done)
    assert manifest(out)["status"] == "complete"


def _classifier_pids(root):
    """Ray names an actor's process after its class (ray::MapWorker(MapBatches(Classifier)));
    only the run started as `root` counts (other runs may share the machine)."""
    try:
        tree = {p.pid for p in psutil.Process(root).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
    return tree & pids_where("cmdline", lambda cmdline: b"Classifier" in cmdline)


def test_a_killed_actor_is_replaced_and_the_run_completes(many_photos, reference, lite0_ir,
                                                          tmp_path):
    out = tmp_path / "out"
    with open(tmp_path / "run.log", "w") as log:
        proc = start_cli("label", many_photos, "--output", out, *job_args(lite0_ir), log=log)
        wait_for(lambda: list(out.glob("part-*.parquet")), what="a first commit")
        victims = _classifier_pids(proc.pid)
        assert len(victims) == 1, victims
        os.kill(next(iter(victims)), signal.SIGKILL)
        # Ray Data restarts the actor in a new process and retries what the dead one held
        wait_for(lambda: _classifier_pids(proc.pid) - victims or proc.poll() is not None,
                 what="a new actor")
        assert _classifier_pids(proc.pid) - victims, \
            "the run ended before an actor replaced the dead"
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()
    assert_same_results(rows_by_name(out), reference)
    assert manifest(out)["runs"][-1]["this_run"] == IMAGES


def _upload(s3, folder, prefix):
    for path in sorted(folder.iterdir()):
        s3.put(str(path), f"{prefix}/{path.name}")


def test_killed_driver_then_rerun_on_s3(s3, s3_env, many_photos, reference, lite0_ir, tmp_path):
    s3.mkdir("resume-in")
    s3.mkdir("resume-out")
    _upload(s3, many_photos, "resume-in/photos")
    args = ["label", "s3://resume-in/photos", "--output", "s3://resume-out/run",
            *job_args(lite0_ir)]

    def commits():
        s3.invalidate_cache()
        return s3.glob("resume-out/run/part-*.parquet")

    with open(tmp_path / "first.log", "w") as log:
        proc = start_cli(*args, log=log, env=s3_env)
        wait_for(lambda: len(commits()) >= 2, what="two commits")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until_still(lambda: len(commits()))
    done = {p.removeprefix("s3://") for p in committed_paths(commits(), s3.open)}
    assert 0 < len(done) < IMAGES
    with S3Requests(s3_env["AWS_ENDPOINT_URL"]) as requests:
        result = run_cli(*args, env=s3_env)
    assert result.returncode == 0, result.stderr
    fetched = requests.fetched()
    everything = {f"resume-in/photos/{p.name}" for p in many_photos.iterdir()}
    assert not fetched & done, "the rerun read images that were already committed"
    assert everything - done <= fetched
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(s3))
    assert_same_results(rows_by_name("resume-out/run", handler), reference)
    runs = json.loads(s3.cat_file("resume-out/run/_manifest.json"))["runs"]
    assert runs[-1]["status"] == "complete" and runs[-1]["this_run"] == IMAGES - len(done)


def test_a_store_that_blips_mid_run_costs_nothing(s3, s3_env, many_photos, reference, lite0_ir,
                                                  tmp_path):
    s3.mkdir("blip-in")
    s3.mkdir("blip-out")
    _upload(s3, many_photos, "blip-in/photos")
    proxy = FlakyProxy(int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    try:
        with open(tmp_path / "run.log", "w") as log:
            proc = start_cli("label", "s3://blip-in/photos", "--output", "s3://blip-out/run",
                             *job_args(lite0_ir), log=log, env=env)

            def commits():
                s3.invalidate_cache()
                return s3.glob("blip-out/run/part-*.parquet")

            wait_for(commits, what="a first commit")
            proxy.blip(12)  # longer than botocore alone rides out on a write (~5 s)
            assert len(commits()) < IMAGES // 4, "the run ended before the blip"
            assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()
    finally:
        proxy.close()
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(s3))
    assert_same_results(rows_by_name("blip-out/run", handler), reference)


def test_a_commit_rides_out_a_store_outage_longer_than_botocore_retries(s3, s3_env):
    """botocore alone gives up on a write after ~5 s of refused connections (measured here);
    a commit waits out an 8 s outage and then lands whole."""
    s3.mkdir("outage")
    proxy = FlakyProxy(int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}",
               "key": s3_env["AWS_ACCESS_KEY_ID"], "secret": s3_env["AWS_SECRET_ACCESS_KEY"]}
    lease = Lease.acquire(*open_fs("s3://outage/out", options))  # a commit checks it holds it
    commit = Committer("s3://outage/out", lease.token, options)
    table = pa.table({"path": ["a", "b"], "error": pa.array([None, None], pa.string())})
    batch = ImageBatch(uid="0123456789abcdef", first=0, last=True, paths=["a", "b"],
                       errors=[None, None], source_labels=[None, None],
                       source_metadata=[None, None], input_sizes=[1, 2],
                       input_versions=["v1", "v2"], images=np.zeros((2, 1, 1, 3), np.uint8))
    proxy.down = True
    threading.Timer(8, lambda: setattr(proxy, "down", False)).start()
    started = time.time()
    try:
        part = commit(batch, table)
    finally:
        lease.release()
        proxy.close()
    assert time.time() - started > 7
    assert part.name == "part-0123456789abcdef-0000000-n2-e0-last.parquet"
    with s3.open(f"outage/out/{part.name}", "rb") as f:
        assert pq.read_table(f).equals(table)


def test_the_lease_on_s3_is_exclusive_and_taken_over_conditionally(s3, s3_env):
    """S3's conditional writes make the lease atomic: If-None-Match to take a free one,
    If-Match to take over the one judged stale, and a heartbeat that notices a takeover."""
    options = {"endpoint_url": s3_env["AWS_ENDPOINT_URL"], "key": s3_env["AWS_ACCESS_KEY_ID"],
               "secret": s3_env["AWS_SECRET_ACCESS_KEY"]}
    s3.mkdir("leases")
    fs, path = open_fs("s3://leases/out", options)
    first = Lease.acquire(fs, path)
    with pytest.raises(UserError, match=f"in use by another run \\(process {os.getpid()}"):
        Lease.acquire(fs, path)
    first.start_heartbeat(every=0.2)
    time.sleep(1)
    assert not first.lost.is_set()
    stale, version = read_holder(fs, path)
    second = Lease.acquire(fs, path, break_lease=True)
    assert first.lost.wait(10)
    with pytest.raises(LeaseLost):
        check_holder(fs, path, first.token)
    # a takeover conditional on a version that is no longer there loses
    assert not _replace(fs, path, b"{}", stale, version)
    check_holder(fs, path, second.token)
    first.release()  # not its lease any more: leaves it alone
    check_holder(fs, path, second.token)
    second.release()
    assert not s3.exists("leases/out/_lease.json")


def small_args(lite0_ir, out, inputs=PHOTOS, **changes):
    """The 7 bundled photos in units of 3 and batches of 2; `changes` override options."""
    options = {"--model": "efficientnet-lite0", "--model-path": lite0_ir, "--precision": "f32",
               "--batch-size": "2", "--unit-size": "3", **changes}
    return ["label", inputs, "--output", out, "--no-compact",
            *[x for kv in options.items() for x in kv]]


def test_crash_leftovers_and_duplicates_do_not_count(lite0_ir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*small_args(lite0_ir, out)).returncode == 0
    before = rows_by_name(out)
    parts = sorted(out.glob("part-*.parquet"))
    # a write that a crash cut short, a part committed twice with different error counts
    # (a retried batch), and a part lost
    (out / f".tmp-{parts[0].name}.0123abcd").write_bytes(parts[0].read_bytes()[:100])
    twice = parts[1].name.replace("-e0", "-e1")
    shutil.copy(parts[1], out / twice)
    parts[2].unlink()
    result = run_cli(*small_args(lite0_ir, out))
    assert result.returncode == 0, result.stderr
    after = rows_by_name(out)  # fails if the duplicate still counted
    assert sorted(after) == sorted(before)
    assert not list(out.glob(".tmp-*")) and not (out / twice).exists()
    assert manifest(out)["runs"][-1]["this_run"] == int(parts[2].name.split("-n")[1][0])


def test_a_file_added_to_the_inputs_is_labelled_without_redoing_the_rest(lite0_ir, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(PHOTOS, inputs)
    out = tmp_path / "out"
    assert run_cli(*small_args(lite0_ir, out, inputs)).returncode == 0
    before = {u.uid for u in work_units(list_sources([str(inputs)]), 3)}
    shutil.copy(PHOTOS / "coffee.jpg", inputs / "coffee-again.jpg")
    result = run_cli(*small_args(lite0_ir, out, inputs))
    assert result.returncode == 0, result.stderr
    rows = rows_by_name(out)
    assert "coffee-again.jpg" in rows and len(rows) == 8
    # Exactly the images of the units the new file changed are labelled again. Which units
    # those are depends on how the tmp path's names hash: usually one unit of ~3, all 8 when
    # the change moves a unit capped at 6 (twice --unit-size).
    changed = [u for u in work_units(list_sources([str(inputs)]), 3) if u.uid not in before]
    assert manifest(out)["runs"][-1]["this_run"] == sum(len(u.uris) for u in changed)


def test_a_rerun_naming_the_inputs_another_way_resumes(lite0_ir, tmp_path):
    """`label in`, rerun as `in/`, `./in`, its absolute path or a file:// URI, continues:
    the identity compares what inputs name, also in a manifest that kept them as typed."""
    shutil.copytree(PHOTOS, tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli(*small_args(lite0_ir, "out", "in"), cwd=tmp_path).returncode == 0
    assert manifest(out)["identity"]["inputs"] == [str(tmp_path / "in")]
    for spelt in ("in/", "./in", tmp_path / "in", f"file://{tmp_path}/in/"):
        result = run_cli(*small_args(lite0_ir, "out", spelt), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert manifest(out)["runs"][-1]["this_run"] == 0
    kept_as_typed = manifest(out)
    kept_as_typed["identity"]["inputs"] = ["in/"]
    (out / "_manifest.json").write_text(json.dumps(kept_as_typed))
    result = run_cli(*small_args(lite0_ir, out, tmp_path / "in"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert manifest(out)["runs"][-1]["this_run"] == 0 and len(rows_by_name(out)) == 7
    shutil.copytree(PHOTOS, tmp_path / "in2")
    one_line_error(run_cli(*small_args(lite0_ir, out, tmp_path / "in2")), "made differently",
                   "inputs", "in2")


def test_a_rerun_made_differently_is_refused(lite0_ir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*small_args(lite0_ir, out)).returncode == 0
    files = sorted(p.name for p in out.iterdir())
    for flag, value in [("--top-k", "3"), ("--precision", "auto"), ("--batch-size", "4"),
                        ("--unit-size", "5")]:
        result = run_cli(*small_args(lite0_ir, out, **{flag: value}))
        one_line_error(result, "made differently", flag[2:].replace("-", "_"), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == files
    assert run_cli(*small_args(lite0_ir, out, **{"--top-k": "3"}), "--overwrite"
                   ).returncode == 0
    assert len(manifest(out)["runs"]) == 1
    assert [len(r["top_k_ids"]) for r in rows_by_name(out).values()] == [3] * 7


def test_another_model_into_the_same_output_is_refused(lite0_ir, b7_irs, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*small_args(lite0_ir, out)).returncode == 0
    b7 = b7_irs["efficientnet-b7-pytorch"]
    result = run_cli(*small_args(lite0_ir, out, **{"--model": "efficientnet-b7-pytorch",
                                                   "--model-path": b7}))
    one_line_error(result, "made differently", "model", "ir_sha256")


def test_parquet_files_of_another_tool_are_not_mixed_into(lite0_ir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"x": [1]}), out / "other.parquet")
    one_line_error(run_cli(*small_args(lite0_ir, out)), "Parquet files of another tool",
                   "other.parquet", "choose an empty or new folder")
    # --overwrite replaces only an output of effnet-ray: someone's files are never deleted
    one_line_error(run_cli(*small_args(lite0_ir, out), "--overwrite"), "did not write",
                   "other.parquet")
    assert sorted(p.name for p in out.iterdir()) == ["other.parquet"]  # nor a lease left
    (out / "other.parquet").unlink()
    assert run_cli(*small_args(lite0_ir, out)).returncode == 0
    assert len(rows_by_name(out)) == 7
