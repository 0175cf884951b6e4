"""Encoder and decoder networks: plain ``torch.nn.Module``s that know nothing of Pyro.

Contract: an encoder maps ``x: (*batch, *event_shape)`` to ``(*batch, out_features)``;
a decoder maps ``z: (*batch, latent_dim)`` to ``(*batch, out_features)``. Any leading
batch dimensions (particles, chains, data) pass through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Softplus()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Fully connected encoder.

    x: (*batch, *event_shape) -> (*batch, out_features). Event dimensions are flattened.
    """

    def __init__(
        self, event_shape: Sequence[int], out_features: int, hidden: Sequence[int] = (256, 128)
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.net = _mlp(math.prod(self.event_shape), hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        return self.net(x.reshape(*batch, -1))


class MLPDecoder(nn.Module):
    """Fully connected decoder.

    z: (*batch, latent_dim) -> (*batch, out_features).
    """

    def __init__(self, latent_dim: int, out_features: int, hidden: Sequence[int] = (128, 256)):
        super().__init__()
        self.net = _mlp(latent_dim, hidden, out_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
