"""PCA as a baseline with the auto-encoders' interface, the linear AE, and principal angles.

A linear auto-encoder (encoder and decoder single affine maps, Gaussian likelihood with identity
mean and fixed variance c) minimises ‖x − W_d(W_e x + b_e) − b_d‖² / (2c): its optimum spans the
top-k principal subspace (Baldi & Hornik, 1989), though ``W_d`` need not have orthonormal columns.
:func:`principal_angles` between the decoder's column space and :attr:`PCA.components` measures
how close SVI training got.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .guides import PointMassGuide
from .likelihoods import Gaussian
from .model import VAE
from .nets import MLPDecoder, MLPEncoder
from .priors import Flat

__all__ = ["PCA", "decoder_basis", "linear_autoencoder", "principal_angles"]


class PCA(nn.Module):
    """Principal component analysis with the ``encode``/``decode``/``reconstruct`` of a VAE.

    Fitted by an eigendecomposition of the sample covariance in float64 (exact up to rounding,
    and cheap: one D×D matrix, accumulated in chunks so the data are never copied whole).
    Tensors in, tensors out; images are flattened using the shape seen in :meth:`fit`.

    Attributes (after :meth:`fit`):
        components: ``(D, k)`` orthonormal principal directions, largest variance first; the sign
            of each is fixed so that its largest-magnitude entry is positive.
        explained_variance: ``(k,)`` variances along them (eigenvalues, unbiased 1/(N−1)).
        mean: ``(D,)`` data mean.
    """

    def __init__(self, n_components: int) -> None:
        super().__init__()
        if not isinstance(n_components, int) or n_components <= 0:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        self.latent_dim = n_components
        self.image_shape: tuple[int, ...] = ()
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("components", torch.empty(0))
        self.register_buffer("explained_variance", torch.empty(0))
        self.register_buffer("total_variance", torch.empty(0))

    @property
    def n_components(self) -> int:
        return self.latent_dim

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """Share of the total variance along each component."""
        self._check_fitted()
        return self.explained_variance / self.total_variance

    @torch.no_grad()
    def fit(self, x: torch.Tensor, batch_size: int = 10_000) -> PCA:
        """Fit on ``x`` of shape ``(N, *image_shape)`` (N ≥ 2). Returns ``self``."""
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(
                f"PCA needs at least 2 samples of shape (N, ...), got {tuple(x.shape)}"
            )
        self.image_shape = tuple(int(s) for s in x.shape[1:])
        flat = x.reshape(x.shape[0], -1)
        n, d = flat.shape
        if self.latent_dim > d:
            raise ValueError(f"n_components={self.latent_dim} exceeds the data dimension {d}")
        mean = flat.double().mean(0)
        cov = flat.new_zeros(d, d, dtype=torch.float64)
        for xb in flat.split(batch_size):
            xc = xb.double() - mean
            cov += xc.T @ xc
        cov /= n - 1
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1)
        w = evecs[:, : self.latent_dim]
        sign = torch.sign(w.gather(0, w.abs().argmax(0, keepdim=True)))
        w = w * sign
        dtype = x.dtype
        self.mean = mean.to(dtype)
        self.components = w.to(dtype)
        self.explained_variance = evals[: self.latent_dim].clamp_min(0).to(dtype)
        self.total_variance = evals.clamp_min(0).sum().to(dtype)
        return self

    def _check_fitted(self) -> None:
        if self.components.numel() == 0:
            raise RuntimeError("PCA is not fitted yet: call fit(x) first")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates in the principal basis: ``(B, *image_shape) -> (B, k)``."""
        self._check_fitted()
        flat = x.reshape(*x.shape[: x.dim() - len(self.image_shape)], -1)
        return (flat - self.mean) @ self.components

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Back to image space: ``(..., k) -> (..., *image_shape)``."""
        self._check_fitted()
        flat = z @ self.components.T + self.mean
        return flat.reshape(*z.shape[:-1], *self.image_shape)

    def reconstruct(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """Orthogonal projection of ``x_in`` (or ``x``) on the principal affine subspace."""
        return self.decode(self.encode(x if x_in is None else x_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def extra_repr(self) -> str:
        return f"n_components={self.latent_dim}, image_shape={self.image_shape}"


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees between the column spaces of ``a`` (D×p) and ``b`` (D×q).

    Returns ``min(p, q)`` angles, largest first (as ``scipy.linalg.subspace_angles``), computed
    in float64. The cosines are the singular values of Qaᵀ Qb for orthonormal bases Qa, Qb; the
    sines — accurate for small angles, where arccos is not — are those of (I − Qa Qaᵀ) Qb
    (Björck & Golub, 1973), and each angle uses whichever is better conditioned.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"need two matrices with the same number of rows, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    qa = torch.linalg.qr(a.detach().double().cpu()).Q
    qb = torch.linalg.qr(b.detach().double().cpu()).Q
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0, 1)  # descending cosines → ascending angles
    sin = torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(0, 1)  # descending sines
    angles = torch.where(
        cos.flip(0) > math.sqrt(0.5),  # small angle: use the sine
        torch.arcsin(sin),
        torch.arccos(cos.flip(0)),
    )
    return torch.rad2deg(angles)


def linear_autoencoder(
    image_shape: Sequence[int],
    latent_dim: int,
    variance: float = 1.0,
    data_mean: torch.Tensor | None = None,
) -> VAE:
    """The linear AE: affine encoder and decoder, point-mass guide, flat prior and a Gaussian
    likelihood with identity mean and fixed variance ``c`` (only a scale on the loss).

    ``data_mean`` (an image) initialises the decoder bias, so training starts on the centred
    problem instead of spending its first steps learning the mean.
    """
    d = math.prod(image_shape)
    encoder = MLPEncoder(image_shape, latent_dim, hidden=())
    decoder = MLPDecoder(latent_dim, tuple(image_shape), hidden=())
    if data_mean is not None:
        with torch.no_grad():
            decoder.net[0].bias.copy_(data_mean.reshape(d).to(decoder.net[0].bias))
            # Centre the codes as well: z = W_e (x − mean) at initialisation.
            enc = encoder.net[0]
            enc.bias.copy_(-(enc.weight @ data_mean.reshape(d).to(enc.weight)))
    return VAE(
        encoder,
        decoder,
        Flat(latent_dim),
        Gaussian(variance=variance, link="identity"),
        image_shape,
        PointMassGuide(),
    )


def decoder_basis(model: VAE) -> torch.Tensor:
    """The ``(D, k)`` weight of a linear decoder: its column space is the learned subspace."""
    layers = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    if len(layers) != 1:
        raise ValueError(f"the decoder is not a single linear layer ({len(layers)} Linear layers)")
    return layers[0].weight.detach()
