"""Training-batch throughput: the store + batch loader vs a plain per-image Pillow pipeline.

    python bench/loader.py [--images 512] [--batch 128] [--device auto] [--rounds 3] [--source photos]
                           [--quick] [--out FILE.jsonl]

Makes an ImageNet-like folder (JPEG q90, ~500x375, mixed aspect ratios; generated images, or with
`--source photos` crops of scikit-learn's two sample photographs) in a temporary directory,
prepares it into a raw store and jpeg stores at quality 90 (prepare's default) and 85 at 256, then
times each row interleaved with the naive pipeline (A B A B, --rounds pairs): a row's "vs naive per
core" is the median of its pair ratios of wall-clock images/s per core, "vs naive per CPU-s" the same
of images per CPU second of the process (all its threads: steadier than the wall clock when other
processes share the cores); the naive row gives the median of all baseline runs. `--codecs` times
decoding alone instead: the ceiling of a jpeg store per core, by quality and decoder.
  naive   per image: Pillow decode, shorter side to 256, random 224 crop, random flip, float CHW
          tensor minus the mean (what a plain Dataset + transforms does), one process, one core:
          torch at one thread, as in a DataLoader worker (torch sets 1 there); with torch's default
          threads its tensor steps ran on both cores and a per-core ratio divided by one;
  loader  this package's BatchLoader: uint8 (B, 256, 256, 3) batches gathered by background threads;
  + aug   the loader plus BatchTransforms.train on the device (crop, flip, mean, PCA lighting).
Images/s per core divides by the cores the row can use, and each row runs torch at that many threads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from common import make_folder, report, sync  # noqa: E402

from alexnet.data import ImageStore  # noqa: E402
from alexnet.data.augment import BatchTransforms  # noqa: E402
from alexnet.data.loader import BatchLoader, train_plan  # noqa: E402
from alexnet.data.prepare import prepare  # noqa: E402
from alexnet.machine import keep_freed_memory  # noqa: E402
from alexnet.runtime import resolve_device


def rates(n: int, start: tuple[float, float]) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process, all its threads) since `start`,
    a (perf_counter, process_time) pair. CPU seconds are what "per core" means, and other processes
    on a busy machine change them far less than the wall clock."""
    return n / (time.perf_counter() - start[0]), n / (time.process_time() - start[1])


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads at `n` for a row that counts `n` cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def naive_pipeline(files: list[Path], mean: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    with torch_threads(1):
        return _naive_pipeline(files, mean, rng)


def _naive_pipeline(files: list[Path], mean: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    start = time.perf_counter(), time.process_time()
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.BILINEAR)
        top, left = rng.integers(0, img.size[1] - 224 + 1), rng.integers(0, img.size[0] - 224 + 1)
        img = img.crop((left, top, left + 224, top + 224))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) - mean).permute(2, 0, 1).contiguous()
        del x
    return rates(len(files), start)


def loader_rate(store, batch: int, workers: int, device: torch.device, epochs: int,
                transforms=None) -> tuple[float, float]:
    """Images/s of `epochs` passes (the page cache holds the store after the first)."""
    return _loader_rate(store, batch, workers, device, epochs, transforms)


def _loader_rate(store, batch: int, workers: int, device: torch.device, epochs: int,
                 transforms=None) -> tuple[float, float]:
    n = 0
    gen = torch.Generator(device).manual_seed(0)
    start = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        for images, labels, _ in BatchLoader(store, train_plan(len(store), batch, epoch, 0), device, workers):
            if transforms is not None:
                x = transforms.train(images, gen)
                if device.type == "cpu":
                    x = x.contiguous()
            n += len(labels)
    sync(device)
    return rates(n, start)


