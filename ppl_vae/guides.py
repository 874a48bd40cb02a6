"""Guide families q(z | x): how the encoder's output becomes a distribution over codes.

Protocol (all a user needs to plug in their own family)
-------------------------------------------------------
A guide family is an ``nn.Module`` with

* ``encoder_out(latent_dim) -> int`` — how many features the encoder must emit;
* ``dist(h) -> distribution`` — q(z | x) from encoder features ``h`` of shape ``(..., B, out)``,
  a Pyro distribution with ``event_shape == (latent_dim,)``;
* ``loc(h) -> tensor`` — a point code ``(..., B, latent_dim)`` (the mean where it is cheap);
* ``has_density: bool`` — False for the point mass, which has no density to weight samples with.

Parameters of the family itself (a flow's networks) are ordinary ``nn.Module`` parameters: the
:class:`~ppl_vae.model.VAE` registers the family with ``pyro.module``, so they are trained,
checkpointed and resumed like the encoder's, and ``fit`` refuses a model with any parameter
that no ``pyro.module``/``pyro.param`` call reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn import functional as F

__all__ = [
    "GUIDES",
    "FullCovNormalGuide",
    "GuideFamily",
    "IAFGuide",
    "LowRankNormalGuide",
    "NormalGuide",
    "PointMassGuide",
    "make_guide",
]

#: Added to every softplus scale so a collapsing unit cannot reach a zero (singular) scale.
MIN_SCALE = 1e-5


def _positive(t: torch.Tensor) -> torch.Tensor:
    return F.softplus(t) + MIN_SCALE


class GuideFamily(nn.Module):
    """Base class; ``latent_dim`` is optional for families whose shape follows the encoder."""

    has_density = True

    def __init__(self, latent_dim: int | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def encoder_out(self, latent_dim: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        return h[..., : self._dim(h)]

    def _dim(self, h: torch.Tensor) -> int:
        if self.latent_dim is None:
            raise ValueError(f"{type(self).__name__} needs latent_dim")
        return self.latent_dim


class NormalGuide(GuideFamily):
    """Amortised diagonal Normal q(z|x) = N(μ(x), diag σ(x)²); σ = softplus(·) + 1e-5."""

    def encoder_out(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        z_loc, z_raw_scale = h.chunk(2, dim=-1)  # (..., B, latent_dim) each
        return dist.Normal(z_loc, _positive(z_raw_scale)).to_event(1)

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        return h.chunk(2, dim=-1)[0]


class PointMassGuide(GuideFamily):
    """Point mass q(z|x) = δ(z − f(x)): the deterministic encoder of the AE family."""

    has_density = False

    def encoder_out(self, latent_dim: int) -> int:
        return latent_dim

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(h, event_dim=1)

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        return h


class FullCovNormalGuide(GuideFamily):
    """Full-covariance Normal: the encoder emits μ and the ``d(d+1)/2`` entries of a Cholesky
    factor L (diagonal through softplus), q(z|x) = N(μ(x), L(x) L(x)ᵀ)."""

    def encoder_out(self, latent_dim: int) -> int:
        return latent_dim + latent_dim * (latent_dim + 1) // 2

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        d = self._dim(h)
        loc, entries = h[..., :d], h[..., d:]
        rows, cols = torch.tril_indices(d, d, device=h.device)
        tril = h.new_zeros(*h.shape[:-1], d, d)
        tril[..., rows, cols] = entries
        diag = torch.diagonal(tril, dim1=-2, dim2=-1)
        tril = tril - torch.diag_embed(diag) + torch.diag_embed(_positive(diag))
        return dist.MultivariateNormal(loc, scale_tril=tril)


class LowRankNormalGuide(GuideFamily):
    """Low-rank plus diagonal covariance: q(z|x) = N(μ(x), W(x) W(x)ᵀ + diag D(x)), W of shape
    ``(latent_dim, rank)``: a correlated posterior at ``O(d·rank)`` cost."""

    def __init__(self, latent_dim: int | None = None, rank: int = 2) -> None:
        super().__init__(latent_dim)
        if int(rank) != rank or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = int(rank)

    def encoder_out(self, latent_dim: int) -> int:
        return latent_dim * (2 + self.rank)

    def parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, cov_factor, cov_diag)`` read off the encoder features."""
        d, r = self._dim(h), self.rank
        loc, factor, raw_diag = h.split([d, d * r, d], dim=-1)
        return loc, factor.reshape(*h.shape[:-1], d, r), _positive(raw_diag) ** 2

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        return _LowRankNormal(*self.parts(h))

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class _LowRankNormal(dist.LowRankMultivariateNormal):
    """``LowRankMultivariateNormal`` that draws its noise in one call.

    torch draws the factor's and the diagonal's noise in two calls, which a compiled (JIT) graph
    may run in the other order: the same seed would give other draws than plain Python. One draw,
    split, makes both consume the random stream identically.
    """

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        rank = self.cov_factor.shape[-1]
        eps = torch.randn(
            (*shape[:-1], rank + shape[-1]), dtype=self.loc.dtype, device=self.loc.device
        )
        eps_w, eps_d = eps.split([rank, shape[-1]], dim=-1)
        factor = (self._unbroadcasted_cov_factor @ eps_w.unsqueeze(-1)).squeeze(-1)
        return self.loc + factor + self._unbroadcasted_cov_diag.sqrt() * eps_d


