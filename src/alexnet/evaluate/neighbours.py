"""§6.1 retrieval: the training images whose last-hidden-layer vectors are nearest to a query's.

`nearest_neighbours` is exact: squared distances |q|^2 - 2 q.x + |x|^2 as matrix products, over the
database in chunks (a memory-mapped 1.28 M x 4096 file is read once per query block, never held
whole), keeping a running top-k per query, on the GPU when there is one.

§6.1 goes on: "it could be made efficient by training an auto-encoder to compress these vectors to
short binary codes". `BinaryCoder` is that auto-encoder (codes made binary by noise before the code
layer's sigmoid, as in Krizhevsky & Hinton 2011, the paper's [14]); `random_projection_codes` is the
usual baseline (signs of random projections, Charikar 2002). Codes are packed 8 to a byte and searched
by Hamming distance. studies/retrieval.py compares quality and speed against the exact search.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# ---------------------------------------------------------------------------------------------------
# Exact search
# ---------------------------------------------------------------------------------------------------


class NonFiniteRow(ValueError):
    """A feature row holding NaN or infinity: every distance to it is NaN or infinite, and the search
    would return arbitrary rows (or none: index -1) as the nearest."""

    def __init__(self, row: int):
        super().__init__(f"row {row} holds NaN or infinite values")
        self.row = row


def check_finite(rows: np.ndarray, start: int = 0) -> np.ndarray:
    """`rows` (rows start, start+1, ...) if all are finite, else NonFiniteRow naming the first that is not."""
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise NonFiniteRow(start + int(bad.argmax()))
    return rows


class RunningNearest:
    """The k nearest database rows of each query among those seen so far, for a database that arrives
    in chunks (a memory map read piece by piece, or features computed batch by batch and never kept)."""

    def __init__(self, queries, k: int, device: torch.device | str = "cpu", query_block: int = 1024):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.device = torch.device(device)
        self.queries = torch.as_tensor(check_finite(np.array(queries, dtype=np.float32)), device=self.device)
        self.k, self.query_block = k, query_block
        self.q_sq = (self.queries * self.queries).sum(1)
        self.best_d = torch.full((len(self.queries), k), math.inf, device=self.device)
        self.best_i = torch.full((len(self.queries), k), -1, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def add(self, rows, start: int) -> None:
        """Database rows start, start+1, ... (an array or a tensor)."""
        x = torch.as_tensor(rows, dtype=torch.float32, device=self.device)
        x_sq = (x * x).sum(1)
        for b in range(0, len(self.queries), self.query_block):
            q = self.queries[b : b + self.query_block]
            d = (self.q_sq[b : b + self.query_block, None] - 2.0 * (q @ x.T) + x_sq[None]).clamp_min_(0)
            d, i = d.topk(min(self.k, len(x)), dim=1, largest=False)
            merged_d = torch.cat([self.best_d[b : b + self.query_block], d], 1)
            merged_i = torch.cat([self.best_i[b : b + self.query_block], i + start], 1)
            top_d, order = merged_d.topk(self.k, dim=1, largest=False)
            self.best_d[b : b + self.query_block] = top_d
            self.best_i[b : b + self.query_block] = merged_i.gather(1, order)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances (Q, k) and database indices (Q, k), nearest first."""
        return self.best_d.sqrt().cpu().numpy(), self.best_i.cpu().numpy()


