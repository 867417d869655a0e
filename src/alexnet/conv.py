"""The net's convolutions: nn.Conv2d, with one measured CPU exception in the backward pass.

oneDNN computes the weight gradient of conv1 (96 kernels 11x11x3, stride 4, on 224x224 images) 2.4x
slower per image at the paper's batch of 128 than at 96 (float32, this project's Xeon, 2 threads:
2.17 ms an image against 0.92; 0.85-0.92 at 32-96), a switch in its choice of algorithm once the
layer's output passes ~30 M values a batch (96 kernels: between 96 and 112 images; torchvision's 64
kernels: between 128 and 256). bf16 shows no such step (bench/conv.py), nor conv2-conv5 (a per-layer
timing at batch 64 and 128, bench/README.md). So where the input needs no gradient (conv1: its
input is the images), on the CPU, in float32, training, with an output over SLICE_ABOVE_OUTPUTS
values, the forward pass is one convolution as always and the weight and bias gradients are summed
over slices of WEIGHT_GRADIENT_BATCH images: 1.02 ms an image at 128, a paper-net training step ~5%
faster. Below that size slices measured level or slower (the `small` and `tiny` nets' conv1), so
everywhere else (smaller layers, CUDA, bf16 autocast, a layer whose input needs a gradient, traced,
compiled or exported graphs) it is exactly nn.Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from alexnet.runtime import capturing_graph

WEIGHT_GRADIENT_BATCH = 64
SLICE_ABOVE_OUTPUTS = 30_000_000  # between 27.9 M (96 x 96 maps of 55x55: no step) and 32.5 M (112 images: step)
_convolution_backward = torch.ops.aten.convolution_backward


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) whose weight gradient on the CPU is summed over
    slices of the batch where that is measured faster (module docstring)."""

    def _outputs(self, x: Tensor) -> int:
        """How many values this layer's output holds for x."""
        side = [(x.shape[2 + d] + 2 * self.padding[d] - self.dilation[d] * (self.kernel_size[d] - 1) - 1)
                // self.stride[d] + 1 for d in (0, 1)]
        return x.shape[0] * self.out_channels * side[0] * side[1]

    def _sliced(self, x: Tensor) -> bool:
        """Whether this call takes its weight gradient in slices (module docstring)."""
        return (x.device.type == "cpu" and x.dim() == 4 and x.shape[0] > WEIGHT_GRADIENT_BATCH
                and not x.requires_grad and self.weight.requires_grad and torch.is_grad_enabled()
                and x.dtype == self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple) and type(x) is Tensor
                and self._outputs(x) > SLICE_ABOVE_OUTPUTS and not capturing_graph())

    def forward(self, x: Tensor) -> Tensor:
        if self._sliced(x):
            return _WeightGradientInSlices.apply(x, self.weight, self.bias, self.stride, self.padding,
                                                 self.dilation, self.groups)
        return super().forward(x)


class _WeightGradientInSlices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad = grad.contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                               and not x.is_contiguous() else torch.contiguous_format)
        grad_weight = grad_bias = None
        for first in range(0, x.shape[0], WEIGHT_GRADIENT_BATCH):
            part = slice(first, first + WEIGHT_GRADIENT_BATCH)
            _, gw, gb = _convolution_backward(
                grad[part], x[part], weight, [weight.shape[0]] if ctx.has_bias else None, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, [False, True, ctx.has_bias])
            grad_weight = gw if grad_weight is None else grad_weight.add_(gw)
            if ctx.has_bias:
                grad_bias = gb if grad_bias is None else grad_bias.add_(gb)
        return None, grad_weight, grad_bias, None, None, None, None
