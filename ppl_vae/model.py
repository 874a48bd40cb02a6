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
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn

from .errors import DataError
from .guides import GUIDES, GuideFamily, NormalGuide, make_guide
from .likelihoods import Likelihood, make_likelihood, mask_pixels
from .nets import make_networks
from .priors import Prior, make_prior
from .program import data_plate

__all__ = [
    "MODEL_PRESETS",
    "VAE",
    "ModelConfig",
    "build_model",
    "preset_config",
    "reset_parameters",
]


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
        guide: GuideFamily | None = None,
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
        self.latent_dim = prior.latent_dim
        self.guide_family = guide if guide is not None else NormalGuide(self.latent_dim)
        attach = getattr(prior, "attach", None)
        if attach is not None:  # a prior built from the guide (VampPrior)
            attach(self)

    # ------------------------------------------------------------------ Pyro program
    def model(
        self,
        x: torch.Tensor | None = None,
        x_in: torch.Tensor | None = None,
        beta: torch.Tensor | float | None = None,
        mask: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """p(z) p(x|z) over a mini-batch ``x`` of shape ``(B, *image_shape)``.

        ``num_data`` is the size of the full data set: the plate scales the mini-batch's log
        density by ``num_data / B`` so that ``-loss / num_data`` is an unbiased estimate of the
        per-image ELBO at any batch size. ``beta`` weights the prior's sites (β-VAE, KL warm-up);
        it is a tensor so that JIT-compiled ELBOs see a changing value. ``mask`` (broadcastable
        to ``x``, True = observed) makes the model score only those pixels: the basis for
        inpainting. ``x_in`` is what the guide's encoder sees and is ignored here. Without data
        (``x=None``) the model generates ``batch_size`` images (prior predictive).
        """
        for name, module in self.pyro_modules("model"):
            pyro.module(name, module)
        with data_plate(x, num_data, batch_size=batch_size):
            with _maybe_scale(beta):
                z = self.prior.sample_latent("z")
            out = self.decoder(z)  # (..., B, k*C, H, W)
            likelihood = self.likelihood(out)
            if mask is not None:
                likelihood = mask_pixels(likelihood, mask)
            return pyro.sample("x", likelihood, obs=x)

    def guide(
        self,
        x: torch.Tensor | None = None,
        x_in: torch.Tensor | None = None,
        beta: torch.Tensor | float | None = None,
        mask: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """q(z | x̃): encodes ``x_in`` (a corrupted copy for the denoising AE) or else ``x``.

        The guide sees the whole of ``x_in``/``x`` whatever ``mask`` says: to infer z from
        visible pixels only, condition the model (MCMC) or refit a guide on them.
        """
        if x is None and x_in is None:
            raise ValueError(
                "the guide encodes data and got none; to generate without data use the model "
                "alone, e.g. pyro.infer.Predictive(vae.model, num_samples=n)(None, batch_size=b)"
            )
        for name, module in self.pyro_modules("guide"):
            pyro.module(name, module)
        with data_plate(x if x is not None else x_in, num_data):
            h = self.encoder(x if x_in is None else x_in)
            with _maybe_scale(beta):
                return pyro.sample("z", self.guide_family.dist(h))

    def pyro_modules(self, which: str = "all") -> list[tuple[str, nn.Module]]:
        """Param-store names of the sub-modules with parameters used by ``model``, ``guide`` or
        ``all``: every parameter of the VAE is reached by one of them (``fit`` checks)."""
        model = [("decoder", self.decoder), ("prior", self.prior), ("likelihood", self.likelihood)]
        guide = [("encoder", self.encoder), ("guide", self.guide_family)]
        pick = {"model": model, "guide": guide, "all": model + guide}[which]
        return [(n, m) for n, m in pick if any(True for _ in m.parameters())]

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

    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """``n`` images from prior draws z ~ p(z): the means E[x | z] (what figures show) or, with
        ``mean=False``, draws x ~ p(x | z). Improper priors raise: fit a density on the codes."""
        if not self.can_sample:
            raise ValueError(
                f"cannot sample from the {type(self.prior).__name__} prior; fit a density on the "
                "training codes (ppl_vae.latent) and decode its samples instead"
            )
        out = self.decoder(self.prior().sample((n,)))
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

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
                f"{what} contains {int(bad.sum())} NaN/Inf values (first in data point {first})"
            )
        ok = self.likelihood.data_support.check(x)
        if not ok.all():
            first = int((~ok).flatten(1).any(1).nonzero()[0])
            hint = ""
            if getattr(self.likelihood, "link", None) == "sigmoid":
                hint = (
                    "; for unbounded data give the likelihood the identity mean link "
                    "(likelihood_kwargs={'link': 'identity'}, --likelihood-kwargs link=identity)"
                )
            elif self.likelihood.data_support is constraints.unit_interval:
                hint = (
                    "; for data outside [0, 1] choose likelihood='gaussian' with "
                    "likelihood_kwargs={'link': 'identity'} (--likelihood gaussian "
                    "--likelihood-kwargs link=identity), or rescale the data to [0, 1]"
                )
            raise DataError(
                f"{what} lies outside the support of the {type(self.likelihood).__name__} "
                f"likelihood ({self.likelihood.data_support}): values span "
                f"[{x.min().item():.4g}, {x.max().item():.4g}], first offending data point {first}"
                + hint
            )


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _maybe_scale(beta: torch.Tensor | float | None) -> Any:
    """``poutine.scale`` by β, or nothing at all when β is absent (the common case)."""
    if beta is None or (isinstance(beta, float) and beta == 1.0):
        return nullcontext()
    return poutine.scale(scale=beta)


#: Named model families: the same model/guide pair with different parts. ``corruption`` is the
#: default training corruption (what the guide's encoder sees); ``gmvae`` sums its mixture
#: component out by enumeration (the ``auto`` objective picks ``TraceEnum_ELBO`` for it);
#: ``objective``/``particles`` are the default objective of the IWAE models (Burda et al.).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "vae": {"guide": "normal", "prior": "normal"},
    "ae": {"guide": "delta", "prior": "flat"},
    "dae": {"guide": "delta", "prior": "flat", "corruption": "dropout:0.5"},
    "sparse-ae": {"guide": "delta", "prior": "laplace"},
    "gmvae": {"guide": "normal", "prior": "gmm"},
    "vampprior": {"guide": "normal", "prior": "vamp"},
    "iaf": {"guide": "iaf", "prior": "normal"},
    "iwae-5": {"guide": "normal", "prior": "normal", "objective": "iwae", "particles": 5},
    "iwae-50": {"guide": "normal", "prior": "normal", "objective": "iwae", "particles": 50},
}

