"""Numbers against math: analytic KL vs Monte Carlo, the Pyro loss against a hand-written ELBO on
the same noise, probabilistic PCA (where log p(x) is exact), and the per-image loss scaling."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from ppca import PPCA
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.nn import functional as F

from ppl_vae import make_elbo
from ppl_vae.evaluate import elbo, elbo_per_image, log_likelihood
from ppl_vae.model import VAE, ModelConfig, build_model

IMG = (1, 4, 4)


def _small_vae(**kw) -> VAE:
    return build_model(ModelConfig(latent_dim=3, hidden=(16,), **kw), IMG)


def test_analytic_kl_matches_monte_carlo():
    """KL(q || p) from TraceMeanField (closed form) equals Trace_ELBO's MC estimate in the mean."""
    torch.manual_seed(1)
    model = _small_vae()
    x = torch.rand(8, *IMG)
    q = model.posterior(x)
    p = model.prior()
    kl_exact = torch.distributions.kl_divergence(q, p)  # (8,)
    z = q.rsample((200_000,))
    kl_mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(kl_mc, kl_exact, atol=0.02, rtol=0.01)
    # and through the ELBOs: analytic-KL loss vs many-particle MC loss
    with torch.no_grad():
        mf = TraceMeanField_ELBO(num_particles=20_000, vectorize_particles=True).loss(
            model.model, model.guide, x
        )
        mc = Trace_ELBO(num_particles=20_000, vectorize_particles=True, max_plate_nesting=1).loss(
            model.model, model.guide, x
        )
    assert abs(mf - mc) < 0.01 * abs(mc)


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("num_data", [None, 40])
def test_pyro_loss_equals_hand_written_elbo_on_same_noise(beta, num_data):
    """Trace_ELBO's loss equals −[log p(x|z) + β(log p(z) − log q(z|x))]·N/B by hand."""
    model = _small_vae()
    x = torch.rand(8, *IMG)
    beta_t = torch.tensor(beta) if beta != 1.0 else None
    pyro.set_rng_seed(123)
    loss = Trace_ELBO().loss(model.model, model.guide, x, None, beta_t, num_data=num_data)
    # by hand, drawing the same ε from the same generator state
    pyro.set_rng_seed(123)
    with torch.no_grad():
        h = model.encoder(x)
        loc, scale = h[:, :3], F.softplus(h[:, 3:]) + 1e-5
        z = torch.distributions.Normal(loc, scale).rsample()
        eps = (z - loc) / scale
        log_q = (-0.5 * eps**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
        logits = model.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        scale_n = 1.0 if num_data is None else num_data / x.shape[0]
        hand = -(log_px + beta * (log_pz - log_q)).sum() * scale_n
    assert loss == pytest.approx(hand.item(), rel=1e-5)


def test_vectorized_particles_average_single_particle_losses():
    model = _small_vae()
    x = torch.rand(8, *IMG)
    torch.manual_seed(0)
    many = make_elbo("trace", num_particles=4000).loss(model.model, model.guide, x)
    one = TraceMeanField_ELBO().loss(model.model, model.guide, x)  # analytic KL, ~same mean
    assert many == pytest.approx(one, rel=0.01)


def test_expected_loss_per_image_is_independent_of_batch_size():
    """With the plate scaled by N/B, loss/N estimates the mean per-image −ELBO at any B.

    A point-mass guide makes each term deterministic, so over a partition of the data into equal
    batches the average of loss/N equals the full-data mean exactly.
    """
    model = _small_vae(guide="delta", prior="laplace", likelihood="gaussian")
    x = torch.rand(60, *IMG)
    full = -elbo_per_image(model, x).mean().item()
    for b in (1, 6, 20, 60):
        per_batch = [
            Trace_ELBO().loss(model.model, model.guide, xb, num_data=60) / 60 for xb in x.split(b)
        ]
        assert sum(per_batch) / len(per_batch) == pytest.approx(full, rel=1e-5), b
    # VAE: the same in expectation (Monte Carlo, analytic KL)
    vae = _small_vae()
    target = -elbo(vae, x, num_particles=2000)
    for b in (5, 30):
        est = sum(
            TraceMeanField_ELBO(num_particles=500, vectorize_particles=True).loss(
                vae.model, vae.guide, xb, num_data=60
            )
            / 60
            for xb in x.split(b)
        ) / (60 // b)
        assert est == pytest.approx(target, rel=0.005), b


# ------------------------------------------------------------------ probabilistic PCA
def test_ppca_elbo_equals_log_likelihood_at_exact_posterior():
    ppca = PPCA()
    x = ppca.sample(50)
    model = ppca.vae()
    exact = ppca.log_px(x)
    # log p(x, z) − log q(z | x) = log p(x) for every z when q is the posterior: zero variance.
    torch.testing.assert_close(elbo_per_image(model, x, num_particles=3), exact, atol=1e-8, rtol=0)
    # With the KL in closed form, only the reconstruction term is Monte Carlo: exact on average.
    assert elbo(model, x, num_particles=5000) == pytest.approx(exact.mean().item(), abs=0.02)
    torch.testing.assert_close(log_likelihood(model, x, num_samples=7), exact, atol=1e-8, rtol=0)


def test_ppca_elbo_below_log_likelihood_and_importance_sampling_converges():
    ppca = PPCA()
    x = ppca.sample(40)
    model = ppca.vae()
    with torch.no_grad():  # a wrong but reasonable guide: shrunk mean map, wider scales
        model.encoder.net[0].weight[: ppca.k] *= 0.7
        model.encoder.net[0].bias[ppca.k :] += 0.4
    exact = ppca.log_px(x)
    torch.manual_seed(0)
    elbo_i = elbo_per_image(model, x, num_particles=20_000)
    gap = exact - elbo_i
    assert (gap > 0.01).all(), "ELBO must lie strictly below log p(x) for a wrong posterior"
    errs = []
    for k in (1, 10, 100, 5000):
        est = log_likelihood(model, x, num_samples=k, max_elements=40 * 6 * 64)  # forces chunks
        errs.append((exact - est).abs().mean().item())
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 0.01 * gap.mean().item() + 1e-3


def test_float64_model_keeps_dtype_everywhere():
    """Tensors created inside model and guide follow the data's dtype (and device)."""
    ppca = PPCA()
    model = ppca.vae()
    x = ppca.sample(5)
    tr = pyro.poutine.trace(model.model).get_trace(
        x, None, torch.tensor(0.5, dtype=torch.float64), num_data=20
    )
    assert tr.nodes["z"]["value"].dtype == torch.float64
    assert tr.nodes["x"]["fn"].mean.dtype == torch.float64
