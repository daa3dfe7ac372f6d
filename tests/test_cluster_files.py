"""What can be checked of the container images and the KubeRay manifest without Docker:
versions agree with pyproject.toml and with the Ray these tests run on, and every path the
images and the manifest name exists in the repository."""

import re
import shlex
import tomllib
from importlib import metadata

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
GPU_DOCKERFILE = (ROOT / "docker" / "Dockerfile.intel-gpu").read_text()
RAYJOB = yaml.safe_load((ROOT / "docker" / "rayjob.yaml").read_text())


def build_arg(text, name):
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert match, f"no default for ARG {name}"
    return match.group(1)


def dependency(name):
    for spec in PYPROJECT["project"]["dependencies"]:
        match = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?(.*)$", spec)
        if match:
            return SpecifierSet(match.group(2))
    raise AssertionError(f"{name} is not a dependency")


def test_image_ray_version_is_the_pinned_and_tested_one():
    ray_version = build_arg(DOCKERFILE, "RAY_VERSION")
    assert Version(ray_version) in dependency("ray")
    assert ray_version == metadata.version("ray"), "the image must run the Ray we test with"
    assert 'FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-cpu' in DOCKERFILE
    assert '"ray[data,default]==${RAY_VERSION}"' in DOCKERFILE


def test_image_python_is_one_pyproject_allows():
    tag = build_arg(DOCKERFILE, "PYTHON")
    major, minor = re.fullmatch(r"py(\d)(\d+)", tag).groups()
    assert Version(f"{major}.{minor}") in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_everything_the_image_copies_exists():
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY"):
            sources = [a for a in shlex.split(line)[1:-1] if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source


def test_gpu_image_builds_on_the_cpu_image():
    base = build_arg(GPU_DOCKERFILE, "BASE")
    assert "FROM ${BASE}" in GPU_DOCKERFILE
    assert base == f"effnet-ray:{PYPROJECT['project']['version']}"
    assert "intel-opencl-icd" in GPU_DOCKERFILE  # OpenVINO's GPU plugin runs on OpenCL


def test_rayjob_runs_the_job_entry_point_of_the_image():
    spec = RAYJOB["spec"]
    assert RAYJOB["kind"] == "RayJob" and RAYJOB["apiVersion"] == "ray.io/v1"
    assert spec["rayClusterSpec"]["rayVersion"] == build_arg(DOCKERFILE, "RAY_VERSION")
    command = shlex.split(spec["entrypoint"])
    assert command[0] == "python"
    # the image puts the repository at /home/ray/effnet-ray (WORKDIR + COPY)
    workdir = re.search(r"^WORKDIR (\S+)$", DOCKERFILE, re.MULTILINE).group(1)
    script = command[1]
    assert script.startswith(workdir + "/")
    assert (ROOT / script.removeprefix(workdir + "/")).is_file()
    pool = command[command.index("--pool") + 1]
    assert (ROOT / "configs" / "pools" / f"{pool}.toml").is_file()
    images = [c["image"] for group in [spec["rayClusterSpec"]["headGroupSpec"],
                                       *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]]
    assert set(images) == {f"effnet-ray:{PYPROJECT['project']['version']}"}


def test_job_arguments_are_those_of_the_cli():
    from effnet_ray.cli import build_parser

    spec = RAYJOB["spec"]
    args = shlex.split(spec["entrypoint"])[2:]
    parsed = build_parser().parse_args(["label", *args])
    assert parsed.output.startswith("s3://") and parsed.model_path.startswith("s3://")
