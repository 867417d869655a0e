"""#26 in the step loop, on the CPU: each device's dropout generator has its own seed, the step
lines' windows tile the epoch and split it honestly between the loader and the computation, the
host syncs only at the checks, a run's arithmetic settings reach torch and are restored after it.
The same on CUDA where there is one (`-m cuda`; two GPUs for the towers)."""

import time
from types import SimpleNamespace

import pytest
import torch

from alexnet.config import resolve
from alexnet.data.loader import loader_workers
from alexnet.train.distributed import Processes
from alexnet.train.loop import Trainer, device_seeds, seed_devices, step_seed, train_one_epoch
from alexnet.train.run import fit

GPU0, GPU1 = torch.device("cuda", 0), torch.device("cuda", 1)


def trainer_for(store, out, device="cpu", procs=None, **train):
    config = resolve({"variant": "tiny", "model": {"num_classes": 10},
                      "train": {"epochs": 1, "batch_size": 32, "log_every": 5, "amp": "off", **train}})
    return Trainer(config, store, out, procs or Processes(), torch.device(device), progress=False)


class Recorder:
    """Stands in for the run's MetricsLog: the step scalars of every step line."""

    def __init__(self):
        self.rows = []

    def log_step(self, step, scalars):
        self.rows.append((step, scalars))


# ---------------------------------------------------------------------------------------------------
# Dropout: one seed per device
# ---------------------------------------------------------------------------------------------------


def test_each_device_of_a_step_has_its_own_reproducible_seed():
    seeds = device_seeds(3, 2, 7, 0, (GPU0, GPU1))
    assert list(seeds) == [GPU0, GPU1] and seeds[GPU0] != seeds[GPU1]
    assert seeds == device_seeds(3, 2, 7, 0, (GPU0, GPU1))  # a function of (seed, epoch, step, rank, device)
    assert seeds[GPU0] == step_seed(3, 2, 7, 1)  # the first device's seed is the one-device run's
    assert device_seeds(3, 2, 8, 0, (GPU0, GPU1))[GPU1] != seeds[GPU1]
    assert device_seeds(3, 2, 7, 1, (GPU0, GPU1))[GPU1] != seeds[GPU1]  # another process
    assert device_seeds(3, 2, 7, 0, (GPU0, GPU0)) == {GPU0: seeds[GPU0]}  # one GPU: one generator
    cpu = torch.device("cpu")
    assert device_seeds(3, 2, 7, 0, (cpu, cpu)) == {cpu: seeds[GPU0]}


def test_two_towers_on_two_gpus_draw_different_masks():
    """#26: torch.manual_seed seeds every GPU's generator alike, and each tower's drop6 is the first
    draw of the step on its GPU, of the same shape: the two towers dropped the same neurons. Here two
    generators stand in for the two GPUs' (cuda:0's is the one torch.manual_seed seeds, the CPU's in
    this simulation): seeded by `seed_devices`, their masks differ, and repeat exactly."""
    def masks():
        gpu1 = {}
        seed_devices(device_seeds(0, 4, 11, 0, (GPU0, GPU1)),
                     seed_gpu=lambda device, seed: gpu1.setdefault(device, torch.Generator().manual_seed(seed)))
        tower0 = torch.empty(32, 2048).bernoulli_(0.5)  # cuda:0's generator (torch.manual_seed's)
        tower1 = torch.empty(32, 2048).bernoulli_(0.5, generator=gpu1[GPU1])
        return tower0, tower1

    tower0, tower1 = masks()
    assert not torch.equal(tower0, tower1)
    assert (tower0 != tower1).float().mean() > 0.4  # independent masks disagree on about half
    again = masks()
    assert torch.equal(again[0], tower0) and torch.equal(again[1], tower1)
    torch.manual_seed(step_seed(0, 4, 11, 1))  # the old seeding: one seed for every GPU
    same = torch.empty(32, 2048).bernoulli_(0.5)
    assert torch.equal(same, tower0)  # ... so cuda:1's generator, seeded alike, would have drawn this too


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_the_two_towers_drop_different_neurons_on_two_gpus(demo_store, tmp_path):
    trainer = trainer_for(demo_store, tmp_path, device="cuda:0", model_parallel=2, devices="cuda:0,cuda:1",
                          max_steps=1)
    seen = []  # (kept by ReLU, dropped) of each tower's fc6 neurons
    for tower in trainer.model.towers:
        tower.drop6.register_forward_hook(lambda m, i, o: seen.append(((i[0] != 0).cpu(), (o == 0).cpu())))
    train_one_epoch(trainer, SimpleNamespace(requested=False))
    assert len(seen) == 2 and seen[0][0].shape == seen[1][0].shape
    both = seen[0][0] & seen[1][0]
    dropped = [live & zero for live, zero in seen]
    assert (dropped[0] != dropped[1])[both].float().mean() > 0.2  # the same masks would disagree nowhere


