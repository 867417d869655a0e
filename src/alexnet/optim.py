"""§5: the update rule and the learning-rate schedule.

    v <- 0.9 v - 0.0005 lr w - lr grad
    w <- w + v

`torch.optim.SGD` keeps its buffer in gradient units (buf <- 0.9 buf + grad + wd w; w <- w - lr buf)
and multiplies the whole buffer by the current lr. With a constant lr the two are the same net
(v = -lr buf). When lr drops, the paper's velocity still carries the steps taken at the old rate and
lets them decay, while torch's rescales all of them at once: right after a drop by 10, torch's step
is 10x smaller than the paper's, and the difference fades over ~1/(1-0.9) = 10 steps.

The schedules are pure functions of the epoch and the validation history, so a resumed run needs no
scheduler state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from alexnet.config import OptimConfig, ScheduleConfig


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
