"""Likelihoods p(x | z): how the decoder's output scores an image.

Protocol (all a user needs to plug in their own likelihood)
-----------------------------------------------------------
A likelihood is an ``nn.Module`` with

* ``params_per_pixel: int`` — how many decoder output channels it consumes per image channel;
  the decoder emits ``params_per_pixel * C`` channels and the likelihood splits them;
* ``forward(out) -> distribution`` — a Pyro distribution whose batch shape is the batch and whose
  event shape is the image shape ``(C, H, W)``;
* ``mean(out) -> tensor`` — the reconstruction shown to people and used for reconstruction error;
* ``data_support`` — a constraint the *data* must satisfy (checked once, before training).

:class:`Independent` builds one from any Pyro distribution class: each keyword is either a callable
(that parameter is read off one decoder channel through it) or a constant.

Mean links
----------
The Gaussian and Laplace likelihoods read their mean through a *link*: ``"sigmoid"`` (the
default) keeps it in [0, 1], the range of image pixels, so reconstructions and samples are valid
images; ``"identity"`` leaves it unbounded, for data that are not in [0, 1] (tables, 2-D toy
data, probabilistic PCA). With the sigmoid link the data must lie in [0, 1]: data outside are
refused before training (a sigmoid mean could never reach them) with an error that names
``link='identity'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

__all__ = [
    "LIKELIHOODS",
    "LINKS",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "GaussianIdentity",
    "GaussianLearnedVariance",
    "Independent",
    "Laplace",
    "Likelihood",
    "make_likelihood",
    "mask_pixels",
]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


#: Mean links by name.
LINKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": _identity,
    "sigmoid": torch.sigmoid,
}

Link = str | Callable[[torch.Tensor], torch.Tensor]


def _link(link: Link) -> tuple[Callable[[torch.Tensor], torch.Tensor], constraints.Constraint]:
    """The link function and the support the data need for it (a sigmoid mean stays in [0, 1])."""
    if callable(link):
        return link, constraints.real
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}; choose one of {sorted(LINKS)}")
    return LINKS[link], constraints.unit_interval if link == "sigmoid" else constraints.real


def mask_pixels(d: dist.TorchDistribution, mask: torch.Tensor) -> dist.TorchDistribution:
    """``d`` scoring only the pixels where ``mask`` is True (masked ones contribute 0).

    ``d`` must be pixels made independent with ``to_event`` (every built-in likelihood is), so
    the mask can reach each pixel rather than whole images.
    """
    if not isinstance(d, dist.Independent):
        raise ValueError(
            f"a pixel mask needs a likelihood of independent pixels (an Independent distribution), "
            f"not {type(d).__name__}"
        )
    return d.base_dist.mask(mask.bool()).to_event(d.reinterpreted_batch_ndims)


class Likelihood(nn.Module):
    """Base class for p(x | decoder output)."""

    params_per_pixel: int = 1
    data_support: constraints.Constraint = constraints.real
    #: Number of trailing data dims that form one observation: 3 for (C, H, W) images. The model
    #: sets it from the data shape, so extra leading dims (vectorised particles) stay batch dims.
    event_dim: int = 3

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        return self(out).mean

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split ``(..., k*C, H, W)`` decoder output into ``k`` tensors of ``(..., C, H, W)``."""
        if self.params_per_pixel == 1:
            return (out,)
        return tuple(out.chunk(self.params_per_pixel, dim=-self.event_dim))


class Independent(Likelihood):
    """Pixels independent given z, each distributed as ``family(**params)``.

    ``Independent(dist.Normal, loc=torch.sigmoid, scale=0.1)`` reads the Gaussian mean off one
    decoder channel and fixes the scale; every callable consumes one channel, in keyword order.
    """

    def __init__(
        self,
        family: Callable[..., dist.TorchDistribution],
        data_support: constraints.Constraint | None = None,
        validate_args: bool | None = None,
        **params: Callable[[torch.Tensor], torch.Tensor] | float,
    ) -> None:
        super().__init__()
        self.family = family
        self._params = params
        self.params_per_pixel = sum(callable(v) for v in params.values())
        if self.params_per_pixel == 0:
            raise ValueError("at least one parameter must be read from the decoder (a callable)")
        if data_support is None:
            data_support = getattr(family, "support", constraints.real)
        self.data_support = data_support
        self._validate_args = validate_args

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        chunks = iter(self.split(out))
        kwargs = {}
        for name, p in self._params.items():
            kwargs[name] = p(next(chunks)) if callable(p) else p
        extra = {} if self._validate_args is None else {"validate_args": self._validate_args}
        return self.family(**kwargs, **extra).to_event(self.event_dim)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self(out).mean

    def extra_repr(self) -> str:
        return f"family={getattr(self.family, '__name__', '?')}"


