"""`write_run_report`: one self-contained HTML page about a run, checked by parsing it, against the
public evaluation, and in a real headless browser (Debian's chromium) when one is installed."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.report.page import write_run_report
from alexnet.report.curves import lr_drops, percent_ticks
from alexnet.report.page_figures import confusion_matrix
from alexnet.report.page_sections import SECTIONS, example_indices
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import evaluate

HEADINGS = [heading for _, heading, _ in SECTIONS]


class PageParser(HTMLParser):
    """The page's h2 headings, img sources, visible text, and the rows of the table after each h2."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.text, self.tables = [], [], [], {}
        self._tag_stack, self._row, self._cell, self._section = [], None, None, None

    def handle_starttag(self, tag, attrs):
        self._tag_stack.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if self._tag_stack:
            self._tag_stack.pop()
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self._section, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._tag_stack and self._tag_stack[-1] == "h2":
            self.headings.append(data)
            self._section = data
        if self._cell is not None:
            self._cell.append(data)
        if not (self._tag_stack and self._tag_stack[-1] in ("style", "title")):
            self.text.append(data)


def parse(page: str) -> PageParser:
    p = PageParser()
    p.feed(page)
    return p


def linked_store(demo_store: Path, dst: Path, **meta_changes) -> Path:
    """A copy of the demo store whose image files are links and whose meta.json is changed."""
    shutil.copytree(demo_store, dst, copy_function=os.symlink)
    meta = json.loads((demo_store / "meta.json").read_text())
    meta.update(meta_changes)
    (dst / "meta.json").unlink()
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert write_run_report(tiny_run, out) == out
    return out


def test_the_page_is_self_contained_and_has_every_section(report):
    page = report.read_text()
    p = parse(page)
    assert p.headings == HEADINGS
    assert not re.search(r"<script|<link|<iframe|@import|url\(", page, re.I)
    assert not re.search(r"(src|href)=\"(?!data:image/png;base64,|#)", page)  # nothing fetched from anywhere
    assert len(p.images) == 5  # curves, confusion matrix, top-5, neighbours, kernels
    for src in p.images:
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and min(png.size) > 100
        assert len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    assert 'class="missing"' not in page  # every piece was there
    assert not list(report.parent.glob("*.tmp"))


def test_the_slow_pieces_show_progress(tiny_run, tmp_path, capsys):
    """Evaluating the val split, the training images' fc7 vectors and each section (figures take
    seconds each) show on stderr; nothing on stdout."""
    write_run_report(tiny_run, tmp_path / "page.html", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    for bar in ("eval:", "fc7 of train images:", "report:"):
        assert bar in captured.err
    for _, heading, _ in SECTIONS:
        assert heading in captured.err
    write_run_report(tiny_run, tmp_path / "quiet.html")
    assert capsys.readouterr().err == ""


def test_the_per_class_table_is_the_evaluation_sorted_by_error(report, tiny_run, demo_store):
    rows = parse(report.read_text()).tables["Per-class error"]
    header, rows = rows[0], rows[1:]
    assert header[:7] == ["#", "class", "id", "label", "images", "top-1 error", "top-5 error"]
    reference = evaluate([tiny_run / "best.pt"], demo_store, "val", 1, device="cpu", progress=False)["per_class"]
    assert len(rows) == len(reference) == 10
    by_label = {r["label"]: r for r in reference}
    errors = []
    for row in rows:
        r = by_label[int(row[3])]
        assert row[1] == r["name"] and row[2] == r["wnid"] and int(row[4]) == r["n"]
        assert row[5] == f"{1 - r['top1_accuracy']:.1%}" and row[6] == f"{1 - r['top5_accuracy']:.1%}"
        errors.append(1 - r["top1_accuracy"])
    assert errors == sorted(errors, reverse=True)
    assert [int(row[0]) for row in rows] == list(range(1, 11))


def test_the_config_tables_show_the_runs_config_toml(report, tiny_run):
    import tomllib

    config = tomllib.loads((tiny_run / "config.toml").read_text())
    text = "".join(parse(report.read_text()).text)
    for section, values in config.items():
        if isinstance(values, dict):
            assert f"[{section}]" in text
    tables = parse(report.read_text()).tables["Configuration"]
    settings = {row[0]: row[1] for row in tables if len(row) == 2}
    assert settings["batch_size"] == str(config["train"]["batch_size"]) and settings["variant"] == config["variant"]


def test_confusion_matrix_counts_each_true_predicted_pair():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    expected = np.zeros((7, 7), np.int64)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, 7), expected)


