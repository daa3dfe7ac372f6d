"""Damaged files of our own: parts, compacted files, the lease, the manifest and the
compaction record, cut short, emptied, overwritten, replaced or edited into another shape.

What a run reads back is validated: a damaged part or compacted file is not done, and a
rerun of `label` removes it and labels its rows again; `compact`, `evaluate` and `report`
name it with its repair in one line; a damaged lease is taken over; a damaged manifest or
record is one line. Never an internal error, never "done" when rows cannot be read.

Everything here builds outputs by hand, without Ray, except the last section's tests, which
run `label`."""

import json
import logging
import os
import re
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from effnet_ray.errors import UserError
from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.models.registry import load_class_names
from effnet_ray.output.compaction import compact
from effnet_ray.output.damage import TAIL, check_footers
from effnet_ray.output.layout import LEASE, MANIFEST, RECORD, Part, staged
from effnet_ray.output.lease import UNREADABLE, Lease, _decode, read_holder
from effnet_ray.output.manifest import check_resumable, read_manifest, write_manifest
from effnet_ray.output.record import CompactFile, read_record, write_record
from effnet_ray.output.resume import scan, tidy
from effnet_ray.output.rows import parquet_bytes, result_table
from effnet_ray.results.evaluate import COLUMNS, read_output
from effnet_ray.storage import open_fs, put_atomic
from tests.helpers import one_line_error, run_cli

NAMES = load_class_names("imagenet_2012.txt")
UNITS = 4  # units of two parts of 3 rows each: 24 rows


def part_table(uid, first, rows, unit):
    batch = ImageBatch(uid=uid, first=first, last=first > 0,
                       paths=[f"/in/{unit}/{first + i}.jpg" for i in range(rows)],
                       errors=[None] * rows, source_labels=[None] * rows,
                       source_metadata=[None] * rows, input_sizes=[1] * rows,
                       input_versions=["v"] * rows, images=np.zeros((rows, 1, 1, 3), np.uint8))
    logits = np.random.default_rng(unit * 10 + first).normal(size=(rows, 1000))
    return result_table(batch, logits.astype(np.float32), "efficientnet-lite0", NAMES, 5)


def plant(folder, fs_uri=None):
    """A finished output of UNITS units, made without Ray; its parts by name."""
    fs, path = open_fs(fs_uri or str(folder))
    fs.makedirs(path, exist_ok=True)
    parts = []
    for unit in range(UNITS):
        uid = f"{unit:016x}"
        for first in (0, 3):
            part = Part(uid, first, 3, 0, first > 0)
            put_atomic(fs, f"{path}/{part.name}", parquet_bytes(part_table(uid, first, 3, unit)))
            parts.append(part)
    write_manifest(fs, path, {"identity": {}, "runs": [], "status": "complete"})
    return parts


@pytest.fixture()
def out(tmp_path):
    folder = tmp_path / "out"
    plant(folder)
    return folder


# --- ways to damage a file ---------------------------------------------------------------

def cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def emptied(path):
    path.write_bytes(b"")


def overwritten(path):  # garbage of the same size
    path.write_bytes(np.random.default_rng(7).bytes(path.stat().st_size))


def short_by_3(path):  # a copy that stopped just before the end
    path.write_bytes(path.read_bytes()[:-3])


def lying_length(path):  # the footer's length says more than the file holds
    data = path.read_bytes()
    path.write_bytes(data[:-8] + (10**9).to_bytes(4, "little") + b"PAR1")


def fewer_rows(path):  # replaced by a whole Parquet file of other rows
    pq.write_table(pq.read_table(path).slice(0, 1), path)


def magic_only(path):
    path.write_bytes(b"PAR1")


def foreign(path):  # another tool's Parquet file of as many rows
    pq.write_table(pa.table({"x": list(range(pq.read_metadata(path).num_rows))}), path)


def without_model(path):
    pq.write_table(pq.read_table(path).drop_columns(["model"]), path)


def path_as_int(path):
    table = pq.read_table(path)
    pq.write_table(table.set_column(0, "path", pa.array(range(table.num_rows))), path)


def broken_link(path):
    path.unlink()
    path.symlink_to(path.parent / "nowhere")


FOOTER_DAMAGE = [cut_short, emptied, overwritten, short_by_3, lying_length, fewer_rows,
                 magic_only, foreign, without_model, path_as_int, broken_link]


def pages(path):
    """Damage under a whole footer: the first column's page header overwritten. The footer
    check cannot see it; a reader can."""
    data = path.read_bytes()
    path.write_bytes(data[:4] + b"\xff" * 300 + data[304:])