Kwargs = dict[str, float | str]


@dataclass
class ModelConfig:
    """What to build; every field is a registry name, a number or a string, so it serialises to
    JSON and a run can be rebuilt from its checkpoint (:func:`~ppl_vae.load_model`).

    ``hidden`` sizes the MLP's hidden layers (two of 512 by default: wider and deeper than the
    PyTorch example's single 400, which is what takes 10 epochs past −105 nats).
    """

    latent_dim: int = 32
    prior: str = "normal"
    likelihood: str = "bernoulli"
    net: str = "mlp"
    guide: str = "normal"
    hidden: tuple[int, ...] = (512, 512)
    #: The MLP's hidden nonlinearity (:data:`~ppl_vae.nets.ACTIVATIONS`).
    activation: str = "relu"
    prior_kwargs: Kwargs = field(default_factory=dict)
    likelihood_kwargs: Kwargs = field(default_factory=dict)
    guide_kwargs: Kwargs = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.latent_dim, int) or self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if self.guide not in GUIDES:
            raise ValueError(f"unknown guide {self.guide!r}; choose one of {sorted(GUIDES)}")


def build_model(config: ModelConfig, image_shape: Sequence[int], *, seed: int | None = None) -> VAE:
    """Build a :class:`VAE` from registry names (what the CLI and experiment scripts use).

    With ``seed`` the initial weights are a function of the seed alone (:func:`reset_parameters`),
    whatever random numbers were drawn before; without it they come from torch's global stream.
    """
    config.validate()
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:  # any draw while building (a part's own buffers) follows the seed
            torch.manual_seed(seed)
        prior = make_prior(config.prior, config.latent_dim, **config.prior_kwargs)
        likelihood = make_likelihood(config.likelihood, **config.likelihood_kwargs)
        guide = make_guide(config.guide, config.latent_dim, **config.guide_kwargs)
        c, *rest = image_shape
        decoder_shape = (likelihood.params_per_pixel * c, *rest)
        kwargs: dict[str, Any] = {}
        if config.net == "mlp":
            kwargs = {"hidden": tuple(config.hidden), "activation": config.activation}
        elif config.activation != "relu":
            raise ValueError(f"activation={config.activation!r} applies to the mlp net only")
        encoder, decoder = make_networks(
            config.net,
            image_shape,
            config.latent_dim,
            guide.encoder_out(config.latent_dim),
            decoder_shape,
            **kwargs,
        )
        model = VAE(encoder, decoder, prior, likelihood, image_shape, guide)
    model.config = config  # the recipe checkpoints keep, so load_model can rebuild the model
    if seed is not None:
        reset_parameters(model, seed)
    return model


def reset_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter of ``module`` in place, as a function of ``seed`` alone.

    Calls ``reset_parameters()`` of each sub-module that has one (torch's layers, the library's
    priors and flows), in module order, from a generator state set by ``seed``; the caller's
    random streams are left as they were. A sub-module that owns parameters but cannot reset them
    raises: rebuild it instead.
    """
    params = list(module.parameters())
    devices = sorted({p.device.index or 0 for p in params if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, piece in module.named_modules():
            own = any(True for _ in piece.parameters(recurse=False))
            if hasattr(piece, "reset_parameters"):
                piece.reset_parameters()
            elif own:
                raise ValueError(
                    f"cannot re-initialise {name or type(module).__name__} "
                    f"({type(piece).__name__}): it owns parameters but has no reset_parameters(); "
                    "build a new model instead"
                )
    return module


def preset_config(
    family: str,
    base: ModelConfig | None = None,
    *,
    guide: str | None = None,
    prior: str | None = None,
    sparsity_lambda: float | None = None,
) -> ModelConfig:
    """``base`` with the guide and prior of the model family ``family`` (:data:`MODEL_PRESETS`),
    unless ``guide``/``prior`` name others. ``sparsity_lambda`` is the sparse AE's L1 weight λ on
    the codes: a Laplace prior of scale b = 1/λ, since −log Laplace(z; 0, b) = ‖z‖₁/b + const.
    """
    if family not in MODEL_PRESETS:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[family]
    config = replace(
        base or ModelConfig(),
        guide=guide or preset["guide"],
        prior=prior or preset["prior"],
        prior_kwargs=dict((base or ModelConfig()).prior_kwargs),
    )
    if sparsity_lambda is not None:
        if config.prior != "laplace":
            raise ValueError(
                f"a sparsity λ needs the Laplace prior (the sparse-ae family), not {config.prior!r}"
            )
        if not sparsity_lambda > 0:
            raise ValueError(f"the sparsity λ must be > 0, got {sparsity_lambda}")
        if "scale" in config.prior_kwargs:
            raise ValueError("give either a sparsity λ or the Laplace prior's scale b, not both")
        config.prior_kwargs["scale"] = 1.0 / sparsity_lambda
    config.validate()
    return config
