"""An output -> one self-contained HTML page a person opens after a run.

Counts and errors by reason, the most frequent classes, the distribution of top-1
confidence, each run's duration and throughput from the manifest, accuracy and confusions
when there is ground truth, and thumbnails of the least confident images and of examples of
the frequent classes. Charts are matplotlib SVG and thumbnails small JPEG data URIs, inline:
the page loads nothing from anywhere. Thumbnails are read from the inputs through the same
storage layer as the labeling job; samples of shards cost reading their shard, so at most
`MAX_SHARDS` shards are read.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.spec import AbstractFileSystem

from effnet_ray.errors import UserError
from effnet_ray.inputs.fetch import read_object
from effnet_ray.inputs.listing import SHARD_KINDS, suffix
from effnet_ray.inputs.preprocessing import decode
from effnet_ray.inputs.reading import unit_samples
from effnet_ray.inputs.samples import ReadTask, shards_of
from effnet_ray.models.registry import ModelSpec, get_spec
from effnet_ray.options import MAX_PIXELS, ReadOptions
from effnet_ray.output.layout import TIME_FORMAT
from effnet_ray.output.manifest import read_manifest
from effnet_ray.output.rows import reason_kind
from effnet_ray.results.evaluate import COLUMNS, Evaluation, evaluate_table, read_output
from effnet_ray.results.truth import read_truth_file
from effnet_ray.storage import is_local, local_path, named_errors, open_fs, put_atomic, redact

if TYPE_CHECKING:  # matplotlib is an extra, imported only when a page is drawn
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TOP_CLASSES = 20
LEAST_CONFIDENT = 12
EXAMPLE_CLASSES = 6
EXAMPLES = 4
MAX_SHARDS = 4
THUMB = 160


def _svg(figure: Figure) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    figure.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _charts(names: list[str], counts: list[int], confidence: np.ndarray) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small and selectable
    matplotlib.rcParams["svg.hashsalt"] = "effnet-ray"  # the same page for the same output
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(names), 3) + 0.8))
    ax.barh(range(len(names))[::-1], counts, color="#3b6ea8")
    ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
    ax.set_xlabel("images")
    ax.locator_params(axis="x", integer=True)
    ax.set_title("Most frequent classes (top-1)")
    classes = _svg(fig)
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.hist(confidence, bins=40, range=(0, 1), color="#7a9e3b")
    ax.set_xlabel("top-1 probability")
    ax.set_ylabel("images")
    ax.set_title("Confidence")
    return classes, _svg(fig)


def _shard_of(path: str) -> str | None:
    """The shard a sample's path names (`SHARD::KEY`), or None for a plain file."""
    return next((s for s in shards_of(path) if suffix(s) in SHARD_KINDS), None)


def fetch(paths: list[str], spec: ModelSpec, storage_options: dict | None = None
          ) -> dict[str, bytes]:
    """The bytes of the inputs behind output paths, where they can still be read."""
    task = ReadTask(ReadOptions(), spec, storage_options)
    found: dict[str, bytes] = {}
    by_shard: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        shard = _shard_of(path)
        if shard:
            by_shard[shard].add(path)
            continue
        try:
            found[path] = read_object(local_path(path), None, task)
        except Exception as exc:  # a thumbnail is a nicety: the page says it is missing
            log.debug("no thumbnail for %s: %s", path, exc)
    for shard, wanted in list(by_shard.items())[:MAX_SHARDS]:
        try:
            for sample in unit_samples(SHARD_KINDS[suffix(shard)], [local_path(shard)], [None],
                                       [None], task, lambda i: False):
                if sample is not None and sample.path in wanted and sample.data:
                    found[sample.path] = sample.data
        except Exception as exc:
            log.debug("no thumbnails from %s: %s", shard, exc)
    return found


def thumbnail(data: bytes) -> str | None:
    try:
        image = decode(data, MAX_PIXELS)
    except Exception:
        return None
    image.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _reasons(errors: pa.ChunkedArray) -> list[tuple[str, int]]:
    """Error rows by reason, without the per-file details in parentheses."""
    counts = pc.value_counts(errors.drop_null()).to_pylist()
    kinds: Counter[str] = Counter()
    for c in counts:
        kinds[reason_kind(c["values"])] += c["counts"]
    return kinds.most_common()


