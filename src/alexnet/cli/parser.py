"""The `alexnet` command's arguments: one small function per subcommand. The flags of the settings
(train, experiment) are generated from alexnet/config.py (alexnet/cli/flags.py); the code each subcommand
runs is cli.py's `COMMANDS`. Imports no torch, so that `alexnet --help` answers at once."""

from __future__ import annotations

import argparse

from alexnet.config import EXPERIMENT_SEEDS, VARIANTS, VERSION
from alexnet.cli.flags import SettingsParser, add_setting_flags


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                   help="arithmetic of the net: auto (default) is bf16 autocast on CUDA and float32 on the CPU, "
                   "unless ALEXNET_INFERENCE_PRECISION says otherwise; float32 on CUDA is full float32 (TF32 off)")


def _quiet_flag(p: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    p.add_argument("--quiet", action="store_true", help=what)


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .pt file or a run folder")


def _summary_parser(sub) -> None:
    p = sub.add_parser("summary", help="print a variant's layers, sizes and parameters and time a forward pass",
                       description="Print a variant's layers, map sizes and parameter counts, then run a "
                       "forward pass on random input.")
    p.add_argument("--variant", default="paper", metavar="{" + ",".join(VARIANTS) + "}",
                   help="model variant (default: paper)")
    p.add_argument("--classes", type=int, default=0, help="number of classes (default: the variant's, 1000)")
    p.add_argument("--batch", type=int, default=8, help="images in the timed forward pass (default: 8)")
    _device_flag(p)


def _prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="turn an ImageNet-style folder or a class-folder tree into a store (§2)",
                       description="Read SRC/train/<class>/* and SRC/val/<class>/* (or a flat SRC/val/ with a "
                       "labels file), or a plain class-folder tree SRC/<class>/* (--val-fraction of each class held "
                       "out for val, drawn by --seed), resize each image's shorter side to --size, keep the centre "
                       "square, and write the store DST with the training set's mean image and RGB PCA. "
                       "Interrupted runs continue where they stopped when run again.")
    p.add_argument("src", help="ImageNet-style source folder, or SRC/<class>/<images>")
    p.add_argument("dst", help="store folder to write")
    p.add_argument("--size", type=int, default=256, help="side of the stored images (default: 256, §2)")
    p.add_argument("--format", choices=["raw", "jpeg"], default="raw",
                   help="raw uint8 (fastest, ~196 KB an image at 256) or re-encoded JPEG (~10x smaller)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality for --format jpeg (default: 90)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: --threads N or "
                   "OMP_NUM_THREADS when given, else one per core this process may use, busy or not)")
    p.add_argument("--val-labels", help="labels of a flat val/ folder: LOC_val_solution.csv or lines 'FILE LABEL'")
    p.add_argument("--val-fraction", type=float, metavar="F", help="a plain class-folder tree: the share of each "
                   "class's images held out for val (default: 0.1; 0: no val split)")
    p.add_argument("--seed", type=int, default=0, help="the draw of --val-fraction's images (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at DST (once the new one is complete)")
    p.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size (no DCT downscaling)")
    _quiet_flag(p)


