"""§5 training: the step loop. `Trainer` holds a run's model, optimizer and position and runs
`train_one_epoch` (-> a metrics dict, as timm's) and validation; `alexnet.train.run.fit` drives it and
owns the run folder (checkpoints, metrics, signals, the lock).

The randomness of step k of epoch e (data order, crops, flips, lighting, dropout) is seeded from
(seed, e, k), so a resumed run repeats exactly what an uninterrupted one would have done. Under
`torchrun`, each process takes its share of every global batch (DDP); the crops and lighting of a
global batch are drawn once and sliced, so with dropout off N processes compute what one would.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.config import Config, to_dict
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.data.loader import BatchLoader, loader_workers, train_plan
from alexnet.train.distributed import Processes, agreed, model_parallel_devices
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import validate
from alexnet.model import AlexNet
from alexnet.train.optim import learning_rate, make_optimizer, warmup_factor
from alexnet.model.parallel import TwoTowerAlexNet
from alexnet.runtime import use_bf16_autocast


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one (epoch, step, ...) of a run, independent of every other."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _same_generator(device: torch.device) -> torch.device:
    """The device whose random generator `device` draws from ("cuda" is the current GPU)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device if device.type == "cuda" else torch.device(device.type)


def device_seeds(seed: int, epoch: int, step: int, rank: int,
                 devices: tuple[torch.device, ...]) -> dict[torch.device, int]:
    """The seed of the random generator of each of a step's devices (dropout masks), a function of
    (seed, epoch, step, rank, the device's place in `devices`): the first device's is
    step_seed(seed, epoch, step, 1 + rank), each further one's adds its place. §3.2's towers on two
    GPUs draw their first masks of a step (drop6, same shape) from two generators; seeded alike, as
    torch.manual_seed seeds every GPU, the towers would drop the same neurons. A device listed twice
    (two towers on one GPU, or on the CPU) has one generator, whose draws follow each other."""
    seeds: dict[torch.device, int] = {}
    for place, device in enumerate(devices):
        seeds.setdefault(_same_generator(device), step_seed(seed, epoch, step, 1 + rank, *([place] if place else [])))
    return seeds


def _seed_gpu(device: torch.device, seed: int) -> None:
    with torch.cuda.device(device):
        torch.cuda.manual_seed(seed)


def seed_devices(seeds: dict[torch.device, int], seed_gpu: Callable[[torch.device, int], None] = _seed_gpu) -> None:
    """Seed the generators `device_seeds` gave: torch.manual_seed with the first device's seed (the
    CPU's generator and every GPU's), then each further GPU's own (`seed_gpu`)."""
    (_, first), *others = seeds.items()
    torch.manual_seed(first)
    for device, seed in others:
        if device.type == "cuda":
            seed_gpu(device, seed)


@dataclass
class Window:
    """The steps since the last check (`Trainer.check`): device-side sums of their loss and top-1
    hits (no sync until the check), their images, when they began and the loader's wait by then."""

    sums: torch.Tensor
    images: int = 0
    start: float = 0.0
    data_before: float = 0.0


# ---------------------------------------------------------------------------------------------------
# One epoch, and validation
# ---------------------------------------------------------------------------------------------------


@dataclass
class Position:
    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # the next step of that epoch
    global_step: int = 0


@dataclass
class Running:
    """Sums over the steps of the current epoch (kept in the checkpoint for a mid-epoch resume)."""

    loss: float = 0.0
    correct1: float = 0.0
    count: int = 0
    seconds: float = 0.0


