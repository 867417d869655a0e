"""The `alexnet` command. The only module that reads sys.argv; each subcommand calls library code."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from alexnet import __version__
from alexnet.errors import UserError


def _cmd_summary(args: argparse.Namespace) -> None:
    import torch

    from alexnet.model import count_parameters, create_model, multiply_adds
    from alexnet.runtime import keep_freed_memory, resolve_device

    keep_freed_memory()
    model = create_model(args.variant, **({"num_classes": args.classes} if args.classes else {}))
    device = resolve_device(args.device)
    model.eval().to(device)
    c = model.config
    print(f"variant {args.variant}: {count_parameters(model):,} parameters, "
          f"{multiply_adds(model) / 1e6:,.0f} M multiply-adds per {c.input_size}x{c.input_size} image")
    print(f"{'layer':<8}{'output':>20}{'parameters':>14}")
    x = torch.zeros(1, 3, c.input_size, c.input_size, device=device)
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in model.named_children()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name, module in model.named_children():
        if name in shapes:
            params = sum(p.numel() for p in module.parameters())
            print(f"{name:<8}{'x'.join(map(str, shapes[name])):>20}{params:>14,}")
    batch = torch.randn(args.batch, 3, c.input_size, c.input_size, device=device) * 50
    with torch.no_grad():
        model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    print(f"forward pass of {args.batch} random images on {device}: logits {tuple(logits.shape)}, "
          f"{seconds * 1000:.0f} ms ({args.batch / seconds:,.0f} images/s)")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from alexnet.data.prepare import prepare

    try:
        report = prepare(args.src, args.dst, size=args.size, fmt=args.format, quality=args.quality,
                         workers=args.workers, val_labels=args.val_labels, overwrite=args.overwrite,
                         draft=not args.no_draft, progress=not args.quiet)
    except KeyboardInterrupt as e:
        raise UserError(str(e) or "interrupted") from None
    print_prepare_report(report)


def print_prepare_report(report) -> None:
    for path, why in report.skipped:
        print(f"skipped   {path}: {why}")
    for path, note in report.converted:
        print(f"converted {path}: {note}")
    for w in report.warnings:
        print(f"warning   {w}")
    counts = ", ".join(f"{n} {split}" for split, n in report.counts.items())
    print(f"wrote {report.dst}: {counts} images in {report.seconds:.1f} s; "
          f"{len(report.skipped)} skipped, {len(report.converted)} converted (listed in {report.dst}/prepare.log)")


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from alexnet.data.demo import make_demo_cifar, make_demo_data

    if args.cifar:
        root = make_demo_cifar(args.dir, train_per_class=args.train_per_class, test_per_class=args.val_per_class,
                               seed=args.seed)
        print(f"wrote the demo classes at 32x32 in CIFAR-10's python format ({args.train_per_class} train + "
              f"{args.val_per_class} test per class) to {root}")
        return

    root = make_demo_data(args.dir, classes=args.classes, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, seed=args.seed)
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images to {root}")


# ---------------------------------------------------------------------------------------------------
# train / eval / plot / demo
# ---------------------------------------------------------------------------------------------------

# flag -> (section.key, type); applied only when given, so --resume keeps the run's own settings.
TRAIN_FLAGS = {
    "variant": ("variant", str),
    "epochs": ("train.epochs", int),
    "batch_size": ("train.batch_size", int),
    "lr": ("optim.lr", float),
    "crop_size": ("model.input_size", int),
    "workers": ("data.workers", int),
    "device": ("train.device", str),
    "seed": ("train.seed", int),
    "amp": ("train.amp", str),
    "channels_last": ("train.channels_last", str),
    "schedule": ("schedule.kind", str),
    "patience": ("schedule.patience", int),
    "eval_crops": ("train.eval_crops", int),
    "checkpoint_every": ("train.checkpoint_every", int),
    "max_steps": ("train.max_steps", int),
    "model_parallel": ("train.model_parallel", int),
    "devices": ("train.devices", str),
}


def train_overrides(args: argparse.Namespace) -> dict:
    from alexnet.config import parse_overrides

    items = [f"{key}={getattr(args, flag)}" for flag, (key, _) in TRAIN_FLAGS.items() if getattr(args, flag) is not None]
    if args.compile:
        items.append("train.compile=true")
    return parse_overrides(items + list(args.set or []))


def _cmd_train(args: argparse.Namespace) -> None:
    from alexnet.config import apply, load_toml, resolve
    from alexnet.train import fit

    overrides = train_overrides(args)
    if args.resume:
        from alexnet.checkpoint import checkpoint_config, load_checkpoint

        if args.config or args.finetune:
            raise UserError("--config and --finetune cannot change a resumed run; give single settings with --set")
        config = apply(checkpoint_config(load_checkpoint(Path(args.resume) / "last.pt")), overrides)
        out = args.resume
    elif args.finetune:
        from alexnet.checkpoint import checkpoint_config, load_checkpoint

        base = checkpoint_config(load_checkpoint(args.finetune))  # the pretrained net's architecture
        layers = [load_toml(args.config)] if args.config else []
        config = apply(dataclasses.replace(resolve(*layers), variant=base.variant, model=base.model), overrides)
        out = args.out or f"runs/{config.variant}-finetuned"
    else:
        layers = [load_toml(args.config)] if args.config else []
        config = resolve(*layers, overrides)
        out = args.out or f"runs/{config.variant}"
    result = fit(config, args.data, out, resume=bool(args.resume), progress=not args.quiet, plot=args.plot,
                 finetune=args.finetune)
    if result["rank"] == 0:
        last = result["last"]
        summary = f"{result['status']}: {result['epochs']} epoch(s) in {result['out']}"
        if "val_top1_err" in last:
            summary += f"; last val top-1 error {last['val_top1_err']:.1%}, top-5 {last['val_top5_err']:.1%}"
        print(summary)


def _cmd_eval(args: argparse.Namespace) -> None:
    import json

    from alexnet.evaluate import evaluate

    result = evaluate(args.checkpoints, args.data, args.split, args.crops, args.batch_size, args.device,
                      progress=not args.quiet)
    print_eval(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def print_eval(result: dict) -> None:
    views = "centre patch" if result["crops"] == 1 else "average of 10 patches"
    if len(result["models"]) > 1:
        for m in result["models"]:
            print(f"  {m['checkpoint']}: top-1 error {m['top1_err']:.2%}, top-5 error {m['top5_err']:.2%}")
    which = "ensemble of %d" % len(result["models"]) if len(result["models"]) > 1 else result["checkpoints"][0]
    print(f"{which} on {result['split']} ({result['n']} images, {views}): "
          f"top-1 error {result['top1_err']:.2%}, top-5 error {result['top5_err']:.2%}")


def _cmd_plot(args: argparse.Namespace) -> None:
    import json

    from alexnet.analysis.figures import plot_curves

    run = Path(args.run)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{metrics} does not exist (is {run} a training run folder?)")
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not history:
        raise UserError(f"{metrics} has no finished epoch yet")
    out = plot_curves(history, args.out or run / "curves.png", title=run.name)
    print(f"wrote {out}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from alexnet.demo import run_demo

    run_demo(args.dir, epochs=args.epochs, device=args.device, progress=not args.quiet)


# ---------------------------------------------------------------------------------------------------
# predict / features / neighbors / figures / export (§6.1)
# ---------------------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from alexnet.predict import predict_files

    results = predict_files(args.checkpoint, args.images, args.crops, args.device, args.top)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                continue
            print(r["file"])
            for t in r["top"]:
                print(f"  {t['probability']:6.1%}  {t['name']} ({t['wnid']})")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"alexnet predict: cannot read {r['file']}: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def _cmd_features(args: argparse.Namespace) -> None:
    from alexnet.analysis.features import extract_features
    from alexnet.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from alexnet.data import ImageStore
    from alexnet.runtime import keep_freed_memory, resolve_device

    keep_freed_memory()
    payload = load_checkpoint(args.checkpoint)
    data = args.data or payload.get("data")
    if not data:
        raise UserError("give the store with --data")
    store = ImageStore(data, args.split)
    out = extract_features(model_from_checkpoint(payload), store, args.out, resolve_device(args.device),
                           args.batch_size, args.dtype, checkpoint_config(payload).data, progress=not args.quiet,
                           meta={"checkpoint": payload["path"]})
    print(f"wrote {out}: {len(store)} x {payload['config']['model']['fc_width']} {args.dtype} ({args.split} split of {data})")


def _cmd_neighbors(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from alexnet.analysis.features import load_features
    from alexnet.analysis.neighbours import (hamming_neighbours, label_precision, nearest_neighbours,
                                             train_binary_coder)
    from alexnet.runtime import resolve_device

    database, db_meta = load_features(args.database)
    queries, q_meta = load_features(args.queries)
    if queries.shape[1] != database.shape[1]:
        raise UserError(f"queries have {queries.shape[1]} features, the database {database.shape[1]}")
    if args.query_index:
        rows = np.asarray(args.query_index)
        if rows.max() >= len(queries) or rows.min() < 0:
            raise UserError(f"--query-index must lie within 0..{len(queries) - 1}")
    else:
        rows = np.arange(min(args.num_queries, len(queries)))
    device = resolve_device(args.device)
    q = np.asarray(queries[rows], dtype=np.float32)
    if args.codes:
        coder = train_binary_coder(database, bits=args.codes, device=device)
        dist, idx = hamming_neighbours(coder.encode(q, device=device), coder.encode(database, device=device), args.k)
        how = f"Hamming distance between {args.codes}-bit auto-encoder codes"
    else:
        dist, idx = nearest_neighbours(q, database, args.k, device, progress=not args.quiet)
        how = "Euclidean distance of the fc7 vectors (§6.1)"
    stores = {}
    for name, meta in (("db", db_meta), ("q", q_meta)):
        if meta.get("data") and meta.get("split"):
            from alexnet.data import ImageStore

            try:
                stores[name] = ImageStore(meta["data"], meta["split"])
            except UserError:
                pass
    result = []
    for r, d, i in zip(rows, dist, idx):
        entry = {"query": int(r), "neighbours": [int(j) for j in i], "distances": [float(x) for x in d]}
        if "q" in stores:
            entry.update(file=stores["q"].files[r], label=int(stores["q"].labels[r]))
        if "db" in stores:
            entry["neighbour_files"] = [stores["db"].files[j] for j in i]
            entry["neighbour_labels"] = [int(stores["db"].labels[j]) for j in i]
        result.append(entry)
    print(f"{len(rows)} queries, {args.k} nearest of {len(database)} by {how}:")
    for e in result:
        print(f"query {e['query']}" + (f" ({e['file']})" if "file" in e else "") + ": " +
              ", ".join(f"{j} ({x:.3g})" for j, x in zip(e["neighbours"], e["distances"])))
    if "q" in stores and "db" in stores:
        p = label_precision(np.array([e["neighbour_labels"] for e in result]), [e["label"] for e in result])
        print(f"neighbours with the query's label: {p:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def _cmd_figures(args: argparse.Namespace) -> None:
    from alexnet.analysis.report import write_figures
    from alexnet.runtime import keep_freed_memory

    keep_freed_memory()
    paths = write_figures(args.checkpoint, args.data, args.out, args.device, args.crops,
                          train_features=args.train_features, progress=not args.quiet)
    for path in paths.values():
        print(f"wrote {path}")


def _cmd_export(args: argparse.Namespace) -> None:
    from alexnet.export import export_onnx

    r = export_onnx(args.checkpoint, args.onnx, verify=not args.no_verify)
    print(f"wrote {r['onnx']}: input 'image' (batch, 3, {r['input'][2]}, {r['input'][3]}) RGB 0..255, output 'logits'")
    if r["max_abs_diff"] is not None:
        print(f"onnxruntime vs PyTorch on 5 random images: largest difference {r['max_abs_diff']:.2e} "
              f"(largest logit {r['max_abs_logit']:.3g})")
    elif not args.no_verify:
        print("onnxruntime is not installed: not checked (pip install onnxruntime)")


def _cmd_experiment(args: argparse.Namespace) -> None:
    from alexnet.experiments import EXPERIMENTS, FIG1, run_experiment

    if args.list or not args.names:
        for name, e in EXPERIMENTS.items():
            print(f"{name:<14} {e.section:<7} {e.what}")
        print(f"{FIG1:<14} §3.1    Fig. 1: ReLU vs tanh, four-layer net on CIFAR-10 (needs --cifar)")
        return
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    for name in names:
        if name == FIG1:
            from alexnet.cifar import relu_vs_tanh

            if not args.cifar:
                raise UserError(f"{FIG1} trains on CIFAR-10: give its python-batches folder with --cifar")
            out = Path(args.results) / FIG1
            r = relu_vs_tanh(args.cifar, out, lrs=tuple(args.lrs), trial_epochs=args.trial_epochs,
                             max_epochs=args.max_epochs, device=args.device or "auto")
            it = {k: v["iterations_to_target"] for k, v in r["runs"].items()}
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a (a net did not reach the target)"
            print(f"iterations to {r['target']:.0%} training error: ReLU {it['relu']}, tanh {it['tanh']}; "
                  f"tanh/ReLU {ratio}; wrote {out / 'fig1.png'} and {out / 'fig1.json'}")
            continue
        if not args.data:
            raise UserError(f"experiment {name} trains on a store: give it with --data")
        overrides = train_overrides(args)
        run_experiment(name, args.data, args.base, args.results, (overrides,), args.device or "auto",
                       progress=not args.quiet)


# ---------------------------------------------------------------------------------------------------
# import: the public ImageNet weights as a checkpoint (alexnet.pretrained, docs/pretrained.md)
# ---------------------------------------------------------------------------------------------------


def _cmd_import(args: argparse.Namespace) -> None:
    from alexnet.pretrained import write_checkpoint

    if args.source == "caffe":
        from alexnet.pretrained.caffe import import_caffe

        payload, notes = import_caffe(args.prototxt, args.weights, args.mean, args.synsets)
    else:
        from alexnet.pretrained.torchvision import import_torchvision

        payload, notes = import_torchvision(args.weights, args.synsets)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(payload, args.out)
    for note in notes:
        print(f"note: {note}")
    m = payload["config"]["model"]
    print(f"wrote {args.out}: {payload['source']['format']} AlexNet, {m['input_size']}x{m['input_size']} centre "
          f"patch of images resized to {payload['image_size']}, {len(payload['classes'])} classes")


def add_import_parser(sub) -> None:
    p = sub.add_parser("import", help="turn public ImageNet weights (Caffe, torchvision) into a checkpoint",
                       description="Write an ordinary checkpoint of this project from Caffe's bvlc_alexnet "
                       "(deploy.prototxt + .caffemodel, read without Caffe) or torchvision's alexnet state dict; "
                       "its net computes what the source computes on the same pixels.")
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    c = kinds.add_parser("caffe", help="Caffe's bvlc_alexnet: the paper's two-tower net")
    c.add_argument("--prototxt", required=True, help="deploy.prototxt (the layers and their parameters)")
    c.add_argument("--weights", required=True, help="bvlc_alexnet.caffemodel (binary NetParameter)")
    c.add_argument("--mean", help="imagenet_mean.binaryproto (default: Caffe's per-channel mean 104, 117, 123 BGR)")
    t = kinds.add_parser("torchvision", help="torchvision's alexnet-owt-*.pth: the 2014 single-tower net")
    t.add_argument("weights", help="the state dict (read with torch.load(weights_only=True))")
    for q in (c, t):
        q.add_argument("--synsets", help="synset_words.txt for other class names (default: the packaged list)")
        q.add_argument("--out", required=True, help="checkpoint (.pt) to write")
    p.set_defaults(func=_cmd_import)


def build_parser() -> argparse.ArgumentParser:
    from alexnet.model import VARIANTS

    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="Krizhevsky, Sutskever & Hinton (2012): prepare ImageNet-style data, train and "
        "evaluate the paper's network, and look at what it learned.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("summary", help="print a variant's layers, sizes and parameters and time a forward pass",
                       description="Print a variant's layers, map sizes and parameter counts, then run a "
                       "forward pass on random input.")
    p.add_argument("--variant", default="paper", choices=sorted(VARIANTS), help="model variant (default: paper)")
    p.add_argument("--classes", type=int, default=0, help="number of classes (default: the variant's, 1000)")
    p.add_argument("--batch", type=int, default=8, help="images in the timed forward pass (default: 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("prepare", help="turn an ImageNet-style folder into a store (§2)",
                       description="Read SRC/train/<class>/* and SRC/val/<class>/* (or a flat SRC/val/ with a "
                       "labels file), resize each image's shorter side to --size, keep the centre square, and "
                       "write the store DST with the training set's mean image and RGB PCA. Interrupted runs "
                       "continue where they stopped when run again.")
    p.add_argument("src", help="ImageNet-style source folder")
    p.add_argument("dst", help="store folder to write")
    p.add_argument("--size", type=int, default=256, help="side of the stored images (default: 256, §2)")
    p.add_argument("--format", choices=["raw", "jpeg"], default="raw",
                   help="raw uint8 (fastest, ~196 KB an image at 256) or re-encoded JPEG (~10x smaller)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality for --format jpeg (default: 90)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: all cores)")
    p.add_argument("--val-labels", help="labels of a flat val/ folder: LOC_val_solution.csv or lines 'FILE LABEL'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at DST (once the new one is complete)")
    p.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size (no DCT downscaling)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("demo-data", help="generate a small ImageNet-style folder of learnable JPEGs",
                       description="Write DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG: shapes and textures "
                       "in random colours, sizes and aspect ratios, that a small net learns in minutes.")
    p.add_argument("dir", help="folder to write")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar", action="store_true", help="write 32x32 images in CIFAR-10's python-pickle batches "
                   "instead (for `alexnet experiment relu-vs-tanh` without CIFAR-10)")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("train", help="train on a prepared store (§5)",
                       description="Train a variant on a store with the paper's recipe (§5): SGD with momentum 0.9 "
                       "and weight decay 0.0005 by the paper's update rule, batch 128, lr 0.01 divided by 10 when the "
                       "validation error stops improving. Defaults are the paper's; a TOML --config file, the flags "
                       "and --set section.key=value override them. Under torchrun it trains data-parallel (DDP). "
                       "Ctrl-C saves a checkpoint; --resume RUN continues exactly where the run stopped.")
    p.add_argument("--data", help="store written by `alexnet prepare` (default on --resume: the run's own)")
    p.add_argument("--out", help="run folder for checkpoints, metrics and logs (default: runs/VARIANT)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint")
    p.add_argument("--finetune", metavar="CHECKPOINT", help="§6: start from this checkpoint's weights (any class "
                   "count), with a new fc8 for this store's classes")
    p.add_argument("--config", help="TOML file with [model] [data] [optim] [schedule] [train] settings")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--variant", choices=sorted(VARIANTS), help="model variant (default: paper)")
    p.add_argument("--epochs", type=int, help="epochs (default: 90, §5)")
    p.add_argument("--batch-size", type=int, help="global batch size, split across processes (default: 128, §5)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: 0.01, §5)")
    p.add_argument("--crop-size", type=int, help="training patch side = the net's input (default: the variant's, 224)")
    p.add_argument("--workers", type=int, help="loader threads (default: 2 for a raw store, all cores for jpeg)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--seed", type=int, help="seed for init, data order and augmentation (default: 0)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on CUDA only)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], help="channels_last memory (auto: on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--schedule", choices=["plateau", "step"], help="lr schedule (default: plateau, §5)")
    p.add_argument("--patience", type=int, help="epochs without improvement before the lr is divided by 10")
    p.add_argument("--eval-crops", type=int, choices=[1, 10], help="validation views (default: 1, the centre)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: epoch ends only)")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after N optimizer steps in all")
    p.add_argument("--model-parallel", type=int, choices=[1, 2], help="§3.2: 2 puts one tower on each of two devices")
    p.add_argument("--devices", help="the two devices for --model-parallel 2 (default: cuda:0,cuda:1)")
    p.add_argument("--plot", action="store_true", help="write RUN/curves.png at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 error of checkpoints, 1 or 10 patches (§4.1, §6)",
                       description="Evaluate one checkpoint, or average the softmax outputs of several (the "
                       "paper's ensembles), on the centre patch or the ten patches of §4.1.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="a .pt file or a run folder (its best.pt)")
    p.add_argument("--data", help="store (default: the one the first checkpoint was trained on)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10], help="1: centre patch, 10: ten patches")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", help="also write the results, with per-class accuracy, to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plot", help="plot a run's training curves", description="Write a run's loss, error and "
                       "learning-rate curves from RUN/metrics.jsonl to a PNG.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("demo", help="the main job on built-in data: generate, prepare, train, evaluate",
                       description="Generate the demo data, prepare it, train the small variant for a few minutes "
                       "on this machine, evaluate it with 1 and 10 patches, and say where everything went.")
    p.add_argument("--dir", default="alexnet-demo", help="folder for everything the demo writes (default: alexnet-demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("predict", help="five most probable labels of image files (§6.1)",
                       description="Print the five most probable labels of each image file, after the store's "
                       "resize and the centre patch (or ten patches) as in evaluation.")
    p.add_argument("checkpoint", help="a .pt file or a run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10], help="1: centre patch, 10: ten patches")
    p.add_argument("--top", type=int, default=5, help="labels to show (default: 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("features", help="last-hidden-layer (fc7) vectors of a whole split (§6.1)",
                       description="Write the 4096-d fc7 vectors (after ReLU) of every image of a split to a .npy "
                       "file, streamed batch by batch (a JSON file beside it says where they came from).")
    p.add_argument("checkpoint", help="a .pt file or a run folder")
    p.add_argument("--data", help="store (default: the checkpoint's)")
    p.add_argument("--split", default="train", help="split (default: train)")
    p.add_argument("--out", required=True, help=".npy file to write")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("neighbors", aliases=["neighbours"], help="nearest training images in fc7 space (§6.1)",
                       description="For query rows of a feature file, find the k nearest rows of a database feature "
                       "file by Euclidean distance (exact, chunked matrix products; GPU when there is one), or by "
                       "Hamming distance between short binary codes of an auto-encoder (--codes BITS).")
    p.add_argument("--database", required=True, help="features of the images to search (e.g. the train split)")
    p.add_argument("--queries", required=True, help="features of the query images (e.g. the val split)")
    p.add_argument("--query-index", type=int, nargs="+", help="query rows (default: the first --num-queries)")
    p.add_argument("--num-queries", type=int, default=5)
    p.add_argument("-k", type=int, default=6, help="neighbours per query (default: 6, as Fig. 4)")
    p.add_argument("--codes", type=int, metavar="BITS", help="search binary auto-encoder codes of this many bits")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the neighbours to this JSON file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_neighbors)

    p = sub.add_parser("figures", help="Fig. 3 and Fig. 4 and the training curves as PNGs",
                       description="Write kernels.png (Fig. 3), top5.png (Fig. 4 left), neighbours.png (Fig. 4 right) "
                       "and curves.png for a checkpoint and its store.")
    p.add_argument("checkpoint", help="a .pt file or a run folder")
    p.add_argument("--data", help="store (default: the checkpoint's)")
    p.add_argument("--out", default="figures", help="folder for the PNGs (default: figures)")
    p.add_argument("--train-features", help="features of the train split from `alexnet features` (else computed)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10])
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("export", help="export a checkpoint to ONNX",
                       description="Write the net, with the mean subtraction inside, as ONNX; with onnxruntime "
                       "installed, check that its outputs match PyTorch's.")
    p.add_argument("checkpoint", help="a .pt file or a run folder")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("experiment", help="run one of the paper's experiments (ablations, Fig. 1)",
                       description="Train and evaluate a named ablation of the paper's net with the paper's recipe "
                       "and add a row to RESULTS/results.md (comparable across runs), or run Fig. 1 (relu-vs-tanh) "
                       "on CIFAR-10. NAME 'all' runs every ablation; no NAME lists them.")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiment(s) to run")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.add_argument("--data", help="store for the ablations")
    p.add_argument("--base", default="paper", choices=sorted(VARIANTS), help="variant the ablation changes (default: paper)")
    p.add_argument("--results", default="experiments", help="folder for runs and the results table (default: experiments)")
    p.add_argument("--cifar", help="CIFAR-10 python-batches folder, for relu-vs-tanh")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1],
                   help="relu-vs-tanh: learning rates tried for each nonlinearity")
    p.add_argument("--trial-epochs", type=int, default=2, help="relu-vs-tanh: epochs of each learning-rate trial")
    p.add_argument("--max-epochs", type=int, default=60, help="relu-vs-tanh: epochs at most to reach 25%% training error")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    for flag in ("epochs", "batch-size", "lr", "seed", "workers"):
        p.add_argument(f"--{flag}", type=float if flag == "lr" else int)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_experiment, compile=False, **{k: None for k in TRAIN_FLAGS if k not in
                   ("epochs", "batch_size", "lr", "seed", "workers", "device")})
    add_import_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = args.func(args)
    except UserError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
