"""The run report's page: its data (`RunData`), one builder per section, and the HTML around them.

Every builder takes the gathered `RunData` and returns the section's body as HTML; a piece it cannot
make is said in the section (`missing`). Strings from data only reach the page through `esc` (names
that are not UTF-8 with their bytes as \\xNN), and matplotlib as plain text
(`alexnet.report.figures.PLAIN`). Files of the run folder are read through
`alexnet.report.run_files` (no symbolic link followed).
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.report.curves import run_title as title_of_run
from alexnet.report.figures import save_kernel_mosaic, save_neighbours_figure, save_top5_figure
from alexnet.evaluate.neighbours import nearest_neighbours
from alexnet.report.paper import example_indices, spread_sample
from alexnet.report.curves import lr_drops
from alexnet.report.page_figures import confusion_matrix, confusion_png, curves_png
from alexnet.report.run_files import NotReadHere, read_run_file
from alexnet.errors import printable, utf8_text
from alexnet.evaluate.error_rates import store_outputs

@dataclass
class RunData:
    """What the page is made of; a None field comes with a note saying why it is missing."""

    run: Path
    config: dict[str, Any] | None = None
    config_text: str | None = None
    history: list[dict] = field(default_factory=list)
    payload: dict | None = None
    data: str | None = None  # the store: --data, else the one the checkpoint names
    model: Any = None
    model_config: Any = None
    val: Any = None
    train: Any = None
    probs: np.ndarray | None = None
    rates: dict | None = None
    device: Any = None
    notes: dict[str, str] = field(default_factory=dict)
    progress: bool = False  # progress bars for the slow pieces (on stderr)
    refused: list[str] = field(default_factory=list)  # files of the run not read (run_files), and why



def esc(value: Any) -> str:
    """Any value as HTML text: it shows as itself, never as markup; the bytes of a name that is not
    UTF-8 as \\xNN (the page is UTF-8)."""
    return html.escape(utf8_text(str(value)), quote=True)


def shown(path: Any) -> str:
    """A path for a line on the terminal (alexnet.errors.printable)."""
    return printable(str(path))


def image_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def table(headers: list[str] | None, rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells (no header row when `headers` is None); columns in `numeric`
    are right-aligned."""
    def cls(j: int) -> str:
        return ' class="num"' if j in numeric else ' class="text"'

    head = "".join(f"<th{cls(j)}>{esc(h)}</th>" for j, h in enumerate(headers or []))
    body = "\n".join("<tr>" + "".join(f"<td{cls(j)}>{c}</td>" for j, c in enumerate(row)) + "</tr>" for row in rows)
    return (f"<table><thead><tr>{head}</tr></thead>" if headers else "<table>") + f"<tbody>\n{body}\n</tbody></table>"


def pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "—"


