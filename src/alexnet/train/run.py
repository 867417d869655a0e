"""A training run and the folder it owns. `fit(config, data, out)` trains (§5) into RUN:

    RUN/config.toml    the resolved config (every default cited in alexnet/config.py)
    RUN/metrics.jsonl  one line per epoch: lr, train loss/error, val loss/top-1/top-5, images/s
    RUN/metrics.csv    the same rows as a table; RUN/tensorboard/ event files when tensorboard is
                       installed (epoch rows and per-step scalars; alexnet/train/metrics.py)
    RUN/train.log      what the console showed
    RUN/last.pt        model, optimizer, position (epoch, step), history and the epoch best.pt holds:
                       `--resume RUN` continues bit for bit from here; written every epoch, on
                       Ctrl-C/SIGTERM and every `train.checkpoint_every` steps
    RUN/best.pt        the weights with the lowest validation top-1 error so far; written before
                       last.pt, so a kill between the two never leaves it behind last.pt
    RUN/train.lock     while a process trains the run: its pid, host and start time (one trainer per run,
                       alexnet/files.py)

The step loop is `alexnet.train.loop.Trainer`; this module is the layer above it: which config a new,
resumed or fine-tuned run gets, the lock, signals (Ctrl-C and SIGTERM save and stop, exit 130/143),
checkpoints, metrics and the one-line errors for a store that does not fit or a full disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from alexnet.config import Config, apply, load_toml, resolve, resume_config, to_toml, validate
from alexnet.data import ImageStore
from alexnet.data.store import check_usable
from alexnet.train.distributed import Processes, agreed, setup_processes
from alexnet.errors import UserError
from alexnet.files import append_text, remove_leftover_temporaries, run_lock, write_text_atomic
from alexnet.runtime import training_math
from alexnet.train.metrics import MetricsLog
from alexnet.train.loop import Position, Trainer, format_epoch, train_one_epoch

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save; a second
    one stops at once. `signal` names the first signal that arrived."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGTERM:
                raise SystemExit(EXIT_CODES["SIGTERM"])
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after this step and saving a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class RunLog:
    """Messages to the console (around progress bars) and to RUN/train.log."""

    def __init__(self, path: Path | None, echo: bool = True):
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        if self.echo:
            tqdm.write(msg, file=sys.stdout)
        if self.path is not None:
            append_text(self.path, msg + "\n")


# ---------------------------------------------------------------------------------------------------
# Checks: a store that fits the run, a resume that keeps the run's net and data
# ---------------------------------------------------------------------------------------------------


def resolve_run(out: str | os.PathLike | None, resume: str | os.PathLike | None,
                finetune: str | os.PathLike | None, config_file: str | os.PathLike | None,
                overrides: dict) -> tuple[Config, Path]:
    """The config and folder of a new run (defaults, --config, overrides), a resumed one (its own
    config with the overrides that do not change its net or data) or a fine-tuning one (§6: the
    pretrained net's architecture)."""
    layers = [load_toml(config_file)] if config_file else []
    if resume:
        if config_file or finetune:
            raise UserError("--config and --finetune cannot change a resumed run; give single settings with --set")
        last = Path(resume) / "last.pt"
        if not last.is_file():
            raise UserError(f"nothing to resume: {last} does not exist")
        payload = load_checkpoint(last)
        saved = checkpoint_config(payload)
        config = resume_config(saved, overrides)  # refuses changes to the net or the data
        done = payload["global_step"]
        if "max_steps" not in overrides.get("train", {}):
            if 0 < saved.train.max_steps <= done:
                # the limit that stopped the run is spent: "continue with --resume RUN" means go on
                config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=0))
        elif 0 < config.train.max_steps <= done:
            raise UserError(f"--max-steps {config.train.max_steps} is already reached: {resume} is at step {done}")
        return config, Path(resume)
    if finetune:
        base = checkpoint_config(load_checkpoint(finetune))  # the pretrained net's architecture
        config = apply(dataclasses.replace(resolve(*layers), variant=base.variant, model=base.model), overrides)
        return config, Path(out or f"runs/{config.variant}-finetuned")
    config = resolve(*layers, overrides)
    return config, Path(out or f"runs/{config.variant}")


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def save_checkpoints(trainer: Trainer, out: Path, best: bool = False) -> None:
    """best.pt (when the epoch improved) before last.pt: killed between the two, the run resumes from
    the previous last.pt, redoes the epoch and writes both again."""
    if trainer.procs.main:
        if best:
            save_checkpoint(out / "best.pt", trainer.payload(with_optimizer=False))
        save_checkpoint(out / "last.pt", trainer.payload())
    trainer.procs.barrier()


