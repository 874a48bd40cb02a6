"""Any Pyro program through ``fit`` and the evaluation: plain functions with ``pyro.param`` and
``pyro.module``, continuing and restarting, stale param-store entries, programs that are refused
(naming the fix), latents the guide lacks, checkpoints that are not ours, seeded initial
weights, and the model run without data or with a pixel mask."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ppl_vae import (
    GUIDES,
    CheckpointError,
    ModelConfig,
    ProgramError,
    TrainConfig,
    build_model,
    data_plate,
    elbo,
    elbo_per_image,
    fit,
    load_model,
    log_likelihood,
)
from ppl_vae.priors import PRIORS

IMG = (1, 4, 4)
D, K = 4, 2  # data and latent dimensions of the hand-written programs


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 4, "lr": 0.05, "device": "cpu", **kw})


def _vae(seed: int = 0, **kw):
    cfg = {"latent_dim": K, "hidden": (8,), **kw}
    return build_model(ModelConfig(**cfg), IMG, seed=seed)


def _images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *IMG, generator=torch.Generator().manual_seed(seed))


def _points(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class UserProgram:
    """A linear-Gaussian VAE written as two plain functions: a learnable prior mean
    (``pyro.param``), a decoder and an encoder (``pyro.module``)."""

    def __init__(self, prior_loc: torch.Tensor | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.enc, self.dec = nn.Linear(D, 2 * K), nn.Linear(K, D)
        with torch.no_grad():
            for p in [*self.enc.parameters(), *self.dec.parameters()]:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        self.init = torch.full((K,), 0.5) if prior_loc is None else prior_loc.clone()

    def model(self, x, num_data=None):
        pyro.module("dec", self.dec)
        loc = pyro.param("prior_loc", lambda: self.init.clone())
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("enc", self.enc)
        with data_plate(x, num_data):
            loc, raw = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    @property
    def pair(self):
        # plain functions, not bound methods: the program has no owner module
        return (
            lambda x, num_data=None: self.model(x, num_data),
            lambda x, num_data=None: self.guide(x, num_data),
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"enc.{k}": v for k, v in _snapshot(self.enc).items()} | {
            f"dec.{k}": v for k, v in _snapshot(self.dec).items()
        }


# ------------------------------------------------------------------ any program trains
def test_fit_trains_plain_functions_and_a_second_fit_continues():
    """A second fit starts from the first's parameters: it equals one epoch of a fresh program
    whose pyro.param init and module weights are the first fit's results."""
    x = _points()
    prog = UserProgram()
    first = fit(prog.pair, x, _cfg(), progress=False)
    assert math.isfinite(first.train_loss[0])
    loc_1 = pyro.param("prior_loc").detach().clone()
    weights_1 = prog.weights()
    assert not torch.equal(loc_1, prog.init)  # the pyro.param was trained
    assert not _same(weights_1, UserProgram().weights())  # and the modules

    second = fit(prog.pair, x, _cfg(), progress=False)
    loc_2 = pyro.param("prior_loc").detach().clone()

    pyro.clear_param_store()
    ref = UserProgram(prior_loc=loc_1)
    ref.enc.load_state_dict({k[4:]: v for k, v in weights_1.items() if k.startswith("enc.")})
    ref.dec.load_state_dict({k[4:]: v for k, v in weights_1.items() if k.startswith("dec.")})
    expected = fit(ref.pair, x, _cfg(), progress=False)
    assert second.train_loss == expected.train_loss
    assert torch.equal(loc_2, pyro.param("prior_loc").detach())
    assert _same(prog.weights(), ref.weights())


def test_restart_puts_pyro_params_back_to_their_initial_values():
    """A program of plain functions with pyro.param only: restart starts those over."""
    x = _points()
    init = torch.full((D,), 0.5)

    def model(x, num_data=None):
        loc = pyro.param("loc", lambda: init.clone())
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x, num_data=None):
        pass

    fit((model, guide), x, _cfg(epochs=2), progress=False)
    assert not torch.equal(pyro.param("loc").detach(), init)
    fit((model, guide), x, _cfg(epochs=0), progress=False)  # continuing: the value is kept
    assert not torch.equal(pyro.param("loc").detach(), init)
    fit((model, guide), x, _cfg(epochs=0), restart=True, progress=False)
    assert torch.equal(pyro.param("loc").detach(), init)


