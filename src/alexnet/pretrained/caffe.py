"""Caffe's bvlc_alexnet (deploy.prototxt + .caffemodel [+ imagenet_mean.binaryproto]) as a checkpoint of
this project, read without Caffe.

The prototxt's layers must be §3.5's in Caffe's order (conv-ReLU-LRN-pool twice, conv3-5 with ReLUs,
pool5, fc6/fc7 with ReLU and dropout, fc8), one chain, and every parameter must be one this net can
hold; each convention becomes a ModelConfig value:

- input 227 with no conv1 padding (`conv1_padding`, `input_size`), pooled sizes rounded up
  (`pool_ceil`; 55-27-13-6 either way for 227);
- LRN with Caffe's defaults k = 1 and alpha divided by n (`lrn_k`, `lrn_alpha_over_n`), its window
  across all maps of the layer (`lrn_within_towers = False`): Caffe's LRN knows nothing of groups;
- `group: 2` in conv2/4/5 = `towers = 2`; Caffe's dropout is inverted (`dropout_style`);
- BGR input: conv1's kernels are reordered to RGB here (a permutation of its input channels, exact),
  and the BGR mean image is flipped to RGB, so the pipeline stays RGB and Fig. 3 shows true colours.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf import message as pb_message
from google.protobuf import text_format

from alexnet.config import ModelConfig
from alexnet.errors import UserError
from alexnet.pretrained.caffe_proto import V1_TYPES, parse_binary, parse_text
from alexnet.pretrained.classes import class_list
from alexnet.pretrained.common import build_payload, checked_model, read_bytes, state_shapes

# Caffe's ImageNet mean per channel (models/bvlc_reference_caffenet: mean_value 104, 117, 123, in BGR).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGE_SIZE = 256  # Caffe's ImageNet images and mean are 256x256; the net sees their centre 227
MAX_BLOB_AXES = 4  # num, channels, height, width: every blob of an AlexNet (Caffe allows 32)
# The largest input side imported. bvlc_alexnet's is 227; at 4096 fc6 alone would be 4096 x 256 x 127^2
# = 17 G weights, so no real file is refused, and a crafted 2^63-1 never reaches the geometry.
MAX_INPUT_SIZE = 4096
CONVS, FCS = ("conv1", "conv2", "conv3", "conv4", "conv5"), ("fc6", "fc7", "fc8")
# §3.5 in Caffe's layer types, bvlc_alexnet's order (CaffeNet pools before it normalises: refused).
SEQUENCE = (("Convolution", "conv1"), ("ReLU", ""), ("LRN", "norm1"), ("Pooling", "pool1"),
            ("Convolution", "conv2"), ("ReLU", ""), ("LRN", "norm2"), ("Pooling", "pool2"),
            ("Convolution", "conv3"), ("ReLU", ""), ("Convolution", "conv4"), ("ReLU", ""),
            ("Convolution", "conv5"), ("ReLU", ""), ("Pooling", "pool5"),
            ("InnerProduct", "fc6"), ("ReLU", ""), ("Dropout", "drop6"),
            ("InnerProduct", "fc7"), ("ReLU", ""), ("Dropout", "drop7"), ("InnerProduct", "fc8"))
SKIPPED = {"Input", "Data", "ImageData", "MemoryData", "Softmax", "SoftmaxWithLoss", "Accuracy", "Silence"}
PARAM_FIELD = {"Convolution": "convolution_param", "LRN": "lrn_param", "Pooling": "pooling_param",
               "InnerProduct": "inner_product_param", "Dropout": "dropout_param", "ReLU": "relu_param"}


@dataclass
class Layer:
    """One layer of either form of a Caffe net, with its type as the new form's string."""

    name: str
    type: str
    bottom: list[str]
    top: list[str]
    message: object  # the LayerParameter or V1LayerParameter

    @property
    def param(self):
        return getattr(self.message, PARAM_FIELD[self.type])

    @property
    def blobs(self):
        return self.message.blobs


def net_layers(net) -> list[Layer]:
    if len(net.layer) and len(net.layers):
        raise UserError("the net mixes Caffe's new `layer` and old `layers` forms")
    if len(net.layers):
        enum = net.layers[0].DESCRIPTOR.fields_by_name["type"].enum_type
        return [Layer(m.name, V1_TYPES.get(enum.values_by_number[m.type].name, enum.values_by_number[m.type].name),
                      list(m.bottom), list(m.top), m) for m in net.layers]
    return [Layer(m.name, m.type, list(m.bottom), list(m.top), m) for m in net.layer]


