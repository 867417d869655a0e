"""The network of §3 (Fig. 2), written in the paper's order: conv1 ... conv5, fc6, fc7, fc8.

Input: raw RGB patches on the 0..255 scale with the training set's mean image subtracted (§2), shape
(B, 3, 224, 224). The two GPUs of §3.2 are the two groups of one `nn.Conv2d` (`groups=2`) in the layers
whose kernels see only their own tower's maps (conv2, conv4, conv5); conv3 and the fully connected
layers see both. `ModelConfig` (alexnet.config) sets every choice; `VARIANTS` (there too, re-exported
here) names the ones the CLI and the experiments pick by name. `layer_spec` lists every layer's sizes.

The net also carries what its inputs need (§2): `input_mean`, the (S, S, 3) mean image its inputs have
subtracted, `classes` and `class_names`, and the test-time data settings; `transforms()` turns an image
into its input, `features()` reads any layer by its paper name (alexnet.data.transforms, README "Python").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from alexnet.config import VARIANTS, DataConfig, ModelConfig, conv_channels, map_sizes, variant_config
from alexnet.errors import UserError
from alexnet.model.lrn import LocalResponseNorm

class PaperDropout(nn.Module):
    """§4.2: while training, zero each output with probability p; at test time use every neuron but
    multiply its output by 1-p. (nn.Dropout instead scales by 1/(1-p) while training; the two nets
    compute the same at test time but differ in the scale the next layer's weights, their N(0, 0.01)
    init and their weight decay see while training.) inverted=True is nn.Dropout's convention, which
    imported Caffe and torchvision weights were trained with: their fc7 and fc8 expect unscaled inputs."""

    def __init__(self, p: float = 0.5, inverted: bool = False):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.inverted = p, inverted

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0:
            return x
        if self.training:
            kept = x * torch.empty_like(x).bernoulli_(1.0 - self.p)
            return kept / (1.0 - self.p) if self.inverted else kept
        return x if self.inverted else x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", inverted" if self.inverted else "")


# ---------------------------------------------------------------------------------------------------
# §3.5 The network
# ---------------------------------------------------------------------------------------------------


class ConvSpec(NamedTuple):
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # > 1: each tower's kernels see only its own tower's maps (§3.2)


def layer_spec(config: ModelConfig) -> dict[str, ConvSpec | tuple[int, int] | None]:
    """§3.5, Fig. 2: every conv layer's ConvSpec (None where the config removes it or adds none) and
    every fully connected layer's (in, out), in order. `AlexNet` and `parallel.Tower` both build from it."""
    c1, c2, c3, c4, c5 = conv_channels(config)
    t = config.towers
    spec: dict[str, ConvSpec | tuple[int, int] | None] = {}
    # conv1: 96 kernels 11x11x3, stride 4. A 224 input gives 55x55 maps (Fig. 2) only with padding:
    # (224 + 2*2 - 11) // 4 + 1 = 55, while no padding gives 54 (the reason others feed 227).
    spec["conv1"] = ConvSpec(3, c1, 11, stride=4, padding=config.conv1_padding)  # Caffe's 227 input: 0
    # conv2: 256 kernels 5x5x48, each tower sees only its own 48 maps of conv1.
    spec["conv2"] = ConvSpec(c1, c2, 5, padding=2, groups=t)
    # conv3: 384 kernels 3x3x256, connected to all maps of conv2: the towers exchange here.
    cin = c2
    spec["conv3"] = None if config.remove_conv == 3 else ConvSpec(cin, c3, 3, padding=1)
    cin = c3 if spec["conv3"] else cin
    # conv4: 384 kernels 3x3x192, conv5: 256 kernels 3x3x192, each within its tower.
    spec["conv4"] = None if config.remove_conv == 4 else ConvSpec(cin, c4, 3, padding=1, groups=t)
    cin = c4 if spec["conv4"] else cin
    spec["conv5"] = None if config.remove_conv == 5 else ConvSpec(cin, c5, 3, padding=1, groups=t)
    cin = c5 if spec["conv5"] else cin
    # §6: "an extra sixth convolutional layer over the last pooling layer". The paper gives no
    # shape; we keep the maps' size and count (3x3, padding 1) and connect both towers.
    spec["conv6"] = ConvSpec(cin, cin, 3, padding=1) if config.extra_conv else None
    sizes = map_sizes(config)
    spec["fc6"] = (cin * sizes.get("avgpool", sizes["pool5"]) ** 2, config.fc_width)  # 9216 -> 4096 in the paper's net
    spec["fc7"] = (config.fc_width, config.fc_width)
    spec["fc8"] = (config.fc_width, config.num_classes)
    return spec


