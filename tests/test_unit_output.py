"""The output folder: part names, what is done after a scan, the lease, where an output may
be and what --overwrite may delete; plus the result rows. No Ray."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from effnet_ray.errors import UserError
from effnet_ray.inputs.batch import ImageBatch, stack
from effnet_ray.inputs.listing import Source, Unit
from effnet_ray.models.registry import load_class_names
from effnet_ray.options import LabelOptions
from effnet_ray.output.commit import Committer
from effnet_ray.output.layout import LEASE, Part
from effnet_ray.output.lease import Lease, LeaseLost, check_holder, read_holder
from effnet_ray.output.manifest import check_resumable, identity_of, write_manifest
from effnet_ray.output.place import check_place, clear
from effnet_ray.output.resume import scan, tidy
from effnet_ray.output.rows import parquet_bytes, result_table, top_k_ids
from effnet_ray.run.job import Summary
from effnet_ray.storage import open_fs, put_atomic

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

NAMES = load_class_names("imagenet_2012.txt")


def batch(errors, first=0, last=True, uid="0123456789abcdef", size=8):
    good = sum(e is None for e in errors)
    rng = np.random.default_rng(len(errors))
    return ImageBatch(uid=uid, first=first, last=last,
                      paths=[f"/in/{first + i}.jpg" for i in range(len(errors))],
                      errors=list(errors), source_labels=[None] * len(errors),
                      source_metadata=[None] * len(errors), input_sizes=[10] * len(errors),
                      input_versions=["v"] * len(errors),
                      images=rng.integers(0, 255, (good, size, size, 3), dtype=np.uint8))


# --- the payload and the rows ------------------------------------------------------------

@pytest.mark.parametrize("errors", [[None, "bad", None], [], ["a", "b"], [None]])
def test_image_batch_round_trips_through_arrow(errors):
    original = batch(errors)
    back = ImageBatch.from_arrow(original.to_arrow())
    assert back.paths == original.paths and back.errors == original.errors
    assert back.input_sizes == [10] * len(errors) and back.last is True
    np.testing.assert_array_equal(back.images, original.images)


def test_a_batch_refuses_images_that_do_not_match_its_rows():
    with pytest.raises(ValueError):
        ImageBatch("u", 0, True, ["a"], [None], [None], [None], [1], ["v"],
                   stack([], 4, 4))


def test_result_rows_put_logits_on_good_rows_and_nulls_on_errors():
    b = batch([None, "bad", None])
    logits = np.zeros((2, 1000), np.float32)
    logits[0, 967], logits[1, 281] = 9.0, 7.0
    table = result_table(b, logits, "m", NAMES, 3)
    rows = table.to_pylist()
    assert [r["class_id"] for r in rows] == [967, None, 281]
    assert rows[0]["label"] == "espresso" and rows[2]["label"] == "tabby"
    assert rows[1]["logits"] is None and rows[1]["top_k_ids"] is None
    assert rows[1]["error"] == "bad" and rows[1]["input_size"] == 10
    probs = rows[0]["top_k_probs"]
    assert probs == sorted(probs, reverse=True) and probs[0] > 0.8
    assert result_table(batch([]), np.zeros((0, 1000), np.float32), "m", NAMES, 5
                        ).num_rows == 0


@pytest.mark.parametrize("seed", range(20))
def test_top_k_is_a_stable_descending_argsort_cut_to_k(seed):
    """Reference: numpy's full stable argsort; integer scores make ties at the k-th place."""
    rng = np.random.default_rng(seed)
    rows, classes = int(rng.integers(1, 40)), int(rng.integers(1, 60))
    scores = (rng.integers(-3, 4, (rows, classes)) if seed % 2
              else rng.normal(size=(rows, classes))).astype(np.float32)
    if seed % 4 == 2:  # a broken model's NaNs: a whole row, a few, infinities
        scores[0] = np.nan
        scores[rng.random(scores.shape) < 0.3] = np.nan
        scores[rng.random(scores.shape) < 0.1] = np.inf
    for k in (1, 3, 5, classes, classes + 2):
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top_k_ids(scores, k), expected)


