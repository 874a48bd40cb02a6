"""Completions of partly observed data (:mod:`ppl_vae.completion`) against the exact answer.

In probabilistic PCA the posterior given some coordinates of x, p(z | x_visible), and the
predictive density of the others, p(x_hidden | x_visible), are Gaussian in closed form: NUTS,
importance sampling and the refitted guide must recover them, and the hidden-pixel log-likelihood
must match the exact one."""

from __future__ import annotations

import math

import pytest
import torch
from ppca import PPCA

from ppl_vae.completion import (
    Completion,
    bulk_ess,
    hidden_log_likelihood,
    importance_completions,
    nuts_completions,
    point_log_likelihood,
    rank_rhat,
    svi_completions,
)

VISIBLE = torch.tensor([True, True, False, True, False, True])


def _exact(p: PPCA, x: torch.Tensor, visible: torch.Tensor):
    """Mean and covariance of p(z | x_v) and the distribution of x_h given x_v."""
    wv, wh = p.W[visible], p.W[~visible]
    m = wv.T @ wv + p.sigma**2 * torch.eye(p.k, dtype=torch.float64)
    cov = p.sigma**2 * torch.linalg.inv(m)
    mean = torch.linalg.solve(m, wv.T @ (x[visible] - p.b[visible]))
    hidden = torch.distributions.MultivariateNormal(
        wh @ mean + p.b[~visible],
        wh @ cov @ wh.T + p.sigma**2 * torch.eye(int((~visible).sum()), dtype=torch.float64),
    )
    return mean, cov, hidden


@pytest.fixture(scope="module")
def problem():
    p = PPCA()
    x = p.sample(1, seed=3)[0]
    return p, p.vae(), x, _exact(p, x, VISIBLE)


def test_nuts_recovers_the_exact_posterior_given_the_visible_coordinates(problem):
    p, vae, x, (mean, cov, hidden) = problem
    c = nuts_completions(vae, x, VISIBLE, num_chains=2, warmup=150, num_samples=400, seed=0)
    assert c.z.shape == (2, 400, p.k)
    assert c.rhat < 1.05 and c.ess > 200
    draws = c.draws
    se = cov.diagonal().sqrt() / math.sqrt(c.ess)
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(draws.T.cov(), cov, atol=0.1 * float(cov.diagonal().max()), rtol=0)
    exact = float(hidden.log_prob(x[~VISIBLE]))
    # log of a mean over correlated draws: its standard error is sd(p) / (mean(p) √ESS)
    dec = vae.decoder(draws).detach()
    p_h = torch.distributions.Normal(dec[:, ~VISIBLE], p.sigma).log_prob(x[~VISIBLE]).sum(-1).exp()
    se = float(p_h.std() / p_h.mean()) / math.sqrt(c.ess)
    assert hidden_log_likelihood(vae, c, x, VISIBLE) == pytest.approx(exact, abs=4 * se)


def test_importance_sampling_and_its_hidden_log_likelihood_are_exact(problem):
    _, vae, x, (mean, _, hidden) = problem
    c = importance_completions(vae, x, VISIBLE, num_particles=40_000, seed=1)
    w = torch.softmax(c.log_weights, 0)
    torch.testing.assert_close((w[:, None] * c.draws).sum(0), mean, atol=0.02, rtol=0)
    assert c.ess > 1000 and math.isnan(c.rhat)
    exact = float(hidden.log_prob(x[~VISIBLE]))
    assert hidden_log_likelihood(vae, c, x, VISIBLE) == pytest.approx(exact, abs=0.01)


def test_the_refitted_guide_finds_the_posterior_mean(problem):
    _, vae, x, (mean, _, _) = problem
    c = svi_completions(vae, x, VISIBLE, steps=300, lr=0.05, num_samples=4000, seed=2)
    assert c.ess == 4000
    torch.testing.assert_close(c.draws.mean(0), mean, atol=0.05, rtol=0)


def test_a_point_answer_is_scored_as_bernoulli_means_on_the_hidden_pixels():
    from ppl_vae import ModelConfig, build_model

    vae = build_model(ModelConfig(latent_dim=2, hidden=(8,)), (1, 2, 2), seed=0)
    x = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])
    visible = torch.tensor([[[True, False], [False, True]]])
    answer = torch.tensor([[[0.3, 0.2], [0.0, 0.9]]])
    p = answer.clamp(1e-3, 1 - 1e-3)
    by_hand = (0 * p[0, 0, 1].log() + 1 * (1 - p[0, 0, 1]).log()) + (
        0.5 * p[0, 1, 0].log() + 0.5 * (1 - p[0, 1, 0]).log()
    )
    assert point_log_likelihood(vae, answer, x, visible) == pytest.approx(float(by_hand))
    with pytest.raises(ValueError, match="Bernoulli"):
        point_log_likelihood(PPCA().vae(), torch.zeros(6), torch.zeros(6), VISIBLE)


def test_bad_masks_are_refused(problem):
    _, vae, x, _ = problem
    with pytest.raises(ValueError, match="boolean mask"):
        importance_completions(vae, x, VISIBLE.double())
    with pytest.raises(ValueError, match="hide some pixels"):
        importance_completions(vae, x, torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="one image"):
        importance_completions(vae, x[None], VISIBLE[None])


def test_rank_diagnostics_tell_agreeing_chains_from_stuck_ones():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(4, 500, 3, generator=g)
    assert (rank_rhat(same) < 1.02).all()
    ess = bulk_ess(same)
    assert ((ess > 1000) & (ess < 3000)).all()  # 2000 independent draws
    stuck = same + torch.tensor([0.0, 0.0, 3.0, 3.0])[:, None, None]  # two modes, two chains each
    assert (rank_rhat(stuck) > 1.5).all()


def test_resampling_follows_the_weights():
    z = torch.arange(4.0)[None, :, None]
    c = Completion("importance", z, log_weights=torch.tensor([0.0, -1e9, -1e9, -1e9]))
    assert (c.resample(5, torch.Generator().manual_seed(0)) == 0).all()
    even = Completion("nuts", z).resample(8, torch.Generator().manual_seed(0))
    assert sorted(even.flatten().tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
