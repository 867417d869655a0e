"""The benchmarks' comparison logic: interleaving, pair ratios and the summaries built on them."""

import math
import statistics
from pathlib import Path

import pytest


def test_interleave_reverses_the_order_every_other_round(bench):
    common = bench("common")
    calls = []

    def measure(name, value):
        def fn():
            calls.append(name)
            return value + len(calls)
        return fn

    values = common.interleave({"a": measure("a", 0.0), "b": measure("b", 100.0), "c": measure("c", 200.0)}, 3)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    # each measure's values in round order: the call's position in `calls` (1-based) added to its base
    assert values == {"a": [1.0, 6.0, 7.0], "b": [102.0, 105.0, 108.0], "c": [203.0, 204.0, 209.0]}


def test_pair_ratio_is_the_median_of_the_rounds_ratios(bench):
    common = bench("common")
    ours, base = [10.0, 30.0, 12.0, 9.0], [5.0, 10.0, 12.0, 3.0]  # ratios 2, 3, 1, 3
    r = common.pair_ratio(ours, base)
    assert r == {"ratio": 2.5, "low": 1.0, "high": 3.0, "pairs": 4}
    # a ratio of medians would say 11/7.5: the pairs share each moment's load, the medians do not
    assert r["ratio"] != pytest.approx(statistics.median(ours) / statistics.median(base))
    times = common.pair_ratio([2.0, 1.0, 4.0], [4.0, 4.0, 4.0], higher_is_better=False)  # seconds
    assert times == {"ratio": 2.0, "low": 1.0, "high": 4.0, "pairs": 3}
    assert common.ratio_text(times) == "2.00x (1.00-4.00, 3 pairs)"
    with pytest.raises(ValueError):
        common.pair_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        common.pair_ratio([], [])


def test_train_summary_pairs_each_round(bench):
    train = bench("train")
    rates = {"peer fp32": [10.0, 20.0, 10.0], "peer fp32 (keep freed)": [12.0, 24.0, 11.0],
             "alexnet fp32": [11.0, 24.0, 12.0], "alexnet bf16 channels_last": [20.0, 40.0, 16.0],
             "alexnet bf16 channels_last (no LRN)": [40.0, 50.0, 20.0]}
    rows = {r["measure"]: r for r in train.summarise(rates, flop_per_image=2e9, matmul={"fp32": 4e10, "bf16": 1e11})}
    assert rows["peer fp32"]["images/s"] == 10.0 and rows["peer fp32"]["ratio"] == ""  # the peer has no share
    assert rows["alexnet fp32"]["images/s"] == 12.0  # the median
    assert rows["alexnet fp32"]["ratio"] == "60.0% of it"  # 12 img/s x 2 GFLOP / 40 GFLOP/s
    assert rows["alexnet bf16 channels_last"]["ratio"] == "40.0% of it"  # 20 x 2e9 / 1e11
    same = next(r for m, r in rows.items() if m.startswith("alexnet fp32 / peer fp32 (keep freed)"))
    assert same["ratio"] == "1.00x (0.92-1.09, 3 pairs)"  # 11/12, 24/24, 12/11
    mixed = next(r for m, r in rows.items() if m.startswith("alexnet bf16 channels_last / alexnet fp32"))
    assert mixed["ratio"] == "1.67x (1.33-1.82, 3 pairs)"  # 20/11, 40/24, 16/12
    lrn = next(r for m, r in rows.items() if m.startswith("LRN's share"))
    # rate without / rate with: 2.0, 1.25, 1.25 -> median 1.25 -> the LRN is 1 - 1/1.25 = 20% of the step
    assert lrn["ratio"] == "20% (20%-50%)"
    assert not any(m.startswith("peer bf16") for m in rows)  # nothing about what was not measured


def test_train_reads_the_rate_from_the_runs_step_lines(bench):
    train = bench("train")
    log = "\n".join([
        "training paper (56,901,000 parameters) on 640 images of 8 classes, cpu, batch 16, fp32, 90 epochs -> r",
        "epoch 1 step 1  loss 2.238  top-1 err 87.5%  lr 0.01  5 img/s  data 0.50 s  compute 2.97 s",
        "epoch 1 step 2  loss 2.742  top-1 err 90.6%  lr 0.01  6 img/s  data 0.01 s  compute 1.99 s",
        "epoch 1 step 3  loss 2.925  top-1 err 89.6%  lr 0.01  6 img/s  data 0.00 s  compute 2.00 s",
        "stopped at max_steps: epoch 1, step 3; saved r/last.pt (continue with --resume r)"])
    assert train.step_lines_rate(log, warmup=1, batch=16) == pytest.approx(32 / 4.0)
    with pytest.raises(RuntimeError):
        train.step_lines_rate(log, warmup=3, batch=16)