def test_parts_dictionary_encode_strings_and_not_floats():
    import pyarrow.parquet as pq

    logits = np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32)
    data = parquet_bytes(result_table(batch([None, None, None]), logits, "m", NAMES, 5))
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings
                 for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" in encodings["label"]
    assert "RLE_DICTIONARY" in encodings["top_k_labels.list.element"]
    assert "RLE_DICTIONARY" not in encodings["logits.list.element"]
    assert "RLE_DICTIONARY" not in encodings["top_k_probs.list.element"]


# --- part names and what is done ---------------------------------------------------------

def test_part_names_round_trip_and_foreign_names_do_not_parse():
    part = Part("0123456789abcdef", 32, 32, 1, True)
    assert part.name == "part-0123456789abcdef-0000032-n32-e1-last.parquet"
    assert Part.parse(part.name) == part
    for name in ("part-xyz.parquet", "data.parquet", "part-0123456789abcdef-1-n1-e0.parquet"):
        assert Part.parse(name) is None


def plant(folder, part, rows=None):
    table = result_table(batch([None] * (rows or part.rows), first=part.first, uid=part.uid),
                         np.zeros((rows or part.rows, 1000), np.float32), "m", NAMES, 1)
    fs, path = open_fs(str(folder))
    put_atomic(fs, f"{path}/{part.name}", parquet_bytes(table))


def test_scan_knows_what_is_done_from_names_alone(tmp_path):
    uid = "0123456789abcdef"
    plant(tmp_path, Part(uid, 0, 4, 0, False))
    plant(tmp_path, Part(uid, 4, 2, 0, True))
    plant(tmp_path, Part(uid, 4, 2, 1, True))  # a retried batch that came out differently
    (tmp_path / ".tmp-part-crashed").write_bytes(b"half")
    fs, path = open_fs(str(tmp_path))
    committed = scan(fs, path)
    assert committed.complete(uid, 4) and committed.done_starts(uid) == [0, 4]
    assert committed.totals() == (6, 0)
    assert len(committed.duplicates) == 1 and committed.leftovers == [".tmp-part-crashed"]
    assert not committed.complete("fedcba9876543210", 4)
    unit = Unit("files", tuple(Source("files", f"/in/{i}.jpg") for i in range(6)))
    tidy(fs, path, committed, [unit])  # the unit's id differs: its listed images are redone
    assert sorted(os.listdir(tmp_path)) == []


def test_a_part_missing_in_the_middle_leaves_the_unit_incomplete(tmp_path):
    uid = "0123456789abcdef"
    plant(tmp_path, Part(uid, 0, 4, 0, False))
    plant(tmp_path, Part(uid, 8, 1, 0, True))
    assert not scan(*open_fs(str(tmp_path))).complete(uid, 4)


# --- the lease ---------------------------------------------------------------------------

