"""Completing partly observed images: samples of p(z | x_visible) under a trained model.

Given an image and a mask of its visible pixels, the model that observes only those pixels
(``vae.model(x, mask=visible)``) has the posterior p(z | x_visible); decoding its draws gives
completions of the hidden pixels, and their spread shows the modes a single point answer (a
denoising AE's) averages away. Three ways to sample it:

- :func:`nuts_completions` — Pyro's NUTS on the conditioned model, several chains from
  over-dispersed starts (prior draws): asymptotically exact, with rank-normalised split-R̂ and
  bulk ESS (Vehtari et al., 2021) to say whether the chains agree;
- :func:`importance_completions` — sampling-importance-resampling from the amortised guide
  (mixed with the prior, since the encoder never saw masked images): cheap, but its effective
  sample size is often tiny;
- :func:`svi_completions` — a diagonal Normal guide refitted by SVI to the visible pixels of this
  one image (started at the encoder's answer): fast and smooth, but unimodal by construction.

Each returns a :class:`Completion`; :func:`hidden_log_likelihood` scores any of them (or a point
answer) by log p(x_hidden | x_visible) under the same model's likelihood.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, Trace_ELBO
from pyro.ops.stats import effective_sample_size, split_gelman_rubin

__all__ = [
    "Completion",
    "bulk_ess",
    "hidden_log_likelihood",
    "importance_completions",
    "nuts_completions",
    "point_log_likelihood",
    "rank_rhat",
    "svi_completions",
]


@dataclass
class Completion:
    """Posterior draws of z for one partly observed image, and what they say.

    ``z`` has shape ``(chains, draws, latent_dim)`` (one chain for the samplers without chains);
    ``log_weights`` (flattened draws) is set for importance sampling, None when draws are equally
    weighted. ``rhat``/``ess`` are the worst over latent dimensions (max R̂, min bulk ESS); NaN
    where the method has no such diagnostic.
    """

    method: str
    z: torch.Tensor
    log_weights: torch.Tensor | None = None
    rhat: float = math.nan
    ess: float = math.nan
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def draws(self) -> torch.Tensor:
        """All draws, ``(chains · draws, latent_dim)``."""
        return self.z.reshape(-1, self.z.shape[-1])

    def resample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` codes for figures: resampled by weight, or evenly spaced through the draws."""
        z = self.draws
        if self.log_weights is not None:
            w = torch.softmax(self.log_weights, 0).cpu()
            idx = torch.multinomial(w, n, replacement=True, generator=generator)
        else:
            perm = torch.randperm(len(z), generator=generator)
            idx = perm[:n] if n <= len(z) else perm[torch.arange(n) % len(z)]
        return z[idx.to(z.device)]


def _check(vae: Any, x: torch.Tensor, visible: torch.Tensor) -> None:
    if x.dim() != len(vae.image_shape) or tuple(x.shape) != vae.image_shape:
        raise ValueError(f"x must be one image of shape {vae.image_shape}, got {tuple(x.shape)}")
    if visible.shape != x.shape or visible.dtype != torch.bool:
        raise ValueError("visible must be a boolean mask of x's shape (True = observed pixel)")
    if bool(visible.all()) or not bool(visible.any()):
        raise ValueError("the mask must hide some pixels and show some: nothing to complete")


def _rank_normalise(z: torch.Tensor) -> torch.Tensor:
    """Rank-normalised draws (Vehtari et al. 2021): Φ⁻¹((rank − 3/8) / (S + 1/4)) per dim."""
    flat = z.reshape(-1, z.shape[-1])
    ranks = flat.argsort(0).argsort(0).to(z.dtype) + 1.0
    u = (ranks - 0.375) / (flat.shape[0] + 0.25)
    return dist.Normal(0.0, 1.0).icdf(u).reshape(z.shape)


def rank_rhat(z: torch.Tensor) -> torch.Tensor:
    """Rank-normalised split-R̂ per dimension of draws ``(chains, draws, dim)``."""
    return split_gelman_rubin(_rank_normalise(z), chain_dim=0, sample_dim=1)


