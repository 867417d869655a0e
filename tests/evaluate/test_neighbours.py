"""Exact nearest neighbours against NumPy float64 brute force; binary codes against brute force."""

import io
import json

import numpy as np
import pytest
import torch

from alexnet.evaluate.neighbours import (
    RunningNearest,
    hamming_neighbours,
    label_precision,
    nearest_neighbours,
    overlap_with_exact,
    pack_codes,
    random_projection_codes,
    train_binary_coder,
)
from alexnet.cli.commands import main


def brute_force(q, db, k):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def test_exact_search_matches_brute_force_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    db = rng.normal(size=(1000, 32)).astype(np.float32)
    q = rng.normal(size=(23, 32)).astype(np.float32)
    np.save(tmp_path / "db.npy", db)
    mapped = np.load(tmp_path / "db.npy", mmap_mode="r")  # read from disk, chunk by chunk
    d, i = nearest_neighbours(q, mapped, k=5, chunk=128, query_block=7)
    ref_d, ref_i = brute_force(q, db, 5)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4)
    d_all, i_all = nearest_neighbours(q[:2], db[:3], k=10)  # k larger than the database
    assert i_all.shape == (2, 3) and sorted(i_all[0]) == [0, 1, 2]


def test_a_database_row_is_its_own_nearest_neighbour():
    rng = np.random.default_rng(1)
    db = np.maximum(rng.normal(size=(500, 64)), 0).astype(np.float32)
    d, i = nearest_neighbours(db[[3, 77, 499]], db, k=1, chunk=100)
    assert i[:, 0].tolist() == [3, 77, 499] and np.allclose(d, 0, atol=1e-2)


def test_hamming_search_matches_brute_force():
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2, (300, 40)).astype(bool)
    qbits = rng.integers(0, 2, (9, 40)).astype(bool)
    d, i = hamming_neighbours(pack_codes(qbits), pack_codes(bits), k=7, chunk=64)
    ref = (qbits[:, None, :] != bits[None]).sum(-1)
    for row in range(9):
        order = np.lexsort((np.arange(300), ref[row]))[:7]  # by distance, ties by index
        np.testing.assert_array_equal(i[row], order)
        np.testing.assert_array_equal(d[row], ref[row][order])


def clusters(n, dim=64, k=8, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).gamma(1.0, 1.0, (k, dim))
    labels = rng.integers(0, k, n)
    return np.maximum(centres[labels] + rng.normal(0, noise, (n, dim)), 0).astype(np.float32), labels


def test_binary_codes_keep_neighbours_of_the_same_class():
    db, db_labels = clusters(2000)
    q, q_labels = clusters(100, seed=1)
    coder = train_binary_coder(db, bits=16, epochs=15)
    codes = coder.encode(db)
    assert codes.shape == (2000, 2) and codes.dtype == np.uint8
    _, found = hamming_neighbours(coder.encode(q), codes, k=6)
    assert label_precision(db_labels[found], q_labels) > 0.9  # chance: 1/8
    rp, mean, proj = random_projection_codes(db, 32)
    _, found_rp = hamming_neighbours(random_projection_codes(q, 32, mean=mean, projection=proj)[0], rp, k=6)
    assert label_precision(db_labels[found_rp], q_labels) > 0.5


def test_overlap_with_exact_counts_shared_neighbours():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert overlap_with_exact(np.array([[2, 0, 9], [7, 8, 6]]), exact) == pytest.approx((2 / 3 + 0) / 2)
    assert overlap_with_exact(exact[:, ::-1], exact) == 1.0  # order does not matter


def test_running_nearest_over_uneven_chunks_matches_brute_force():
    rng = np.random.default_rng(3)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    nearest = RunningNearest(q, 7, query_block=2)
    for start, stop in ((0, 1), (1, 120), (120, 121), (121, 300)):
        nearest.add(torch.from_numpy(db[start:stop]), start)
    d, i = nearest.result()
    ref_d, ref_i = brute_force(q, db, 7)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4)