def part_file(folder, index=2):
    return sorted(folder.glob("part-*.parquet"))[index]


# --- the scan: a damaged file is not done -------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("damage", FOOTER_DAMAGE)
def test_a_damaged_part_is_not_done_and_tidy_removes_it(out, damage, caplog):
    victim = part_file(out)
    damage(victim)
    part = Part.parse(victim.name)
    fs, path = open_fs(str(out))
    assert part.first in scan(fs, path).done_starts(part.uid)  # names alone trust it
    committed = scan(fs, path, verify=True)
    assert list(committed.damaged) == [victim.name]
    assert part.first not in committed.done_starts(part.uid)
    assert not committed.complete(part.uid, 3)
    assert committed.totals() == (3 * (2 * UNITS - 1), 0)
    with caplog.at_level(logging.WARNING, logger="effnet_ray"):
        tidy(fs, path, committed, None)
    assert not victim.is_symlink() and not victim.exists()
    assert len(list(out.glob("part-*"))) == 2 * UNITS - 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and victim.name in warnings[0] and "labelled again" in warnings[0]
    assert not scan(fs, path, verify=True).damaged


@pytest.mark.unit
def test_whole_parts_pass_the_footer_check_and_a_long_footer_is_read_in_full(out):
    fs, path = open_fs(str(out))
    assert not scan(fs, path, verify=True).damaged
    victim = part_file(out)  # a footer longer than the tail read at first
    table = pq.read_table(victim)
    table = table.replace_schema_metadata({"padding": "x" * (2 * TAIL)})
    pq.write_table(table, victim)
    assert int.from_bytes(victim.read_bytes()[-8:-4], "little") > TAIL
    assert check_footers(fs, path, {victim.name: 3}) == {}
    assert "holds 3 rows, its name says 4" in check_footers(fs, path, {victim.name: 4})[
        victim.name]


@pytest.mark.unit
def test_a_duplicate_that_is_damaged_leaves_the_whole_one(out):
    victim = part_file(out)
    part = Part.parse(victim.name)
    twin = Part(part.uid, part.first, part.rows, 1, part.last)  # a retry that came out else
    shutil.copy(victim, out / twin.name)
    emptied(out / twin.name)
    committed = scan(*open_fs(str(out)), verify=True)
    assert committed.parts[part.uid][part.first] == part and not committed.duplicates
    assert list(committed.damaged) == [twin.name]


@pytest.mark.unit
def test_a_part_damaged_under_a_whole_footer_passes_the_scan(out):
    """The documented limit: only readers see it (they name it, see below)."""
    pages(part_file(out))
    assert not scan(*open_fs(str(out)), verify=True).damaged


@pytest.mark.unit
def test_the_footer_check_works_on_a_store_that_is_not_a_local_disk():
    uri = f"memory://damaged-{time.time_ns()}/out"
    parts = plant(None, uri)
    fs, path = open_fs(uri)
    fs.pipe_file(f"{path}/{parts[0].name}", b"")
    fs.pipe_file(f"{path}/{parts[1].name}", fs.cat_file(f"{path}/{parts[1].name}")[:100])
    fs.pipe_file(f"{path}/{parts[2].name}", b"PAR1" + b"\0" * 4 + b"PAR1")
    committed = scan(fs, path, verify=True)
    assert sorted(committed.damaged) == sorted(p.name for p in parts[:3])
    assert committed.totals()[0] == 3 * (len(parts) - 3)
    tidy(fs, path, committed, None)
    assert not scan(fs, path, verify=True).damaged
    assert len(fs.ls(path)) == len(parts) - 3 + 1  # and the manifest


def test_the_footer_check_on_s3_finds_each_damaged_part(s3, s3_env):
    s3.mkdir("damaged")
    options = {"endpoint_url": s3_env["AWS_ENDPOINT_URL"], "key": s3_env["AWS_ACCESS_KEY_ID"],
               "secret": s3_env["AWS_SECRET_ACCESS_KEY"]}
    uri = "s3://damaged/out"
    fs, path = open_fs(uri, options)
    fs.makedirs(path, exist_ok=True)
    for unit in range(UNITS):
        uid = f"{unit:016x}"
        for first in (0, 3):
            part = Part(uid, first, 3, 0, first > 0)
            fs.pipe_file(f"{path}/{part.name}", parquet_bytes(part_table(uid, first, 3, unit)))
    names = sorted(n.rsplit("/", 1)[-1] for n in fs.ls(path))
    fs.pipe_file(f"{path}/{names[0]}", b"")  # an empty object
    fs.pipe_file(f"{path}/{names[3]}", fs.cat_file(f"{path}/{names[3]}")[:-3])
    fs.pipe_file(f"{path}/{names[5]}",
                 parquet_bytes(part_table(f"{5:016x}", 0, 2, 9)))  # 2 rows, not 3
    fs.invalidate_cache()
    committed = scan(fs, path, verify=True)
    assert sorted(committed.damaged) == [names[0], names[3], names[5]]
    assert "holds 2 rows, its name says 3" in committed.damaged[names[5]]