def test_restart_refuses_networks_it_cannot_reinitialise():
    """Networks registered with pyro.module inside plain functions are invisible to fit: rather
    than restart the pyro.params and silently keep trained networks, it refuses, naming them."""
    x = _points()
    prog = UserProgram()
    fit(prog.pair, x, _cfg(epochs=2), progress=False)
    trained, loc = prog.weights(), pyro.param("prior_loc").detach().clone()
    with pytest.raises(ProgramError, match=r"restart=True cannot re-initialise .*dec"):
        fit(prog.pair, x, _cfg(epochs=0), restart=True, progress=False)
    assert _same(prog.weights(), trained)  # nothing was half-reset
    assert torch.equal(pyro.param("prior_loc").detach(), loc)


def test_restart_reinitialises_a_library_model_as_build_model_with_the_seed():
    x = _images()
    cfg = ModelConfig(latent_dim=K, hidden=(8,))
    model = build_model(cfg, IMG, seed=1)
    fit(model, x, _cfg(epochs=2, seed=5, objective="trace"), progress=False)
    assert not _same(_snapshot(model), _snapshot(build_model(cfg, IMG, seed=5)))
    fit(model, x, _cfg(epochs=0, seed=5), restart=True, progress=False)
    assert _same(_snapshot(model), _snapshot(build_model(cfg, IMG, seed=5)))
    # and training from there is training from scratch
    restarted = fit(model, x, _cfg(seed=5, objective="trace"), restart=True, progress=False)
    pyro.clear_param_store()
    fresh = build_model(cfg, IMG, seed=5)
    from_scratch = fit(fresh, x, _cfg(seed=5, objective="trace"), progress=False)
    assert restarted.train_loss == from_scratch.train_loss
    assert _same(_snapshot(model), _snapshot(fresh))


# ------------------------------------------------------------------ stale param store
def test_two_library_models_with_the_same_names_are_both_trained():
    x = _images()
    first, second = _vae(seed=1), _vae(seed=2)
    fit(first, x, _cfg(objective="trace"), progress=False)
    first_after = _snapshot(first)
    second_before = _snapshot(second)
    fit(second, x, _cfg(objective="trace"), progress=False)  # the store holds first's tensors
    assert _same(_snapshot(first), first_after)  # not touched by the second training
    changed = [k for k, v in _snapshot(second).items() if not torch.equal(v, second_before[k])]
    assert sorted(changed) == sorted(k for k, _ in second.named_parameters())
    assert pyro.get_param_store()["decoder$$$net.0.weight"] is second.decoder.net[0].weight


def test_a_module_replaced_under_the_same_name_is_trained():
    x = _points()
    prog = UserProgram()
    fit(prog.pair, x, _cfg(), progress=False)
    old_dec = prog.dec
    old_after = _snapshot(old_dec)
    prog.dec = nn.Linear(K, D)  # a new network under the same pyro.module name "dec"
    new_before = _snapshot(prog.dec)
    fit(prog.pair, x, _cfg(), progress=False)
    assert all(not torch.equal(v, new_before[k]) for k, v in _snapshot(prog.dec).items())
    assert _same(_snapshot(old_dec), old_after)


# ------------------------------------------------------------------ refused programs
def test_a_model_without_a_data_plate_is_refused():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], K), 1.0).to_event(2))
        pyro.sample("x", dist.Normal(z @ torch.ones(K, D), 1.0).to_event(2), obs=x)

    def guide(x):
        loc = pyro.param("loc", lambda: torch.zeros(x.shape[0], K))
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(2))

    with pytest.raises(
        ProgramError,
        match=r"no plate .* spans the batch.*pyro.plate\('data', num_data, subsample=...\)",
    ):
        fit((model, guide), _points(), _cfg(batch_size=12), progress=False)


def test_a_plate_of_batch_size_on_minibatches_is_refused_as_mis_scaled():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            pyro.sample("x", dist.Normal(z @ torch.ones(K, D), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))

    with pytest.raises(
        ProgramError,
        match=r"size 4, but the data set holds 12.*scaled by 4/4 instead of 12/4.*num_data",
    ):
        fit((model, guide), _points(), _cfg(batch_size=4), progress=False)
    # on the full batch the same plate is the data set: accepted
    hist = fit((model, guide), _points(), _cfg(batch_size=12), progress=False)
    assert math.isfinite(hist.train_loss[0])


def test_a_parameter_the_loss_does_not_depend_on_is_refused_on_the_first_step():
    prog = UserProgram()

    def guide(x, num_data=None):
        pyro.param("forgotten_scale", lambda: torch.ones(K))  # read, never used
        prog.guide(x, num_data)

    model = prog.pair[0]
    with pytest.raises(
        ProgramError,
        match=r"\['forgotten_scale'\] are read from Pyro's param store but the loss does not",
    ):
        fit((model, guide), _points(), _cfg(), progress=False)


