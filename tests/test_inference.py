"""The inference actor's class without Ray: real OpenVINO on Lite0, real photos.

An actor that decodes its own work units must commit exactly the parts, rows and logits
that an actor fed by decoding tasks commits, in the same order."""

import multiprocessing
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from effnet_ray.inputs.batch import ImageBatch
from effnet_ray.inputs.listing import IMAGE_EXTENSIONS
from effnet_ray.inputs.reading import read_units
from effnet_ray.inputs.samples import ReadTask
from effnet_ray.models.ir import ir_sha256
from effnet_ray.models.registry import PHOTOS, get_spec
from effnet_ray.options import InferenceOptions, ReadOptions
from effnet_ray.output.layout import Part
from effnet_ray.run import inference
from effnet_ray.run.inference import (
    Classifier,
    DecodingClassifier,
    Inferring,
    ModelFile,
    compile_model,
)

SPEC = get_spec("efficientnet-lite0")


class Recorder:
    """A commit that keeps what it was given, from any thread."""

    def __init__(self):
        self.parts, self.lock = [], threading.Lock()

    def __call__(self, batch, table):
        part = Part(batch.uid, batch.first, table.num_rows,
                    table.num_rows - table.column("error").null_count, batch.last)
        with self.lock:
            self.parts.append((part, table))
        return part


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """Two work units: photos with a missing and a broken file among them; the second has
    its part at row 4 done already."""
    folder = tmp_path_factory.mktemp("units")
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in IMAGE_EXTENSIONS)
    for p in photos:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    files = [str(folder / p.name) for p in photos]
    first = [files[0], str(folder / "missing.jpg"), *files[1:6], str(folder / "broken.jpg")]
    second = files[3:] + files  # 11 rows: parts at 0, 4 (done) and 8
    return {"kind": np.array(["files", "files"]), "uris": [np.array(first), np.array(second)],
            "sizes": [np.full(len(first), -1), np.full(len(second), -1)],
            "versions": [np.array([""] * len(first)), np.array([""] * len(second))],
            "uid": np.array(["a" * 16, "b" * 16]), "done": [np.array([], int), np.array([4])]}


def test_an_actor_that_decodes_commits_what_a_fed_actor_commits(lite0_ir, units, monkeypatch):
    monkeypatch.setattr(inference, "REPORT_SECONDS", 0.0)  # a report per part, as fed ones
    options = InferenceOptions(model=SPEC.name)
    model = ModelFile(str(lite0_ir), ir_sha256(lite0_ir))
    read = ReadTask(ReadOptions(batch_size=4), SPEC)
    fed, decoding = Recorder(), Recorder()
    classifier = Classifier(options, SPEC, model, fed)
    stats = [row for table in read_units(units, task=read) for t in classifier(table)
             for row in t.to_pylist()]
    decoder = DecodingClassifier(options, SPEC, model, decoding, read)
    own = [{**part, **{k: v for k, v in report.items() if k != "parts"}}
           for t in decoder(units) for report in t.to_pylist() for part in report["parts"]]
    stats = [{**report["parts"][0], **{k: v for k, v in report.items() if k != "parts"}}
             for report in stats]

    cpu = ("decode_seconds", "inference_seconds")  # measured, so never equal twice
    assert [{k: v for k, v in r.items() if k not in cpu} for r in own] == \
        [{k: v for k, v in r.items() if k not in cpu} for r in stats]
    assert all(r[k] >= 0 for r in own + stats for k in cpu)
    for rows in (own, stats):  # decoding 14 photos and inferring them both take time
        assert sum(r["decode_seconds"] for r in rows) > 0
        assert sum(r["inference_seconds"] for r in rows) > 0
    assert [p for p, _ in decoding.parts] == [p for p, _ in fed.parts]
    assert [(p.uid, p.first) for p, _ in fed.parts] == [
        ("a" * 16, 0), ("a" * 16, 4), ("b" * 16, 0), ("b" * 16, 8)]
    for (_, mine), (_, theirs) in zip(decoding.parts, fed.parts, strict=True):
        assert mine.drop_columns("logits").equals(theirs.drop_columns("logits"))
        for x, y in zip(mine.column("logits").to_pylist(), theirs.column("logits").to_pylist(),
                        strict=True):
            assert (x is None) == (y is None)
            if x is not None:  # the same compiled model on the same pixels
                np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-5)
    errors = [e for _, t in fed.parts for e in t.column("error").to_pylist() if e]
    assert len(errors) == 2, errors


