"""`effnet-ray models`: prepared IRs honour their contracts and equal their PyTorch source."""

import hashlib
import http.server
import os
import threading

import numpy as np
import openvino as ov
import pytest
import torch

from effnet_ray.errors import UserError
from effnet_ray.models.ir import metadata
from effnet_ray.models.registry import PHOTOS, get_spec
from effnet_ray.prepare.convert import pretrained_network
from effnet_ray.prepare.weights import download, packaged_weights
from tests.helpers import F32_TOLERANCE, normalised, one_line_error, run_cli
from tests.reference import omz_preprocess, rel_l2, to_ir_input


def test_models_list_names_every_model(cache_dir):
    result = run_cli("models", "list", "--cache-dir", cache_dir)
    assert result.returncode == 0
    for name in ("efficientnet-b7-pytorch", "efficientnet-b7_auto_aug", "efficientnet-lite0"):
        assert name in result.stdout


def test_lite0_ir_honours_its_contract(lite0_ir):
    model = ov.Core().read_model(lite0_ir)
    spec = get_spec("efficientnet-lite0")
    assert model.inputs[0].get_names() == {"data"}
    assert tuple(model.inputs[0].get_shape()) == (1, 3, 224, 224)
    assert model.outputs[0].get_names() == {"logits"}
    assert tuple(model.outputs[0].get_shape()) == (1, 1000)
    meta = metadata(model)
    assert meta["model"] == spec.name and meta["random_weights"] is False
    assert meta["weights_sha256"] == spec.source.weights_sha256


def test_lite0_ir_equals_pytorch_and_knows_cats_and_coffee(lite0_ir):
    spec = get_spec("efficientnet-lite0")
    net = pretrained_network(spec, packaged_weights(spec.source.weights_package,
                                                    spec.source.weights_file))
    compiled = ov.Core().compile_model(lite0_ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    top = {}
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "camera.png"):
        rgb = omz_preprocess(PHOTOS / name, spec.name)
        with torch.no_grad():
            expected = net(normalised(rgb, spec)).numpy()[0]
        got = compiled(to_ir_input(rgb, "NCHW", "RGB"))[0][0]
        assert rel_l2(got, expected) < F32_TOLERANCE
        top[name] = int(np.argmax(got))
    assert 281 <= top["chelsea.jpg"] <= 285
    assert top["coffee.jpg"] in (967, 968)


def test_prepare_is_idempotent(lite0_ir, cache_dir):
    before = os.stat(lite0_ir).st_mtime_ns
    result = run_cli("models", "prepare", "efficientnet-lite0", "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    assert os.stat(lite0_ir).st_mtime_ns == before


def test_unknown_model_name(tmp_path):
    one_line_error(run_cli("models", "prepare", "efficientnet-b9", "--cache-dir", tmp_path),
                   "unknown model 'efficientnet-b9'")


def test_wrong_checksum_is_refused(tmp_path):
    weights = tmp_path / "tf_efficientnet_b7_aa-076e3472.pth"
    weights.write_bytes(os.urandom(4096))
    one_line_error(run_cli("models", "prepare", "efficientnet-b7-pytorch", "--weights", weights,
                           "--cache-dir", tmp_path), "sha256", "expected 076e3472")


def test_weights_for_another_architecture_are_refused(tmp_path):
    spec = get_spec("efficientnet-lite0")
    lite0 = packaged_weights(spec.source.weights_package, spec.source.weights_file)
    one_line_error(run_cli("models", "prepare", "efficientnet-b7-pytorch", "--weights", lite0,
                           "--no-verify", "--cache-dir", tmp_path),
                   "does not fit tf_efficientnet_b7")


def test_corrupt_cached_ir_is_a_clear_error(tmp_path):
    folder = tmp_path / "models" / "efficientnet-lite0"
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net><layers>garbage")
    (folder / "model.bin").write_bytes(b"\0" * 10)
    one_line_error(run_cli("models", "prepare", "efficientnet-lite0", "--cache-dir", tmp_path),
                   "corrupt", "--force")


class RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours Range; can drop the first response half-way."""

    payload = b""
    drop_first = False
    ranges: list = []

    def do_GET(self):  # noqa: N802
        start = 0
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        if header:
            start = int(header.split("=")[1].split("-")[0])
        body = self.payload[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).drop_first:
            type(self).drop_first = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def weights_server():
    RangeServer.payload = os.urandom(3 * 2**20 + 123)
    RangeServer.ranges = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/weights.pth"
    server.shutdown()
    server.server_close()


def test_download_resumes_after_a_dropped_connection(weights_server, tmp_path):
    _, url = weights_server
    sha = hashlib.sha256(RangeServer.payload).hexdigest()
    dest = tmp_path / "weights.pth"
    RangeServer.drop_first = True
    with pytest.raises(UserError, match="rerun to resume"):
        download(url, dest, sha, progress=False)
    partial = (tmp_path / "weights.pth.part").stat().st_size
    assert 0 < partial < len(RangeServer.payload)
    assert download(url, dest, sha, progress=False) == dest
    assert RangeServer.ranges[-1] == f"bytes={partial}-"
    assert dest.read_bytes() == RangeServer.payload


def test_download_with_wrong_checksum_keeps_nothing(weights_server, tmp_path):
    _, url = weights_server
    with pytest.raises(UserError, match="sha256"):
        download(url, tmp_path / "w.pth", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prepare_downloads_from_the_url_and_verifies(weights_server, tmp_path):
    _, url = weights_server  # serves bytes that are not B7's weights
    one_line_error(run_cli("models", "prepare", "efficientnet-b7-pytorch", "--weights-url", url,
                           "--cache-dir", tmp_path), "sha256", "expected 076e3472")


def test_unreachable_weights_url_is_a_clear_error(tmp_path):
    one_line_error(run_cli("models", "prepare", "efficientnet-b7-pytorch", "--weights-url",
                           "http://127.0.0.1:9/none.pth", "--cache-dir", tmp_path),
                   "cannot download")