class Bernoulli(Independent):
    """Bernoulli(logits) on grey levels in [0, 1] or binarised pixels: the BCE loss.

    Pixel values in [0, 1] are scored with the cross-entropy formula ``x log p + (1-x) log(1-p)``,
    the usual (unnormalised for grey levels) MNIST likelihood, hence ``validate_args=False``.
    """

    def __init__(self) -> None:
        super().__init__(
            dist.Bernoulli,
            data_support=constraints.unit_interval,
            validate_args=False,
            logits=_identity,
        )

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


class ContinuousBernoulli(Independent):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): a normalised density on [0, 1]."""

    def __init__(self) -> None:
        super().__init__(
            dist.ContinuousBernoulli, data_support=constraints.unit_interval, logits=_identity
        )


class Gaussian(Independent):
    """Gaussian with fixed variance ``c``: −log p(x|z) = ‖x − μ(z)‖² / (2c) + const.

    μ = link(decoder output): ``"sigmoid"`` (default, for images in [0, 1]) or ``"identity"``
    (unbounded data; linear models such as probabilistic PCA).
    """

    def __init__(self, variance: float = 1.0, link: Link = "sigmoid") -> None:
        if not variance > 0:
            raise ValueError(f"variance must be > 0, got {variance}")
        self.variance = float(variance)
        mean_fn, support = _link(link)
        super().__init__(dist.Normal, data_support=support, loc=mean_fn, scale=math.sqrt(variance))
        self.link = link


def GaussianIdentity(variance: float = 1.0) -> Gaussian:
    """Gaussian with fixed variance and identity mean: the linear AE / probabilistic PCA."""
    return Gaussian(variance=variance, link="identity")


class GaussianLearnedVariance(Likelihood):
    """Gaussian whose decoder outputs both μ and log σ² per pixel (the lecture's two heads).

    log σ² is clamped to ``[min_log_var, max_log_var]`` so a pixel that is always 0 cannot drive
    the density to infinity; μ goes through ``link`` as for :class:`Gaussian`.
    """

    params_per_pixel = 2

    def __init__(
        self, link: Link = "sigmoid", min_log_var: float = -9.0, max_log_var: float = 4.0
    ) -> None:
        super().__init__()
        self.mean_fn, self.data_support = _link(link)
        self.link = link
        self.min_log_var, self.max_log_var = min_log_var, max_log_var

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        mu, log_var = self.split(out)
        log_var = log_var.clamp(self.min_log_var, self.max_log_var)
        return dist.Normal(self.mean_fn(mu), torch.exp(0.5 * log_var)).to_event(self.event_dim)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.mean_fn(self.split(out)[0])


class Laplace(Independent):
    """Laplace with fixed scale ``b``: −log p(x|z) = ‖x − μ(z)‖₁ / b + const; μ through ``link``."""

    def __init__(self, scale: float = 0.1, link: Link = "sigmoid") -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        mean_fn, support = _link(link)
        super().__init__(dist.Laplace, data_support=support, loc=mean_fn, scale=float(scale))
        self.link = link


#: Name → factory, used by the CLI and configs.
LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {
    "bernoulli": Bernoulli,
    "continuous-bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "gaussian-identity": GaussianIdentity,
    "gaussian-learned": GaussianLearnedVariance,
    "laplace": Laplace,
}


def make_likelihood(name: str, **kwargs: float) -> Likelihood:
    """Build a registered likelihood by name; unknown names raise with the list of choices."""
    try:
        factory = LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad parameters {kwargs} for the {name!r} likelihood: {e}") from None