def test_model_and_guide_must_take_the_same_extras():
    def model(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)

    def guide(x):
        pass

    with pytest.raises(
        ProgramError,
        match=r"the model takes 'num_data' but the guide does not.*same signature",
    ):
        fit((model, guide), _points(), _cfg(), progress=False)
    with pytest.raises(ProgramError, match="the guide takes 'num_data' but the model does not"):
        elbo((guide, model), _points())


class _ModelOnlyLatent:
    """x ~ N(z + s·c, 1) with z sampled by the guide and c only by the model: a continuous
    c ~ N(0, 1) (nothing can sum it out) or an enumerable c ~ Bernoulli(0.3)."""

    def __init__(self, discrete: bool) -> None:
        self.discrete, self.shift = discrete, 2.0

    def model(self, x, num_data=None):
        with data_plate(x, num_data):
            prior_c = dist.Bernoulli(0.3) if self.discrete else dist.Normal(0.0, 1.0)
            c = pyro.sample("c", prior_c)
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            mean = z + self.shift * c.unsqueeze(-1)
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(0.4 * x, 0.8).to_event(1))


def test_a_continuous_model_latent_missing_from_the_guide_is_refused():
    prog = _ModelOnlyLatent(discrete=False)
    x = _points(6)
    for score in (elbo, elbo_per_image, log_likelihood):
        with pytest.raises(
            ProgramError,
            match=r"latent 'c' is sampled by the model but not by the guide.*Sample it in",
        ):
            score(prog, x)
    with pytest.raises(ProgramError, match=r"latents \['c'\] .*not by the guide"):
        fit(prog, x, _cfg(objective="trace"), progress=False)


def test_a_discrete_model_latent_missing_from_the_guide_is_summed_out():
    """log w = log N(z; 0, I) + log Σ_c p(c) N(x; z + 2c, I) − log q(z | x), on the same noise;
    with many draws the estimate reaches the exact marginal Σ_c p(c) N(x; 2c, 2I)."""
    prog = _ModelOnlyLatent(discrete=True)
    x = _points(6)
    k = 50
    pyro.set_rng_seed(3)
    ll = log_likelihood(prog, x, num_samples=k)
    pyro.set_rng_seed(3)
    per_image = elbo_per_image(prog, x, num_particles=k)

    pyro.set_rng_seed(3)
    q = torch.distributions.Normal(0.4 * x, 0.8)
    z = q.sample((k,))  # (K, B, D): the guide's draws
    log_q = q.log_prob(z).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_px_c = torch.stack(
        [
            math.log(p_c) + torch.distributions.Normal(z + 2.0 * c, 1.0).log_prob(x).sum(-1)
            for c, p_c in ((0.0, 0.7), (1.0, 0.3))
        ]
    ).logsumexp(0)
    log_w = log_pz + log_px_c - log_q
    torch.testing.assert_close(ll, log_w.logsumexp(0) - math.log(k))
    torch.testing.assert_close(per_image, log_w.mean(0))

    exact = torch.stack(
        [
            math.log(p_c) + torch.distributions.Normal(2.0 * c, math.sqrt(2.0)).log_prob(x).sum(-1)
            for c, p_c in ((0.0, 0.7), (1.0, 0.3))
        ]
    ).logsumexp(0)
    pyro.set_rng_seed(4)
    torch.testing.assert_close(
        log_likelihood(prog, x, num_samples=20_000), exact, atol=0.02, rtol=0
    )


def test_training_with_enum_sums_out_the_discrete_model_latent():
    """The first step's loss on the full batch is −(1/N) Σ_b log w_b with c summed out, on the
    guide's draw of z from the same seed (evaluation computes exactly this)."""
    from ppl_vae import EpochBatches
    from ppl_vae.objectives import resolve_objective
    from ppl_vae.program import as_program, inspect_program

    prog = _ModelOnlyLatent(discrete=True)
    x = _points(6)
    info = inspect_program(as_program(prog), (x,), {"num_data": 6}, num_data=6)
    assert info.model_only == {"c": True}
    assert resolve_objective("auto", prog, "cpu", info) == "enum"
    hist = fit(prog, x, _cfg(objective="enum", batch_size=6, seed=0), progress=False)

    (idx,) = EpochBatches(6, 6, seed=0)
    xb = x[idx]  # fit's batch order
    pyro.set_rng_seed(0)
    q = torch.distributions.Normal(0.4 * xb, 0.8)
    z = q.sample()
    log_px_c = torch.stack(
        [
            math.log(p_c) + torch.distributions.Normal(z + 2.0 * c, 1.0).log_prob(xb).sum(-1)
            for c, p_c in ((0.0, 0.7), (1.0, 0.3))
        ]
    ).logsumexp(0)
    log_w = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + log_px_c
    log_w = log_w - q.log_prob(z).sum(-1)
    assert hist.train_loss[0] == pytest.approx(-log_w.mean().item(), rel=1e-5)


