"""Guide families against math: the IAF density by the change-of-variables formula with a
numerical Jacobian, the low-rank and full-covariance Normals against ``torch.distributions``,
the compiled ELBO against the plain one for every family, and a family whose parameters the
program never registers."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.nn import functional as F

from ppl_vae import GUIDES, ModelConfig, ProgramError, TrainConfig, build_model, fit, make_elbo
from ppl_vae.guides import FullCovNormalGuide, IAFGuide, LowRankNormalGuide
from ppl_vae.model import VAE

IMG = (1, 4, 4)
D = 3  # latent dimension


def _model(guide: str, seed: int = 0, **kw) -> VAE:
    cfg = {"latent_dim": D, "hidden": (16,), "guide": guide, **kw}
    return build_model(ModelConfig(**cfg), IMG, seed=seed)


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *IMG, generator=torch.Generator().manual_seed(seed))


def _perturb(module: torch.nn.Module, seed: int, size: float = 0.3) -> None:
    """Move every weight off its initial value (a flow starts close to the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(size * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------ IAF
def test_iaf_log_density_is_the_change_of_variables_formula():
    """For z = f(u), u ~ N(μ, σ²): log q(z) = log N(u; μ, σ²) − log |det ∂f/∂u|, with the
    Jacobian of the flows computed numerically for each data point."""
    model = _model("iaf", guide_kwargs={"num_flows": 2})
    family = model.guide_family
    assert isinstance(family, IAFGuide)
    _perturb(family, seed=1)
    x = _x()
    with torch.no_grad():
        h = model.encoder(x)  # the encoder's features: μ, raw σ, context
        q = model.posterior(x)
        pyro.set_rng_seed(3)
        z = q.rsample()
        log_q = q.log_prob(z)
        log_q_fresh = model.posterior(x).log_prob(z)  # no cached inverse: the flow is inverted
    loc, raw_scale, context = h.split([D, D, family.context_dim], dim=-1)
    scale = F.softplus(raw_scale) + 1e-5
    pyro.set_rng_seed(3)
    u = torch.distributions.Normal(loc, scale).rsample()  # the same base draw

    def flow(u_b: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
        for f in family.flows:
            u_b = f.condition(c_b)(u_b)
        return u_b

    with torch.no_grad():
        torch.testing.assert_close(flow(u, context), z, rtol=0, atol=0)
    hand, log_dets = [], []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v, c=context[b]: flow(v, c), u[b])
        sign, log_det = torch.linalg.slogdet(jac)
        assert sign != 0
        log_dets.append(log_det)
        hand.append(torch.distributions.Normal(loc[b], scale[b]).log_prob(u[b]).sum() - log_det)
    hand = torch.stack(hand).detach()
    assert torch.stack(log_dets).abs().min() > 1e-2  # a non-trivial flow: the test has teeth
    torch.testing.assert_close(log_q, hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_q_fresh, hand, rtol=1e-4, atol=1e-4)
    # the point code is the flow applied to the base mean
    torch.testing.assert_close(model.encode(x).detach(), flow(loc, context).detach())


# ------------------------------------------------------------------ Gaussian families
def test_low_rank_guide_matches_torch_low_rank_normal():
    """q(z|x) = N(μ, W Wᵀ + diag D) read off the encoder's features by hand: μ, then W
    (latent_dim × rank, row-major), then D = (softplus(·) + 1e-5)²."""
    rank = 2
    model = _model("lowrank-normal", guide_kwargs={"rank": rank})
    assert isinstance(model.guide_family, LowRankNormalGuide)
    x = _x()
    with torch.no_grad():
        h = model.encoder(x)
        q = model.posterior(x)
    assert h.shape == (6, D * (2 + rank))
    loc = h[:, :D]
    w = h[:, D : D + D * rank].reshape(6, D, rank)
    diag = (F.softplus(h[:, D + D * rank :]) + 1e-5) ** 2
    ref = torch.distributions.LowRankMultivariateNormal(loc, w, diag)
    cov = w @ w.transpose(-1, -2) + torch.diag_embed(diag)
    torch.testing.assert_close(q.covariance_matrix, cov)
    torch.testing.assert_close(ref.covariance_matrix, cov)
    z = torch.randn(50, 6, D, generator=torch.Generator().manual_seed(2)) * 2
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z))
    dense = torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)
    torch.testing.assert_close(q.log_prob(z), dense.log_prob(z), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.encode(x).detach(), loc)


