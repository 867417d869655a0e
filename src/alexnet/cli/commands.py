"""The `alexnet` command. The only module that reads sys.argv; each subcommand calls library code."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from alexnet.cli.parser import build_parser
from alexnet.errors import UserError, printable
from alexnet.cli.flags import setting_overrides


def _cmd_summary(args: argparse.Namespace) -> None:
    import torch

    from alexnet.config import resolve
    from alexnet.model import AlexNet, count_parameters, multiply_adds
    from alexnet.runtime import resolve_device

    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: must be >= 1")
    config = resolve({"variant": args.variant, **({"model": {"num_classes": args.classes}} if args.classes else {})})
    model = AlexNet(config.model)
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


def _prepare_workers(args: argparse.Namespace) -> int:
    """The thread count the user fixed, else every usable core even on a busy machine: independent
    worker processes, unlike threads at a barrier, each keep their share of it (beside one CPU hog on
    2 cores, 2 workers prepared in 1.90 s where 1 took 2.30 s: bench/threads.py)."""
    from alexnet.machine import usable_cores

    return args.threads if args.threads_fixed else usable_cores()


def _cmd_prepare(args: argparse.Namespace) -> int:
    import signal

    from alexnet.data.prepare import prepare

    terminated = []

    def on_sigterm(signum, frame):  # like Ctrl-C: prepare saves its progress on the way out
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        report = prepare(args.src, args.dst, size=args.size, fmt=args.format, quality=args.quality,
                         workers=args.workers or _prepare_workers(args),
                         val_labels=args.val_labels, overwrite=args.overwrite,
                         draft=not args.no_draft, progress=not args.quiet, val_fraction=args.val_fraction,
                         seed=args.seed)
    except KeyboardInterrupt as e:
        why = str(e) or "run the same command again to continue"
        print(f"alexnet prepare: {'terminated' if terminated else 'interrupted'}: {why}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_prepare_report(report)
    return 0


def print_prepare_report(report) -> None:
    for path, why in report.skipped:
        print(f"skipped   {printable(path)}: {why}")
    for path, note in report.converted:
        print(f"converted {printable(path)}: {note}")
    for w in report.warnings:
        print(f"warning   {printable(w)}")
    counts = ", ".join(f"{n} {split}" for split, n in report.counts.items())
    print(f"wrote {printable(report.dst)}: {counts} images in {report.seconds:.1f} s; {len(report.skipped)} skipped, "
          f"{len(report.converted)} converted (listed in {printable(report.dst)}/prepare.log)")


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from alexnet.data.demo_images import make_demo_cifar, make_demo_data

    if args.digits:
        from alexnet.data.digits import make_digits_cifar, make_digits_tree

        root = (make_digits_cifar if args.cifar else make_digits_tree)(args.dir, seed=args.seed)
        form = "at 32x32 in CIFAR-10's python format" if args.cifar else "as JPEGs"
        print(f"wrote the 1,797 UCI digits (80% train, 20% val, split by seed {args.seed}) {form} to {root}")
        return
    if args.cifar:
        root = make_demo_cifar(args.dir, train_per_class=args.train_per_class, test_per_class=args.val_per_class,
                               seed=args.seed, classes=args.classes, hard=args.hard, progress=not args.quiet)
        print(f"wrote the demo classes at 32x32 in CIFAR-10's python format ({args.train_per_class} train + "
              f"{args.val_per_class} test per class) to {root}")
        return

    root = make_demo_data(args.dir, classes=args.classes, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, seed=args.seed, hard=args.hard, progress=not args.quiet)
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images to {root}")


# ---------------------------------------------------------------------------------------------------
# train / eval / plot / demo
# ---------------------------------------------------------------------------------------------------

def train_overrides(args: argparse.Namespace) -> dict:
    """The settings given as flags and with --set, for `config.resolve` (alexnet/cli/flags.py)."""
    return setting_overrides(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from alexnet.train.distributed import leave_processes
    from alexnet.train.run import start_or_resume, summary_line

    if args.resume and not args.threads_fixed:  # the run's own thread count: its bits (README "Resume")
        from alexnet.train.run import saved_threads
        from alexnet.runtime import set_thread_count

        threads = saved_threads(args.resume)
        if threads and threads != args.threads:
            set_thread_count(threads)
    from alexnet.runtime import private_compile_cache

    private_compile_cache()  # --compile (or train.compile in a config) never runs code others could plant
    # a SIGTERM before fit's own handler raises cli_guard.Terminated: the run stops, its lock released, exit 143
    finished = False
    try:
        result = start_or_resume(args.data, args.out, args.resume, args.finetune, args.config, train_overrides(args),
                                 progress=not args.quiet)
        finished = True
    finally:  # under torchrun: leave the group however this ends; after a failure without waiting for the others
        leave_processes(wait=finished)
    if result["rank"] == 0:
        if args.plot and result["history"]:
            from alexnet.report.curves import plot_curves, run_title

            plot_curves(result["history"], Path(result["out"]) / "curves.png",
                        title=run_title(result["variant"], result["data"], result["history"]))
        print(summary_line(result))
    return exit_code(result)


def exit_code(result: dict) -> int:
    """A finished (or max_steps-stopped) run 0; one a signal stopped 128 + the signal's number, as a
    shell reports it (a process stopped because another one of the torchrun job was: 130)."""
    if result["status"] != "interrupted":
        return 0
    return {"SIGINT": 130, "SIGTERM": 143}.get(result.get("signal"), 130)


def _cmd_eval(args: argparse.Namespace) -> None:
    from alexnet.evaluate.error_rates import evaluate
    from alexnet.files import write_json_atomic

    result = evaluate(args.checkpoints, args.data, args.split, args.crops, args.batch_size, args.device,
                      progress=not args.quiet, precision=args.precision)
    print_eval(result)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")


def print_eval(result: dict) -> None:
    from alexnet.evaluate.error_rates import views_text

    views = views_text(result["patches"])
    if len(result["models"]) > 1:
        for m in result["models"]:
            print(f"  {m['checkpoint']}: top-1 error {m['top1_err']:.2%}, top-5 error {m['top5_err']:.2%}")
    which = "ensemble of %d" % len(result["models"]) if len(result["models"]) > 1 else result["checkpoints"][0]
    print(f"{which} on {result['split']} ({result['n']} images, {views}): "
          f"top-1 error {result['top1_err']:.2%}, top-5 error {result['top5_err']:.2%}")


def _cmd_plot(args: argparse.Namespace) -> None:
    import tomllib

    from alexnet.report.curves import plot_curves, run_title
    from alexnet.train.metrics import read_history

    run = Path(args.run)
    metrics = run / "metrics.jsonl"
    read = read_history(run)
    if read is None:
        raise UserError(f"{metrics} does not exist (is {run} a training run folder?)")
    history, bad = read
    if not history:
        raise UserError(f"{metrics} has no finished epoch yet" + (f" ({bad} line(s) could not be read)" if bad else ""))
    try:
        variant = tomllib.loads((run / "config.toml").read_text()).get("variant", run.name)
    except (OSError, ValueError, RecursionError):  # a damaged or crafted config.toml: the folder's name
        variant = run.name
    out = plot_curves(history, args.out or run / "curves.png", title=run_title(variant, None, history, run))
    print(f"wrote {out}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from alexnet.cli.demo import run_demo

    return exit_code(run_demo(args.dir, epochs=args.epochs, device=args.device, progress=not args.quiet,
                              hard=args.hard))


# ---------------------------------------------------------------------------------------------------
# predict / features / neighbors / figures / export (§6.1)
# ---------------------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from alexnet.evaluate.predict import iter_predictions

    results = iter_predictions(args.checkpoint, args.images, args.crops, args.device, args.top,
                               precision=args.precision)
    failed = 0
    if args.json:
        print("[")
    for i, r in enumerate(results):
        if "error" in r:
            failed += 1
            print(f"alexnet predict: cannot read {printable(r['file'])}: {printable(r['error'])}", file=sys.stderr)
        if args.json:
            print(("," if i else "") + json.dumps(r), flush=True)
        elif "error" not in r:
            print(printable(r["file"]))
            for t in r["top"]:
                print(f"  {t['probability']:6.1%}  {printable(t['name'])} ({printable(t['wnid'])})")
            sys.stdout.flush()
    if args.json:
        print("]")
    return 2 if failed else 0


def _cmd_features(args: argparse.Namespace) -> None:
    from alexnet.evaluate.features import write_features

    r = write_features(args.checkpoint, args.data, args.split, args.out, args.device, args.batch_size, args.dtype,
                       progress=not args.quiet, precision=None if args.precision == "auto" else args.precision)
    print(f"wrote {r['path']}: {r['n']} x {r['dim']} {r['dtype']} ({r['split']} split of {r['data']})")


def _cmd_neighbors(args: argparse.Namespace) -> None:
    from alexnet.evaluate.search import find_neighbours
    from alexnet.files import write_json_atomic

    r = find_neighbours(args.database, args.queries, args.k, args.query_index, args.num_queries, args.codes,
                        args.code_sample, args.device, progress=not args.quiet,
                        log=lambda message: print(message, file=sys.stderr, flush=True))
    print(f"{len(r['rows'])} queries, {r['k']} nearest of {r['database_rows']} by {r['how']}:")
    for e in r["rows"]:
        print(f"query {e['query']}" + (f" ({printable(e['file'])})" if "file" in e else "") + ": " +
              ", ".join(f"{j} ({x:.3g})" for j, x in zip(e["neighbours"], e["distances"])))
    if r["precision"] is not None:
        print(f"neighbours with the query's label: {r['precision']:.1%}")
    if args.json:
        write_json_atomic(args.json, r["rows"])
        print(f"wrote {args.json}")


def _cmd_report(args: argparse.Namespace) -> None:
    from alexnet.report.page import write_run_report

    path = write_run_report(args.run, args.out, data=args.data, device=args.device, max_classes=args.max_classes,
                            progress=not args.quiet)
    print(f"wrote {path}; open {path.resolve().as_uri()} in a browser")


def _cmd_figures(args: argparse.Namespace) -> None:
    from alexnet.report.paper import write_figures

    paths = write_figures(args.checkpoint, args.data, args.out, args.device, args.crops,
                          train_features=args.train_features, progress=not args.quiet)
    for path in paths.values():
        print(f"wrote {path}")


def _cmd_export(args: argparse.Namespace) -> None:
    from alexnet.evaluate.export import export_onnx

    r = export_onnx(args.checkpoint, args.onnx, verify=not args.no_verify,
                    say=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"wrote {r['onnx']}: input 'image' (batch, 3, {r['input'][2]}, {r['input'][3]}) RGB 0..255, output 'logits'")
    if r["max_abs_diff"] is not None:
        print(f"onnxruntime vs PyTorch on 5 random images: largest difference {r['max_abs_diff']:.2e} "
              f"(largest logit {r['max_abs_logit']:.3g})")
    elif not args.no_verify:
        print("onnxruntime is not installed: not checked (pip install onnxruntime)")


def _cmd_experiment(args: argparse.Namespace) -> int | None:
    from alexnet.experiments.ablations import EXPERIMENTS, FIG1, ExperimentInterrupted, run_arms

    if args.list or not args.names:
        for name, e in EXPERIMENTS.items():
            print(f"{name:<14} {e.section:<7} {e.what}")
        print(f"{FIG1:<14} §3.1    Fig. 1: ReLU vs tanh, four-layer net on CIFAR-10 (needs --cifar)")
        return
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    ablations = [name for name in names if name != FIG1]
    if ablations:
        if not args.data:
            raise UserError(f"experiment {ablations[0]} trains on a store: give it with --data")
        try:
            run_arms(ablations, args.data, args.base, args.results, (train_overrides(args),), args.device or "auto",
                     progress=not args.quiet, seeds=args.seeds)
        except ExperimentInterrupted as e:
            print(f"alexnet experiment: {e}", file=sys.stderr)
            return exit_code({"status": "interrupted", "signal": e.signal})
    for name in names:
        if name == FIG1:
            from alexnet.experiments.fig1 import relu_vs_tanh
            from alexnet.experiments.fig1_plot import ratio_text

            if not args.cifar:
                raise UserError(f"{FIG1} trains on CIFAR-10: give its python-batches folder with --cifar")
            out = Path(args.results) / FIG1
            r = relu_vs_tanh(args.cifar, out, lrs=tuple(args.lrs), trial_epochs=args.trial_epochs,
                             max_epochs=args.max_epochs, device=args.device or "auto", seed=args.seed or 0,
                             seeds=args.seeds, progress=not args.quiet)
            print(f"epochs to {r['target']:.0%} training error, tanh / ReLU: {ratio_text(r['ratio'])}; "
                  f"wrote {out / 'fig1.png'} and {out / 'fig1.json'}")


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


COMMANDS = {"summary": _cmd_summary, "prepare": _cmd_prepare, "demo-data": _cmd_demo_data, "train": _cmd_train,
            "eval": _cmd_eval, "plot": _cmd_plot, "demo": _cmd_demo, "predict": _cmd_predict,
            "features": _cmd_features, "neighbors": _cmd_neighbors, "neighbours": _cmd_neighbors,
            "figures": _cmd_figures, "export": _cmd_export, "experiment": _cmd_experiment,
            "import": _cmd_import, "report": _cmd_report}


# No torch computation: the load probe (0.08 s, 3% of a 1.5 s `prepare`) would plan threads never used.
NO_TORCH_COMPUTE = {"prepare", "demo-data"}


def main(argv: list[str] | None = None, started=None) -> int:
    """`started`: the CpuSample `alexnet.__main__` took first (the thread probe overlaps the imports)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)  # `alexnet CMD ...`: only CMD's flags are built
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    from alexnet.machine import configure_process, fixed_thread_count, usable_cores

    args.threads_fixed = args.threads is not None or fixed_thread_count() is not None
    threads = args.threads
    if threads is None and args.command in NO_TORCH_COMPUTE:  # no probe of the load for a count unused
        threads = fixed_thread_count() or usable_cores()
    args.threads = configure_process(threads, started=started)  # before torch is imported (alexnet.machine)
    from alexnet.cli.guard import guarded
    try:
        with guarded(args):  # outputs checked first; SIGTERM raises like Ctrl-C, so temporaries are removed
            code = COMMANDS[args.command](args)
    except UserError as e:
        print(f"alexnet {args.command}: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (cli_guard.Terminated: 143)
        print(f"alexnet {args.command}: {getattr(e, 'said', 'interrupted')}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
