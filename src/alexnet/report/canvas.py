"""The canvas every figure is drawn on: matplotlib's Agg canvas (no display, and no change to
pyplot's backend), PNGs written whole or not at all, and text from data drawn as text.

`PLAIN` turns off mathtext and LaTeX on the artists whose strings come from data (class names, store
and run names), so a synset name with `$` or `_` prints as written; `drawable` gives such a string
the \\xNN of the bytes of a name that is not UTF-8 (a class folder b"\\xff"), which the font
renderer refuses; `wrap_name` makes a name drawable and wraps it onto more lines instead of cutting it."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

from alexnet.errors import utf8_text
from alexnet.files import atomic_write

# keyword arguments for every text artist whose string comes from data, not from this code
PLAIN = {"parse_math": False, "usetex": False}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(**subplots):
    """(figure, axes) on matplotlib's Agg canvas, outside pyplot (nothing global is touched; the
    figure is freed with its last reference). Without arguments, no axes (None)."""
    from matplotlib.figure import Figure

    figsize = subplots.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, (fig.subplots(**subplots) if subplots else None)


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as a 256-colour PNG (several times smaller than matplotlib's RGBA for photos)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: let pyplot forget it
        _pyplot().close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as `png_bytes` through a temporary file that is synced and renamed: never a
    half-written PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(fig, dpi)
    with atomic_write(path, tmp_suffix=".partial.png") as f:
        f.write(data)
    return path


pyplot, save_figure = _pyplot, _save  # public: the figure modules and the experiment layer (alexnet/experiments/fig1.py)


def drawable(text) -> str:
    """`text` as a string matplotlib can draw: undecodable bytes of a file name as \\xNN."""
    return utf8_text(str(text))


def wrap_name(name: str, width: int) -> str:
    """A class name on lines of at most `width` characters where it has spaces (a longer word stays
    whole): wrapped, never cut; drawable."""
    name = drawable(name)
    return "\n".join(textwrap.wrap(name, width, break_long_words=False, break_on_hyphens=False)) or name
