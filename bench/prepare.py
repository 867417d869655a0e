"""`alexnet prepare` against the minimal Pillow loop a user would write, with the same worker count.

    python bench/prepare.py [--quick] [--images 1280] [--rounds 3] [--out FILE.jsonl]
    python bench/prepare.py --stats-shift [--images 1280]   # a jpeg store's statistics vs its decoded pixels

Makes N ImageNet-like JPEGs (q90, ~500x375, mixed aspect ratios: bench/common.py's generator) and,
for the raw and jpeg stores with 1 and 2 worker processes, times end to end as subprocesses, start-up
included, interleaved A B A B:
  A  the loop: a multiprocessing.Pool that opens each file with Pillow, resizes the shorter side to
     256 (Lanczos, as prepare), crops the centre and writes the uint8 pixels into one .npy memory map
     (raw rows), or saves each image as its own JPEG at quality 90 (jpeg rows: prepare's default);
  B  `alexnet prepare SRC DST --workers W --format F --quiet` (statistics, progress records and
     fsyncs included).
Each row gives the median images/s of A and B and the median of the pair ratios B/A (above 1: prepare
is faster). prepare also computes the training statistics (in a jpeg store too of the pixels before
encoding, as a raw store), records its progress and fsyncs what it wrote; the loop does none.
`--stats-shift` instead prints how far a jpeg store's statistics are from those of its decoded pixels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC_DIR = HERE.parent / "src"
sys.path[:0] = [str(HERE), str(SRC_DIR)]
from common import make_folder, report  # noqa: E402

LOOP = r'''
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256


def open_output(path):
    global OUT
    OUT = np.load(path, mmap_mode="r+") if path.endswith(".npy") else Path(path)


def convert(job):
    i, path = job
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = SIZE / min(w, h)
    w, h = max(SIZE, round(w * s)), max(SIZE, round(h * s))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    img = img.crop((left, top, left + SIZE, top + SIZE))
    if isinstance(OUT, Path):
        img.save(OUT / f"{i:07d}.jpg", quality=90)
    else:
        OUT[i] = np.asarray(img)


if __name__ == "__main__":
    files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.JPEG"))
    if sys.argv[2].endswith(".npy"):
        np.lib.format.open_memmap(sys.argv[2], mode="w+", dtype=np.uint8, shape=(len(files), SIZE, SIZE, 3)).flush()
    else:
        Path(sys.argv[2]).mkdir()
    with Pool(int(sys.argv[3]), initializer=open_output, initargs=(sys.argv[2],)) as pool:
        for _ in pool.imap_unordered(convert, enumerate(files), chunksize=16):
            pass
'''


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def stats_shift(src: Path, work: Path, quality: int = 90) -> dict:
    """A jpeg store's statistics (of the pixels before encoding) against those of its decoded pixels,
    computed here in float64."""
    import numpy as np

    from alexnet.data import ImageStore
    from alexnet.data.prepare import prepare

    for fmt in ("raw", "jpeg"):
        prepare(src, work / fmt, size=256, fmt=fmt, quality=quality, workers=1, progress=False, log=lambda *a: None)
    raw, jpg = ImageStore(work / "raw"), ImageStore(work / "jpeg")
    n, total, outer = len(jpg), np.zeros((256, 256, 3)), np.zeros((4, 4))
    for i in range(0, n, 128):
        b = jpg.get_batch(np.arange(i, min(n, i + 128))).astype(np.float64)
        total += b.sum(0)
        p = np.concatenate([b.reshape(-1, 3), np.ones((b.size // 3, 1))], 1)
        outer += p.T @ p
    pixels = outer[3, 3]
    mean = outer[3, :3] / pixels
    eig = np.linalg.eigvalsh(outer[:3, :3] / pixels - np.outer(mean, mean))[::-1]
    shift = jpg.mean - total / n
    first = np.arange(min(n, 64))
    return {"images": n, "quality": quality, "stats equal the raw store's": bool(np.array_equal(jpg.mean, raw.mean)),
            "mean image |shift| mean": float(np.abs(shift).mean()), "mean image |shift| max": float(np.abs(shift).max()),
            "channel mean shift max": float(np.abs(shift.mean((0, 1))).max()),
            "eigenvalue shift": ", ".join(f"{x:+.1%}" for x in (jpg.pca[0] - eig) / eig),
            "per-pixel JPEG error": float(np.abs(raw.get_batch(first).astype(int) - jpg.get_batch(first)).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1280)
    p.add_argument("--rounds", type=int, default=3, help="A B pairs per row")
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    p.add_argument("--quick", action="store_true", help="256 images, 2 pairs per row")
    p.add_argument("--compare-src", default="", help="also time the prepare of another checkout's src/ "
                   "(e.g. an older commit's, from `git archive`) in each round: A B C A B C")
    p.add_argument("--stats-shift", action="store_true", help="only compare a jpeg store's statistics with its pixels'")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds = 256, 2
    if args.stats_shift:
        with tempfile.TemporaryDirectory() as tmp:
            make_folder(Path(tmp) / "src", args.images)
            row = stats_shift(Path(tmp) / "src", Path(tmp))
        return report("prepare-stats", "a jpeg store's statistics against its decoded pixels", [row], args.out)
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    other_env = {**env, "PYTHONPATH": str(Path(args.compare_src).resolve())} if args.compare_src else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, loop_py, dst = tmp / "src", tmp / "loop.py", tmp / "store"
        make_folder(src, args.images)
        loop_py.write_text(LOOP)
        for fmt in ("raw", "jpeg"):
            for workers in (int(w) for w in args.workers.split(",")):
                loop_out = tmp / ("loop.npy" if fmt == "raw" else "loop_jpeg")
                loop_cmd = [sys.executable, str(loop_py), str(src), str(loop_out), str(workers)]
                ours_cmd = [sys.executable, "-m", "alexnet.cli", "prepare", str(src), str(dst), "--workers",
                            str(workers), "--format", fmt, "--quiet"]
                loops, ours, others = [], [], []
                for _ in range(args.rounds):
                    loops.append(timed(loop_cmd, env))
                    shutil.rmtree(loop_out) if loop_out.is_dir() else loop_out.unlink()
                    ours.append(timed(ours_cmd, env))
                    shutil.rmtree(dst)
                    if other_env:
                        others.append(timed(ours_cmd, other_env))
                        shutil.rmtree(dst)
                row = {"store": fmt, "workers": workers, "images": args.images,
                       "loop img/s": args.images / statistics.median(loops),
                       "prepare img/s": args.images / statistics.median(ours),
                       "prepare / loop": statistics.median(a / b for a, b in zip(loops, ours)), "pairs": args.rounds}
                if other_env:
                    row["compared prepare / loop"] = statistics.median(a / c for a, c in zip(loops, others))
                rows.append(row)
    report("prepare", f"alexnet prepare vs a minimal Pillow loop, {args.images} JPEGs ~500x375 q90, "
           f"end to end with start-up, median of {args.rounds} interleaved pairs", rows, args.out)


if __name__ == "__main__":
    main()
