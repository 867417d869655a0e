"""`alexnet report RUN`: one self-contained HTML page about a run, to open in any browser.

The page holds the run's config, its training curves, a per-class error table sorted by error, a
confusion matrix, top-5 predictions (Fig. 4 left), nearest neighbours in fc7 space (Fig. 4 right) and
conv1's kernels (Fig. 3). Figures are embedded as PNG data URIs and the style is inline: no script, no
server, no network. Every string that comes from data (class names, paths, config values) is
HTML-escaped, so it shows as the text it is, and a name that is not UTF-8 shows its odd bytes as \\xNN.
A piece that cannot be made (no val split, no metrics yet, no checkpoint) is said in its section; only
a folder that is not a run is an error. The run's own files are read only when they are plain files of
the run folder (alexnet.report.run_files: a symbolic link planted there is not followed); one that
is not is said in its section and on stderr.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from alexnet.report import page_sections as sections
from alexnet.report.page_sections import RunData, esc
from alexnet.report.run_files import NotReadHere, open_run_file, read_run_file
from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from alexnet.data import ImageStore
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import error_rates, predict_probabilities
from alexnet.files import write_bytes_atomic
from alexnet.runtime import resolve_device
from alexnet.train.metrics import parse_history

RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt")


def run_folder(run_dir: str | os.PathLike) -> Path:
    """`run_dir` as a Path, after checking that it holds a run (any of the files training writes)."""
    run = Path(run_dir)
    if not run.exists():
        raise UserError(f"{run} does not exist")
    if not run.is_dir():
        raise UserError(f"{run} is not a folder; give a run folder (the --out of `alexnet train`)")
    if not any((run / name).is_file() for name in RUN_FILES):
        raise UserError(f"{run} is not a run folder (it has none of {', '.join(RUN_FILES)})")
    return run


def _run_file(d: RunData, name: str, key: str) -> bytes | None:
    """RUN/name's bytes, or None: missing (no note), or not a plain file of the run (a note under `key`
    and in `d.refused`)."""
    try:
        return read_run_file(d.run, name)[0]
    except FileNotFoundError:
        return None
    except NotReadHere as e:
        d.refused.append(str(e))
        d.notes[key] = str(e)
    except OSError as e:
        d.notes[key] = f"{name} cannot be read: {e.strerror or e}"
    return None


def _read_config(d: RunData) -> None:
    data = _run_file(d, "config.toml", "config")
    if data is None:
        d.notes.setdefault("config", "config.toml is missing from the run folder.")
        return
    try:
        d.config_text = data.decode("utf-8")
        d.config = tomllib.loads(d.config_text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        d.config = None
        d.notes["config"] = f"config.toml cannot be read: {e}"


def _read_history(d: RunData) -> None:
    data = _run_file(d, "metrics.jsonl", "curves")
    if data is None:
        d.notes.setdefault("curves", "No metrics yet: the run has not finished an epoch (metrics.jsonl is missing).")
        return
    rows, bad = parse_history(data)
    d.history.extend(rows)
    if not d.history:
        d.notes["curves"] = "No metrics yet: metrics.jsonl holds no finished epoch."
    elif bad:
        d.notes["curves"] = f"{bad} line(s) of metrics.jsonl could not be read and are left out."


def _load_model(d: RunData) -> None:
    """best.pt, else last.pt, each read only as a plain file of the run (through its open descriptor,
    so the file checked is the file read)."""
    for name in ("best.pt", "last.pt"):
        try:
            fd = open_run_file(d.run, name)
        except FileNotFoundError:
            continue
        except (NotReadHere, OSError) as e:
            d.refused += [str(e)] if isinstance(e, NotReadHere) else []
            d.notes["model"] = str(e) if isinstance(e, NotReadHere) else f"{name}: {e.strerror or e}"
            continue
        alias = f"/proc/self/fd/{fd}"
        try:
            d.payload = load_checkpoint(alias if os.path.exists(alias) else d.run / name)
            d.payload["path"] = str(d.run / name)
            d.model_config = checkpoint_config(d.payload)
            d.model = model_from_checkpoint(d.payload)
            d.notes.pop("model", None)
            return
        except UserError as e:
            d.payload = d.model = None
            d.notes["model"] = str(e).replace(alias, str(d.run / name))
            return
        finally:
            os.close(fd)
    d.notes.setdefault("model", f"{d.run} holds no checkpoint (best.pt or last.pt)")


def _open_stores(d: RunData, data: str | os.PathLike | None) -> None:
    root = data or d.payload.get("data")
    if not root:
        d.notes["store"] = "the checkpoint names no store; give one with --data"
        return
    d.data = str(root)
    for split in ("val", "train"):
        try:
            store = ImageStore(root, split)
        except UserError as e:
            d.notes[split] = str(e)
            continue
        if store.classes != d.payload["classes"]:
            d.notes[split] = (f"the store {root} has other classes than the run was trained on "
                              f"({len(store.classes)} vs {len(d.payload['classes'])})")
            continue
        setattr(d, split, store)


def _evaluate(d: RunData, progress: bool) -> None:
    """One pass over the val split (centre patch, §6): the probabilities give the per-class table, the
    confusion matrix and the top-5 examples."""
    try:
        d.probs = predict_probabilities(d.model, d.val, d.device, 1, progress=progress,
                                        data_config=d.model_config.data)
    except UserError as e:
        d.notes["val"] = str(e)
        d.val = None
        return
    d.rates = error_rates(d.probs, d.val.labels, len(d.val.classes))


def gather(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, device: str = "cpu",
           progress: bool = False) -> RunData:
    """Read everything the page shows from a run folder (and its store), noting what is missing."""
    d = RunData(run_folder(run_dir), device=resolve_device(device), progress=progress)
    _read_config(d)
    _read_history(d)
    _load_model(d)
    if d.payload is not None:
        _open_stores(d, data)
        if d.val is not None:
            _evaluate(d, progress)
    return d


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------

CSS = """
body{font-family:"DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#f4f6f8;color:#1d232b;line-height:1.45;font-size:15px}
header{background:#1f3a5f;color:#fff;padding:18px 32px 14px}
header h1{margin:0;font-size:1.6em;font-weight:600;overflow-wrap:anywhere}
header p{margin:4px 0 0;opacity:.88;overflow-wrap:anywhere}
nav{background:#e7ecf2;padding:8px 32px;font-size:.92em;border-bottom:1px solid #d3dae3}
nav a{color:#1f3a5f;margin-right:16px;text-decoration:none;white-space:nowrap}
main{max-width:1180px;margin:0 auto;padding:4px 24px 40px}
section{background:#fff;border:1px solid #dce1e7;border-radius:8px;padding:10px 20px 16px;margin:16px 0}
h2{font-size:1.22em;margin:6px 0 10px;padding-bottom:4px;border-bottom:2px solid #e4e8ee;color:#1f3a5f}
h3{font-size:1em;margin:12px 0 4px;color:#33475b}
table{border-collapse:collapse;font-size:.9em;margin:4px 0}
th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f0f3f6;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfc}
td.text{overflow-wrap:anywhere;max-width:420px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.missing{color:#7a4a00;background:#fff5e0;border-left:4px solid #f0a020;padding:6px 10px;margin:6px 0}
.bar{display:inline-block;height:9px;background:#d9534f;vertical-align:middle;margin-left:6px}
.caption{color:#4a5560;font-size:.9em;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-start}
.scroll{max-height:560px;overflow:auto;border:1px solid #eceff3}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.85em}
footer{color:#667;font-size:.85em;text-align:center;padding:12px}
"""


def render_page(title: str, subtitle: str, parts: list[tuple[str, str, str]]) -> str:
    """The whole document; `parts` are (anchor, heading, body HTML) in page order."""
    nav = "".join(f'<a href="#{key}">{esc(heading)}</a>' for key, heading, _ in parts)
    body = "\n".join(f'<section id="{key}">\n<h2>{esc(heading)}</h2>\n{content}\n</section>'
                     for key, heading, content in parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
            f"<footer>written {esc(time.strftime('%Y-%m-%d %H:%M'))} by alexnet report; self-contained "
            f"(figures embedded, no scripts)</footer>\n</body>\n</html>\n")




def write_run_report(run_dir: str | os.PathLike, out_html: str | os.PathLike | None = None,
                     data: str | os.PathLike | None = None, device: str = "cpu", max_classes: int = 100,
                     progress: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Write the run's report page (default RUN/report.html) and return its path. `data` overrides the
    store the checkpoint names; the confusion matrix shows all classes up to `max_classes`, else the
    `max_classes` with the highest error. `log` hears of each file of the run left unread (default: a
    line on stderr)."""
    if max_classes < 2:
        raise UserError(f"--max-classes must be at least 2, got {max_classes}")
    d = gather(run_dir, data, device, progress)
    out = Path(out_html) if out_html is not None else d.run / "report.html"
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the report's file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    with tqdm(sections.SECTIONS, desc="report", unit="section", disable=not progress, leave=False,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for key, heading, builder in bar:  # drawing the figures takes seconds each
            bar.set_postfix_str(heading)
            parts.append((key, heading, builder(d, max_classes)))
    where = d.run.resolve()
    page = render_page(f"Run report: {where.parent.name}/{where.name}", sections.run_title(d), parts)
    write_bytes_atomic(out, page.encode("utf-8", "backslashreplace"))  # esc made it UTF-8; this is a belt
    for note in dict.fromkeys(d.refused):
        (log or (lambda m: print(f"note: {m}", file=sys.stderr)))(f"{sections.shown(d.run)}: {note}")
    return out
