"""Probabilistic PCA, the linear-Gaussian model whose log p(x), posterior and ELBO are known
exactly: the tests check the library's ELBO, importance sampling and IWAE bounds against it."""

from __future__ import annotations

import torch

from ppl_vae import VAE
from ppl_vae import likelihoods as L
from ppl_vae import priors as P
from ppl_vae.nets import MLPDecoder, MLPEncoder


class PPCA:
    """x = W z + b + σ ε, z ~ N(0, I): log p(x) = log N(x; b, W Wᵀ + σ² I). W has orthogonal
    columns, so the exact posterior N(A(x − b), σ² M⁻¹), M = WᵀW + σ²I, A = M⁻¹Wᵀ, is diagonal.
    For a diagonal guide N(m, diag s²) the ELBO is known in closed form too."""

    d, k, sigma = 6, 2, 0.5

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(self.d, self.k, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 1.2], dtype=torch.float64)
        self.b = torch.randn(self.d, generator=g, dtype=torch.float64)
        m = self.W.T @ self.W + self.sigma**2 * torch.eye(self.k, dtype=torch.float64)
        self.A = torch.linalg.solve(m, self.W.T)
        self.post_std = (self.sigma**2 * torch.diag(torch.linalg.inv(m))).sqrt()

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * eps

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def vae(self, mean_factor: float = 1.0, std_factor: float = 1.0) -> VAE:
        """The PPCA model with the guide μ = factor · A(x − b), s = factor · posterior std."""
        enc = MLPEncoder((self.d,), 2 * self.k, hidden=())
        dec = MLPDecoder(self.k, (self.d,), hidden=())
        lik = L.Gaussian(variance=self.sigma**2, link="identity")
        model = VAE(enc, dec, P.Normal(self.k), lik, (self.d,)).double()
        s = self.post_std * std_factor
        with torch.no_grad():
            dec.net[0].weight.copy_(self.W)
            dec.net[0].bias.copy_(self.b)
            enc.net[0].weight.zero_()
            enc.net[0].weight[: self.k] = mean_factor * self.A
            enc.net[0].bias[: self.k] = -mean_factor * self.A @ self.b
            enc.net[0].bias[self.k :] = torch.log(torch.expm1(s - 1e-5))
        return model

    def elbo(self, model: VAE, x: torch.Tensor) -> torch.Tensor:
        """E_q[log N(x; Wz + b, σ²I)] − KL(q ‖ N(0, I)) in closed form, per data point."""
        q = model.posterior(x).base_dist
        m, s2 = q.loc, q.scale**2
        rec = torch.distributions.Normal(m @ self.W.T + self.b, self.sigma).log_prob(x).sum(-1)
        rec = rec - (s2 * (self.W**2).sum(0)).sum(-1) / (2 * self.sigma**2)
        kl = 0.5 * (s2 + m**2 - 1 - s2.log()).sum(-1)
        return rec - kl
