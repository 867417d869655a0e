"""§5 training: `fit(config, data, out)` trains on a prepared store and writes a run folder.

    RUN/config.toml    the resolved config (every default cited in alexnet/config.py)
    RUN/metrics.jsonl  one line per epoch: lr, train loss/error, val loss/top-1/top-5, images/s
    RUN/train.log      what the console showed
    RUN/last.pt        model, optimizer, position (epoch, step) and history: `--resume RUN` continues
                       bit for bit from here; written every epoch, on Ctrl-C and every
                       `train.checkpoint_every` steps
    RUN/best.pt        the weights with the lowest validation top-1 error so far

The randomness of step k of epoch e (data order, crops, flips, lighting, dropout) is seeded from
(seed, e, k), so a resumed run repeats exactly what an uninterrupted one would have done. Under
`torchrun`, each process takes its share of every global batch (DDP); the crops and lighting of a
global batch are drawn once and sliced, so with dropout off N processes compute what one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.config import Config, to_dict, to_toml
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.data.loader import BatchLoader, eval_plan, train_plan
from alexnet.errors import UserError
from alexnet.evaluate import topk_correct
from alexnet.model import AlexNet
from alexnet.optim import learning_rate, make_optimizer, warmup_factor
from alexnet.runtime import resolve_device


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one (epoch, step, ...) of a run, independent of every other."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------------
# Processes (torchrun + DDP)
# ---------------------------------------------------------------------------------------------------


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def model_parallel_devices(names: str, device: torch.device) -> tuple[torch.device, torch.device]:
    """The two devices of --model-parallel 2: as given, else the first two GPUs, else the device twice."""
    if names:
        parts = [resolve_device(n.strip()) for n in names.split(",")]
        if len(parts) != 2:
            raise UserError(f"--devices needs two devices for --model-parallel 2, got '{names}'")
        return parts[0], parts[1]
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        return torch.device("cuda", 0), torch.device("cuda", 1)
    return device, device


def setup_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), pick this process's
    device (its LOCAL_RANK-th GPU), and share the CPU's threads among local processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), resolve_device(device_name)
    procs = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


# ---------------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------------


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save; a second
    one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              "(again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


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
    """The state of a run and the two loops over the data. `fit` drives it."""

    def __init__(self, config: Config, data: str | os.PathLike, out: str | os.PathLike, procs: Processes,
                 device: torch.device, progress: bool = True):
        self.config, self.procs, self.device = config, procs, device
        self.out = Path(out)
        self.progress = progress and procs.main
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
        t = config.train
        if t.batch_size % procs.world:
            raise UserError(f"--batch-size {t.batch_size} does not split over {procs.world} processes")
        if len(self.train_store) < t.batch_size:
            raise UserError(f"the store has {len(self.train_store)} training images, fewer than one batch of {t.batch_size}")
        self.amp = t.amp == "bf16" or (t.amp == "auto" and device.type == "cuda")
        self.channels_last = t.channels_last == "on" or (t.channels_last == "auto" and device.type == "cuda")
        torch.manual_seed(t.seed)  # the same initial weights in every process
        self.model = AlexNet(config.model)
        self.parallel = t.model_parallel == 2
        if self.parallel:
            from alexnet.parallel import TwoTowerAlexNet

            if procs.distributed:
                raise UserError("--model-parallel 2 splits one net over two devices; it does not combine with torchrun")
            devices = model_parallel_devices(t.devices, device)
            try:
                self.model = TwoTowerAlexNet.from_single(self.model, devices)
            except ValueError as e:
                raise UserError(str(e)) from None
            self.device = device = devices[0]
        elif t.model_parallel != 1:
            raise UserError(f"--model-parallel must be 1 or 2 (the paper's two GPUs), got {t.model_parallel}")
        else:
            self.model = self.model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config.optim)
        self.transforms = BatchTransforms.for_store(self.train_store, crop, config.data, device)
        self.net: nn.Module = self.model
        if procs.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
        self.thread_planner = None
        self.position = Position()
        self.running = Running()
        self.history: list[dict] = []
        self.best_err = math.inf
        workers = config.data.workers or (2 if self.train_store.format == "raw" else min(16, os.cpu_count() or 1))
        self.loader_workers = workers

    # -- checkpoints ------------------------------------------------------------------------------
    def model_state(self) -> dict:
        """The weights in the single-device layout whatever the placement (one checkpoint format)."""
        return self.model.single_state_dict() if self.parallel else self.model.state_dict()

    def payload(self, with_optimizer: bool = True) -> dict:
        p = {"config": to_dict(self.config), "model": self.model_state(), "model_parallel": self.config.train.model_parallel,
             "epoch": self.position.epoch, "step": self.position.step, "global_step": self.position.global_step,
             "running": dataclasses.asdict(self.running), "history": self.history, "best_err": self.best_err,
             "classes": self.train_store.classes, "class_names": self.train_store.class_names,
             "image_size": self.train_store.image_size, "mean": torch.from_numpy(self.train_store.mean),
             "data": str(self.train_store.root.resolve())}
        if with_optimizer:
            p["optimizer"] = self.optimizer.state_dict()
        return p

    def save(self, best: bool = False) -> None:
        if self.procs.main:
            save_checkpoint(self.out / "last.pt", self.payload())
            if best:
                save_checkpoint(self.out / "best.pt", self.payload(with_optimizer=False))
        self.procs.barrier()

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

    # -- the loops --------------------------------------------------------------------------------
    def lr_for(self, epoch: int) -> float:
        errors = [h["val_top1_err"] for h in self.history if h.get("val_top1_err") is not None]
        return learning_rate(self.config.optim.lr, epoch, errors, self.config.schedule)

    def autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def should_stop(self, stop: StopRequest) -> str | None:
        """"interrupted" after Ctrl-C/SIGTERM in any process, "stopped at max_steps", or None."""
        if self.procs.any(stop.requested, self.device):
            return "interrupted"
        if self.config.train.max_steps and self.position.global_step >= self.config.train.max_steps:
            return "stopped at max_steps"
        return None

    def train_one_epoch(self, stop: StopRequest) -> bool:
        """Run the rest of the current epoch. False if it was cut short by `should_stop`."""
        c, procs = self.config, self.procs
        epoch = self.position.epoch
        plan = train_plan(len(self.train_store), c.train.batch_size, epoch, c.train.seed, procs.rank, procs.world)
        lr = self.lr_for(epoch)
        local = c.train.batch_size // procs.world
        gen = torch.Generator(self.device)
        self.net.train()
        loader = BatchLoader(self.train_store, plan[self.position.step :], self.device, self.loader_workers,
                             c.data.prefetch)
        from tqdm import tqdm

        bar = tqdm(total=len(plan), initial=self.position.step, desc=f"epoch {epoch + 1}/{c.train.epochs}",
                   unit="batch", disable=not self.progress, dynamic_ncols=True, file=sys.stderr, leave=False)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        seen, start = 0, time.perf_counter()

        def fold() -> None:
            nonlocal seen, start
            self._fold(loss_sum, correct, seen, start)
            loss_sum.zero_(), correct.zero_()
            seen, start = 0, time.perf_counter()

        try:
            for images, labels, _ in loader:
                k = self.position.step
                step_lr = lr * warmup_factor(self.position.global_step, len(plan), c.schedule.warmup_epochs)
                for group in self.optimizer.param_groups:
                    group["lr"] = step_lr
                gen.manual_seed(step_seed(c.train.seed, epoch, k))
                torch.manual_seed(step_seed(c.train.seed, epoch, k, 1 + procs.rank))  # dropout masks
                x = self.transforms.train(images, gen, start=procs.rank * local, total=c.train.batch_size)
                if not self.channels_last:
                    x = x.contiguous()
                with self.autocast():
                    logits = self.net(x)
                loss = F.cross_entropy(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.thread_planner is not None and (n := self.thread_planner.replan()):
                    torch.set_num_threads(n)  # the machine's load changed (alexnet.machine)
                loss_sum += loss.detach().double() * len(labels)
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += len(labels)
                self.position.step += 1
                self.position.global_step += 1
                bar.update(1)
                if self.position.step == len(plan):
                    break
                if self.position.step % c.train.log_every == 0:
                    fold()
                    r = self.running
                    bar.set_postfix(loss=f"{r.loss / r.count:.3f}", err=f"{1 - r.correct1 / r.count:.3f}",
                                    lr=f"{step_lr:.2g}", img_s=f"{r.count * procs.world / max(r.seconds, 1e-9):.0f}")
                if self.should_stop(stop):
                    fold()
                    return False
                if c.train.checkpoint_every and self.position.global_step % c.train.checkpoint_every == 0:
                    fold()
                    self.save()
        finally:
            bar.close()
        fold()
        return True

    def _fold(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, start: float) -> None:
        """Add the device-side sums of the last steps to the epoch's running totals (one sync)."""
        if seen == 0:
            return
        loss = loss_sum.item()
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} in epoch {self.position.epoch + 1} near step {self.position.step}; "
                f"the learning rate ({self.config.optim.lr}) may be too high. The last good checkpoint is "
                f"{self.out / 'last.pt'} (if one was written)")
        self.running.loss += loss
        self.running.correct1 += correct.item()
        self.running.count += seen
        self.running.seconds += time.perf_counter() - start

    @torch.no_grad()
    def validate(self, views: int = 1) -> dict:
        """§6 error rates of the current weights on the val split: centre patch or ten patches.
        Uses the bare model (not the DDP wrapper): processes may see different numbers of batches."""
        return evaluate_split(self.model, self.val_store, self.transforms, self.device, self.procs,
                              self.config.train.batch_size // self.procs.world, views, self.autocast,
                              self.channels_last)

    def end_epoch(self, epoch_seconds: float) -> dict:
        r = self.running
        totals = self.procs.sum(torch.tensor([r.loss, r.correct1, float(r.count)], device=self.device, dtype=torch.float64))
        loss, correct1, count = totals.tolist()
        row = {"epoch": self.position.epoch + 1, "lr": self.lr_for(self.position.epoch),
               "train_loss": loss / count, "train_top1_err": 1 - correct1 / count,
               "images_per_s": count / max(r.seconds, 1e-9), "seconds": epoch_seconds}
        if self.val_store is not None:
            v = self.validate(self.config.train.eval_crops)
            row.update(val_loss=v["loss"], val_top1_err=v["top1_err"], val_top5_err=v["top5_err"])
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return row


