"""Ground truth and accuracy on synthetic outputs, against a plain row-by-row count."""

import numpy as np
import pyarrow as pa
import pytest

from effnet_ray.errors import UserError
from effnet_ray.models.registry import load_wnids
from effnet_ray.results.evaluate import calibration_error, evaluate_table
from effnet_ray.results.truth import UNKNOWN, from_file, ground_truth, read_truth_file

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

WNIDS = load_wnids("imagenet_2012.txt")


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


def test_imagenet_validation_format(tmp_path):
    gt = tmp_path / "val.txt"
    gt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n\n")
    entries = read_truth_file(str(gt))
    paths = pa.array(["/v/ILSVRC2012_val_00000002.JPEG", "/v/ILSVRC2012_val_00000001.JPEG",
                      "/v/other.JPEG"])
    assert from_file(paths, entries).tolist() == [970, 65, UNKNOWN]
    (tmp_path / "bad.txt").write_text("just words here\n")
    with pytest.raises(UserError, match="line 1 is not `NAME CLASS_ID`"):
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
