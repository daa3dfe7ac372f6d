"""`effnet-ray label` end to end on a real local Ray and real OpenVINO (Lite0 for speed)."""

import shutil

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import effnet_ray
from effnet_ray.models.registry import PHOTOS, get_spec, load_class_names
from tests.helpers import F32_TOLERANCE, one_line_error, run_cli
from tests.reference import PlainOpenVINO, omz_preprocess, rel_l2


def read_output(folder):
    return pads.dataset(folder, format="parquet").to_table()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, odd_photos):
    """Bundled photos, odd sizes and modes, a nested folder, an extensionless JPEG and a
    broken file; plus a text file that must not be taken."""
    folder = tmp_path_factory.mktemp("inputs")
    for path in PHOTOS.glob("*.*"):
        if path.suffix != ".md":
            shutil.copy(path, folder / path.name)
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True)
    for path in odd_photos.iterdir():
        shutil.copy(path, nested / path.name)
    shutil.copy(PHOTOS / "coffee.jpg", nested / "coffee-without-extension")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


@pytest.fixture(scope="module")
def lite0_run(inputs, lite0_ir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "labels"
    result = run_cli("label", inputs, "--output", out, "--model", "efficientnet-lite0",
                     "--model-path", lite0_ir, "--precision", "f32", "--batch-size", "4",
                     "--unit-size", "5")
    assert result.returncode == 0, result.stderr
    return result, read_output(out)


def expected_paths(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name != "notes.txt")


def test_every_input_exactly_once(lite0_run, inputs):
    _, table = lite0_run
    paths = table.column("path").to_pylist()
    assert sorted(paths) == expected_paths(inputs)
    assert len(set(paths)) == len(paths)


def test_output_schema(lite0_run):
    _, table = lite0_run
    schema = table.schema
    assert schema.field("path").type == pa.string()
    assert schema.field("model").type == pa.string()
    assert schema.field("class_id").type == pa.int32()
    assert schema.field("label").type == pa.string()
    assert schema.field("top_k_ids").type == pa.list_(pa.int32())
    assert schema.field("top_k_labels").type == pa.list_(pa.string())
    assert schema.field("top_k_probs").type == pa.list_(pa.float32())
    assert schema.field("logits").type == pa.list_(pa.float32(), 1000)
    assert schema.field("error").type == pa.string()
    assert schema.field("input_size").type == pa.int64()
    assert schema.field("input_version").type == pa.string()


def test_logits_equal_a_plain_openvino_run(lite0_run, lite0_ir):
    _, table = lite0_run
    plain = PlainOpenVINO(lite0_ir)
    spec = get_spec("efficientnet-lite0")
    checked = 0
    for row in table.to_pylist():
        if row["error"]:
            continue
        expected = plain.logits(omz_preprocess(row["path"], spec.name), spec.input.color)
        assert rel_l2(row["logits"], expected) < F32_TOLERANCE, row["path"]
        checked += 1
    assert checked >= 14


def test_top_k_is_the_softmax_of_the_logits(lite0_run):
    _, table = lite0_run
    labels = load_class_names("imagenet_2012.txt")
    for row in table.to_pylist():
        if row["error"]:
            continue
        logits = np.array(row["logits"], dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = list(np.argsort(-logits)[:5])
        assert row["top_k_ids"] == best and row["class_id"] == best[0]
        assert row["label"] == labels[best[0]]
        assert row["top_k_labels"] == [labels[i] for i in best]
        np.testing.assert_allclose(row["top_k_probs"], probs[best], rtol=1e-5)


def test_known_photos_get_their_classes(lite0_run):
    _, table = lite0_run
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert 281 <= by_name["chelsea.jpg"]["class_id"] <= 285
    assert by_name["coffee.jpg"]["class_id"] in (967, 968)
    assert by_name["coffee-without-extension"]["class_id"] in (967, 968)


def test_a_broken_file_is_a_row_with_its_reason(lite0_run):
    result, table = lite0_run
    rows = [r for r in table.to_pylist() if r["path"].endswith("broken.jpg")]
    assert len(rows) == 1
    row = rows[0]
    assert "not a recognised image" in row["error"]
    assert row["class_id"] is None and row["logits"] is None and row["top_k_ids"] is None
    assert "1 errors" in result.stdout


def test_output_reads_as_one_dataset_in_pandas_and_duckdb(lite0_run, inputs, tmp_path):
    result, table = lite0_run
    first = next(ln for ln in result.stdout.splitlines() if "output: " in ln)
    out = first.rsplit("output: ", 1)[1]
    frame = pd.read_parquet(out)
    assert len(frame) == table.num_rows
    count, errors = duckdb.sql(
        f"select count(*), count(error) from read_parquet('{out}/*.parquet')").fetchall()[0]
    assert count == len(expected_paths(inputs)) and errors == 1


def test_python_api_runs_the_same_job(lite0_ir, tmp_path):
    states = []
    options = effnet_ray.LabelOptions(
        inputs=(str(PHOTOS / "chelsea.jpg"), str(PHOTOS / "coffee.jpg")),
        output=str(tmp_path / "out"),
        inference=effnet_ray.InferenceOptions(model="efficientnet-lite0",
                                              model_path=str(lite0_ir), top_k=3))
    summary = effnet_ray.label(options, progress=states.append)
    assert isinstance(summary, effnet_ray.Summary)
    assert all(isinstance(s, effnet_ray.ProgressState) for s in states) and states[-1].done == 2
    assert (summary.images, summary.labelled, summary.errors) == (2, 2, 0)
    table = read_output(tmp_path / "out")
    assert all(len(ids) == 3 for ids in table.column("top_k_ids").to_pylist())


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/photos", "--output", "{tmp}/out"], "does not exist"),
    (["{photos}/*.nothing", "--output", "{tmp}/out"], "matches nothing"),
    (["{photos}", "--output", "/etc/hostname/out"], "not writable"),
    (["{photos}", "--output", "{tmp}/out", "--device", "TPU"], "unknown device"),
    (["{photos}", "--output", "{tmp}/out", "--device", "GPU"], "not available"),
    (["{photos}", "--output", "{tmp}/out", "--precision", "f64"], "unknown precision"),
    (["{photos}", "--output", "{tmp}/out", "--top-k", "0"], "--top-k"),
    (["{photos}", "--output", "{tmp}/out", "--batch-size", "0"], "--batch-size"),
    (["{photos}", "--output", "{tmp}/out", "--model", "resnet"], "unknown model"),
    (["{photos}", "--output", "{tmp}/out", "--model-path", "{tmp}/none.xml"], "does not exist"),
    (["{photos}", "--output", "{tmp}/out", "--top-k", "many"], "invalid int value"),
])
def test_bad_arguments_stop_before_any_work(args, message, lite0_ir, tmp_path):
    args = [a.format(tmp=tmp_path, photos=PHOTOS) for a in args]
    if "--model" not in args and "--model-path" not in args:
        args += ["--model", "efficientnet-lite0", "--model-path", str(lite0_ir)]
    result = run_cli("label", *args)
    one_line_error(result, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_model_file_that_breaks_the_contract_is_refused(lite0_ir, tmp_path):
    result = run_cli("label", PHOTOS, "--output", tmp_path / "out", "--model",
                     "efficientnet-b7_auto_aug", "--model-path", lite0_ir)
    one_line_error(result, "input is named ['data']", "sub/placeholder_port_0")


def test_unsupported_precision_on_this_device(lite0_ir, tmp_path):
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    precision = "f16" if "FP16" not in caps else ("bf16" if "BF16" not in caps else None)
    if precision is None:
        pytest.skip("this CPU supports every precision")
    result = run_cli("label", PHOTOS, "--output", tmp_path / "out", "--model",
                     "efficientnet-lite0", "--model-path", lite0_ir, "--precision", precision)
    one_line_error(result, f"cannot infer in {precision}")


def test_demo_labels_the_cat_and_the_coffee(tmp_path):
    result = run_cli("demo", "--output", tmp_path / "demo", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    rows = {r["path"].rsplit("/", 1)[1]: r
            for r in read_output(tmp_path / "demo").to_pylist()}
    assert 281 <= rows["chelsea.jpg"]["class_id"] <= 285
    assert rows["coffee.jpg"]["class_id"] in (967, 968)
    assert "chelsea.jpg" in result.stdout and "espresso" in result.stdout