def codec_rows(pixels: list[np.ndarray], rounds: int) -> list[dict]:
    """Store encodings and decoder flags at 256x256: decode time against the store's own (q90 4:2:0,
    accurate DCT, fancy upsampling) timed in turn, and the mean absolute error to the raw pixels."""
    import simplejpeg

    out = np.empty_like(pixels[0])

    def encode(q, sub):
        return [simplejpeg.encode_jpeg(p, q, colorspace="RGB", colorsubsampling=sub) for p in pixels]

    def seconds(blobs, fast_dct, fast_up):
        start = time.perf_counter()
        for b in blobs:
            simplejpeg.decode_jpeg(b, colorspace="RGB", fastdct=fast_dct, fastupsample=fast_up, buffer=out)
        return time.perf_counter() - start

    store = encode(90, "420")
    rows = []
    for q, sub in ((90, "420"), (90, "444"), (85, "420"), (75, "420")):
        blobs = encode(q, sub)
        for fast_dct, fast_up in ((False, False), (True, False), (False, True), (True, True)):
            speed = np.median([seconds(store, False, False) / seconds(blobs, fast_dct, fast_up) for _ in range(rounds)])
            err = np.mean([np.abs(simplejpeg.decode_jpeg(b, colorspace="RGB", fastdct=fast_dct, fastupsample=fast_up)
                                  .astype(int) - p).mean() for b, p in zip(blobs, pixels)])
            rows.append({"encoding": f"q{q} {sub}", "fastdct": fast_dct, "fastupsample": fast_up,
                         "KB": np.mean([len(b) for b in blobs]) / 1024, "decode speed vs q90 420": float(speed),
                         "mean abs error": float(err)})
    return rows


def _decoders() -> dict:
    """Decoders of a JPEG's bytes into pixels, by name: the store's (simplejpeg), Pillow's, and others
    where installed (imagecodecs: libjpeg-turbo 3.1; PyAV: ffmpeg's decoder, YCbCr planes left as they
    are stored, without chroma upsampling or colour conversion: what a decoder handing the device
    planes would cost)."""
    import io

    import simplejpeg

    out = np.empty((256, 256, 3), np.uint8)
    found = {"simplejpeg (the store's)": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB", buffer=out),
             "Pillow": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))}
    with contextlib.suppress(ImportError):
        import imagecodecs
        found[f"imagecodecs {imagecodecs.__version__}"] = lambda b: imagecodecs.jpeg8_decode(b, out=out)
    with contextlib.suppress(ImportError):
        import av
        mjpeg = av.CodecContext.create("mjpeg", "r")
        found[f"PyAV {av.__version__}, YCbCr planes"] = lambda b: [np.frombuffer(p, np.uint8) for p in
                                                                   mjpeg.decode(av.Packet(b))[0].planes]
    return found


