"""Ground truth and accuracy on synthetic outputs, against a plain row-by-row count; ground
truth files as people write them; evaluate and report through the CLI on an output made by
hand (no Ray)."""

import json
import os
import re

import numpy as np
import pyarrow as pa
import pytest

from effnet_ray.errors import UserError
from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.models.registry import load_class_names, load_wnids
from effnet_ray.output.layout import Part
from effnet_ray.output.manifest import write_manifest
from effnet_ray.output.rows import parquet_bytes, result_table
from effnet_ray.results.evaluate import calibration_error, describe, evaluate_table
from effnet_ray.results.report import write_report
from effnet_ray.results.truth import (
    CONFLICT,
    NO_ENTRY,
    UNKNOWN,
    from_file,
    ground_truth,
    read_truth_file,
)
from effnet_ray.storage import open_fs, put_atomic
from tests.helpers import one_line_error, run_cli

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

WNIDS = load_wnids("imagenet_2012.txt")
NAMES = load_class_names("imagenet_2012.txt")


def output_table(rows, k=5):
    """rows: (path, top ids or None for an error row, source_label)."""
    rng = np.random.default_rng(0)
    probs = []
    for _, ids, _ in rows:
        if ids is None:
            probs.append(None)
        else:
            p = np.sort(rng.dirichlet(np.ones(k + 1)))[::-1][:k]
            probs.append(p.astype(np.float32).tolist())
    return pa.table({
        "path": [r[0] for r in rows],
        "model": ["efficientnet-lite0"] * len(rows),
        "class_id": pa.array([None if r[1] is None else r[1][0] for r in rows], pa.int32()),
        "top_k_ids": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
        "top_k_probs": pa.array(probs, pa.list_(pa.float32())),
        "error": [("bad" if r[1] is None else None) for r in rows],
        "source_label": pa.array([r[2] for r in rows], pa.string()),
    })


def plain_count(table, truth):
    """The independent reference: a loop over rows."""
    right1 = right5 = n = 0
    for row, actual in zip(table.to_pylist(), truth, strict=True):
        if row["error"] is None and actual is not None:
            n += 1
            right1 += row["top_k_ids"][0] == actual
            right5 += actual in row["top_k_ids"][:5]
    return n, right1 / n, right5 / n