class IAFGuide(GuideFamily):
    """Inverse autoregressive flow (Kingma et al., 2016) on top of a diagonal Normal.

    The encoder emits μ, the raw scale and a context vector ``c(x)``; ``num_flows`` of Pyro's
    conditional affine autoregressive transforms, each reading the context, map the base draw
    ``u ~ N(μ, σ²)`` to ``z``, so q(z|x) = N(u; μ, σ²) / |det ∂z/∂u|. The transforms' networks are
    parameters of this module (trained, checkpointed and resumed with the model).

    ``stable=True`` uses the IAF paper's gated update z ← σ·z + (1 − σ)·m, whose gate starts near
    1 (Pyro's sigmoid bias 2), so each flow starts close to the identity instead of a random affine
    map; the plain update z ← μ + exp(s)·z is the default.
    """

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int | None = None,
        hidden: Sequence[int] | None = None,
        stable: bool = False,
    ) -> None:
        super().__init__(latent_dim)
        self.stable = bool(stable)
        if int(num_flows) != num_flows or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows}")
        self.context_dim = int(context_dim or latent_dim)
        hidden = list(hidden) if hidden else [4 * latent_dim]
        # Each flow's autoregressive order is fixed, not drawn (Pyro draws a random permutation):
        # the identity, then reversed, alternating — so the seed alone fixes the guide.
        orders = [torch.arange(latent_dim), torch.arange(latent_dim).flip(0)]
        self.flows = nn.ModuleList(
            T.ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    latent_dim, self.context_dim, hidden, permutation=orders[i % 2]
                ),
                stable=self.stable,
            )
            for i in range(int(num_flows))
        )

    def encoder_out(self, latent_dim: int) -> int:
        return 2 * latent_dim + self.context_dim

    def dist(self, h: torch.Tensor) -> dist.TorchDistribution:
        d = self._dim(h)
        loc, raw_scale, context = h.split([d, d, self.context_dim], dim=-1)
        base = dist.Normal(loc, _positive(raw_scale)).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def loc(self, h: torch.Tensor) -> torch.Tensor:
        """The flow applied to the base mean: a point code (the flow's mean has no closed form)."""
        d = self._dim(h)
        z, context = h[..., :d], h[..., 2 * d :]
        for flow in self.flows:
            z = flow.condition(context)(z)
        return z

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, context_dim={self.context_dim}, "
            f"num_flows={len(self.flows)}, stable={self.stable}"
        )


#: Name → factory ``f(latent_dim, **kwargs) -> GuideFamily`` (the CLI's ``--guide``).
GUIDES: dict[str, Callable[..., GuideFamily]] = {
    "normal": NormalGuide,
    "delta": PointMassGuide,
    "full-normal": FullCovNormalGuide,
    "lowrank-normal": LowRankNormalGuide,
    "iaf": IAFGuide,
}


def make_guide(name: str, latent_dim: int, **kwargs: float) -> GuideFamily:
    """Build a registered guide family by name; unknown names raise with the list of choices."""
    try:
        factory = GUIDES[name]
    except KeyError:
        raise ValueError(f"unknown guide {name!r}; choose one of {sorted(GUIDES)}") from None
    try:
        return factory(latent_dim, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad parameters {kwargs} for the {name!r} guide: {e}") from None
