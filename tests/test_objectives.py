"""Objectives against math: the IWAE bound by hand and against Pyro's ``RenyiELBO``, the IWAE
bound in probabilistic PCA (exact log p(x)), the enumerated mixture prior against its
marginal density, every guide × objective × prior of the registries, and the objectives and
optimisers ``fit`` accepts or refuses."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from ppca import PPCA
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO
from torch.nn import functional as F

from ppl_vae import (
    GUIDES,
    IWAE_ELBO,
    OBJECTIVES,
    ModelConfig,
    ProgramError,
    TrainConfig,
    build_model,
    fit,
    log_likelihood,
    make_elbo,
)
from ppl_vae import priors as P
from ppl_vae.guides import FullCovNormalGuide, LowRankNormalGuide, NormalGuide
from ppl_vae.importance import iwae_bound, log_weights
from ppl_vae.model import VAE

IMG = (1, 4, 4)


def _vae(seed: int = 0, **kw) -> VAE:
    cfg = {"latent_dim": 3, "hidden": (16,), **kw}
    return build_model(ModelConfig(**cfg), IMG, seed=seed)


def _binary(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *IMG, generator=g) > 0.5).float()


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ IWAE by hand
def _hand_iwae_loss(model: VAE, x: torch.Tensor, k: int, num_data: int, beta: float = 1.0):
    """−(N/B) Σ_b [logsumexp_k log w_kb − log K] with log w = log p(x|z) + β(log p(z) − log q(z|x)),
    z_kb = μ_b + σ_b ε_kb drawn from torch's stream exactly as Pyro draws it (shape (K, B, d))."""
    d = model.latent_dim
    h = model.encoder(x)
    loc, scale = h[:, :d], F.softplus(h[:, d:]) + 1e-5
    q = torch.distributions.Normal(loc, scale)
    z = q.rsample((k,))  # (K, B, d)
    log_q = q.log_prob(z).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = model.decoder(z)  # (K, B, 1, 4, 4)
    bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    log_px = -bce.flatten(2).sum(-1)
    log_w = log_px + beta * (log_pz - log_q)  # (K, B)
    bound = (log_w.logsumexp(0) - math.log(k)).sum()
    return -(num_data / x.shape[0]) * bound


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_iwae_loss_equals_hand_written_bound_on_a_minibatch(beta):
    """B = 12 of N = 40 data points, K = 7: the N/B scale multiplies the sum of the per-point
    bounds (outside the log-sum-exp); β weights the latent terms inside each weight. Loss and
    gradients equal the formula on the same noise."""
    model = _vae()
    x = _binary(12)
    n, k = 40, 7
    beta_t = None if beta == 1.0 else torch.tensor(beta)
    iwae = make_elbo("iwae", k, max_plate_nesting=1)
    assert isinstance(iwae, IWAE_ELBO)

    pyro.set_rng_seed(5)
    loss = iwae.loss(model.model, model.guide, x, None, beta_t, num_data=n)
    pyro.set_rng_seed(5)
    model.zero_grad(set_to_none=True)
    iwae.differentiable_loss(model.model, model.guide, x, None, beta_t, num_data=n).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    pyro.set_rng_seed(5)
    model.zero_grad(set_to_none=True)
    hand = _hand_iwae_loss(model, x, k, n, beta)
    hand.backward()
    assert loss == pytest.approx(hand.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    # the scale is N/B, not 1: the same noise unscaled is 12/40 of it
    pyro.set_rng_seed(5)
    unscaled = iwae.loss(model.model, model.guide, x, None, beta_t)
    assert unscaled == pytest.approx(loss * 12 / 40, rel=1e-6)


def test_iwae_equals_pyro_renyi_alpha_zero_on_the_full_batch():
    """On the full batch (no subsampling scale) Pyro's RenyiELBO(α = 0) is the same bound: same
    seed, same loss, same gradient."""
    model = _vae()
    x = _binary(10)
    k = 6
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    iwae = make_elbo("iwae", k, max_plate_nesting=1)
    losses, grads = {}, {}
    for name, elbo in (("renyi", renyi), ("iwae", iwae)):
        pyro.set_rng_seed(11)
        losses[name] = elbo.loss(model.model, model.guide, x)
        pyro.set_rng_seed(11)
        model.zero_grad(set_to_none=True)
        elbo.loss_and_grads(model.model, model.guide, x)
        grads[name] = [p.grad.clone() for p in model.parameters()]
    pyro.set_rng_seed(11)
    with torch.no_grad():
        hand = _hand_iwae_loss(model, x, k, num_data=10).item()
    assert losses["iwae"] == pytest.approx(hand, rel=1e-6)
    assert losses["renyi"] == pytest.approx(hand, rel=1e-6)
    for a, b in zip(grads["renyi"], grads["iwae"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fit_refuses_renyi_on_minibatches_and_with_beta():
    model = _vae()
    x = _binary(12)
    cfg = {"epochs": 1, "num_particles": 3, "device": "cpu"}
    with pytest.raises(ProgramError, match=r"RenyiELBO.*mini-batches.*loss='iwae'"):
        fit(
            model,
            x,
            TrainConfig(batch_size=4, **cfg),
            loss=RenyiELBO(num_particles=3),
            progress=False,
        )
    with pytest.raises(ProgramError, match=r"RenyiELBO.*β"):
        fit(model, x, TrainConfig(batch_size=12, beta=0.5, **cfg), loss="renyi", progress=False)
    with pytest.raises(ProgramError, match="RenyiELBO"):  # KL warm-up is a β < 1 too
        fit(
            model,
            x,
            TrainConfig(batch_size=12, warmup_epochs=1, **cfg),
            loss="renyi",
            progress=False,
        )
    # why: on a mini-batch Renyi's number is not the correctly scaled bound
    pyro.set_rng_seed(2)
    renyi = RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    wrong = renyi.loss(model.model, model.guide, x[:4], num_data=12)
    pyro.set_rng_seed(2)
    with torch.no_grad():
        right = _hand_iwae_loss(model, x[:4], 3, num_data=12).item()
    assert abs(wrong - right) > 1.0
    # the full batch with β = 1 is accepted and trains
    hist = fit(model, x, TrainConfig(batch_size=12, **cfg), loss="renyi", progress=False)
    assert math.isfinite(hist.train_loss[0])


# ------------------------------------------------------------------ probabilistic PCA
def test_ppca_iwae_lies_between_elbo_and_log_likelihood_and_tightens_with_k():
    """A guide that is not the posterior (mean shrunk, scale too wide): with 1000 weights per
    point, the bound of K = 1, 10, 100, 1000 (averaged over the 1000/K groups of K) rises
    monotonically from the closed-form ELBO towards the exact log p(x)."""
    ppca = PPCA()
    x = ppca.sample(200)
    model = ppca.vae(mean_factor=0.7, std_factor=1.5)
    exact = ppca.log_px(x)
    with torch.no_grad():
        elbo_exact = ppca.elbo(model, x)
        pyro.set_rng_seed(0)
        log_w, scale = log_weights(model.model, model.guide, (x,), {}, 1000, 1)
    assert log_w.shape == (1000, 200) and scale == 1.0
    gap = (exact - elbo_exact).mean().item()
    assert gap > 0.5  # a wrong guide: a real gap to close

    bounds = {}
    for k in (1, 10, 100, 1000):
        groups = log_w.reshape(1000 // k, k, 200).transpose(0, 1)  # (K, groups, B)
        bounds[k] = iwae_bound(groups).mean(0)  # (B,): the K-sample bound, averaged
    # K = 1 is the ELBO: within Monte Carlo error of the closed form
    se_1 = (log_w.var(0).sum() / 1000).sqrt().item() / 200
    assert abs(bounds[1].mean().item() - elbo_exact.mean().item()) < 4 * se_1
    # monotone in K, each step significant, and below log p(x) within Monte Carlo error
    means = [bounds[k].mean().item() for k in (1, 10, 100, 1000)]
    assert elbo_exact.mean().item() < means[1] < means[2] < means[3]
    for lo, hi in ((1, 10), (10, 100), (100, 1000)):
        diff = bounds[hi] - bounds[lo]
        assert diff.mean() > 3 * diff.std() / math.sqrt(200), (lo, hi)
    last = exact - bounds[1000]
    assert last.mean() < 3 * last.std() / math.sqrt(200)
    assert abs(last.mean().item()) < 0.02 * gap  # K = 1000 closes 98% of the gap

    # IWAE_ELBO's loss is the same bound: on the same noise, −Σ_b bound_b
    iwae = make_elbo("iwae", 1000, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    loss = iwae.loss(model.model, model.guide, x)
    assert loss == pytest.approx(-iwae_bound(log_w).sum().item(), rel=1e-10)


def test_ppca_iwae_is_log_likelihood_at_the_exact_posterior():
    """q = p(z | x): every weight is p(x), so the bound is log p(x) at every K."""
    ppca = PPCA()
    x = ppca.sample(30)
    model = ppca.vae()
    exact = ppca.log_px(x)
    for k in (1, 5):
        loss = make_elbo("iwae", k, max_plate_nesting=1).loss(model.model, model.guide, x)
        assert loss == pytest.approx(-exact.sum().item(), rel=1e-10)


# ------------------------------------------------------------------ enumerated mixture
def _mixture_twins() -> tuple[VAE, VAE]:
    """A "gmm" (enumerated component c) model and a "mixture" (marginal density) model with the
    same weights, the prior's moved off its symmetric initial values."""
    cfg = {"latent_dim": 2, "hidden": (8,), "prior_kwargs": {"n_components": 3}}
    gmm = _vae(prior="gmm", **cfg)
    with torch.no_grad():
        gmm.prior.logits.copy_(torch.tensor([0.8, -1.0, 0.1]))
        gmm.prior.raw_scales.add_(
            0.5 * torch.randn(3, 2, generator=torch.Generator().manual_seed(4))
        )
    marginal = _vae(prior="mixture", **cfg)
    marginal.load_state_dict(gmm.state_dict())
    assert isinstance(gmm.prior, P.GaussianMixture) and gmm.prior.enumerated
    assert type(marginal.prior) is P.MixtureOfGaussians
    return gmm, marginal


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("num_data", [None, 30])
def test_enumerated_mixture_loss_equals_marginal_density_loss(particles, num_data):
    """TraceEnum_ELBO sums c out exactly: log Σ_c π_c N(z; μ_c, σ_c²) is the mixture density,
    so on the same noise the loss and gradients are Trace_ELBO's with the marginal prior."""
    gmm, marginal = _mixture_twins()
    x = _binary(10)
    enum = make_elbo("enum", particles, max_plate_nesting=1)
    assert isinstance(enum, TraceEnum_ELBO)
    trace = make_elbo("trace", particles, max_plate_nesting=1)
    out = []
    for model, elbo in ((gmm, enum), (marginal, trace)):
        pyro.set_rng_seed(1)
        model.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model.model, model.guide, x, num_data=num_data)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_e, grads_e), (loss_m, grads_m) = out
    assert loss_e == pytest.approx(loss_m, rel=1e-6)
    assert set(grads_e) == set(grads_m)
    for name in grads_e:
        torch.testing.assert_close(grads_e[name], grads_m[name], rtol=1e-4, atol=1e-5, msg=name)
    assert grads_e["prior.logits"].abs().sum() > 0  # the mixture weights are learned


def test_enumerated_mixture_log_likelihood_equals_marginal():
    gmm, marginal = _mixture_twins()
    x = _binary(10)
    pyro.set_rng_seed(2)
    ll_gmm = log_likelihood(gmm, x, num_samples=64)
    pyro.set_rng_seed(2)
    ll_marginal = log_likelihood(marginal, x, num_samples=64)
    torch.testing.assert_close(ll_gmm, ll_marginal, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ every combination
def _refusal(objective: str, prior: str) -> str | None:
    """What the design refuses, by the classes involved: an enumerated prior needs an objective
    that sums its discrete site out (TraceEnum_ELBO or IWAE_ELBO)."""
    elbo = make_elbo(objective, 2, max_plate_nesting=1)
    if P.PRIORS[prior](2).enumerated and not isinstance(elbo, TraceEnum_ELBO | IWAE_ELBO):
        return r"sampled by the model but not by the guide.*loss='enum'"
    return None


_NORMAL_FAMILIES = (NormalGuide, LowRankNormalGuide, FullCovNormalGuide)


@pytest.mark.parametrize("prior", sorted(P.PRIORS))
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_every_guide_objective_prior_trains_a_step(guide, objective, prior):
    """One SVI step (2 particles) for each registered guide × objective × prior; the refused
    combinations raise the error that names the fix instead."""
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    config = ModelConfig(latent_dim=2, net="linear", prior=prior, guide=guide)
    if prior == "vamp" and not isinstance(GUIDES[guide](2), _NORMAL_FAMILIES):
        with pytest.raises(ValueError, match=r"VampPrior.*needs a Normal guide family"):
            build_model(config, (6,), seed=0)
        return
    model = build_model(config, (6,), seed=0)
    before = _params(model)
    cfg = {"epochs": 1, "num_particles": 2, "device": "cpu", "objective": objective}
    refused = _refusal(objective, prior)
    if refused is not None:
        with pytest.raises(ProgramError, match=refused):
            fit(model, x, TrainConfig(batch_size=4, **cfg), progress=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return
    if isinstance(make_elbo(objective, 2), RenyiELBO):  # refused on mini-batches only
        with pytest.raises(ProgramError, match="mini-batches"):
            fit(model, x, TrainConfig(batch_size=2, **cfg), progress=False)
    hist = fit(model, x, TrainConfig(batch_size=4, **cfg), progress=False)
    assert math.isfinite(hist.train_loss[0])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "no parameter changed"
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("decoder.") for k in changed)


# ------------------------------------------------------------------ what fit accepts
@pytest.mark.parametrize(
    "loss, error, match",
    [
        (torch.optim.Adam, TypeError, r"loss must be a pyro.infer.ELBO instance"),
        (Trace_ELBO, TypeError, r"loss must be a pyro.infer.ELBO instance"),
        ("elbo++", ValueError, r"unknown objective 'elbo\+\+'; choose one of \[.*'iwae'"),
    ],
    ids=["torch-optimizer", "elbo-class", "unregistered-name"],
)
def test_fit_refuses_an_objective_of_the_wrong_type(loss, error, match):
    model = _vae()
    before = _params(model)
    with pytest.raises(error, match=match):
        fit(
            model,
            _binary(8),
            TrainConfig(epochs=1, batch_size=4, device="cpu"),
            loss=loss,
            progress=False,
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "optim",
    [
        lambda: torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3),
        lambda: torch.optim.Adam,
    ],
    ids=["instance", "class"],
)
def test_fit_refuses_a_torch_optimizer_and_says_how_to_wrap_it(optim):
    with pytest.raises(
        TypeError,
        match=r"pyro.optim.PyroOptim.*wrap it: pyro.optim.PyroOptim\(torch.optim.Adam",
    ):
        fit(
            _vae(),
            _binary(8),
            TrainConfig(epochs=1, batch_size=4, device="cpu"),
            optim=optim(),
            progress=False,
        )


def test_clipped_adam_trains():
    model = _vae()
    x = _binary(16)
    before = _params(model)
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "clip_norm": 1.0})
    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu", objective="trace")
    hist = fit(model, x, cfg, optim=optim, progress=False)
    assert all(math.isfinite(v) for v in hist.train_loss)
    assert all(not torch.equal(before[k], v) for k, v in model.named_parameters())
    assert len(optim.optim_objs) == len(list(model.parameters()))  # ClippedAdam stepped them all


def _scheduler(lr: float = 0.02, gamma: float = 0.5) -> pyro.optim.PyroLRScheduler:
    return pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "gamma": gamma}
    )


