"""§6.1 retrieval: exact Euclidean search in fc7 space vs short binary codes (quality and speed).

    python studies/retrieval.py [--run alexnet-demo/run] [--rows 262144] [--dim 4096] [--queries 256]

Part 1 (quality, real features): the demo run's train/val fc7 features (computed if missing); for
each val image its 6 nearest training images by exact search, by Hamming distance between
auto-encoder codes (§6.1's proposal) and between random-projection codes (baseline); the fraction of
neighbours with the query's label, and how many of the exact 6 each method also found.
Part 2 (speed, ImageNet-sized rows): a memory-mapped database of `rows` synthetic clustered
non-negative `dim`-d vectors (1000 clusters) on disk; time per query of the exact chunked search and
of the Hamming search over codes, the codes' size, and label precision on the clusters.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402

from alexnet.evaluate.neighbours import (hamming_neighbours, label_precision, nearest_neighbours,  # noqa: E402
                                         overlap_with_exact, random_projection_codes, train_binary_coder)
from alexnet.machine import keep_freed_memory  # noqa: E402
from alexnet.runtime import resolve_device


def quality_rows(db, q, db_labels, q_labels, k, bits_list, device, name):
    rows = []
    _, exact = nearest_neighbours(q, db, k, device)
    rows.append({"data": name, "method": "exact Euclidean", "bits": f"{len(db[0])} floats",
                 "same label": label_precision(db_labels[exact], q_labels), "of exact found": 1.0})
    for bits in bits_list:
        coder = train_binary_coder(db, bits=bits, device=device)
        _, ae = hamming_neighbours(coder.encode(q, device=device), coder.encode(db, device=device), k)
        codes, mean, proj = random_projection_codes(db, bits)
        _, rp = hamming_neighbours(random_projection_codes(q, bits, mean=mean, projection=proj)[0], codes, k)
        rows.append({"data": name, "method": "auto-encoder codes", "bits": bits,
                     "same label": label_precision(db_labels[ae], q_labels), "of exact found": overlap_with_exact(ae, exact)})
        rows.append({"data": name, "method": "random-projection codes", "bits": bits,
                     "same label": label_precision(db_labels[rp], q_labels), "of exact found": overlap_with_exact(rp, exact)})
    return rows


def clustered(n, dim, clusters, seed, centres=None):
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.gamma(0.5, 1.0, (clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + rng.standard_normal((n, dim), dtype=np.float32) * 1.5
    return np.maximum(x, 0), labels, centres


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="alexnet-demo/run", help="a training run whose store has train and val")
    p.add_argument("--rows", type=int, default=131_072)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    args = p.parse_args()
    keep_freed_memory()
    device = resolve_device(args.device)
    k = 6
    quality = []
    if Path(args.run).exists():
        from alexnet.evaluate.features import extract_features, load_features
        from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
        from alexnet.data import ImageStore

        payload = load_checkpoint(args.run)
        model = model_from_checkpoint(payload)
        train, val = ImageStore(payload["data"], "train"), ImageStore(payload["data"], "val")
        with tempfile.TemporaryDirectory() as tmp:
            db, _ = load_features(extract_features(model, train, Path(tmp) / "train", device))
            q, _ = load_features(extract_features(model, val, Path(tmp) / "val", device))
            quality = quality_rows(np.array(db), np.array(q), train.labels, val.labels, k, (16, 32, 64), device,
                                   f"demo fc7 ({db.shape[1]}-d)")
        report("retrieval_quality", f"{len(q)} val queries, {len(db)} train images, k={k}", quality, args.out)
    else:
        print(f"{args.run} not found: run `alexnet demo` first for the quality part")

    speed = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.npy"
        db = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.dim))
        centres = None
        labels = np.empty(args.rows, np.int64)
        for start in range(0, args.rows, 16384):
            n = min(16384, args.rows - start)
            db[start : start + n], labels[start : start + n], centres = clustered(n, args.dim, 1000, start, centres)
        db.flush()
        del db
        db = np.load(path, mmap_mode="r")
        q, q_labels, _ = clustered(args.queries, args.dim, 1000, 10**9, centres)
        start = time.perf_counter()
        _, exact = nearest_neighbours(q, db, k, device)
        t_exact = time.perf_counter() - start
        gb = args.rows * args.dim * 4 / 1e9
        speed.append({"method": "exact Euclidean (chunked matmul, memory-mapped)", "database": f"{gb:.1f} GB",
                      "ms/query": 1000 * t_exact / args.queries, "same label": label_precision(labels[exact], q_labels),
                      "of exact found": 1.0})
        for bits in (64, 256):
            start = time.perf_counter()
            coder = train_binary_coder(db, bits=bits, device=device, max_rows=20_000, epochs=10)
            t_train = time.perf_counter() - start
            start = time.perf_counter()
            codes = coder.encode(db, device=device)
            t_encode = time.perf_counter() - start
            qc = coder.encode(q, device=device)
            start = time.perf_counter()
            _, found = hamming_neighbours(qc, codes, k)
            t_search = time.perf_counter() - start
            speed.append({"method": f"auto-encoder {bits}-bit codes (train {t_train:.0f} s, encode {t_encode:.0f} s)",
                          "database": f"{codes.nbytes / 1e6:.1f} MB", "ms/query": 1000 * t_search / args.queries,
                          "same label": label_precision(labels[found], q_labels),
                          "of exact found": overlap_with_exact(found, exact)})
            codes, mean, proj = random_projection_codes(db, bits)
            start = time.perf_counter()
            _, found = hamming_neighbours(random_projection_codes(q, bits, mean=mean, projection=proj)[0], codes, k)
            t_search = time.perf_counter() - start
            speed.append({"method": f"random-projection {bits}-bit codes", "database": f"{codes.nbytes / 1e6:.1f} MB",
                          "ms/query": 1000 * t_search / args.queries, "same label": label_precision(labels[found], q_labels),
                          "of exact found": overlap_with_exact(found, exact)})
    report("retrieval_speed", f"{args.queries} queries over {args.rows} x {args.dim} synthetic vectors, k={k}, "
           f"{device}", speed, args.out)


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