class Trainer:
    """The state of a run and the two loops over the data; `alexnet.train.run.fit` drives it."""

    def __init__(self, config: Config, data: str | os.PathLike, out: str | os.PathLike, procs: Processes,
                 device: torch.device, progress: bool = True, runtime: dict | None = None):
        """`runtime`: a resumed run's `runtime()` as its checkpoint saved it: where the config leaves a
        choice to the machine ("auto"), the run keeps the one it started with, so that its bits do not
        change with the machine it resumes on."""
        self.config, self.procs, self.device = config, procs, device
        self.out = Path(out)
        self.progress = progress and procs.main
        self._open_stores(data)
        t, saved = config.train, runtime or {}
        self.amp = use_bf16_autocast(t.amp, device)
        self.channels_last = t.channels_last != "off"  # "auto": on, on the CPU and on CUDA (AlexNet's docstring)
        if t.amp == "auto" and "bf16_autocast" in saved:
            self.amp = bool(saved["bf16_autocast"])
        if t.channels_last == "auto" and "channels_last" in saved:
            self.channels_last = bool(saved["channels_last"])
        torch.manual_seed(t.seed)  # the same initial weights in every process
        self.model = self._place(AlexNet(config.model))
        self.optimizer = make_optimizer(self.model, config.optim)
        self.transforms = BatchTransforms.for_store(self.train_store, config.model.input_size, config.data,
                                                    self.device)
        self.net: nn.Module = self.model
        if procs.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
        self.compile_pending = t.compile  # torch.compile compiles on the first call: announce and time it
        self.metrics = None  # the main process's alexnet.train.metrics.MetricsLog, set by the run
        self.step_log: Callable[[str], None] | None = None  # where the step line goes (the run's log)
        self.position = Position()
        self.running = Running()
        self.history: list[dict] = []
        self.best_err = math.inf
        self.best_epoch = 0  # the epoch whose weights best.pt holds (0: none yet)
        self.loader_workers = loader_workers(self.train_store.format, config.data.workers, procs.cores)

    def _open_stores(self, data: str | os.PathLike) -> None:
        config, t = self.config, self.config.train
        self.train_store = ImageStore(data, "train")
        has_val = bool(self.train_store.meta["splits"].get("val"))
        self.val_store = ImageStore(data, "val") if has_val else None
        if self.val_store is None and config.schedule.kind == "plateau":
            raise UserError(f"store {data} has no val split, which the plateau schedule (§5) needs; "
                            f"prepare one with SRC/val, or use --set schedule.kind=step")
        crop = config.model.input_size
        if crop > self.train_store.image_size:
            raise UserError(f"the net's input ({crop}x{crop}) is larger than the store's images "
                            f"({self.train_store.image_size}); prepare with --size >= {crop} or choose another variant")
        if t.batch_size % self.procs.world:
            raise UserError(f"--batch-size {t.batch_size} does not split over {self.procs.world} processes")
        if len(self.train_store) < t.batch_size:
            raise UserError(f"the store has {len(self.train_store)} training images, fewer than one batch of {t.batch_size}")

    def _place(self, model: AlexNet) -> nn.Module:
        """The net on its device, or split over two (§3.2), in the memory format asked for."""
        t = self.config.train
        self.parallel = t.model_parallel == 2
        if self.parallel:
            if self.procs.distributed:
                raise UserError("--model-parallel 2 splits one net over two devices; it does not combine with torchrun")
            devices = model_parallel_devices(t.devices, self.device)
            try:
                model = TwoTowerAlexNet.from_single(model, devices)
            except ValueError as e:
                raise UserError(str(e)) from None
            self.device = devices[0]
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the first tower's GPU, where the batches arrive
        else:
            model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # -- checkpoints ------------------------------------------------------------------------------
    def model_state(self) -> dict:
        """The weights in the single-device layout whatever the placement (one checkpoint format)."""
        return self.model.single_state_dict() if self.parallel else self.model.state_dict()

    def payload(self, with_optimizer: bool = True) -> dict:
        """The run as plain data (dicts, lists, str, numbers, tensors): it loads with weights_only=True."""
        p = {"config": to_dict(self.config), "model": self.model_state(), "model_parallel": self.config.train.model_parallel,
             "epoch": self.position.epoch, "step": self.position.step, "global_step": self.position.global_step,
             "running": dataclasses.asdict(self.running), "history": self.history, "best_err": self.best_err,
             "best_epoch": self.best_epoch, "classes": self.train_store.classes,
             "class_names": self.train_store.class_names, "image_size": self.train_store.image_size,
             "mean": self.transforms.mean.cpu(), "data": str(self.train_store.root.resolve())}
        if with_optimizer:
            p["optimizer"] = self.optimizer.state_dict()
        p["runtime"] = self.runtime()
        return p

    def runtime(self) -> dict:
        """What decides the bits of a step besides the config: the precision and memory format "auto"
        resolved to, and the intra-op thread count (the order of torch's sums). `--resume` reuses them."""
        return {"bf16_autocast": self.amp, "channels_last": self.channels_last, "threads": torch.get_num_threads()}

    def load_pretrained(self, payload: dict) -> None:
        """§6 fine-tuning: every layer from a checkpoint trained on other data except fc8, which keeps
        its fresh initialisation and gets this store's class count."""
        state = self.model_state()
        skipped = []
        for name, value in payload["model"].items():
            if name.startswith("fc8."):
                continue
            if name not in state or state[name].shape != value.shape:
                skipped.append(name)
                continue
            state[name] = value
        if skipped:
            raise UserError(f"{payload['path']} does not fit this net ({', '.join(skipped[:3])} differ); "
                            f"fine-tune with the checkpoint's own variant and input size")
        if self.parallel:
            self.model.load_single(state)
        else:
            self.model.load_state_dict(state)

    def restore(self, payload: dict) -> None:
        if payload["classes"] != self.train_store.classes or payload["image_size"] != self.train_store.image_size:
            raise UserError(f"the store at {self.train_store.root} is not the one this run was trained on "
                            f"(other classes or image size)")
        if payload.get("model_parallel", 1) != self.config.train.model_parallel:
            raise UserError(f"this run was trained with --model-parallel {payload.get('model_parallel', 1)}; "
                            f"resume it the same way (its optimizer state follows that layout)")
        if self.parallel:
            self.model.load_single(payload["model"])
        else:
            self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.position = Position(payload["epoch"], payload["step"], payload["global_step"])
        self.running = Running(**payload["running"])
        self.history = payload["history"]
        self.best_err = payload["best_err"]
        self.best_epoch = payload.get("best_epoch", 0)

    # -- the loops --------------------------------------------------------------------------------
    def lr_for(self, epoch: int) -> float:
        errors = [h["val_top1_err"] for h in self.history if h.get("val_top1_err") is not None]
        return learning_rate(self.config.optim.lr, epoch, errors, self.config.schedule)

    def autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def should_stop(self, requested: bool) -> str | None:
        """"interrupted" after Ctrl-C/SIGTERM in any process, "stopped at max_steps", or None."""
        if self.procs.any(requested, self.device):
            return "interrupted"
        if self.config.train.max_steps and self.position.global_step >= self.config.train.max_steps:
            return "stopped at max_steps"
        return None

    def _run_step(self, bar, *step: object) -> None:
        """`_step`; the first one of a compiled net said before and timed after, since torch.compile
        compiles (forward and backward) inside it, which can take a minute with nothing to show."""
        if not self.compile_pending:
            self._step(*step)
            return
        say = self.step_log or (lambda msg: None)
        say("compiling the net (torch.compile) in the first step: this can take a minute or more")
        bar.set_postfix_str("compiling the net...")
        start = time.perf_counter()
        self._step(*step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_pending = False
        bar.set_postfix_str("")
        say(f"compiled: the first step took {time.perf_counter() - start:.1f} s")

    def _step(self, images: torch.Tensor, labels: torch.Tensor, lr: float, gen: torch.Generator,
              sums: torch.Tensor) -> None:
        """One SGD step (§5) on one global batch's share, its randomness seeded by (seed, epoch, step)."""
        c, procs, k = self.config, self.procs, self.position.step
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gen.manual_seed(step_seed(c.train.seed, self.position.epoch, k))
        devices = self.model.devices if self.parallel else (self.device,)
        seed_devices(device_seeds(c.train.seed, self.position.epoch, k, procs.rank, devices))  # dropout masks
        local = c.train.batch_size // procs.world
        x = self.transforms.train(images, gen, start=procs.rank * local, total=c.train.batch_size)
        if not self.channels_last:
            x = x.contiguous()
        with self.autocast():
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sums[0] += loss.detach().double() * len(labels)
        sums[1] += (logits.detach().argmax(1) == labels).sum()
        self.position.step += 1
        self.position.global_step += 1

    def epoch_metrics(self, stopped: str | None) -> dict:
        """The running loss, error and speed of the epoch so far; summed over processes when complete."""
        r = self.running
        loss, correct1, count = r.loss, r.correct1, float(r.count)
        if stopped is None:
            totals = self.procs.sum(torch.tensor([loss, correct1, count], device=self.device, dtype=torch.float64))
            loss, correct1, count = totals.tolist()
        count = max(count, 1.0)
        return {"loss": loss / count, "top1_err": 1 - correct1 / count,
                "images_per_s": count / max(r.seconds, 1e-9), "stopped": stopped}

    def _log_progress(self, bar, lr: float, images: int, seconds: float, waited: float) -> None:
        """The step line (pytorch/examples' `Data` and `Time`): running loss and top-1 error of the
        epoch, lr, images/s of the last steps (`images` in `seconds`, which end after the device has
        finished them) and how their time split between waiting for the loader (data) and the rest
        (compute: the step, and on a device, waiting for it). A starved device shows as a large data
        share, a busy one as compute. Also TensorBoard's step curves."""
        r = self.running
        scalars = {"loss": r.loss / r.count, "top1_err": 1 - r.correct1 / r.count, "lr": lr,
                   "img_s": images * self.procs.world / max(seconds, 1e-9),
                   "data_s": waited, "compute_s": max(seconds - waited, 0.0)}
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", err=f"{scalars['top1_err']:.3f}", lr=f"{lr:.2g}",
                        img_s=f"{scalars['img_s']:.0f}", data=f"{waited / max(seconds, 1e-9):.0%}")
        if self.step_log is not None:
            self.step_log(f"epoch {self.position.epoch + 1} step {self.position.step}  loss {scalars['loss']:.3f}  "
                          f"top-1 err {scalars['top1_err']:.1%}  lr {lr:.2g}  {scalars['img_s']:.0f} img/s  "
                          f"data {waited:.2f} s  compute {scalars['compute_s']:.2f} s")
        if self.metrics is not None:
            self.metrics.log_step(self.position.global_step, scalars)

    def check(self, window: Window, requested: bool) -> tuple[bool, float]:
        """Close `window`: add its sums to the epoch's running totals and agree with every process on
        whether to stop, with one host sync (and under torchrun one all-reduce of two flags, the only
        collective of the step loop besides DDP's own). Returns whether any process asked to stop and
        the window's seconds, which end once the device has finished its steps. A NaN loss in any
        process stops every process here, with the same error."""
        flags = torch.stack([torch.ones((), device=self.device, dtype=torch.float64) * float(requested),
                             (~torch.isfinite(window.sums[0])).double()])
        self.procs.agree(flags)
        loss, correct, stop, diverged = torch.cat([window.sums, flags]).tolist()  # the one sync
        seconds = time.perf_counter() - window.start
        window.sums.zero_()
        if diverged:
            where = f" in one of the {self.procs.world} processes" if self.procs.distributed else ""
            raise agreed(TrainingDiverged(
                f"the loss became {loss if not self.procs.distributed else 'NaN or infinite'}{where} in epoch "
                f"{self.position.epoch + 1} near step {self.position.step}; the learning rate "
                f"({self.config.optim.lr}) may be too high. The last good checkpoint is {self.out / 'last.pt'} "
                f"(if one was written)"))
        self.running.loss += loss
        self.running.correct1 += correct
        self.running.count += window.images
        self.running.seconds += seconds
        return bool(stop), seconds

    @torch.no_grad()
    def validate(self, views: int = 1) -> dict:
        """§6 error rates of the current weights on the val split: centre patch or ten patches.
        Uses the bare model (not the DDP wrapper): processes may see different numbers of batches."""
        return validate(self.model, self.val_store, self.transforms, self.device, views,
                        self.config.train.batch_size // self.procs.world, autocast=self.autocast,
                        channels_last=self.channels_last, rank=self.procs.rank, world=self.procs.world,
                        reduce=self.procs.sum, progress=self.progress, workers=self.loader_workers)

    def close_epoch(self, metrics: dict, epoch_seconds: float) -> tuple[dict, bool]:
        """The end of a complete epoch: validation, the epoch's metrics.jsonl row (`train_one_epoch`'s
        metrics and validation's) added to the history, the best error so far, and the position moved to
        the next epoch. Returns the row and whether the epoch improved on the best (best.pt is due)."""
        row = {"epoch": self.position.epoch + 1, "lr": self.lr_for(self.position.epoch),
               "train_loss": metrics["loss"], "train_top1_err": metrics["top1_err"],
               "images_per_s": metrics["images_per_s"], "seconds": epoch_seconds}
        if self.val_store is not None:
            v = self.validate(self.config.train.eval_crops)
            row.update(val_loss=v["loss"], val_top1_err=v["top1_err"], val_top5_err=v["top5_err"])
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.history.append(row)
        err = row.get("val_top1_err", row["train_top1_err"])
        improved = err < self.best_err
        self.position = Position(self.position.epoch + 1, 0, self.position.global_step)
        self.running = Running()
        if improved:
            self.best_err, self.best_epoch = err, self.position.epoch
        return row, improved