def _demo_data_parser(sub) -> None:
    p = sub.add_parser("demo-data", help="generate a small ImageNet-style folder of learnable JPEGs",
                       description="Write DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG: shapes and textures "
                       "in random colours, sizes and aspect ratios, that a small net learns in minutes.")
    p.add_argument("dir", help="folder to write")
    p.add_argument("--classes", type=int, default=10, help="number of classes: 16 distinct shapes and textures "
                   "(more repeat them under new names) (default: 10)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="clutter, occlusion, scale, position and rotation jitter, "
                   "lower contrast: a set the small net errs on (10-30%%), so that ablations differ")
    _quiet_flag(p, "no progress bar")
    p.add_argument("--cifar", action="store_true", help="write 32x32 images in CIFAR-10's python-pickle batches "
                   "instead (for `alexnet experiment relu-vs-tanh` without CIFAR-10)")
    p.add_argument("--digits", action="store_true", help="write real data instead: the 1,797 UCI handwritten "
                   "digits shipped with scikit-learn, upscaled to JPEGs of 40-120 px, 80/20 stratified split by "
                   "--seed (with --cifar: the same split at 32x32); --classes and --*-per-class do not apply")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train on a prepared store (§5)", usage="%(prog)s [--data STORE] [--out RUN | "
                       "--resume RUN | --finetune CHECKPOINT] [--config TOML] [--set SECTION.KEY=VALUE] [SETTINGS]",
                       description="Train a variant on a store with the paper's recipe (§5): SGD with momentum 0.9 "
                       "and weight decay 0.0005 by the paper's update rule, batch 128, lr 0.01 divided by 10 when the "
                       "validation error stops improving. Defaults are the paper's; a TOML --config file, the flags "
                       "and --set section.key=value override them. Under torchrun it trains data-parallel (DDP). "
                       "Ctrl-C saves a checkpoint; --resume RUN continues exactly where the run stopped.")
    p.add_argument("--data", help="store written by `alexnet prepare` (default on --resume: the run's own)")
    p.add_argument("--out", help="run folder for checkpoints, metrics and logs (default: runs/VARIANT)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint "
                   "(its net and data settings cannot change)")
    p.add_argument("--finetune", metavar="CHECKPOINT", help="§6: start from this checkpoint's weights (any class "
                   "count), with a new fc8 for this store's classes")
    p.add_argument("--config", help="TOML file with [model] [data] [optim] [schedule] [train] settings")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--plot", action="store_true", help="write RUN/curves.png at the end")
    _quiet_flag(p)
    add_setting_flags(p)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 error of checkpoints, 1 or 10 patches (§4.1, §6)",
                       description="Evaluate one checkpoint, or average the softmax outputs of several (the "
                       "paper's ensembles), on the centre patch or the ten patches of §4.1.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="a .pt file or a run folder (its best.pt)")
    p.add_argument("--data", help="store (default: the one the first checkpoint was trained on)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10],
                   help="1: centre patch, 10: ten patches (the five unmirrored for a run trained without reflections)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    _device_flag(p)
    _precision_flag(p)
    p.add_argument("--json", help="also write the results, with per-class accuracy, to this JSON file")
    _quiet_flag(p)


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot a run's training curves", description="Write a run's loss, error and "
                       "learning-rate curves from RUN/metrics.jsonl to a PNG.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png)")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on built-in data: generate, prepare, train, evaluate",
                       description="Generate the demo data, prepare it, train the small variant for a few minutes "
                       "on this machine, evaluate it with 1 and 10 patches, and say where everything went.")
    p.add_argument("--dir", default="alexnet-demo", help="folder for everything the demo writes (default: alexnet-demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--hard", action="store_true", help="the harder images of `demo-data --hard` (a new --dir)")
    _device_flag(p)
    _quiet_flag(p, "no progress bars")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="five most probable labels of image files (§6.1)",
                       description="Print the five most probable labels of each image file, after the store's "
                       "resize and the centre patch (or ten patches) as in evaluation.")
    _checkpoint_arg(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...), folders (every image "
                   "file under them) or glob patterns ('photos/**/*.jpg')")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10],
                   help="1: centre patch, 10: ten patches (the five unmirrored for a run trained without reflections)")
    p.add_argument("--top", type=int, default=5, help="labels to show (default: 5)")
    _device_flag(p)
    _precision_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _features_parser(sub) -> None:
    p = sub.add_parser("features", help="last-hidden-layer (fc7) vectors of a whole split (§6.1)",
                       description="Write the fc7 vectors (after ReLU) of every image of a split to a .npy file, "
                       "streamed batch by batch (a JSON file beside it says where they came from). Their width is "
                       "the checkpoint's model.fc_width: " + ", ".join(f"{n} {c.fc_width}" for n, c in VARIANTS.items())
                       + ", an imported Caffe or torchvision net 4096.")
    _checkpoint_arg(p)
    p.add_argument("--data", help="store (default: the checkpoint's)")
    p.add_argument("--split", default="train", help="split (default: train)")
    p.add_argument("--out", required=True, help=".npy file to write")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="of the stored vectors; float32 (default) also computes them in float32 on CUDA")
    _device_flag(p)
    _precision_flag(p)
    _quiet_flag(p)


def _neighbors_parser(sub) -> None:
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
    p.add_argument("--code-sample", type=int, default=50_000, metavar="ROWS",
                   help="database rows the auto-encoder of --codes trains on (default: 50,000)")
    _device_flag(p)
    p.add_argument("--json", help="write the neighbours to this JSON file")
    _quiet_flag(p)