def evaluate_split(net: nn.Module, store: ImageStore, transforms: BatchTransforms, device: torch.device,
                   procs: Processes, batch_size: int, views: int, autocast, channels_last: bool) -> dict:
    """Loss, top-1 and top-5 error over a whole split (each process takes its share; summed)."""
    was_training = net.training
    net.eval()
    plan = eval_plan(len(store), max(1, batch_size // views), procs.rank, procs.world)
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 correct, top-5 correct, n
    with torch.no_grad():
        for images, labels, _ in BatchLoader(store, plan, device, workers=2):
            x = transforms.test(images, views)
            if not channels_last:
                x = x.contiguous()
            with autocast():
                logits = net(x)
            probs = logits.float().softmax(1)
            if views > 1:  # §4.1: average the softmax of the ten patches
                probs = probs.reshape(len(labels), views, -1).mean(1)
            sums[0] -= probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum()
            c1, c5 = topk_correct(probs, labels, (1, 5))
            sums[1] += c1
            sums[2] += c5
            sums[3] += len(labels)
    procs.sum(sums)
    net.train(was_training)
    loss, c1, c5, n = sums.tolist()
    return {"loss": loss / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "n": int(n)}


# ---------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------


class RunLog:
    """Messages to the console (around progress bars) and to RUN/train.log."""

    def __init__(self, path: Path | None, echo: bool = True):
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        if self.echo:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(msg + "\n")


def _rewrite_metrics(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


def fit(config: Config, data: str | os.PathLike | None, out: str | os.PathLike, resume: bool = False,
        progress: bool = True, echo: bool = True, plot: bool = False, finetune: str | os.PathLike | None = None,
        thread_planner=None) -> dict:
    """Train as §5 describes and return a summary: status, last and best metrics, paths. With
    `finetune`, start from that checkpoint's weights (all but fc8, §6) instead of the paper's init."""
    procs, device = setup_processes(config.train.device)
    out = Path(out)
    payload = None
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise UserError(f"nothing to resume: {last} does not exist")
        payload = load_checkpoint(last, map_location=device)
        data = data or payload["data"]
    elif (out / "last.pt").exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if not data:
        raise UserError("give the store with --data")
    store = ImageStore(data, "train")  # fails early, with a clear message, on a bad store
    if config.model.num_classes != len(store.classes):
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(store.classes)))
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    procs.barrier()
    log = RunLog(out / "train.log" if procs.main else None, echo and procs.main)
    trainer = Trainer(config, data, out, procs, device, progress)
    trainer.thread_planner = thread_planner
    if payload is not None:
        trainer.restore(payload)
        log(f"resumed {out} at epoch {trainer.position.epoch + 1}, step {trainer.position.step}")
    elif finetune:
        pretrained = load_checkpoint(finetune)
        trainer.load_pretrained(pretrained)
        log(f"fine-tuning from {pretrained['path']} ({len(pretrained['classes'])} classes): every layer but fc8, "
            f"which starts afresh for {len(store.classes)} classes")
    if procs.main:
        (out / "config.toml").write_text(to_toml(config))
        _rewrite_metrics(out / "metrics.jsonl", trainer.history)
    log(f"training {config.variant} ({sum(p.numel() for p in trainer.model.parameters()):,} parameters) on "
        f"{len(trainer.train_store)} images of {len(store.classes)} classes, {device}"
        f"{f' x {procs.world} processes' if procs.distributed else ''}, batch {config.train.batch_size}, "
        f"{'bf16 autocast' if trainer.amp else 'fp32'}, {config.train.epochs} epochs -> {out}")
    status = "finished"
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    with StopRequest() as stop:
        try:
            while trainer.position.epoch < config.train.epochs:
                epoch_start = time.perf_counter() - trainer.running.seconds
                if not trainer.train_one_epoch(stop):
                    trainer.save()
                    status = trainer.should_stop(stop) or "interrupted"
                    log(f"{status}: epoch {trainer.position.epoch + 1}, step {trainer.position.step}; "
                        f"saved {out / 'last.pt'} (continue with --resume {out})")
                    break
                row = trainer.end_epoch(time.perf_counter() - epoch_start)
                trainer.history.append(row)
                err = row.get("val_top1_err", row["train_top1_err"])
                improved = err < trainer.best_err
                trainer.best_err = min(trainer.best_err, err)
                trainer.position = Position(trainer.position.epoch + 1, 0, trainer.position.global_step)
                trainer.running = Running()
                trainer.save(best=improved)
                if procs.main:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                log(format_epoch(row, config.train.epochs))
                reason = trainer.should_stop(stop)
                if reason and trainer.position.epoch < config.train.epochs:
                    status = reason
                    log(f"{status} after epoch {trainer.position.epoch}; continue with --resume {out}")
                    break
        except out_of_memory:
            raise UserError(f"out of memory on {device} at batch {config.train.batch_size // procs.world} per "
                            f"process; lower --batch-size, use --amp bf16, or a smaller variant") from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "not enough memory" in str(e):
                raise UserError(f"out of memory on {device}: {str(e).splitlines()[0]}; lower --batch-size") from None
            raise
    last = trainer.history[-1] if trainer.history else {}
    if plot and procs.main and trainer.history:
        from alexnet.analysis.figures import plot_curves

        plot_curves(trainer.history, out / "curves.png", title=f"{config.variant} on {Path(data).name}")
    return {"status": status, "epochs": len(trainer.history), "last": last, "best_err": trainer.best_err,
            "out": str(out), "position": dataclasses.asdict(trainer.position), "rank": procs.rank}


def format_epoch(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.2g}", f"train loss {row['train_loss']:.3f}",
             f"train err {row['train_top1_err']:.1%}"]
    if "val_top1_err" in row:
        parts += [f"val top-1 err {row['val_top1_err']:.1%}", f"top-5 err {row['val_top5_err']:.1%}"]
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
