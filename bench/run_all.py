"""Every benchmark in one run, each figure beside its baseline: writes bench/results/latest.md.

    python bench/run_all.py [--device auto] [--quick] [--out bench/results/latest.md]
                            [--jsonl bench/results/all.jsonl] [--only lrn,loader,...]

Runs lrn.py, loader.py, prepare.py (where present), train.py, eval.py and peer.py, each in its own
process, their rows appended to --jsonl, and summarises each figure beside its baseline: LRN
forward+backward against torch.nn.LocalResponseNorm; the training-batch loader and `alexnet prepare`
against per-image Pillow pipelines; `alexnet train` against pytorch/examples' ImageNet loop (fp32 and
bf16, with and without the allocator setting) and as a share of the measured matmul rate; evaluation
against examples' validate(); the paper net against torchvision's AlexNet. Every baseline is timed
interleaved with what it divides (A B A B, median of the pair ratios), inside each script.

The same command runs on a CUDA machine (--device auto finds it): lrn, loader and peer run on the
GPU; train.py measures the paper net at batch 128 in bf16 + channels_last with and without --compile
against the peer, each as a share of the GPU's measured bf16 matmul rate; loader.py gives images/s
from the raw and the jpeg store feeding the GPU. --quick: fewer images, steps and rounds, so the
whole run takes a few minutes on a CPU (a smoke run: its figures are not ones to quote).
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
from common import environment, markdown_table  # noqa: E402

BENCHES = ("lrn", "loader", "prepare", "train", "eval", "peer", "profile")


def script_of(name: str) -> str:
    """The script a benchmark runs: its own, but "profile" is peer.py --profile."""
    return "peer.py" if name == "profile" else f"{name}.py"


def bench_args(name: str, device: str, quick: bool, cuda: bool) -> list[str] | None:
    """The arguments each benchmark script gets (None: the script is not in this checkout)."""
    if name == "profile":  # where a step goes, in each precision, in the layout `alexnet train` uses
        return ["--profile", "--precision", "fp32,bf16", "--channels-last", "on", "--device", device,
                "--batch", "16" if quick else "64"]
    script = HERE / f"{name}.py"
    if not script.exists():
        return None
    dev = ["--device", device]
    if name == "lrn":
        return dev + (["--batch", "16", "--rounds", "2"] if quick else [])
    if name == "loader":
        return dev + (["--images", "128"] if quick else [])
    if name == "prepare":  # CPU only; its own quick mode where it has one
        return ["--quick"] if quick and '"--quick"' in script.read_text() else []
    if name == "train":
        if not quick:  # issue 28's set on a CPU: each side as it comes and in bf16, compile vs eager, 2 rounds
            return dev if cuda else dev + ["--configs", "shares", "--rounds", "2"]
        configs = "peer bf16,alexnet bf16 channels_last" if cuda else "peer fp32 (keep freed),alexnet fp32"
        return dev + ["--images", "64", "--batch", "8", "--warmup", "1", "--steps", "2", "--rounds", "1",
                      "--configs", configs]
    if name == "eval":
        return dev + (["--images", "32", "--batch", "16", "--rounds", "1"] if quick else [])
    return dev + (["--quick"] if quick else [])  # peer


def run(script: str, args: list[str], jsonl: Path) -> list[dict]:
    """Run one benchmark script, appending to `jsonl`; returns the entries it appended."""
    before = jsonl.read_text().count("\n") if jsonl.exists() else 0
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args, "--out", str(jsonl)], check=True)
    lines = jsonl.read_text().splitlines()[before:]
    return [json.loads(line) for line in lines]


Row = tuple[str, str, str, str]


def lrn_rows(entry: dict) -> list[Row]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for layer in ("norm1", "norm2"):
            pick = [x for x in entry["rows"] if x["dtype"] == dtype and x["layer"] == layer]
            ours = next((x for x in pick if x["impl"] == "alexnet local_response_norm"), None)
            base = next((x for x in pick if x["impl"].startswith("torch")), None)
            if ours and base:
                ok = base["ms"] == base["ms"]  # not NaN: torch's module has no bf16 kernel on CPU
                # lrn.py's speedup is the median of interleaved pair ratios to torch's module where it runs
                ratio = (ours.get("speedup") or f"{base['ms'] / ours['ms']:.2f}x") if ok else "-"
                rows.append((f"LRN fwd+bwd, {layer} at batch {ours['batch']}, {dtype}", f"{ours['ms']:.1f} ms",
                             f"{base['ms']:.1f} ms (torch.nn.LocalResponseNorm)" if ok else
                             "fails (torch.nn.LocalResponseNorm)", ratio))
    return rows


def measure_rows(entry: dict, baseline: str) -> list[Row]:
    """Rows of train.py and eval.py: each has a measure, images/s and, where compared, a ratio."""
    rows = []
    for x in entry["rows"]:
        ratio = x.get("ratio") if "ratio" in x else x.get("vs peer", "")
        if not ratio or ratio == "-":
            continue
        what = x["measure"] + (f", {x['views']} view(s)" if "views" in x else "")
        value = x["images/s"]
        vs = x.get("vs", "") or baseline
        rows.append((what, f"{value:,.1f} img/s" if value == value else "", vs, ratio))
    return rows


def peer_rows(entry: dict) -> list[Row]:
    """The paper net against torchvision's AlexNet, and its share of the best matmul rate."""
    rows = []
    for x in entry["rows"]:
        if entry["bench"] == "peer":
            rows.append((f"paper net {x['mode']}, {x['precision']}, {x['layout']}, batch {x['batch']} (images/s)",
                         f"{x['ours img/s']:,.1f}", f"{x['torchvision img/s']:,.1f} (torchvision's AlexNet)",
                         f"{x['ours / torchvision']:.2f}x ({x.get('pair ratio range', '')})"))
        elif "ours share" in x:
            rows.append((f"paper net training, {x['precision']}, batch {x['batch']}: share of the best matmul rate",
                         f"{x['ours img/s']:,.1f} img/s", f"{x['ceiling img/s']:,.1f} img/s (ceiling)",
                         f"{x['ours share']:.0%}"))
    return rows


