"""The paper's experiments, one command each: `alexnet experiment NAME --data DST`.

Every ablation is a named change to a base config (the paper's net by default, `--base small` on a
CPU), trained with the same code and recipe and evaluated on the centre patch and the ten patches.
Each arm is trained with several seeds (`--seeds`, config.EXPERIMENT_SEEDS). A run's folder,
RESULTS/runs/DATA-BASE-NAME-HASH, is named by all of its settings: HASH is a short hash of the
resolved config (its seed included) and the store's path, leaving out what does not change what is
trained (device, when to stop or checkpoint, loader threads). The same command resumes its own runs
and skips the finished ones; other settings train new ones. Only a finished run appends its row to
RESULTS/results.jsonl and rewrites RESULTS/results.md (alexnet/experiments/table.py): per arm the
mean ± std over its seeds and the difference to the baseline trained on the same data, base and
settings, with Welch's test of whether it exceeds the seeds' spread, so rows from different runs and
machines stay comparable. `relu-vs-tanh` is
Fig. 1, on CIFAR-10 (alexnet/experiments/fig1.py).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint
from alexnet.config import EXPERIMENT_SEEDS, Config, resolve, to_dict
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import evaluate
from alexnet.experiments.table import write_table
from alexnet.files import write_json_atomic
from alexnet.model import AlexNet, count_parameters
from alexnet.report.curves import plot_curves, run_title
from alexnet.train.run import fit

# settings that change how a run is carried out, not what it trains
RUN_ONLY = {"train": ("device", "devices", "compile", "checkpoint_every", "max_steps", "log_every"),
            "data": ("workers", "prefetch")}


def _model(**changes) -> Callable[[Config], Config]:
    return lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, **changes))


def _one_tower(c: Config) -> Config:
    # §3.2 footnote 2: half the kernels in every conv layer but the last, one tower.
    ch = c.model.channels
    return dataclasses.replace(c, model=dataclasses.replace(
        c.model, towers=1, channels=tuple(k // 2 for k in ch[:4]) + (ch[4],)))


def _no_lighting(c: Config) -> Config:
    return dataclasses.replace(c, data=dataclasses.replace(c.data, lighting_std=0.0))


class ExperimentInterrupted(Exception):
    """A signal stopped a run (its checkpoint saved): the CLI says so and exits as the `signal`
    ("SIGINT", "SIGTERM") calls for."""

    def __init__(self, message: str, signal: str | None):
        super().__init__(message)
        self.signal = signal


@dataclass(frozen=True)
class Experiment:
    section: str
    what: str
    change: Callable[[Config], Config]


EXPERIMENTS: dict[str, Experiment] = {
    "baseline": Experiment("§3-§5", "the base net and recipe as they are", lambda c: c),
    "no-lrn": Experiment("§3.3", "no response normalisation", _model(lrn=False)),
    "no-overlap": Experiment("§3.4", "non-overlapping pooling, s = z = 2", _model(pool_size=2, pool_stride=2)),
    "one-tower": Experiment("§3.2", "one tower with half the kernels (all of conv5's)", _one_tower),
    "no-lighting": Experiment("§4.1", "no PCA colour noise", _no_lighting),
    "no-dropout": Experiment("§4.2", "no dropout", _model(dropout=0.0)),
    "minus-conv3": Experiment("§7", "conv3 removed", _model(remove_conv=3)),
    "minus-conv4": Experiment("§7", "conv4 removed", _model(remove_conv=4)),
    "six-conv": Experiment("§6", "a sixth conv layer over the last pooling layer", _model(extra_conv=True)),
}
FIG1 = "relu-vs-tanh"


def experiment_config(name: str, base: str = "paper", *layers: dict) -> Config:
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment '{name}' (known: {', '.join([*EXPERIMENTS, FIG1])})")
    config = EXPERIMENTS[name].change(resolve({"variant": base}, *layers))
    return dataclasses.replace(config, variant=f"{base}+{name}")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def settings_hash(config: Config, data: str | os.PathLike) -> str:
    """8 hex digits naming what a config trains on a store (`RUN_ONLY` settings left out)."""
    d = to_dict(config)
    for section, keys in RUN_ONLY.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    d["data_path"] = str(Path(data).resolve())
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _arm_settings(base: str, layers: tuple[dict, ...], data: str | os.PathLike) -> str:
    """The hash shared by every ablation and every seed of one recipe on one store."""
    return settings_hash(resolve({"variant": base}, *layers, {"train": {"seed": 0}}), data)


def _append_row(results: Path, row: dict) -> None:
    """Append the row and rewrite the table under an exclusive lock on results.jsonl: two commands
    that share a results folder (arms split over two processes) each leave a table with every row."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "results.jsonl"  # appended to, never through a link planted there, nor into a FIFO
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        why = {errno.ELOOP: "is a symbolic link, not followed", errno.ENXIO: "is a FIFO, not a regular file"}.get(
            e.errno, f"cannot be written ({e.strerror})")
        raise UserError(f"{path} {why}: the results cannot be recorded there") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file: the results cannot be recorded there")
    with os.fdopen(fd, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when f closes
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
        write_table(results, list(EXPERIMENTS))
    write_json_atomic(results / f"{row['run']}.json", row)


def run_experiment(name: str, data: str | os.PathLike, base: str = "paper", results: str | os.PathLike = "experiments",
                   layers: tuple[dict, ...] = (), device: str = "auto", progress: bool = True, log=print) -> dict:
    """Train (or resume) the named ablation with the seed `layers` give, evaluate it with 1 and 10
    patches, record a table row. A run whose row is already recorded is skipped (its row returned)."""
    config = experiment_config(name, base, *layers, {"train": {"device": device}})
    results = Path(results)
    run = results / "runs" / f"{Path(data).name}-{base}-{name}-{settings_hash(config, data)}"
    done = results / f"{run.name}.json"
    if done.is_file() and (run / "best.pt").is_file():
        row = json.loads(done.read_text())
        log(f"experiment {name}, seed {config.train.seed}: already done ({run}), top-1 error {row['top1_err']:.2%}")
        return row
    resume = (run / "last.pt").exists()
    log(f"experiment {name} ({EXPERIMENTS[name].section}: {EXPERIMENTS[name].what}), seed {config.train.seed}, "
        f"on {data}, base {base} -> {run}")
    start = time.time()
    r = fit(config, data, run, resume=resume, progress=progress)
    if r["history"]:
        plot_curves(r["history"], run / "curves.png", title=run_title(config.variant, Path(data).name, r["history"]))
    if r["status"] == "interrupted":
        raise ExperimentInterrupted(f"experiment {name} interrupted ({r['signal'] or 'Ctrl-C'}); its checkpoint is "
                                    f"saved and no row was written: the same command continues {run}", r["signal"])
    if r["status"] != "finished":
        raise UserError(f"experiment {name} {r['status']} before its last epoch, so no row was written; run the "
                        f"same command again (without --max-steps) to continue {run}")
    one = evaluate([run / "best.pt"], data, "val", 1, device=device, progress=progress)
    ten = evaluate([run / "best.pt"], data, "val", 10, device=device, progress=progress)
    trained = checkpoint_config(load_checkpoint(run / "best.pt"))
    history = load_checkpoint(run / "last.pt")["history"]
    row = {"experiment": name, "section": EXPERIMENTS[name].section, "change": EXPERIMENTS[name].what,
           "base": base, "data": str(Path(data).resolve()), "settings": _arm_settings(base, layers, data),
           "run": run.name, "parameters": count_parameters(AlexNet(trained.model)), "epochs": len(history),
           "seed": config.train.seed, "top1_err": one["top1_err"], "top5_err": one["top5_err"],
           "top1_err_10crop": ten["top1_err"], "top5_err_10crop": ten["top5_err"],
           "train_err": history[-1]["train_top1_err"],
           "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
           "seconds": round(time.time() - start, 1), "date": time.strftime("%Y-%m-%d"), "commit": _commit()}
    _append_row(results, row)
    log(f"{name}, seed {row['seed']}: top-1 error {row['top1_err']:.2%} (10 patches {row['top1_err_10crop']:.2%}), "
        f"top-5 {row['top5_err']:.2%}; table: {results / 'results.md'}")
    return row


def run_arms(names: list[str], data: str | os.PathLike, base: str = "paper", results: str | os.PathLike = "experiments",
             layers: tuple[dict, ...] = (), device: str = "auto", progress: bool = True, log=print,
             seeds: int = EXPERIMENT_SEEDS) -> list[dict]:
    """`run_arm` for each of `names`, seed by seed: every arm's first seed, then every arm's second,
    so that a table cut short (or read while it grows) has every arm in it."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    for name in names:
        experiment_config(name, base, *layers)  # an unknown name or a bad setting fails before any training
    first = resolve({"variant": base}, *layers).train.seed
    return [run_experiment(name, data, base, results, (*layers, {"train": {"seed": first + i}}), device, progress, log)
            for i in range(seeds) for name in names]


def run_arm(name: str, data: str | os.PathLike, base: str = "paper", results: str | os.PathLike = "experiments",
            layers: tuple[dict, ...] = (), device: str = "auto", progress: bool = True, log=print,
            seeds: int = EXPERIMENT_SEEDS) -> list[dict]:
    """The ablation `name` trained `seeds` times, with train.seed = S, S+1, ... (S: the seed `layers`
    give, 0 by default); each seed is its own run, resumed or skipped on its own."""
    return run_arms([name], data, base, results, layers, device, progress, log, seeds)
