"""`small` against a tutorial CNN on real data: the UCI digits, same images, same epochs.

    python studies/digits.py [--epochs 10] [--seeds 0,1,2] [--work DIR] [--out FILE]
    python studies/digits.py --epochs 10 --ours-epochs 25 --peer-flip    # the same wall-clock budget
    python studies/digits.py --no-peer --arm "lr 0.02:optim.lr=0.02" --arm "no LRN:model.lrn=false" ...

The data: `alexnet demo-data DIR --digits` (scikit-learn's 1,797 UCI digits as JPEGs of 40-120 px,
80/20 stratified split, seed 0), prepared as `alexnet prepare DIR STORE --size 72` (the demo's size:
64x64 patches of 72x72 images, as 224 of 256).

*ours*: `alexnet.train.run.fit` (what `alexnet train --variant small --epochs N` runs) with the variant's
defaults, plus each `--arm`'s overrides; the error of last.pt on the val images, centre patch and
the ten patches of §4.1 (`alexnet eval --crops 1/10`; for an arm trained with `data.flip=false`
the "10 patches" column is the five unmirrored ones, as `eval` then averages). *peer*:
pytorch/examples `mnist/main.py`, the small digits CNN every PyTorch user has run (two 3x3 convs
32 and 64, max pool, dropout 0.25, fc 9216-128, dropout 0.5, fc 10; Adadelta lr 1.0, StepLR gamma
0.7 per epoch, batch 64), on the same stored 72x72 images, grey, resized (antialiased) to its native
28x28 and normalised by the training set's mean and std; its test error after the last epoch.
Seconds are wall-clock of training including the per-epoch validation, in this process; per seed
the two sides alternate order. `--ours-epochs` gives small more epochs than the peer: `small` trains
an epoch 2-3x faster, so the same wall-clock budget holds more of its epochs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # common.report
from common import report  # noqa: E402

STORE_SIZE = 72


def prepare_digits(work: Path) -> Path:
    """The digits tree and its store under `work` (made once, reused)."""
    from alexnet.data.digits import make_digits_tree
    from alexnet.data.prepare import prepare

    store = work / f"store{STORE_SIZE}"
    if not (store / "meta.json").exists():
        if not (work / "tree" / "LOC_synset_mapping.txt").exists():
            make_digits_tree(work / "tree", seed=0)
        prepare(work / "tree", store, size=STORE_SIZE, progress=False, log=lambda *a: None)
    return store


class MnistNet(nn.Module):
    """pytorch/examples mnist/main.py's Net, layer for layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)