def decode_ceiling_rows(pixels: list[np.ndarray], files: list[Path], mean: np.ndarray, rounds: int) -> list[dict]:
    """A bare loop of decodes over store images (no loader), against the naive pipeline in turn (A B A
    B, both at one thread): the most a jpeg store can feed per core at each quality and decoder."""
    import simplejpeg

    rows = []

    def row(quality: int, decoder: str, decode) -> None:
        blobs = [simplejpeg.encode_jpeg(p, quality, colorspace="RGB", colorsubsampling="420") for p in pixels]
        ratios = []
        for r in range(rounds):
            naive = naive_pipeline(files, mean, np.random.default_rng(r))[0]
            start = time.perf_counter()
            for b in blobs:
                decode(b)
            ratios.append(len(blobs) / (time.perf_counter() - start) / naive)
        err = np.mean([np.abs(simplejpeg.decode_jpeg(b).astype(int) - p).mean() for b, p in zip(blobs, pixels)])
        rows.append({"decoder": decoder, "encoding": f"q{quality} 4:2:0",
                     "KB an image": float(np.mean([len(b) for b in blobs])) / 1024, "mean abs error": float(err),
                     "decode alone vs naive per core": f"{np.median(ratios):.2f}x",
                     "pair range": f"{min(ratios):.2f}-{max(ratios):.2f}"})

    decoders = _decoders()
    store_decoder = next(iter(decoders))
    with torch_threads(1):
        for quality in (95, 90, 85, 80, 75):
            row(quality, store_decoder, decoders[store_decoder])
        for name, decode in list(decoders.items())[1:]:
            row(90, name, decode)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="loader threads (default: all cores)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the store for the loader rows")
    p.add_argument("--rounds", type=int, default=3, help="A B pairs (naive pipeline, row) per row")
    p.add_argument("--quality", type=int, default=90, help="the jpeg store's quality (prepare's default)")
    p.add_argument("--low-quality", type=int, default=85, help="a second jpeg store, the trade-off row")
    p.add_argument("--source", choices=("generated", "photos"), default="generated",
                   help="the images: generated colour fields with pixel noise, or crops of scikit-learn's sample "
                        "photographs (common.make_folder)")
    p.add_argument("--quick", action="store_true", help="256 images, 2 pairs per row")
    p.add_argument("--codecs", action="store_true",
                   help="only the tables of store encodings and decoder flags, and of decoding alone against the naive "
                        "pipeline per quality and decoder (imagecodecs and PyAV where installed)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds = min(args.images, 256), 2
    keep_freed_memory()
    device = resolve_device(args.device)
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_folder(src, args.images, source=args.source)
        t = time.perf_counter()
        prepare(src, Path(tmp) / "raw", size=256, progress=False, log=lambda *a: None)
        prep_raw = args.images / (time.perf_counter() - t)
        for q in (args.quality, args.low_quality):
            prepare(src, Path(tmp) / f"jpeg{q}", size=256, fmt="jpeg", quality=q, progress=False, log=lambda *a: None)
        raw, jpg, low = (ImageStore(Path(tmp) / name) for name in ("raw", f"jpeg{args.quality}", f"jpeg{args.low_quality}"))
        files = sorted((src / "train").rglob("*.JPEG"))
        mean = raw.mean[16:240, 16:240]
        if args.codecs:
            pixels = [raw.image(i) for i in range(min(len(raw), 128))]
            report("loader-codecs", f"store JPEG encodings at 256, {len(pixels)} images, median of {args.rounds}",
                   codec_rows(pixels, args.rounds), args.out)
            report("loader-decode-ceiling", f"decode alone, {len(pixels)} {args.source} images at 256, against the "
                   f"naive pipeline on {len(files)} images, median of {args.rounds} pairs",
                   decode_ceiling_rows(pixels, files, mean, args.rounds), args.out)
            return
        naive_rates: list[float] = []
        rows.append({})  # the naive row, filled in below from every baseline run

        def add(name, rate_fn, used):
            """A B A B: the naive pipeline and the row in turn, the median of the per-core ratios."""
            pairs = []
            for r in range(args.rounds):
                naive = naive_pipeline(files, mean, np.random.default_rng(r))
                with torch_threads(used):
                    pairs.append((naive, rate_fn()))
            naive_rates.extend(a for a, _ in pairs)
            rate = float(np.median([b[0] for _, b in pairs]))
            ratio = float(np.median([b[0] / used / a[0] for a, b in pairs]))
            cpu_ratio = float(np.median([b[1] / a[1] for a, b in pairs]))
            rows.append({"pipeline": name, "cores": used, "images/s": rate, "images/s/core": rate / used,
                         "vs naive per core": f"{ratio:.1f}x", "images/CPU-s": float(np.median([b[1] for _, b in pairs])),
                         "vs naive per CPU-s": f"{cpu_ratio:.1f}x"})

        add("loader, raw store (uint8 batches)", lambda: loader_rate(raw, args.batch, 1, device, args.epochs), 1)
        add(f"loader, raw store, {workers} threads",
            lambda: loader_rate(raw, args.batch, workers, device, args.epochs), cores)
        for name, store in ((f"jpeg store q{args.quality}", jpg), (f"jpeg store q{args.low_quality}", low)):
            add(f"loader, {name} (decode 256px)", lambda: loader_rate(store, args.batch, 1, device, args.epochs), 1)
            add(f"loader, {name}, {workers} threads", lambda: loader_rate(store, args.batch, workers, device, args.epochs), cores)
        tr = BatchTransforms.for_store(raw, 224, device=device)
        used = 1 if device.type == "cuda" else cores
        add(f"loader + batch augmentation on {device.type}, raw store",
            lambda: loader_rate(raw, args.batch, workers, device, args.epochs, tr), used if device.type == "cpu" else cores)
        naive, naive_cpu = (float(np.median([r[k] for r in naive_rates])) for k in (0, 1))
        rows[0] = {"pipeline": "naive Pillow per image (decode, resize, crop, flip, tensor)", "cores": 1,
                   "images/s": naive, "images/s/core": naive, "vs naive per core": "1.0x", "images/CPU-s": naive_cpu,
                   "vs naive per CPU-s": "1.0x"}
    report("loader", f"{args.images} {args.source} images ~500x375 JPEG q90, batch {args.batch}, device {device}, "
           f"prepare {prep_raw:.0f} images/s; each ratio the median of {args.rounds} interleaved pairs", rows, args.out)


if __name__ == "__main__":
    main()