# --- compacted files -----------------------------------------------------------------------

@pytest.fixture()
def compacted(out):
    files, rows = compact(str(out), target_size=8 * 1024)
    assert files >= 2 and rows == 6 * UNITS and not list(out.glob("part-*"))
    return out


def compact_file(folder, index=0):
    return sorted(folder.glob("compact-*.parquet"))[index]


@pytest.mark.unit
@pytest.mark.parametrize("damage", [cut_short, emptied, fewer_rows])
def test_a_damaged_compacted_file_is_cut_from_the_record_and_its_rows_are_not_done(
        compacted, damage):
    victim = compact_file(compacted)
    held = next(f for f in read_record(*open_fs(str(compacted))) if f.name == victim.name)
    damage(victim)
    fs, path = open_fs(str(compacted))
    committed = scan(fs, path, verify=True)
    assert list(committed.damaged) == [victim.name]
    assert all(p.first not in committed.done_starts(p.uid) for p in held.parts)
    tidy(fs, path, committed, None)
    assert not victim.exists()
    assert victim.name not in {f.name for f in read_record(fs, path)}
    after = scan(fs, path, verify=True)
    assert not after.damaged and not after.leftovers
    assert after.totals()[0] == 6 * UNITS - sum(p.rows for p in held.parts)


@pytest.mark.unit
def test_loose_copies_of_a_damaged_compacted_files_parts_count(out):
    """A crash after the record, before the parts went: the compacted file is damaged, the
    loose parts are whole, so nothing needs labelling again."""
    keep = out.parent / "keep"
    shutil.copytree(out, keep)
    compact(str(out), target_size=10**9)
    for loose in keep.glob("part-*"):
        shutil.copy(loose, out / loose.name)
    cut_short(compact_file(out))
    committed = scan(*open_fs(str(out)), verify=True)
    assert len(committed.damaged) == 1 and not committed.duplicates
    assert all(committed.complete(f"{u:016x}", 3) for u in range(UNITS))


# --- the commands that read outputs: one line naming the file and its repair ---------------

def check_one_line(result, *fragments):
    one_line_error(result, *fragments)
    assert result.returncode == 2, result.stderr


@pytest.mark.parametrize("command", ["compact", "evaluate", "report"])
@pytest.mark.parametrize("damage", [cut_short, emptied, overwritten, fewer_rows, foreign,
                                    without_model, broken_link])
@pytest.mark.parametrize("index", [0, 2])  # the first file decides the dataset's columns
def test_commands_name_a_damaged_part_and_its_repair(out, command, damage, index, tmp_path):
    victim = part_file(out, index)
    damage(victim)
    extra = ["--html", tmp_path / "r.html"] if command == "report" else []
    result = run_cli(command, out, *extra)
    check_one_line(result, victim.name, "is damaged", "rerun the `effnet-ray label` command")
    assert victim.is_symlink() or victim.exists()  # only label removes it


@pytest.mark.parametrize("command", ["compact", "evaluate", "report"])
def test_commands_name_a_part_damaged_under_its_footer_and_say_to_delete_it(
        out, command, tmp_path):
    victim = part_file(out)
    pages(victim)
    extra = ["--html", tmp_path / "r.html"] if command == "report" else []
    check_one_line(run_cli(command, out, *extra), victim.name, "is damaged", "delete it")
    assert not list(out.glob(".tmp-*"))  # compact left nothing half-written behind


@pytest.mark.parametrize("command", ["compact", "evaluate", "report"])
def test_commands_name_a_damaged_compacted_file(compacted, command, tmp_path):
    victim = compact_file(compacted)
    cut_short(victim)
    extra = ["--html", tmp_path / "r.html"] if command == "report" else []
    check_one_line(run_cli(command, compacted, *extra), victim.name, "is damaged")