def test_exponential_lr_is_stepped_once_per_epoch():
    """3 steps per epoch, 2 epochs: the learning rate is lr·γ², not lr·γ⁶."""
    model = _vae()
    scheduler = _scheduler(0.02, 0.5)
    cfg = TrainConfig(epochs=2, batch_size=4, device="cpu", objective="trace")
    fit(model, _binary(12), cfg, optim=scheduler, progress=False)
    assert len(scheduler.optim_objs) == len(list(model.parameters()))
    for sched in scheduler.optim_objs.values():
        assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**2, rel=1e-12)


def test_scheduler_state_resumes_bit_identically(tmp_path):
    """fit 1 epoch with a checkpoint, then resume to 3 epochs in a fresh model from a fresh param
    store with a fresh scheduler: parameters, losses and learning rate are those of an
    uninterrupted 3-epoch run."""
    x = _binary(12)
    cfg = {"batch_size": 4, "device": "cpu", "objective": "trace"}

    straight, sched_a = _vae(seed=1), _scheduler()
    hist_a = fit(
        straight,
        x,
        TrainConfig(epochs=3, **cfg),
        optim=sched_a,
        checkpoint_path=tmp_path / "a.pt",
        progress=False,
    )

    pyro.clear_param_store()
    fit(
        _vae(seed=1),
        x,
        TrainConfig(epochs=1, **cfg),
        optim=_scheduler(),
        checkpoint_path=tmp_path / "b.pt",
        progress=False,
    )
    pyro.clear_param_store()
    torch.manual_seed(99)  # another process: other global random state, other initial weights
    resumed, sched_b = _vae(seed=7), _scheduler()
    hist_b = fit(
        resumed,
        x,
        TrainConfig(epochs=3, **cfg),
        optim=sched_b,
        checkpoint_path=tmp_path / "b.pt",
        resume=True,
        progress=False,
    )

    assert hist_b.epoch == [1, 2, 3]
    assert hist_b.train_loss == hist_a.train_loss  # bit-identical
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    lrs = {s.optimizer.param_groups[0]["lr"] for s in sched_b.optim_objs.values()}
    assert lrs == {0.02 * 0.5**3}
