"""`alexnet neighbors`: the nearest database rows of query rows of two feature files (§6.1), named by
the store images they came from when the files say which store that was."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from alexnet.evaluate.features import load_features
from alexnet.evaluate.neighbours import (CODER_EPOCHS, CODER_SAMPLE, NonFiniteRow, check_finite, hamming_neighbours,
                                         label_precision, nearest_neighbours, train_binary_coder)
from alexnet.data import ImageStore
from alexnet.errors import UserError
from alexnet.runtime import resolve_device


def _query_rows(n_queries: int, query_index: list[int] | None, num_queries: int) -> np.ndarray:
    if query_index:
        rows = np.asarray(query_index)
        if rows.max() >= n_queries or rows.min() < 0:
            raise UserError(f"--query-index must lie within 0..{n_queries - 1}")
        return rows
    if num_queries < 1:
        raise UserError(f"--num-queries must be at least 1, got {num_queries}")
    return np.arange(min(num_queries, n_queries))


def _check_search(database: np.ndarray, queries: np.ndarray, db_meta: dict, q_meta: dict, k: int,
                  codes: int | None, code_sample: int) -> None:
    if len(database) == 0 or len(queries) == 0:
        raise UserError("the database and the queries need at least one row each")
    if queries.shape[1] != database.shape[1]:
        raise UserError(f"queries have {queries.shape[1]} features, the database {database.shape[1]}")
    if db_meta.get("checkpoint") and q_meta.get("checkpoint") and db_meta["checkpoint"] != q_meta["checkpoint"]:
        raise UserError(f"the database's features come from {db_meta['checkpoint']}, the queries' from "
                        f"{q_meta['checkpoint']}: distances between two nets' features mean nothing")
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    if k > len(database):
        raise UserError(f"-k {k} asks for more neighbours than the database's {len(database)} rows")
    if codes is not None and not 1 <= codes <= database.shape[1]:
        raise UserError(f"--codes must be between 1 and the features' width {database.shape[1]} bits, got {codes}")
    if code_sample < 1:
        raise UserError(f"--code-sample must be at least 1 row, got {code_sample}")


def _store_of(meta: dict, rows: int, which: str) -> ImageStore | None:
    """The store split a feature file was computed from, if it says and it is still there."""
    if not (meta.get("data") and meta.get("split")):
        return None
    try:
        store = ImageStore(meta["data"], meta["split"])
    except UserError:
        return None
    if len(store) != rows:
        raise UserError(f"the {which} features have {rows} rows, but the {meta['split']} split of {meta['data']} "
                        f"they say they come from has {len(store)} images: the store changed; compute them again")
    return store


def find_neighbours(database: str | os.PathLike, queries: str | os.PathLike, k: int = 6,
                    query_index: list[int] | None = None, num_queries: int = 5, codes: int | None = None,
                    code_sample: int = CODER_SAMPLE, device: str = "auto", progress: bool = False,
                    log: Callable[[str], None] = lambda message: None) -> dict:
    """{"rows": one entry per query, "how": the distance used, "database_rows", "precision"}. Each
    entry: query, neighbours, distances (and file, label, neighbour_files, neighbour_labels when the
    feature files name their stores). With `codes`, Hamming distance between auto-encoder codes
    trained on a sample of `code_sample` database rows; `log` hears what that will cost first. Features
    that are not finite (in float32) are refused, naming the row, as are distances that overflow."""
    db, db_meta = load_features(database)
    q_all, q_meta = load_features(queries)
    _check_search(db, q_all, db_meta, q_meta, k, codes, code_sample)
    rows = _query_rows(len(q_all), query_index, num_queries)
    db_store, q_store = _store_of(db_meta, len(db), "database"), _store_of(q_meta, len(q_all), "query")
    dev = resolve_device(device)
    with np.errstate(over="ignore", invalid="ignore"):  # a float64 beyond float32 becomes inf: refused below
        q = np.asarray(q_all[rows], dtype=np.float32)
        try:
            check_finite(q)
        except NonFiniteRow as e:
            raise UserError(f"{queries}: query row {rows[e.row]} holds NaN or infinite values; refused") from None
        try:
            dist, idx, how = _search(q, db, k, codes, code_sample, dev, progress, log)
        except NonFiniteRow as e:  # the queries are checked: this is a database row
            raise UserError(f"{database}: {e}; refused (no distance to it means anything)") from None
    if not np.isfinite(dist).all() or (idx < 0).any():
        raise UserError(f"the distances between {queries} and {database} overflow float32: their features are too "
                        f"large to compare")
    entries = []
    for r, d, i in zip(rows, dist, idx):
        entry = {"query": int(r), "neighbours": [int(j) for j in i], "distances": [float(x) for x in d]}
        if q_store is not None:
            entry.update(file=q_store.files[r], label=int(q_store.labels[r]))
        if db_store is not None:
            entry["neighbour_files"] = [db_store.files[j] for j in i]
            entry["neighbour_labels"] = [int(db_store.labels[j]) for j in i]
        entries.append(entry)
    precision = None
    if q_store is not None and db_store is not None:
        precision = label_precision(np.array([e["neighbour_labels"] for e in entries]), [e["label"] for e in entries])
    return {"rows": entries, "how": how, "database_rows": len(db), "k": k, "precision": precision}


def _search(q: np.ndarray, db: np.ndarray, k: int, codes: int | None, code_sample: int, dev, progress: bool,
            log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, str]:
    """(distances, indices, how) of the k nearest database rows of each query."""
    if codes is not None:
        sample = min(code_sample, len(db))
        steps = CODER_EPOCHS * -(-sample // 256)
        log(f"training a {codes}-bit auto-encoder on {sample:,} of the {len(db):,} database rows x {db.shape[1]} "
            f"for {CODER_EPOCHS} epochs ({steps:,} steps of 256; --code-sample sets the rows), then encoding "
            f"{len(db) + len(q):,} rows")
        coder = train_binary_coder(db, bits=codes, device=dev, max_rows=sample, progress=progress)
        dist, idx = hamming_neighbours(coder.encode(q, device=dev), coder.encode(db, device=dev, progress=progress), k)
        return dist, idx, f"Hamming distance between {codes}-bit auto-encoder codes"
    dist, idx = nearest_neighbours(q, db, k, dev, progress=progress)
    return dist, idx, "Euclidean distance of the fc7 vectors (§6.1)"
