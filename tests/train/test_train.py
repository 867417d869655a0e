"""Training (§5) end to end on the demo data: it learns, resumes bit for bit, runs under torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli.commands import main
from alexnet.config import load_toml, resolve
from alexnet.data.demo_images import make_demo_data
from alexnet.data.prepare import prepare
from alexnet.errors import UserError
from alexnet.train.run import fit
from alexnet.train.loop import TrainingDiverged

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**train):
    t = {"epochs": 2, "batch_size": 32, "log_every": 3, **train}
    return resolve({"variant": "tiny", "train": t})


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_demo_runs_every_stage_and_a_second_run_only_evaluates(tmp_path):
    """`alexnet demo` end to end on a few images and epochs: every stage's outputs, and a second run
    that finds the training done. That the demo learns (top-1 error far below chance) is checked on
    CI's own `alexnet demo` run (.ci/run), which trains it for its 40 epochs: the small net with the
    paper's init needs ~10 of them to leave chance (README, "Does the paper's initialisation train?")."""
    from alexnet.cli.demo import run_demo

    settings = {"train": {"batch_size": 32}, "schedule": {"kind": "step", "milestones": []}}
    lines = []
    result = run_demo(tmp_path / "demo", epochs=3, classes=4, train_per_class=40, val_per_class=8,
                      device="cpu", progress=False, overrides=settings, echo=lines.append)
    assert result["status"] == "finished"
    assert 0.0 <= result["top1_err"] <= 1.0 and 0.0 <= result["top1_err_10crop"] <= 1.0
    run = tmp_path / "demo" / "run"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["train_loss"]) and h["lr"] == 0.01 for h in history)
    assert (run / "curves.png").stat().st_size > 10_000
    assert json.loads((run / "eval_10crop.json").read_text())["crops"] == 10
    assert resolve(load_toml(run / "config.toml")) == resolve(
        {"variant": "small", "model": {"num_classes": 4}, "train": {"epochs": 3, "device": "cpu"}}, settings)
    assert any("Where everything went" in line for line in lines)
    # a second run finds everything done and only evaluates again
    again = run_demo(tmp_path / "demo", epochs=3, device="cpu", progress=False, overrides=settings, echo=lines.append)
    assert again["top1_err"] == result["top1_err"] and lines.count("already trained") == 1