def test_threads_summary(bench):
    threads = bench("threads")
    times = {"auto": [10.0, 12.0, 11.0], "OMP=1": [9.0, 13.2, 12.1], "OMP=2": [10.0, 12.0, 11.0]}
    row = threads.summarise("train", True, times, ["2", "2", "1"])
    assert row["machine"] == "busy (1 hog)" and row["auto chose"] == "1/2"
    assert row["OMP=1 / auto"] == "1.10 (0.90-1.10)"  # 9/10, 13.2/12, 12.1/11
    assert row["OMP=2 / auto"] == "1.00 (1.00-1.00)"
    assert row["best by hand / auto"] == 1.0  # OMP=2 has the lower median (11 against 12.1)


def test_run_all_summary_reads_every_script_and_names_what_it_cannot(bench):
    run_all = bench("run_all")
    results = {
        "lrn": [{"bench": "lrn", "rows": [
            {"dtype": "float32", "layer": "norm1", "batch": 16, "impl": "torch.nn.LocalResponseNorm", "ms": 30.0},
            {"dtype": "float32", "layer": "norm1", "batch": 16, "impl": "alexnet, one chunk, whole band", "ms": 12.0},
            {"dtype": "float32", "layer": "norm1", "batch": 16, "impl": "alexnet local_response_norm", "ms": 10.0,
             "speedup": "2.80x (2.50-3.10, 5 pairs)"},
            {"dtype": "bfloat16", "layer": "norm1", "batch": 16, "impl": "torch.nn.LocalResponseNorm", "ms": math.nan},
            {"dtype": "bfloat16", "layer": "norm1", "batch": 16, "impl": "alexnet local_response_norm", "ms": 5.0,
             "speedup": "1.90x (1.80-2.00, 5 pairs)"}]}],  # against the autograd formula: not torch's
        "train": [{"bench": "train", "rows": [
            {"measure": "peer fp32", "images/s": 10.0, "range": "9-11", "vs": "", "ratio": ""},
            {"measure": "alexnet fp32", "images/s": 12.0, "range": "", "vs": "0.10 TFLOP/s fp32 matmul",
             "ratio": "30.0% of it"},
            {"measure": "alexnet fp32 / peer fp32: as each comes", "images/s": 12.0, "range": "", "vs": "10.0",
             "ratio": "1.20x (1.10-1.30, 3 pairs)"}]}],
        "eval": [{"bench": "eval", "rows": [
            {"measure": "peer validate()", "views": 1, "images/s": 50.0, "vs peer": "-"},
            {"measure": "alexnet eval pipeline", "views": 1, "images/s": 80.0, "vs peer": "1.60x (1.5-1.7, 3 pairs)"}]}],
        "peer": [{"bench": "peer", "rows": [{"mode": "train step", "precision": "fp32", "layout": "NCHW", "batch": 64,
                                             "ours img/s": 40.0, "torchvision img/s": 50.0,
                                             "ours / torchvision": 0.8, "pair ratio range": "0.7-0.9"}]},
                 {"bench": "ceiling", "rows": [{"precision": "fp32", "batch": 64, "ours img/s": 40.0,
                                                "ceiling img/s": 80.0, "ours share": 0.5}]}],
        "prepare": [{"bench": "prepare", "rows": [{"store": "raw", "workers": 2, "images": 256, "loop img/s": 400.0,
                                                   "prepare img/s": 500.0, "prepare / loop": 1.3, "pairs": 2}]},
                    {"bench": "prepare", "rows": [{"something": "new"}]}, {"bench": "prepare"}],
    }
    rows, unread = run_all.summary_rows(results)
    assert ("LRN fwd+bwd, norm1 at batch 16, float32", "10.0 ms", "30.0 ms (torch.nn.LocalResponseNorm)",
            "2.80x (2.50-3.10, 5 pairs)") in rows  # the pair ratios' median, not 30 / 10
    assert ("LRN fwd+bwd, norm1 at batch 16, bfloat16", "5.0 ms", "fails (torch.nn.LocalResponseNorm)", "-") in rows
    assert ("alexnet fp32 / peer fp32: as each comes", "12.0 img/s", "10.0", "1.20x (1.10-1.30, 3 pairs)") in rows
    assert ("alexnet fp32", "12.0 img/s", "0.10 TFLOP/s fp32 matmul", "30.0% of it") in rows
    assert not any(r[0] == "peer fp32" for r in rows)  # a row with no ratio is in the script's own table only
    assert ("alexnet eval pipeline, 1 view(s)", "80.0 img/s", "pytorch/examples validate()",
            "1.60x (1.5-1.7, 3 pairs)") in rows
    assert ("paper net train step, fp32, NCHW, batch 64 (images/s)", "40.0", "50.0 (torchvision's AlexNet)",
            "0.80x (0.7-0.9)") in rows
    assert any(r[0].startswith("paper net training, fp32, batch 64: share") and r[3] == "50%" for r in rows)
    assert ("alexnet prepare, raw store, 2 worker(s), start-up included (images/s)", "500",
            "400 (minimal Pillow loop)", "1.30x (2 pairs)") in rows  # the pair ratios' median, not 500/400
    assert unread == ["prepare"]  # the entry without rows; the unknown row shape is skipped, not guessed


