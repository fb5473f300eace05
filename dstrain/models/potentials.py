"""Potentials as torch modules: unary nets on each character image, non-parametric pair tables."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _onednn_linear_op():
    """oneDNN's dense linear (x @ w^T + b on ordinary CPU tensors), or None where torch lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()


class _OneDNNLinear(torch.autograd.Function):
    """F.linear whose three matrix products (forward, input and weight gradients) run in oneDNN.

    torch sends float32 matrix products on the CPU to MKL, which was slower than oneDNN on the
    unary MLP's small matrices (bench/results/choices.md).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:   # grad @ weight: a linear with weight^T as its weight
            grad_x = _ONEDNN_LINEAR(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:   # grad^T @ x
            grad_weight = _ONEDNN_LINEAR(grad.t().contiguous(), x.t(), None, "none", [], "")
        if ctx.needs_input_grad[2]:   # False where there is no bias
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) that runs float32 CPU batches in oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32 \
                and self.weight.dtype == torch.float32 and x.dim() == 2:
            return _OneDNNLinear.apply(x.contiguous(), self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class UnaryMLP(nn.Module):
    """The paper's unary net: an MLP on the flattened input, ReLU between layers (H1 or H1, H2).
    `num_classes` 0: no output layer, the net returns its last hidden layer (`out_features`
    wide)."""

    def __init__(self, image_shape: tuple[int, ...], hidden: list[int], num_classes: int):
        super().__init__()
        sizes = [int(np.prod(image_shape)), *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [Linear(n_in, n_out), nn.ReLU()]
        if num_classes:
            layers.append(Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)
        self.out_features = num_classes or sizes[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(n, H, W) -> (n, out_features): the class scores, or the last hidden layer."""
        return self.net(images.flatten(1))


class UnaryCNN(nn.Module):
    """A small CNN: (3x3 conv, ReLU, 2x2 max-pool) per channel count, then a linear classifier.
    `image_shape`: (H, W) grey images or (C, H, W).  `num_classes` 0: no classifier, the net
    returns the flattened conv features (`out_features` wide)."""

    def __init__(self, image_shape: tuple[int, ...], channels: list[int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        self.grey = len(image_shape) == 2
        n_in, height, width = (1, *image_shape) if self.grey else image_shape
        for n_out in channels:
            layers += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:     # small images (16x8) run out of room to pool
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            n_in = n_out
        self.features = nn.Sequential(*layers)
        flat = n_in * height * width
        self.classifier = Linear(flat, num_classes) if num_classes else nn.Identity()
        self.out_features = num_classes or flat

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images.unsqueeze(1) if self.grey else images).flatten(1))


class PairwiseTables(nn.Module):
    """Non-parametric pair potentials for edges at distance 1..order of a chain.

    `shared`: one (C, C) table per distance; otherwise one per edge position, (max_length - d, C, C).
    Zero at start, so a joint model begins as the unary model.
    """

    def __init__(self, num_classes: int, order: int, max_length: int, shared: bool = True):
        super().__init__()
        self.order, self.shared = order, shared
        self.tables = nn.ParameterList()
        for d in range(1, order + 1):
            shape = (num_classes, num_classes) if shared else (max(max_length - d, 0), num_classes, num_classes)
            self.tables.append(nn.Parameter(torch.zeros(shape)))
