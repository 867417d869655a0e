"""Everything this project claims about CUDA, proved in one command on the first GPU it is lent.

    python bench/gpu_check.py [--budget 570] [--out bench/results/gpu_check.md] [--no-bench] [--no-tests]

1. Every CUDA test, `python -m pytest -m cuda` (the loader on cuda:0 and cuda:1 with the GPU busy,
   the towers' dropout masks on two GPUs, the step lines' windows, a deterministic run resumed bit
   for bit, the compiled LRN against the eager one, inference in float32 against the CPU's, training
   in bf16 + channels_last and on two devices; two-GPU tests skip on one GPU).
2. The GPU rows of bench/train.py, short (`--configs cuda --rounds 1 --warmup 2 --steps 4`): the
   paper net at batch 128 in fp32 (TF32 off and on), bf16 with and without channels_last, without the
   LRN and with --compile, against pytorch/examples' loop in fp32 and bf16. One round: figures to
   see that every path runs and roughly how fast, not ones to quote (bench/train.py's own rounds are).

Prints one Markdown table: each test (passed, failed with its first line, skipped with its reason)
and each benchmark row (images/s, or the failure), under one line naming the GPU, torch and commit;
`--out` also writes it to a file (commit it). Within `--budget` seconds (default 570, under ten
minutes): the tests get up to 60% of it and the benchmark what is left; a part cut off by its
timeout is a row saying so, with whatever it measured.

Exit status: 0 every test passed and every benchmark row ran; 1 something failed or timed out;
77 no CUDA device is visible to torch (one line says so, nothing runs). 77 is the project's "this
machine cannot run it" (as scripts/multinode.py's), so a CPU-only machine does not pass for a
checked GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NO_CUDA = 77

# bench/train.py's progress lines: "  NAME: 123.4 img/s" or "  NAME: failed: WHY"
BENCH_LINE = re.compile(r"^  (?P<name>.+?): (?:(?P<rate>[\d.]+) img/s|failed: (?P<why>.*))$")


def first_line(text: str | None, limit: int = 160) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def parse_junit(path: Path) -> list[dict]:
    """One row per test case of a pytest --junitxml file: {"check", "result", "seconds", "note"}."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('tests.', '', 1)}::{case.get('name')}"
        result, note = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                result = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[kind]
                note = first_line(found.get("message") or found.text)
                break
        rows.append({"check": name, "result": result, "seconds": float(case.get("time") or 0), "note": note})
    return rows


def parse_bench_output(text: str) -> list[dict]:
    """The rows of bench/train.py's progress lines, in the order they were printed."""
    rows = []
    for line in (text or "").splitlines():
        m = BENCH_LINE.match(line.rstrip())
        if m:
            ok = m["rate"] is not None
            rows.append({"check": f"bench/train.py: {m['name']}", "result": f"{float(m['rate']):,.1f} img/s"
                         if ok else "FAILED", "seconds": None, "note": "" if ok else m["why"]})
    return rows


def comparison_rows(jsonl: Path) -> list[dict]:
    """bench/train.py's comparisons and shares of the matmul rate (its --out file), as table rows."""
    if not jsonl.is_file():
        return []
    rows = []
    for line in jsonl.read_text().splitlines():
        for x in json.loads(line).get("rows", []):
            if " / " in x["measure"] or x.get("vs"):
                rows.append({"check": f"bench/train.py: {x['measure']}", "result": x.get("ratio", ""),
                             "seconds": None, "note": x.get("vs", "")})
    return rows


def run_tests(timeout: float, pytest_args: list[str]) -> tuple[list[dict], float]:
    """Every `-m cuda` test; its rows and the seconds it took."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "cuda.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-n", "0", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "-o", "junit_family=xunit1", *pytest_args]
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [{"check": "pytest -m cuda", "result": "TIMED OUT", "seconds": timeout,
                     "note": f"after {timeout:.0f} s (rerun with a larger --budget)"}], time.monotonic() - start
        rows = parse_junit(xml) if xml.is_file() else []
        if not rows:
            rows = [{"check": "pytest -m cuda", "result": "FAILED" if done.returncode not in (0, 5) else "none",
                     "seconds": None, "note": first_line(done.stdout[-2000:] + done.stderr[-2000:])}]
    return rows, time.monotonic() - start


def run_bench(timeout: float) -> list[dict]:
    """bench/train.py's CUDA configurations, one short round; rows measured before a timeout kept."""
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "train.jsonl"
        cmd = [sys.executable, str(HERE / "train.py"), "--configs", "cuda", "--rounds", "1", "--warmup", "2",
               "--steps", "4", "--device", "cuda", "--out", str(jsonl)]
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return parse_bench_output(out) + [{"check": "bench/train.py", "result": "TIMED OUT", "seconds": timeout,
                                               "note": "the configurations not listed above did not run"}]
        rows = parse_bench_output(done.stdout) + comparison_rows(jsonl)
        if done.returncode:
            rows.append({"check": "bench/train.py", "result": "FAILED", "seconds": None,
                         "note": first_line("\n".join(done.stderr.splitlines()[-3:]))})
        return rows


def failed(rows: list[dict]) -> bool:
    return any(r["result"] in ("FAILED", "ERROR", "TIMED OUT") for r in rows)


def table(rows: list[dict], environment: str) -> str:
    """The one Markdown table gpu_check prints, under a line naming the machine."""
    passed = sum(r["result"] == "passed" for r in rows)
    skipped = sum(r["result"] == "skipped" for r in rows)
    verdict = "FAILED" if failed(rows) else "all passed"
    lines = [f"GPU check, {environment}: {verdict} ({passed} tests passed, {skipped} skipped)", "",
             "| check | result | seconds | note |", "|---|---|---|---|"]
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        note = str(r["note"]).replace("|", "/")
        lines.append(f"| {r['check']} | {r['result']} | {seconds} | {note} |")
    return "\n".join(lines)


def environment_line() -> str:
    import torch

    sys.path.insert(0, str(HERE))
    from common import environment

    env = environment()
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"{gpus}; torch {env['torch']}, CUDA {torch.version.cuda}, commit {env['commit']}, {time.strftime('%Y-%m-%d')}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=570, help="seconds for the whole check (default 570)")
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--no-tests", action="store_true", help="leave out the CUDA tests")
    p.add_argument("--no-bench", action="store_true", help="leave out the benchmark rows")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"bench/gpu_check.py: no CUDA device visible to torch {torch.__version__}; nothing to check (exit {NO_CUDA})")
        return NO_CUDA
    start = time.monotonic()
    rows: list[dict] = []
    if not a.no_tests:
        tests, _ = run_tests(a.budget * (0.6 if not a.no_bench else 1.0), [])
        rows += tests
    if not a.no_bench:
        rows += run_bench(max(60.0, a.budget - (time.monotonic() - start)))
    text = table(rows, environment_line())
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
