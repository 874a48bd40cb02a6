"""The binarized-MNIST protocol, the VampPrior and the literature table script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from ppl_vae import ModelConfig, TrainConfig, build_model, fit
from ppl_vae.evaluate import log_likelihood
from ppl_vae.literature import (
    MODELS,
    TEST_BITS_MD5,
    binarize_fixed,
    bits_md5,
    density_report,
)
from ppl_vae.model import MODEL_PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_the_protocols_test_bits_have_the_recorded_md5(mnist):
    bits = binarize_fixed(mnist.test_x)
    assert bits.shape == (10_000, 1, 28, 28)
    assert bits_md5(bits) == TEST_BITS_MD5
    # the grey levels are the binarization's probabilities: about 13% of the pixels are on
    assert float(bits.mean()) == pytest.approx(float(mnist.test_x.mean()), abs=2e-3)
    assert bits_md5(binarize_fixed(mnist.test_x, seed=1)) != TEST_BITS_MD5


def test_bits_md5_refuses_grey_levels():
    with pytest.raises(ValueError, match="binary"):
        bits_md5(torch.full((2, 4), 0.5))


@pytest.fixture(scope="module")
def small_trained(mnist):
    """A small VAE trained two epochs on fresh bits of 2000 training images."""
    config = ModelConfig(latent_dim=8, hidden=(64,), activation="tanh")
    model = build_model(config, (1, 28, 28), seed=0)
    pyro.clear_param_store()
    cfg = TrainConfig(epochs=2, batch_size=100, lr=3e-3, binarize=True, device="cpu", seed=0)
    fit(model, mnist.train_x[:2000], cfg, progress=False)
    return model, binarize_fixed(mnist.test_x)[:100]


def test_k5000_log_likelihood_agrees_across_seeds(small_trained):
    """The K = 5000 estimate is precise: two seeds agree to 0.1 nats (mean over 100 images)."""
    model, bits = small_trained
    estimates = []
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        estimates.append(float(log_likelihood(model, bits, num_samples=5000).mean()))
    assert abs(estimates[0] - estimates[1]) < 0.1, estimates


def test_density_report_orders_its_bounds(small_trained):
    model, bits = small_trained
    pyro.set_rng_seed(0)
    r = density_report(model, bits, num_samples=500, bounds=(5, 50))
    # ELBO ≤ IWAE-5 ≤ IWAE-50 ≤ log p(x), up to the estimates' noise
    assert r["elbo"] < r["iwae_5"] < r["iwae_50"] < -r["nll"] + 0.2
    assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (784 * math.log(2)))
    assert r["bits_md5"] == bits_md5(bits) and r["num_images"] == 100


def _vamp(n_pseudo: int = 7, guide: str = "normal"):
    config = ModelConfig(
        latent_dim=3, hidden=(16,), prior="vamp", prior_kwargs={"n_pseudo": n_pseudo}, guide=guide
    )
    return build_model(config, (1, 4, 4), seed=0)


def test_vampprior_density_is_the_mean_of_the_pseudo_inputs_posteriors():
    model = _vamp()
    with torch.no_grad():  # pseudo-inputs spread over [0, 1], so the components differ
        model.prior.raw_pseudo.uniform_(0, 1, generator=torch.Generator().manual_seed(1))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    got = model.prior().log_prob(z)
    # by hand: log (1/K) Σ_k Π_d N(z_d; μ_kd, σ_kd) with (μ_k, σ_k) the guide's at u_k
    u = model.prior.pseudo_inputs.detach()
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    h = model.encoder(u)
    loc, raw = h[:, :3], h[:, 3:]
    scale = torch.nn.functional.softplus(raw) + 1e-5
    dens = torch.stack(
        [
            torch.distributions.Normal(loc[k], scale[k]).log_prob(z).sum(-1).exp()
            for k in range(len(u))
        ]
    )
    torch.testing.assert_close(got, dens.mean(0).log(), rtol=1e-5, atol=1e-5)


def test_the_fast_diagonal_mixture_is_mixture_same_family():
    from ppl_vae.priors import DiagNormalMixture

    g = torch.Generator().manual_seed(3)
    loc = 3 * torch.randn(40, 6, generator=g)
    scale = torch.rand(40, 6, generator=g) * 0.5 + 0.01  # narrow components: cancellation-prone
    fast = DiagNormalMixture(loc, scale)
    slow = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(40)),
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1),
    )
    z = torch.cat([loc[:5] + 0.01 * torch.randn(5, 6, generator=g), torch.randn(4, 3, 6)[0]])
    torch.testing.assert_close(fast.log_prob(z), slow.log_prob(z), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fast.log_prob(z[:, None]).squeeze(1), slow.log_prob(z))
    draws = fast.sample((20000,))
    assert draws.shape == (20000, 6)
    torch.testing.assert_close(draws.mean(0), loc.mean(0), atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="K, d"):
        DiagNormalMixture(loc[0], scale[0])


def test_vampprior_trains_its_pseudo_inputs_and_refuses_a_guide_without_normal_posteriors():
    model = _vamp()
    before = model.prior.raw_pseudo.detach().clone()
    x = torch.bernoulli(torch.full((32, 1, 4, 4), 0.3), generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    fit(model, x, TrainConfig(epochs=2, batch_size=8, device="cpu"), progress=False)
    assert not torch.equal(model.prior.raw_pseudo, before)
    samples = model.sample(4)
    assert samples.shape == (4, 1, 4, 4)
    with pytest.raises(ValueError, match="Normal guide family"):
        _vamp(guide="iaf")


def test_the_papers_models_are_named_presets():
    for name, m in MODELS.items():
        assert m.family in MODEL_PRESETS, name
    assert MODEL_PRESETS["iwae-50"]["particles"] == 50
    assert MODEL_PRESETS["vampprior"]["prior"] == "vamp"


def test_every_table_model_builds_with_its_own_net_and_guide_arguments():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "likelihood_table", Path(__file__).parents[1] / "experiments" / "likelihood_table.py"
    )
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    for name in MODELS:
        config = table.model_config(name)
        model = build_model(config, (1, 28, 28), seed=0)
        assert config.activation == MODELS[name].activation, name
        assert MODELS[name].activation in table.architecture(name)
        if name == "iaf":  # four gated flows (the gap-narrowing guide), not the plain two
            assert len(model.guide_family.flows) == 4 and model.guide_family.stable
            assert model.guide_family.flows[0].kwargs == {"stable": True}  # reaches Pyro
        if name == "iaf-affine":
            assert len(model.guide_family.flows) == 2 and not model.guide_family.stable
    assert table.model_config("vampprior").activation == "relu"  # tanh collapses (README)


def test_cli_iwae_preset_trains_with_its_objective_and_the_protocol(mnist, tmp_path):
    from ppl_vae.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "iwae-5", "--protocol", "binarized-mnist"]
    args += ["--protocol-samples", "20", "--epochs", "1", "--train-size", "300"]
    args += ["--test-size", "50", "--hidden", "16", "--latent-dim", "4", "--activation", "tanh"]
    args += ["--iw-samples", "5", "--iw-images", "10", "--no-figures", "--quiet", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "iwae"
    assert json.loads((out / "config.json").read_text())["train"]["num_particles"] == 5
    assert json.loads((out / "config.json").read_text())["train"]["binarize"] is True
    report = metrics["binarized_mnist"]
    assert report["nll_samples"] == 20 and report["num_images"] == 50
    assert report["bits_md5"] == bits_md5(binarize_fixed(mnist.test_x[:50]))
    assert main(["train", "--data", "fashion-mnist", "--protocol", "binarized-mnist"]) == 2


def test_k5000_over_10000_images_stays_within_a_memory_bound():
    """K = 5000 over 10 000 images in a fresh process: the peak resident memory grows by less
    than 300 MiB (all weights at once would take 10 000 · 5000 · 16 pixels · 4 bytes = 3 GiB).
    Images of 4×4 pixels keep the test fast; the bound comes from the chunking, which holds at
    most ``max_elements`` numbers of decoder output whatever the image size, K or N."""
    code = """
