"""prepare's convert step: exact statistics, the fast decode and resize paths, chunks, syncs, the pool."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

import alexnet.data.image as image_module
import alexnet.data.prepare as prepare_module
from alexnet.data import ImageStore
from alexnet.data.convert import ChunkSums, rgb_second_moments
from alexnet.data.image import load_image, resize_and_center_crop, resized_shape
from alexnet.data.prepare import chunk_size, prepare
from alexnet.data.progress import Progress
from alexnet.data.source import Source, SourceSplit
from tests.conftest import save, smooth_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def float64_moments(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(-1, 3).astype(np.float64)
    return flat.T @ flat


@pytest.mark.parametrize("shape", [(256, 256, 3), (300, 301, 3), (5, 7, 3)])
def test_rgb_second_moments_are_exact(shape):
    rng = np.random.default_rng(shape[0])
    for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), np.full(shape, 255, np.uint8)):
        got = rgb_second_moments(pixels)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, float64_moments(pixels).astype(np.int64))  # exact below 2^53


def test_chunk_sums_merge_exactly_in_any_order():
    """Sums over chunks of different sizes, merged in two orders, against NumPy float64 over all."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (700, 6, 6, 3), dtype=np.uint8)
    images[:300] = 255  # the worst case for the uint16 partial sums: folded every ChunkSums.FOLD images
    bounds = [0, 1, 258, 259, 600, 700]
    results = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sums = ChunkSums(6)
        for img in images[a:b]:
            sums.add(img)
        results.append({"split": "train", "index": a, "count": sums.count, "sum_image": sums.sum_image.copy(),
                        "rgb_sum": sums.rgb_sum(), "rgb_outer": sums.rgb_outer.copy(),
                        **{k: [] for k in ("valid", "skipped", "converted", "lengths")}})
    merged = []
    for order in (results, results[::-1]):
        p = Progress(6)
        for r in order:
            p.record(r)
        merged.append(p)
    flat = images.astype(np.float64)
    for p in merged:
        assert p.count == 700
        np.testing.assert_array_equal(p.sum_image, flat.sum(0))
        np.testing.assert_array_equal(p.rgb_sum, flat.reshape(-1, 3).sum(0))
        np.testing.assert_array_equal(p.rgb_outer, float64_moments(images))


def naive_resize_and_crop(img: Image.Image, size: int) -> np.ndarray:
    w, h = resized_shape(*img.size, size)
    big = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != img.size else img)
    top, left = (h - size) // 2, (w - size) // 2
    return big[top : top + size, left : left + size]


def test_crop_then_resize_gives_the_pixels_of_resize_then_crop():
    rng = np.random.default_rng(4)
    shapes = [(500, 375, 256), (375, 500, 256), (256, 300, 256), (300, 256, 256), (120, 40, 40), (41, 40, 40),
              (100, 80, 200)] + [(int(rng.integers(9, 700)), int(rng.integers(9, 700)), int(rng.integers(8, 300)))
                                 for _ in range(40)]
    for w, h, size in shapes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_array_equal(np.asarray(resize_and_center_crop(img, size)), naive_resize_and_crop(img, size),
                                      err_msg=f"{w}x{h} -> {size}")


@pytest.mark.parametrize("options", [{}, {"subsampling": 0}, {"subsampling": 1}, {"progressive": True},
                                     {"quality": 60, "subsampling": 2}])
def test_fast_jpeg_decode_gives_pillows_pixels(tmp_path, monkeypatch, options):
    if image_module.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    rng = np.random.default_rng(6)
    for k, (w, h) in enumerate([(500, 375), (375, 500), (97, 61)]):
        path = save(smooth_image(rng, w, h), tmp_path / f"{k}.JPEG", quality=options.pop("quality", 90), **options)
        fast, note = load_image(path, 64, draft=False)
        with monkeypatch.context() as m:
            m.setattr(image_module, "simplejpeg", None)  # Pillow decodes
            slow, _ = load_image(path, 64, draft=False)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(fast, naive_resize_and_crop(Image.open(path).convert("RGB"), 64))
        assert note is None


