"""The progress count: never past 100%, an estimate for tar shards not read yet, exact at the
end; fed the part rows the actors send. No Ray."""

import io
import random
import re
import sys
import time

import pyarrow as pa
import pytest

from effnet_ray.inputs.listing import Source, Unit
from effnet_ray.output.layout import Part
from effnet_ray.output.resume import Committed
from effnet_ray.run.inference import part_row
from effnet_ray.run.progress import Bar, ProgressState, Tracker

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

BATCH = 32


def shard(name, samples, size=-1, kind="webdataset"):
    """A shard unit of `samples` samples; `size` None: the store gave none; -1: ~3 KB a
    sample, as the listing would give."""
    uri = f"/in/{name}.{'tar' if kind == 'webdataset' else 'parquet'}"
    return Unit(kind, (Source(kind, uri, samples * 3072 + 1024 if size == -1 else size),)), \
        samples


def files(count):
    return Unit("files", tuple(Source("files", f"/in/{i}.jpg", 3000) for i in range(count))), \
        count


def parts(unit, samples, errors_at=()):
    """The parts a unit's samples are committed as, in order."""
    return [Part(unit.uid, first, min(BATCH, samples - first),
                 sum(first <= e < first + BATCH for e in errors_at), first + BATCH >= samples)
            for first in range(0, max(samples, 1), BATCH)]


def row(part):
    """What an actor sends after committing `part` (run/inference.py's `part_row`)."""
    rows = pa.table({"class_id": pa.array([1] * (part.rows - part.errors) + [None] * part.errors,
                                          pa.int32()),
                     "error": pa.array([None] * (part.rows - part.errors)
                                       + ["cannot decode"] * part.errors, pa.string())})
    return part_row(part, rows, 0.01, 0.02)