def bulk_ess(z: torch.Tensor) -> torch.Tensor:
    """Bulk effective sample size per dimension (ESS of the rank-normalised draws)."""
    return effective_sample_size(_rank_normalise(z), chain_dim=0, sample_dim=1)


def _conditioned(vae: Any, x: torch.Tensor, visible: torch.Tensor):
    def model() -> torch.Tensor:
        return vae.model(x[None], mask=visible[None])

    return model


def nuts_completions(
    vae: Any,
    x: torch.Tensor,
    visible: torch.Tensor,
    *,
    num_chains: int = 4,
    warmup: int = 300,
    num_samples: int = 300,
    seed: int = 0,
    jit: bool = True,
    target_accept_prob: float = 0.8,
) -> Completion:
    """NUTS on z ~ p(z | x_visible), ``num_chains`` chains run one after another, each started at
    its own prior draw (over-dispersed starts, so R̂ can reveal chains stuck in separate modes).

    ``x`` is one image and ``visible`` its boolean mask. The networks are fixed (no gradients
    reach them); the chains' seeds are ``seed, seed + 1, …``; ``jit`` compiles the potential
    (several times faster per leapfrog step on a small decoder).
    """
    _check(vae, x, visible)
    model = _conditioned(vae, x, visible)
    t0 = time.perf_counter()
    chains, steps, divergent = [], [], 0
    # The networks are constants of the potential (the JIT-traced potential needs them without
    # gradients); their requires_grad flags are restored afterwards.
    was = [p.requires_grad for p in vae.parameters()]
    vae.requires_grad_(False)
    try:
        for c in range(num_chains):
            pyro.set_rng_seed(seed + c)
            with torch.no_grad():
                z0 = vae.prior().sample((1,))
            kernel = NUTS(
                model,
                max_plate_nesting=1,
                jit_compile=jit,
                ignore_jit_warnings=True,
                target_accept_prob=target_accept_prob,
            )
            mcmc = MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                initial_params={"z": z0},
                disable_progbar=True,
            )
            with warnings.catch_warnings():
                # torch.jit.trace's deprecation; pyro.module not storing frozen weights (intended)
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*not registered in the param store")
                mcmc.run()
            chains.append(mcmc.get_samples()["z"].reshape(num_samples, -1))
            divergent += sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
            steps.append(kernel.step_size)
    finally:
        for p, r in zip(vae.parameters(), was, strict=True):
            p.requires_grad_(r)
    z = torch.stack(chains)  # (chains, draws, d)
    return Completion(
        "nuts",
        z,
        rhat=float(rank_rhat(z).max()) if num_chains > 1 else math.nan,
        ess=float(bulk_ess(z).min()),
        seconds=time.perf_counter() - t0,
        info={"divergences": divergent, "step_sizes": [float(s) for s in steps]},
    )


@torch.no_grad()
def importance_completions(
    vae: Any,
    x: torch.Tensor,
    visible: torch.Tensor,
    *,
    num_particles: int = 20_000,
    widen: float = 0.5,
    seed: int = 0,
) -> Completion:
    """Importance sampling of p(z | x_visible) with the proposal ½ p(z) + ½ N(μ(x̃), σ(x̃)² + w²):
    the prior mixed with a widened amortised posterior of the masked image (the encoder never saw
    masked images, so it is a hint; the prior half keeps every mode reachable). Weights use the
    visible pixels only; the ESS is (Σw)²/Σw²."""
    _check(vae, x, visible)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    x_tilde = x * visible
    q = vae.posterior(x_tilde[None])
    loc, scale = q.base_dist.loc[0], q.base_dist.scale[0]
    wide = (scale**2 + widen**2).sqrt()
    half = num_particles // 2
    d = vae.latent_dim
    z = torch.cat(
        [
            torch.randn(half, d, generator=g).to(loc),
            loc + wide * torch.randn(num_particles - half, d, generator=g).to(loc),
        ]
    )
    log_p = vae.prior().log_prob(z)
    log_r = torch.logaddexp(log_p, dist.Normal(loc, wide).to_event(1).log_prob(z)) - math.log(2)
    log_w = log_p + _pixel_log_lik(vae, z, x, visible) - log_r
    w = torch.softmax(log_w, 0)
    return Completion(
        "importance",
        z[None],
        log_weights=log_w,
        ess=float(1.0 / (w**2).sum()),
        seconds=time.perf_counter() - t0,
        info={"num_particles": num_particles, "widen": widen},
    )


