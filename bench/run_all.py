"""Every benchmark in one run, each figure beside its baseline: writes bench/results/latest.md.

    python bench/run_all.py [--device auto] [--out bench/results/latest.md] [--quick]

Runs lrn.py, loader.py, train.py, eval.py and peer.py (each in its own process, results appended to
bench/results/all.jsonl) and summarises: LRN forward+backward time, training-batch loader images/s,
training images/s, evaluation images/s and the paper net's training and forward images/s, against
torch.nn.LocalResponseNorm, a per-image Pillow pipeline, a plain eager training / evaluation loop and
torchvision's AlexNet architecture; and the paper net's share of the machine's best matmul rate. On a
CUDA machine (--device auto finds it) the same benchmarks run on the GPU, train.py adds the paper net
at batch 128 in fp32 and bf16, and peer.py runs both nets in channels_last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import environment  # noqa: E402


def run(script: str, args: list[str], jsonl: Path) -> list[dict]:
    before = jsonl.read_text().count("\n") if jsonl.exists() else 0
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args, "--out", str(jsonl)], check=True)
    lines = jsonl.read_text().splitlines()[before:]
    return [json.loads(line) for line in lines]


def summary_rows(results: dict[str, list[dict]]) -> list[tuple[str, str, str, str]]:
    rows = []
    for r in results.get("lrn", []):
        for dtype in ("float32", "bfloat16"):
            for layer in ("norm1", "norm2"):
                ours = next((x for x in r["rows"] if x["dtype"] == dtype and x["layer"] == layer
                             and x["impl"].startswith("alexnet")), None)
                base = next((x for x in r["rows"] if x["dtype"] == dtype and x["layer"] == layer
                             and x["impl"].startswith("torch")), None)
                if ours and base:
                    ok = base["ms"] == base["ms"]  # not NaN
                    rows.append((f"LRN fwd+bwd, {layer} at batch {ours['batch']}, {dtype}", f"{ours['ms']:.1f} ms",
                                 f"{base['ms']:.1f} ms (torch.nn.LocalResponseNorm)" if ok else "fails (torch.nn.LocalResponseNorm)",
                                 f"{base['ms'] / ours['ms']:.1f}x" if ok else "-"))
    for r in results.get("loader", []):
        naive = r["rows"][0]
        for x in r["rows"][1:]:
            rows.append((x["pipeline"] + " (images/s per core)", f"{x['images/s/core']:,.0f}",
                         f"{naive['images/s/core']:,.0f} (per-image Pillow)", x["vs naive per core"]))
    for r in results.get("train", []):
        for x in r["rows"]:
            plain = x["plain eager loop img/s"]
            rows.append((f"training, {x['variant']}, batch {x['batch']} (images/s)", f"{x['alexnet train img/s']:,.1f}",
                         f"{plain:,.1f} (plain eager loop)" if plain == plain else "-", x["speed-up"]))
    for r in results.get("eval", []):
        for x in r["rows"]:
            plain = x["plain per-image loop img/s"]
            rows.append((f"evaluation, {x['variant']}, {x['views']} view(s) (images/s)", f"{x['alexnet eval img/s']:,.1f}",
                         f"{plain:,.1f} (plain per-image loop)" if plain == plain else "-", x["speed-up"]))
    rows += peer_rows(results)
    return rows


def peer_rows(results: dict[str, list[dict]]) -> list[tuple[str, str, str, str]]:
    """The paper net against torchvision's AlexNet, and its share of the best matmul rate."""
    rows = []
    for r in results.get("peer", []):
        if r["bench"] == "peer":
            for x in r["rows"]:
                rows.append((f"paper net {x['mode']}, {x['precision']}, {x['layout']}, batch {x['batch']} (images/s)",
                             f"{x['ours img/s']:,.1f}", f"{x['torchvision img/s']:,.1f} (torchvision's AlexNet)",
                             f"{x['ours / torchvision']:.2f}x"))
        else:
            for x in r["rows"]:
                if "ours share" in x:
                    rows.append((f"paper net training, {x['precision']}, batch {x['batch']}: share of the best matmul "
                                 f"rate", f"{x['ours img/s']:,.1f} img/s", f"{x['ceiling img/s']:,.1f} img/s (ceiling)",
                                 f"{x['ours share']:.0%}"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (a smoke run)")
    args = p.parse_args()
    jsonl = HERE / "results" / "all.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    start = time.time()
    results = {
        "lrn": run("lrn.py", ["--device", args.device, "--repeats", "2" if quick else "5"]
                   + (["--batch", "16"] if quick else []), jsonl),
        "loader": run("loader.py", ["--device", args.device, "--images", "128" if quick else "512"], jsonl),
        "train": run("train.py", ["--device", args.device, "--images", "128" if quick else "384",
                                  "--steps", "2" if quick else "4", "--batch", "32" if quick else "64"], jsonl),
        "eval": run("eval.py", ["--device", args.device, "--images", "64" if quick else "256"], jsonl),
        "peer": run("peer.py", ["--device", args.device] + (["--quick"] if quick else []), jsonl),
    }
    env = environment()
    lines = [f"# Benchmarks, {time.strftime('%Y-%m-%d')}", "",
             f"`python bench/run_all.py{' --quick' if quick else ''}` on {env.get('gpu', env['cpu'])}, "
             f"{env['threads']} CPU threads, torch {env['torch']}, Python {env['python']}, commit {env['commit']} "
             f"({time.time() - start:.0f} s). Each figure beside its baseline, measured in the same run; the "
             f"per-benchmark tables and what each row measures: bench/README.md.", "",
             "| measure | alexnet | baseline | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
