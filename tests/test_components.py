"""Each prior and likelihood against its ``torch.distributions`` reference, and the plug-in
protocol exercised with components defined in this file."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
import torch.distributions as td
from torch import nn
from torch.nn import functional as F

from ppl_vae import VAE, ModelConfig, PointMassGuide, TrainConfig, build_model, fit
from ppl_vae import likelihoods as L
from ppl_vae import priors as P
from ppl_vae.evaluate import elbo
from ppl_vae.nets import MLPDecoder, MLPEncoder

D = 5


@pytest.mark.parametrize(
    "prior, reference",
    [
        (P.Normal(D), td.Normal(torch.zeros(D), torch.ones(D))),
        (P.Normal(D, loc=1.0, scale=2.0), td.Normal(torch.full((D,), 1.0), torch.full((D,), 2.0))),
        (P.Laplace(D, scale=0.5), td.Laplace(torch.zeros(D), torch.full((D,), 0.5))),
        (P.StudentT(D, df=3.0), td.StudentT(torch.full((D,), 3.0))),
    ],
)
def test_prior_log_prob_matches_torch(prior, reference):
    z = torch.randn(100, D) * 3
    assert prior().event_shape == (D,)
    torch.testing.assert_close(prior().log_prob(z), reference.log_prob(z).sum(-1))
    assert prior().sample((7,)).shape == (7, D)


def test_mixture_prior_matches_torch_mixture():
    prior = P.MixtureOfGaussians(D, n_components=4)
    ref = td.MixtureSameFamily(
        td.Categorical(logits=prior.logits.detach()),
        td.Independent(td.Normal(prior.locs.detach(), F.softplus(prior.raw_scales.detach())), 1),
    )
    z = torch.randn(50, D)
    torch.testing.assert_close(prior().log_prob(z), ref.log_prob(z))
    # learnable: gradients reach all three parameter tensors
    prior().log_prob(z).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())


def test_flat_prior_is_improper():
    prior = P.Flat(D)
    z = torch.randn(9, D)
    assert torch.equal(prior().log_prob(z), torch.zeros(9))
    assert not prior.can_sample
    with pytest.raises(NotImplementedError):
        prior().sample()


def test_learnable_independent_prior_keeps_scale_positive():
    prior = P.Independent(D, dist.Normal, learnable=True, loc=0.0, scale=2.0)
    torch.testing.assert_close(prior().base_dist.scale, torch.full((D,), 2.0))
    assert {n for n, _ in prior.named_parameters()} == {"loc", "scale"}


IMG = (1, 4, 4)


def _normal(mean: torch.Tensor, variance: float) -> td.Normal:
    return td.Normal(mean, math.sqrt(variance))


def _x(b: int = 6) -> torch.Tensor:
    return torch.rand(b, *IMG)


@pytest.mark.parametrize(
    "lik, reference",
    [
        (L.Bernoulli(), lambda o, x: -F.binary_cross_entropy_with_logits(o, x, reduction="none")),
        (L.ContinuousBernoulli(), lambda o, x: td.ContinuousBernoulli(logits=o).log_prob(x)),
        (
            L.Gaussian(variance=0.3),
            lambda o, x: td.Normal(torch.sigmoid(o), math.sqrt(0.3)).log_prob(x),
        ),
        (
            L.Gaussian(variance=2.0, link="identity"),
            lambda o, x: td.Normal(o, math.sqrt(2.0)).log_prob(x),
        ),
        (L.Laplace(scale=0.2), lambda o, x: td.Laplace(torch.sigmoid(o), 0.2).log_prob(x)),
    ],
    ids=["bernoulli", "cont-bernoulli", "gaussian-c", "gaussian-identity", "laplace"],
)
def test_likelihood_log_prob_matches_torch(lik, reference):
    out = torch.randn(6, *IMG) * 2
    x = _x()
    d = lik(out)
    assert d.event_shape == IMG and d.batch_shape == (6,)
    torch.testing.assert_close(d.log_prob(x), reference(out, x).flatten(1).sum(1))


def test_gaussian_fixed_variance_is_scaled_mse():
    c = 0.25
    out, x = torch.randn(6, *IMG), _x()
    lp = L.Gaussian(variance=c, link="identity")(out).log_prob(x)
    d = math.prod(IMG)
    expected = -((x - out) ** 2).flatten(1).sum(1) / (2 * c) - d / 2 * math.log(2 * math.pi * c)
    torch.testing.assert_close(lp, expected)


def test_gaussian_learned_variance_two_heads():
    lik = L.GaussianLearnedVariance()
    assert lik.params_per_pixel == 2
    mu, log_var = torch.randn(6, *IMG), torch.randn(6, *IMG)
    out = torch.cat([mu, log_var], dim=1)  # (B, 2C, H, W)
    x = _x()
    ref = td.Normal(torch.sigmoid(mu), torch.exp(0.5 * log_var)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik(out).log_prob(x), ref)
    torch.testing.assert_close(lik.mean(out), torch.sigmoid(mu))


def test_likelihoods_follow_extra_leading_dims():
    """Vectorised particles add a leading dim; it must stay a batch dim."""
    for lik in [L.Bernoulli(), L.GaussianLearnedVariance(), L.Gaussian()]:
        out = torch.randn(3, 6, lik.params_per_pixel * IMG[0], *IMG[1:])
        d = lik(out)
        assert d.batch_shape == (3, 6) and d.event_shape == IMG


@pytest.mark.parametrize("maker", [P.make_prior, L.make_likelihood])
def test_unknown_component_names_are_clear(maker):
    with pytest.raises(ValueError, match=r"unknown .* choose one of"):
        maker("no-such-thing", 3) if maker is P.make_prior else maker("no-such-thing")


def test_unknown_net_and_guide_names_are_clear():
    with pytest.raises(ValueError, match="unknown network"):
        build_model(ModelConfig(net="transformer"), (1, 28, 28))
    with pytest.raises(ValueError, match="unknown guide"):
        build_model(ModelConfig(guide="flow"), (1, 28, 28))


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_latent_dim_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="latent_dim"):
        build_model(ModelConfig(latent_dim=bad), (1, 28, 28))


# --------------------------------------------------------------------------- plug-in protocol
class GumbelPrior(P.Prior):
    """A user's prior, written here without touching the library."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))

    def forward(self):
        return dist.Gumbel(self.loc, 1.0).to_event(1)