def test_neighbors_command(tiny_run, demo_store, tmp_path, capsys):
    assert main(["features", str(tiny_run), "--split", "train", "--out", str(tmp_path / "train"), "--quiet",
                 "--device", "cpu"]) == 0
    assert main(["features", str(tiny_run), "--split", "val", "--out", str(tmp_path / "val.npy"), "--quiet",
                 "--device", "cpu"]) == 0
    assert main(["neighbors", "--database", str(tmp_path / "train.npy"), "--queries", str(tmp_path / "val.npy"),
                 "--query-index", "0", "13", "-k", "4", "--json", str(tmp_path / "nn.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 queries, 4 nearest of 1000" in out and "neighbours with the query's label" in out
    result = json.loads((tmp_path / "nn.json").read_text())
    assert [r["query"] for r in result] == [0, 13] and len(result[0]["neighbours"]) == 4
    assert result[0]["neighbour_files"][0].startswith("train/")
    assert result[0]["distances"] == sorted(result[0]["distances"])
    assert main(["neighbors", "--database", str(tmp_path / "train.npy"), "--queries", str(tmp_path / "val.npy"),
                 "--num-queries", "3", "--codes", "16", "--quiet"]) == 0
    assert "16-bit auto-encoder codes" in capsys.readouterr().out
    assert main(["neighbors", "--database", str(tmp_path / "nope.npy"), "--queries", str(tmp_path / "val.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    files = ["--database", str(tmp_path / "train.npy"), "--queries", str(tmp_path / "val.npy"), "--quiet"]
    for flags, why in ((["-k", "-3"], "-k must be at least 1, got -3"), (["-k", "0"], "-k must be at least 1"),
                       (["-k", "1001"], "more neighbours than the database's 1000 rows"),
                       (["--num-queries", "0"], "--num-queries must be at least 1"),
                       (["--num-queries", "-2"], "--num-queries must be at least 1"),
                       (["--codes", "0"], "--codes must be between 1 and"),
                       (["--codes", "100000"], "--codes must be between 1 and"),
                       (["--codes", "8", "--code-sample", "0"], "--code-sample must be at least 1"),
                       (["--query-index", "100"], "--query-index must lie within 0..99")):
        assert main(["neighbors", *files, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("alexnet neighbors: error: ") and why in err and err.count("\n") == 1, err


def test_neighbors_says_what_codes_cost_and_bounds_their_sample(tiny_run, tmp_path, capsys):
    assert main(["features", str(tiny_run), "--split", "val", "--out", str(tmp_path / "val.npy"), "--quiet",
                 "--device", "cpu"]) == 0
    base = ["neighbors", "--database", str(tmp_path / "val.npy"), "--queries", str(tmp_path / "val.npy"),
            "--num-queries", "2", "-k", "3", "--quiet"]
    assert main([*base, "--codes", "8", "--code-sample", "40"]) == 0
    captured = capsys.readouterr()
    assert "8-bit auto-encoder on 40 of the 100 database rows" in captured.err and "30 epochs" in captured.err
    assert "encoding 102 rows" in captured.err and "8-bit auto-encoder codes" in captured.out
    # the queries' own rows are in the database: each is its own nearest neighbour
    assert main([*base, "--json", str(tmp_path / "nn.json")]) == 0
    rows = json.loads((tmp_path / "nn.json").read_text())
    assert [r["neighbours"][0] for r in rows] == [0, 1] and rows[0]["distances"][0] == pytest.approx(0, abs=1e-2)
    # feature files of two different nets are not compared
    meta = json.loads((tmp_path / "val.json").read_text())
    np.save(tmp_path / "other.npy", np.load(tmp_path / "val.npy"))
    (tmp_path / "other.json").write_text(json.dumps({**meta, "checkpoint": "/elsewhere/best.pt"}))
    assert main([*base[:2], str(tmp_path / "other.npy"), *base[3:]]) == 2
    assert "distances between two nets' features mean nothing" in capsys.readouterr().err


class OpensAFile:
    """Unpickled, it would create `marker`: a feature file's object array must never be unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_crafted_feature_files_are_refused_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(4)
    good = rng.normal(size=(20, 8)).astype(np.float32)
    marker = tmp_path / "unpickled"

    def refused(database=good, queries=good, meta=None, extra=()) -> str:
        for name, value in (("db", database), ("q", queries)):
            path = tmp_path / f"{name}.npy"
            path.write_bytes(value) if isinstance(value, bytes) else np.save(path, value, allow_pickle=True)
        (tmp_path / "db.json").unlink(missing_ok=True)
        if meta is not None:
            (tmp_path / "db.json").write_text(meta)
        argv = ["neighbors", "--database", str(tmp_path / "db.npy"), "--queries", str(tmp_path / "q.npy"), "--quiet"]
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.removeprefix(f"training a 8-bit auto-encoder on 20 of the 20 database rows x 8 "
                                                  f"for 30 epochs (30 steps of 256; --code-sample sets the rows), "
                                                  f"then encoding 25 rows\n")  # --codes says what it will cost
        assert err.startswith("alexnet neighbors: error: ") and err.count("\n") == 1, err
        return err

    objects = np.empty((2, 8), dtype=object)
    objects[:] = OpensAFile(marker)
    assert "is not a feature file" in refused(database=objects) and not marker.exists()
    assert "holds int64 values" in refused(database=good.astype(np.int64))
    assert "holds complex64 values" in refused(queries=good.astype(np.complex64))
    assert "holds a 3-d array" in refused(database=good[None])
    assert "holds a 1-d array" in refused(queries=good[0])
    assert "holds rows of 0 features" in refused(database=good[:, :0], queries=good[:, :0])
    assert "queries have 7 features, the database 8" in refused(queries=good[:, :7])
    header = io.BytesIO()  # a header that declares 10^6 rows over a file of 20
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 8)})
    assert "is not a feature file" in refused(database=header.getvalue() + good.tobytes())
    # values that are not finite in float32: named by row, never '-1 (inf)' for every neighbour
    nan = good.copy()
    nan[7, 3] = np.nan
    assert "db.npy: row 7 holds NaN or infinite values" in refused(database=nan)
    assert "db.npy: row 7 holds NaN" in refused(database=nan, extra=["--codes", "8", "--code-sample", "20"])
    assert "q.npy: query row 7 holds NaN" in refused(queries=nan, extra=["--query-index", "7"])
    beyond = good.astype(np.float64)
    beyond[11, 0] = 1e300  # a double that is inf in float32 (and no overflow warning on stderr)
    assert "db.npy: row 11 holds NaN or infinite values" in refused(database=beyond)
    assert "distances between" in refused(database=good * np.float32(1e30))  # finite, but squares overflow
    # the sidecar .json names the store whose files are printed: its values must be what features wrote
    assert "cannot be read" in refused(meta="[" * 100_000 + "]" * 100_000)
    assert "'data' is int, not a string" in refused(meta=json.dumps({"data": 5, "split": "train"}))
    assert "says n = 999, but the features have 20" in refused(meta=json.dumps({"n": 999, "dim": 8}))