def conv_layer(spec: ConvSpec | None) -> nn.Conv2d | None:
    return None if spec is None else nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel, spec.stride, spec.padding,
                                               groups=spec.groups)


def _input_scale(config: ModelConfig) -> Tensor | None:
    """(1, 3, 1, 1) per-channel multiplier of the input (torchvision's 1/(255 std)), or None."""
    if not config.input_scale:
        return None
    return torch.tensor(config.input_scale, dtype=torch.float32).view(1, 3, 1, 1)


# Every layer of the net by its paper name, in forward's order (conv6 and avgpool only where the config
# adds them); `AlexNet.features` reads any of them. A conv or fc layer's nonlinearity is its own module:
ACTIVATION = {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3", "conv4": "relu4", "conv5": "relu5",
              "conv6": "relu_conv6", "fc6": "relu6", "fc7": "relu7"}
LAYER_NAMES = ("conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4",
               "relu4", "conv5", "relu5", "pool5", "avgpool", "conv6", "relu_conv6", "fc6", "relu6", "drop6", "fc7",
               "relu7", "drop7", "fc8")
# §3.2: the layers whose kernels or neurons the two GPUs split (conv1-conv5, fc6, fc7, and the ReLUs,
# normalisations, pools and dropouts that act on their halves); conv6 and fc8 are not split.
TOWER_LAYERS = frozenset(LAYER_NAMES[: LAYER_NAMES.index("pool5") + 1]
                         + ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7"))


class AlexNet(nn.Module):
    """§3.5, Fig. 2. `forward` gives the logits of the 1000-way softmax; `embed` the 4096-d last hidden
    layer (fc7 after its ReLU, §6.1); `forward_features` the last conv stage's pooled maps.

    Every layer is a named module in the paper's order (conv1, relu1, norm1, pool1, conv2, ..., fc8),
    and none works in place, so a forward hook sees each layer's own output: conv3's hook its values
    before the ReLU, relu3's after. The net traces with torch.fx and compiles whole. The memory format
    is the caller's: channels_last (`net.to(memory_format=torch.channels_last)` and the same for the
    input) is what the trainer and the commands use on the CPU and on CUDA (max pooling 3-6x and the
    convolutions up to 1.2x faster on the CPU, bench/docs/peer.md)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        config = dataclasses.replace(config or ModelConfig(), **overrides)
        self.config = config
        sizes = map_sizes(config)
        if min(sizes.values()) < 1:
            small = next(name for name, v in sizes.items() if v < 1)
            raise ValueError(
                f"input size {config.input_size} is too small for this net: the {small} maps would be empty "
                f"({', '.join(f'{k} {v}' for k, v in sizes.items())}); use at least 63 for the paper's geometry"
            )
        if config.remove_conv not in (0, 3, 4, 5):
            raise ValueError(f"model.remove_conv must be 0 (none), 3, 4 or 5, got {config.remove_conv}")
        if config.towers not in (1, 2):
            raise ValueError(f"model.towers must be 1 or 2, got {config.towers}")
        self.map_sizes = sizes
        spec = layer_spec(config)
        t = config.towers
        z, s = config.pool_size, config.pool_stride

        def act(present: bool = True) -> nn.Module | None:  # §3.1: ReLU (tanh for Fig. 1); None with no layer
            return {"relu": nn.ReLU, "tanh": nn.Tanh}[config.nonlinearity]() if present else None

        def norm() -> nn.Module:
            if not config.lrn:
                return nn.Identity()
            alpha = config.lrn_alpha / config.lrn_size if config.lrn_alpha_over_n else config.lrn_alpha
            groups = t if config.lrn_within_towers else 1
            return LocalResponseNorm(config.lrn_size, alpha, config.lrn_beta, config.lrn_k, groups)

        # Shapes below are the paper's net's; `layer_spec` gives every layer's sizes and §3.5's reasons.
        self.conv1 = conv_layer(spec["conv1"])  # (B, 96, 55, 55): 11x11x3, stride 4
        self.relu1 = act()
        self.norm1 = norm()  # §3.3: after the ReLU
        self.pool1 = nn.MaxPool2d(z, s, ceil_mode=config.pool_ceil)  # (B, 96, 27, 27)
        self.conv2 = conv_layer(spec["conv2"])  # (B, 256, 27, 27): 5x5x48, within each tower
        self.relu2 = act()
        self.norm2 = norm()
        self.pool2 = nn.MaxPool2d(z, s, ceil_mode=config.pool_ceil)  # (B, 256, 13, 13)
        self.conv3 = conv_layer(spec["conv3"])  # (B, 384, 13, 13): 3x3x256, across the towers
        self.relu3 = act(self.conv3 is not None)
        self.conv4 = conv_layer(spec["conv4"])  # (B, 384, 13, 13): 3x3x192, within each tower
        self.relu4 = act(self.conv4 is not None)
        self.conv5 = conv_layer(spec["conv5"])  # (B, 256, 13, 13): 3x3x192, within each tower
        self.relu5 = act(self.conv5 is not None)
        self.pool5 = nn.MaxPool2d(z, s, ceil_mode=config.pool_ceil)  # (B, 256, 6, 6)
        self.avgpool = nn.AdaptiveAvgPool2d(config.adaptive_pool) if config.adaptive_pool else None  # torchvision's
        self.register_buffer("input_scale", _input_scale(config), persistent=False)  # config, not state dict
        self.conv6 = conv_layer(spec["conv6"])  # (B, 256, 6, 6), §6 only
        self.relu_conv6 = act(self.conv6 is not None)
        self.feature_dim = spec["fc6"][0]  # 9216 for the paper's net
        self.fc6 = nn.Linear(*spec["fc6"])  # (B, 4096)
        self.relu6 = act()
        self.drop6 = PaperDropout(config.dropout, config.dropout_style == "inverted")
        self.fc7 = nn.Linear(*spec["fc7"])  # (B, 4096)
        self.relu7 = act()
        self.drop7 = PaperDropout(config.dropout, config.dropout_style == "inverted")
        self.fc8 = nn.Linear(*spec["fc8"])  # (B, 1000), into the softmax
        init_paper_(self, config.init_std, config.init_bias, config.init_scheme)
        # What its inputs need (§2), set by `set_preprocessing` and by alexnet.model.checkpoint.load:
        self.register_buffer("input_mean", None)  # (S, S, 3) RGB mean image, 0..255; in the state dict once set
        self.classes: list[str] | None = None  # WordNet ids (or folder names), label i = classes[i]
        self.class_names: list[str] | None = None
        self.data_config = DataConfig()  # the test views of the run (reflections, the mean's alignment)
        self.checkpoint: str | None = None  # the file `load` read it from
        self.variant: str | None = None  # its name in VARIANTS (create_model), or its checkpoint's

    def forward_features(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        x = self.pool1(self.norm1(self.relu1(self.conv1(x))))
        x = self.pool2(self.norm2(self.relu2(self.conv2(x))))
        if self.conv3 is not None:
            x = self.relu3(self.conv3(x))
        if self.conv4 is not None:
            x = self.relu4(self.conv4(x))
        if self.conv5 is not None:
            x = self.relu5(self.conv5(x))
        x = self.pool5(x)
        if self.avgpool is not None:
            x = self.avgpool(x)
        if self.conv6 is not None:
            x = self.relu_conv6(self.conv6(x))
        return x

    def embed(self, x: Tensor) -> Tensor:
        """The last hidden layer (fc7 after ReLU): §6.1's feature vector for retrieval."""
        x = torch.flatten(self.forward_features(x), 1)
        x = self.drop6(self.relu6(self.fc6(x)))
        return self.relu7(self.fc7(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc8(self.drop7(self.embed(x)))

    # -- what its inputs need (§2) ----------------------------------------------------------------

    @property
    def image_size(self) -> int | None:
        """S: an image's shorter side goes to S and its central S x S square is kept (§2) before the
        input_size patches are cut; None while the net has no mean image."""
        return None if self.input_mean is None else int(self.input_mean.shape[0])

    def set_preprocessing(self, mean, image_size: int | None = None) -> AlexNet:
        """Give the net the mean its inputs have subtracted: an (S, S, 3) mean image (§2), or one value per
        RGB channel (3,) or one number, spread over an image_size square (default: input_size * 256/224,
        the paper's ratio). `transforms()` subtracts it; `load` sets the one a checkpoint carries."""
        m = torch.as_tensor(mean, dtype=torch.float32)
        if m.dim() == 3:
            if m.shape[2] != 3 or m.shape[0] != m.shape[1] or image_size not in (None, m.shape[0]):
                raise UserError(f"a mean image must be S x S x 3 RGB (S = image_size), got {tuple(m.shape)}")
        elif m.numel() in (1, 3):
            size = image_size or round(self.config.input_size * 256 / 224)
            m = m.reshape(1, 1, -1).expand(size, size, 3)
        else:
            raise UserError(f"the mean is an (S, S, 3) image, 3 channel values or one number, not {tuple(m.shape)}")
        if m.shape[0] < self.config.input_size:
            raise UserError(f"image size {m.shape[0]} is smaller than the net's input ({self.config.input_size})")
        if not torch.isfinite(m).all():
            raise UserError("the mean holds NaN or infinite values")
        self.input_mean = m.contiguous().to(self.fc8.weight.device)
        return self

    def transforms(self, views: int = 1):
        """The callable that makes this net's input from an image (a PIL image, a path, an H x W x 3 uint8
        array): §2's S x S square (shorter side to S, centre crop), then the centre patch (3, c, c) or §4.1's
        ten patches (10, 3, c, c), minus the mean image: what `alexnet predict` feeds the net, to the bit."""
        from alexnet.data.transforms import Preprocess  # the pixels of §2 and §4.1 live in data/, below

        if self.input_mean is None:
            raise UserError("this net has no mean image (a fresh net): load a trained one with alexnet.load, or "
                            "give it one with net.set_preprocessing(mean)")
        return Preprocess(self.input_mean, self.config.input_size, views, self.data_config)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """The mean image travels in the state dict: one there is taken whatever its size (a fresh net has
        none), and a state dict without one (every checkpoint before it travelled) keeps the net's."""
        key = prefix + "input_mean"
        if isinstance(state_dict.get(key), Tensor):
            self.input_mean = state_dict[key].detach().to(self.fc8.weight.device, torch.float32).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)

    # -- every layer by its paper name ------------------------------------------------------------

    def stages(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every layer that computes, in forward's order; the maps are flattened
        between the last conv stage and fc6."""
        return [(name, getattr(self, name)) for name in LAYER_NAMES if getattr(self, name) is not None]

    def feature_modules(self, layers: str | Iterable[str], relu: str,
                         towers: bool) -> tuple[list[str], dict[str, list[str]]]:
        """The layers asked for (once each, in order) and {module name: those that are its output}."""
        if relu not in ("pre", "post"):
            raise UserError(f"relu must be 'pre' (a conv or fc layer's output before its ReLU) or 'post', got {relu!r}")
        if towers and self.config.towers != 2:
            raise UserError("towers=True splits the two towers of §3.2; this net has one")
        names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
        if not names:
            raise UserError("give at least one layer, e.g. layers=['conv5', 'fc7']")
        wanted: dict[str, list[str]] = {}
        for name in names:
            if name not in LAYER_NAMES:
                raise UserError(f"'{name}' is not a layer of AlexNet; the layers: {', '.join(LAYER_NAMES)}")
            module = ACTIVATION.get(name, name) if relu == "post" else name
            if getattr(self, module) is None:
                raise UserError(f"this net has no {name} (its config removes it or does not add it)")
            wanted.setdefault(module, []).append(name)
        return names, wanted

    def features(self, x: Tensor, layers: str | Iterable[str], relu: str = "post",
                 towers: bool = False) -> dict[str, Tensor]:
        """{layer: output} for an input x as `forward` takes it, as contiguous NCHW (B, C, H, W) or (B, D)
        tensors, in the order asked. A layer is any name of LAYER_NAMES (conv1, relu1, norm1, pool1, ...,
        fc8); a conv or fc layer is read before its ReLU (relu="pre", what a hook on conv3 sees) or after
        (relu="post", relu3's output); fc8 is the logits either way. towers=True splits each layer of the
        two towers (TOWER_LAYERS) into "<layer>.tower0" and "<layer>.tower1", the halves each GPU held
        (§3.2). Only the layers up to the last one asked for run; the caller's grad and eval modes apply."""
        names, wanted = self.feature_modules(layers, relu, towers)
        if self.input_scale is not None:
            x = x * self.input_scale
        found: dict[str, Tensor] = {}
        for name, module in self.stages():
            if name == "fc6":
                x = torch.flatten(x, 1)
            x = module(x)
            found.update((layer, x) for layer in wanted.get(name, ()))
            if len(found) == len(names):
                break
        out: dict[str, Tensor] = {}  # contiguous: CPU activations of a channels_last net are NHWC in memory
        for layer in names:
            if towers and layer in TOWER_LAYERS:
                out[f"{layer}.tower0"], out[f"{layer}.tower1"] = (t.contiguous() for t in found[layer].chunk(2, 1))
            else:
                out[layer] = found[layer].contiguous()
        return out


@torch.no_grad()
def init_paper_(model: nn.Module, std: float = 0.01, bias: float = 1.0, scheme: str = "paper") -> None:
    """§5: every weight ~ N(0, std^2); biases of conv2, conv4, conv5 and the fully connected hidden
    layers (fc6, fc7) set to `bias` ("provides the ReLUs with positive inputs"), all others to 0.
    The extra conv6 of §6 counts among the later conv layers and also gets `bias`.

    scheme="scaled" keeps conv1 (which sees 0..255 pixels) and fc8 (the logits) at `std` and draws
    the layers between from N(0, 1/fan_in) (LeCun et al. 1998): with std=0.01 everywhere the
    input-dependent part of the activations shrinks by fan_in*std^2 per layer (fc7's is 0.7% of its
    bias-driven part in the paper net), and small nets sit at loss ln(classes) for thousands of steps.
    1/fan_in rather than He's 2/fan_in: conv1's 0.01 on 0..255 pixels gives maps of std ~11 (the
    scale §3.3's LRN constants expect); He's gain keeps that scale to fc7 and the small net then
    collapsed without LRN or dropout at lr 0.01 (README), 1/fan_in lets it shrink gently."""
    ones = {"conv2", "conv4", "conv5", "conv6", "fc6", "fc7"}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            short = name.split(".")[-1]
            fan_in = module.weight[0].numel()
            s = std if scheme == "paper" or short in ("conv1", "fc8") else math.sqrt(1.0 / fan_in)
            nn.init.normal_(module.weight, 0.0, s)
            nn.init.constant_(module.bias, bias if short in ones else 0.0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: AlexNet) -> int:
    """Multiply-adds of one forward pass of one image through the conv and fc layers."""
    total = 0
    sizes = model.map_sizes
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6"):
        conv = getattr(model, name)
        if conv is not None:
            side = sizes[name]
            total += conv.weight.numel() * side * side
    for name in ("fc6", "fc7", "fc8"):
        total += getattr(model, name).weight.numel()
    return total


def list_models() -> list[str]:
    """The registered variants `create_model` builds: ['paper', 'one-tower', 'six-conv', 'small', 'tiny']."""
    return list(VARIANTS)


def create_model(name: str = "paper", **overrides) -> AlexNet:
    """`create_model("small", num_classes=10)`: a registered variant (`list_models()`) with some of its
    ModelConfig settings changed, initialised as §5 says. An unknown name or setting is one UserError."""
    config = variant_config(name)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise UserError(f"'{unknown[0]}' is not a model setting; the settings: "
                        f"{', '.join(f.name for f in dataclasses.fields(ModelConfig))}")
    try:
        net = AlexNet(config, **overrides)
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None
    net.variant = name
    return net
