"""bench/run_all.py end to end on the CPU, as a CUDA machine would run it with --device cuda.

Minutes of benchmarks (about 2 on a quiet 2-core machine, 10 on a loaded one), so it runs only when
asked: ALEXNET_BENCH_E2E=1 python -m pytest tests/bench/test_run_all_quick.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ALEXNET_BENCH_E2E") != "1", reason="minutes of benchmarks: set ALEXNET_BENCH_E2E=1")
def test_run_all_quick_on_the_cpu(tmp_path):
    out, jsonl = tmp_path / "latest.md", tmp_path / "all.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--device", "cpu", "--quick",
                           "--out", str(out), "--jsonl", str(jsonl)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    benches = {json.loads(line)["bench"] for line in jsonl.read_text().splitlines()}
    expected = {"lrn", "loader", "train", "eval", "peer", "ceiling"}
    if (ROOT / "bench" / "prepare.py").exists():
        expected.add("prepare")
    assert expected <= benches
    text = out.read_text()
    summary = text.split("\n## ")[0]
    for row in ("| LRN fwd+bwd, norm1", "| alexnet fp32 / peer fp32 (keep freed)",
                "| alexnet eval pipeline, paper net, 1 view(s)", "| paper net train step, fp32"):
        assert row in summary, row
    assert "Failed" not in text