def repair_best(trainer: Trainer, out: Path, log: RunLog) -> None:
    """After a restore: a best.pt missing or older than the epoch last.pt names as best is rewritten
    when last.pt holds those weights, and named in the log when it cannot be."""
    if not trainer.procs.main or trainer.best_epoch == 0:
        return
    best = out / "best.pt"
    held = load_checkpoint(best)["epoch"] if best.is_file() else None
    if held is not None and held >= trainer.best_epoch:
        return
    if trainer.position == Position(trainer.best_epoch, 0, trainer.position.global_step):
        save_checkpoint(best, trainer.payload(with_optimizer=False))
        log(f"rewrote {best} with the weights of epoch {trainer.best_epoch}, the best so far")
    else:
        log(f"warning: {best} {'is missing' if held is None else f'holds epoch {held}'}, not epoch "
            f"{trainer.best_epoch}, the best so far; it is rewritten at the next improvement")


# ---------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _faults_as_user_errors(device: torch.device, batch_per_process: int, out: Path):
    """Out of memory and a full disk: one line each, with what to do."""
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"the disk holding {out} is full ({e.filename or e.strerror}); free some space and "
                        f"continue with --resume {out}") from None
    except out_of_memory:
        raise UserError(f"out of memory on {device} at batch {batch_per_process} per process; lower "
                        f"--batch-size, use --amp bf16, or a smaller variant") from None
    except RuntimeError as e:
        if "can't allocate memory" in str(e) or "not enough memory" in str(e):
            raise UserError(f"out of memory on {device}: {str(e).splitlines()[0]}; lower --batch-size") from None
        raise


def _start(config: Config, data, out: Path, resume: bool, finetune, procs, device, progress: bool,
           log: RunLog) -> Trainer:
    """The Trainer of a new, resumed or fine-tuning run, its store checked; RUN's files written."""
    payload = None
    if resume:
        payload = load_checkpoint(out / "last.pt", map_location=device)
        data = data or payload["data"]
    elif (out / "last.pt").exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if not data:
        raise UserError("give the store with --data")
    classes = ImageStore(data, "train").classes  # fails early, with a clear message, on a bad store
    if config.model.num_classes != len(classes):
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(classes)))
    trainer = Trainer(config, data, out, procs, device, progress, runtime=payload.get("runtime") if payload else None)
    for store in (trainer.val_store, trainer.train_store):
        if store is not None:
            check_usable(store, len(classes))
    if payload is not None:
        trainer.restore(payload)
        trainer.transforms = trainer.transforms.with_mean(payload["mean"])[0]  # the run's (a fine-tuned one's source's)
        log(f"resumed {out} at epoch {trainer.position.epoch + 1}, step {trainer.position.step}")
        saved_threads = payload.get("runtime", {}).get("threads")
        if saved_threads and saved_threads != torch.get_num_threads():
            log(f"warning: this run trained with {saved_threads} threads and resumes with {torch.get_num_threads()}: "
                f"it goes on, but not bit for bit as it would have (resume with --threads {saved_threads} for that)")
        repair_best(trainer, out, log)
    elif finetune:
        pretrained = load_checkpoint(finetune)
        trainer.load_pretrained(pretrained)
        log(f"fine-tuning from {pretrained['path']} ({len(pretrained['classes'])} classes): every layer but fc8, "
            f"which starts afresh for {len(classes)} classes")
        if config.data.finetune_mean == "source":  # §2: the weights expect the inputs they were trained on
            trainer.transforms, resized = trainer.transforms.with_mean(pretrained["mean"])
            log(f"preprocessing: the source's mean image subtracted{' (resized to the store)' if resized else ''}, "
                f"as its weights expect (--data.finetune-mean store: this store's)")
        else:
            log("preprocessing: this store's mean image subtracted, not the source's (data.finetune_mean = store)")
    if procs.main:
        write_text_atomic(out / "config.toml", to_toml(config))
        # metrics.jsonl and .csv rewritten from the checkpoint's history (a resume drops epochs redone)
        trainer.metrics = MetricsLog(out, trainer.history, trainer.position.global_step)
    return trainer


