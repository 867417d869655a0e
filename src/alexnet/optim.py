"""§5: the update rule and the learning-rate schedule.

    v <- 0.9 v - 0.0005 lr w - lr grad
    w <- w + v

`torch.optim.SGD` keeps its buffer in gradient units (buf <- 0.9 buf + grad + wd w; w <- w - lr buf)
and multiplies the whole buffer by the current lr. With a constant lr the two are the same net
(v = -lr buf). When lr drops, the paper's velocity still carries the steps taken at the old rate and
lets them decay, while torch's rescales all of them at once: right after a drop by 10, torch's step
is 10x smaller than the paper's, and the difference fades over ~1/(1-0.9) = 10 steps.

On the CPU the update is one pass of a small C kernel (sgd_kernel.c, built on first use by
alexnet.native; ALEXNET_SGD_KERNEL=0 turns it off) with the same bits as the four torch passes it
replaces, 2.4x faster on the paper net (bench/README.md, "The optimizer step").

The schedules are pure functions of the epoch and the validation history, so a resumed run needs no
scheduler state.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from alexnet import native
from alexnet.config import OptimConfig, ScheduleConfig
from alexnet.runtime import capturing_graph


def _bind(lib: ctypes.CDLL) -> None:
    p, n, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    lib.paper_sgd_f32.argtypes = [p, p, p, n, f, f, f]
    lib.paper_sgd_f32.restype = ctypes.c_int
    lib.paper_sgd_has_fma.restype = ctypes.c_int
    if not lib.paper_sgd_has_fma():
        raise OSError("this CPU has no fused multiply-add, which the kernel needs to be fast and to round "
                      "as torch does")


KERNEL = native.Kernel(Path(__file__).with_name("sgd_kernel.c"), "sgd", "ALEXNET_SGD_KERNEL", _bind,
                       "the update runs as torch foreach operations")


def _kernel_fits(w: Tensor, v: Tensor, g: Tensor) -> bool:
    """Whether sgd_kernel.c can update w: float32 CPU tensors that fill their memory in the same order
    (contiguous, or channels-last as the net's convolution weights on the CPU), run eagerly."""
    return (w.device.type == "cpu" and w.dtype == v.dtype == g.dtype == torch.float32 and not g.is_sparse
            and g.device.type == "cpu" and w.stride() == v.stride() == g.stride() and w.shape == g.shape
            and (w.is_contiguous() or (w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last))))


def _update_with_kernel(params: list[Tensor], velocities: list[Tensor], grads: list[Tensor], momentum: float,
                        decay: float, rate: float) -> list[int]:
    """Updates the parameters the kernel fits; returns the indices of the others."""
    if capturing_graph() or KERNEL.load() is None:
        return list(range(len(params)))
    rest = []
    for i, (w, v, g) in enumerate(zip(params, velocities, grads)):
        if not _kernel_fits(w, v, g):
            rest.append(i)
        elif not native.run_split(KERNEL.load().paper_sgd_f32, [w, v, g], w.numel(), 1, momentum, decay, rate):
            raise RuntimeError("sgd_kernel.c refused an update")
    return rest


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay exactly as §5 writes it (`momentum_buffer` is v)."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0005):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, velocities = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                velocities.append(state["momentum_buffer"])
            if not params:
                continue
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            rest = _update_with_kernel(params, velocities, grads, mu, -wd * lr, -lr)
            if not rest:
                continue
            params, grads, velocities = ([t[i] for i in rest] for t in (params, grads, velocities))
            torch._foreach_mul_(velocities, mu)
            if wd:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)
        return loss


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Weights get weight decay; biases too only with `decay_biases` (cuda-convnet set no weight cost
    on biases; §5 gives the rule "for weight w")."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 or config.decay_biases else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if config.rule == "paper":
        return PaperSGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def plateau_drops(val_errors: list[float], patience: int, threshold: float, max_drops: int) -> int:
    """§5's heuristic, "divide the learning rate by 10 when the validation error rate stopped improving
    with the current learning rate", as a count of drops after the epochs seen so far: a drop comes
    after `patience` epochs in a row that do not beat the best error at the current rate by more than
    `threshold`; at most `max_drops` drops."""
    drops, best, stale = 0, float("inf"), 0
    for err in val_errors:
        if err < best - threshold:
            best, stale = err, 0
        else:
            stale += 1
        if stale >= patience and drops < max_drops:
            drops, best, stale = drops + 1, float("inf"), 0  # a new rate: judge it on its own epochs
    return drops


def learning_rate(base_lr: float, epoch: int, val_errors: list[float], config: ScheduleConfig) -> float:
    """The learning rate for `epoch` (0-based) given the validation errors of the epochs before it."""
    if config.kind == "step":
        drops = sum(1 for m in config.milestones if epoch >= m)
    else:
        drops = plateau_drops(val_errors[:epoch], config.patience, config.threshold, config.max_drops)
    return base_lr * config.factor**drops


def warmup_factor(step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up over the first `warmup_epochs` (not in the paper; for large distributed batches)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))