import resource, torch, pyro
from ppl_vae import ModelConfig, build_model
from ppl_vae.evaluate import log_likelihood
torch.set_num_threads(1)
m = build_model(ModelConfig(latent_dim=2, hidden=(8,)), (1, 4, 4), seed=0)
x = torch.bernoulli(torch.full((10000, 1, 4, 4), 0.3), generator=torch.Generator().manual_seed(0))
log_likelihood(m, x[:10], num_samples=10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ll = log_likelihood(m, x, num_samples=5000, batch_size=100, max_elements=2**20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert ll.shape == (10000,) and torch.isfinite(ll).all()
print((after - before) / 1024)
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    grown_mib = float(r.stdout.split()[-1])
    assert grown_mib < 300, grown_mib


def test_likelihood_table_script_runs_on_a_tiny_budget(mnist, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "likelihood_table.py")]
    cmd += ["--models", "vae,vampprior", "--seeds", "0", "--minutes", "0.01", "--max-epochs", "1"]
    cmd += ["--train-size", "300", "--k", "10", "--eval-images", "20", "--monitor-images", "20"]
    cmd += ["--threads", "1", "--tag", "tiny", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("vae", "vampprior"):
        result = json.loads((tmp_path / "tiny" / f"{name}-s0" / "result.json").read_text())
        assert result["training"]["epochs"] == 1
        assert result["test"]["num_images"] == 20 and math.isfinite(result["test"]["nll"])
    table = (tmp_path / "tiny" / "table.md").read_text()
    assert "| vampprior | relu | 0 |" in table and "86.76" in table


# ------------------------------------------------------------------ comparable likelihoods
def test_dequantization_fills_each_8bit_level_uniformly():
    from ppl_vae.data import check_8bit, dequantize

    k = torch.arange(256, dtype=torch.float32).repeat(400)
    y = dequantize(k / 255, torch.Generator().manual_seed(0))
    assert bool(((y >= k / 256) & (y < (k + 1) / 256)).all())
    offset = (y * 256 - k).reshape(400, 256)  # u ~ U(0, 1) for every level
    assert float(offset.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(offset.var()) == pytest.approx(1 / 12, abs=0.005)
    with pytest.raises(ValueError, match="8-bit"):
        check_8bit(torch.tensor([0.5001, 0.2]))


def test_continuous_likelihoods_are_scored_on_dequantized_data_in_8bit_bits(mnist, tmp_path):
    """A learned-variance Gaussian is trained and scored on (k + u)/256: its score in bits per
    dimension of the 8-bit data is a code length, positive and comparable between likelihoods,
    where on the raw grey levels the density grows without bound."""
    from ppl_vae.cli import main

    out = tmp_path / "g"
    args = ["train", "--likelihood", "gaussian-learned", "--epochs", "1", "--train-size", "500"]
    args += ["--test-size", "100", "--hidden", "32", "--latent-dim", "4", "--iw-samples", "20"]
    args += ["--iw-images", "50", "--no-figures", "--quiet", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["dequantized"] is True
    d = 784
    expected = -(m["log_likelihood"] - d * math.log(256)) / (d * math.log(2))
    assert m["bits_per_dim_8bit"] == pytest.approx(expected)
    assert 0 < m["bits_per_dim_8bit"] < m["elbo_bits_per_dim_8bit"] + 0.05
    assert json.loads((out / "config.json").read_text())["train"]["dequantize"] is True
    # the Bernoulli likelihood keeps the grey levels (a cross-entropy, not a density of them)
    out_b = tmp_path / "b"
    args_b = [a if a != "gaussian-learned" else "bernoulli" for a in args[:-1]] + [str(out_b)]
    assert main(args_b) == 0
    assert "dequantized" not in json.loads((out_b / "metrics.json").read_text())


def test_refusals_come_before_any_training(mnist, tmp_path):
    from ppl_vae.cli import main

    base = ["train", "--epochs", "1", "--train-size", "100", "--test-size", "20", "--quiet"]
    base += ["--no-figures", "--hidden", "8", "--latent-dim", "2"]
    out = tmp_path / "g"
    args = [*base, "--likelihood", "gaussian", "--protocol", "binarized-mnist", "--out", str(out)]
    assert main(args) == 2  # the protocol scores a Bernoulli likelihood
    assert not (out / "checkpoint.pt").exists()
    out = tmp_path / "b"
    assert main([*base, "--dequantize", "on", "--out", str(out)]) == 2  # Bernoulli: no density
    assert not (out / "checkpoint.pt").exists()


def test_a_family_brings_its_objective_to_every_entry_point():
    from ppl_vae.run import preset_objective

    tc = preset_objective("iwae-50", TrainConfig())
    assert (tc.objective, tc.num_particles) == ("iwae", 50)
    assert preset_objective("iwae-5", TrainConfig(objective="trace")).objective == "trace"
    assert preset_objective("vae", TrainConfig()).objective == "auto"


def test_a_run_saved_before_a_model_setting_existed_still_resumes(mnist, tmp_path):
    from ppl_vae.checkpoint import load_checkpoint, save_checkpoint
    from ppl_vae.cli import main

    out = tmp_path / "run"
    args = ["train", "--train-size", "100", "--test-size", "20", "--quiet", "--no-figures"]
    args += ["--hidden", "8", "--latent-dim", "2", "--iw-samples", "0", "--out", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    del ckpt["config"]["model"]["activation"]  # as written before the setting existed
    del ckpt["config"]["dequantize"]
    save_checkpoint(out / "checkpoint.pt", {k: v for k, v in ckpt.items() if k != "format"})
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert main([*args, "--epochs", "3", "--resume", "--activation", "tanh"]) == 2