def test_fast_jpeg_decode_applies_the_orientation_and_refuses_truncated_files(tmp_path):
    rng = np.random.default_rng(7)
    img = smooth_image(rng, 90, 50)
    exif = img.getexif()
    for orientation in range(1, 9):
        exif[0x0112] = orientation
        path = save(img, tmp_path / f"o{orientation}.jpg", quality=92, exif=exif.tobytes())
        pixels, _ = load_image(path, 40, draft=False)
        upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        np.testing.assert_array_equal(pixels, naive_resize_and_crop(upright, 40), err_msg=f"orientation {orientation}")
    data = (tmp_path / "o1.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(image_module.BadImage, match="corrupt or truncated"):
        load_image(tmp_path / "cut.jpg", 40)


def test_chunk_size_depends_on_the_files_alone():
    def source(n):
        return Source(["a"], ["a"], {"train": SourceSplit([f"f{i}" for i in range(n)], [0] * n)})

    assert chunk_size(source(10)) == prepare_module.MIN_CHUNK_SIZE
    assert chunk_size(source(1280)) == 20  # 64 chunks: two workers finish together
    assert chunk_size(source(1_281_167)) == prepare_module.CHUNK_SIZE


def test_every_recorded_chunk_is_synced_before_the_record_is_saved(tree, tmp_path, monkeypatch):
    synced, saves = set(), []
    real_sync, real_save = prepare_module.sync_chunks, Progress.save

    def sync_chunks(settings, chunks):
        synced.update((c.split, c.index) for c in chunks)
        real_sync(settings, chunks)

    def save_progress(self, work):
        saves.append(set(self.done) <= synced)
        real_save(self, work)

    monkeypatch.setattr(prepare_module, "sync_chunks", sync_chunks)
    monkeypatch.setattr(Progress, "save", save_progress)
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    monkeypatch.setattr(prepare_module, "CHECKPOINT_SECONDS", 0)
    for fmt in ("raw", "jpeg"):
        saves.clear()
        prepare(tree, tmp_path / fmt, size=16, fmt=fmt, workers=1, progress=False, log=lambda *a: None)
        assert len(saves) >= 6 and all(saves)
        assert len(ImageStore(tmp_path / fmt)) == 18


def test_workers_are_forked_only_when_no_other_thread_runs():
    """In a fresh process (this one may run threads of earlier tests): fork while it is the only
    thread, spawn once another runs; one worker is no pool."""
    code = """if True:
        import threading
        from alexnet.data.convert import start_pool
        assert start_pool(1) is None
        pool = start_pool(2)
        print(pool._mp_context.get_start_method(), pool.submit(sum, [1, 2]).result())
        pool.shutdown()
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        pool = start_pool(2)
        print(pool._mp_context.get_start_method(), pool.submit(sum, [3, 4]).result())
        pool.shutdown()
        stop.set()
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want = ["fork 3", "spawn 7"] if sys.platform == "linux" else ["spawn 3", "spawn 7"]
    assert out.stdout.split("\n")[:2] == want


def test_store_statistics_match_numpy_with_many_chunks_and_two_workers(tmp_path):
    """Chunks of MIN_CHUNK_SIZE from two forked workers, merged: NumPy float64 over the stored pixels."""
    rng = np.random.default_rng(8)
    for i in range(40):
        save(smooth_image(rng, int(rng.integers(40, 90)), int(rng.integers(40, 90))),
             tmp_path / "src" / "train" / f"n{i % 3}" / f"{i}.JPEG", quality=int(rng.integers(60, 95)))
    prepare(tmp_path / "src", tmp_path / "store", size=24, workers=2, progress=False, log=lambda *a: None)
    s = ImageStore(tmp_path / "store")
    pixels = s.get_batch(np.arange(len(s))).astype(np.float64)
    np.testing.assert_allclose(s.mean, pixels.mean(0), rtol=1e-6)
    flat = pixels.reshape(-1, 3)
    np.testing.assert_allclose(s.stats["rgb_cov"], np.cov(flat.T, bias=True), rtol=1e-10)