def _train_epochs(trainer: Trainer, stop: StopRequest, out: Path, log: RunLog) -> str:
    """Epochs until the config's last, or a stop; returns the status."""
    epochs = trainer.config.train.epochs
    while trainer.position.epoch < epochs:
        epoch_start = time.perf_counter() - trainer.running.seconds
        metrics = train_one_epoch(trainer, stop, save=lambda: save_checkpoints(trainer, out))
        if metrics["stopped"]:
            save_checkpoints(trainer, out)
            log(f"{metrics['stopped']}: epoch {trainer.position.epoch + 1}, step {trainer.position.step}; "
                f"saved {out / 'last.pt'} (continue with --resume {out})")
            return metrics["stopped"]
        row, improved = trainer.close_epoch(metrics, time.perf_counter() - epoch_start)
        save_checkpoints(trainer, out, best=improved)
        if trainer.metrics is not None:
            trainer.metrics.append(row, trainer.position.global_step)
        log(format_epoch(row, epochs))
        reason = trainer.should_stop(stop.requested)
        if reason and trainer.position.epoch < epochs:
            log(f"{reason} after epoch {trainer.position.epoch}; continue with --resume {out}")
            return reason
    return "finished"


def _arithmetic(trainer: Trainer) -> str:
    """The run's arithmetic for its first log line: "bf16 autocast" or "fp32", and on CUDA whether
    TF32 and deterministic algorithms are on."""
    t = trainer.config.train
    words = ["bf16 autocast" if trainer.amp else "fp32"]
    if trainer.device.type == "cuda":
        words += ["TF32" if t.tf32 else "no TF32"] + (["deterministic"] if t.deterministic else [])
    return " ".join(words[:1]) + (f" ({', '.join(words[1:])})" if words[1:] else "")


def fit(config: Config, data: str | os.PathLike | None, out: str | os.PathLike, resume: bool = False,
        progress: bool = True, echo: bool = True, finetune: str | os.PathLike | None = None) -> dict:
    """Train as §5 describes into the run folder `out` and return a summary: status ("finished",
    "interrupted", "stopped at max_steps"), the signal that stopped it (if one did), last and best
    metrics, history, paths.
    With `resume`, continue the run in `out` from its last.pt; with `finetune`, start from that
    checkpoint's weights (all but fc8, §6) instead of the paper's init.

    PyTorch's process-wide arithmetic settings (`train.deterministic`, `train.tf32`, cudnn.benchmark:
    `alexnet.runtime.training_math`) hold while it trains and are restored when it returns. Under
    torchrun a process that fails alone tells the others (`Processes.shared_failure`), which stop
    with its one-line reason."""
    config = validate(config)  # a Config built with dataclasses.replace has not been checked yet
    with training_math(config.train.deterministic, config.train.tf32):  # before any CUDA work (cuBLAS)
        procs, device = setup_processes(config.train.device)
        try:
            return _fit(config, data, Path(out), resume, progress, echo, finetune, procs, device)
        except Exception as e:
            failure = procs.shared_failure(e)
            if failure is e:
                raise
            raise failure from None