def test_ground_truth_from_each_source_in_order(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("path,class_id\n/data/a.jpg,1\nb.jpg,2\nshared.jpg,3\nx/shared.jpg,4\n")
    rows = [
        ("/data/a.jpg", [1, 2, 3, 4, 5], "7"),  # the file wins over the source label
        ("/else/b.jpg", [2, 0, 0, 0, 0], None),  # by file name
        ("s.tar::b", [9, 2, 0, 0, 0], None),  # by stem: a key has no extension
        ("/y/shared.jpg", [3, 4, 0, 0, 0], None),  # listed twice by name: no match
        ("s.tar::k", [7, 0, 0, 0, 0], " 7\n"),  # a .cls
        ("s.tar::w", [7, 0, 0, 0, 0], WNIDS[12]),  # a .cls holding a WordNet id
        (f"/imagenet/{WNIDS[42]}/ILSVRC.JPEG", [42, 0, 0, 0, 0], None),  # class folder
        (f"s.tar::{WNIDS[5]}/x", [5, 0, 0, 0, 0], None),  # class folder inside a shard
        ("/nothing.jpg", [1, 0, 0, 0, 0], "not a class"),
        ("/big.jpg", [1, 0, 0, 0, 0], "1000"),  # out of range
    ]
    table = output_table(rows)
    truth = ground_truth(table.column("path"), table.column("source_label"), WNIDS,
                         read_truth_file(str(gt)))
    assert truth.classes.tolist() == [1, 2, 2, UNKNOWN, 7, 12, 42, 5, UNKNOWN, UNKNOWN]
    assert truth.counts == {"file": 3, "source_label": 2, "class folder": 2}
    ignored = [p for p in truth.problems if p["kind"] == "unusable_source_labels"]
    assert ignored == [{"kind": "unusable_source_labels", "count": 2, "message": (
        "2 rows: source label (.cls) neither a class id in 0-999 nor a WordNet id, ignored "
        "(e.g. /nothing.jpg: 'not a class')")}]


def test_imagenet_validation_format(tmp_path):
    gt = tmp_path / "val.txt"
    gt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n\n")
    entries = read_truth_file(str(gt))
    paths = pa.array(["/v/ILSVRC2012_val_00000002.JPEG", "/v/ILSVRC2012_val_00000001.JPEG",
                      "/v/other.JPEG"])
    assert from_file(paths, entries).tolist() == [1, 0, NO_ENTRY]
    assert entries.column("class_id").to_pylist() == [65, 970]
    (tmp_path / "bad.txt").write_text("just words here\n")
    with pytest.raises(UserError, match=r"line 1: class id 'here' is not an integer"):
        read_truth_file(str(tmp_path / "bad.txt"))


def test_accuracy_equals_a_plain_count_and_rows_without_truth_count_apart():
    rng = np.random.default_rng(1)
    rows, truth = [], []
    for i in range(2000):
        actual = int(rng.integers(0, 1000))
        ids = rng.choice(1000, 5, replace=False).tolist()
        roll = rng.random()
        if roll < 0.5:
            ids[0] = actual
        elif roll < 0.7:
            ids[int(rng.integers(1, 5))] = actual if actual not in ids else ids[1]
        error = rng.random() < 0.05
        has_truth = rng.random() < 0.9
        rows.append((f"/d/{i}.jpg", None if error else ids,
                     str(actual) if has_truth else None))
        truth.append(actual if has_truth else None)
    table = output_table(rows)
    result = evaluate_table(table)
    n, top1, top5 = plain_count(table, truth)
    assert result.images == n and result.rows == 2000
    assert result.top1 == pytest.approx(top1, abs=1e-12)
    assert result.top5 == pytest.approx(top5, abs=1e-12)
    assert result.errors == sum(r[1] is None for r in rows)
    assert result.without_ground_truth == sum(r[1] is not None and t is None
                                              for r, t in zip(rows, truth, strict=True))
    assert sum(c["images"] for c in result.per_class) == n
    assert result.confused_pairs[0]["images"] >= result.confused_pairs[-1]["images"]


def test_top5_needs_five_classes_per_row():
    table = output_table([("/a.jpg", [3], "3"), ("/b.jpg", [4], "5")], k=1)
    result = evaluate_table(table)
    assert result.top1 == 0.5 and result.top5 is None


def test_nothing_to_evaluate_is_not_a_zero_score():
    result = evaluate_table(output_table([("/a.jpg", [3, 1, 2, 4, 5], None)]))
    assert result.images == 0 and result.top1 is None and result.without_ground_truth == 1


def test_calibration_error_against_its_definition():
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.15])
    correct = np.array([1, 0, 1, 1, 0])
    # bins (15): 0.95 -> 14, 0.55 -> 8, 0.15 -> 2
    expected = (2 * abs(0.5 - 0.95) + 2 * abs(1.0 - 0.55) + abs(0.0 - 0.15)) / 5
    assert calibration_error(confidence, correct) == pytest.approx(expected)


# --- ground truth as people write it ---------------------------------------------------------

BOM = "\ufeff"


def entries_of(tmp_path, text, name="gt.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return read_truth_file(str(path))


def pairs(entries):
    return list(zip(entries.column("key").to_pylist(), entries.column("class_id").to_pylist(),
                    strict=True))


@pytest.mark.parametrize("text", [
    "path,class_id\na.jpg,1\nb c.jpg,2\n",
    BOM + "path,class_id\na.jpg,1\nb c.jpg,2\n",  # Excel's "CSV UTF-8"
    "path,class_id\r\na.jpg,1\r\nb c.jpg,2\r\n",
    BOM + "path,class_id\r\na.jpg,1\r\nb c.jpg,2\r\n",
    BOM + "path;class_id\r\na.jpg;1\r\nb c.jpg;2\r\n",  # Excel where ',' is the decimal comma
    "Path\tClass_ID\tnote\na.jpg\t1\tx\nb c.jpg\t2\t\n",
    'class_id,path\n1,"a.jpg"\n2, b c.jpg \n\n,\n',  # any column order; blank rows
    "path,class_id\ra.jpg,1\rb c.jpg,2",  # old Mac line ends, none at the end
    "a.jpg 1\nb c.jpg 2\n",
    BOM + "a.jpg 1\r\nb c.jpg\t2\r\n\r\n",
])
def test_truth_files_are_read_as_people_save_them(tmp_path, text):
    assert pairs(entries_of(tmp_path, text)) == [("a.jpg", 1), ("b c.jpg", 2)]


def test_a_utf16_file_with_its_mark_is_read(tmp_path):  # Excel's "Unicode Text"
    entries = entries_of(tmp_path, "path\tclass_id\r\nä.jpg\t3\r\n", encoding="utf-16")
    assert pairs(entries) == [("ä.jpg", 3)]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    (BOM + "\r\n \n", "is empty"),
    ("path,class_id\n", "has a header but no entries"),
    (BOM + "path,class_id\r\n\r\n", "has a header but no entries"),
    ("path,class_id\na.jpg,1\nb.jpg,abc\n", "line 3: class_id 'abc' is not an integer"),
    ("path,class_id\na.jpg,3.0\n", "line 2: class_id '3.0' is not an integer"),
    ("path,class_id\na.jpg,\n", "line 2: class_id '' is not an integer"),
    ("path,class_id\r\n\r\na.jpg\r\n", "line 3 has 1 fields where the header has 2"),
    ("path,class_id\na,b.jpg,3\n", "a path holding ',' must be in double quotes"),
    ("path,class_id\n,3\n", "line 2: no path"),
    ("path,class_id\na.jpg,1\n" + "x" * 200_000 + ",3\n", "line 3 is not CSV (field larger"),
    ("a.jpg 1\nb.jpg x\n", "line 2: class id 'x' is not an integer"),
    ("a.jpg 1\n\nlonely.jpg\n", "line 3: expected `NAME CLASS_ID`, found 'lonely.jpg'"),
    ("a.jpg,1\n", "a CSV needs a header line"),
    ("a.jpg 1\n" + "b" * 100 + " z\n", "line 2: class id 'z'"),
])
def test_a_line_that_cannot_be_an_entry_is_one_line_naming_file_line_and_value(
        tmp_path, text, message):
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        entries_of(tmp_path, text)
    assert "gt.csv" in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    with pytest.raises(UserError, match=r"gt.csv line 3 is not UTF-8 text \(byte 0xe9\)"):
        entries_of(tmp_path, "path,class_id\na.jpg,1\ncaf\xe9.jpg,2\n", encoding="latin-1")


