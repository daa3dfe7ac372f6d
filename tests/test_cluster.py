"""A real multi-node Ray cluster on this machine (`ray start`: a head and two workers with
different resources), jobs submitted through the Jobs API from jobs/, and where the inference
actors really ran."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from effnet_ray.models.ir import ir_sha256
from effnet_ray.models.registry import PHOTOS
from tests.helpers import IMAGES, ROOT, S3Requests, free_port, pids_where, rows_by_name

RAY = str(Path(sys.executable).parent / "ray")
JOB_ARGS = ["--model", "efficientnet-lite0", "--precision", "f32", "--batch-size", "2",
            "--unit-size", "3", "--pool", "cpu-pinned"]


def _ray_start(env, *args):
    result = subprocess.run([RAY, "start", "--node-ip-address", "127.0.0.1",
                             "--object-store-memory", str(300 * 2**20), "--disable-usage-stats",
                             "--dashboard-agent-listen-port", str(free_port()), *args],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """head: 1 CPU; worker "ov": 2 CPUs, ov_cpu=2 and the label pool=inference; worker
    "plain": 1 CPU. Each node has its own model cache, as separate machines would."""
    caches = {name: tmp_path_factory.mktemp(f"cache-{name}") for name in ("head", "ov", "plain")}
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    port, dashboard = free_port(), free_port()
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    try:
        _ray_start({**env, "EFFNET_RAY_CACHE": str(caches["head"])}, "--head",
                   "--port", str(port), "--num-cpus", "1", "--include-dashboard", "true",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard))
        _ray_start({**env, "EFFNET_RAY_CACHE": str(caches["ov"])},
                   "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                   "--resources", json.dumps({"ov_cpu": 2}), "--labels", "pool=inference")
        _ray_start({**env, "EFFNET_RAY_CACHE": str(caches["plain"])},
                   "--address", f"127.0.0.1:{port}", "--num-cpus", "1")
        api = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while len([n for n in list_nodes(address=api) if n.state == "ALIVE"]) < 3:
            assert time.time() < deadline, "the cluster's nodes did not come up"
            time.sleep(1)
        yield {"api": api, "caches": caches}
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def submit(cluster, entrypoint, runtime_env, timeout=600):
    client = JobSubmissionClient(cluster["api"])
    job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    deadline = time.time() + timeout
    while (status := client.get_job_status(job)) not in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {job} still {status}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    return job, logs


def classifier_nodes(cluster, job):
    """The nodes the inference actors of `job` ran on (Ray's own record, dead ones too).

    An actor Ray never placed has no node: decoding tasks may hold the CPUs of an inference
    node until the end of a short run."""
    actors = [a for a in list_actors(address=cluster["api"], detail=True, limit=10_000)
              if "Classifier" in a.class_name and a.job_id == job_ids(cluster)[job]]
    placed = [a.node_id for a in actors if a.node_id]
    assert placed, "no inference actor ran"
    return placed


def job_ids(cluster):
    client = JobSubmissionClient(cluster["api"])
    return {j.submission_id: j.job_id for j in client.list_jobs()}


def nodes_with(cluster, resource):
    return {n.node_id for n in list_nodes(address=cluster["api"], detail=True)
            if n.resources_total.get(resource, 0) > 0}


def documented_runtime_env():
    env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    return {**env, "working_dir": str(ROOT)}


def test_job_submitted_from_jobs_runs_its_actors_only_where_asked(cluster, lite0_ir,
                                                                 tmp_path):
    out = tmp_path / "out"
    job, logs = submit(cluster, " ".join(
        ["python", "jobs/label.py", str(PHOTOS), "--output", str(out),
         "--model-path", str(lite0_ir), *JOB_ARGS]), documented_runtime_env())
    rows = rows_by_name(out)
    assert len(rows) == 7 and not any(r["error"] for r in rows.values())
    assert 281 <= rows["chelsea.jpg"]["class_id"] <= 285
    assert "inference: 2 actor(s)" in logs  # auto: the ov node holds two
    assert set(classifier_nodes(cluster, job)) <= nodes_with(cluster, "ov_cpu")


def test_actors_follow_node_labels_too(cluster, lite0_ir, tmp_path):
    out = tmp_path / "out"
    job, logs = submit(cluster, " ".join(
        ["python", "jobs/label.py", str(PHOTOS), "--output", str(out), "--model-path",
         str(lite0_ir), *JOB_ARGS[:-2], "--actors", "auto",
         "--actor-labels", shlex.quote(json.dumps({"pool": "inference"}))]),
        documented_runtime_env())
    assert len(rows_by_name(out)) == 7
    assert "inference: 2 actor(s)" in logs
    labelled = {n.node_id for n in list_nodes(address=cluster["api"], detail=True)
                if n.labels.get("pool") == "inference"}
    assert len(labelled) == 1 and set(classifier_nodes(cluster, job)) == labelled


def test_job_with_the_model_in_s3_fetches_it_once_per_node(cluster, lite0_ir, s3, s3_env,
                                                          tmp_path):
    s3.mkdir("models")
    s3.put(str(lite0_ir), "models/lite0/model.xml")
    s3.put(str(lite0_ir.with_suffix(".bin")), "models/lite0/model.bin")
    out = tmp_path / "out"
    runtime_env = {"working_dir": str(ROOT), "env_vars": s3_env,
                   "excludes": documented_runtime_env()["excludes"]}
    with S3Requests(s3_env["AWS_ENDPOINT_URL"]) as requests:
        job, _ = submit(cluster, " ".join(
            ["python", "jobs/label.py", str(PHOTOS), "--output", str(out),
             "--model-path", "s3://models/lite0/model.xml", *JOB_ARGS]), runtime_env)
    rows = rows_by_name(out)
    assert len(rows) == 7 and not any(r["error"] for r in rows.values())
    sha = ir_sha256(lite0_ir)
    # the driver (head node) and the ov node each fetched it once, for two actors
    fetched = [name for name, cache in cluster["caches"].items()
               if (cache / "fetched" / sha / "model.xml").is_file()]
    assert sorted(fetched) == ["head", "ov"]
    bin_gets = [r for r in requests.gets() if r == "models/lite0/model.bin"]
    assert len(bin_gets) == 2
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["identity"]["ir_sha256"] == sha
    assert manifest["runs"][-1]["model_path"] == "s3://models/lite0/model.xml"
    shutil.rmtree(cluster["caches"]["ov"] / "fetched")


def _node_processes(cache):
    """Every process of one `ray start` node: they all inherit its EFFNET_RAY_CACHE."""
    marker = f"EFFNET_RAY_CACHE={cache}".encode()
    return pids_where("environ", lambda environ: marker in environ.split(b"\0"))


def test_a_worker_node_lost_mid_run_costs_only_its_work_in_flight(cluster, lite0_ir,
                                                                   many_photos, tmp_path):
    """Runs last: it kills the plain worker node (its raylet and workers) while the job runs.
    The job must still finish with every input exactly once and nothing labelled twice."""
    out = tmp_path / "out"
    client = JobSubmissionClient(cluster["api"])
    runtime_env = {"working_dir": str(ROOT), "excludes": documented_runtime_env()["excludes"]}
    job = client.submit_job(entrypoint=" ".join(
        ["python", "jobs/label.py", str(many_photos), "--output", str(out), "--model-path",
         str(lite0_ir), *JOB_ARGS[:4], "--batch-size", "4", "--unit-size", "8",
         "--pool", "cpu-pinned", "--no-compact"]), runtime_env=runtime_env)
    deadline = time.time() + 300
    while not list(out.glob("part-*.parquet")):
        assert time.time() < deadline and client.get_job_status(job) in (
            JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)
        time.sleep(0.1)
    victims = _node_processes(cluster["caches"]["plain"])
    assert victims, "the plain node has no processes"
    committed_at_kill = len(list(out.glob("part-*.parquet")))
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    while (status := client.get_job_status(job)) not in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline + 300, f"job still {status}"
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert committed_at_kill < len(list(out.glob("part-*.parquet")))
    # Ray marks a node dead once its health checks have failed for a while, which can be
    # after a short job has already finished.
    deadline = time.time() + 120
    while not (dead := [n for n in list_nodes(address=cluster["api"], detail=True)
                        if n.state == "DEAD"]) and time.time() < deadline:
        time.sleep(2)
    assert len(dead) == 1 and dead[0].resources_total.get("CPU") == 1, "Ray saw no node die"
    rows = rows_by_name(out)
    assert len(rows) == IMAGES and not any(r["error"] for r in rows.values())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["runs"][-1]["this_run"] == IMAGES and manifest["status"] == "complete"
