"""Potentials as torch modules: unary nets on each character image, non-parametric pair tables."""
from __future__ import annotations

import torch
from torch import nn


class UnaryMLP(nn.Module):
    """The paper's unary net: an MLP on the flattened image, ReLU between layers (H1 or H1, H2)."""

    def __init__(self, image_shape: tuple[int, int], hidden: list[int], num_classes: int):
        super().__init__()
        sizes = [image_shape[0] * image_shape[1], *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(n, H, W) -> (n, num_classes) scores."""
        return self.net(images.flatten(1))


class UnaryCNN(nn.Module):
    """A small CNN: (3x3 conv, ReLU, 2x2 max-pool) per channel count, then a linear classifier."""

    def __init__(self, image_shape: tuple[int, int], channels: list[int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        height, width, n_in = image_shape[0], image_shape[1], 1
        for n_out in channels:
            layers += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:     # small images (16x8) run out of room to pool
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            n_in = n_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(n_in * height * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images.unsqueeze(1)).flatten(1))


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