ROWS = [("/d/a.jpg", [1, 2, 3, 4, 5], None), ("/d/b.jpg", [2, 1, 3, 4, 5], None),
        ("/d/c.jpg", [3, 1, 2, 4, 5], "3"), ("/d/d.jpg", [4, 1, 2, 3, 5], None),
        (f"/d/{WNIDS[5]}/e.jpg", [5, 1, 2, 3, 4], None), ("/d/f.jpg", None, None)]


@pytest.mark.parametrize("form", ["csv", "imagenet"])
def test_what_only_the_rows_can_judge_is_counted_and_reported_never_dropped(tmp_path, form):
    truth = [("a.jpg", 1), ("b.jpg", 1000), ("c.jpg", -1), ("d.jpg", 4), ("d.jpg", 7),
             ("a.jpg", 1), ("e.jpg", 5), ("f.jpg", 999), ("gone.jpg", 3)]
    text = ("path,class_id\r\n" + "".join(f"{k},{c}\r\n" for k, c in truth) if form == "csv"
            else "".join(f"{k} {c}\r\n" for k, c in truth))
    entries = entries_of(tmp_path, BOM + text)
    table = output_table(ROWS)
    result = evaluate_table(table, entries)  # no IndexError on 1000 or -1
    # a.jpg listed twice with one class is fine; e.jpg agrees with its folder
    assert result.images == 2 and result.top1 == 1.0
    assert result.ground_truth == {"file": 3}  # a, e and f (an error row)
    header = 1 if form == "csv" else 0
    problems = {p["kind"]: p for p in result.ground_truth_problems}
    assert problems["class_out_of_range"]["count"] == 2  # b (1000) and c (-1): not its .cls
    assert (f"2 rows: class id outside 0-999 (e.g. line {2 + header}: 1000)"
            == problems["class_out_of_range"]["message"])
    assert problems["conflicting_classes"]["count"] == 1  # d.jpg: 4 or 7
    assert "/d/d.jpg" in problems["conflicting_classes"]["message"]
    assert problems["unmatched_entries"]["count"] == 1
    assert f"line {9 + header}: gone.jpg" in problems["unmatched_entries"]["message"]
    assert result.without_ground_truth == 3  # b, c, d: labelled, not evaluated
    text = describe(result)
    assert "2 rows: class id outside 0-999" in text and "1 entries match no row" in text
    assert json.loads(json.dumps(result.to_dict()))["ground_truth_problems"]


def test_a_file_without_problems_reports_none(tmp_path):
    entries = entries_of(tmp_path, "a.jpg 1\nb.jpg 2\n")
    result = evaluate_table(output_table(ROWS[:2]), entries)
    assert result.ground_truth_problems == [] and "ground-truth file" not in describe(result)
    assert result.images == 2 and result.top1 == 1.0