def input_size(net, layers: list[Layer], where: str) -> int:
    """The side of the net's declared input (Input layer, input_shape or input_dim)."""
    dims: list[int] = []
    inputs = [layer for layer in layers if layer.type == "Input"]
    if inputs and len(inputs[0].message.input_param.shape):
        dims = list(inputs[0].message.input_param.shape[0].dim)
    elif len(net.input_shape):
        dims = list(net.input_shape[0].dim)
    elif len(net.input_dim) >= 4:
        dims = list(net.input_dim[:4])
    if not dims:
        raise UserError(f"{where} declares no input size (give the deploy.prototxt, which does)")
    if len(dims) != 4 or dims[1] != 3 or dims[2] != dims[3]:
        raise UserError(f"{where}: input {'x'.join(map(str, dims))} is not square 3-channel images")
    if not 1 <= dims[2] <= MAX_INPUT_SIZE:
        raise UserError(f"{where}: input size {dims[2]} is not between 1 and {MAX_INPUT_SIZE} (bvlc_alexnet's is 227)")
    return int(dims[2])


def _only(values, default: int, what: str) -> int:
    values = list(values)
    if len(values) > 1 and len(set(values)) > 1:
        raise UserError(f"{what}: different values per axis ({values}) do not map to square kernels")
    return int(values[0]) if values else default


def _conv_geometry(layer: Layer) -> tuple[int, int, int, int, int]:
    """(kernels, kernel size, stride, padding, groups) of a Convolution layer."""
    p, what = layer.param, f"layer {layer.name}"
    if p.HasField("kernel_h") or p.HasField("stride_h") or p.pad_h or p.pad_w:
        if not (p.kernel_h == p.kernel_w and p.stride_h == p.stride_w and p.pad_h == p.pad_w):
            raise UserError(f"{what}: non-square kernel, stride or padding")
    kernel = p.kernel_h if p.HasField("kernel_h") else _only(p.kernel_size, 0, what)
    stride = p.stride_h if p.HasField("stride_h") else _only(p.stride, 1, what)
    pad = p.pad_h if p.pad_h else _only(p.pad, 0, what)
    if _only(p.dilation, 1, what) != 1 or not p.bias_term:
        raise UserError(f"{what}: dilation or a missing bias do not map to AlexNet's convolutions")
    return p.num_output, kernel, stride, pad, p.group


def _check_sequence(layers: list[Layer], where: str) -> list[Layer]:
    """The layers that compute (no input, softmax, loss), checked against SEQUENCE and as one chain."""
    body = [layer for layer in layers if layer.type not in SKIPPED]
    for i, (kind, role) in enumerate(SEQUENCE):
        if i >= len(body):
            raise UserError(f"{where} ends after {len(body)} layers; AlexNet continues with {kind} {role}".rstrip())
        if body[i].type != kind:
            raise UserError(f"{where}: layer '{body[i].name}' is {body[i].type} where AlexNet has {kind} "
                            f"{role}; this is another architecture".replace("  ", " "))
        if i and body[i].bottom[:1] != body[i - 1].top[:1]:
            raise UserError(f"{where}: layer '{body[i].name}' does not read '{body[i - 1].name}' (not one chain)")
    if len(body) > len(SEQUENCE):
        raise UserError(f"{where}: layer '{body[len(SEQUENCE)].name}' ({body[len(SEQUENCE)].type}) follows fc8; "
                        f"AlexNet ends there")
    return body


def _decimal(x: float) -> float:
    """A float32 field as the decimal it was written as (1e-4, not 9.99999974738e-05)."""
    return float(str(np.float32(x)))


