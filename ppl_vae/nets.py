"""Encoder and decoder networks. Shapes come from the data; nothing assumes 784.

Encoders map ``(..., *input_shape)`` to ``(..., out_dim)`` features (the guide decides what they
mean: ``2·latent_dim`` for a Normal guide, ``latent_dim`` for a point mass). Decoders map
``(..., latent_dim)`` to ``(..., *output_shape)`` where ``output_shape = (k·C, H, W)`` holds ``k``
likelihood parameters per pixel. Any leading dims (batch, vectorised particles) pass through.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "NETS",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "make_networks",
]

#: Name → hidden-layer nonlinearity of the MLPs (``tanh`` is Burda et al.'s 784-200-200-50 net).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}


def _mlp(sizes: Sequence[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flatten the input and apply a fully connected net. ``hidden=()`` gives a linear map."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_dim: int,
        hidden: Sequence[int] = (512, 512),
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.net = _mlp([math.prod(self.input_shape), *hidden, out_dim], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(start_dim=x.dim() - len(self.input_shape)))


class MLPDecoder(nn.Module):
    """Fully connected net from codes to ``output_shape`` (``hidden=()``: linear)."""

    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        hidden: Sequence[int] = (512, 512),
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = _mlp([latent_dim, *hidden, math.prod(self.output_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.output_shape)


def _check_conv_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(
            f"convolutional nets need (C, H, W) images with H and W divisible by 4, got {shape}"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H → H/4) and a fully connected head."""

    def __init__(
        self, input_shape: Sequence[int], out_dim: int, channels: int = 32, hidden: int = 512
    ) -> None:
        super().__init__()
        c, h, w = _check_conv_shape(input_shape)
        self.input_shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 4) * (w // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.input_shape)).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: fully connected, then two stride-2 transposed convs."""

    def __init__(
        self, latent_dim: int, output_shape: Sequence[int], channels: int = 32, hidden: int = 512
    ) -> None:
        super().__init__()
        c, h, w = _check_conv_shape(output_shape)
        self.output_shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * channels * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (2 * channels, h // 4, w // 4)),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, c, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*lead, *self.output_shape)


def _mlp_pair(
    image_shape: Sequence[int],
    latent_dim: int,
    encoder_out: int,
    decoder_shape: Sequence[int],
    hidden: Sequence[int] = (512, 512),
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    return (
        MLPEncoder(image_shape, encoder_out, hidden, act),
        MLPDecoder(latent_dim, decoder_shape, tuple(reversed(hidden)), act),
    )


def _linear_pair(
    image_shape: Sequence[int], latent_dim: int, encoder_out: int, decoder_shape: Sequence[int]
) -> tuple[nn.Module, nn.Module]:
    return MLPEncoder(image_shape, encoder_out, ()), MLPDecoder(latent_dim, decoder_shape, ())


def _conv_pair(
    image_shape: Sequence[int], latent_dim: int, encoder_out: int, decoder_shape: Sequence[int]
) -> tuple[nn.Module, nn.Module]:
    return ConvEncoder(image_shape, encoder_out), ConvDecoder(latent_dim, decoder_shape)


#: Name → ``f(image_shape, latent_dim, encoder_out, decoder_shape) -> (encoder, decoder)``.
NETS: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "mlp": _mlp_pair,
    "conv": _conv_pair,
    "linear": _linear_pair,
}


def make_networks(
    name: str,
    image_shape: Sequence[int],
    latent_dim: int,
    encoder_out: int,
    decoder_shape: Sequence[int],
    **kwargs: object,
) -> tuple[nn.Module, nn.Module]:
    """Build a registered encoder/decoder pair by name."""
    try:
        factory = NETS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETS)}") from None
    return factory(image_shape, latent_dim, encoder_out, decoder_shape, **kwargs)