def _runs(manifest: dict | None) -> list[dict]:
    runs = []
    for run in (manifest or {}).get("runs", []):
        seconds = None
        try:
            started = datetime.strptime(run["started"], TIME_FORMAT)
            ended = datetime.strptime(run["ended"], TIME_FORMAT)
            seconds = (ended - started).total_seconds()
        except (KeyError, TypeError, ValueError):
            pass
        done = run.get("this_run")
        counted = isinstance(done, (int, float)) and not isinstance(done, bool)
        rate = done / seconds if seconds and counted else None
        runs.append({**run, "seconds": seconds, "rate": rate})
    return runs


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:left}td.n{text-align:right}.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#f4f6f8;padding:.7em 1.1em;border-radius:6px}.card b{display:block;font-size:1.4em}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:170px;font-size:.75em}
figure img,figure .missing{width:160px;height:160px;object-fit:contain;background:#eee;
display:flex;align-items:center;justify-content:center;color:#888}
figcaption{word-break:break-all}svg{max-width:100%;height:auto}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _figure(row: dict, images: dict[str, str]) -> str:
    src = images.get(row["path"])
    picture = (f'<img class="thumb" alt="{_e(row["label"])}" src="{src}">' if src else
               '<div class="missing">not readable</div>')
    prob = row["top_k_probs"][0] if row["top_k_probs"] else 0.0
    name = row["path"].rsplit("/", 1)[-1]
    return (f"<figure>{picture}<figcaption><b>{_e(row['label'])}</b> {prob:.2f}<br>"
            f"<span title=\"{_e(row['path'])}\">{_e(name)}</span></figcaption></figure>")


def _table(header: list[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{_e(v)}</td>' if isinstance(v, (int, float)) else f"<td>{_e(v)}</td>"
        for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class _Picks:
    """What the page shows of the labelled rows: class counts, the most frequent classes,
    the least confident rows and the best examples of the frequent classes."""

    labelled: pa.Table
    counts: np.ndarray
    top: list[int]
    label_of: dict[int, str]
    confidence: np.ndarray
    least: list[dict]
    examples: dict[int, list[dict]]

    @classmethod
    def of(cls, table: pa.Table) -> _Picks:
        labelled = table.filter(pc.is_null(table.column("error")))
        class_ids = labelled.column("class_id").to_numpy(zero_copy_only=False)
        counts = np.bincount(class_ids, minlength=1) if len(class_ids) else np.zeros(1, int)
        top = [int(c) for c in np.argsort(-counts, kind="stable")[:TOP_CLASSES] if counts[c]]
        label_of = dict(zip(class_ids.tolist(), labelled.column("label").to_pylist(),
                            strict=True))
        confidence = pc.list_element(labelled.column("top_k_probs"), 0).to_numpy(
            zero_copy_only=False) if labelled.num_rows else np.zeros(0)
        least = np.argsort(confidence, kind="stable")[:LEAST_CONFIDENT]
        least_rows = labelled.take(pa.array(least, pa.int64())).to_pylist() if len(least) \
            else []
        examples = {}
        for c in top[:EXAMPLE_CLASSES]:
            where = np.flatnonzero(class_ids == c)
            best = where[np.argsort(-confidence[where], kind="stable")[:EXAMPLES]]
            examples[c] = labelled.take(pa.array(best, pa.int64())).to_pylist()
        return cls(labelled, counts, top, label_of, confidence, least_rows, examples)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.least] + [r["path"] for rows in self.examples.values()
                                                  for r in rows]


def _cards(table: pa.Table, labelled: pa.Table, evaluation: Evaluation) -> str:
    cards = [(table.num_rows, "images"), (labelled.num_rows, "labelled"),
             (table.num_rows - labelled.num_rows, "errors")]
    if evaluation.top1 is not None:
        cards.append((f"{100 * evaluation.top1:.2f}%", f"top-1 on {evaluation.images} images"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{_e(value)}</b>{_e(what)}</div>' for value, what in cards) \
        + "</div>"


def _runs_section(manifest: dict | None) -> list[str]:
    runs = _runs(manifest)
    if not runs:
        return []
    return ["<h2>Runs</h2>", _table(
        ["started", "status", "host", "images this run", "seconds", "images/s"],
        [[r.get("started"), r.get("status"), r.get("host"), r.get("this_run", ""),
          "" if r["seconds"] is None else round(r["seconds"]),
          "" if r["rate"] is None else round(r["rate"], 2)] for r in runs])]


def _accuracy_section(evaluation: Evaluation) -> list[str]:
    if not evaluation.images or evaluation.top1 is None or evaluation.ece is None:
        return []
    top5 = "n/a" if evaluation.top5 is None else f"{100 * evaluation.top5:.2f}%"
    return ["<h2>Accuracy</h2>",
            f"<p>top-1 {100 * evaluation.top1:.2f}%, top-5 {top5}, calibration error "
            f"(ECE) {evaluation.ece:.4f} on {evaluation.images} images; "
            f"{evaluation.without_ground_truth} without ground truth.</p>",
            _table(["true", "predicted", "images"],
                   [[p["true_label"], p["predicted_label"], p["images"]]
                    for p in evaluation.confused_pairs])]


def _truth_problems_section(evaluation: Evaluation) -> list[str]:
    if not evaluation.ground_truth_problems:
        return []
    return ["<h2>Ground-truth file</h2>", "<ul>", *(
        f"<li>{_e(p['message'])}</li>" for p in evaluation.ground_truth_problems), "</ul>"]


def _galleries(picks: _Picks, images: dict[str, str]) -> list[str]:
    parts = []
    if picks.least:
        parts += ["<h2>Least confident</h2>", '<div class="grid">',
                  *(_figure(r, images) for r in picks.least), "</div>"]
    for c, rows in picks.examples.items():
        many = f"{int(picks.counts[c])} image" + ("s" if picks.counts[c] > 1 else "")
        parts += [f"<h2>Examples: {_e(picks.label_of[c])} ({many})</h2>",
                  '<div class="grid">', *(_figure(r, images) for r in rows), "</div>"]
    return parts


def build_html(out: str, table: pa.Table, evaluation: Evaluation, manifest: dict | None,
               storage_options: dict | None = None) -> str:
    picks = _Picks.of(table)
    classes_svg, confidence_svg = _charts([picks.label_of[c] for c in picks.top],
                                          [int(picks.counts[c]) for c in picks.top],
                                          picks.confidence)
    spec = get_spec(evaluation.model)
    images = {p: t for p, data in fetch(picks.paths(), spec, storage_options).items()
              if (t := thumbnail(data))}
    reasons = _reasons(table.column("error"))
    parts = [f"<h1>effnet-ray: {_e(redact(out))}</h1>",
             f"<p>model {_e(evaluation.model)}; report made "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
             _cards(table, picks.labelled, evaluation)]
    if reasons:
        parts += ["<h2>Errors by reason</h2>", _table(["reason", "images"], reasons)]
    parts += ["<h2>Classes</h2>", classes_svg, "<h2>Confidence</h2>", confidence_svg]
    parts += (_runs_section(manifest) + _accuracy_section(evaluation)
              + _truth_problems_section(evaluation) + _galleries(picks, images))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>effnet-ray report</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(out: str, destination: str, ground_truth_file: str | None = None,
                 storage_options: dict | None = None) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("report needs matplotlib: pip install 'effnet-ray[report]'") from None
    dest_fs, dest = open_fs(destination, storage_options)
    _check_destination(dest_fs, dest, redact(destination))
    table = read_output(out, COLUMNS + ["label"], storage_options)
    entries = read_truth_file(ground_truth_file, storage_options) if ground_truth_file \
        else None
    evaluation = evaluate_table(table, entries)
    fs, path = open_fs(out, storage_options)
    page = build_html(out, table, evaluation, read_manifest(fs, path), storage_options)
    with named_errors(destination):
        put_atomic(dest_fs, dest, page.encode())
    return destination


def _check_destination(fs: AbstractFileSystem, path: str, shown: str) -> None:
    """Refuse, before any work, a local page that cannot be written where it is named."""
    if not is_local(fs):
        return
    if os.path.isdir(path):
        raise UserError(f"{shown} is a folder, not a page to write")
    if not os.path.isdir(os.path.dirname(path)):
        raise UserError(f"cannot write {shown}: its folder does not exist")
