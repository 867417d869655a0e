"""The net's shape from its model settings: kernels per conv layer and the side of every layer's maps
(§3.5, Fig. 2). alexnet/config.py's `validate` uses it to refuse, up front, a setting the geometry
cannot build, and model.py to build the layers; it reads a `ModelConfig` without importing config.py
(which imports this module), through the `NetShape` protocol of the fields it reads."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from alexnet.config_text import ConfigError


class NetShape(Protocol):
    """The fields of alexnet.config.ModelConfig that decide the shape."""

    input_size: int
    channels: tuple[int, ...]
    width: float
    towers: int
    pool_size: int
    pool_stride: int
    pool_ceil: bool
    conv1_padding: int
    adaptive_pool: int
    extra_conv: bool


def conv_channels(config: NetShape) -> list[int]:
    """Kernels per conv layer after the width multiplier, each rounded to a multiple of the tower
    count (so each tower gets the same number; never fewer than one per tower)."""
    if len(config.channels) != 5:
        raise ConfigError(f"model.channels needs five kernel counts (conv1..conv5), got {config.channels}")
    t = config.towers
    return [max(t, int(round(c * config.width / t)) * t) for c in config.channels]


def map_sizes(config: NetShape) -> dict[str, int]:
    """Side of every layer's maps for the configured input (Fig. 2: 55-27-27-13-13-13-13-6). conv1
    is 11x11, stride 4, padding model.conv1_padding (model.layer_spec); conv2..conv6 keep the size of
    their input."""
    z, s = config.pool_size, config.pool_stride

    def pooled(n: int) -> int:
        if not config.pool_ceil:
            return (n - z) // s + 1
        out = -(-(n - z) // s) + 1  # Caffe's ceil; torch's ceil_mode drops a window starting past the end
        return out - 1 if (out - 1) * s >= n else out

    sizes = {"input": config.input_size}
    sizes["conv1"] = (config.input_size + 2 * config.conv1_padding - 11) // 4 + 1
    sizes["pool1"] = pooled(sizes["conv1"])
    sizes["conv2"] = sizes["pool1"]
    sizes["pool2"] = pooled(sizes["conv2"])
    sizes["conv3"] = sizes["conv4"] = sizes["conv5"] = sizes["pool2"]
    sizes["pool5"] = pooled(sizes["conv5"])
    if config.adaptive_pool:
        sizes["avgpool"] = config.adaptive_pool
    if config.extra_conv:
        sizes["conv6"] = sizes.get("avgpool", sizes["pool5"])
    return sizes


def smallest_input_size(config: NetShape) -> int:
    """The smallest input whose maps are all non-empty with this pooling (63 for the paper's)."""
    size = 1
    while min(map_sizes(dataclasses.replace(config, input_size=size)).values()) < 1:  # type: ignore[type-var]
        size += 1
    return size