@pytest.mark.parametrize(("every", "reports"), [(3600.0, [4]), (0.0, [1, 1, 1, 1])])
def test_a_call_reports_its_committed_parts_together(lite0_ir, units, monkeypatch, every,
                                                      reports):
    """Ray Data keeps bookkeeping of every report (a block) until the run ends: a call
    reports what it committed at most every REPORT_SECONDS, and all of it by its end."""
    monkeypatch.setattr(inference, "REPORT_SECONDS", every)
    recorder = Recorder()
    decoder = DecodingClassifier(InferenceOptions(model=SPEC.name), SPEC,
                                 ModelFile(str(lite0_ir), ir_sha256(lite0_ir)), recorder,
                                 ReadTask(ReadOptions(batch_size=4), SPEC))
    tables = list(decoder(units))
    assert [t.num_rows for t in tables] == [1] * len(reports)  # a row is a block: one each
    assert [len(t.column("parts")[0]) for t in tables] == reports
    reported = [(p["uid"], p["first"], p["rows"]) for t in tables
                for p in t.column("parts")[0].as_py()]
    assert reported == [(p.uid, p.first, p.rows) for p, _ in recorder.parts]
    assert sum(t.column("rows")[0].as_py() for t in tables) == sum(p.rows for p, _ in
                                                                    recorder.parts)


def test_many_calls_at_once_share_the_requests(lite0_ir, units):
    """Ray runs several calls of one actor in threads; every call gets its own outputs."""
    batches = [ImageBatch.from_arrow(t) for t in read_units(
        units, task=ReadTask(ReadOptions(batch_size=4), SPEC))]
    classifier = Classifier(InferenceOptions(model=SPEC.name), SPEC,
                            ModelFile(str(lite0_ir), ir_sha256(lite0_ir)), Recorder())
    results = [None] * (len(batches) * 3)

    def infer(i):
        results[i] = classifier.infer(batches[i % len(batches)].images)[0]

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, got in enumerate(results):
        alone = classifier.infer(batches[i % len(batches)].images)[0]
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)


FIRST_CALLS = """
import sys, threading
import numpy as np
sys.setswitchinterval(1e-6)  # the GIL changes hands as often as it can
from effnet_ray.run.inference import Classifier, ModelFile
from effnet_ray.options import InferenceOptions
from effnet_ray.models.registry import get_spec
spec = get_spec("efficientnet-lite0")
c = Classifier(InferenceOptions(model=spec.name), spec, ModelFile(sys.argv[1], ""), None)
threads = [threading.Thread(target=c.infer, args=(np.zeros((2, 224, 224, 3), np.uint8),))
           for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("all calls returned")
"""


def test_an_actors_first_calls_at_once_do_not_deadlock(lite0_ir):
    """Concurrent first calls into OpenVINO's Python API deadlocked: a C++ static initialiser
    waited for the GIL that the rival thread held while it waited for the initialiser.
    Without the start lock, 6 of 6 processes hung here; a hung process cannot report, so it
    runs apart, under a timeout."""
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", FIRST_CALLS, str(lite0_ir)],
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == "all calls returned", result.stderr


def test_a_failed_inference_reaches_the_batch_that_waits():
    inferring = Inferring([np.zeros((2, 3), np.float32)])
    inferring.done()
    inferring.done(RuntimeError("device lost"))
    with pytest.raises(RuntimeError, match="device lost"):
        inferring.wait()
    assert Inferring([np.zeros((0, 3), np.float32)]).wait()[0].shape == (0, 3)


def _compile(args):
    model, cache = args
    compile_model(InferenceOptions(model=SPEC.name, cache_dir=cache), SPEC,
                  ModelFile(model, ir_sha256(model)))
    return "compiled"


def test_actors_compiling_into_one_cache_at_once_all_start(lite0_ir, tmp_path):
    """Two actors of a node compiling the same model into a fresh cache used to abort one of
    them (OpenVINO replaced the blob the other was writing); without the lock, 4 processes
    aborted within 3 rounds here."""
    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        cache = str(tmp_path / f"cache{round_}")
        with context.Pool(4) as pool:
            assert pool.map(_compile, [(str(lite0_ir), cache)] * 4, chunksize=1) == \
                ["compiled"] * 4
