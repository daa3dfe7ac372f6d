"""Fixtures shared by the test modules; plain helpers live in tests/helpers.py."""

import os

import pytest
from PIL import Image, ImageOps

from effnet_ray.models.cache import one_at_a_time
from effnet_ray.models.registry import PHOTOS
from tests.helpers import B7_SEEDS, IMAGES, S3_SECRET, run_cli, start_moto

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def odd_photos(tmp_path_factory):
    """Real photos in the sizes and modes that break naive preprocessing."""
    folder = tmp_path_factory.mktemp("odd")
    chelsea = Image.open(PHOTOS / "chelsea.jpg")
    rocket = Image.open(PHOTOS / "rocket.jpg")
    hubble = Image.open(PHOTOS / "hubble_deep_field.jpg")
    astronaut = Image.open(PHOTOS / "astronaut.png")
    made = {
        "wide.jpg": hubble.crop((0, 200, 1000, 533)),
        "tall.jpg": rocket.transpose(Image.Transpose.ROTATE_90),
        "small.png": chelsea,  # 451x300: smaller than 600 on both sides
        "gray.png": Image.open(PHOTOS / "camera.png"),
        "rgba.png": Image.open(PHOTOS / "logo.png"),
        # 602x400: the 632-resize leaves a margin of 351, where round-half-even and floor
        # place the crop one pixel apart
        "odd602.png": astronaut.crop((0, 0, 512, 400)).resize((602, 400)),
        "palette.gif": chelsea.convert("P"),
        "tiny.png": chelsea.crop((200, 100, 229, 137)),
    }
    for name, image in made.items():
        image.save(folder / name)
    return folder


@pytest.fixture(scope="session")
def lite0_ir(cache_dir):
    result = run_cli("models", "prepare", "efficientnet-lite0", "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    return cache_dir / "models" / "efficientnet-lite0" / "model.xml"


@pytest.fixture(scope="session")
def b7_irs(tmp_path_factory):
    """Both seed models as `models prepare --random-weights` writes them, built once (minutes
    of CPU) even for parallel workers (pytest-xdist): one that comes second waits, then
    finds them."""
    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "b7-cache"
    paths = {}
    with one_at_a_time(cache):
        for name in B7_SEEDS:
            result = run_cli("models", "prepare", name, "--random-weights", "--seed", "0",
                             "--cache-dir", cache)
            assert result.returncode == 0, result.stderr
            paths[name] = cache / "models" / f"{name}-random-seed0" / "model.xml"
    return paths


@pytest.fixture(scope="session")
def b7_net():
    """The PyTorch source of both random-weights IRs (same seed, same calibration)."""
    from effnet_ray.models.registry import get_spec
    from effnet_ray.prepare.convert import random_network

    return random_network(get_spec("efficientnet-b7-pytorch"), seed=0)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """A real S3 API server on loopback (moto_server), with the variables a user would set.

    Its request recorder (off until a test starts it) writes to a temporary file."""
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    proc, port = start_moto({"MOTO_RECORDER_FILEPATH": str(recording)})
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "effnetkey",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    yield env
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3(s3_env):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                             key=s3_env["AWS_ACCESS_KEY_ID"],
                             secret=s3_env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="session")
def many_photos(tmp_path_factory):
    """84 distinct real photos: crops and mirrors of the bundled ones, at most 320 px."""
    folder = tmp_path_factory.mktemp("many")
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir())
              if p.suffix != ".md"]
    for k in range(IMAGES // len(photos)):
        for j, photo in enumerate(photos):
            w, h = photo.size
            variant = photo.crop((k * 7 % (w // 4), k * 5 % (h // 4), w - k * 3 % (w // 4), h))
            variant = ImageOps.mirror(variant) if k % 2 else variant
            variant.thumbnail((320, 320))
            variant.save(folder / f"img{k * len(photos) + j:03d}.jpg", quality=90)
    assert len(list(folder.iterdir())) == IMAGES
    return folder