# ---------------------------------------------------------------------------------------------------
# Timings: the step lines' windows
# ---------------------------------------------------------------------------------------------------


def windows_of(trainer) -> tuple[list[float], list[float], list[float]]:
    """(images, seconds, data seconds) of each step line the trainer's Recorder holds."""
    rows = [s for _, s in trainer.metrics.rows]
    seconds = [s["data_s"] + s["compute_s"] for s in rows]
    return [s["img_s"] * t for s, t in zip(rows, seconds)], seconds, [s["data_s"] for s in rows]


def check_windows_tile_the_epoch(trainer):
    trainer.metrics = Recorder()
    start = time.perf_counter()
    metrics = train_one_epoch(trainer, SimpleNamespace(requested=False))
    wall = time.perf_counter() - start
    images, seconds, _ = windows_of(trainer)
    steps = [step for step, _ in trainer.metrics.rows]
    assert steps == [5, 10, 15, 20, 25, 30, 31]  # every log_every steps and the epoch's last
    assert sum(images) == pytest.approx(31 * 32)
    assert sum(seconds) == pytest.approx(trainer.running.seconds, rel=1e-9)
    assert metrics["images_per_s"] == pytest.approx(sum(images) / sum(seconds), rel=1e-9)
    assert 0.8 * wall <= sum(seconds) <= wall


def test_the_step_lines_windows_add_up_to_the_epoch(demo_store, tmp_path):
    """#26: the images/s of the step lines and the epoch's are the same measure: the windows tile the
    epoch (the last one ends at its last step), and each ends after its steps' results were read."""
    check_windows_tile_the_epoch(trainer_for(demo_store, tmp_path))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_step_lines_windows_add_up_to_the_epoch_on_cuda(demo_store, tmp_path):
    check_windows_tile_the_epoch(trainer_for(demo_store, tmp_path, device="cuda", amp="bf16"))


class SlowStore:
    """The store, each batch `delay` seconds slower to gather (a slow disk or decode)."""

    def __init__(self, store, delay):
        self.store, self.delay = store, delay

    def __getattr__(self, name):
        return getattr(self.store, name)

    def __len__(self):
        return len(self.store)

    def get_batch(self, indices, out=None):
        time.sleep(self.delay)
        return self.store.get_batch(indices, out=out)


def test_a_starved_step_shows_as_data_and_a_slow_step_as_compute(demo_store, tmp_path):
    """The README's reading of the step line: waiting for the loader is data, the rest compute."""
    starved = trainer_for(demo_store, tmp_path / "a", max_steps=10)
    starved.train_store, starved.loader_workers = SlowStore(starved.train_store, 0.1), 1
    starved.metrics = Recorder()
    train_one_epoch(starved, SimpleNamespace(requested=False))
    _, seconds, data = windows_of(starved)
    assert sum(data) / sum(seconds) > 0.5

    slow = trainer_for(demo_store, tmp_path / "b", max_steps=10)
    step = slow._step

    def slow_step(*args):
        step(*args)
        time.sleep(0.1)  # a device that takes longer than the loader

    slow._step, slow.metrics = slow_step, Recorder()
    train_one_epoch(slow, SimpleNamespace(requested=False))
    _, seconds, data = windows_of(slow)
    assert sum(data) / sum(seconds) < 0.2


def test_the_host_syncs_only_at_the_checks_and_a_single_process_stops_at_once(demo_store, tmp_path, monkeypatch):
    trainer = trainer_for(demo_store, tmp_path)
    checks = []
    check = trainer.check
    trainer.check = lambda window, requested: checks.append(trainer.position.step) or check(window, requested)
    train_one_epoch(trainer, SimpleNamespace(requested=False))
    assert checks == [5, 10, 15, 20, 25, 30, 31]

    trainer = trainer_for(demo_store, tmp_path / "b")
    stop = SimpleNamespace(requested=False)
    step = trainer._step

    def ctrl_c_in_step_3(*args):
        step(*args)
        stop.requested = stop.requested or trainer.position.step == 3

    trainer._step = ctrl_c_in_step_3
    assert train_one_epoch(trainer, stop)["stopped"] == "interrupted"
    assert trainer.position.step == 3  # one process needs no one's agreement: it stops after that step


