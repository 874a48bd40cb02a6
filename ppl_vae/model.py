"""The model/guide pair shared by every auto-encoder in the library.

``model(x)``  : z ~ p(z),  x ~ p(x | decoder(z))            (sites ``"z"`` and ``"x"``)
``guide(x)``  : z ~ q(z | encoder(x̃))                        (site ``"z"``)

One class covers the whole family; only the parts differ:

=============  ===============  ============================
model          guide q(z|x)      prior p(z)
=============  ===============  ============================
VAE            Normal            Normal (or any prior)
AE             point mass        flat
denoising AE   point mass        flat, encoder sees x̃ ≠ x
sparse AE      point mass        Laplace(0, b)  (λ = 1/b)
=============  ===============  ============================

``model`` and ``guide`` are plain callables with the same signature, usable with any Pyro
utility (``SVI`` and every ELBO, ``Predictive``, ``poutine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from .errors import DataError
from .likelihoods import Likelihood, make_likelihood
from .nets import make_networks
from .priors import Prior, make_prior

__all__ = [
    "GUIDES",
    "VAE",
    "ModelConfig",
    "NormalGuide",
    "PointMassGuide",
    "build_model",
]


class NormalGuide:
    """Amortised diagonal Normal q(z|x) = N(μ(x), diag σ(x)²); σ = softplus(·) + 1e-5."""

    has_density = True

    def encoder_out(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        z_loc, z_raw_scale = h.chunk(2, dim=-1)  # (batch, latent_dim) each
        return dist.Normal(z_loc, F.softplus(z_raw_scale) + 1e-5).to_event(1)

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        return h.chunk(2, dim=-1)[0]


class PointMassGuide:
    """Point mass q(z|x) = δ(z − f(x)): the deterministic encoder of the AE family."""

    has_density = False

    def encoder_out(self, latent_dim: int) -> int:
        return latent_dim

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(h, event_dim=1)

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        return h


#: Name → guide family.
GUIDES = {"normal": NormalGuide, "delta": PointMassGuide}


class VAE(nn.Module):
    """Encoder, decoder, prior and likelihood, exposed as a Pyro ``model``/``guide`` pair.

    Args:
        encoder: ``(..., *image_shape) -> (..., guide.encoder_out(latent_dim))``.
        decoder: ``(..., latent_dim) -> (..., likelihood.params_per_pixel * C, H, W)``.
        prior: p(z), see :mod:`ppl_vae.priors`.
        likelihood: p(x|z), see :mod:`ppl_vae.likelihoods`.
        image_shape: shape of one observation, e.g. ``(1, 28, 28)``; data are checked against it.
        guide: :class:`NormalGuide` (VAE) or :class:`PointMassGuide` (AE family).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        image_shape: Sequence[int],
        guide: NormalGuide | PointMassGuide | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.prior, self.likelihood = prior, likelihood
        self.image_shape = tuple(int(s) for s in image_shape)
        event_dim = len(self.image_shape)
        if getattr(likelihood, "_event_dim_set_by", None) not in (None, event_dim):
            raise ValueError(
                f"this {type(likelihood).__name__} is already used by a model of "
                f"{likelihood._event_dim_set_by}-dim images; give each model its own likelihood "
                f"instance (these are {event_dim}-dim)"
            )
        # the likelihood learns how many trailing dims form one image from the model it serves
        self.likelihood.event_dim = event_dim
        self.likelihood._event_dim_set_by = event_dim
        self.guide_family = guide if guide is not None else NormalGuide()
        self.latent_dim = prior.latent_dim

    # ------------------------------------------------------------------ Pyro program
    def model(
        self,
        x: torch.Tensor,
        x_in: torch.Tensor | None = None,
        beta: torch.Tensor | float | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """p(z) p(x|z) over a mini-batch ``x`` of shape ``(B, *image_shape)``.

        ``num_data`` is the size of the full data set: the plate scales the mini-batch's log
        density by ``num_data / B`` so that ``-loss / num_data`` is an unbiased estimate of the
        per-image ELBO at any batch size. ``beta`` weights the z site (β-VAE, KL warm-up); it is a
        tensor so that JIT-compiled ELBOs see a changing value. ``x_in`` is ignored here (it is
        what the guide's encoder sees); ``batch_size`` keys JIT graphs per batch shape.
        """
        for name, module in self.pyro_modules("model"):
            pyro.module(name, module)
        with self._data_plate(x, num_data, batch_size):
            with _maybe_scale(beta):
                z = pyro.sample("z", self.prior())
            out = self.decoder(z)  # (..., B, k*C, H, W)
            return pyro.sample("x", self.likelihood(out), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        x_in: torch.Tensor | None = None,
        beta: torch.Tensor | float | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """q(z | x̃): encodes ``x_in`` (a corrupted copy for the denoising AE) or else ``x``."""
        for name, module in self.pyro_modules("guide"):
            pyro.module(name, module)
        with self._data_plate(x, num_data, batch_size):
            h = self.encoder(x if x_in is None else x_in)
            with _maybe_scale(beta):
                return pyro.sample("z", self.guide_family.dist(h))

    def pyro_modules(self, which: str = "all") -> list[tuple[str, nn.Module]]:
        """Stable param-store names of the sub-modules used by ``model``, ``guide`` or ``all``."""
        model = [("decoder", self.decoder), ("prior", self.prior), ("likelihood", self.likelihood)]
        model = [(n, m) for n, m in model if any(True for _ in m.parameters())]
        guide = [("encoder", self.encoder)]
        return {"model": model, "guide": guide, "all": model + guide}[which]

    def _data_plate(
        self, x: torch.Tensor, num_data: int | None, batch_size: int | None
    ) -> pyro.plate:
        b = x.shape[0]
        if batch_size is not None and batch_size != b:
            raise ValueError(f"batch_size={batch_size} but x holds {b} images")
        if num_data is None or num_data == b:
            return pyro.plate("data", b, dim=-1)
        return pyro.plate("data", num_data, subsample=torch.arange(b, device=x.device), dim=-1)

    # ------------------------------------------------------------------ use
    @property
    def can_sample(self) -> bool:
        return self.prior.can_sample

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Point estimate of the code: q's mean (VAE) or f(x) (AE). Shape ``(B, latent_dim)``."""
        return self.guide_family.loc(self.encoder(x))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) as a distribution (a Delta for the AE family)."""
        return self.guide_family.dist(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image E[x | z] for codes of shape ``(..., latent_dim)``."""
        return self.likelihood.mean(self.decoder(z))

    def reconstruct(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """decode(encode(x̃)): the reconstruction shown in figures and scored by MSE."""
        return self.decode(self.encode(x if x_in is None else x_in))

    def sample(self, n: int) -> torch.Tensor:
        """``n`` images decoded from prior draws (improper priors raise: fit a density first)."""
        if not self.can_sample:
            raise ValueError(
                f"cannot sample from the {type(self.prior).__name__} prior; fit a density on the "
                "training codes (ppl_vae.latent) and decode its samples instead"
            )
        z = self.prior().sample((n,))
        return self.decode(z)

    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """Decode codes on the line between encode(x1) and encode(x2): ``(B, steps, *image)``."""
        z1, z2 = self.encode(x1), self.encode(x2)  # (B, latent_dim)
        t = torch.linspace(0, 1, steps, device=z1.device, dtype=z1.dtype)[:, None]
        z = z1[:, None] * (1 - t) + z2[:, None] * t  # (B, steps, latent_dim)
        return self.decode(z)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless ``x`` is a finite float batch this model can score."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError(f"{what} must be a floating-point tensor, got {_describe(x)}")
        param = next(self.parameters(), None)
        if param is not None and x.dtype != param.dtype:
            raise DataError(
                f"{what} is {x.dtype} but the model's parameters are {param.dtype}; convert one "
                f"(x.to({param.dtype}) or model.to({x.dtype}))"
            )
        if x.shape[0] == 0:
            raise DataError(f"{what} is empty")
        if tuple(x.shape[1:]) != self.image_shape:
            raise DataError(
                f"{what} has shape {tuple(x.shape)}, expected (N, *{self.image_shape})"
                " — images must match the shape the model was built for"
            )
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.flatten(1).any(1).nonzero()[0])
            raise DataError(
                f"{what} contains {int(bad.sum())} NaN/Inf values (first in image {first})"
            )
        ok = self.likelihood.data_support.check(x)
        if not ok.all():
            first = int((~ok).flatten(1).any(1).nonzero()[0])
            raise DataError(
                f"{what} lies outside the support of the {type(self.likelihood).__name__} "
                f"likelihood ({self.likelihood.data_support}): values span "
                f"[{x.min().item():.4g}, {x.max().item():.4g}], first offending image {first}"
            )


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


class _maybe_scale:
    """``poutine.scale`` that costs nothing when β is absent (the common case)."""

    def __init__(self, beta: torch.Tensor | float | None) -> None:
        self.messenger = (
            None
            if beta is None or (isinstance(beta, float) and beta == 1.0)
            else (poutine.scale(scale=beta))
        )

    def __enter__(self) -> None:
        if self.messenger is not None:
            self.messenger.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.messenger is not None:
            self.messenger.__exit__(*exc)


@dataclass
class ModelConfig:
    """What to build; every field is a registry name or a number, so it serialises to JSON.

    ``hidden`` sizes the MLP's hidden layers (two of 512 by default: wider and deeper than the
    PyTorch example's single 400, which is what takes 10 epochs past −105 nats).
    """

    latent_dim: int = 32
    prior: str = "normal"
    likelihood: str = "bernoulli"
    net: str = "mlp"
    guide: str = "normal"
    hidden: tuple[int, ...] = (512, 512)
    prior_kwargs: dict[str, float] = field(default_factory=dict)
    likelihood_kwargs: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.latent_dim, int) or self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if self.guide not in GUIDES:
            raise ValueError(f"unknown guide {self.guide!r}; choose one of {sorted(GUIDES)}")


def build_model(config: ModelConfig, image_shape: Sequence[int]) -> VAE:
    """Build a :class:`VAE` from registry names (what the CLI and experiment scripts use)."""
    config.validate()
    prior = make_prior(config.prior, config.latent_dim, **config.prior_kwargs)
    likelihood = make_likelihood(config.likelihood, **config.likelihood_kwargs)
    guide = GUIDES[config.guide]()
    c, *rest = image_shape
    decoder_shape = (likelihood.params_per_pixel * c, *rest)
    kwargs = {"hidden": tuple(config.hidden)} if config.net == "mlp" else {}
    encoder, decoder = make_networks(
        config.net,
        image_shape,
        config.latent_dim,
        guide.encoder_out(config.latent_dim),
        decoder_shape,
        **kwargs,
    )
    return VAE(encoder, decoder, prior, likelihood, image_shape, guide)