def saved_png(draw) -> bytes:
    """The bytes of a PNG that `draw(path)` writes (the analysis.figures functions write files)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return path.read_bytes()


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


def run_title(d: RunData) -> str:
    """"VARIANT on STORE, DATE": the curves' title and the page's subtitle."""
    variant = (d.config or {}).get("variant") or (d.payload or {}).get("config", {}).get("variant") or "?"
    return title_of_run(variant, d.data or (d.payload or {}).get("data"), d.history, d.run)


def _summary(d: RunData, max_classes: int) -> str:
    rows = [["run folder", esc(d.run.resolve())]]
    train = (d.config or {}).get("train")
    epochs_planned = train.get("epochs") if isinstance(train, dict) else None
    rows.append(["epochs done", esc(f"{len(d.history)}" + (f" of {epochs_planned}" if epochs_planned else ""))])
    val_rows = [h for h in d.history if isinstance(h.get("val_top1_err"), (int, float))]
    if val_rows:
        best = min(val_rows, key=lambda h: h["val_top1_err"])
        rows.append(["best validation top-1 error", esc(f"{best['val_top1_err']:.1%} (epoch {best['epoch']})")])
    seconds = sum(h.get("seconds", 0) for h in d.history if isinstance(h.get("seconds"), (int, float)))
    if seconds:
        rows.append(["training time", esc(f"{seconds / 60:.1f} min over {len(d.history)} epochs")])
    if d.payload is not None:
        rows.append(["checkpoint", esc(f"{d.payload['path']} (after epoch {d.payload.get('epoch')})")])
        rows.append(["data", esc(d.data or "none")])
        rows.append(["alexnet version", esc(d.payload.get("alexnet", "?"))])
    if d.rates is not None:
        rows.append(["this evaluation (centre patch, §6)",
                     esc(f"top-1 error {d.rates['top1_err']:.1%}, top-5 error {d.rates['top5_err']:.1%} "
                         f"on {d.rates['n']} validation images of {len(d.val.classes)} classes")])
    said = {"model": "No trained weights", "store": "No store", "val": "No evaluation"}
    notes = "".join(missing(f"{said[k]}: {d.notes[k]}.") for k in said if k in d.notes)
    refused = "".join(missing(f"Not read: {why}.") for why in dict.fromkeys(d.refused))
    return table(None, rows) + notes + refused


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


def _config(d: RunData, max_classes: int) -> str:
    config, note = d.config, d.notes.get("config", "")
    if config is None and d.payload is not None:
        config, note = d.payload.get("config"), note + " Shown: the config stored in the checkpoint."
    if not config:
        return missing(note or "No config.")
    top = [[esc(k), esc(_value(v))] for k, v in config.items() if not isinstance(v, dict)]
    blocks = [f"<div><h3>run</h3>{table(['setting', 'value'], top)}</div>"] if top else []
    for section, values in config.items():
        if isinstance(values, dict):
            rows = [[esc(k), esc(_value(v))] for k, v in values.items()]
            blocks.append(f"<div><h3>[{esc(section)}]</h3>{table(['setting', 'value'], rows)}</div>")
    raw = (f"<details><summary>config.toml as written</summary><pre>{esc(d.config_text)}</pre></details>"
           if d.config_text else "")
    return (missing(note.strip()) if note else "") + f'<div class="grid">{"".join(blocks)}</div>' + raw


def _curves(d: RunData, max_classes: int) -> str:
    if not d.history:
        return missing(d.notes.get("curves", "No metrics yet."))
    drops = lr_drops(d.history)
    said = (f"Red dotted lines: the learning rate fell (after epoch{'s' if len(drops) > 1 else ''} "
            f"{', '.join(str(int(x)) for x, _ in drops)})." if drops else "The learning rate did not change.")
    keys = [("epoch", "epoch"), ("lr", "lr"), ("train_loss", "train loss"), ("train_top1_err", "train top-1"),
            ("val_loss", "val loss"), ("val_top1_err", "val top-1"), ("val_top5_err", "val top-5"),
            ("images_per_s", "images/s")]

    def cell(key: str, v: Any) -> str:
        if not isinstance(v, (int, float)):
            return "—"
        return pct(v) if key.endswith("_err") else f"{v:.4g}" if key != "images_per_s" else f"{v:,.0f}"

    rows = [[esc(cell(k, h.get(k))) for k, _ in keys] for h in d.history]
    note = missing(d.notes["curves"]) if "curves" in d.notes else ""
    return (note + image_tag(curves_png(d.history, run_title(d)), "training curves")
            + f'<p class="caption">Error rates on a log axis, so the progress after the first epochs shows. '
              f"{esc(said)}</p>"
            + f'<details><summary>every epoch</summary><div class="scroll">'
              f"{table([h for _, h in keys], rows, set(range(len(keys))))}</div></details>")


def reason(d: RunData, *keys: str) -> str:
    """The first note among `keys`: why a piece is missing."""
    return next((d.notes[k] for k in keys if k in d.notes), "not available")


def _no_eval(d: RunData) -> str | None:
    if d.rates is not None:
        return None
    return missing(f"Needs an evaluation on the validation split, not possible here: "
                   f"{reason(d, 'model', 'store', 'val')}.")


def confusion_of(d: RunData) -> np.ndarray:
    return confusion_matrix(d.val.labels, d.probs.argmax(1), len(d.val.classes))


def _per_class(d: RunData, max_classes: int) -> str:
    if (no := _no_eval(d)) is not None:
        return no
    counts = confusion_of(d)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    names = d.val.class_names
    order = sorted(d.rates["per_class"], key=lambda r: (r["top1_accuracy"] is None, -(1 - (r["top1_accuracy"] or 0)),
                                                        -(1 - (r["top5_accuracy"] or 0)), r["label"]))
    rows = []
    for rank, r in enumerate(order, start=1):
        c = r["label"]
        err = None if r["top1_accuracy"] is None else 1 - r["top1_accuracy"]
        err5 = None if r["top5_accuracy"] is None else 1 - r["top5_accuracy"]
        taken = int(off[c].argmax())
        mistaken = (f"{esc(names[taken])} ({off[c, taken]}/{r['n']})" if off[c, taken] else "—")
        bar = f'<span class="bar" style="width:{round(60 * err)}px"></span>' if err else ""
        rows.append([str(rank), esc(names[c]), esc(d.val.classes[c]), str(c), str(r["n"]), esc(pct(err)) + bar,
                     esc(pct(err5)), mistaken])
    return (f'<p class="caption">{len(rows)} classes, the highest top-1 error first (validation split, centre '
            f"patch). “Most often taken for”: the wrong class predicted most often for that class’s images.</p>"
            f'<div class="scroll">' + table(["#", "class", "id", "label", "images", "top-1 error", "top-5 error",
                                             "most often taken for"], rows, {0, 3, 4, 5, 6}) + "</div>")


def _confusion(d: RunData, max_classes: int) -> str:
    if (no := _no_eval(d)) is not None:
        return no
    counts = confusion_of(d)
    c = len(counts)
    if c > max_classes:
        err = 1 - np.diag(counts) / np.maximum(counts.sum(1), 1)
        shown = np.sort(np.argsort(-err, kind="stable")[:max_classes])
        said = (f"The {max_classes} classes (of {c}) with the highest top-1 error, in label order; predictions "
                f"into the other classes are not drawn.")
    else:
        shown = np.arange(c)
        said = f"All {c} classes, in label order."
    sub = counts[np.ix_(shown, shown)]
    names = [d.val.class_names[i] for i in shown]
    png = confusion_png(sub, names, [int(i) for i in shown], f"{d.rates['n']} validation images, centre patch")
    off = counts.copy()
    np.fill_diagonal(off, 0)
    pairs = np.argsort(-off, axis=None, kind="stable")[:10]
    rows = [[esc(d.val.class_names[i]), esc(d.val.class_names[j]), str(off[i, j]),
             esc(pct(off[i, j] / max(counts[i].sum(), 1)))]
            for i, j in (np.unravel_index(p, off.shape) for p in pairs) if off[i, j]]
    top = ("<h3>Most frequent confusions</h3>" + table(["true class", "predicted as", "images", "share"], rows, {2, 3})
           if rows else "<p>No confusions: every image was classified correctly.</p>")
    axes = "" if c <= 40 else " The axes give label numbers (the per-class table’s “label” column)."
    return (image_tag(png, "confusion matrix") + f'<p class="caption">Rows: the true class; columns: the '
            f"predicted one; each row as shares of that class’s images, on a square-root colour scale so that "
            f"small confusions show. {esc(said)}{esc(axes)}</p>" + top)


def _top5(d: RunData, max_classes: int) -> str:
    if (no := _no_eval(d)) is not None:
        return no
    shown = example_indices(d.val.labels, d.probs.argmax(1))
    png = saved_png(lambda path: save_top5_figure(d.val.get_batch(shown), d.probs[shown], d.val.labels[shown],
                                                  d.val.class_names, path))
    wrong = int((d.probs[shown].argmax(1) != d.val.labels[shown]).sum())
    return (image_tag(png, "top-5 predictions") + f'<p class="caption">Validation images with the five labels the '
            f"net finds most probable (§6.1, Fig. 4 left); the correct label is under each image and its bar is "
            f"red when it is among the five. {wrong} of these {len(shown)} are top-1 mistakes.</p>")


NEIGHBOUR_DATABASE = 2000  # training images searched: a few seconds on a CPU; `alexnet figures` searches all


def _made_neighbours(d: RunData) -> tuple[bytes | None, str]:
    """RUN/figures/neighbours.png when `alexnet figures` drew it after the checkpoint was written and it
    is a PNG, a plain file of the run (run_files); else None and what is wrong with it (or "")."""
    try:
        png, st = read_run_file(d.run, "figures/neighbours.png")
    except FileNotFoundError:
        return None, ""
    except (NotReadHere, OSError) as e:
        d.refused += [str(e)] if isinstance(e, NotReadHere) else []
        return None, str(e)
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        return None, "figures/neighbours.png is not a PNG image; not shown"
    return (png if st.st_mtime >= Path(d.payload["path"]).stat().st_mtime else None), ""


def _neighbours(d: RunData, max_classes: int) -> str:
    made = d.run / "figures" / "neighbours.png"
    png, why = _made_neighbours(d) if d.payload is not None else (None, "")
    note = missing(why + ".") if why else ""
    if png is not None:
        return (image_tag(png, "nearest neighbours") + f'<p class="caption">From '
                f"{esc(made)} (written by “alexnet figures”): each query image and its nearest training images "
                f"in fc7 space (§6.1, Fig. 4 right).</p>")
    if d.payload is None or d.val is None or d.train is None:
        return note + missing(f"Needs the trained net and the store's train and val splits, not possible here: "
                              f"{reason(d, 'model', 'store', 'val', 'train')}.")
    database = np.sort(spread_sample(d.train.labels, NEIGHBOUR_DATABASE, seed=0))
    queries = spread_sample(d.val.labels, 5, seed=1)
    data_config = d.model_config.data
    query_features = store_outputs(d.model, d.val, d.device, output="features", indices=queries,
                                   data_config=data_config)
    database_features = store_outputs(d.model, d.train, d.device, output="features", indices=database,
                                      data_config=data_config, progress=d.progress, desc="fc7 of train images")
    _, nearest = nearest_neighbours(query_features, database_features, 6, d.device)
    rows = database[nearest]
    names = d.train.class_names
    png = saved_png(lambda path: save_neighbours_figure(
        d.val.get_batch(queries), [d.train.get_batch(r) for r in rows], path,
        query_titles=[names[d.val.labels[q]] for q in queries],
        neighbour_titles=[[names[d.train.labels[j]] for j in r] for r in rows]))
    return (note + image_tag(png, "nearest neighbours") + '<p class="caption">First column (red frame): validation '
            "images; after each, the six training images whose last-hidden-layer (fc7) vectors are nearest in "
            "Euclidean distance (§6.1, Fig. 4 right), searched among "
            + (f"all {len(d.train)} training images.</p>" if len(database) == len(d.train) else
               f"{len(database)} of the {len(d.train)} training images (“alexnet figures” searches them all).</p>"))


def _kernels(d: RunData, max_classes: int) -> str:
    if d.model is None:
        return missing(f"No trained weights: {reason(d, 'model')}.")
    conv1 = d.model.conv1
    towers = d.model_config.model.towers
    title = f"conv1: {conv1.out_channels} kernels {conv1.kernel_size[0]}x{conv1.kernel_size[1]}x3"
    png = saved_png(lambda path: save_kernel_mosaic(conv1.weight.detach().cpu(), path, towers, title=title))
    return (image_tag(png, "conv1 kernels") + '<p class="caption">The first layer’s kernels on one colour scale '
            "(one linear map from weight to brightness for all of them, as cuda-convnet draws them), so a weak kernel looks "
            "weak (§6.1, Fig. 3: with two towers, tower 1’s on top; the paper’s GPU 1 learned mostly "
            "colour-agnostic kernels, GPU 2 mostly colour-specific ones).</p>")


SECTIONS = (
    ("summary", "Summary", _summary),
    ("config", "Configuration", _config),
    ("curves", "Training curves", _curves),
    ("per-class", "Per-class error", _per_class),
    ("confusion", "Confusion matrix", _confusion),
    ("top5", "Top-5 predictions", _top5),
    ("neighbours", "Nearest neighbours", _neighbours),
    ("kernels", "conv1 kernels", _kernels),
)
