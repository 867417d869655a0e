"""bench/gpu_check.py's table from fake results, its exit without CUDA, and bench/train.py going on
past a configuration that fails (#26)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.data.test_loader" name="test_loader_batches_on_a_busy_gpu_are_the_planned_ones[cuda:0]"
 time="1.25"/>
<testcase classname="tests.train.test_loop" name="test_the_two_towers_drop_different_neurons_on_two_gpus" time="0.01">
<skipped type="pytest.skip" message="needs two GPUs">skip</skipped></testcase>
<testcase classname="tests.evaluate.test_precision" name="test_float32_on_cuda_is_the_cpus_float32" time="3.5">
<failure message="AssertionError: assert 0.31 == 0.3&#10;second line">trace</failure></testcase>
</testsuite></testsuites>"""

BENCH_OUT = """preparing...
  peer bf16: 1523.4 img/s
  alexnet bf16 channels_last compile: failed: alexnet train: error: something | broke
  alexnet bf16 channels_last: 2011.0 img/s
training images/s, paper net ...
"""


def test_the_table_holds_every_test_and_every_benchmark_row(bench, tmp_path):
    check = bench("gpu_check")
    xml = tmp_path / "cuda.xml"
    xml.write_text(JUNIT)
    tests = check.parse_junit(xml)
    assert [(r["check"], r["result"], r["note"]) for r in tests] == [
        ("data.test_loader::test_loader_batches_on_a_busy_gpu_are_the_planned_ones[cuda:0]", "passed", ""),
        ("train.test_loop::test_the_two_towers_drop_different_neurons_on_two_gpus", "skipped", "needs two GPUs"),
        ("evaluate.test_precision::test_float32_on_cuda_is_the_cpus_float32", "FAILED",
         "AssertionError: assert 0.31 == 0.3")]
    rows = tests + check.parse_bench_output(BENCH_OUT)
    assert [r["result"] for r in rows[3:]] == ["1,523.4 img/s", "FAILED", "2,011.0 img/s"]
    text = check.table(rows, "NVIDIA H100 80GB HBM3; torch 2.13.0")
    lines = text.splitlines()
    assert lines[0] == "GPU check, NVIDIA H100 80GB HBM3; torch 2.13.0: FAILED (1 tests passed, 1 skipped)"
    assert lines[2] == "| check | result | seconds | note |" and len(lines) == 4 + len(rows)
    assert "| bench/train.py: alexnet bf16 channels_last compile | FAILED |  | alexnet train: error: something / broke |" \
        in lines  # a | in a note would split its cell
    assert all(line.count("|") == 5 for line in lines[2:])
    assert check.failed(rows) and not check.failed(rows[:2])


def test_the_comparisons_come_from_the_benchmarks_own_file(bench, tmp_path):
    import json

    check = bench("gpu_check")
    out = tmp_path / "train.jsonl"
    out.write_text(json.dumps({"bench": "train", "rows": [
        {"measure": "peer bf16", "images/s": 1.0, "range": "", "vs": "", "ratio": ""},
        {"measure": "alexnet bf16 channels_last", "images/s": 2.0, "vs": "989 TFLOP/s bf16 matmul", "ratio": "4% of it"},
        {"measure": "alexnet bf16 channels_last / peer bf16: bf16", "images/s": 2.0, "vs": "1.0", "ratio": "2.00x"}]})
        + "\n")
    assert [(r["check"], r["result"]) for r in check.comparison_rows(out)] == [
        ("bench/train.py: alexnet bf16 channels_last", "4% of it"),
        ("bench/train.py: alexnet bf16 channels_last / peer bf16: bf16", "2.00x")]
    assert check.comparison_rows(tmp_path / "missing.jsonl") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_77():
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 77
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("bench/gpu_check.py: no CUDA device")


def test_a_configuration_that_fails_is_a_row_and_the_others_are_measured(bench):
    """#26: one crash (the --compile configuration's) ended bench/train.py. Now the round is NaN, the
    row names the failure, and the comparisons use the rounds both sides completed."""
    train = bench("train")
    failures = {}

    def crash():
        raise RuntimeError("python -m alexnet.cli train ... failed:\nTraceback\nalexnet train: error: it broke")

    assert math.isnan(train.failing("alexnet bf16 channels_last compile", crash, failures)())
    assert failures == {"alexnet bf16 channels_last compile": "alexnet train: error: it broke"}
    assert train.failing("peer bf16", lambda: 5.0, failures)() == 5.0
    nan = float("nan")
    rates = {"peer bf16": [10.0, 12.0, 11.0], "alexnet bf16 channels_last": [20.0, nan, 33.0],
             "alexnet bf16 channels_last compile": [nan, nan, nan]}
    failures["alexnet bf16 channels_last"] = "out of memory"
    rows = {r["measure"]: r for r in train.summarise(rates, failures=failures)}
    assert rows["alexnet bf16 channels_last compile"]["ratio"] == "failed: alexnet train: error: it broke"
    assert rows["alexnet bf16 channels_last"]["images/s"] == pytest.approx(26.5)
    assert rows["alexnet bf16 channels_last"]["ratio"] == "1 of 3 rounds failed: out of memory"
    pair = next(r for m, r in rows.items() if m.startswith("alexnet bf16 channels_last / peer bf16"))
    assert pair["ratio"] == "2.50x (2.00-3.00, 2 pairs)"  # 20/10 and 33/11; the failed round left out
    assert not any(m.startswith("alexnet bf16 channels_last compile /") for m in rows)


def test_the_cuda_set_leaves_out_nothing_that_runs_there(bench):
    train = bench("train")
    cuda = train.pick_configs("default", cuda=True)
    assert "alexnet bf16 channels_last compile" in cuda and "alexnet fp32" in cuda and "peer fp32" in cuda
    assert not any("keep freed" in name for name in cuda)  # glibc's allocator: the CPU's memory
    assert train.pick_configs("cuda", cuda=False) == cuda
    assert set(cuda) <= set(train.pick_configs("full", cuda=True))