def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    fs, path = open_fs(str(tmp_path))
    lease = Lease.acquire(fs, path)
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getpid()} on"):
        Lease.acquire(fs, path)
    check_holder(fs, path, lease.token)
    lease.release()
    assert not (tmp_path / LEASE).exists()
    Lease.acquire(fs, path).release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    code = ("import sys; from effnet_ray.output.lease import Lease; from effnet_ray.storage import "
            "open_fs; Lease.acquire(*open_fs(sys.argv[1])); print('held')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "held" and (tmp_path / LEASE).exists()  # its process has ended
    fs, path = open_fs(str(tmp_path))
    old, _ = read_holder(fs, path)
    lease = Lease.acquire(fs, path)
    assert lease.token != old.token
    with pytest.raises(LeaseLost):
        check_holder(fs, path, old.token)  # the dead run's workers may write no more


def test_an_expired_or_broken_lease_is_taken_over(tmp_path):
    fs, path = open_fs(str(tmp_path))
    foreign = {"token": "t", "host": "elsewhere", "pid": 1, "process_start": "1",
               "started": "then", "heartbeat": time.time()}
    (tmp_path / LEASE).write_text(json.dumps(foreign))
    with pytest.raises(UserError, match="on elsewhere"):
        Lease.acquire(fs, path)
    Lease.acquire(fs, path, break_lease=True).release()
    (tmp_path / LEASE).write_text(json.dumps({**foreign, "heartbeat": time.time() - 3600}))
    Lease.acquire(fs, path).release()


@pytest.mark.parametrize("name", [LEASE, "_manifest.json"])
def test_a_folder_where_our_file_belongs_is_one_line_naming_it(tmp_path, name):
    (tmp_path / name).mkdir()
    fs, path = open_fs(str(tmp_path))
    with pytest.raises(UserError, match=f"^{tmp_path / name} is a folder where a file is "
                                        "expected; move it away$"):
        Lease.acquire(fs, path).release()
        check_resumable(fs, path, {"model": "m"})
    assert (tmp_path / name).is_dir()  # nothing outside the output's own files is deleted


def test_the_heartbeat_keeps_the_lease_and_notices_a_takeover(tmp_path):
    fs, path = open_fs(str(tmp_path))
    lease = Lease.acquire(fs, path)
    first = read_holder(fs, path)[0].heartbeat
    lease.start_heartbeat(every=0.05)
    time.sleep(0.3)
    assert read_holder(fs, path)[0].heartbeat > first and not lease.lost.is_set()
    Lease.acquire(fs, path, break_lease=True)
    assert lease.lost.wait(5)


def test_a_commit_after_losing_the_lease_writes_nothing(tmp_path):
    fs, path = open_fs(str(tmp_path))
    lease = Lease.acquire(fs, path)
    b = batch([None])
    table = result_table(b, np.zeros((1, 1000), np.float32), "m", NAMES, 1)
    Committer(str(tmp_path), lease.token)(b, table)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("part-")]) == 1
    with pytest.raises(LeaseLost):
        Committer(str(tmp_path), "another-run")(batch([None], first=8), table)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("part-")]) == 1


# --- where an output may be and what --overwrite deletes ---------------------------------

def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    for output, inputs in [(tmp_path / "in", [tmp_path / "in"]),
                           (tmp_path, [tmp_path / "in"]),
                           (tmp_path, [tmp_path / "in" / "a.jpg"]),
                           (tmp_path / "in", [f"{tmp_path}/in/*.jpg"])]:
        with pytest.raises(UserError, match="is or holds the input"):
            check_place(str(output), tuple(map(str, inputs)), {})
    check_place(str(tmp_path / "in" / "out"), (str(tmp_path / "in"),), {})
    os.symlink(tmp_path / "in", tmp_path / "alias")
    with pytest.raises(UserError, match="is or holds the input"):
        check_place(str(tmp_path / "alias"), (str(tmp_path / "in"),), {})
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        check_place(str(tmp_path / "file"), (str(tmp_path / "in"),), {})


# --- whether an output may be resumed ---------------------------------------------------

def made_with(out, inputs):
    """An output whose manifest holds `inputs` exactly as given (an old manifest kept them
    as typed)."""
    out.mkdir(exist_ok=True)
    fs, path = open_fs(str(out))
    made = {**identity_of(LabelOptions.build(["x"], str(out)), "0" * 64), "inputs": list(inputs)}
    write_manifest(fs, path, {"identity": made, "runs": []})
    return fs, path


def wanted(*inputs):
    return identity_of(LabelOptions.build(list(inputs), "out"), "0" * 64)


@pytest.mark.parametrize("typed", [["in"], ["in/"], ["./in"], ["{cwd}/in"], ["{cwd}/in/"],
                                   ["in", "in/"]])
