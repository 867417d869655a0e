"""The `alexnet` command. The only module that reads sys.argv; each subcommand calls library code."""

from __future__ import annotations

import argparse
import sys
import time

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
    from alexnet.data.demo import make_demo_data

    root = make_demo_data(args.dir, classes=args.classes, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, seed=args.seed)
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images to {root}")


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
    p.set_defaults(func=_cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except UserError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