def _figures_parser(sub) -> None:
    p = sub.add_parser("figures", help="Fig. 3 and Fig. 4 and the training curves as PNGs",
                       description="Write kernels.png (Fig. 3), top5.png (Fig. 4 left), neighbours.png (Fig. 4 right) "
                       "and curves.png for a checkpoint and its store.")
    _checkpoint_arg(p)
    p.add_argument("--data", help="store (default: the checkpoint's)")
    p.add_argument("--out", default="figures", help="folder for the PNGs (default: figures)")
    p.add_argument("--train-features", help="features of the train split from `alexnet features` (else computed)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10])
    _device_flag(p)
    _quiet_flag(p)


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="one HTML page about a run: config, curves, per-class errors, figures",
                       description="Write one self-contained HTML page (figures embedded, no server, no internet): "
                       "the run's config, training curves, per-class error table, confusion matrix, top-5 "
                       "examples, nearest neighbours and conv1 kernels, from an evaluation of RUN's best.pt on "
                       "its store's val split. A missing piece (no val split, no epoch yet) is said on the page.")
    p.add_argument("run", help="a run folder (the --out of `alexnet train`)")
    p.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
    p.add_argument("--data", help="store (default: the checkpoint's)")
    p.add_argument("--max-classes", type=int, default=100,
                   help="classes in the confusion matrix at most; beyond, those with the highest error (default: 100)")
    _device_flag(p)
    _quiet_flag(p)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX",
                       description="Write the net, with the mean subtraction inside, as ONNX; with onnxruntime "
                       "installed, check that its outputs match PyTorch's.")
    _checkpoint_arg(p)
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")


def _experiment_parser(sub) -> None:
    p = sub.add_parser("experiment", help="run one of the paper's experiments (ablations, Fig. 1)",
                       usage="%(prog)s [NAME ...] [--data STORE] [--base VARIANT] [--results DIR] [--cifar DIR] "
                       "[--set SECTION.KEY=VALUE] [SETTINGS]",
                       description="Train and evaluate a named ablation of the paper's net with the paper's recipe "
                       "and add a row to RESULTS/results.md (comparable across runs), or run Fig. 1 (relu-vs-tanh) "
                       "on CIFAR-10. NAME 'all' runs every ablation; no NAME lists them.")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiment(s) to run")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.add_argument("--data", help="store for the ablations")
    p.add_argument("--base", default="paper", metavar="{" + ",".join(VARIANTS) + "}",
                   help="variant the ablation changes (default: paper)")
    p.add_argument("--results", default="experiments", help="folder for runs and the results table (default: experiments)")
    p.add_argument("--seeds", type=int, default=EXPERIMENT_SEEDS,
                   help=f"runs of each experiment, seeds S..S+N-1 with S = --seed (default: {EXPERIMENT_SEEDS})")
    p.add_argument("--cifar", help="CIFAR-10 python-batches folder, for relu-vs-tanh")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1],
                   help="relu-vs-tanh: learning rates tried for each nonlinearity")
    p.add_argument("--trial-epochs", type=int, default=2, help="relu-vs-tanh: epochs of each learning-rate trial")
    p.add_argument("--max-epochs", type=int, default=60, help="relu-vs-tanh: epochs at most to reach 25%% training error")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    _quiet_flag(p)
    add_setting_flags(p, variant=False)  # the ablation's net is --base's


def _import_parser(sub) -> None:
    p = sub.add_parser("import", help="turn public ImageNet weights (Caffe, torchvision) into a checkpoint",
                       description="Write an ordinary checkpoint of this project from Caffe's bvlc_alexnet "
                       "(deploy.prototxt + .caffemodel, read without Caffe) or torchvision's alexnet state dict; "
                       "its net computes what the source computes on the same pixels (docs/pretrained.md).")
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


SUBCOMMANDS = {"summary": _summary_parser, "prepare": _prepare_parser, "demo-data": _demo_data_parser,
               "train": _train_parser, "eval": _eval_parser, "plot": _plot_parser, "demo": _demo_parser,
               "predict": _predict_parser, "features": _features_parser, "neighbors": _neighbors_parser,
               "neighbours": _neighbors_parser, "figures": _figures_parser, "report": _report_parser,
               "export": _export_parser, "experiment": _experiment_parser, "import": _import_parser}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` only that subcommand's (every command starts 20-25 ms sooner
    than by building all of them, the setting flags of train and experiment most)."""
    parser = SettingsParser(  # its subcommands' parsers too: `--data.flip false` (alexnet/cli/flags.py)
        prog="alexnet",
        description="Krizhevsky, Sutskever & Hinton (2012): prepare ImageNet-style data, train and "
        "evaluate the paper's network, and look at what it learned.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {VERSION}")
    parser.add_argument("--threads", type=int, metavar="N", help="compute threads (default: one per core this "
                        "process may use that other processes leave free, all of them when others keep every "
                        "core busy; or ALEXNET_THREADS / OMP_NUM_THREADS)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in ([SUBCOMMANDS[command]] if command in SUBCOMMANDS else dict.fromkeys(SUBCOMMANDS.values())):
        add(sub)
    return parser
