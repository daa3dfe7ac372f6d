"""`evaluate` and `report` on a real Lite0 output of the bundled photos and their variants,
with ground truth in each of its three forms. Accuracy is compared with an independent count
made here from the Parquet rows; the report is opened in a real headless Chromium."""

import io
import json
import re
import shutil
import tarfile

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image, ImageOps

from effnet_ray.models.registry import PHOTOS, load_wnids
from tests.helpers import debian_tool, one_line_error, run_cli

WNIDS = load_wnids("imagenet_2012.txt")
# Ground truth the test decides: some right for Lite0, some wrong (chelsea is a tabby or
# Egyptian cat for people; the rocket a space shuttle), so that top-1 and top-5 differ.
TRUTH = {"coffee": 967, "chelsea": 281, "camera": 872, "rocket": 812, "astronaut": 560,
         "hubble_deep_field": 110, "logo": 920}


def variants(photo, count):
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    for k in range(count):
        v = image.crop((k * 9 % (w // 5), k * 7 % (h // 5), w, h))
        yield ImageOps.mirror(v) if k % 2 else v


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, lite0_ir):
    """A labelled output and, per output path, the class the test assigned (or None)."""
    root = tmp_path_factory.mktemp("truth")
    truth = {}
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix != ".md")
    # 1. ImageNet class folders
    for photo in photos:
        folder = root / "folders" / WNIDS[TRUTH[photo.stem]]
        folder.mkdir(parents=True)
        for k, image in enumerate(variants(photo, 3)):
            image.save(folder / f"{photo.stem}-{k}.jpg", quality=90)
            truth[str(folder / f"{photo.stem}-{k}.jpg")] = TRUTH[photo.stem]
    (root / "folders" / WNIDS[1]).mkdir()
    (root / "folders" / WNIDS[1] / "broken.jpg").write_bytes(b"not an image")  # error row
    truth[str(root / "folders" / WNIDS[1] / "broken.jpg")] = 1
    # 2. a WebDataset shard with .cls; one sample without one
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, photo in enumerate(photos):
            for name, data in ((f"s{i}.jpg", photo.read_bytes()),
                               (f"s{i}.cls", str(TRUTH[photo.stem]).encode())):
                if name == "s0.cls":
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "shards").mkdir()
    (root / "shards" / "a.tar").write_bytes(buf.getvalue())
    for i, photo in enumerate(photos):
        truth[f"{root}/shards/a.tar::s{i}"] = None if i == 0 else TRUTH[photo.stem]
    # 3. plain files, named in a ground-truth file; two are not in it
    (root / "plain").mkdir()
    for photo in photos:
        shutil.copy(photo, root / "plain" / photo.name)
    listed = photos[:-2]
    csv = root / "truth.csv"
    csv.write_text("path,class_id\n" + "".join(
        f"{root}/plain/{p.name},{TRUTH[p.stem]}\n" for p in listed))
    val = root / "val.txt"  # ImageNet's format: file names only
    val.write_text("".join(f"{p.name} {TRUTH[p.stem]}\n" for p in listed))
    for photo in photos:
        truth[str(root / "plain" / photo.name)] = TRUTH[photo.stem] if photo in listed else None
    out = root / "out"
    result = run_cli("label", root / "folders", root / "shards", root / "plain", "--output",
                     out, "--model", "efficientnet-lite0", "--model-path", lite0_ir,
                     "--precision", "f32", "--top-k", "5")
    assert result.returncode == 0, result.stderr
    return out, truth, csv, val, result


def independent(out, truth):
    """top-1, top-5 and counts from the rows, one at a time."""
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(truth)
    n = right1 = right5 = errors = missing = 0
    for row in rows:
        actual = truth[row["path"]]
        if row["error"] is not None:
            errors += 1
        elif actual is None:
            missing += 1
        else:
            n += 1
            right1 += row["top_k_ids"][0] == actual
            right5 += actual in row["top_k_ids"]
    return {"images": n, "top1": right1 / n, "top5": right5 / n, "errors": errors,
            "without_ground_truth": missing, "rows": len(rows)}


@pytest.mark.parametrize("form", ["csv", "val"])
def test_evaluate_equals_an_independent_count(labelled, form):
    out, truth, csv, val, _ = labelled
    result = run_cli("evaluate", out, "--ground-truth", csv if form == "csv" else val,
                     "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = independent(out, truth)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < got["top1"] < got["top5"] <= 1
    assert got["ground_truth"] == {"file": 5, "source_label": 6, "class folder": 22}
    assert sum(c["images"] for c in got["per_class"]) == got["images"]
    assert 0 <= got["ece"] <= 1 and got["confused_pairs"]
    text = run_cli("evaluate", out, "--ground-truth", csv)
    assert "top-1" in text.stdout and "most confused" in text.stdout


def test_evaluate_without_a_file_uses_folders_and_cls(labelled):
    out, truth, *_ = labelled
    plain = {p: (None if "/plain/" in p else c) for p, c in truth.items()}
    got = json.loads(run_cli("evaluate", out, "--json").stdout)
    assert got["images"] == independent(out, plain)["images"]


def test_bad_ground_truth_is_one_line(labelled, tmp_path):
    out, *_ = labelled
    (tmp_path / "gt.txt").write_text("a b c\n")
    one_line_error(run_cli("evaluate", out, "--ground-truth", tmp_path / "gt.txt"),
                   "gt.txt line 1", "'c' is not an integer")
    one_line_error(run_cli("evaluate", tmp_path / "nope"), "does not exist")


def test_label_ends_with_a_summary_of_classes_and_errors(labelled):
    *_, result = labelled
    assert "most frequent this run: " in result.stdout
    assert "errors this run: not a recognised image format 1" in result.stdout


@pytest.fixture(scope="module")
def chromium():
    return debian_tool("chromium")


def test_report_renders_in_a_real_browser_with_nothing_from_the_network(labelled, chromium,
                                                                          tmp_path):
    from playwright.sync_api import sync_playwright

    out, _, csv, *_ = labelled
    page_file = tmp_path / "report.html"
    result = run_cli("report", out, "--ground-truth", csv, "--html", page_file)
    assert result.returncode == 0, result.stderr
    text = page_file.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//""",
                         text)  # XML namespaces are names, not requests
    console, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: console.append(m) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(e))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("networkidle")
        thumbs = page.locator("img.thumb").count()
        loaded = page.evaluate(
            "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        charts = page.locator("svg").count()
        shot = page.screenshot(full_page=True)
        browser.close()
    assert console == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert thumbs >= 7 and loaded == thumbs and charts >= 2
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the screenshot is blank"
    assert "Accuracy" in text and "Least confident" in text and "Errors by reason" in text