# ------------------------------------------------------------------ checkpoints
def test_load_model_refuses_a_folder_without_a_checkpoint_and_a_foreign_file(tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"holds no checkpoint.pt: not a ppl-vae run folder"):
        load_model(empty)
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    with pytest.raises(CheckpointError, match="not a ppl_vae checkpoint"):
        load_model(foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable ppl_vae checkpoint"):
        load_model(junk)
    # a user program's checkpoint names the way to load it
    user = tmp_path / "user.pt"
    fit(UserProgram().pair, _points(), _cfg(), checkpoint_path=user, progress=False)
    with pytest.raises(CheckpointError, match=r"not built from registry names.*resume=True"):
        load_model(user)


# ------------------------------------------------------------------ seeded initial weights
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_the_seed_alone_fixes_the_initial_weights(prior):
    cfg = ModelConfig(latent_dim=3, hidden=(8,), prior=prior)
    torch.manual_seed(123)
    a = _snapshot(build_model(cfg, IMG, seed=3))
    torch.manual_seed(321)
    torch.rand(17)  # other draws before
    b = _snapshot(build_model(cfg, IMG, seed=3))
    c = _snapshot(build_model(cfg, IMG, seed=4))
    assert _same(a, b)
    differ = [k for k in a if not torch.equal(a[k], c[k])]
    # a prior with a seed of its own (the mixtures) keeps its values; the others follow the seed
    own_seed = hasattr(build_model(cfg, IMG).prior, "seed")
    assert sorted(differ) == sorted(
        k
        for k, p in build_model(cfg, IMG).named_parameters()
        if not (own_seed and k.startswith("prior."))
    )


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_the_seed_alone_fixes_every_guide_family(guide):
    """Including the IAF's autoregressive orders, which Pyro would draw at random."""
    cfg = ModelConfig(latent_dim=3, hidden=(8,), guide=guide)
    torch.manual_seed(123)
    a = _snapshot(build_model(cfg, IMG, seed=3))
    torch.manual_seed(321)
    b = _snapshot(build_model(cfg, IMG, seed=3))
    assert _same(a, b), [k for k in a if not torch.equal(a[k], b[k])]


# ------------------------------------------------------------------ the model without data
def test_the_model_generates_without_data():
    vae = _vae()
    pred = pyro.infer.Predictive(vae.model, num_samples=3)(None, batch_size=4)
    assert pred["z"].shape == (3, 4, K)
    assert pred["x"].shape == (3, 4, *IMG)
    assert set(pred["x"].unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws
    with pytest.raises(ValueError, match="Predictive"):  # the guide needs data
        vae.guide(None)
    draws = vae.sample(5, mean=False)
    assert draws.shape == (5, *IMG)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    means = vae.sample(5)
    assert means.shape == (5, *IMG)
    assert ((means > 0) & (means < 1)).all()
    assert not set(means.unique().tolist()) <= {0.0, 1.0}


def test_a_mask_scores_only_the_visible_pixels():
    vae = _vae()
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(3, *IMG, generator=g) > 0.5).float()
    mask = torch.rand(3, *IMG, generator=g) > 0.4
    z = torch.randn(3, K, generator=g)
    conditioned = poutine.condition(vae.model, data={"z": z})
    tr = poutine.trace(conditioned).get_trace(x, mask=mask)
    tr.compute_log_prob()
    with torch.no_grad():
        pixels = torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x)
    visible = (pixels * mask).flatten(1).sum(1)
    torch.testing.assert_close(tr.nodes["x"]["log_prob"].detach(), visible)
    full = poutine.trace(conditioned).get_trace(x)
    full.compute_log_prob()
    torch.testing.assert_close(full.nodes["x"]["log_prob"].detach(), pixels.flatten(1).sum(1))
    assert (visible > full.nodes["x"]["log_prob"].detach()).all()  # fewer negative terms
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    torch.testing.assert_close(tr.log_prob_sum().detach(), visible.sum() + log_pz)