def peer_tensors(store: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The store's images of `split` as grey 28x28 floats in 0..1, and their labels."""
    from alexnet.data.store import ImageStore

    s = ImageStore(store, split)
    x = torch.from_numpy(s.get_batch(np.arange(len(s)))).permute(0, 3, 1, 2).float().mean(1, keepdim=True) / 255
    x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return x, torch.from_numpy(np.asarray(s.labels, dtype=np.int64))


def run_peer(store: Path, epochs: int, seed: int, flip: bool = False) -> dict:
    """The example's training and test loop; with `flip`, §4.1's reflections as `small` sees them: a
    random half of each batch mirrored, and the test output averaged over each image and its mirror."""
    torch.manual_seed(seed)
    (x, y), (xv, yv) = peer_tensors(store, "train"), peer_tensors(store, "val")
    mean, std = x.mean(), x.std()  # the example's Normalize((0.1307,), (0.3081,)): MNIST's own
    x, xv = (x - mean) / std, (xv - mean) / std
    start = time.perf_counter()
    net = MnistNet()
    opt = torch.optim.Adadelta(net.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(64):
            batch = x[idx]
            if flip:
                batch = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, batch.flip(3), batch)
            opt.zero_grad()
            F.nll_loss(net(batch), y[idx]).backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            out = [net(b).exp() + (net(b.flip(3)).exp() if flip else 0) for b in xv.split(1000)]
            err = (torch.cat(out).argmax(1) != yv).float().mean().item()
    name = "peer+flips" if flip else "peer"
    return {f"{name} err": err, f"{name} s": time.perf_counter() - start}


def run_ours(store: Path, epochs: int, seed: int, overrides: dict, out: Path) -> dict:
    from alexnet.config import apply, resolve
    from alexnet.evaluate.error_rates import evaluate
    from alexnet.train.run import fit

    config = apply(resolve({"variant": "small"}, overrides),
                   {"train": {"epochs": epochs, "seed": seed, "device": "cpu"}})
    start = time.perf_counter()
    result = fit(config, store, out, progress=False, echo=False)
    seconds = time.perf_counter() - start
    if result["status"] != "finished":
        raise SystemExit(f"training stopped: {result['status']}")
    errs = {v: evaluate([out / "last.pt"], store, "val", v, device="cpu", progress=False)["top1_err"]
            for v in (1, 10)}
    # how long it sits at chance: the first epoch whose centre-patch val error is under 50%
    under_half = next((h["epoch"] for h in result["history"] if h["val_top1_err"] < 0.5), "never")
    return {"ours err 1 patch": errs[1], "ours err 10 patches": errs[10], "ours s": seconds,
            "epoch < 50%": under_half}


def parse_arm(text: str) -> tuple[str, dict]:
    from alexnet.config import parse_overrides

    label, _, sets = text.partition(":")
    return label, parse_overrides([s for s in sets.split(";") if s])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ours-epochs", type=int, default=0,
                   help="epochs for small (default: --epochs); more, to give it the peer's wall-clock budget")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (the split is always seed 0's)")
    p.add_argument("--arm", action="append", default=[],
                   help="LABEL:section.key=value;... overrides on small's defaults (repeatable; default: none)")
    p.add_argument("--no-peer", action="store_true", help="skip the tutorial CNN")
    p.add_argument("--peer-flip", action="store_true", help="also train the tutorial CNN with §4.1's reflections")
    p.add_argument("--work", default="", help="folder for the tree, the store and the runs (default: a temporary one)")
    p.add_argument("--out", default="", help="append the rows to this JSON-lines file")
    args = p.parse_args()
    arms = [parse_arm(a) for a in args.arm] or [("small defaults", {})]
    ours_epochs = args.ours_epochs or args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        store = prepare_digits(work)
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for k, (label, overrides) in enumerate(arms):
                sides = [lambda: run_ours(store, ours_epochs, seed, overrides, work / f"run-{k}-{seed}-{time.time_ns()}")]
                if not args.no_peer and k == 0:
                    sides.insert(seed % 2, lambda: run_peer(store, args.epochs, seed))
                if args.peer_flip and k == 0:
                    sides.append(lambda: run_peer(store, args.epochs, seed, flip=True))
                row = {"arm": label, "seed": seed, "epochs": ours_epochs}
                if len(sides) > 1:
                    row["peer epochs"] = args.epochs
                for side in sides:
                    row.update(side())
                rows.append(row)
                print(row, flush=True)
        if len(rows) > len(arms):
            rows += summary(rows, arms)
        columns = list(dict.fromkeys(key for row in rows for key in row))  # the peer's only in the first arm's
        rows = [{key: row.get(key, "") for key in columns} for row in rows]
        report("digits", f"small vs the tutorial CNN on the UCI digits ({len(rows)} rows)", rows, args.out)


def summary(rows: list[dict], arms: list[tuple[str, dict]]) -> list[dict]:
    """Per arm, the mean of each column over seeds (text `mean ± sd`)."""
    out = []
    for label, _ in arms:
        mine = [r for r in rows if r["arm"] == label]
        row = {"arm": label, "seed": "mean ± sd", "epochs": mine[0]["epochs"]}
        for key in mine[0]:
            vals = [r.get(key) for r in mine]
            if key not in row and all(isinstance(v, (int, float)) for v in vals):  # "never" has no mean
                row[key] = f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"
        out.append(row)
    return out


if __name__ == "__main__":
    main()