def nearest_neighbours(queries, database, k: int = 6, device: torch.device | str = "cpu", chunk: int = 65536,
                       query_block: int = 1024, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (Q, k) and database indices (Q, k) of each query's k nearest rows, nearest
    first (k capped at the database's size). `database` may be a memory map; it is read `chunk` rows
    at a time."""
    n = len(database)
    nearest = RunningNearest(queries, min(k, n), device, query_block)
    for start in tqdm(range(0, n, chunk), desc="neighbours", unit="chunk", disable=not progress, leave=False):
        nearest.add(check_finite(np.array(database[start : start + chunk], dtype=np.float32), start), start)
    return nearest.result()


# ---------------------------------------------------------------------------------------------------
# Binary codes
# ---------------------------------------------------------------------------------------------------


def pack_codes(bits: np.ndarray) -> np.ndarray:
    """(N, B) booleans -> (N, ceil(B/8)) uint8."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def hamming_neighbours(query_codes: np.ndarray, database_codes: np.ndarray, k: int = 6,
                       chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distances (Q, k) and indices (Q, k) of the k nearest packed codes (ties by index)."""
    n = len(database_codes)
    k = min(k, n)
    out_d = np.empty((len(query_codes), k), np.int64)
    out_i = np.empty((len(query_codes), k), np.int64)
    for qi, q in enumerate(query_codes):
        best_d, best_i = np.empty(0, np.int64), np.empty(0, np.int64)
        for start in range(0, n, chunk):
            d = np.bitwise_count(np.bitwise_xor(database_codes[start : start + chunk], q)).sum(1, dtype=np.int64)
            part = np.argpartition(d, min(k, len(d)) - 1)[:k] if len(d) > k else np.arange(len(d))
            best_d = np.concatenate([best_d, d[part]])
            best_i = np.concatenate([best_i, part + start])
        order = np.lexsort((best_i, best_d))[:k]
        out_d[qi], out_i[qi] = best_d[order], best_i[order]
    return out_d, out_i


def random_projection_codes(features: np.ndarray, bits: int, seed: int = 0, mean: np.ndarray | None = None,
                            projection: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signs of `bits` random Gaussian projections of the centred features: (packed codes, mean,
    projection); pass mean and projection back in to encode queries the same way."""
    x = np.asarray(features, dtype=np.float32)
    if mean is None:
        mean = x.mean(0)
    if projection is None:
        projection = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    return pack_codes((x - mean) @ projection > 0), mean, projection


class BinaryCoder(nn.Module):
    """features -> hidden -> `bits` logistic code units -> hidden -> features. While training, Gaussian
    noise before the code's sigmoid pushes each unit to 0 or 1, so thresholding at 0.5 loses little."""

    def __init__(self, dim: int, bits: int = 64, hidden: int = 512, noise: float = 4.0):
        super().__init__()
        self.bits, self.noise = bits, noise
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))
        self.decoder = nn.Sequential(nn.Linear(bits, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(self.normalise(x))
        if self.training:
            z = z + torch.randn_like(z) * self.noise
        return self.decoder(torch.sigmoid(z))

    @torch.no_grad()
    def encode(self, features, batch: int = 65536, device: torch.device | str = "cpu",
               progress: bool = False) -> np.ndarray:
        """Packed (N, bits/8) uint8 codes of (N, dim) features."""
        self.eval().to(device)
        out = []
        for start in tqdm(range(0, len(features), batch), desc="encoding", unit="chunk", disable=not progress,
                          leave=False):
            x = torch.from_numpy(check_finite(np.array(features[start : start + batch], dtype=np.float32), start))
            x = x.to(device)
            out.append(pack_codes((self.encoder(self.normalise(x)) > 0).cpu().numpy()))
        return np.concatenate(out) if out else np.empty((0, (self.bits + 7) // 8), np.uint8)


# The auto-encoder's training rows by default. Training on all 200,000 rows of a 4096-d database was
# projected at ~107 min on a 2-core CPU; its cost is proportional to the rows, so 50,000 take a quarter
# of that, and no more for a larger database (every row is still encoded, a forward pass each).
CODER_SAMPLE = 50_000
CODER_EPOCHS = 30


def train_binary_coder(features, bits: int = 64, epochs: int = CODER_EPOCHS, batch: int = 256, lr: float = 1e-3,
                       seed: int = 0, device: torch.device | str = "cpu", max_rows: int = CODER_SAMPLE,
                       progress: bool = False) -> BinaryCoder:
    """Fit a BinaryCoder to (a sample of at most `max_rows` of) the features by reconstruction error."""
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), min(len(features), max_rows), replace=False))
    sample = np.asarray(features[rows], dtype=np.float32)
    try:
        check_finite(sample)
    except NonFiniteRow as e:  # named by its row of `features`, not of the sample
        raise NonFiniteRow(int(rows[e.row])) from None
    x = torch.as_tensor(sample, device=device)
    torch.manual_seed(seed)
    coder = BinaryCoder(x.shape[1], bits).to(device)
    coder.mean.copy_(x.mean(0))
    coder.scale.copy_(x.std(0).clamp_min(1e-3 * x.std().item() + 1e-12))
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    coder.train()
    with tqdm(total=epochs * -(-len(x) // batch), desc=f"{bits}-bit auto-encoder", unit="step",
              disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch):
                xb = x[idx.to(device)]
                loss = F.mse_loss(coder(xb), coder.normalise(xb))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    return coder.eval()


def label_precision(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Fraction of retrieved neighbours that share the query's label (§6.1's notion of "similar")."""
    return float((neighbour_labels == np.asarray(query_labels)[:, None]).mean())


def overlap_with_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of the exact k nearest neighbours that a faster search also returned."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))