def model_config(body: list[Layer], size: int, where: str) -> ModelConfig:
    """The ModelConfig that computes what the checked layers compute, or one line saying what differs."""
    convs = [layer for layer in body if layer.type == "Convolution"]
    geometry = [_conv_geometry(layer) for layer in convs]
    shapes = [g[1:3] for g in geometry]
    if shapes != [(11, 4), (5, 1), (3, 1), (3, 1), (3, 1)] or [g[3] for g in geometry[1:]] != [2, 1, 1, 1]:
        raise UserError(f"{where}: conv kernels/strides/padding {[g[1:4] for g in geometry]} are not AlexNet's")
    if any(g[4] < 1 or g[0] % g[4] for g in geometry):  # Caffe's own rule: outputs a multiple of group
        raise UserError(f"{where}: conv num_output {[g[0] for g in geometry]} are not multiples of their groups "
                        f"{[g[4] for g in geometry]}")
    towers = geometry[1][4]
    if [g[4] for g in geometry] != [1, towers, 1, towers, towers] or towers not in (1, 2):
        raise UserError(f"{where}: conv groups {[g[4] for g in geometry]} are not AlexNet's (1, g, 1, g, g), g 1 or 2")
    norms = [layer.param for layer in body if layer.type == "LRN"]
    lrn = {(n.local_size, n.alpha, n.beta, n.k, n.norm_region) for n in norms}
    if len(lrn) != 1 or norms[0].norm_region != 0 or norms[0].local_size % 2 == 0:
        raise UserError(f"{where}: LRN layers differ or are not across channels with an odd window")
    pools = {(p.pool, p.kernel_size, p.stride, p.pad, p.global_pooling, p.round_mode, p.kernel_h, p.stride_h)
             for p in (layer.param for layer in body if layer.type == "Pooling")}
    if len(pools) != 1 or next(iter(pools))[0] != 0 or next(iter(pools))[3:5] != (0, False):
        raise UserError(f"{where}: the pooling layers are not all the same unpadded max pooling")
    pool = next(layer.param for layer in body if layer.type == "Pooling")
    if pool.HasField("kernel_h") or pool.HasField("stride_h"):
        raise UserError(f"{where}: pooling with kernel_h/stride_h does not map; use kernel_size and stride")
    if any(layer.param.negative_slope for layer in body if layer.type == "ReLU"):
        raise UserError(f"{where}: a leaky ReLU (negative_slope) does not map to AlexNet's ReLU")
    drops = {layer.param.dropout_ratio for layer in body if layer.type == "Dropout"}
    fcs = [layer.param for layer in body if layer.type == "InnerProduct"]
    odd_fc = any(f.axis != 1 or f.transpose or not f.bias_term for f in fcs) or fcs[0].num_output != fcs[1].num_output
    if len(drops) != 1 or odd_fc:
        raise UserError(f"{where}: dropout or fully connected layers do not map (unequal ratios, fc6 != fc7 width, "
                        f"transpose, axis or no bias)")
    n = norms[0]
    return ModelConfig(num_classes=fcs[2].num_output, input_size=size, channels=tuple(g[0] for g in geometry),
                       towers=towers, fc_width=fcs[0].num_output, lrn_size=n.local_size, lrn_k=_decimal(n.k),
                       lrn_alpha=_decimal(n.alpha), lrn_beta=_decimal(n.beta), lrn_alpha_over_n=True,
                       lrn_within_towers=False, pool_size=pool.kernel_size, pool_stride=pool.stride,
                       pool_ceil=pool.round_mode == 0, dropout=_decimal(next(iter(drops))), dropout_style="inverted",
                       conv1_padding=geometry[0][3])


def blob_array(blob, where: str) -> np.ndarray:
    """A BlobProto's values in its shape (new `shape`, or the legacy num/channels/height/width), finite
    in float32. The shape is checked against the values the file holds before anything is allocated."""
    dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
    shape = "x".join(map(str, dims)) if len(dims) <= 8 else f"of {len(dims)} axes"
    if len(dims) > MAX_BLOB_AXES or any(d < 0 for d in dims):
        raise UserError(f"{where} has shape {shape}: a blob of AlexNet has at most {MAX_BLOB_AXES} axes, none negative")
    count = math.prod(dims) if dims else 0  # Python integers: no overflow
    stored = blob.double_data if len(blob.double_data) else blob.data
    if len(stored) != count:
        raise UserError(f"{where} holds {len(stored)} values for its shape {shape} ({count}): the file is truncated "
                        f"or damaged")
    with np.errstate(over="ignore"):  # a double beyond float32's range becomes inf, refused just below
        values = np.array(stored, dtype=np.float32)
    bad = values.size - int(np.isfinite(values).sum())
    if bad:
        raise UserError(f"{where} holds {bad:,} NaN or infinite values (or doubles beyond float32's range); refused")
    return values.reshape(dims)