def train_one_epoch(trainer: Trainer, stop, save: Callable[[], None] | None = None) -> dict:
    """§5's steps for the rest of the trainer's current epoch; `stop.requested` (a flag the caller's signal handler sets)
    and max_steps cut it short, `save` is called every `train.checkpoint_every` steps. Returns the
    epoch's running metrics (over every process once the epoch is complete) and `stopped`, the
    reason it was cut short or None.

    The host never waits for the device inside a step: every `every` steps (`train.log_every`, at
    least twice an epoch), at a checkpoint, at max_steps and at the epoch's end, `Trainer.check`
    syncs once, folds the steps' sums and (under torchrun) agrees with the other processes on
    stopping; the step line then covers exactly those steps, so the step lines' windows add up to the
    epoch's time. A single process also stops at the first step after a Ctrl-C."""
    c, epoch, procs = trainer.config, trainer.position.epoch, trainer.procs
    plan = train_plan(len(trainer.train_store), c.train.batch_size, epoch, c.train.seed, procs.rank, procs.world)
    lr = trainer.lr_for(epoch)
    gen = torch.Generator(trainer.device)
    trainer.net.train()
    loader = BatchLoader(trainer.train_store, plan[trainer.position.step :], trainer.device, trainer.loader_workers,
                         c.data.prefetch)
    bar = tqdm(total=len(plan), initial=trainer.position.step, desc=f"epoch {epoch + 1}/{c.train.epochs}",
               unit="batch", disable=not trainer.progress, dynamic_ncols=True, file=sys.stderr, leave=False)
    # loss, top-1 correct since the last check, on the device
    window = Window(torch.zeros(2, device=trainer.device, dtype=torch.float64), 0, time.perf_counter())
    stopped = None
    every = max(1, min(c.train.log_every, len(plan) // 2))  # the demo's epochs have 20 steps
    try:
        for images, labels, _ in loader:
            step_lr = lr * warmup_factor(trainer.position.global_step, len(plan), c.schedule.warmup_epochs)
            trainer._run_step(bar, images, labels, step_lr, gen, window.sums)
            window.images += len(labels)
            bar.update(1)
            step, done = trainer.position.step, trainer.position.global_step
            logging = step % every == 0 or step == len(plan)
            saving = bool(c.train.checkpoint_every) and done % c.train.checkpoint_every == 0 and step < len(plan)
            limit = bool(c.train.max_steps) and done >= c.train.max_steps
            asked = stop.requested and not procs.distributed  # under torchrun asked at the checks only
            if not (logging or saving or limit or asked):
                continue
            requested, seconds = trainer.check(window, stop.requested)
            waited = loader.waited - window.data_before
            if logging:
                trainer._log_progress(bar, step_lr, window.images, seconds, waited)
            window.images, window.start, window.data_before = 0, time.perf_counter(), loader.waited
            if step == len(plan):  # a complete epoch: the run's epoch end decides whether to go on
                break
            stopped = "interrupted" if requested else "stopped at max_steps" if limit else None
            if stopped:
                break
            if saving and save is not None:
                save()
    finally:
        bar.close()
    return trainer.epoch_metrics(stopped)


def format_epoch(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.2g}", f"train loss {row['train_loss']:.3f}",
             f"train err {row['train_top1_err']:.1%}"]
    if "val_top1_err" in row:
        parts += [f"val top-1 err {row['val_top1_err']:.1%}", f"top-5 err {row['val_top5_err']:.1%}"]
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
