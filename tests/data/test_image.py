"""One file to store pixels: 16-bit greyscale, EXIF orientation, the memory bound on one image
(alexnet/data/image.py)."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import alexnet.data.image as image_module
from alexnet.data.image import BadImage, load_image, to_rgb


def png_header(path, width: int, height: int, color_type: int, bit_depth: int = 8):
    """A PNG that declares width x height (colour type 6 = RGBA, 0 = greyscale) and holds one empty IDAT:
    a few dozen bytes that Pillow opens (header only), as it would a large mostly-constant image of a
    few hundred KB. Building a real 13000x13000 image would take the memory the bound is about."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_16_bit_greyscale_png_keeps_its_top_byte(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (30, 40), dtype=np.uint16)  # 40 wide, 30 high
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels, note = load_image(tmp_path / "deep.png", 30)  # shorter side already 30: crop only
    expected = (wide >> 8).astype(np.uint8)[:, 5:35]
    np.testing.assert_array_equal(pixels, np.repeat(expected[..., None], 3, axis=2))
    assert "converted to RGB" in note
    assert pixels.mean() < 200  # Pillow's own conversion clips: an image of mean ~127 would be ~255


def test_32_bit_integer_mode_is_read_as_16_bit():
    values = np.array([[0, 255, 256, 65535, 70000, -5]], np.int32)
    out = np.asarray(to_rgb(Image.fromarray(values, "I"), []))
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 1, 255, 255, 0]])


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # as the JPEG holds it: 40 wide
    stored = np.asarray(Image.fromarray(stored).resize((10, 6)).resize((40, 24), Image.Resampling.BICUBIC))
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    decoded = np.asarray(Image.open(tmp_path / "phone.jpg"))  # Pillow alone ignores the tag
    upright = np.rot90(decoded, k=-1)  # 24 wide, 40 high
    pixels, note = load_image(tmp_path / "phone.jpg", 24, draft=False)
    np.testing.assert_array_equal(pixels, upright[8:32])
    assert note == "EXIF orientation 6 applied"
    img.save(tmp_path / "untagged.jpg", quality=95)
    pixels, note = load_image(tmp_path / "untagged.jpg", 24, draft=False)
    assert note is None and pixels.shape == (24, 24, 3)
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(tmp_path / "untagged.jpg"))[:, 8:32])


@pytest.fixture
def no_decoding(monkeypatch):
    """Pillow's decoder, made to fail the test if it runs: a refusal must come from the header alone."""
    def load(self):
        raise AssertionError(f"decoded {self.size} {self.mode} before refusing it")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("color_type, bit_depth, mode", [(6, 8, "RGBA"), (0, 16, "I;16")])
def test_an_image_just_under_pillows_limit_is_refused_from_its_header(tmp_path, no_decoding, color_type,
                                                                      bit_depth, mode):
    """13000x13000 is under Pillow's bomb limit (179 M pixels): as RGBA it decodes to 645 MiB, 16-bit to
    322 MiB, and the conversions took `predict` to 2.9-3.9 GB. Refused before a pixel is decoded."""
    path = png_header(tmp_path / "big.png", 13000, 13000, color_type, bit_depth)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow itself only warns
        assert path.stat().st_size < 100 and Image.open(path).mode == mode
    with pytest.raises(BadImage, match=f"too large: 13000x13000 {mode} would take .* MiB decoded"):
        load_image(path, 256)


def test_the_bound_counts_each_mode_and_the_jpeg_draft_scale(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 65536, (100, 200), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (400, 800, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.setattr(image_module, "MAX_DECODED_BYTES", 200 * 100 * 2)  # the 16-bit image exactly
    assert load_image(tmp_path / "deep.png", 50)[0].shape == (50, 50, 3)
    with pytest.raises(BadImage, match="200x100 RGB would take"):  # Pillow holds RGB in 4 bytes a pixel
        load_image(tmp_path / "rgb.png", 50)
    # 800x400 at 4 bytes is 1.3 MB; decoded at 1/8 (draft, both sides still >= 2 x 25) it is 20 KB
    assert load_image(tmp_path / "photo.jpg", 25)[0].shape == (25, 25, 3)
    with pytest.raises(BadImage, match="800x400 RGB would take 1 MiB decoded, more than the 40,000 bytes"):
        load_image(tmp_path / "photo.jpg", 25, draft=False)


def test_predict_and_prepare_report_the_large_image_and_go_on(tmp_path, tiny_run, capsys):
    from alexnet.cli.commands import main
    from alexnet.data.prepare import prepare

    src = tmp_path / "src" / "train" / "n01"
    src.mkdir(parents=True)
    png_header(src / "big.png", 13000, 13000, 6)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / "small.png")
    assert main(["predict", str(tiny_run), str(src / "big.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read" in err and "too large: 13000x13000 RGBA" in err
    report = prepare(tmp_path / "src", tmp_path / "store", size=16, workers=1, progress=False, log=lambda *a: None)
    assert len(report.skipped) == 1 and "too large: 13000x13000 RGBA" in report.skipped[0][1]