def test_full_covariance_guide_matches_torch_multivariate_normal():
    """q(z|x) = N(μ, L Lᵀ): the d(d+1)/2 entries after μ fill the lower triangle row by row, the
    diagonal through softplus(·) + 1e-5."""
    model = _model("full-normal")
    assert isinstance(model.guide_family, FullCovNormalGuide)
    x = _x()
    with torch.no_grad():
        h = model.encoder(x)
        q = model.posterior(x)
    assert h.shape == (6, D + D * (D + 1) // 2)
    loc = h[:, :D]
    tril = torch.zeros(6, D, D)
    k = D
    for i in range(D):
        for j in range(i + 1):
            tril[:, i, j] = F.softplus(h[:, k]) + 1e-5 if i == j else h[:, k]
            k += 1
    ref = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    torch.testing.assert_close(q.scale_tril, tril)
    torch.testing.assert_close(q.covariance_matrix, tril @ tril.transpose(-1, -2))
    z = torch.randn(50, 6, D, generator=torch.Generator().manual_seed(2)) * 2
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z))
    # and a draw is μ + L ε on the same noise
    pyro.set_rng_seed(4)
    draw = q.rsample()
    pyro.set_rng_seed(4)
    eps = torch.randn(6, D)
    torch.testing.assert_close(draw, loc + (tril @ eps[..., None]).squeeze(-1))


# ------------------------------------------------------------------ compiled == plain
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_compiled_elbo_equals_plain_elbo_on_the_same_noise_for_every_guide(guide):
    """What ``auto`` (jit-trace for library models on CPU) relies on, for every guide family:
    JitTrace_ELBO gives Trace_ELBO's loss and gradients on the same seed. (torch's low-rank
    Normal draws its noise in two calls, which a compiled graph ran in the other order; the
    library's low-rank guide draws once.)"""
    model = _model(guide, prior="normal")
    x = _x(8)
    results = []
    for name in ("jit-trace", "trace"):
        elbo = make_elbo(name, 2, max_plate_nesting=1)
        pyro.set_rng_seed(0)
        model.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model.model, model.guide, x, num_data=16)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_jit, grads_jit), (loss_plain, grads_plain) = results
    torch.testing.assert_close(loss_jit, loss_plain, rtol=1e-5, atol=1e-4)
    for g_jit, g_plain in zip(grads_jit, grads_plain):
        torch.testing.assert_close(g_jit, g_plain, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ unregistered family
def test_guide_family_parameters_no_program_registers_are_refused():
    """A VAE subclass whose ``pyro_modules`` forgets the guide family: the IAF's flow networks
    would never be trained, so fit refuses, naming them."""

    class ForgetfulVAE(VAE):
        def pyro_modules(self, which: str = "all"):
            return [(n, m) for n, m in super().pyro_modules(which) if n != "guide"]

    built = _model("iaf")
    model = ForgetfulVAE(
        built.encoder, built.decoder, built.prior, built.likelihood, IMG, built.guide_family
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ProgramError,
        match=r"parameters \['guide_family\.flows\.0\..*not registered with Pyro.*pyro.module",
    ):
        fit(
            model,
            _x(8),
            TrainConfig(epochs=1, batch_size=4, device="cpu", objective="trace"),
            progress=False,
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the library's VAE registers it: the flows are trained
    flows_before = [p.clone() for p in built.guide_family.parameters()]
    fit(
        built,
        _x(8),
        TrainConfig(epochs=1, batch_size=4, device="cpu", objective="trace"),
        progress=False,
    )
    moved = [not torch.equal(a, b) for a, b in zip(flows_before, built.guide_family.parameters())]
    assert any(moved)
