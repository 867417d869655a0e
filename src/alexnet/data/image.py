"""One image file to the store's pixels, and the store's JPEG bytes back to pixels.

§2: "Given a rectangular image, we first rescaled the image such that the shorter side was of length
256, and then cropped out the central 256x256 patch". Each image is decoded (with the JPEG decoder's
own 1/2, 1/4, 1/8 downscaling while the image stays at least twice the target, as Pillow's thumbnail
does), converted to RGB, resized with an antialiasing (Lanczos) filter and centre-cropped.

Conversions, each reported as a note:
- greyscale, CMYK, palette and the like: Pillow's conversion to RGB; transparency composited on white.
- 16-bit greyscale (Pillow modes I;16* and I, e.g. 16-bit PNGs): the top 8 bits (value >> 8). Pillow's
  own conversion to RGB clips at 255, which stores such an image almost all white.
- EXIF orientation: applied (the transposes of `ImageOps.exif_transpose`), so an image is stored the way every photo
  viewer and browser shows it, upright. torchvision and the usual ImageNet loaders ignore the tag; it
  is rare in ImageNet (which was labelled as browsers showed it) and common in phone photos, the
  images users hand to `alexnet predict`. `prepare` and `predict` both read files with `load_image`,
  so training and prediction see the same pixels.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

RESAMPLE = Image.Resampling.LANCZOS
# what a folder is searched for (`predict`, `extract`, class-folder trees); a file named on its own is
# tried whatever its name
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The most memory one image may take decoded, in its own mode, checked from its header before any pixel is
# decoded: 256 MiB is Pillow's own warning size (MAX_IMAGE_PIXELS, 89 M pixels) for 24-bit RGB, here
# counted as Pillow stores each mode (3 and 4 bands in 4 bytes a pixel, 16-bit in 2): an 8192x8192 RGB
# or a 16384x8192 16-bit image is read, a 13000x13000 RGBA or 16-bit PNG (a few hundred KB of file,
# 0.3-0.7 GB decoded, 3-4 GB with its conversions) is refused. A JPEG counts at the scale its decoder
# draws it (`draft`), so a large photo is read at 1/2 to 1/8 of its size as before. The conversions
# after decoding take at most about 3 times this.
MAX_DECODED_BYTES = 256 << 20
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # else 4 (Pillow's)

try:  # libjpeg-turbo without Pillow's image objects: the same pixels, 2.7x faster at 256x256 (bench/docs/loader.md)
    import simplejpeg
except ImportError:  # e.g. a GPU machine without it: Pillow decodes the same pixels, slower
    simplejpeg = None


class BadImage(Exception):
    """An input file that cannot be turned into an RGB image."""


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept (rounded)."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def resize_and_center_crop(img: Image.Image, size: int) -> Image.Image:
    """§2: shorter side to `size`, then the central `size` x `size` patch. Pillow resizes in two passes,
    horizontal then vertical, each column of the second pass on its own; so a wide image is resized
    across, cropped to its central columns, and only those resized down: the same pixels (tests) with
    a quarter less of the vertical pass at 500x375."""
    width, height = img.size
    w, h = resized_shape(width, height, size)
    left, top = (w - size) // 2, (h - size) // 2
    if w > size:
        if w != width:
            img = img.resize((w, height), RESAMPLE)
        img = img.crop((left, 0, left + size, height))
        return img.resize((size, h), RESAMPLE) if h != height else img
    if (w, h) != img.size:
        img = img.resize((w, h), RESAMPLE)
    return img.crop((left, top, left + size, top + size))


def to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    """`img` as 8-bit RGB, appending a note for each conversion made."""
    if img.mode == "RGB":
        return img
    notes.append(f"{img.mode} converted to RGB")
    if img.mode in SIXTEEN_BIT_MODES:
        # 16-bit samples: keep the top byte (Pillow's own conversion would clip them at 255). In the
        # samples' own type (mode I is int32, clipped first): no int64 copy 4 times the image's size.
        wide = np.asarray(img)
        if wide.dtype.kind == "i":
            wide = np.clip(wide, 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        if img.mode != "RGBA":  # (an RGBA image is not copied first)
            img = img.convert("RGBA")  # composite transparency on white, not on black
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that makes it upright


def _draft_scale(width: int, height: int, size: int) -> int:
    """The DCT scale-down Pillow's `draft(mode, (2 * size, 2 * size))` picks: 8, 4, 2 or 1."""
    scale = min(width // (2 * size), height // (2 * size))
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _pixels_of(img: Image.Image, data: bytes, size: int, draft: bool) -> Image.Image:
    """The decoded image. A plain colour JPEG decoded at full scale goes through simplejpeg: the same
    libjpeg-turbo settings as Pillow (accurate integer DCT, fancy upsampling), pixel-identical (tests),
    1.6x faster on a 500x375 ImageNet photo (bench/docs/loader.md). Anything else through Pillow."""
    if img.format == "JPEG" and draft and _draft_scale(*img.size, size) > 1:
        # Let libjpeg downscale in the DCT while both sides stay >= 2*size (Pillow's reducing_gap);
        # the box is square, so it holds whichever way the orientation tag turns the image.
        img.draft(img.mode, (2 * size, 2 * size))
    elif img.format == "JPEG" and img.mode == "RGB" and "adobe" not in img.info and simplejpeg is not None:
        # strict (the default): libjpeg's warnings raise too, as Pillow refuses truncated data
        return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB"), "RGB")
    img.load()
    return img


def _amount(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def decoded_bytes(img: Image.Image, size: int, draft: bool) -> int:
    """The memory `img` (opened, not yet decoded) takes once decoded, at the scale `_pixels_of` decodes it."""
    width, height = img.size
    if img.format == "JPEG" and draft:
        scale = _draft_scale(width, height, size)
        width, height = -(-width // scale), -(-height // scale)
    return width * height * BYTES_PER_PIXEL.get(img.mode, 4)


def _decode_file(data: bytes, suffix: str, size: int, draft: bool) -> tuple[Image.Image, list[str]]:
    with warnings.catch_warnings():  # Pillow's warning at 89 M pixels: MAX_DECODED_BYTES decides instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))  # reads the header only
    need = decoded_bytes(img, size, draft)
    if need > MAX_DECODED_BYTES:
        raise BadImage(f"too large: {img.size[0]}x{img.size[1]} {img.mode} would take {_amount(need)} decoded, "
                       f"more than the {_amount(MAX_DECODED_BYTES)} allowed for one image")
    notes = []
    if (img.format == "JPEG") != (suffix.lower() in (".jpeg", ".jpg")):
        notes.append(f"{img.format} data in a '{suffix}' file")
    orientation = img.getexif().get(0x0112, 1)
    img = _pixels_of(img, data, size, draft)
    if orientation in ORIENTATIONS:
        img = img.transpose(ORIENTATIONS[orientation])
        notes.append(f"EXIF orientation {orientation} applied")
    return to_rgb(img, notes), notes


def load_image(path: str | os.PathLike, size: int, draft: bool = True) -> tuple[np.ndarray, str | None]:
    """The `size` x `size` x 3 uint8 RGB store image of one file, and a note when the file needed a
    conversion (greyscale, CMYK, 16-bit, a PNG under a .JPEG name, an EXIF rotation ...).
    Raises BadImage if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"cannot read the file: {e.strerror or e}") from None
    if not data:
        raise BadImage("empty file")
    try:
        img, notes = _decode_file(data, Path(path).suffix, size, draft)
        out = np.asarray(resize_and_center_crop(img, size), dtype=np.uint8)
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, TypeError) as e:  # truncated or corrupt data
        raise BadImage(f"corrupt or truncated: {e}") from None
    return out, ("; ".join(notes) or None)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """An (H, W, 3) uint8 RGB image as a baseline JPEG with 4:2:0 chroma subsampling (Pillow's
    default, and the fastest of 4:2:0, 4:2:2 and 4:4:4 to decode at 256x256: 4:4:4 decodes 1.4-1.5x
    slower, bench/docs/loader.md). Through simplejpeg where installed, 1.4x faster than through Pillow."""
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality, colorspace="RGB", colorsubsampling="420")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB JPEG of the store as an (H, W, 3) uint8 array, decoded into `out` if given.
    Raises ValueError (or OSError) on bytes that are not such a JPEG."""
    if simplejpeg is not None:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
    img = Image.open(io.BytesIO(data))
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if out is None:
        return pixels
    out[...] = pixels
    return out
