import io
from pathlib import Path

from alexnet.machine import configure_process

configure_process()  # threads for this machine's load, before torch is imported (as the CLI does)

import numpy as np
import pytest
from PIL import Image


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A random but smooth RGB image (JPEG keeps it close, resizing has something to do)."""
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path, fmt: str = "JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def tree(tmp_path):
    """A small ImageNet-style tree: 3 classes, PNG and JPEG files of mixed sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    sizes = [(40, 30), (30, 50), (64, 64), (90, 33), (33, 33), (70, 45)]
    for wnid in ["n01", "n02", "n03"]:
        for i, (w, h) in enumerate(sizes):
            fmt = "PNG" if i % 2 else "JPEG"
            save(smooth_image(rng, w, h), root / "train" / wnid / f"{wnid}_{i}.{fmt.lower()}", fmt)
        for i in range(2):
            save(smooth_image(rng, 48 + 7 * i, 36), root / "val" / wnid / f"v{wnid}_{i}.png", "PNG")
    (root / "LOC_synset_mapping.txt").write_text("n01 first thing\nn02 second, other\nn03 third\n")
    return root


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    """The demo data at 72x72: 10 classes, 100 train and 10 val images each."""
    from alexnet.data.demo_images import make_demo_data
    from alexnet.data.prepare import prepare

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root / "src", classes=10, train_per_class=100, val_per_class=10, seed=1)
    prepare(root / "src", root / "store", size=72, workers=1, progress=False, log=lambda *a: None)
    return root / "store"


@pytest.fixture(scope="session")
def tiny_run(demo_store, tmp_path_factory):
    """A `tiny` net trained for two epochs on the demo store (its run folder)."""
    from alexnet.config import resolve
    from alexnet.train.run import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(resolve({"variant": "tiny", "train": {"epochs": 2, "batch_size": 32}}), demo_store, out,
        progress=False, echo=False)
    return out