def test_loader_threads_are_the_processes_share_of_the_cores(demo_store, tmp_path):
    from alexnet.runtime import thread_share

    assert thread_share(16, 8) == 2 and thread_share(16, 3) == 5 and thread_share(2, 8) == 1
    trainer = trainer_for(demo_store, tmp_path, procs=Processes(cores=3))
    assert trainer.loader_workers == loader_workers(trainer.train_store.format, 0, 3)


# ---------------------------------------------------------------------------------------------------
# The run's arithmetic: determinism, cudnn.benchmark, TF32
# ---------------------------------------------------------------------------------------------------


def flags() -> dict:
    cudnn = torch.backends.cudnn
    return {"cudnn.deterministic": cudnn.deterministic, "cudnn.benchmark": cudnn.benchmark,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn.allow_tf32": cudnn.allow_tf32, "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "CUBLAS_WORKSPACE_CONFIG": __import__("os").environ.get("CUBLAS_WORKSPACE_CONFIG")}


@pytest.mark.parametrize("deterministic, tf32", [(True, False), (False, True), (False, False)])
def test_the_runs_arithmetic_settings_hold_while_it_trains_and_are_restored(demo_store, tmp_path, monkeypatch,
                                                                             deterministic, tf32):
    import alexnet.train.run as run

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    monkeypatch.setattr(run, "_train_epochs", lambda *a: seen.append(flags()) or "finished")
    before = flags()
    config = resolve({"variant": "tiny", "train": {"epochs": 1, "batch_size": 32, "deterministic": deterministic,
                                                   "tf32": tf32, "device": "cpu"}})
    fit(config, demo_store, tmp_path / "run", progress=False, echo=False)
    assert seen == [{"cudnn.deterministic": deterministic or before["cudnn.deterministic"],
                     "cudnn.benchmark": not deterministic,
                     "deterministic_algorithms": deterministic or before["deterministic_algorithms"],
                     "cudnn.allow_tf32": tf32, "matmul.allow_tf32": tf32,
                     "CUBLAS_WORKSPACE_CONFIG": ":4096:8" if deterministic else None}]
    assert flags() == before  # fit is a library function: nothing process-wide left behind


def test_a_deterministic_run_trains_on_the_cpu(demo_store, tmp_path):
    """torch.use_deterministic_algorithms finds no op without a deterministic version in a CPU step."""
    config = resolve({"variant": "tiny", "train": {"epochs": 1, "batch_size": 32, "max_steps": 3,
                                                   "deterministic": True, "device": "cpu"}})
    assert fit(config, demo_store, tmp_path / "run", progress=False, echo=False)["status"] == "stopped at max_steps"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_deterministic_cuda_run_resumes_bit_for_bit(demo_store, tmp_path):
    """train.deterministic on CUDA: a run stopped at step 5 and resumed ends on the bits of one that
    ran 10 steps straight (cuDNN's backward otherwise adds in an order that varies)."""
    from alexnet.model.checkpoint import load_checkpoint

    def config(steps):
        return resolve({"variant": "tiny", "train": {"epochs": 1, "batch_size": 32, "max_steps": steps,
                                                     "deterministic": True, "device": "cuda"}})

    fit(config(10), demo_store, tmp_path / "straight", progress=False, echo=False)
    fit(config(5), demo_store, tmp_path / "cut", progress=False, echo=False)
    fit(config(10), None, tmp_path / "cut", resume=True, progress=False, echo=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_compiled_lrn_matches_the_eager_one_on_cuda():
    """#26 (7): on CUDA under torch.compile the LRN is its plain formula, which inductor fuses; it
    computes what the eager layer computes, forward and backward, in float32 and under bf16."""
    from alexnet.model.lrn import LocalResponseNorm

    torch.manual_seed(0)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    compiled = torch.compile(layer)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        x = (torch.randn(8, 96, 27, 27, device="cuda") * 30).to(dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        y = layer(x)
        (g,) = torch.autograd.grad(y.float().square().sum(), x)
        x2 = x.detach().clone().requires_grad_(True)
        y2 = compiled(x2)
        (g2,) = torch.autograd.grad(y2.float().square().sum(), x2)
        torch.testing.assert_close(y2.float(), y.float(), rtol=tol, atol=tol)
        torch.testing.assert_close(g2.float(), g.float(), rtol=tol, atol=tol * g.abs().max().item())