def test_interrupted_run_resumes_bit_for_bit(demo_store, tmp_path):
    fit(tiny_config(), demo_store, tmp_path / "full", progress=False, echo=False)
    # stop mid-epoch 1 (31 steps an epoch), then twice more, resuming each time
    r = fit(tiny_config(max_steps=7), demo_store, tmp_path / "cut", progress=False, echo=False)
    assert r["status"] == "stopped at max_steps" and r["position"] == {"epoch": 0, "step": 7, "global_step": 7}
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    fit(tiny_config(max_steps=40), None, tmp_path / "cut", resume=True, progress=False, echo=False)
    r = fit(tiny_config(), None, tmp_path / "cut", resume=True, progress=False, echo=False)
    assert r["status"] == "finished" and cut["step"] == 7
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    for a, b in zip(full["history"], resumed["history"]):
        assert a["val_top1_err"] == b["val_top1_err"] and a["val_loss"] == b["val_loss"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
    for k, v in full["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"])
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one per epoch, no duplicates from the restarts


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "alexnet.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_training_process_resumes_to_the_same_weights(demo_store, tmp_path, sig):
    """Ctrl-C and SIGTERM save and exit 130 and 143 (so `train && eval` stops); kill -9 leaves its lock
    behind, which the resume recognises as stale. Every way, the resumed run ends bit for bit where an
    uninterrupted one does."""
    common = ["--data", str(demo_store), "--variant", "tiny", "--epochs", "2", "--batch-size", "32", "--quiet"]
    fit(tiny_config(), demo_store, tmp_path / "full", progress=False, echo=False)
    proc = _run_cli(["train", *common, "--out", str(tmp_path / "run"), "--checkpoint-every", "5"])
    last = tmp_path / "run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:
        stopped = load_checkpoint(last)
        if stopped["epoch"] == 2:
            pytest.skip("the run finished before the signal arrived")
        assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], out
        assert f"{signal.Signals(sig).name}: stopping" in out and f"--resume {tmp_path / 'run'}" in out
        assert "Traceback" not in out
        assert not (tmp_path / "run" / "train.lock").exists()
    else:
        assert proc.returncode == -signal.SIGKILL
        assert json.loads((tmp_path / "run" / "train.lock").read_text())["pid"] == proc.pid
        if load_checkpoint(last)["epoch"] == 2:
            pytest.skip("the run finished before the signal arrived")
    proc = _run_cli(["train", "--resume", str(tmp_path / "run"), "--quiet"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(last))
    assert not (tmp_path / "run" / "train.lock").exists()


def test_resume_beside_a_cpu_hog_keeps_the_runs_threads_and_precision(demo_store, tmp_path):
    """The bits of a step depend on the thread count (the order of torch's sums) and on what "auto"
    precision resolved to; both are chosen from the machine when a run starts (the load, the CPU's
    flags) and may come out otherwise when it resumes. A run saves them and `--resume` reuses them:
    cut at 7 steps on an idle machine as if it had AMX (auto: bf16), resumed beside a busy process
    (auto: 1 thread) as if it had none (auto: float32), it ends bit for bit where the uninterrupted run
    does. A count the user fixes wins, with a warning in the log."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ALEXNET_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    common = ["--data", str(demo_store), "--variant", "tiny", "--epochs", "1", "--batch-size", "32", "--quiet"]

    def train(args, fast_bf16, threads=()):
        r = subprocess.run([sys.executable, "-m", "alexnet.cli", *threads, "train", *args], capture_output=True, text=True,
                           env=dict(env, ALEXNET_CPU_FAST_BF16=fast_bf16), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr

    train([*common, "--out", str(tmp_path / "full"), "--max-steps", "12"], "1", ("--threads", "2"))
    train([*common, "--out", str(tmp_path / "cut"), "--max-steps", "7"], "1", ("--threads", "2"))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, (os.cpu_count() or 2) // 2))]
    try:
        time.sleep(0.3)
        train(["--resume", str(tmp_path / "cut"), "--max-steps", "12"], "0")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    log = (tmp_path / "cut" / "train.log").read_text().splitlines()
    resumed = log[log.index(next(line for line in log if line.startswith("resumed"))) + 1:]
    assert any("bf16 autocast, 2 threads" in line for line in resumed), log
    assert not any("warning" in line for line in resumed), log
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    train(["--resume", str(tmp_path / "cut"), "--max-steps", "14"], "0", ("--threads", "1"))
    assert "trained with 2 threads and resumes with 1" in (tmp_path / "cut" / "train.log").read_text()


DDP_SCRIPT = """
import sys, torch
from alexnet.config import resolve
from alexnet.train.run import fit
out = sys.argv[1]
config = resolve({{"variant": "tiny", "model": {{"dropout": 0.0}},
                  "train": {{"epochs": 1, "batch_size": 32, "max_steps": 6, "device": "cpu", "amp": "off"}}}})
fit(config, {store!r}, out, progress=False, echo=False)
rank = torch.distributed.get_rank()
torch.save({{k: v.clone() for k, v in torch.load(out + "/last.pt", weights_only=True)["model"].items()}}, out + f"/rank{{rank}}.pt")
"""


def test_two_processes_under_torchrun_stay_in_sync_and_match_one(demo_store, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(store=str(demo_store)))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    assert_same_weights(rank0, rank1)
    config = resolve({"variant": "tiny", "model": {"dropout": 0.0},
                      "train": {"epochs": 1, "batch_size": 32, "max_steps": 6, "device": "cpu", "amp": "off"}})
    fit(config, demo_store, tmp_path / "single", progress=False, echo=False)
    single = weights(tmp_path / "single" / "last.pt")
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-6)
    from alexnet.model import AlexNet

    torch.manual_seed(0)
    init = AlexNet(resolve({"variant": "tiny", "model": {"num_classes": 10}}).model).state_dict()
    assert (rank0["fc8.weight"] - init["fc8.weight"]).abs().max() > 1e-4  # six steps did move the weights


def test_bad_settings_get_clear_errors(demo_store, tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        fit(tiny_config(), tmp_path / "nowhere", tmp_path / "a", progress=False, echo=False)
    with pytest.raises(UserError, match="larger than the store"):
        fit(resolve({"variant": "paper"}), demo_store, tmp_path / "b", progress=False, echo=False)
    fit(tiny_config(max_steps=2), demo_store, tmp_path / "c", progress=False, echo=False)
    with pytest.raises(UserError, match="--resume"):
        fit(tiny_config(), demo_store, tmp_path / "c", progress=False, echo=False)
    with pytest.raises(UserError, match="nothing to resume"):
        fit(tiny_config(), demo_store, tmp_path / "d", resume=True, progress=False, echo=False)
    with pytest.raises(TrainingDiverged, match="too high"):
        fit(resolve({"variant": "tiny", "optim": {"lr": 1e12}, "train": {"batch_size": 32, "log_every": 1}}),
            demo_store, tmp_path / "e", progress=False, echo=False)
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_one_and_ten_crops_and_ensembles(demo_store, tmp_path, capsys):
    from alexnet.data import ImageStore
    from alexnet.evaluate.error_rates import evaluate, predict_probabilities

    for seed in (0, 1):
        fit(resolve({"variant": "tiny", "train": {"epochs": 2, "batch_size": 32, "seed": seed}}), demo_store,
            tmp_path / f"run{seed}", progress=False, echo=False)
    one = evaluate([tmp_path / "run0"], demo_store, views=1, device="cpu", progress=False)
    ten = evaluate([tmp_path / "run0"], demo_store, views=10, device="cpu", progress=False)
    assert one["n"] == ten["n"] == 100 and one["crops"] == 1 and ten["crops"] == 10
    store = ImageStore(demo_store, "val")
    models = [model_from_checkpoint(load_checkpoint(tmp_path / f"run{s}")) for s in (0, 1)]
    probs = [predict_probabilities(m, store, torch.device("cpu"), views=10) for m in models]
    np.testing.assert_allclose(probs[0].sum(1), 1.0, rtol=1e-5)
    avg = (probs[0] + probs[1]) / 2
    expected_top1 = 1 - (avg.argmax(1) == store.labels).mean()
    both = evaluate([tmp_path / "run0", tmp_path / "run1"], demo_store, views=10, device="cpu", progress=False)
    assert both["top1_err"] == pytest.approx(expected_top1)
    assert len(both["models"]) == 2
    assert both["models"][0]["top1_err"] == pytest.approx(ten["top1_err"])
    per_class = both["per_class"]
    assert len(per_class) == 10 and sum(c["n"] for c in per_class) == 100
    hits = sum(c["top1_accuracy"] * c["n"] for c in per_class)
    assert hits == pytest.approx(100 * (1 - both["top1_err"]))
    assert per_class[0]["name"] == "disc" and per_class[0]["wnid"] == "n90000000"
    assert main(["eval", str(tmp_path / "run0" / "best.pt"), "--crops", "10", "--json", str(tmp_path / "e.json"),
                 "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "average of 10 patches" in out and "top-5 error" in out
    assert json.loads((tmp_path / "e.json").read_text())["top1_err"] == pytest.approx(ten["top1_err"])


def test_eval_refuses_a_store_with_other_classes(demo_store, tmp_path):
    fit(tiny_config(max_steps=2), demo_store, tmp_path / "run", progress=False, echo=False)
    make_demo_data(tmp_path / "other", classes=3, train_per_class=4, val_per_class=2)
    prepare(tmp_path / "other", tmp_path / "store3", size=72, workers=1, progress=False, log=lambda *a: None)
    from alexnet.evaluate.error_rates import evaluate

    with pytest.raises(UserError, match="other classes"):
        evaluate([tmp_path / "run" / "last.pt"], tmp_path / "store3", progress=False)
    with pytest.raises(UserError, match="not an alexnet checkpoint|cannot be read"):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        evaluate([tmp_path / "junk.pt"], demo_store, progress=False)


def test_finetuning_keeps_every_layer_but_fc8(demo_store, tiny_run, tmp_path, capsys):
    """§6: a net trained on one class set, fc8 replaced, trained on a store with other classes."""
    from alexnet.train.loop import Processes, Trainer

    make_demo_data(tmp_path / "src3", classes=3, train_per_class=40, val_per_class=8, seed=7)
    prepare(tmp_path / "src3", tmp_path / "store3", size=72, workers=1, progress=False, log=lambda *a: None)
    pretrained = load_checkpoint(tiny_run)
    config = resolve({"variant": "tiny", "model": {"num_classes": 3}, "train": {"batch_size": 32}})
    trainer = Trainer(config, tmp_path / "store3", tmp_path / "t", Processes(), torch.device("cpu"), False)
    fresh_fc8 = trainer.model.fc8.weight.detach().clone()
    trainer.load_pretrained(pretrained)
    state = trainer.model.state_dict()
    for name, value in pretrained["model"].items():
        if not name.startswith("fc8."):
            assert torch.equal(state[name], value), name
    assert state["fc8.weight"].shape == (3, 64) and torch.equal(state["fc8.weight"], fresh_fc8)
    assert main(["train", "--data", str(tmp_path / "store3"), "--finetune", str(tiny_run), "--epochs", "2",
                 "--batch-size", "32", "--out", str(tmp_path / "ft"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning from" in out and "finished: 2 epoch(s)" in out
    done = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert done["model"]["fc8.weight"].shape == (3, 64) and done["classes"] == ["n90000000", "n90000001", "n90000002"]
    assert done["config"]["variant"] == "tiny"
    with pytest.raises(UserError, match="does not fit"):
        Trainer(resolve({"variant": "small", "model": {"num_classes": 3}, "train": {"batch_size": 32}}),
                tmp_path / "store3", tmp_path / "u", Processes(), torch.device("cpu"), False).load_pretrained(pretrained)


def test_bf16_autocast_runs_and_out_of_memory_is_one_clear_line(demo_store, tmp_path, monkeypatch):
    r = fit(tiny_config(max_steps=2, amp="bf16"), demo_store, tmp_path / "bf16", progress=False, echo=False)
    assert r["status"] == "stopped at max_steps"
    assert load_checkpoint(tmp_path / "bf16" / "last.pt")["model"]["conv1.weight"].dtype == torch.float32
    import alexnet.train.run as run_module

    def out_of_memory(trainer, stop, save=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_module, "train_one_epoch", out_of_memory)
    with pytest.raises(UserError, match="out of memory .* lower --batch-size"):
        fit(tiny_config(), demo_store, tmp_path / "oom", progress=False, echo=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_with_bf16_and_channels_last(demo_store, tmp_path):
    r = fit(tiny_config(max_steps=4, device="cuda"), demo_store, tmp_path / "gpu", progress=False, echo=False)
    assert r["status"] == "stopped at max_steps"
    r = fit(resolve({"variant": "tiny", "train": {"epochs": 1, "batch_size": 32, "device": "cuda", "max_steps": 3,
                                                  "model_parallel": 2, "devices": "cuda:0,cuda:0"}}),
            demo_store, tmp_path / "mp", progress=False, echo=False)
    assert r["status"] == "stopped at max_steps"


def test_a_run_writes_its_metrics_as_csv_and_tensorboard_events(demo_store, tmp_path):
    import csv

    run = tmp_path / "run"
    fit(tiny_config(max_steps=40), demo_store, run, progress=False, echo=False)  # stops in epoch 2
    fit(tiny_config(), None, run, resume=True, progress=False, echo=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in table] == [r["epoch"] for r in rows] == [1, 2]
    assert [float(r["val_top1_err"]) for r in table] == [r["val_top1_err"] for r in rows]
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/val_top1_err")] == pytest.approx([r["val_top1_err"] for r in rows])
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps == sorted(set(steps)) and len(steps) >= 2  # both sessions logged, nothing twice


def test_the_step_line_splits_time_between_the_loader_and_the_computation(demo_store, tmp_path):
    """pytorch/examples' `Data` and `Time`: every log interval (at least twice an epoch) the run's log
    gets loss, top-1 error, lr, images/s and the seconds spent waiting for batches vs computing."""
    import re

    run = tmp_path / "run"
    fit(tiny_config(epochs=1, log_every=20), demo_store, run, progress=False, echo=False)  # 1000 / 32: 31 steps
    line = re.compile(r"epoch 1 step (\d+)  loss ([\d.]+)  top-1 err ([\d.]+)%  lr 0.01  (\d+) img/s  "
                      r"data ([\d.]+) s  compute ([\d.]+) s$")
    steps = [m for m in map(line.match, (run / "train.log").read_text().splitlines()) if m]
    # every min(log_every 20, 31 // 2) = 15 steps, and the epoch's last step (the windows tile the epoch)
    assert [int(m[1]) for m in steps] == [15, 30, 31]
    assert all(0 < float(m[2]) < 5 and float(m[6]) > 0 and float(m[5]) >= 0 for m in steps)


class FirstCallSlow(torch.nn.Module):
    """Stands in for torch.compile's module, which compiles on its first call (a minute for a real
    net on a CPU, too long for a test): the first forward takes `delay` seconds longer."""

    def __init__(self, net, delay: float = 0.4):
        super().__init__()
        self.net, self.delay, self.calls = net, delay, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.net(x)


def test_validation_and_the_first_compiled_step_show_progress(demo_store, tmp_path, monkeypatch, capsys):
    """#14: every step that takes more than a few seconds shows progress. The compile is said before
    the first step and timed after it, in the run's log (and console); validation has its bar."""
    import re

    monkeypatch.setattr(torch, "compile", FirstCallSlow)
    run = tmp_path / "compiled"
    fit(tiny_config(epochs=2, max_steps=40, compile=True, log_every=10), demo_store, run, progress=True, echo=False)
    lines = (run / "train.log").read_text().splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("compiling the net (torch.compile)")]
    timing = re.compile(r"compiled: the first step took ([\d.]+) s$")
    timed = [(i, m) for i, m in enumerate(map(timing.match, lines)) if m]
    first_step = next(i for i, line in enumerate(lines) if line.startswith("epoch 1 step "))
    assert len(said) == 1 and len(timed) == 1  # once a run, not every epoch (40 steps: into epoch 2)
    assert said[0] < timed[0][0] < first_step and float(timed[0][1][1]) >= 0.4
    err = capsys.readouterr().err
    assert re.search(r"validation: +\d+%.*\| \d/4 ", err)  # 100 val images, 32 a batch
    fit(tiny_config(max_steps=2), demo_store, tmp_path / "plain", progress=False, echo=False)
    assert "compil" not in (tmp_path / "plain" / "train.log").read_text()