def test_lr_drops_and_percent_ticks():
    history = [{"epoch": e, "lr": lr} for e, lr in enumerate([0.01, 0.01, 0.001, 0.001, 0.0001], start=1)]
    assert lr_drops(history) == [(2.5, pytest.approx(10)), (4.5, pytest.approx(10))]
    assert percent_ticks(0.38, 0.95) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # a narrow range still gets ticks
    assert percent_ticks(0.0015, 1.0) == [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_examples_are_half_mistakes_from_different_classes():
    labels = np.repeat(np.arange(10), 10)
    predicted = labels.copy()
    predicted[::3] = (predicted[::3] + 1) % 10  # 34 mistakes
    picked = example_indices(labels, predicted, 8)
    assert len(set(picked.tolist())) == 8
    assert (predicted[picked] != labels[picked]).sum() == 4
    assert len(set(labels[picked[:4]].tolist())) == 4 and len(set(labels[picked[4:]].tolist())) == 4
    few = labels.copy()
    few[[15, 50]] = 0  # only two mistakes: both shown, the rest correct
    picked = example_indices(labels, few, 8)
    assert len(set(picked.tolist())) == 8 and sorted(picked[:2].tolist()) == [15, 50]
    assert (few[picked[2:]] == labels[picked[2:]]).all()


def test_names_from_data_show_as_text_on_the_page_and_in_figures(tiny_run, demo_store, tmp_path):
    meta = json.loads((demo_store / "meta.json").read_text())
    odd = ["<b>bold</b> & co", r"$\frac{x$ cash", 'say "hi" \'there\'', "<script>alert(1)</script>"]
    names = odd + meta["class_names"][len(odd):]
    store = linked_store(demo_store, tmp_path / "store", class_names=names)
    out = write_run_report(tiny_run, tmp_path / "odd.html", data=store)  # mathtext would raise on the $ pair
    page = out.read_text()
    assert "<b>bold</b>" not in page and "<script>" not in page
    p = parse(page)
    cells = {row[1] for row in p.tables["Per-class error"][1:]}
    assert set(odd) <= cells  # the browser's text is the name itself
    assert html.escape(odd[1]) in page and str(store) in "".join(p.text)


def test_missing_pieces_are_said_on_the_page(tiny_run, demo_store, tmp_path):
    run = tmp_path / "young"
    run.mkdir()
    shutil.copy(tiny_run / "config.toml", run / "config.toml")  # started, no epoch finished yet
    page = write_run_report(run).read_text()
    p = parse(page)
    assert p.headings == HEADINGS and not p.images
    text = " ".join(p.text)
    assert "No metrics yet" in text and "No trained weights" in text
    assert "holds no checkpoint" in text

    no_val = linked_store(demo_store, tmp_path / "noval", splits={"train": 1000, "val": 0})
    page = write_run_report(tiny_run, tmp_path / "noval.html", data=no_val).read_text()
    p = parse(page)
    text = " ".join(p.text)
    assert "has no 'val' split" in text
    assert len(p.images) == 2  # the curves and the kernels need no val split


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_run_report(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is not a run folder"):
        write_run_report(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        write_run_report(tmp_path / "file.txt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('variant = "tiny"\n')
    with pytest.raises(UserError, match="'gpu0' is not a device"):  # the user's mistake, not a missing piece
        write_run_report(run, device="gpu0")


def test_an_interrupted_write_leaves_the_previous_page(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.toml", run)
    out = write_run_report(run)
    before = out.read_bytes()
    (run / "metrics.jsonl").write_text((tiny_run / "metrics.jsonl").read_text())

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_run_report(run)
    assert out.read_bytes() == before


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_browser() is None, reason="no chromium/chromium-browser on PATH (apt-get install chromium)")
def test_the_page_renders_in_a_headless_browser(report, tmp_path):
    flags = [_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", url], check=True,
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (2400, 1200, 3)
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    white = (img.min(2) >= 250).mean()
    assert colours > 500 and white < 0.95, (colours, white)  # a blank page: one colour, all white
    # the header band is drawn (dark blue across the top), so the CSS was applied
    assert (img[10:60, :, 2].astype(int) - img[10:60, :, 0]).mean() > 40
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True).stdout
    assert [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", dom)] == HEADINGS