def _fit(config: Config, data, out: Path, resume: bool, progress: bool, echo: bool, finetune,
         procs: Processes, device: torch.device) -> dict:
    if resume and not (out / "last.pt").is_file():
        raise UserError(f"nothing to resume: {out / 'last.pt'} does not exist")
    created = not out.exists()
    lock, refused = run_lock(out), None
    trainer = None
    try:  # from the moment the lock is taken, whatever stops this process releases it
        if procs.main:
            out.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire()
                remove_leftover_temporaries(out)
            except UserError as e:
                refused = e
        if procs.any(refused is not None, device):  # every process stops, not only the first
            raise agreed(refused or UserError(f"{out} is being trained by another process"))
        log = RunLog(out / "train.log" if procs.main else None, echo and procs.main)
        try:
            with _faults_as_user_errors(device, config.train.batch_size // procs.world, out):
                trainer = _start(config, data, out, resume, finetune, procs, device, progress, log)
        except BaseException:
            lock.release()
            if created and procs.main:
                with contextlib.suppress(OSError):
                    out.rmdir()  # a run that never started leaves no folder behind
            raise
        trainer.step_log = log if procs.main else None
        c = trainer.config
        log(f"training {c.variant} ({sum(p.numel() for p in trainer.model.parameters()):,} parameters) on "
            f"{len(trainer.train_store)} images of {c.model.num_classes} classes, {trainer.device}"
            f"{f' x {procs.world} processes' if procs.distributed else ''}, batch {c.train.batch_size}, "
            f"{_arithmetic(trainer)}, {torch.get_num_threads()} threads, {c.train.epochs} epochs -> {out}")
        with StopRequest() as stop, _faults_as_user_errors(trainer.device, c.train.batch_size // procs.world, out):
            status = _train_epochs(trainer, stop, out, log)
    finally:
        if trainer is not None and trainer.metrics is not None:
            trainer.metrics.close()
        lock.release()
    signal_name = stop.signal if status == "interrupted" else None
    return {"status": status, "signal": signal_name,
            "epochs": len(trainer.history), "last": trainer.history[-1] if trainer.history else {},
            "best_err": trainer.best_err, "best_epoch": trainer.best_epoch, "history": trainer.history,
            "variant": c.variant, "data": str(trainer.train_store.root), "out": str(out),
            "position": dataclasses.asdict(trainer.position), "rank": procs.rank}


def start_or_resume(data: str | os.PathLike | None, out: str | os.PathLike | None,
                    resume: str | os.PathLike | None = None, finetune: str | os.PathLike | None = None,
                    config_file: str | os.PathLike | None = None, overrides: dict | None = None,
                    progress: bool = True, echo: bool = True) -> dict:
    """What `alexnet train` does: resolve the run's config and folder (`resolve_run`), then `fit`."""
    config, folder = resolve_run(out, resume, finetune, config_file, overrides or {})
    return fit(config, data, folder, resume=bool(resume), progress=progress, echo=echo, finetune=finetune)


def saved_threads(run: str | os.PathLike) -> int | None:
    """The intra-op thread count the run in folder `run` trained with (None: not recorded, or no run):
    `alexnet train --resume` keeps it unless the user fixes another."""
    last = Path(run) / "last.pt"
    if not last.is_file():
        return None
    threads = load_checkpoint(last).get("runtime", {}).get("threads")
    return threads if isinstance(threads, int) and threads >= 1 else None


def summary_line(result: dict) -> str:
    """The one line `alexnet train` ends with."""
    last = result["last"]
    line = f"{result['status']}: {result['epochs']} epoch(s) in {result['out']}"
    if "val_top1_err" in last:
        line += f"; last val top-1 error {last['val_top1_err']:.1%}, top-5 {last['val_top5_err']:.1%}"
    if math.isfinite(result["best_err"]) and result["best_epoch"]:
        line += f"; best.pt from epoch {result['best_epoch']}"
    return line