def test_a_name_listed_under_two_folders_with_two_classes_is_a_conflict_by_name_only(
        tmp_path):
    entries = entries_of(tmp_path, "path,class_id\n/x/a.jpg,1\n/y/a.jpg,2\n")
    paths = pa.array(["/x/a.jpg", "/z/a.jpg", "/z/a"])
    assert from_file(paths, entries).tolist()[:2] == [0, CONFLICT]
    same = entries_of(tmp_path, "path,class_id\n/x/a.jpg,1\n/y/a.jpg,1\n", name="same.csv")
    assert from_file(paths, same).tolist()[1] == 0  # the same class: no doubt


def test_a_path_typed_on_windows_matches_by_its_file_name(tmp_path):
    entries = entries_of(tmp_path, BOM + "path;class_id\r\nC:\\photos\\a.jpg;7\r\n"
                                         "D:\\x\\b;8\r\n")
    paths = pa.array(["/data/a.jpg", "s.tar::b", "/data/c.jpg"])
    assert from_file(paths, entries).tolist() == [0, 1, NO_ENTRY]


# --- evaluate and report through the CLI, on an output made by hand (no Ray) ---------------

@pytest.fixture()
def small_output(tmp_path):
    """One part of the ROWS above, and a finished manifest."""
    out = tmp_path / "out"
    fs, path = open_fs(str(out))
    fs.makedirs(path)
    rows = ROWS
    errors = [None if ids else "undecodable image (made up)" for _, ids, _ in rows]
    good = sum(e is None for e in errors)
    batch = ImageBatch(uid="0123456789abcdef", first=0, last=True, paths=[r[0] for r in rows],
                       errors=errors, source_labels=[r[2] for r in rows],
                       source_metadata=[None] * len(rows), input_sizes=[1] * len(rows),
                       input_versions=["v"] * len(rows),
                       images=np.zeros((good, 1, 1, 3), np.uint8))
    logits = np.zeros((good, 1000), np.float32)
    for i, (_, ids, _) in enumerate(r for r in rows if r[1]):
        logits[i, ids] = np.arange(len(ids), 0, -1)
    table = result_table(batch, logits, "efficientnet-lite0", NAMES, 5)
    part = Part("0123456789abcdef", 0, len(rows), len(rows) - good, True)
    put_atomic(fs, f"{path}/{part.name}", parquet_bytes(table))
    write_manifest(fs, path, {"identity": {}, "runs": [], "status": "complete"})
    return out


def test_evaluate_and_report_show_the_counted_problems(small_output, tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_bytes((BOM + "path,class_id\r\na.jpg,1\r\nb.jpg,1000\r\nc.jpg,-1\r\n"
                    "d.jpg,4\r\nd.jpg,7\r\n").encode())
    result = run_cli("evaluate", small_output, "--ground-truth", gt, "--json")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["images"] == 2 and evaluation["top1"] == 1.0  # a, and e by its folder
    assert [p["kind"] for p in evaluation["ground_truth_problems"]] == [
        "class_out_of_range", "conflicting_classes"]
    text = run_cli("evaluate", small_output, "--ground-truth", gt)
    assert "2 rows: class id outside 0-999 (e.g. line 3: 1000)" in text.stdout, text.stderr
    page = tmp_path / "r.html"
    report = run_cli("report", small_output, "--ground-truth", gt, "--html", page)
    assert report.returncode == 0, report.stderr
    assert "2 rows: class id outside 0-999" in page.read_text()


@pytest.mark.parametrize("text, fragment", [
    ("path,class_id\na.jpg,one\n", "line 2: class_id 'one' is not an integer"),
    ("", "is empty"),
    ("path,class_id\n", "has a header but no entries"),
])
def test_evaluate_and_report_refuse_a_bad_line_in_one_line(small_output, tmp_path, text,
                                                          fragment):
    gt = tmp_path / "gt.csv"
    gt.write_text(text)
    one_line_error(run_cli("evaluate", small_output, "--ground-truth", gt), "gt.csv", fragment)
    one_line_error(run_cli("report", small_output, "--ground-truth", gt, "--html",
                           tmp_path / "r.html"), "gt.csv", fragment)


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_a_ground_truth_that_is_not_a_regular_file_is_one_line_and_never_blocks(tmp_path, kind):
    path = {"folder": tmp_path / "gt", "fifo": tmp_path / "gt", "device": "/dev/zero"}[kind]
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    with pytest.raises(UserError, match=f"^{path} is not a regular file$"):
        read_truth_file(str(path))


def test_a_page_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    """The output is not even looked at: it does not exist here."""
    (tmp_path / "page").mkdir()
    with pytest.raises(UserError, match="is a folder, not a page to write"):
        write_report(str(tmp_path / "no-output"), str(tmp_path / "page"))
    with pytest.raises(UserError, match="its folder does not exist"):
        write_report(str(tmp_path / "no-output"), str(tmp_path / "gone" / "page.html"))
