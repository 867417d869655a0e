"""§3.2: the net spread over two devices, as Fig. 2 draws it.

Each device holds one tower: half of the kernels of every conv layer and half of the neurons of fc6
and fc7. The towers exchange activations only where §3.5 connects them, conv3 (which sees all of
conv2's maps) and the fully connected layers; conv1, conv2, conv4, conv5 and the response
normalisations see only their own device's maps. fc8 sits on the first device. The weights are the
same numbers as the single-device grouped net's (`from_single`, `single_state_dict`), so checkpoints
stay in one format and every tool reads them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from alexnet.config import ModelConfig, map_sizes, model_parallel_problem
from alexnet.model.lrn import LocalResponseNorm
from alexnet.model.net import AlexNet, ConvSpec, PaperDropout, init_paper_, layer_spec

SPLIT_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")  # split by output kernels
SPLIT_FCS = ("fc6", "fc7")  # split by output neurons


class Tower(nn.Module):
    """One device's half of the layers of Fig. 2, from the same `layer_spec` as the one-device net:
    half of each layer's kernels or neurons. A grouped conv (conv2, conv4, conv5) sees its own
    tower's maps; conv1 sees the image, and conv3 and the fc layers both towers' outputs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        spec = layer_spec(config)
        z, s = config.pool_size, config.pool_stride
        alpha = config.lrn_alpha / config.lrn_size if config.lrn_alpha_over_n else config.lrn_alpha

        def norm() -> nn.Module:
            if not config.lrn:
                return nn.Identity()
            return LocalResponseNorm(config.lrn_size, alpha, config.lrn_beta, config.lrn_k)

        def half(name: str) -> nn.Module:
            layer = spec[name]
            if isinstance(layer, ConvSpec):
                return nn.Conv2d(layer.in_ch // layer.groups, layer.out_ch // 2, layer.kernel, layer.stride,
                                 layer.padding)
            return nn.Linear(layer[0], layer[1] // 2)

        self.conv1 = half("conv1")  # (B, 48, 55, 55)
        self.norm1, self.pool1 = norm(), nn.MaxPool2d(z, s)
        self.conv2 = half("conv2")  # (B, 128, 27, 27)
        self.norm2, self.pool2 = norm(), nn.MaxPool2d(z, s)
        self.conv3 = half("conv3")  # (B, 192, 13, 13) from both towers' 256 maps
        self.conv4 = half("conv4")  # (B, 192, 13, 13)
        self.conv5 = half("conv5")  # (B, 128, 13, 13)
        self.pool5 = nn.MaxPool2d(z, s)  # (B, 128, 6, 6)
        self.fc6 = half("fc6")  # (B, 2048) from both towers' 9216
        self.fc7 = half("fc7")  # (B, 2048) from both fc6 halves
        self.drop6, self.drop7 = PaperDropout(config.dropout), PaperDropout(config.dropout)


class TwoTowerAlexNet(nn.Module):
    """AlexNet with tower 0 on devices[0] and tower 1 on devices[1] (two CPU "devices" work too)."""

    def __init__(self, config: ModelConfig, devices=("cuda:0", "cuda:1")):
        super().__init__()
        problem = model_parallel_problem(config)
        if problem:
            raise ValueError(f"model parallelism {problem}")
        self.config = config
        self.devices = tuple(torch.device(d) for d in devices)
        self.map_sizes = map_sizes(config)
        spec = layer_spec(config)
        self.feature_dim = spec["fc6"][0]
        self.towers = nn.ModuleList([Tower(config).to(d) for d in self.devices])
        self.fc8 = nn.Linear(*spec["fc8"]).to(self.devices[0])
        self.act = {"relu": F.relu, "tanh": torch.tanh}[config.nonlinearity]
        self.exchanges: list[str] | None = None  # set to [] to record where activations cross devices
        init_paper_(self, config.init_std, config.init_bias, config.init_scheme)

    def _both(self, parts: list[Tensor], layer: str) -> list[Tensor]:
        """Each device gets the concatenation of both towers' tensors: the one exchange §3.2 allows."""
        if self.exchanges is not None:
            self.exchanges.append(layer)
        return [torch.cat([p.to(d) for p in parts], 1) for d in self.devices]

    def embed(self, x: Tensor) -> Tensor:
        a = [x.to(d) for d in self.devices]
        a = [t.pool1(t.norm1(self.act(t.conv1(v)))) for t, v in zip(self.towers, a)]
        a = [t.pool2(t.norm2(self.act(t.conv2(v)))) for t, v in zip(self.towers, a)]
        a = [self.act(t.conv3(v)) for t, v in zip(self.towers, self._both(a, "conv3"))]
        a = [t.pool5(self.act(t.conv5(self.act(t.conv4(v))))) for t, v in zip(self.towers, a)]
        a = [torch.flatten(v, 1) for v in a]
        a = [t.drop6(self.act(t.fc6(v))) for t, v in zip(self.towers, self._both(a, "fc6"))]
        a = [self.act(t.fc7(v)) for t, v in zip(self.towers, self._both(a, "fc7"))]
        return torch.cat([v.to(self.devices[0]) for v in a], 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        if self.exchanges is not None:
            self.exchanges.append("fc8")
        f7 = [t.drop7(v) for t, v in zip(self.towers, h.split(self.config.fc_width // 2, 1))]
        return self.fc8(torch.cat(f7, 1))

    # -- the single-device layout ----------------------------------------------------------------
    @torch.no_grad()
    def load_single(self, state: dict[str, Tensor]) -> None:
        """Take the weights of a single-device AlexNet state dict (same config)."""
        for i, tower in enumerate(self.towers):
            for name in SPLIT_CONVS + SPLIT_FCS:
                layer = getattr(tower, name)
                for p in ("weight", "bias"):
                    full = state[f"{name}.{p}"]
                    half = full.shape[0] // 2
                    getattr(layer, p).copy_(full[i * half : (i + 1) * half])
        self.fc8.weight.copy_(state["fc8.weight"])
        self.fc8.bias.copy_(state["fc8.bias"])

    @classmethod
    def from_single(cls, model: AlexNet, devices=("cuda:0", "cuda:1")) -> "TwoTowerAlexNet":
        net = cls(model.config, devices)
        net.load_single(model.state_dict())
        return net

    def single_state_dict(self) -> dict[str, Tensor]:
        """The weights in the single-device AlexNet's layout (on the CPU)."""
        out = {}
        for name in SPLIT_CONVS + SPLIT_FCS:
            for p in ("weight", "bias"):
                out[f"{name}.{p}"] = torch.cat([getattr(getattr(t, name), p).detach().cpu() for t in self.towers])
        out["fc8.weight"] = self.fc8.weight.detach().cpu()
        out["fc8.bias"] = self.fc8.bias.detach().cpu()
        return out

    def single_grads(self) -> dict[str, Tensor]:
        """Gradients in the single-device layout (for tests and debugging)."""
        out = {}
        for name in SPLIT_CONVS + SPLIT_FCS:
            for p in ("weight", "bias"):
                out[f"{name}.{p}"] = torch.cat([getattr(getattr(t, name), p).grad.cpu() for t in self.towers])
        out["fc8.weight"], out["fc8.bias"] = self.fc8.weight.grad.cpu(), self.fc8.bias.grad.cpu()
        return out
