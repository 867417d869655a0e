"""§5: the update rule and the learning-rate schedule.

    v <- 0.9 v - 0.0005 lr w - lr grad
    w <- w + v

`torch.optim.SGD` keeps its buffer in gradient units (buf <- 0.9 buf + grad + wd w; w <- w - lr buf)
and multiplies the whole buffer by the current lr. With a constant lr the two are the same net
(v = -lr buf). When lr drops, the paper's velocity still carries the steps taken at the old rate and
lets them decay, while torch's rescales all of them at once: right after a drop by 10, torch's step
is 10x smaller than the paper's, and the difference fades over ~1/(1-0.9) = 10 steps.

`PaperSGD` is torch's own SGD (fused where torch has the kernel: one pass over each parameter, on the
CPU and on CUDA) with the buffer multiplied by lr_old / lr_new whenever the rate changes, which makes
-lr * buf the paper's v at every step (tests/train/test_optim.py checks it against NumPy across a drop).

The schedules are pure functions of the epoch and the validation history, so a resumed run needs no
scheduler state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from alexnet.config import OptimConfig, ScheduleConfig


def _fusable(params: list) -> bool:
    """torch's fused SGD kernel takes floating-point CPU and CUDA tensors (it refuses others)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


class PaperSGD(torch.optim.SGD):
    """SGD with momentum and weight decay exactly as §5 writes it: torch.optim.SGD, whose buffer is in
    gradient units (v = -lr * buf), with the buffer rescaled by lr_old / lr_new when the rate changes,
    so that the velocity the paper keeps carries over a drop unchanged. `applied_lr` in each param
    group is the rate the buffers are scaled for (saved in the optimizer's state_dict)."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0005):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr must be positive, momentum and weight_decay non-negative")
        params = list(params)
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=_fusable(flat) or None)
        for group in self.param_groups:
            group.setdefault("applied_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            old, new = group["applied_lr"], group["lr"]
            if new <= 0:
                raise ValueError(f"§5's rule as torch's SGD needs a positive learning rate, got {new}")
            if new != old:
                buffers = [self.state[p]["momentum_buffer"] for p in group["params"]
                           if self.state[p].get("momentum_buffer") is not None]
                if buffers:
                    torch._foreach_mul_(buffers, old / new)
                group["applied_lr"] = new
        return super().step(closure)

    def load_state_dict(self, state_dict: dict) -> None:
        """A checkpoint of an earlier version held the paper's velocity v itself ("applied_lr" absent,
        and none of torch's SGD settings): converted to torch's buffer, buf = -v / lr."""
        earlier = ["applied_lr" not in g for g in state_dict["param_groups"]]
        if any(earlier):
            groups = [{**{k: v for k, v in mine.items() if k != "params"}, **saved}
                      for mine, saved in zip(self.param_groups, state_dict["param_groups"])]
            state_dict = {**state_dict, "param_groups": groups}
        super().load_state_dict(state_dict)
        for group, converted in zip(self.param_groups, earlier):
            if converted:
                group["applied_lr"] = group["lr"]
                for p in group["params"]:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(-1.0 / group["lr"])


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