class BetaLikelihood(L.Likelihood):
    """A user's likelihood: Beta pixels with both concentrations read off the decoder."""

    params_per_pixel = 2
    data_support = dist.constraints.unit_interval

    def forward(self, out):
        a, b = self.split(out)
        return dist.Beta(F.softplus(a) + 0.1, F.softplus(b) + 0.1).to_event(self.event_dim)

    def mean(self, out):
        return self(out).mean


@pytest.mark.parametrize("guide", ["normal", "delta"])
def test_user_defined_components_train_and_evaluate(guide):
    x = torch.rand(64, *IMG).clamp(0.01, 0.99)
    lik = BetaLikelihood()
    prior = GumbelPrior(3)
    g = PointMassGuide() if guide == "delta" else None
    enc_out = 3 if guide == "delta" else 6
    model = VAE(
        MLPEncoder(IMG, enc_out, (16,)), MLPDecoder(3, (2, 4, 4), (16,)), prior, lik, IMG, g
    )
    before = elbo(model, x)
    hist = fit(model, x, TrainConfig(epochs=5, batch_size=16, lr=1e-2), test_x=x, progress=False)
    assert len(hist.test_elbo) == 5 and math.isfinite(hist.test_elbo[-1])
    assert hist.test_elbo[-1] > before  # it learned something
    # the generic Independent wrapper builds the same kind of likelihood from a Pyro class
    generic = L.Independent(
        dist.Beta,
        concentration1=lambda t: F.softplus(t) + 0.1,
        concentration0=lambda t: F.softplus(t) + 0.1,
    )
    out = torch.randn(4, 2, 4, 4)
    torch.testing.assert_close(generic(out).log_prob(x[:4]), lik(out).log_prob(x[:4]))


def test_custom_independent_prior_from_any_pyro_family():
    model = build_model(ModelConfig(latent_dim=2, hidden=(8,)), IMG)
    model.prior = P.Independent(2, dist.Gumbel, loc=0.0, scale=1.0)
    assert isinstance(model.prior, nn.Module)
    assert model.sample(3).shape == (3, *IMG)


def test_flat_prior_log_prob_follows_value_dtype_and_device():
    z = torch.randn(4, 3, D, dtype=torch.float64)
    lp = P.Flat(D)().log_prob(z)
    assert lp.shape == (4, 3) and lp.dtype == torch.float64 and lp.device == z.device


@pytest.mark.parametrize(
    "make",
    [
        lambda: P.make_prior("normal", 3, foo=1.0),
        lambda: P.make_prior("mixture", 3, n_components=2.5),
        lambda: L.make_likelihood("bernoulli", variance=0.1),
    ],
)
def test_bad_component_parameters_are_value_errors(make):
    with pytest.raises(ValueError, match=r"bad parameters|n_components"):
        make()


def test_mixture_prior_accepts_float_counts_from_the_cli():
    assert P.make_prior("mixture", 3, n_components=4.0).logits.shape == (4,)
