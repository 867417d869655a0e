"""§3.2 model parallelism: two devices compute exactly what the single-device grouped net computes."""

import pytest
import torch
import torch.nn.functional as F

from alexnet.config import resolve
from alexnet.model import VARIANTS, AlexNet
from alexnet.model.parallel import TwoTowerAlexNet

CPU2 = ("cpu", "cpu")  # two CPU "devices": the same code path as two GPUs, minus the copies


@pytest.mark.parametrize("config", [VARIANTS["tiny"], VARIANTS["paper"]], ids=["tiny", "paper"])
def test_outputs_and_gradients_match_the_grouped_net(config):
    torch.manual_seed(0)
    single = AlexNet(config, dropout=0.0, num_classes=10).double()
    parallel = TwoTowerAlexNet.from_single(single, CPU2).double()
    size = config.input_size
    x = torch.randn(3, 3, size, size, dtype=torch.float64) * 50
    y = torch.tensor([1, 7, 3])
    F.cross_entropy(single(x), y).backward()
    parallel.exchanges = []
    out = parallel(x)
    F.cross_entropy(out, y).backward()
    torch.testing.assert_close(out, single(x), rtol=1e-10, atol=1e-10)
    grads = parallel.single_grads()
    for name, p in single.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    # the towers exchange activations only where Fig. 2 connects them
    assert parallel.exchanges == ["conv3", "fc6", "fc7", "fc8"]
    with torch.no_grad():
        torch.testing.assert_close(parallel.embed(x), single.embed(x))


def test_weights_round_trip_and_bad_configs():
    torch.manual_seed(1)
    single = AlexNet(VARIANTS["tiny"], num_classes=4)
    parallel = TwoTowerAlexNet.from_single(single, CPU2)
    back = parallel.single_state_dict()
    for k, v in single.state_dict().items():
        assert torch.equal(back[k], v), k
    assert sum(p.numel() for p in parallel.parameters()) == sum(p.numel() for p in single.parameters())
    with pytest.raises(ValueError, match="towers = 2"):
        TwoTowerAlexNet(VARIANTS["one-tower"], CPU2)
    with pytest.raises(ValueError, match="lrn_within_towers"):
        TwoTowerAlexNet(AlexNet(VARIANTS["tiny"], lrn_within_towers=False).config, CPU2)


def test_paper_init_on_two_devices():
    torch.manual_seed(0)
    net = TwoTowerAlexNet(VARIANTS["paper"], CPU2)
    state = net.single_state_dict()
    assert torch.all(state["conv2.bias"] == 1) and torch.all(state["conv3.bias"] == 0)
    assert state["fc6.weight"].std().item() == pytest.approx(0.01, rel=0.02)
    assert sum(p.numel() for p in net.parameters()) == 60_965_224


def test_training_with_model_parallel_matches_one_device(demo_store, tmp_path):
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.train.run import fit

    def config(mp):
        return resolve({"variant": "tiny", "model": {"dropout": 0.0},
                        "train": {"epochs": 1, "batch_size": 32, "max_steps": 5, "model_parallel": mp, "amp": "off",
                                  "device": "cpu"}})

    fit(config(1), demo_store, tmp_path / "one", progress=False, echo=False)
    r = fit(config(2), demo_store, tmp_path / "two", progress=False, echo=False)
    assert r["status"] == "stopped at max_steps"
    a = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    model_from_checkpoint(load_checkpoint(tmp_path / "two" / "last.pt"))  # the usual single-device format
    fit(resolve({"variant": "tiny", "model": {"dropout": 0.0},
                 "train": {"epochs": 1, "batch_size": 32, "model_parallel": 2, "device": "cpu", "amp": "off"}}),
        None, tmp_path / "two", resume=True, progress=False, echo=False)


def test_towers_follow_the_layer_spec_on_other_geometries():
    """Tower is built from model.layer_spec: a non-default net still splits into the same numbers."""
    torch.manual_seed(2)
    config = AlexNet(VARIANTS["tiny"], width=0.25, input_size=80, pool_size=2, pool_stride=2, fc_width=32,
                     dropout=0.0, num_classes=3).config
    single = AlexNet(config).double()
    parallel = TwoTowerAlexNet.from_single(single, CPU2).double()
    x = torch.randn(2, 3, 80, 80, dtype=torch.float64) * 50
    torch.testing.assert_close(parallel(x), single(x), rtol=1e-10, atol=1e-10)


def test_leaving_the_process_group_at_the_end_of_a_torchrun_command(tmp_path):
    from alexnet.train.distributed import leave_processes

    leave_processes()  # no group: nothing to do
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    leave_processes()
    assert not torch.distributed.is_initialized()  # the next fit in this process may join a new one
