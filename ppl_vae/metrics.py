"""Image metrics, defined once: batched reconstructions, MSE, PSNR, bits per dimension.

Everything here works for any object with ``reconstruct(x, x_in)`` (and ``encode``) — the
library's :class:`~ppl_vae.model.VAE` and :class:`~ppl_vae.pca.PCA` — and runs in batches
without gradients, so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "bits_per_dim",
    "eval_mode",
    "map_batches",
    "psnr",
    "reconstruction_error",
    "reconstruction_psnr",
]


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model.eval()`` for the block (if it has one), then back to the mode it was in."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def map_batches(
    fn: Callable[..., torch.Tensor], *xs: torch.Tensor | None, batch_size: int = 1000
) -> list[torch.Tensor]:
    """``fn`` over aligned batches of ``xs`` (a None stays None), without gradients."""
    n = next(x for x in xs if x is not None).shape[0]
    for x in xs:
        if x is not None and x.shape[0] != n:
            raise ValueError(
                f"inputs differ in length: {[None if t is None else len(t) for t in xs]}"
            )
    return [
        fn(*(None if x is None else x[start : start + batch_size] for x in xs))
        for start in range(0, n, batch_size)
    ]


def reconstruction_error(
    model: Any, x: torch.Tensor, x_in: torch.Tensor | None = None, batch_size: int = 1000
) -> float:
    """Mean squared error per pixel between ``x`` and ``model.reconstruct(x, x̃)`` (x̃ = ``x_in``
    or x)."""
    if hasattr(model, "check_data"):
        model.check_data(x)
    if x_in is not None and x_in.shape != x.shape:
        raise ValueError(f"x_in has shape {tuple(x_in.shape)}, x has {tuple(x.shape)}")
    with eval_mode(model):
        sums = map_batches(
            lambda xb, xin: ((model.reconstruct(xb, xin) - xb) ** 2).sum(),
            x,
            x_in,
            batch_size=batch_size,
        )
    return float(sum(sums)) / x.numel()


def psnr(
    x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, eps: float = 1e-10
) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, in dB: 10·log10(range² / MSE_i). Shape ``(N,)``.

    Per-image PSNRs are what one averages for a data set (the mean of PSNR, not the PSNR of the
    mean MSE); ``eps`` caps a perfect reconstruction at a finite value.
    """
    if x.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    mse = ((x - reference) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(eps))


def reconstruction_psnr(
    model: Any, x: torch.Tensor, x_in: torch.Tensor | None = None, batch_size: int = 1000
) -> float:
    """Mean PSNR (dB) of ``model.reconstruct(x, x̃)`` against the clean ``x``, in batches.
    Reconstructions are clipped to ``[0, 1]``, the images' range."""
    with eval_mode(model):
        sums = map_batches(
            lambda xb, xin: psnr(model.reconstruct(xb, xin).clamp(0, 1), xb).sum(),
            x,
            x_in,
            batch_size=batch_size,
        )
    return float(sum(sums)) / x.shape[0]


def bits_per_dim(log_px: float, num_dims: int) -> float:
    """Convert a per-image log-likelihood in nats to bits per dimension: −log₂ p(x) / D."""
    return -log_px / (num_dims * math.log(2))