def test_compiled_training_follows_eager_training(demo_store, tmp_path):
    """`--compile` trains, in float32 and in bf16: three steps of `tiny` through torch.compile move the
    weights as the eager steps do (dropout off: compiled code draws its masks from another generator).
    float32: within 2% of each tensor's update (fused sums round in another order). bf16: no farther
    from the eager bf16 run than twice the distance between eager bf16 and eager float32 (inductor
    keeps fused intermediates in float32 where eager autocast rounds each op's output to bf16).
    The compiled net's eval-mode logits are the eager net's."""
    from alexnet.model import AlexNet

    moved = {}
    for amp in ("off", "bf16"):
        for compiled in (False, True):
            config = resolve({"variant": "tiny", "model": {"dropout": 0.0},
                              "train": {"epochs": 1, "batch_size": 32, "max_steps": 3, "amp": amp,
                                        "compile": compiled, "device": "cpu", "log_every": 1}})
            result = fit(config, demo_store, tmp_path / f"{amp}-{compiled}", progress=False, echo=False)
            assert result["status"] == "stopped at max_steps"
            moved[amp, compiled] = weights(tmp_path / f"{amp}-{compiled}" / "last.pt")
    torch.manual_seed(config.train.seed)  # the run's initial weights, as Trainer draws them
    init = AlexNet(resolve({"variant": "tiny", "model": {"num_classes": 10}}).model).state_dict()
    for k in init:
        update = moved["off", False][k] - init[k]
        assert (moved["off", True][k] - moved["off", False][k]).norm() <= 0.02 * update.norm() + 1e-7, k
        bf16_noise = (moved["bf16", False][k] - moved["off", False][k]).norm()
        assert (moved["bf16", True][k] - moved["bf16", False][k]).norm() <= 2 * bf16_noise + 1e-7, k
    net = model_from_checkpoint(load_checkpoint(tmp_path / "off-True" / "last.pt")).eval()
    x = torch.randn(4, 3, 64, 64) * 50
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x), net(x), rtol=1e-4, atol=1e-4)