def _fit(values: np.ndarray, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """Legacy 4-d blobs hold fc weights as 1x1xOxI and biases as 1x1x1xO: leading ones do not count."""
    def squeeze(s):
        s = list(s)
        while len(s) > 1 and s[0] == 1:
            s.pop(0)
        return s

    if squeeze(values.shape) != squeeze(shape):
        raise UserError(f"{where} has shape {'x'.join(map(str, values.shape))}; the prototxt's net needs "
                        f"{'x'.join(map(str, shape))}")
    return torch.from_numpy(np.ascontiguousarray(values.reshape(shape)))


def weights_state(body: list[Layer], weights_net, shapes: dict[str, tuple], where: str) -> dict[str, torch.Tensor]:
    """conv1..fc8 from the caffemodel's layers of the same names, in this net's layout."""
    stored = {layer.name: layer for layer in net_layers(weights_net)}
    pairs = list(zip(CONVS + FCS, [b for b in body if b.type in ("Convolution", "InnerProduct")]))
    for ours, layer in pairs:  # every layer present before any is converted: one line names the gap
        found = stored.get(layer.name)
        if found is None or len(found.blobs) == 0:
            raise UserError(f"{where} has no weights for layer '{layer.name}' ({ours})")
        if len(found.blobs) != 2:
            raise UserError(f"{where}: layer '{layer.name}' has {len(found.blobs)} blobs, not weights and biases")
    state = {}
    for ours, layer in pairs:
        for blob, kind in zip(stored[layer.name].blobs, ("weight", "bias")):
            label = f"{where}: {layer.name} {kind}"
            state[f"{ours}.{kind}"] = _fit(blob_array(blob, label), shapes[f"{ours}.{kind}"], label)
    state["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()  # BGR kernels -> RGB kernels
    return state


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """A mean .binaryproto (BlobProto 1x3xHxW, BGR) as an (H, W, 3) RGB image."""
    try:
        blob = parse_binary(read_bytes(path, "mean file"), "BlobProto")
    except pb_message.DecodeError as e:
        raise UserError(f"{path} is not a Caffe BlobProto (.binaryproto): {e}") from None
    values = blob_array(blob, str(path))
    if values.ndim != 4 or values.shape[:2] != (1, 3) or values.shape[2] != values.shape[3]:
        raise UserError(f"{path} holds a {'x'.join(map(str, values.shape))} blob; a mean image is 1x3xSxS")
    return values[0, ::-1].transpose(1, 2, 0).astype(np.float32)


def import_caffe(prototxt: str | os.PathLike, weights: str | os.PathLike, mean: str | os.PathLike | None = None,
                 synsets: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
    """(checkpoint payload, notes for the user) of a Caffe AlexNet."""
    try:
        spec = parse_text(read_bytes(prototxt, "prototxt").decode("utf-8", "replace"))
    except text_format.ParseError as e:
        raise UserError(f"{prototxt} is not a Caffe prototxt: {e}") from None
    except RecursionError:  # protobuf's text parser recurses once per nested message
        raise UserError(f"{prototxt} is not a Caffe prototxt: its messages are nested too deeply") from None
    layers = net_layers(spec)
    body = _check_sequence(layers, str(prototxt))
    config = model_config(body, input_size(spec, layers, str(prototxt)), str(prototxt))
    config = checked_model("caffe-alexnet", config, str(prototxt))  # the config's own rules, before any net is built
    try:
        shapes = state_shapes(config)
    except ValueError as e:
        raise UserError(f"{prototxt}: {e}") from None
    try:
        stored = parse_binary(read_bytes(weights, "weights file"))
    except pb_message.DecodeError as e:
        raise UserError(f"{weights} is not a Caffe model (binary NetParameter): {e}") from None
    state = weights_state(body, stored, shapes, str(weights))
    notes = []
    if mean is not None:
        mean_rgb = read_mean(mean)
    else:
        mean_rgb = np.broadcast_to(np.array(CAFFE_MEAN_BGR[::-1], np.float32), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        notes.append("no --mean: subtracting Caffe's per-channel ImageNet mean (B 104, G 117, R 123) from every "
                     "pixel; give imagenet_mean.binaryproto for the mean image the net was trained with")
    classes, names = class_list(synsets)
    if config.num_classes != len(classes):
        raise UserError(f"{prototxt}: fc8 has {config.num_classes} outputs; the ILSVRC-2012 classes are {len(classes)}")
    source = {"format": "caffe", "prototxt": str(prototxt), "weights": str(weights),
              "mean": str(mean) if mean else "per-channel (104, 117, 123) BGR", "input": "RGB (flipped from BGR)"}
    return build_payload("caffe-alexnet", config, state, mean_rgb, classes, names, source), notes