def interleaved(units, rng, in_flight=3):
    """Parts of the units as several readers commit them: a few units at a time, in any order,
    their parts in order."""
    queue = [list(parts(u, n, errors_at=(n // 2,))) for u, n in units]
    rng.shuffle(queue)
    open_, order = [], []
    while queue or open_:
        while queue and len(open_) < in_flight:
            open_.append(queue.pop())
        pick = rng.randrange(len(open_))
        order.append(open_[pick].pop(0))
        if not open_[pick]:
            open_.pop(pick)
    return order


def check(state):
    """What must hold at every step."""
    assert 0 <= state.done <= state.total
    assert state.done < state.total or not state.estimated  # an open shard has a row to come
    line = state.line()
    pct = re.search(r"\(([\d.]+)%\)", line)
    assert pct is None or float(pct.group(1)) <= 100.0, line
    if state.exact or state.estimated:
        assert pct is not None and "+ images" not in line, line
    else:
        assert pct is None and state.eta_seconds is None, line
    return line


def mixed():
    """10 tar shards, one 100x larger than the others and with twice the samples a byte (so
    its estimate falls short), a shard the store gave no size, and image files."""
    units = [shard(f"s{i}", 40 + 7 * i) for i in range(8)]
    units += [shard("huge", 4000, size=4000 * 1536), shard("unsized", 60, size=None), files(50)]
    return units


@pytest.mark.parametrize("seed", range(6))
def test_never_past_the_total_and_exact_at_the_end(seed):
    rng = random.Random(seed)
    units = mixed()
    tracker = Tracker([u for u, _ in units], Committed(), {})
    state = tracker.state
    state.started = time.time() - 10  # a rate, so an ETA wherever the total allows one
    assert state.shards_open == 10 and not state.estimated and state.total == 50
    assert "ETA once a shard is read" in check(state)
    seen_complete = False
    for part in interleaved(units, rng):
        tracker.add(row(part))
        line = check(state)
        seen_complete |= part.last and not part.uid == units[-1][0].uid
        if seen_complete and state.shards_open:
            assert state.estimated and state.eta_seconds is not None
            assert "~" in line and "shards estimated from their sizes" in line
    exact = sum(n for _, n in units)
    assert (state.done, state.total, state.shards_open) == (exact, exact, 0)
    assert state.exact and not state.estimated
    assert state.errors == len(units)
    assert state.line().startswith(f"progress: {exact}/{exact} images (100.0%)")
    assert "~" not in state.line() and "+" not in state.line()


def test_estimate_follows_the_bytes_of_the_shards_read():
    small, huge = shard("small", 100), shard("huge", 10_000)
    tracker = Tracker([small[0], huge[0]], Committed(), {})
    for part in parts(*small):
        tracker.add(row(part))
    # 100 samples in 100*3072+1024 bytes: the huge shard's bytes say ~9,970 samples
    assert tracker.state.estimated
    assert abs(tracker.state.total - 10_100) < 0.01 * 10_100


def test_a_shard_holding_more_than_its_estimate_raises_the_total():
    a, b = shard("a", 100), shard("b", 500, size=100 * 3072 + 1024)  # b's size undersells it
    tracker = Tracker([a[0], b[0]], Committed(), {})
    for part in parts(*a) + parts(*b)[:-1]:
        tracker.add(row(part))
        check(tracker.state)
    assert tracker.state.done == 100 + 480
    assert tracker.state.total == 100 + 480 + 1  # b's last part is still to come
    tracker.add(row(parts(*b)[-1]))
    assert tracker.state.exact and tracker.state.total == tracker.state.done == 600


def test_unknown_sizes_count_as_the_mean_shard():
    units = [shard(f"s{i}", 100, size=None) for i in range(4)]
    tracker = Tracker([u for u, _ in units], Committed(), {})
    for part in parts(*units[0]):
        tracker.add(row(part))
    assert tracker.state.estimated and tracker.state.total == 400


def test_resumed_run_estimates_at_once_from_shards_read_before():
    units = [shard(f"s{i}", 64) for i in range(4)]
    committed = Committed()
    for part in parts(*units[0]):  # read completely by an earlier run
        committed.add(part)
    last = parts(*units[1])[-1]  # its last part says its length though a part is missing
    committed.add(last)
    tracker = Tracker([u for u, _ in units], committed, {})
    state = tracker.state
    assert (state.done, state.done_at_start) == (64 + last.rows,) * 2
    assert state.shards_open == 2 and state.estimated and state.total == 4 * 64
    for part in parts(*units[1])[:-1] + parts(*units[2]) + parts(*units[3]):
        tracker.add(row(part))
        check(state)
    assert (state.done, state.total, state.this_run) == (256, 256, 256 - 64 - last.rows)


def test_parquet_shard_without_a_footer_counts_as_its_error_row():
    good, broken = shard("good", 100, kind="parquet"), shard("broken", 1, kind="parquet")
    tracker = Tracker([good[0], broken[0]], Committed(), {good[0].uid: 100, broken[0].uid: None})
    assert tracker.state.estimated and tracker.state.total == 101
    tracker.add(row(Part(broken[0].uid, 0, 1, 1, True)))
    assert tracker.state.exact and tracker.state.total == 101


def test_eta_uses_the_estimated_total():
    state = ProgressState(done=500, total=1500, errors=0, shards_open=3, estimated=True,
                          started=time.time() - 10)
    assert state.eta_seconds == pytest.approx(20, rel=0.05)
    assert re.match(r"progress: 500/~1500 images \(33\.3%\), [\d.]+ images/s, ETA ~0m(19|20)s, "
                    r"0 errors, 3 shards estimated from their sizes$", state.line())
    state.estimated = False
    assert state.eta_seconds is None
    assert state.line().startswith("progress: 500/1500+ images, ")


def test_bar_total_never_below_its_count(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    units = mixed()
    tracker = Tracker([u for u, _ in units], Committed(), {})
    bar = Bar()
    bar(tracker.state)
    assert bar.bar is not None and bar.bar.total is None  # no shard read: no total to show
    for part in interleaved(units, random.Random(7)):
        tracker.add(row(part))
        bar(tracker.state)
        assert bar.bar.total is None or bar.bar.n <= bar.bar.total
    bar.close(tracker.state)
    assert bar.bar.n == bar.bar.total == sum(n for _, n in units)
