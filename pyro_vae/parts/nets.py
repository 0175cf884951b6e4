"""Encoder and decoder networks: plain ``torch.nn.Module``s that know nothing of Pyro.

Contract: an encoder maps ``x: (*batch, *event_shape)`` to ``(*batch, out_features)``;
a decoder maps ``z: (*batch, latent_dim)`` to ``(*batch, out_features)``. Any leading
batch dimensions (particles, chains, data) pass through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.parts.options import Sizes
from pyro_vae.parts.registry import ARCHS, register_arch


class GatedDense(nn.Module):
    """A gated hidden layer: h = (W x + b) * sigmoid(V x + c), (*batch, a) -> (*batch, b).

    Dauphin et al. (2017)'s gating as the element-wise nonlinearity, as Tomczak & Welling
    (2018, "VAE with a VampPrior") use in every hidden layer.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def _plain(activation: type[nn.Module]) -> Callable[[int, int], list[nn.Module]]:
    return lambda a, b: [nn.Linear(a, b), activation()]


#: Hidden layers by the name an ``activation`` option takes: ``(in, out)`` -> the modules of
#: one hidden layer. Plain ones are ``Linear`` then the nonlinearity (two modules, so a net's
#: layout and state-dict keys are those of ``nn.Sequential(Linear, act, Linear, act, ...)``).
ACTIVATIONS: dict[str, Callable[[int, int], list[nn.Module]]] = {
    "softplus": _plain(nn.Softplus),
    "tanh": _plain(nn.Tanh),
    "relu": _plain(nn.ReLU),
    "gated": lambda a, b: [GatedDense(a, b)],
}