def test_run_all_writes_the_summary_and_each_table(bench, tmp_path):
    run_all = bench("run_all")
    results = {"eval": [{"bench": "eval", "rows": [
        {"measure": "alexnet eval pipeline", "views": 1, "images/s": 80.0, "vs peer": "1.60x (1.5-1.7, 3 pairs)"}]}]}
    text = run_all.write_markdown(tmp_path / "latest.md", "# head", results, ["loader.py (exit 1)"])
    assert (tmp_path / "latest.md").read_text() == text
    assert "| alexnet eval pipeline, 1 view(s) | 80.0 img/s | pytorch/examples validate() | 1.60x" in text
    assert "Failed: loader.py (exit 1)" in text and "## eval" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_run_all_quick_arguments_are_ones_the_scripts_take(bench):
    """--quick and the device reach every script as flags it defines (a renamed flag would fail here,
    not after minutes of a run)."""
    run_all = bench("run_all")
    for cuda in (False, True):
        for name in run_all.BENCHES:
            args = run_all.bench_args(name, "cuda" if cuda else "cpu", True, cuda)
            if args is None:
                continue
            source = (run_all.HERE / run_all.script_of(name)).read_text()
            for flag in (a for a in args + ["--out"] if a.startswith("--")):  # run() adds --out
                assert f'"{flag}"' in source, (name, flag)
    train = bench("train")
    for cuda in (False, True):
        args = run_all.bench_args("train", "cpu", True, cuda)
        assert train.pick_configs(args[args.index("--configs") + 1], cuda)  # names train.py knows


def test_markdown_table_takes_every_rows_keys(bench):
    common = bench("common")
    text = common.markdown_table([{"a": 1.23456, "b": "x"}, {"a": 2.0, "c": 3}])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | x |  |", "| 2 |  | 3 |"]


def test_threads_times_the_test_suite_only_when_named(bench, tmp_path, monkeypatch):
    """The suite runs as the README runs it (no thread-recording wrapper) and records no count."""
    threads = bench("threads")
    cmds = threads.commands(tmp_path, tmp_path, tmp_path, tmp_path)
    assert cmds["tests"][1:3] == ["-m", "pytest"] and cmds["train"][1:3] == ["-m", "alexnet.cli"]
    ran = []
    monkeypatch.setattr(threads, "timed", lambda cmd, env, scratch: ran.append(cmd) or 1.0)
    row = threads.measure("tests", cmds["tests"], 1, tmp_path, busy=False)
    assert ran == [cmds["tests"]] * 3 and row["auto chose"] == "?" and row["best by hand / auto"] == 1.0


def test_peer_builds_the_paper_net_with_another_commits_lrn(bench):
    import subprocess

    import torch

    repo = Path(__file__).resolve().parents[2]
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    peer = bench("peer")
    net = peer.paper_alexnet_with_lrn_at("HEAD")
    x = torch.rand(2, 96, 5, 5) * 80
    from alexnet.model.lrn import local_response_norm

    expected = local_response_norm(x, net.norm1.size, net.norm1.alpha, net.norm1.beta, net.norm1.k, net.norm1.groups)
    assert "forward" in vars(net.norm1)  # the layer computes with the loaded lrn.py, not this one
    torch.testing.assert_close(net.norm1(x), expected, rtol=0, atol=0)
    with pytest.raises(SystemExit, match="--lrn-at no-such-commit"):
        peer.paper_alexnet_with_lrn_at("no-such-commit")