def svi_completions(
    vae: Any,
    x: torch.Tensor,
    visible: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 0.05,
    particles: int = 16,
    num_samples: int = 1000,
    seed: int = 0,
) -> Completion:
    """A diagonal Normal q(z) refitted by SVI to the visible pixels of this image, started at the
    encoder's posterior of the masked image; returns ``num_samples`` independent draws of it (so
    ESS = ``num_samples``; a single Normal cannot hold several modes, so it shows one)."""
    _check(vae, x, visible)
    t0 = time.perf_counter()
    pyro.set_rng_seed(seed)
    model = _conditioned(vae, x, visible)
    with torch.no_grad():
        q = vae.posterior((x * visible)[None])
    loc = q.base_dist.loc.detach().clone().requires_grad_()
    log_scale = q.base_dist.scale.log().detach().clone().requires_grad_()

    def guide() -> torch.Tensor:
        with pyro.plate("data", 1):
            return pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    opt = torch.optim.Adam([loc, log_scale], lr=lr)
    # the rate decays to lr/20 so that the last steps settle instead of jittering at lr's scale
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(1 / 20) ** (1 / max(1, steps)))
    for _ in range(steps):  # gradients for the guide alone: the networks' .grad stay untouched
        loss = elbo.differentiable_loss(model, guide)
        loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
        opt.step()
        decay.step()
    with torch.no_grad():
        z = dist.Normal(loc[0], log_scale[0].exp()).sample((num_samples,))
    return Completion(
        "svi",
        z[None],
        ess=float(num_samples),
        seconds=time.perf_counter() - t0,
        info={"steps": steps, "final_loss": float(loss.detach()), "particles": particles},
    )


def _pixel_log_lik(
    vae: Any, z: torch.Tensor, x: torch.Tensor, pixels: torch.Tensor, chunk: int = 2000
) -> torch.Tensor:
    """log p(x_pixels | z) for codes ``(S, d)``: the model's likelihood summed over ``pixels``."""
    out = []
    for zc in z.split(chunk):
        params = vae.decoder(zc)
        ll = vae.likelihood(params).base_dist.log_prob(x.expand(len(zc), *x.shape))
        out.append((ll * pixels).flatten(1).sum(1))
    return torch.cat(out)


@torch.no_grad()
def hidden_log_likelihood(
    vae: Any, completion: Completion, x: torch.Tensor, visible: torch.Tensor
) -> float:
    """log p(x_hidden | x_visible) ≈ log Σ_s w_s p(x_hidden | z_s) under ``vae``'s likelihood,
    with the completion's draws (normalised weights, or equal ones)."""
    ll = _pixel_log_lik(vae, completion.draws, x, ~visible)
    if completion.log_weights is None:
        return float(torch.logsumexp(ll, 0) - math.log(len(ll)))
    return float(torch.logsumexp(ll + torch.log_softmax(completion.log_weights, 0), 0))


@torch.no_grad()
def point_log_likelihood(
    vae: Any, answer: torch.Tensor, x: torch.Tensor, visible: torch.Tensor, eps: float = 1e-3
) -> float:
    """log p(x_hidden | answer): a point answer (a DAE's image, in [0, 1]) scored as the mean of
    the model's Bernoulli likelihood on the hidden pixels, clipped to [eps, 1 − eps] so that an
    exact 0 or 1 is not an infinite penalty."""
    if type(vae.likelihood).__name__ != "Bernoulli":
        raise ValueError("a point answer is scored as Bernoulli means: the model must be Bernoulli")
    p = answer.clamp(eps, 1 - eps)
    ll = x * p.log() + (1 - x) * (1 - p).log()
    return float((ll * ~visible).sum())
