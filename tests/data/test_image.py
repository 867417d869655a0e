"""One file to store pixels: 16-bit greyscale, EXIF orientation (alexnet/data/image.py)."""

import numpy as np
from PIL import Image

from alexnet.data.image import load_image, to_rgb


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