def check_activation(activation: str) -> None:
    """Refuse an activation name that is not in ``ACTIVATIONS``."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")


def hidden_layers(in_features: int, hidden: Sequence[int], activation: str) -> list[nn.Module]:
    """The hidden layers of an MLP: (*batch, in_features) -> (*batch, hidden[-1])."""
    check_activation(activation)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += ACTIVATIONS[activation](width, int(h))
        width = int(h)
    return layers


def _mlp(
    in_features: int, hidden: Sequence[int], out_features: int, activation: str = "softplus"
) -> nn.Sequential:
    width = int(hidden[-1]) if len(hidden) else in_features
    layers = hidden_layers(in_features, hidden, activation)
    return nn.Sequential(*layers, nn.Linear(width, out_features))


class MLPEncoder(nn.Module):
    """Fully connected encoder.

    x: (*batch, *event_shape) -> (*batch, out_features). Event dimensions are flattened.
    ``activation`` names the hidden layers (``ACTIVATIONS``).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        out_features: int,
        hidden: Sequence[int] = (256, 128),
        activation: str = "softplus",
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.net = _mlp(math.prod(self.event_shape), hidden, out_features, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        return self.net(x.reshape(*batch, -1))


class MLPDecoder(nn.Module):
    """Fully connected decoder.

    z: (*batch, latent_dim) -> (*batch, out_features). ``activation`` names the hidden
    layers (``ACTIVATIONS``).
    """

    def __init__(
        self,
        latent_dim: int,
        out_features: int,
        hidden: Sequence[int] = (128, 256),
        activation: str = "softplus",
    ):
        super().__init__()
        self.net = _mlp(latent_dim, hidden, out_features, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from (C, H, W) or (H, W) (one channel)."""
    shape = tuple(int(s) for s in event_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"conv nets need images shaped (C, H, W) or (H, W), got {shape}")


def _downsampled(size: int, layers: int) -> list[int]:
    """Spatial sizes after each stride-2, kernel-3, padding-1 conv: s -> ceil(s / 2)."""
    sizes = [size]
    for _ in range(layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Convolutional encoder for images of any channel count and size.

    x: (*batch, *event_shape) -> (*batch, out_features), event_shape (C, H, W) or (H, W).
    Stride-2 3x3 convolutions (each halves H and W, rounding up), then a linear head.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        c, h, w = _image_shape(self.event_shape)
        self.image_shape = (c, h, w)
        layers: list[nn.Module] = []
        width = c
        for ch in channels:
            layers += [nn.Conv2d(width, ch, 3, stride=2, padding=1), nn.Softplus()]
            width = ch
        self.convs = nn.Sequential(*layers)
        hs, ws = _downsampled(h, len(channels)), _downsampled(w, len(channels))
        self.head = _mlp(width * hs[-1] * ws[-1], (hidden,), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        y = self.convs(x.reshape(-1, *self.image_shape))
        return self.head(y.flatten(1)).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Convolutional decoder: z -> a linear layer -> stride-2 transposed convs -> crop.

    z: (*batch, latent_dim) -> (*batch, num_params * prod(event_shape)), laid out as (num_params, C,
    H, W) per point, as the VAE reshapes it. Leading dims are flattened for the convolutions and
    restored after. Mirrors [`ConvEncoder`][pyro_vae.parts.nets.ConvEncoder]'s spatial sizes.
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        num_params: int = 1,
        channels: Sequence[int] = (64, 32),
        hidden: int = 256,
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        c, h, w = _image_shape(self.event_shape)
        self.out_shape = (num_params * c, h, w)
        n = len(channels)
        self.start = (channels[0], _downsampled(h, n)[-1], _downsampled(w, n)[-1])
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Softplus(),
            nn.Linear(hidden, channels[0] * self.start[1] * self.start[2]),
            nn.Softplus(),
        )
        layers: list[nn.Module] = []
        widths = list(channels) + [channels[-1]]
        for i in range(n):
            # kernel 4, stride 2, padding 1 doubles H and W exactly.
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1), nn.Softplus()]
        self.deconvs = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels[-1], self.out_shape[0], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        y = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        y = self.deconvs(y)[..., : self.out_shape[1], : self.out_shape[2]]
        return self.out(y).reshape(*batch, -1)


class Nets:
    """An encoder/decoder pair for one data shape (an ``arch``): what the VAE's heads need.

    ``encoder(out_features)`` maps ``x: (*batch, *event_shape)`` to ``(*batch, out_features)``
    (the posterior family's parameters); ``decoder(num_params)`` maps
    ``z: (*batch, latent_dim)`` to ``(*batch, num_params * prod(event_shape))``, laid out as
    ``(num_params, *event_shape)`` per point (the likelihood's parameters).
    """

    def __init__(self, event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)

    def encoder(self, out_features: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder(self, num_params: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError


#: Largest network a config may ask for (weights of one MLP), refused before allocating.
MAX_PARAMETERS = 500_000_000


@register_arch("mlp")
class MLPNets(Nets):
    """Fully connected nets: the encoder has ``hidden`` widths, the decoder mirrors them;
    ``activation`` names the hidden layers' nonlinearity (``ACTIVATIONS``: ``softplus``,
    ``tanh``, ``relu`` or ``gated``)."""

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        activation: str = "softplus",
    ):
        super().__init__(event_shape, latent_dim, hidden)
        self.activation = activation

    @classmethod
    def check_options(
        cls, options: dict, event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]
    ) -> None:
        """Refuse an unknown activation, and sizes whose weights could not be allocated
        (before trying for minutes)."""
        check_activation(options.get("activation", "softplus"))
        widths = [math.prod(event_shape), *hidden, latent_dim]
        count = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        if count > MAX_PARAMETERS:
            raise ConfigError(
                f"an encoder for data of shape {tuple(event_shape)} with hidden sizes "
                f"{list(hidden)} and latent_dim {latent_dim} would hold about {count:.2g} "
                f"weights (limit {MAX_PARAMETERS:.0e}); choose smaller sizes"
            )

    def encoder(self, out_features: int) -> nn.Module:
        return MLPEncoder(self.event_shape, out_features, self.hidden, self.activation)

    def decoder(self, num_params: int) -> nn.Module:
        n_out = num_params * math.prod(self.event_shape)
        return MLPDecoder(self.latent_dim, n_out, tuple(reversed(self.hidden)), self.activation)


@register_arch("conv")
class ConvNets(Nets):
    """Convolutional nets for images (C, H, W) or (H, W): ``channels`` per encoder layer
    (the decoder mirrors them), one dense layer of ``hidden[0]`` units at the bottleneck.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        channels: Sizes = (32, 64),
    ):
        super().__init__(event_shape, latent_dim, hidden)
        self.channels = tuple(int(c) for c in channels)

    @classmethod
    def check_options(cls, options: dict, event_shape: Sequence[int], **shared: object) -> None:
        """Refuse data that are not images."""
        if len(tuple(event_shape)) not in (2, 3):
            raise ConfigError(
                f"arch 'conv' needs images shaped (C, H, W) or (H, W), but data points have "
                f"shape {tuple(event_shape)}; use --arch mlp"
            )

    def encoder(self, out_features: int) -> nn.Module:
        return ConvEncoder(self.event_shape, out_features, self.channels, self.hidden[0])

    def decoder(self, num_params: int) -> nn.Module:
        return ConvDecoder(
            self.latent_dim,
            self.event_shape,
            num_params,
            tuple(reversed(self.channels)),
            self.hidden[0],
        )


__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "GatedDense",
    "check_activation",
    "hidden_layers",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "Nets",
    "MLPNets",
    "ConvNets",
]
