"""§5's update rule and learning-rate schedule against NumPy float64 and by hand."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from alexnet.config import OptimConfig, ScheduleConfig
from alexnet.train.optim import PaperSGD, learning_rate, make_optimizer, plateau_drops, warmup_factor


def paper_rule_numpy(w0, grads, lrs, mu=0.9, wd=0.0005):
    """v <- mu v - wd lr w - lr g ; w <- w + v, in float64."""
    w, v = w0.astype(np.float64).copy(), np.zeros_like(w0, dtype=np.float64)
    for g, lr in zip(grads, lrs):
        v = mu * v - wd * lr * w - lr * g
        w = w + v
    return w


def run_optimizer(opt_cls, w0, grads, lrs, **kw):
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = opt_cls([p], lr=lrs[0], **kw)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().numpy()


def test_paper_sgd_is_the_papers_update_rule_across_a_learning_rate_drop():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 3))
    grads = [rng.normal(size=(7, 3)) for _ in range(30)]
    lrs = [0.01] * 15 + [0.001] * 15
    ours = run_optimizer(PaperSGD, w0, grads, lrs, momentum=0.9, weight_decay=0.0005)
    np.testing.assert_allclose(ours, paper_rule_numpy(w0, grads, lrs), rtol=1e-12)


def test_torch_sgd_agrees_at_constant_rate_and_differs_after_a_drop():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) for _ in range(20)]
    const = [0.01] * 20
    torch_const = run_optimizer(torch.optim.SGD, w0, grads, const, momentum=0.9, weight_decay=0.0005)
    np.testing.assert_allclose(torch_const, paper_rule_numpy(w0, grads, const), rtol=1e-10)
    dropped = [0.01] * 10 + [0.001] * 10
    torch_drop = run_optimizer(torch.optim.SGD, w0, grads, dropped[:11], momentum=0.9, weight_decay=0.0005)
    paper_drop = paper_rule_numpy(w0, grads[:11], dropped[:11])
    assert np.abs(torch_drop - paper_drop).max() > 1e-4  # torch rescales the whole momentum at once


def test_biases_get_no_weight_decay_unless_asked():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = make_optimizer(model, OptimConfig())
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.0005 and decays[id(model[0].bias)] == 0.0
    opt = make_optimizer(model, OptimConfig(decay_biases=True))
    assert all(g["weight_decay"] == 0.0005 for g in opt.param_groups)
    assert isinstance(make_optimizer(model, OptimConfig(rule="torch")), torch.optim.SGD)


def test_plateau_drops_after_patience_and_at_most_three_times():
    assert plateau_drops([0.9, 0.8, 0.7, 0.6], patience=2, threshold=0.0, max_drops=3) == 0
    # 0.5 is best; two epochs without improvement -> one drop
    assert plateau_drops([0.9, 0.5, 0.5, 0.51], patience=2, threshold=0.0, max_drops=3) == 1
    # improvements smaller than the threshold do not count
    assert plateau_drops([0.5, 0.499, 0.498], patience=2, threshold=0.01, max_drops=3) == 1
    # after a drop the new rate is judged on its own epochs
    assert plateau_drops([0.5, 0.5, 0.5, 0.4, 0.4, 0.4], patience=2, threshold=0.0, max_drops=3) == 2
    assert plateau_drops([0.5] * 40, patience=1, threshold=0.0, max_drops=3) == 3


def test_learning_rate_schedules():
    plateau = ScheduleConfig(patience=2, threshold=0.0)
    errors = [0.9, 0.5, 0.5, 0.5]
    assert learning_rate(0.01, 0, [], plateau) == 0.01
    assert learning_rate(0.01, 3, errors, plateau) == 0.01  # epochs 0..2: one stale epoch so far
    assert learning_rate(0.01, 4, errors, plateau) == pytest.approx(0.001)  # two stale epochs: drop
    step = ScheduleConfig(kind="step", milestones=(2, 4))
    assert [learning_rate(0.01, e, [], step) for e in range(6)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4])
    assert warmup_factor(0, 10, 0) == 1.0
    assert warmup_factor(4, 10, 1) == pytest.approx(0.5) and warmup_factor(50, 10, 1) == 1.0


def test_paper_sgd_resumes_from_a_checkpoint_that_held_the_velocity_itself():
    """Checkpoints written before PaperSGD was torch's SGD kept v (weight units) as `momentum_buffer`
    and no `applied_lr`: loading one converts it, and the rule goes on as NumPy's."""
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(12)]
    lrs = [0.01] * 6 + [0.001] * 6
    w, v = w0.copy(), np.zeros_like(w0)
    for g, lr in zip(grads[:6], lrs[:6]):
        v = 0.9 * v - 0.0005 * lr * w - lr * g
        w = w + v
    p = nn.Parameter(torch.tensor(w, dtype=torch.float64))
    old_format = {"state": {0: {"momentum_buffer": torch.tensor(v)}},
                  "param_groups": [{"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "params": [0]}]}
    opt = PaperSGD([p], lr=0.01, momentum=0.9, weight_decay=0.0005)
    opt.load_state_dict(old_format)
    for g, lr in zip(grads[6:], lrs[6:]):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), paper_rule_numpy(w0, grads, lrs), rtol=1e-12)


def test_paper_sgd_is_torchs_fused_sgd_on_float_tensors():
    model = nn.Linear(3, 2)
    opt = make_optimizer(model, OptimConfig())
    assert isinstance(opt, torch.optim.SGD) and all(g["fused"] for g in opt.param_groups)
