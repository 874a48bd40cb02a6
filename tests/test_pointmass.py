"""The point-mass family (AE, denoising AE, sparse AE) on the VAE's SVI path, checked against math.

With q(z|x) = δ(z − f(x)) the Trace_ELBO loss of one batch is exactly

* flat prior, Gaussian(c) likelihood:   Σ ‖x − g(f(x))‖² / (2c) + B·D/2·log(2πc)
* flat prior, Bernoulli likelihood:     Σ BCE-with-logits(g(f(x)), x)
* Laplace(0, b) prior:                   the reconstruction term + Σ ‖f(x)‖₁ / b + B·K·log(2b)
* denoising:                             the same with f(x̃) in place of f(x), x scored clean

so each test computes the right-hand side by hand from the same encoder and decoder. The
experiment scripts and the CLI's new model names are smoke-tested on a slice of MNIST at the end.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from ppl_vae import (
    MODEL_PRESETS,
    ModelConfig,
    build_model,
    elbo_per_image,
    likelihoods,
    reconstruction_error,
)
from ppl_vae.cli import main
from ppl_vae.corruptions import PixelDropout
from ppl_vae.model import preset_config
from ppl_vae.pca import linear_autoencoder

ROOT = Path(__file__).resolve().parents[1]
IMAGE = (1, 8, 8)  # divisible by 4 so the conv nets fit
D = math.prod(IMAGE)
B = 6


def _ae(likelihood: str = "gaussian", net: str = "mlp", prior: str = "flat", **kw) -> object:
    cfg = ModelConfig(
        latent_dim=3,
        prior=prior,
        likelihood=likelihood,
        net=net,
        guide="delta",
        hidden=(16,),
        prior_kwargs=kw.get("prior_kwargs", {}),
        likelihood_kwargs=kw.get("likelihood_kwargs", {}),
    )
    return build_model(cfg, IMAGE).double()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(B, *IMAGE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _svi_loss(model, x, x_in=None, **kw) -> float:
    return Trace_ELBO().loss(model.model, model.guide, x, x_in, **kw)


@pytest.mark.parametrize("net", ["mlp", "conv", "linear"])
@pytest.mark.parametrize("c", [1.0, 0.05])
def test_ae_gaussian_loss_is_mse_over_2c_plus_constant(x, net, c):
    model = _ae("gaussian", net, likelihood_kwargs={"variance": c})
    with torch.no_grad():
        x_hat = torch.sigmoid(model.decoder(model.encoder(x)))  # the likelihood's mean_fn
    hand = ((x - x_hat) ** 2).sum() / (2 * c) + B * D / 2 * math.log(2 * math.pi * c)
    assert _svi_loss(model, x) == pytest.approx(float(hand), rel=1e-10)


def test_ae_bernoulli_loss_is_bce(x):
    model = _ae("bernoulli")
    with torch.no_grad():
        logits = model.decoder(model.encoder(x))
    hand = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    assert _svi_loss(model, x) == pytest.approx(float(hand), rel=1e-10)


def test_linear_ae_identity_mean_loss_is_plain_squared_error(x):
    c = 0.3
    model = linear_autoencoder(IMAGE, 4, variance=c).double()
    with torch.no_grad():
        x_hat = model.decoder(model.encoder(x))  # identity mean: no sigmoid
    hand = ((x - x_hat) ** 2).sum() / (2 * c) + B * D / 2 * math.log(2 * math.pi * c)
    assert _svi_loss(model, x) == pytest.approx(float(hand), rel=1e-10)


@pytest.mark.parametrize("name", sorted(likelihoods.LIKELIHOODS))
def test_ae_loss_is_negative_log_likelihood_for_every_likelihood(x, name):
    """Any likelihood works: the point mass and the flat prior add nothing to −log p(x|f(x))."""
    model = _ae(name)
    with torch.no_grad():
        nll = -model.likelihood(model.decoder(model.encoder(x))).log_prob(x).sum()
    assert _svi_loss(model, x) == pytest.approx(float(nll), rel=1e-10)


def test_ae_gradients_match_the_hand_written_mse_loss(x):
    """The SVI surrogate's gradients are those of MSE/(2c): one SVI step is one MSE-AE step."""
    c = 0.5
    model = _ae("gaussian", likelihood_kwargs={"variance": c})
    Trace_ELBO().loss_and_grads(model.model, model.guide, x)
    svi_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    x_hat = torch.sigmoid(model.decoder(model.encoder(x)))
    (((x - x_hat) ** 2).sum() / (2 * c)).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(svi_grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_minibatch_loss_is_scaled_to_the_data_set(x):
    model = _ae("bernoulli")
    full = _svi_loss(model, x)
    assert _svi_loss(model, x, num_data=60, batch_size=B) == pytest.approx(full * 60 / B)


@pytest.mark.parametrize("b", [1.0, 0.25])
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_sparse_ae_loss_is_reconstruction_plus_l1(x, b, likelihood):
    model = _ae(likelihood, prior="laplace", prior_kwargs={"scale": b})
    flat = _ae(likelihood)
    flat.encoder.load_state_dict(model.encoder.state_dict())
    flat.decoder.load_state_dict(model.decoder.state_dict())
    with torch.no_grad():
        z = model.encoder(x)
    k = model.latent_dim
    lam = 1.0 / b
    hand = _svi_loss(flat, x) + lam * z.abs().sum() + B * k * math.log(2 * b)
    assert _svi_loss(model, x) == pytest.approx(float(hand), rel=1e-10)


def test_dae_loss_encodes_the_corrupted_input_and_scores_the_clean_one(x):
    c = 0.2
    model = _ae("gaussian", likelihood_kwargs={"variance": c})
    x_t = PixelDropout(0.5, seed=3)(x)
    with torch.no_grad():
        x_hat = torch.sigmoid(model.decoder(model.encoder(x_t)))
    hand = ((x - x_hat) ** 2).sum() / (2 * c) + B * D / 2 * math.log(2 * math.pi * c)
    loss = _svi_loss(model, x, x_t)
    assert loss == pytest.approx(float(hand), rel=1e-10)
    assert loss != pytest.approx(_svi_loss(model, x))  # it is not the plain AE's loss


def test_point_mass_elbo_per_image_is_the_log_joint_at_the_code(x):
    b = 0.5
    model = _ae("bernoulli", prior="laplace", prior_kwargs={"scale": b})
    with torch.no_grad():
        z = model.encoder(x)
        logits = model.decoder(z)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    log_prior = -(z.abs().sum(1) / b) - model.latent_dim * math.log(2 * b)
    torch.testing.assert_close(elbo_per_image(model, x), -bce + log_prior)
    assert reconstruction_error(model, x) == pytest.approx(
        float(((torch.sigmoid(logits) - x) ** 2).mean())
    )


def test_fit_feeds_the_corruption_to_the_guide_only():
    """One SVI path: fit passes x̃ = corruption(x) as x_in, and the model still gets clean x."""
    from ppl_vae import TrainConfig, fit

    x = torch.rand(64, *IMAGE, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    corrupted: list[torch.Tensor] = []
    model_calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    class Spy(PixelDropout):
        def apply(self, x, generator):
            out = super().apply(x, generator)
            corrupted.append(out)
            return out

    model = build_model(ModelConfig(latent_dim=2, guide="delta", prior="flat", hidden=(8,)), IMAGE)
    pyro_model = model.model

    def spy_model(x, x_in=None, *args, **kwargs):
        model_calls.append((x, x_in))
        return pyro_model(x, x_in, *args, **kwargs)

    model.model = spy_model  # what SVI will call
    fit(model, x, TrainConfig(epochs=1, batch_size=32, device="cpu"), corruption=Spy(0.9, seed=0))
    # fit runs the program once on a clean batch to check it before training, then two steps
    inspection, *steps = model_calls
    assert inspection[1] is inspection[0]
    assert len(corrupted) == len(steps) == 2
    for x_tilde, (x_seen, x_in) in zip(corrupted, steps):
        assert (x_tilde == 0).float().mean() > 0.8
        assert x_in is x_tilde
        assert (x_seen > 0).all()  # clean images: nothing dropped


# ------------------------------------------------------------------------------------------------
# CLI: model names, corruption and sparsity options
# ------------------------------------------------------------------------------------------------


def test_presets_cover_the_family():
    assert {"ae", "dae", "sparse-ae", "vae", "gmvae"} <= set(MODEL_PRESETS)
    mc = preset_config("dae")
    assert (mc.guide, mc.prior) == ("delta", "flat")
    mc = preset_config("sparse-ae", sparsity_lambda=4)
    assert (mc.guide, mc.prior, mc.prior_kwargs) == ("delta", "laplace", {"scale": 0.25})
    mc = preset_config("vae")  # the main job's defaults are unchanged
    assert (mc.guide, mc.prior, mc.likelihood) == ("normal", "normal", "bernoulli")
    assert preset_config("ae", prior="laplace").prior == "laplace"  # an explicit part wins


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "ae", "--sparsity-lambda", "1"], "Laplace"),
        (["--model", "sparse-ae", "--sparsity-lambda", "0"], "> 0"),
    ],
)
def test_cli_rejects_bad_sparsity(argv, message, capsys):
    assert main(["train", *argv]) == 2  # refused before any data is loaded
    assert message in capsys.readouterr().err


