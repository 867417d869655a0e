"""`alexnet demo`: the whole system on built-in data, in a few minutes on a CPU.

Generates the demo images (alexnet/data/demo_images.py), prepares them into a store at 72x72, trains the
`small` variant with the paper's recipe on 64x64 patches, evaluates it on the centre patch and on the
ten patches, and says where everything went. Each stage is skipped when its output already exists, so
running it again is cheap (and an interrupted training resumes).
"""

from __future__ import annotations

import os
from pathlib import Path

from alexnet.report.curves import plot_curves, run_title
from alexnet.report.page import write_run_report
from alexnet.report.paper import write_figures
from alexnet.model.checkpoint import load_checkpoint
from alexnet.config import resolve
from alexnet.data.demo_images import make_demo_data
from alexnet.data.prepare import prepare
from alexnet.evaluate.error_rates import evaluate
from alexnet.files import write_json_atomic
from alexnet.train.run import fit

DEMO_SIZE = 72  # store side: 64x64 patches of 72x72 images, as 224 of 256 (the ratio is 0.89 vs 0.875)
DEMO_EPOCHS = 40
DEMO_CLASSES = 10
DEMO_TRAIN_PER_CLASS = 260
DEMO_VAL_PER_CLASS = 50


def run_demo(root: str | os.PathLike = "alexnet-demo", epochs: int | None = None, device: str = "auto",
             progress: bool = True, classes: int = DEMO_CLASSES, train_per_class: int = DEMO_TRAIN_PER_CLASS,
             val_per_class: int = DEMO_VAL_PER_CLASS, overrides: dict | None = None, echo=print,
             hard: bool = False) -> dict:
    """Every stage of the demo into `root`; `hard`: the images of `demo-data --hard` (clutter, occlusion)."""
    root = Path(root)
    src, store, run = root / "images", root / "store", root / "run"
    epochs = epochs or DEMO_EPOCHS
    echo(f"== 1/6 demo images -> {src}")
    if not (src / "LOC_synset_mapping.txt").exists():
        make_demo_data(src, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                       progress=progress, hard=hard)
        echo(f"wrote {classes} classes x ({train_per_class} train + {val_per_class} val) JPEGs of mixed sizes")
    else:
        echo("already there")
    echo(f"== 2/6 prepare (§2: shorter side to {DEMO_SIZE}, centre crop, mean image, RGB PCA) -> {store}")
    if not (store / "meta.json").exists():
        report = prepare(src, store, size=DEMO_SIZE, progress=progress, log=echo)
        for path, note in report.converted:
            echo(f"converted {path}: {note}")
        echo(f"wrote {report.counts['train']} train and {report.counts.get('val', 0)} val images "
             f"in {report.seconds:.1f} s")
    else:
        echo("already there")
    config = resolve({"variant": "small", "train": {"epochs": epochs, "device": device}}, overrides or {})
    o, t = config.optim, config.train
    echo(f"== 3/6 train the small variant (§5 recipe: SGD momentum {o.momentum:g}, weight decay {o.weight_decay:g}, "
         f"lr {o.lr:g} /10 on plateau; small's batch {t.batch_size}, patience {config.schedule.patience}) -> {run}")
    last = run / "last.pt"
    if last.exists() and load_checkpoint(last)["epoch"] >= epochs:
        echo("already trained")
    else:
        result = fit(config, store, run, resume=last.exists(), progress=progress)
        if result["history"]:
            plot_curves(result["history"], run / "curves.png", title=run_title(config.variant, store.name, result["history"]))
        if result["status"] != "finished":
            echo(f"training {result['status']}; run `alexnet demo` again to continue")
            return {"status": result["status"], "signal": result["signal"]}
    echo("== 4/6 evaluate on the validation images (§4.1: centre patch, then the average of ten patches)")
    results = {}
    for views in (1, 10):
        r = evaluate([run / "best.pt"], store, "val", views, device=device, progress=progress)
        write_json_atomic(run / f"eval_{views}crop.json", r)
        results[views] = r
        label = "centre patch" if views == 1 else f"{r['patches']} patches"
        echo(f"{label}: top-1 error {r['top1_err']:.1%}, top-5 error {r['top5_err']:.1%} on {r['n']} images "
             f"(chance: {1 - 1 / len(r['per_class']):.0%} top-1)")
    echo("== 5/6 figures (§6.1: Fig. 3 kernels, Fig. 4 top-5 labels and nearest neighbours, training curves)")
    figures = write_figures(run / "best.pt", store, root / "figures", device=device, progress=progress)
    echo("== 6/6 run report (one HTML page: config, curves, per-class errors, confusion matrix, figures)")
    report = write_run_report(run, data=store, device=device, progress=progress)
    outputs = {"images": src, "store": store, "run": run, "checkpoint": run / "best.pt",
               "metrics": run / "metrics.jsonl", "evaluation": run / "eval_1crop.json",
               **{f"figure {k}": v for k, v in figures.items()}, "report": report}
    echo("== done. Where everything went:")
    for name, path in outputs.items():
        echo(f"  {name:<18} {path}")
    echo(f"open the report in a browser: {report.resolve().as_uri()}")
    return {"status": "finished", "top1_err": results[1]["top1_err"], "top1_err_10crop": results[10]["top1_err"],
            "outputs": {k: str(v) for k, v in outputs.items()}}