@pytest.mark.unit
def test_a_reader_counts_every_row_once_in_the_middle_of_a_compaction(out):
    """After the record, before the renames: the compacted files under their hidden names
    and the loose parts they replace are both there."""
    loose = {p.name: p.read_bytes() for p in out.glob("part-*")}
    compact(str(out), target_size=10**9)
    for name, data in loose.items():
        (out / name).write_bytes(data)
    for f in out.glob("compact-*"):
        f.rename(out / staged(f.name))
    table = read_output(str(out), COLUMNS)
    assert table.num_rows == 6 * UNITS and len(set(table.column("path").to_pylist())) == 6 * UNITS


def test_evaluate_and_report_count_only_the_rows_the_output_counts(compacted, tmp_path):
    """Leftovers of a crashed write and loose copies of compacted parts are not rows."""
    shutil.copy(compact_file(compacted), compacted / "compact-0badf00d-00000.parquet")
    result = run_cli("evaluate", compacted, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 6 * UNITS


# --- the lease -------------------------------------------------------------------------------

HOLDER = {"token": "t", "host": "elsewhere", "pid": 12, "process_start": "1",
          "started": "2026-01-01T00:00:00Z", "heartbeat": 1.0e12}  # a heartbeat far ahead


@pytest.mark.unit
@pytest.mark.parametrize("data", [
    b"", b"not json", b"[1, 2]", b'"a string"', b"null", b"\xff\xfe\x00",
    b"[" * 100000 + b"]" * 100000,
    json.dumps({**HOLDER, "pid": "12"}).encode(),
    json.dumps({**HOLDER, "pid": True}).encode(),
    json.dumps({**HOLDER, "pid": -1}).encode(),
    json.dumps({**HOLDER, "pid": 2**70}).encode(),
    json.dumps({**HOLDER, "pid": 12.5}).encode(),
    json.dumps({**HOLDER, "heartbeat": "soon"}).encode(),
    json.dumps({**HOLDER, "heartbeat": None}).encode(),
    json.dumps({**HOLDER, "heartbeat": float("inf")}).encode(),
    json.dumps({**HOLDER, "heartbeat": float("nan")}).encode(),
    json.dumps({**HOLDER, "token": 7}).encode(),
    json.dumps({**HOLDER, "host": ["a"]}).encode(),
    json.dumps({**HOLDER, "extra": 1}).encode(),
    json.dumps({k: v for k, v in HOLDER.items() if k != "started"}).encode(),
], ids=lambda d: d[:30].decode("utf-8", "replace"))
def test_a_damaged_lease_is_unreadable_and_taken_over(tmp_path, data, caplog):
    assert _decode(data) == UNREADABLE
    (tmp_path / LEASE).write_bytes(data)
    fs, path = open_fs(str(tmp_path))
    assert read_holder(fs, path)[0] == UNREADABLE
    with caplog.at_level(logging.WARNING, logger="effnet_ray"):
        lease = Lease.acquire(fs, path)
    assert read_holder(fs, path)[0].token == lease.token
    assert "an unreadable lease" in caplog.text
    lease.release()


@pytest.mark.unit
def test_a_whole_lease_is_still_honoured(tmp_path):
    assert _decode(json.dumps(HOLDER).encode()).pid == 12
    assert _decode(json.dumps({**HOLDER, "heartbeat": 5}).encode()).heartbeat == 5.0
    (tmp_path / LEASE).write_text(json.dumps({**HOLDER, "heartbeat": time.time()}))
    with pytest.raises(UserError, match="in use by another run"):
        Lease.acquire(*open_fs(str(tmp_path)))


def test_compact_takes_over_a_damaged_lease(out):
    (out / LEASE).write_text(json.dumps({**HOLDER, "heartbeat": "x"}))
    result = run_cli("compact", out)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


# --- the manifest ----------------------------------------------------------------------------

BAD_MANIFESTS = {
    "a list": ("[]", "not a JSON object"),
    "a string": ('"done"', "not a JSON object"),
    "identity a string": ('{"identity": "x", "runs": []}', "identity is not an object"),
    "no identity": ('{"runs": []}', "identity is not an object"),
    "runs an object": ('{"identity": {}, "runs": {}}', "runs is not a list"),
    "a run a string": ('{"identity": {}, "runs": ["x"]}', "runs is not a list of objects"),
    "status a number": ('{"identity": {}, "runs": [], "status": 1}', "status is not text"),
    "compactions": ('{"identity": {}, "runs": [], "compactions": 3}',
                    "compactions is not a list"),
    "not JSON": ("{", "not JSON"),
    "not UTF-8": ('{"identity": "\xff"}'.encode("latin-1"), "not JSON"),
    "deep": ("[" * 100000, "not JSON"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_damaged_manifest_is_one_line(tmp_path, case):
    text, reason = BAD_MANIFESTS[case]
    (tmp_path / MANIFEST).write_bytes(text if isinstance(text, bytes) else text.encode())
    fs, path = open_fs(str(tmp_path))
    for read in (lambda: read_manifest(fs, path), lambda: check_resumable(fs, path, {})):
        with pytest.raises(UserError, match=re.escape(reason)) as caught:
            read()
        assert MANIFEST in str(caught.value) and "--overwrite" in str(caught.value)


@pytest.mark.parametrize("case", ["a list", "identity a string", "runs an object"])
def test_commands_refuse_a_damaged_manifest_in_one_line(out, case, tmp_path):
    (out / MANIFEST).write_text(BAD_MANIFESTS[case][0])
    check_one_line(run_cli("compact", out), MANIFEST, BAD_MANIFESTS[case][1])
    check_one_line(run_cli("report", out, "--html", tmp_path / "r.html"), MANIFEST)
    result = run_cli("evaluate", out)  # evaluate needs only the rows
    assert result.returncode == 0, result.stderr


def test_report_shows_runs_whose_fields_have_other_types(out, tmp_path):
    manifest = {"identity": {}, "status": "complete", "runs": [
        {"started": 5, "ended": None, "status": ["x"], "this_run": "many"},
        {"started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:00:10Z", "this_run": True},
        {}]}
    (out / MANIFEST).write_text(json.dumps(manifest))
    result = run_cli("report", out, "--html", tmp_path / "r.html")
    assert result.returncode == 0, result.stderr
    assert "<h2>Runs</h2>" in (tmp_path / "r.html").read_text()


# --- the compaction record -------------------------------------------------------------------

GOOD_PART = ["0123456789abcdef", 0, 3, 0, True]
NAME = "compact-0123abcd-00000.parquet"


def record(*parts, name=NAME):
    return {"files": [{"name": name, "parts": list(parts)}]}


BAD_RECORDS = {
    "a list": [],
    "files an object": {"files": {}},
    "no files": {"parts": []},
    "a file a string": {"files": ["x"]},
    "parts missing": {"files": [{"name": NAME}]},
    "a name outside the folder": record(GOOD_PART, name="../../etc/passwd"),
    "a name not ours": record(GOOD_PART, name="data.parquet"),
    "a name with a newline": record(GOOD_PART, name=NAME + "\n"),
    "a name twice": {"files": [record(GOOD_PART)["files"][0],
                               record(["fedcba9876543210", 0, 3, 0, True])["files"][0]]},
    "a part twice in a file": record(GOOD_PART, GOOD_PART),
    "a part in two files": {"files": [record(GOOD_PART)["files"][0],
                                      record(GOOD_PART, name=NAME.replace("0.", "1."))
                                      ["files"][0]]},
    "a part too short": record(GOOD_PART[:4]),
    "a part an object": record({"uid": "0123456789abcdef"}),
    "uid a number": record([123, 0, 3, 0, True]),
    "uid not hex": record(["0123456789abcdeg", 0, 3, 0, True]),
    "first a string": record(["0123456789abcdef", "0", 3, 0, True]),
    "rows negative": record(["0123456789abcdef", 0, -3, 0, True]),
    "rows a float": record(["0123456789abcdef", 0, 3.0, 0, True]),
    "rows true": record(["0123456789abcdef", 0, True, 0, True]),
    "more errors than rows": record(["0123456789abcdef", 0, 3, 4, True]),
    "last a string": record(["0123456789abcdef", 0, 3, 0, "yes"]),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(BAD_RECORDS) + ["not JSON", "deep"])
def test_a_damaged_record_is_one_line(tmp_path, case):
    text = {"not JSON": "{files", "deep": "[" * 100000}.get(case) or json.dumps(
        BAD_RECORDS[case])
    (tmp_path / RECORD).write_text(text)
    fs, path = open_fs(str(tmp_path))
    for read in (lambda: read_record(fs, path), lambda: scan(fs, path)):
        with pytest.raises(UserError, match="_compaction.json is damaged") as caught:
            read()
        assert "delete it" in str(caught.value)


@pytest.mark.unit
def test_a_whole_record_reads_back_with_empty_parts_too(tmp_path):
    files = [CompactFile(NAME, (Part("0123456789abcdef", 0, 3, 1, False),
                                Part("0123456789abcdef", 3, 0, 0, True)))]
    write_record(*open_fs(str(tmp_path)), files)
    assert read_record(*open_fs(str(tmp_path))) == files


@pytest.mark.parametrize("case", ["a list", "a name outside the folder", "rows negative"])
def test_commands_refuse_a_damaged_record_in_one_line(compacted, case, tmp_path):
    (compacted / RECORD).write_text(json.dumps(BAD_RECORDS[case]))
    for command, extra in (("compact", []), ("evaluate", []),
                           ("report", ["--html", tmp_path / "r.html"])):
        check_one_line(run_cli(command, compacted, *extra), "_compaction.json is damaged")


# --- label (starts Ray): the rerun labels the rows of damaged files again -------------------

def label(inputs, out, lite0_ir):
    """84 photos in 21 parts, left as parts for the damage to reach."""
    return run_cli("label", inputs, "--output", out, "--model", "efficientnet-lite0",
                   "--model-path", lite0_ir, "--precision", "f32", "--batch-size", "4",
                   "--unit-size", "8", "--no-compact")


def rows_of(out):
    return pads.dataset(str(out), format="parquet").to_table(columns=["path", "class_id"])


def test_a_rerun_of_label_relabels_the_rows_of_damaged_parts(many_photos, lite0_ir, tmp_path):
    out = tmp_path / "out"
    assert label(many_photos, out, lite0_ir).returncode == 0
    reference = rows_of(out).sort_by("path")
    # parts of two rows or more: a part of one row cut to its first row would be unchanged
    # (the parts' names, hence their order, follow the temporary folder's path)
    parts = sorted(p for p in out.glob("part-*.parquet") if Part.parse(p.name).rows >= 2)
    assert len(parts) > 15, [p.name for p in parts]
    for victim, damage in zip(parts[1::5], (cut_short, emptied, overwritten, fewer_rows),
                              strict=False):
        damage(victim)
    again = label(many_photos, out, lite0_ir)
    assert again.returncode == 0, again.stderr
    warnings = [ln for ln in again.stderr.splitlines() if "damaged" in ln]
    assert len(warnings) == 1 and "removed 4 damaged result files" in warnings[0], again.stderr
    match = re.search(r"labelled (\d+) images \((\d+) from earlier runs\)", again.stdout)
    assert match and int(match.group(1)) == 84 and int(match.group(2)) < 84, again.stdout
    assert rows_of(out).sort_by("path").equals(reference)  # every row once, readable
    assert run_cli("evaluate", out).returncode == 0


def test_a_rerun_of_label_relabels_the_rows_of_a_damaged_compacted_file(many_photos, lite0_ir,
                                                                         tmp_path):
    out = tmp_path / "out"
    assert label(many_photos, out, lite0_ir).returncode == 0
    reference = rows_of(out).sort_by("path")
    total = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    assert run_cli("compact", out, "--target-size", str(total // 4)).returncode == 0
    victim = compact_file(out, 1)
    cut_short(victim)
    check_one_line(run_cli("evaluate", out), victim.name, "is damaged")
    again = label(many_photos, out, lite0_ir)
    assert again.returncode == 0, again.stderr
    assert victim.name in again.stderr and "labelled again" in again.stderr
    assert rows_of(out).sort_by("path").equals(reference)
    assert run_cli("compact", out).returncode == 0
    assert rows_of(out).sort_by("path").equals(reference)


def test_label_refuses_a_damaged_manifest_or_record_and_takes_over_a_damaged_lease(
        many_photos, lite0_ir, tmp_path):
    """These stop before Ray starts, but need the prepared Lite0 IR."""
    out = tmp_path / "out"
    assert label(many_photos, out, lite0_ir).returncode == 0
    manifest = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text('{"identity": "x", "runs": []}')
    check_one_line(label(many_photos, out, lite0_ir), MANIFEST, "--overwrite")
    (out / MANIFEST).write_text(manifest)
    (out / LEASE).write_text("[1, 2]")  # taken over, not a TypeError
    (out / RECORD).write_text(json.dumps(BAD_RECORDS["a part in two files"]))
    check_one_line(label(many_photos, out, lite0_ir), "_compaction.json is damaged")
    os.remove(out / RECORD)
    result = label(many_photos, out, lite0_ir)
    assert result.returncode == 0 and "(84 from earlier runs)" in result.stdout
