"""Priors p(z): swappable ``nn.Module`` components that return a Pyro distribution.

Protocol (all a user needs to plug in their own prior)
------------------------------------------------------
A prior is an ``nn.Module`` with an integer attribute ``latent_dim`` whose ``forward()`` returns a
Pyro distribution with ``event_shape == (latent_dim,)`` and empty batch shape. Constants live in
buffers and learnable values in parameters, so ``.to(device)`` moves them and ``pyro.module``
trains them. :class:`Independent` builds such a prior from *any* Pyro distribution class.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

__all__ = [
    "PRIORS",
    "Flat",
    "Independent",
    "Laplace",
    "MixtureOfGaussians",
    "Normal",
    "Prior",
    "StudentT",
    "make_prior",
]


class Prior(nn.Module):
    """Base class: a distribution over ``latent_dim``-dimensional codes."""

    latent_dim: int
    #: False for improper priors, which can score codes but not draw them.
    can_sample: bool = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class Independent(Prior):
    """``latent_dim`` i.i.d. copies of a scalar Pyro distribution.

    ``Independent(8, dist.Gumbel, loc=0.0, scale=1.0)`` is a Gumbel prior; parameters are stored as
    buffers (fixed) or, with ``learnable=True``, as unconstrained ``nn.Parameter`` s per dimension
    (positive parameters are learned through ``softplus``).
    """

    def __init__(
        self,
        latent_dim: int,
        family: Callable[..., dist.TorchDistribution],
        learnable: bool = False,
        **params: float,
    ) -> None:
        super().__init__(latent_dim)
        self.family = family
        self.learnable = learnable
        self._names = tuple(params)
        arg_constraints = getattr(family, "arg_constraints", {})
        self._positive = {n for n in self._names if arg_constraints.get(n) is constraints.positive}
        for name, value in params.items():
            t = torch.full((latent_dim,), float(value))
            if learnable:
                if name in self._positive:
                    t = torch.log(torch.expm1(t))  # inverse softplus
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def forward(self) -> dist.TorchDistribution:
        kwargs = {}
        for name in self._names:
            v = getattr(self, name)
            if self.learnable and name in self._positive:
                v = nn.functional.softplus(v)
            kwargs[name] = v
        return self.family(**kwargs).to_event(1)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, family={getattr(self.family, '__name__', '?')}"


def Normal(latent_dim: int, loc: float = 0.0, scale: float = 1.0) -> Independent:
    """The standard VAE prior N(0, I) (or N(loc, scale² I))."""
    return Independent(latent_dim, dist.Normal, loc=loc, scale=scale)


def Laplace(latent_dim: int, loc: float = 0.0, scale: float = 1.0) -> Independent:
    """Laplace(0, b): with a point-mass guide its −log density is ‖z‖₁ / b + const (sparse AE)."""
    return Independent(latent_dim, dist.Laplace, loc=loc, scale=scale)


def StudentT(latent_dim: int, df: float = 3.0, loc: float = 0.0, scale: float = 1.0) -> Independent:
    """Heavy-tailed Student-t prior."""
    return Independent(latent_dim, dist.StudentT, df=df, loc=loc, scale=scale)


class Flat(Prior):
    """Improper flat prior p(z) ∝ 1: log density 0, cannot be sampled.

    With a point-mass guide it turns the ELBO into the plain reconstruction objective of an AE.
    """

    can_sample = False

    def forward(self) -> dist.TorchDistribution:
        return _FlatDensity(constraints.real, batch_shape=(), event_shape=(self.latent_dim,))


class _FlatDensity(dist.ImproperUniform):
    """``ImproperUniform`` whose zeros follow the scored value's device and dtype (Pyro's are
    always on the CPU, which breaks adding them to CUDA log-weights)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_zeros(value.shape[: value.dim() - self.event_dim])


class MixtureOfGaussians(Prior):
    """Learnable mixture of ``n_components`` diagonal Gaussians (a 'VampPrior-lite').

    Means start spread out (seeded), scales at 1 and weights uniform; all three are learned.
    """

    def __init__(self, latent_dim: int, n_components: int = 10, seed: int = 0) -> None:
        super().__init__(latent_dim)
        if n_components <= 0 or n_components != int(n_components):
            raise ValueError(f"n_components must be a positive integer, got {n_components}")
        n_components, seed = int(n_components), int(seed)
        g = torch.Generator().manual_seed(seed)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.locs = nn.Parameter(torch.randn(n_components, latent_dim, generator=g))
        self.raw_scales = nn.Parameter(torch.full((n_components, latent_dim), 0.5413))  # softplus→1

    def forward(self) -> dist.TorchDistribution:
        mix = dist.Categorical(logits=self.logits)
        comp = dist.Normal(self.locs, nn.functional.softplus(self.raw_scales)).to_event(1)
        return dist.MixtureSameFamily(mix, comp)


#: Name → factory ``f(latent_dim) -> Prior``, used by the CLI and configs.
PRIORS: dict[str, Callable[[int], Prior]] = {
    "normal": Normal,
    "laplace": Laplace,
    "student-t": StudentT,
    "mixture": MixtureOfGaussians,
    "flat": Flat,
}


def make_prior(name: str, latent_dim: int, **kwargs: float) -> Prior:
    """Build a registered prior by name; unknown names raise with the list of choices."""
    try:
        factory = PRIORS[name]
    except KeyError:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}") from None
    try:
        return factory(latent_dim, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad parameters {kwargs} for the {name!r} prior: {e}") from None