@pytest.mark.parametrize("resumed", ["in", "in/", "./in", "{cwd}/in", "{cwd}/x/../in"])
def test_an_output_resumes_however_its_inputs_are_spelt(typed, resumed, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = made_with(tmp_path / "out", [t.format(cwd=tmp_path) for t in typed])
    assert check_resumable(fs, path, wanted(resumed.format(cwd=tmp_path))) is not None


def test_an_identity_holds_inputs_by_what_they_name_in_any_order_each_once(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert wanted("in", "s3://b/p/")["inputs"] == \
        wanted("s3://b/p", "./in/", f"{tmp_path}/in", "in")["inputs"] == \
        [f"{tmp_path}/in", "s3://b/p"]
    assert wanted("in")["inputs"] != wanted("in", "in2")["inputs"]


def test_inputs_in_another_order_or_repeated_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = made_with(tmp_path / "out", ["a", "s3://b/p/", "a/"])
    assert check_resumable(fs, path, wanted("S3://b/p", f"{tmp_path}/a")) is not None


@pytest.mark.parametrize("resumed", [["in2"], ["in", "in2"], ["in/sub"], ["IN"],
                                     ["in/*.jpg"], ["s3://b/in"]])
def test_other_inputs_are_still_refused_naming_the_difference(resumed, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = made_with(tmp_path / "out", ["in/"])
    with pytest.raises(UserError, match="made differently") as refused:
        check_resumable(fs, path, wanted(*resumed))
    message = str(refused.value)
    assert message.count("\n") == 0 and resumed[-1].split("/")[-1] in message


def test_the_same_relative_text_in_another_folder_is_another_input(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    made = identity_of(LabelOptions.build(["in"], "out"), "0" * 64)
    (tmp_path / "out").mkdir()
    fs, path = open_fs(str(tmp_path / "out"))
    write_manifest(fs, path, {"identity": made, "runs": []})
    assert made["inputs"] == [f"{tmp_path}/a/in"]
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(UserError, match="made differently"):
        check_resumable(fs, path, wanted("in"))
    assert check_resumable(fs, path, wanted("../a/in/")) is not None


def test_a_refusal_never_shows_credentials_an_old_manifest_kept(tmp_path):
    fs, path = made_with(tmp_path / "out", ["https://user:hunter2@h/in"])
    with pytest.raises(UserError, match=r"https://\*\*\*@h/in\"\] only there") as refused:
        check_resumable(fs, path, wanted("https://h/other"))
    assert "hunter2" not in str(refused.value)
    fs, path = made_with(tmp_path / "out", ["https://user:hunter2@h/in"])
    assert check_resumable(fs, path, wanted("https://other:pw@h/in")) is not None


def test_overwrite_deletes_only_what_this_tool_wrote(tmp_path):
    plant(tmp_path, Part("0123456789abcdef", 0, 1, 0, True))
    (tmp_path / "_manifest.json").write_text("{}")
    (tmp_path / ".tmp-x").write_text("")
    fs, path = open_fs(str(tmp_path))
    assert clear(fs, path) == 3 and os.listdir(tmp_path) == []
    (tmp_path / "holiday.jpg").write_bytes(b"precious")
    plant(tmp_path, Part("0123456789abcdef", 0, 1, 0, True))
    with pytest.raises(UserError, match=r"holds files this tool did not write \(holiday.jpg\)"):
        clear(fs, path)
    assert (tmp_path / "holiday.jpg").read_bytes() == b"precious"
    assert len(os.listdir(tmp_path)) == 2


def test_arrow_payload_keeps_its_types():
    table = batch([None, "x"]).to_arrow()
    assert table.schema.field("pixels").type == pa.large_binary() and table.num_rows == 1


@pytest.mark.parametrize("decode, infer, decoding, large, hint", [
    (30.0, 70.0, "exact", 10, True), (20.0, 80.0, "exact", 10, False),
    (60.0, 40.0, "fast", 10, False), (0.0, 0.0, "exact", 10, False),
    (0.5, 0.5, "exact", 10, False), (30.0, 70.0, "exact", 0, False),
    (30.0, 70.0, "exact", 2, False), (30.0, 70.0, "exact", 3, True)])
def test_the_summary_splits_the_cpu_and_names_fast_decoding_when_decoding_dominates(
        decode, infer, decoding, large, hint):
    """Small photos decode slowly only relative to a nearly free model: fast decoding would
    not shrink them, so the hint needs a quarter of the images to be large JPEGs."""
    text = str(Summary(images=10, errors=0, this_run=10, wall_seconds=5.0, output="out",
                       decode_cpu_seconds=decode, inference_cpu_seconds=infer,
                       decoding=decoding, large_jpegs=large))
    assert ("CPU this run: decoding" in text) == bool(decode + infer)
    assert ("--decode fast" in text) == hint
    if hint:
        assert f"decoding took {decode / (decode + infer):.0%} of the CPU" in text