def test_make_folder_draws_photographs_or_noise(bench, tmp_path):
    """--source photos: crops of scikit-learn's sample photographs at ImageNet-like sizes, whose colour
    channels move together as in natural images (what §4.1's PCA lighting relies on); the default
    generated images draw each channel independently."""
    import numpy as np
    from PIL import Image

    common = bench("common")
    channel_correlation = {}
    for source in ("generated", "photos"):
        common.make_folder(tmp_path / source, 5, classes=2, source=source)
        files = sorted((tmp_path / source / "train").rglob("*.JPEG"))
        assert len(files) == 5 and {f.parent.name for f in files} == {"n00000000", "n00000001"}
        sizes = [Image.open(f).size for f in files]
        assert all(300 <= min(s) and max(s) < 520 for s in sizes) and sizes[0][0] < sizes[0][1]  # every fifth portrait
        rgb = [np.asarray(Image.open(f), dtype=float).reshape(-1, 3) for f in files]
        channel_correlation[source] = np.mean([np.corrcoef(p[:, 0], p[:, 1])[0, 1] for p in rgb])
    assert channel_correlation["photos"] > 0.5 > 0.2 > channel_correlation["generated"], channel_correlation


def test_decode_ceiling_rows_time_the_same_pixels_at_each_quality(bench, tmp_path):
    """--codecs' decode-alone table: the decoders it times turn the same bytes into the same pixels
    (else its ratios compare different work), and lower qualities trade smaller files for error."""
    import numpy as np
    import simplejpeg
    from PIL import Image

    common, loader = bench("common"), bench("loader")
    common.make_folder(tmp_path / "src", 3, classes=1, source="photos")
    files = sorted((tmp_path / "src" / "train").rglob("*.JPEG"))
    rng = np.random.default_rng(0)
    # resized as prepare does: a crop on the source's own 8x8 grid would re-encode at q90 almost losslessly
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)) for f in files]
    blob = simplejpeg.encode_jpeg(pixels[0], 90, colorspace="RGB", colorsubsampling="420")
    decoders = loader._decoders()
    rgb = {name: np.array(decode(blob)) for name, decode in decoders.items() if "planes" not in name}
    assert {"simplejpeg (the store's)", "Pillow"} <= rgb.keys()
    for name, got in rgb.items():
        np.testing.assert_array_equal(got, rgb["simplejpeg (the store's)"], err_msg=name)
    rows = loader.decode_ceiling_rows(pixels, files, rng.integers(0, 255, (224, 224, 3)).astype(np.float32), 1)
    by_quality = [r for r in rows if r["decoder"] == "simplejpeg (the store's)"]
    assert [r["encoding"] for r in by_quality] == [f"q{q} 4:2:0" for q in (95, 90, 85, 80, 75)]
    sizes, errors = [r["KB an image"] for r in by_quality], [r["mean abs error"] for r in by_quality]
    assert sizes == sorted(sizes, reverse=True) and errors == sorted(errors)
    assert all(float(r["decode alone vs naive per core"].rstrip("x")) > 0 for r in rows)


def test_the_profile_of_a_step_is_summarised_part_by_part(bench):
    run_all = bench("run_all")
    rows = [{"precision": "bf16", "layout": "channels_last", "batch": 64, "part of the step": "backward conv",
             "ms": 300.0, "share": "30.0%"},
            {"precision": "bf16", "layout": "channels_last", "batch": 64, "part of the step": "optimizer",
             "ms": 50.0, "share": "5.0%"}]
    summary, unread = run_all.summary_rows({"profile": [{"bench": "profile", "rows": rows}]})
    assert not unread and [r[0] for r in summary] == [
        "share of a bf16 channels_last training step at batch 64: backward conv",
        "share of a bf16 channels_last training step at batch 64: optimizer"]
    assert [r[3] for r in summary] == ["30.0%", "5.0%"] and summary[0][1] == "300.0 ms"
    assert run_all.bench_args("profile", "cpu", False, False)[:2] == ["--profile", "--precision"]
