"""How much of each layer's activity depends on the input, at initialisation (README: "Does the
paper's initialisation train?").

    python studies/init_signal.py [--images 32]

For a batch of smooth random images with the statistics of real ones (0..255, mean subtracted),
prints per layer the spread across images (std over the batch, averaged over units) next to the mean
activity. With §5's N(0, 0.01^2) weights and biases of 1, the spread shrinks layer by layer until the
output hardly depends on the input; the "scaled" init keeps it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402

from alexnet.model import AlexNet, create_model  # noqa: E402


def smooth_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, size // 16, size // 16, generator=g) * 255
    x = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
    x = x + torch.randn(n, 3, size, size, generator=g) * 8
    return x - x.mean(0, keepdim=True)


def signal_by_layer(model: AlexNet, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """layer -> (mean activity, mean over units of the std across the batch), after each conv/fc."""
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o.detach().flatten(1)))
             for n, m in model.named_children() if n.startswith(("conv", "fc"))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return {n: (a.mean().item(), a.std(0).mean().item()) for n, a in acts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    args = p.parse_args()
    rows = []
    for variant in ("paper", "small"):
        for scheme in ("paper", "scaled"):
            torch.manual_seed(0)
            model = create_model(variant, init_scheme=scheme, num_classes=1000 if variant == "paper" else 10)
            table = signal_by_layer(model, smooth_batch(args.images, model.config.input_size))
            for layer, (mean, spread) in table.items():
                rows.append({"variant": variant, "init": scheme, "layer": layer, "mean": mean,
                             "spread across images": spread})
    report("init_signal", "activity at initialisation", rows)
    by = {(r["variant"], r["init"], r["layer"]): r for r in rows}
    for variant in ("paper", "small"):
        for scheme in ("paper", "scaled"):
            fc7 = by[(variant, scheme, "fc7")]
            print(f"{variant:6s} {scheme:7s} fc7: spread across images / mean activity = "
                  f"{fc7['spread across images'] / abs(fc7['mean']):.2e}")

if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
