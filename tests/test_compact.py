"""`effnet-ray compact`: rows kept bit for bit, resume still exact, and a SIGKILL at any
moment leaves an output that the next compact finishes, every row exactly once."""

import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import effnet_ray
import effnet_ray.output.compaction as compaction
from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.models.registry import load_class_names
from effnet_ray.output.layout import Part
from effnet_ray.output.manifest import write_manifest
from effnet_ray.output.resume import scan
from effnet_ray.output.rows import parquet_bytes, result_table
from effnet_ray.storage import open_fs, put_atomic
from tests.helpers import CLI, IMAGES, one_line_error, run_cli

NAMES = load_class_names("imagenet_2012.txt")


def crash_at_tidy(monkeypatch, call):
    """Die where a kill rarely hits: at the tidy that would finish a compaction, once its
    record is written (`compact` tidies first, so that is its second call)."""
    calls = []
    real_tidy = compaction.tidy

    def tidy_then_crash(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_tidy(*args)

    monkeypatch.setattr(compaction, "tidy", tidy_then_crash)


def sorted_rows(folder):
    table = pads.dataset(str(folder), format="parquet").to_table()
    return table.sort_by("path")


def label(inputs, out, lite0_ir, *more):
    """84 photos in 21 parts, left as parts unless `more` says otherwise."""
    return run_cli("label", inputs, "--output", out, "--model", "efficientnet-lite0",
                   "--model-path", lite0_ir, "--precision", "f32", "--batch-size", "4",
                   "--unit-size", "8", *(more or ["--no-compact"]))


def test_compaction_keeps_every_row_and_resume_exact(many_photos, lite0_ir, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(many_photos, inputs)
    out = tmp_path / "out"
    assert label(inputs, out, lite0_ir).returncode == 0
    before = sorted_rows(out)
    parts = sorted(out.glob("part-*.parquet"))
    total = sum(p.stat().st_size for p in parts)
    target = total // 5
    result = run_cli("compact", out, "--target-size", str(target))
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("compact-*.parquet"))
    assert not list(out.glob("part-*")) and 3 <= len(files) <= 8, result.stdout
    after = sorted_rows(out)
    assert after.equals(before)  # paths, labels, logits: bit for bit
    paths = pads.dataset(str(files[0]), format="parquet").to_table().column("path").to_pylist()
    assert paths == sorted(paths)
    again = label(inputs, out, lite0_ir)
    assert again.returncode == 0 and "(84 from earlier runs)" in again.stdout
    assert run_cli("compact", out).stdout.startswith("nothing to compact")
    shutil.copy(many_photos / "img000.jpg", inputs / "zz-new.jpg")  # a new input
    more = label(inputs, out, lite0_ir)
    assert more.returncode == 0, more.stderr
    redone = int(re.search(r"labelled (\d+) images \((\d+) from", more.stdout).group(1)) - \
        int(re.search(r"\((\d+) from earlier", more.stdout).group(1))
    assert 1 <= redone <= 16  # the new file's unit only
    final = sorted_rows(out)
    assert final.num_rows == 85 and len(set(final.column("path").to_pylist())) == 85


def test_compact_refuses_an_unfinished_or_missing_output(tmp_path):
    one_line_error(run_cli("compact", tmp_path / "nope"), "does not exist")
    (tmp_path / "file.csv").write_text("path,class_id\n")
    one_line_error(run_cli("compact", tmp_path / "file.csv"), "is not an output folder")
    (tmp_path / "half").mkdir()
    one_line_error(run_cli("compact", tmp_path / "half"), "not a finished output")
    one_line_error(run_cli("compact", tmp_path / "half", "--target-size", "lots"),
                   "--target-size must be a size")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A finished output of 300 parts, made without Ray."""
    folder = tmp_path_factory.mktemp("planted") / "out"
    fs, path = open_fs(str(folder))
    fs.makedirs(path)
    rng = np.random.default_rng(0)
    for unit in range(100):
        uid = f"{unit:016x}"
        for first in (0, 2, 4):
            rows = 2 if first < 4 else 1
            batch = ImageBatch(uid=uid, first=first, last=first == 4,
                               paths=[f"/in/{unit:03d}/{first + i}.jpg" for i in range(rows)],
                               errors=[None] * rows, source_labels=[None] * rows,
                               source_metadata=[None] * rows, input_sizes=[1] * rows,
                               input_versions=["v"] * rows,
                               images=np.zeros((rows, 1, 1, 3), np.uint8))
            table = result_table(batch, rng.normal(size=(rows, 1000)).astype(np.float32),
                                 "efficientnet-lite0", NAMES, 5)
            part = Part(uid, first, rows, 0, first == 4)
            put_atomic(fs, f"{path}/{part.name}", parquet_bytes(table))
    write_manifest(fs, path, {"identity": {}, "runs": [], "status": "complete"})
    return folder


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6, 0.9, 1.2, 1.6, 2.2, 3.0])
def test_a_kill_at_any_moment_is_finished_by_the_next_compact(planted, tmp_path, delay):
    out = tmp_path / "out"
    shutil.copytree(planted, out)
    reference = sorted_rows(out)
    proc = subprocess.Popen([*CLI, "compact", str(out), "--target-size", "60KB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = scan(*open_fs(str(out)))  # what resume sees: every row exactly once
    assert committed.totals() == (reference.num_rows, 0)
    assert sum(len(s) for s in committed.parts.values()) == 300
    result = run_cli("compact", out, "--target-size", "60KB")
    assert result.returncode == 0, result.stderr
    assert not list(out.glob("part-*")) and not list(out.glob(".tmp-*"))
    after = sorted_rows(out)
    assert after.equals(reference)
    assert pa.compute.count_distinct(after.column("path")).as_py() == reference.num_rows


def test_a_crash_right_after_the_record_is_finished_by_the_next_compact(planted, tmp_path,
                                                                        monkeypatch):
    """The moment a kill rarely hits: the record is written, the new files are still hidden
    and the old parts still there. The record decides: each row is counted once."""
    out = tmp_path / "out"
    shutil.copytree(planted, out)
    reference = sorted_rows(out)
    crash_at_tidy(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        compaction.compact(str(out), 60_000)
    monkeypatch.undo()
    assert len(list(out.glob("part-*"))) == 300 and list(out.glob(".tmp-compact-*"))
    assert (out / "_compaction.json").exists() and not list(out.glob("compact-*"))
    committed = scan(*open_fs(str(out)))
    assert committed.totals() == (reference.num_rows, 0)
    assert len(committed.duplicates) == 300  # the old parts: covered by the record
    result = run_cli("compact", out, "--target-size", "60KB")
    assert result.returncode == 0, result.stderr
    assert not list(out.glob("part-*")) and not list(out.glob(".tmp-*"))
    assert sorted_rows(out).equals(reference)


def test_a_complete_run_leaves_files_sized_for_readers_and_a_rerun_labels_nothing(
        many_photos, lite0_ir, tmp_path):
    out = tmp_path / "out"
    first = label(many_photos, out, lite0_ir, "--progress-seconds", "1")
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert not [f for f in files if f.startswith("part-")]
    assert 1 <= len(files) <= 2, files  # 84 small rows: one file, or two with a few extra
    rows = sorted_rows(out)
    assert rows.num_rows == IMAGES and len(set(rows.column("path").to_pylist())) == IMAGES
    again = label(many_photos, out, lite0_ir, "--progress-seconds", "1")
    assert again.returncode == 0, again.stderr
    assert f"labelled {IMAGES} images ({IMAGES} from earlier runs)" in again.stdout
    assert sorted(p.name for p in out.glob("*.parquet")) == files
    assert sorted_rows(out).equals(rows)


def test_a_kill_during_the_end_of_run_compaction_is_finished_by_the_next_label(
        many_photos, lite0_ir, tmp_path, monkeypatch):
    """The record is written, the joined files are still hidden and the parts still there
    when the run dies: the next `label` finishes the join, and every row is there once."""
    out = tmp_path / "out"
    crash_at_tidy(monkeypatch, 1)  # the run's end has scanned and tidied already
    options = effnet_ray.LabelOptions.build(
        [str(many_photos)], str(out), model="efficientnet-lite0", model_path=str(lite0_ir),
        precision="f32", batch_size=4, unit_size=8)
    with pytest.raises(KeyboardInterrupt):
        effnet_ray.label(options)
    monkeypatch.undo()
    assert list(out.glob("part-*")) and list(out.glob(".tmp-compact-*"))
    assert (out / "_compaction.json").exists()
    result = label(many_photos, out, lite0_ir, "--progress-seconds", "1")
    assert result.returncode == 0, result.stderr
    assert not list(out.glob("part-*")) and not list(out.glob(".tmp-*"))
    rows = sorted_rows(out)
    assert rows.num_rows == IMAGES and len(set(rows.column("path").to_pylist())) == IMAGES
