"""Density models on latent codes, to sample an auto-encoder that has no usable prior.

An AE's flat prior cannot be sampled, so decoding "random codes" needs a density fitted to the
training codes f(x): a Gaussian N(μ̂, Σ̂) (full or diagonal covariance) or a Gaussian mixture
(scikit-learn's ``GaussianMixture``). :class:`PriorDensity` wraps a VAE's own prior behind the
same interface, so one function, :func:`sample_images`, samples every model::

    codes = encode_dataset(ae, train_x)
    density = GMMDensity(10).fit(codes)
    images = sample_images(ae, density, 64, generator=torch.Generator().manual_seed(0))

Every density has ``fit(codes) -> self``, ``sample(n, generator=None) -> (n, k)`` codes and
``log_prob(codes) -> (n,)``. Samples are drawn with torch (not NumPy), so a ``torch.Generator``
makes them reproducible, and come back on the device and dtype of the fitted codes.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .metrics import eval_mode, map_batches

__all__ = [
    "GMMDensity",
    "GaussianDensity",
    "LatentDensity",
    "PriorDensity",
    "encode_dataset",
    "posterior_moments",
    "sample_images",
]


class _Encodes(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


class _HasPosterior(Protocol):
    def posterior(self, x: torch.Tensor) -> torch.distributions.Distribution: ...


class _Decodes(Protocol):
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class LatentDensity:
    """Base class: a density over ``(n, latent_dim)`` codes with torch sampling."""

    latent_dim: int = 0

    def fit(self, codes: torch.Tensor) -> LatentDensity:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def _check_codes(codes: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError(f"codes must be a (n, latent_dim) tensor, got {codes!r:.80}")
        if codes.shape[0] < min_rows:
            raise ValueError(f"need at least {min_rows} codes to fit, got {codes.shape[0]}")
        if not torch.isfinite(codes).all():
            raise ValueError("codes contain NaN or Inf")
        return codes.detach()


def _randn(n: int, k: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(n, k, generator=generator, device=device, dtype=like.dtype).to(like.device)


class GaussianDensity(LatentDensity):
    """N(μ̂, Σ̂) with the sample mean and covariance of the codes (``full=False``: diagonal Σ̂).

    ``ridge`` (× the mean code variance) is added to the diagonal so that a rank-deficient set of
    codes — e.g. fewer codes than dimensions, or a dead unit — still gives a valid density.
    """

    def __init__(self, full: bool = True, ridge: float = 1e-6) -> None:
        self.full = full
        self.ridge = ridge
        self.mean: torch.Tensor | None = None
        self.covariance: torch.Tensor | None = None  # (k, k), diagonal matrix if not full

    def fit(self, codes: torch.Tensor) -> GaussianDensity:
        codes = self._check_codes(codes)
        z = codes.double()
        mean = z.mean(0)
        zc = z - mean
        cov = zc.T @ zc / (z.shape[0] - 1)
        if not self.full:
            cov = torch.diag(torch.diagonal(cov))
        cov = cov + self.ridge * max(float(torch.diagonal(cov).mean()), 1e-12) * torch.eye(
            cov.shape[0], dtype=cov.dtype, device=cov.device
        )
        self.latent_dim = codes.shape[1]
        self.mean = mean.to(codes.dtype)
        self.covariance = cov.to(codes.dtype)
        self._chol = torch.linalg.cholesky(cov).to(codes.dtype)
        return self

    def _check_fitted(self) -> None:
        if self.mean is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(codes)")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_fitted()
        eps = _randn(n, self.latent_dim, generator, self.mean)
        return self.mean + eps @ self._chol.T

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        d = torch.distributions.MultivariateNormal(self.mean, scale_tril=self._chol)
        return d.log_prob(codes)

    def __repr__(self) -> str:
        return f"GaussianDensity(full={self.full})"


class GMMDensity(LatentDensity):
    """A mixture of ``n_components`` Gaussians fitted by EM (``sklearn.mixture.GaussianMixture``).

    ``covariance_type`` is scikit-learn's (``full``, ``diag``, ``tied``, ``spherical``). Fitting
    runs on the CPU in float64 and is seeded by ``seed``; sampling is done in torch from the
    fitted weights, means and Cholesky factors.
    """

    def __init__(
        self,
        n_components: int = 10,
        covariance_type: str = "full",
        seed: int = 0,
        max_iter: int = 200,
        reg_covar: float = 1e-6,
    ) -> None:
        if not isinstance(n_components, int) or n_components <= 0:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.seed = seed
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.gmm = None

    def fit(self, codes: torch.Tensor) -> GMMDensity:
        from sklearn.mixture import GaussianMixture

        codes = self._check_codes(codes, min_rows=max(2, self.n_components))
        self.gmm = GaussianMixture(
            self.n_components,
            covariance_type=self.covariance_type,
            random_state=self.seed,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
        ).fit(codes.double().cpu().numpy())
        self.latent_dim = codes.shape[1]
        like = codes
        k, m = self.n_components, self.latent_dim
        cov = torch.as_tensor(self.gmm.covariances_, dtype=torch.float64)
        if self.covariance_type == "full":
            full = cov
        elif self.covariance_type == "tied":
            full = cov.expand(k, m, m)
        elif self.covariance_type == "diag":
            full = torch.diag_embed(cov)
        else:  # spherical
            full = cov[:, None, None] * torch.eye(m, dtype=torch.float64)
        self.weights = torch.as_tensor(self.gmm.weights_).to(like)
        self.means = torch.as_tensor(self.gmm.means_).to(like)
        self.covariances = full.to(like)
        self._chol = torch.linalg.cholesky(full).to(like)
        return self

    @property
    def converged(self) -> bool:
        """Whether EM converged (scikit-learn's ``converged_``)."""
        return bool(self.gmm is not None and self.gmm.converged_)

    def _check_fitted(self) -> None:
        if self.gmm is None:
            raise RuntimeError("GMMDensity is not fitted yet: call fit(codes)")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_fitted()
        device = generator.device if generator is not None else self.weights.device
        comp = torch.multinomial(
            self.weights.to(device), n, replacement=True, generator=generator
        ).to(self.weights.device)
        eps = _randn(n, self.latent_dim, generator, self.means)
        return self.means[comp] + (self._chol[comp] @ eps[:, :, None])[:, :, 0]

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        comps = torch.distributions.MultivariateNormal(self.means, scale_tril=self._chol)
        lp = comps.log_prob(codes[:, None, :])  # (n, K)
        return torch.logsumexp(lp + self.weights.log(), dim=-1)

    def __repr__(self) -> str:
        return f"GMMDensity(n_components={self.n_components}, covariance={self.covariance_type!r})"


class PriorDensity(LatentDensity):
    """A VAE's prior p(z) behind the density interface; ``fit`` does nothing.

    Pyro distributions take no ``torch.Generator``, so a given generator seeds torch's global RNG
    inside a forked RNG state: reproducible, and the caller's global RNG is left untouched.
    """

    def __init__(self, model: object) -> None:
        prior = getattr(model, "prior", None)
        if prior is None or not getattr(prior, "can_sample", False):
            name = type(prior).__name__ if prior is not None else type(model).__name__
            raise ValueError(
                f"the {name} prior cannot be sampled; fit GaussianDensity or GMMDensity on the "
                "training codes instead"
            )
        self.prior = prior
        self.latent_dim = prior.latent_dim

    def fit(self, codes: torch.Tensor | None = None) -> PriorDensity:
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return self.prior().sample((n,))
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        devices = [generator.device] if generator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.prior().sample((n,))

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        return self.prior().log_prob(codes)

    def __repr__(self) -> str:
        return f"PriorDensity({type(self.prior).__name__})"


def encode_dataset(model: _Encodes, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``model.encode`` over ``x`` in batches, in eval mode, without gradients: ``(N, latent_dim)``
    codes."""
    with eval_mode(model):
        return torch.cat(map_batches(model.encode, x, batch_size=batch_size))


def posterior_moments(
    model: _HasPosterior, x: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z | x)'s mean and per-unit standard deviation over ``x`` in batches, in eval mode,
    without gradients: two ``(N, latent_dim)`` tensors. What the stacked M1+M2 needs to train M2
    on fresh draws z ~ q(z | x) (:class:`ppl_vae.semisupervised.SemiSupervisedSplit`), which
    treats q as a diagonal Normal (the library's ``NormalGuide``); a q without a closed-form
    mean (an IAF guide) raises, and for a full-covariance q only the marginal deviations
    come back."""

    def moments(b: torch.Tensor) -> torch.Tensor:
        q = model.posterior(b)
        return torch.stack([q.mean, q.stddev])

    with eval_mode(model):
        loc, scale = torch.cat(map_batches(moments, x, batch_size=batch_size), dim=1)
    return loc, scale


@torch.no_grad()
def sample_images(
    model: _Decodes,
    density: LatentDensity,
    n: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode ``n`` codes drawn from ``density``: ``(n, *image_shape)`` mean images E[x | z].

    Works for any object with ``decode`` (AE family, VAE, :class:`~ppl_vae.pca.PCA`).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return model.decode(density.sample(n, generator=generator))