def loader_rows(entry: dict) -> list[Row]:
    """Rows that carry their own ratio to the per-image Pillow baseline (loader.py, prepare.py)."""
    rows = []
    for x in entry["rows"]:
        ratio = next((v for k, v in x.items() if k.startswith("vs ") or k in ("ratio", "speed-up")), None)
        rate = next((v for k, v in x.items() if "images/s" in k or "img/s" in k), None)
        if ratio is None or rate is None or ratio in ("", "-", "1.0x"):
            continue
        name = x.get("pipeline") or x.get("measure") or ", ".join(f"{k} {v}" for k, v in x.items()
                                                                  if isinstance(v, str) and v != ratio)
        rows.append((str(name), f"{rate:,.0f}" if isinstance(rate, (int, float)) else str(rate),
                     "per-image Pillow pipeline, same run", str(ratio)))
    return rows


def prepare_rows(entry: dict) -> list[Row]:
    """bench/prepare.py: `alexnet prepare` against a minimal Pillow loop with the same workers."""
    if not entry["rows"] or "prepare / loop" not in entry["rows"][0]:
        return loader_rows(entry)
    return [(f"alexnet prepare, {x['store']} store, {x['workers']} worker(s), start-up included (images/s)",
             f"{x['prepare img/s']:,.0f}", f"{x['loop img/s']:,.0f} (minimal Pillow loop)",
             f"{x['prepare / loop']:.2f}x ({x.get('pairs', '?')} pairs)") for x in entry["rows"]]


def profile_rows(entry: dict) -> list[Row]:
    """peer.py --profile: each part's share of a training step (after the work of issue 28)."""
    return [(f"share of a {x['precision']} {x['layout']} training step at batch {x['batch']}: {x['part of the step']}",
             f"{x['ms']:,.1f} ms", "the whole step under the profiler", x["share"]) for x in entry["rows"]]


SUMMARISERS = {"profile": profile_rows, "lrn": lrn_rows, "loader": loader_rows, "prepare": prepare_rows,
               "train": lambda e: measure_rows(e, "pytorch/examples main.py"),
               "eval": lambda e: measure_rows(e, "pytorch/examples validate()"),
               "peer": peer_rows, "ceiling": peer_rows}


def summary_rows(results: dict[str, list[dict]]) -> tuple[list[Row], list[str]]:
    """The summary table's rows, and the benchmarks whose rows it could not read (their own tables
    are still written below the summary)."""
    rows, unread = [], []
    for name, entries in results.items():
        for entry in entries:
            summarise = SUMMARISERS.get(entry.get("bench", name))
            try:
                rows += summarise(entry) if summarise else []
            except (KeyError, IndexError, TypeError, ValueError):
                unread.append(entry.get("bench", name))
    return rows, unread


def write_markdown(out: Path, header: str, results: dict[str, list[dict]], failed: list[str]) -> str:
    rows, unread = summary_rows(results)
    lines = [header, "", "| measure | alexnet | baseline | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if failed or unread:
        lines += ["", f"Failed: {', '.join(failed) or 'none'}; not summarised (see below): {', '.join(unread) or 'none'}."]
    for name, entries in results.items():
        for entry in entries:
            if entry.get("rows"):
                lines += ["", f"## {entry.get('bench', name)}", "", markdown_table(entry["rows"])]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    p.add_argument("--jsonl", default=str(HERE / "results" / "all.jsonl"), help="every script appends its rows here")
    p.add_argument("--quick", action="store_true", help="fewer images, steps and repeats (a smoke run)")
    p.add_argument("--only", default=",".join(BENCHES), help="benchmarks to run, comma-separated")
    args = p.parse_args()
    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    jsonl = Path(args.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results, failed = {}, []
    for name in args.only.split(","):
        extra = bench_args(name, args.device, args.quick, cuda)
        if extra is None:
            continue
        try:
            results[name] = run(script_of(name), extra, jsonl)
        except subprocess.CalledProcessError as e:
            failed.append(f"{script_of(name)} (exit {e.returncode})")
    env = environment()
    only = "" if args.only == ",".join(BENCHES) else f" --only {args.only}"
    header = (f"# Benchmarks, {time.strftime('%Y-%m-%d')}\n\n`python bench/run_all.py{' --quick' if args.quick else ''}{only}"
              f"{'' if args.device == 'auto' else ' --device ' + args.device}` on {env.get('gpu', env['cpu'])}, "
              f"{env['threads']} CPU threads, torch {env['torch']}, Python {env['python']}, commit {env['commit']} "
              f"({time.time() - start:.0f} s). Each figure beside its baseline, measured interleaved in the same "
              f"run (ratio: median of the pair ratios, their range in brackets); what each row measures: "
              f"bench/README.md.")
    text = write_markdown(Path(args.out), header, results, failed)
    print(text)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