def test_cli_rejects_unknown_corruption_before_loading_data(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--corruption", "smudge:3"])
    assert e.value.code == 2
    assert "unknown corruption 'smudge'" in capsys.readouterr().err


TINY = ["--train-size", "256", "--test-size", "100", "--hidden", "32", "--quiet"]


@pytest.mark.parametrize("model", ["dae", "sparse-ae"])
def test_cli_trains_point_mass_models_by_name(mnist, tmp_path, model):
    out = tmp_path / model
    argv = ["train", "--model", model, "--epochs", "1", "--out", str(out), "--latent-dim", "4"]
    assert main([*argv, "--iw-samples", "0", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model_family"] == model
    assert "log_likelihood" not in m  # undefined for a point mass
    assert math.isfinite(m["elbo"]) and math.isfinite(m["psnr"])
    assert (out / "latent_samples.png").stat().st_size > 1000
    if model == "dae":
        assert m["corruption"] == m["eval_corruption"] == "dropout:0.5"
        assert (out / "denoising.png").exists()
    else:
        assert m["corruption"] is None and "corrupted_psnr" not in m


def _run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


# ------------------------------------------------------------------------------------------------
# The compare script, tiny budget, in a subprocess (skipped without MNIST). The numbered
# experiments (dae_vs_ae.py and linear_ae_pca.py among them) are smoke-tested in
# tests/test_experiments.py.
# ------------------------------------------------------------------------------------------------


def test_experiment_script_tiny(mnist, tmp_path):
    script = str(ROOT / "experiments" / "compare_models.py")
    r = _run_script(script, "--tiny", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for f in ("compare.json", "compare.md"):
        assert (tmp_path / f).stat().st_size > 0, f
    # the CLI's compare command: one table for the family
    table = json.loads((tmp_path / "compare.json").read_text())
    rows = {row["model"]: row for row in table["models"]}
    assert set(rows) == {"ae", "dae", "sparse-ae", "vae", "pca"}
    assert "log_likelihood" in rows["vae"] and "log_likelihood" not in rows["ae"]
    for row in rows.values():
        assert math.isfinite(row["reconstruction_mse"])
        assert math.isfinite(row["corrupted_psnr"])
    md = (tmp_path / "compare.md").read_text()
    assert all(f"| {name} |" in md for name in rows)
