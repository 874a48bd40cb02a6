"""Priors p(z): swappable ``nn.Module`` components that return a Pyro distribution.

Protocol (all a user needs to plug in their own prior)
------------------------------------------------------
A prior is an ``nn.Module`` with an integer attribute ``latent_dim`` whose ``forward()`` returns a
Pyro distribution with ``event_shape == (latent_dim,)`` and empty batch shape. Constants live in
buffers and learnable values in parameters, so ``.to(device)`` moves them and ``pyro.module``
trains them. :class:`Independent` builds such a prior from *any* Pyro distribution class.

The model draws the code with ``prior.sample_latent("z")``, which by default is
``pyro.sample("z", prior())``; a prior with auxiliary latents overrides it (the enumerated
mixture :class:`GaussianMixture` samples its component ``"c"`` first, for ``TraceEnum_ELBO`` to
sum out). ``reset_parameters()`` re-initialises learnable values (``build_model(seed=…)``).
A prior that depends on the rest of the model (the VampPrior mixes the guide's posteriors) has an
``attach(vae)`` method, which the :class:`~ppl_vae.model.VAE` calls once it holds every part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

__all__ = [
    "PRIORS",
    "Flat",
    "GaussianMixture",
    "Independent",
    "Laplace",
    "MixtureOfGaussians",
    "Normal",
    "Prior",
    "StudentT",
    "VampPrior",
    "make_prior",
]


class Prior(nn.Module):
    """Base class: a distribution over ``latent_dim``-dimensional codes."""

    latent_dim: int
    #: False for improper priors, which can score codes but not draw them.
    can_sample: bool = True
    #: True for priors whose sample_latent has discrete sites to enumerate (the auto objective
    #: picks TraceEnum_ELBO).
    enumerated: bool = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_latent(self, name: str) -> torch.Tensor:
        """Sample the code at site ``name`` inside the model (and any auxiliary sites)."""
        return pyro.sample(name, self())


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
        self._values = {name: float(value) for name, value in params.items()}
        for name, value in self._values.items():
            t = torch.full((latent_dim,), value)
            if learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Learnable values back to the constructor's (positive ones through inverse softplus)."""
        if not self.learnable:
            return
        with torch.no_grad():
            for name, value in self._values.items():
                t = torch.tensor(value)
                getattr(self, name).fill_(
                    torch.log(torch.expm1(t)) if name in self._positive else t
                )

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
        self.n_components, self.seed = int(n_components), int(seed)
        self.logits = nn.Parameter(torch.zeros(self.n_components))
        self.locs = nn.Parameter(torch.zeros(self.n_components, latent_dim))
        self.raw_scales = nn.Parameter(torch.zeros(self.n_components, latent_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Means from N(0, I) drawn with the prior's own ``seed``, scales 1, uniform weights."""
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            self.logits.zero_()
            self.locs.copy_(torch.randn(self.locs.shape, generator=g))
            self.raw_scales.fill_(0.5413)  # softplus(0.5413) = 1

    def forward(self) -> dist.TorchDistribution:
        mix = dist.Categorical(logits=self.logits)
        comp = dist.Normal(self.locs, nn.functional.softplus(self.raw_scales)).to_event(1)
        return dist.MixtureSameFamily(mix, comp)


class GaussianMixture(MixtureOfGaussians):
    """The same learnable mixture with its component as an explicit latent: the Gaussian-mixture
    VAE's prior, c ~ Categorical(π), z | c ~ N(μ_c, diag σ_c²).

    The model samples ``"c"`` marked for parallel enumeration, so ``TraceEnum_ELBO`` sums it out
    exactly (the guide need not sample it): the loss equals the one of the marginal mixture
    density ``forward()`` returns, which is what sampling and :mod:`ppl_vae.latent` use.
    """

    enumerated = True

    def sample_latent(self, name: str) -> torch.Tensor:
        c = pyro.sample("c", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
        scales = nn.functional.softplus(self.raw_scales)
        return pyro.sample(name, dist.Normal(self.locs[c], scales[c]).to_event(1))


class DiagNormalMixture(dist.TorchDistribution):
    """(1/K) Σ_k N(z; μ_k, diag σ_k²): an equal-weight mixture of K diagonal Normals, scored by two
    matrix products instead of a (…, K, d) tensor of per-dimension terms.

    Σ_d (z_d − μ_kd)²/σ_kd² = z²·(1/σ_k²) − 2 z·(μ_k/σ_k²) + Σ_d μ_kd²/σ_kd², so ``log_prob``
    costs O(K·d) multiply-adds per code in BLAS and O(K) memory, where ``MixtureSameFamily``
    builds and reduces K·d numbers per code (the VampPrior's evaluation with K = 5000 draws spent
    hours there). The quadratic form is summed in float64, so the expansion's cancellation costs
    no precision. Same density as ``MixtureSameFamily(Categorical, Independent(Normal))``.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(f"loc and scale must both be (K, d), got {loc.shape}, {scale.shape}")
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z, loc, scale = value.double(), self.loc.double(), self.scale.double()
        prec = scale.pow(-2)  # (K, d)
        quad = z.pow(2) @ prec.T - 2 * z @ (loc * prec).T + (loc.pow(2) * prec).sum(-1)  # (…, K)
        k, d = loc.shape
        comp = -0.5 * quad - scale.log().sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return (comp.logsumexp(-1) - math.log(k)).to(value.dtype)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            k = torch.randint(self.loc.shape[0], tuple(sample_shape), device=self.loc.device)
            return self.loc[k] + self.scale[k] * torch.randn_like(self.loc[k])

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.mean(0)


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) Σ_k q(z | u_k), the mixture of the
    guide's own posteriors at K learnable pseudo-inputs u_k.

    The pseudo-inputs live in pixel space, hard-clipped to [0, 1] (the paper's hardtanh), and
    start at N(``init_mean``, ``init_std``²) like the paper's MNIST runs. The prior evaluates the
    model's encoder and guide family, so it is usable only inside a :class:`~ppl_vae.model.VAE`
    (``attach``) with a Normal guide family (diagonal, low-rank or full covariance: families
    whose distribution broadcasts over a batch of K inputs). Its log-density costs one encoder
    pass over the K pseudo-inputs per model call and ``K · latent_dim`` numbers per scored code,
    which :meth:`Program.elements_per_particle` counts so importance sampling stays in bounds.
    """

    def __init__(
        self,
        latent_dim: int,
        n_pseudo: int = 500,
        init_mean: float = 0.05,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(latent_dim)
        if n_pseudo <= 0 or n_pseudo != int(n_pseudo):
            raise ValueError(f"n_pseudo must be a positive integer, got {n_pseudo}")
        self.n_pseudo, self.init_mean, self.init_std = int(n_pseudo), init_mean, init_std
        self.raw_pseudo = nn.Parameter(torch.empty(0))  # shaped by attach, from the images
        self.__dict__["_vae"] = None  # a plain reference: the VAE owns this prior, not reverse

    @property
    def elements_per_point(self) -> int:
        """Numbers one scored code needs: K per (…, K) matrix of the diagonal fast path (a few of
        them, in float64), K · latent_dim for the other guide families' mixture."""
        from .guides import NormalGuide

        vae = self.__dict__["_vae"]
        if vae is not None and type(vae.guide_family) is NormalGuide:
            return 8 * self.n_pseudo
        return self.n_pseudo * self.latent_dim

    def attach(self, vae: nn.Module) -> None:
        from .guides import FullCovNormalGuide, LowRankNormalGuide, NormalGuide

        families = (NormalGuide, FullCovNormalGuide, LowRankNormalGuide)
        if not isinstance(vae.guide_family, families):
            raise ValueError(
                "the VampPrior mixes the guide's posteriors at its pseudo-inputs, so it needs a "
                f"Normal guide family (normal, lowrank-normal, full-normal), not "
                f"{type(vae.guide_family).__name__}"
            )
        self.__dict__["_vae"] = vae
        self.raw_pseudo = nn.Parameter(torch.empty(self.n_pseudo, *vae.image_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Pseudo-inputs from N(init_mean, init_std²), drawn from torch's (seeded) stream."""
        with torch.no_grad():
            self.raw_pseudo.normal_(self.init_mean, self.init_std)

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k, in [0, 1]: shape ``(K, *image_shape)``."""
        return nn.functional.hardtanh(self.raw_pseudo, 0.0, 1.0)

    def forward(self) -> dist.TorchDistribution:
        vae = self.__dict__["_vae"]
        if vae is None:
            raise RuntimeError(
                "this VampPrior belongs to no model: build it into a VAE (prior='vamp')"
            )
        components = vae.guide_family.dist(vae.encoder(self.pseudo_inputs))  # batch (K,)
        base = getattr(components, "base_dist", None)
        if isinstance(components, dist.Independent) and isinstance(base, dist.Normal):
            return DiagNormalMixture(base.loc, base.scale)  # the fast path (diagonal guides)
        mix = dist.Categorical(logits=self.raw_pseudo.new_zeros(self.n_pseudo))
        return dist.MixtureSameFamily(mix, components)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_pseudo={self.n_pseudo}"


#: Name → factory ``f(latent_dim) -> Prior``, used by the CLI and configs.
PRIORS: dict[str, Callable[[int], Prior]] = {
    "normal": Normal,
    "laplace": Laplace,
    "student-t": StudentT,
    "mixture": MixtureOfGaussians,
    "gmm": GaussianMixture,
    "vamp": VampPrior,
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
