"""The conditional VAE of Pyro's tutorial (quadrant completion): masks, loss, metrics, script.

Numbers are checked against math: the tutorial's masks rebuilt literally, the SVI loss against
a hand-written negative ELBO on the same draw of z, the baseline metric against its closed form
for constant logits, and the CVAE's importance-sampled −log p(y | x) and its negative ELBO
against one-dimensional quadrature of the same networks.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import Normal
from torch.nn import functional as F

from ppl_vae.conditional import (
    CVAE,
    MASKED,
    BaselineNet,
    ConditionalTrainConfig,
    complete,
    importance_nll,
    masked_bce,
    split_quadrants,
    train_baseline,
    train_cvae,
    tutorial_nll,
    visible_mask,
)
from ppl_vae.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "cvae_quadrants.py"
SHAPE = (1, 6, 6)


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def small_cvae(z_dim: int = 3, seed: int = 0) -> CVAE:
    return CVAE(BaselineNet(SHAPE, (16,), seed=seed), z_dim, (16,), seed=seed + 1)


# --------------------------------------------------------------------------------------------
# Quadrants
# --------------------------------------------------------------------------------------------


def tutorial_mask_images(tensor: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """examples/cvae/mnist.py ``MaskImages.__call__``, line for line."""
    out = tensor.detach().clone()
    h, w = tensor.shape
    out[h // 2 :, : w // 2] = -1
    if num == 2:
        out[:, : w // 2] = -1
    if num == 3:
        out[: h // 2, :] = -1
    inp = tensor.clone()
    inp[out != -1] = -1
    return inp, out


@pytest.mark.parametrize("hw", [(28, 28), (5, 7)])
@pytest.mark.parametrize("num", [1, 2, 3])
def test_split_matches_the_tutorials_masking(num: int, hw: tuple[int, int]) -> None:
    img = images(3, (1, *hw))
    xs, ys = split_quadrants(img, num)
    for i in range(3):
        inp, out = tutorial_mask_images(img[i, 0], num)
        assert torch.equal(xs[i, 0], inp) and torch.equal(ys[i, 0], out)


def test_visible_quadrants_by_name() -> None:
    h, w = 28, 28
    quads = {
        "tl": (slice(0, 14), slice(0, 14)),
        "tr": (slice(0, 14), slice(14, 28)),
        "bl": (slice(14, 28), slice(0, 14)),
        "br": (slice(14, 28), slice(14, 28)),
    }
    expect = {1: {"bl"}, 2: {"tl", "bl"}, 3: {"tl", "tr", "bl"}}
    for num, shown in expect.items():
        mask = visible_mask(num, h, w)
        assert int(mask.sum()) == 196 * num
        for name, (r, c) in quads.items():
            assert bool(mask[r, c].all()) == (name in shown)
            assert bool(mask[r, c].any()) == (name in shown)


def test_complete_fills_hidden_pixels_and_bce_scores_only_them() -> None:
    img = images(4)
    xs, ys = split_quadrants(img, 2)
    assert torch.equal(complete(xs, ys), img)  # the recognition net's view: the whole image
    logits = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    hidden = xs == MASKED
    expect = torch.stack(
        [
            F.binary_cross_entropy_with_logits(
                logits[i][hidden[i]], img[i][hidden[i]], reduction="sum"
            )
            for i in range(4)
        ]
    )
    assert torch.allclose(masked_bce(logits, ys), expect, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The loss: SVI's Trace_ELBO against a hand-written negative ELBO on the same z
# --------------------------------------------------------------------------------------------


def hand_negative_elbo(
    cvae: CVAE, xs: torch.Tensor, ys: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Per-image −[log p(z|x) + log p(y_hidden|z) − log q(z|x,y)] written out with torch."""
    y_hat = torch.sigmoid(cvae.baseline(xs))
    p_loc, p_log_scale = cvae.prior_net(complete(xs, y_hat)).chunk(2, -1)
    q_loc, q_log_scale = cvae.recognition_net(complete(xs, ys)).chunk(2, -1)
    log_p_z = Normal(p_loc, p_log_scale.exp()).log_prob(z).sum(-1)
    log_q_z = Normal(q_loc, q_log_scale.exp()).log_prob(z).sum(-1)
    logits = cvae.generation_net(z)
    hidden = xs == -1
    bce = torch.stack(
        [
            F.binary_cross_entropy_with_logits(
                logits[i][hidden[i]], ys[i][hidden[i]], reduction="sum"
            )
            for i in range(xs.shape[0])
        ]
    )
    return bce - log_p_z + log_q_z


@pytest.mark.parametrize("num_data", [None, 40])
def test_svi_loss_is_the_hand_written_negative_elbo(num_data: int | None) -> None:
    cvae = small_cvae()
    xs, ys = split_quadrants(images(5), 1)
    pyro.set_rng_seed(7)
    loss = Trace_ELBO().loss(cvae.model, cvae.guide, xs, ys, num_data=num_data)
    pyro.set_rng_seed(7)  # Trace_ELBO runs the guide first: the same draw of z
    z = poutine.trace(cvae.guide).get_trace(xs, ys, num_data=num_data).nodes["z"]["value"]
    scale = (num_data or 5) / 5  # the mini-batch scaled to the data set
    with torch.no_grad():
        expect = scale * hand_negative_elbo(cvae, xs, ys, z).sum()
    assert loss == pytest.approx(float(expect), rel=1e-5)


def test_baseline_gets_no_gradient_and_is_not_a_pyro_param() -> None:
    cvae = small_cvae()
    xs, ys = split_quadrants(images(5), 3)
    loss = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, xs, ys)
    loss.backward()
    assert all(p.grad is None for p in cvae.baseline.parameters())
    assert all(p.grad is not None for p in cvae.trainable.parameters())
    names = set(pyro.get_param_store().keys())
    assert names and not any("baseline" in n for n in names)


# --------------------------------------------------------------------------------------------
# Metrics with known answers
# --------------------------------------------------------------------------------------------


def test_baseline_metric_closed_form_and_the_tutorials_batch_means() -> None:
    """Constant logits b: BCE(y, σ(b)) = softplus(b) − y·b per hidden pixel."""
    net = BaselineNet(SHAPE, (8,), seed=0)
    last = net.net.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.7)
    img = images(40)  # batches of 32 and 8: the tutorial's mean of batch means differs
    xs, _ = split_quadrants(img, 1)
    hidden = xs == MASKED
    per_image = ((F.softplus(torch.tensor(0.7)) - 0.7 * img) * hidden).flatten(1).sum(1)
    out = tutorial_nll(net, None, img, 1)
    assert out["baseline_per_image"] == pytest.approx(float(per_image.mean()), rel=1e-5)
    expect = (per_image[:32].mean() + per_image[32:].mean()) / 2
    assert out["baseline"] == pytest.approx(float(expect), rel=1e-5)
    with torch.no_grad():
        last.bias.zero_()
    assert tutorial_nll(net, None, img, 1)["baseline"] == pytest.approx(27 * math.log(2), rel=1e-6)


def quadrature(cvae: CVAE, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(−log p(y|x), −ELBO) per image by the trapezoid rule over a one-dimensional z."""
    with torch.no_grad():
        y_hat = torch.sigmoid(cvae.baseline(xs))
        p_loc, p_ls = cvae.prior_net(complete(xs, y_hat)).chunk(2, -1)
        q_loc, q_ls = cvae.recognition_net(complete(xs, ys)).chunk(2, -1)
        lo = min(float((p_loc - 12 * p_ls.exp()).min()), float((q_loc - 12 * q_ls.exp()).min()))
        hi = max(float((p_loc + 12 * p_ls.exp()).max()), float((q_loc + 12 * q_ls.exp()).max()))
        z = torch.linspace(lo, hi, 40001, dtype=torch.float64)
        logits = cvae.generation_net(z[:, None].float()).double()  # (G, *SHAPE)
        hidden = (xs == -1).double()
        y = ys.clamp(min=0).double()
        # log p(y | z) for every grid point and image: (G, B)
        ll = y[None] * F.logsigmoid(logits[:, None]) + (1 - y[None]) * F.logsigmoid(
            -logits[:, None]
        )
        ll = (ll * hidden[None]).flatten(2).sum(-1)
        log_p = Normal(p_loc.double().T, p_ls.exp().double().T).log_prob(z[:, None])
        log_q = Normal(q_loc.double().T, q_ls.exp().double().T).log_prob(z[:, None])
        dz = z[1] - z[0]
        nll = -(torch.logsumexp(log_p + ll, 0) + dz.log())
        neg_elbo = -((log_q.exp() * (log_p + ll - log_q)).sum(0) * dz)
    return nll, neg_elbo


def test_importance_sampled_nll_and_the_tutorial_metric_against_quadrature() -> None:
    cvae = small_cvae(z_dim=1, seed=3)
    with torch.no_grad():  # make p(y | z) depend strongly on z: a peaked posterior, a loose bound
        cvae.generation_net.net[0].weight.mul_(6.0)
    img = images(6, seed=4)
    xs, ys = split_quadrants(img, 1)
    exact_nll, exact_neg_elbo = quadrature(cvae, xs, ys)
    assert (exact_neg_elbo - exact_nll).min() > 2.0  # the tutorial's metric is a loose bound here
    pyro.set_rng_seed(0)
    is_nll = importance_nll(cvae, img, 1, num_samples=4000, chunk=1000)
    assert torch.allclose(is_nll.double(), exact_nll, atol=0.1)
    pyro.set_rng_seed(0)
    tut = tutorial_nll(cvae.baseline, cvae, img, 1, num_particles=4000, batch_size=6)
    assert tut["cvae"] == pytest.approx(float(exact_neg_elbo.mean()), abs=0.1)


# --------------------------------------------------------------------------------------------
# Training: seeds, early stopping, Pyro's param store
# --------------------------------------------------------------------------------------------


def train_both(seed: int) -> tuple[BaselineNet, CVAE, dict[str, float]]:
    data, val = images(96, seed=10), images(32, seed=11)
    config = ConditionalTrainConfig(epochs=2, batch_size=32, seed=seed, progress=False)
    base = BaselineNet(SHAPE, (16,), seed=seed)
    train_baseline(base, data, 2, config, val)
    cvae = CVAE(base, 3, (16,), seed=seed + 1)
    train_cvae(cvae, data, 2, config, val)
    pyro.set_rng_seed(seed)
    return base, cvae, tutorial_nll(base, cvae, val, 2, num_particles=3)


def test_same_seed_same_run_and_another_seed_another() -> None:
    a, b, c = train_both(0), train_both(0), train_both(1)
    for k, v in a[1].state_dict().items():
        assert torch.equal(v, b[1].state_dict()[k]), k
    assert a[2] == b[2]
    assert not torch.equal(a[1].prior_net.net[0].weight, c[1].prior_net.net[0].weight)
    assert a[2] != c[2]


def test_early_stopping_restores_the_best_epoch() -> None:
    data, val = images(64, seed=12), images(16, seed=13)
    net = BaselineNet(SHAPE, (16,), seed=0)
    config = ConditionalTrainConfig(epochs=6, patience=2, batch_size=16, lr=0.5, progress=False)
    log = train_baseline(net, data, 1, config, val)
    best = min(log.val_loss)
    assert log.val_loss[log.best_epoch - 1] == best
    assert tutorial_nll(net, None, val, 1, batch_size=1000)["baseline_per_image"] == pytest.approx(
        best, rel=1e-6
    )
    if log.stopped_by == "patience":
        assert len(log.epoch) == log.best_epoch + 2
    else:
        assert len(log.epoch) == 6


def test_a_second_cvae_trains_its_own_weights_despite_stale_param_store_entries() -> None:
    data = images(32, seed=14)
    config = ConditionalTrainConfig(epochs=1, batch_size=16, progress=False)
    first = small_cvae(seed=0)
    train_cvae(first, data, 1, config)
    second = small_cvae(seed=5)  # same parameter names in Pyro's global store
    before = [p.detach().clone() for p in second.trainable.parameters()]
    train_cvae(second, data, 1, config)
    after = list(second.trainable.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_clear_errors() -> None:
    img = images(4)
    for bad in (0, 4, True):
        with pytest.raises(ValueError, match="1, 2 or 3"):
            split_quadrants(img, bad)
    with pytest.raises(ValueError, match="2×2"):
        visible_mask(1, 1, 5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        split_quadrants(img * 255, 1)
    with pytest.raises(DataError, match="floating-point"):
        split_quadrants((img * 255).to(torch.uint8), 1)
    with pytest.raises(DataError, match="batch of images"):
        split_quadrants(img[0, 0], 1)
    cvae = small_cvae()
    xs, ys = split_quadrants(img, 1)
    with pytest.raises(DataError, match="shape"):
        cvae.model(xs[:, :, :4])
    with pytest.raises(DataError, match="shape of xs"):
        cvae.guide(xs, ys[:2])
    with pytest.raises(DataError, match="hide some pixels"):
        cvae.model(img)
    with pytest.raises(ValueError, match="z_dim"):
        CVAE(cvae.baseline, z_dim=0)
    with pytest.raises(TypeError, match="BaselineNet"):
        CVAE(cvae.prior_net)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        train_baseline(cvae.baseline, img, 1, ConditionalTrainConfig(epochs=-1))
    with pytest.raises(ValueError, match="lr"):
        train_cvae(cvae, img, 1, ConditionalTrainConfig(lr=0.0))
    with pytest.raises(DataError, match="validation images"):
        train_baseline(cvae.baseline, img, 1, val_images=images(2, (1, 4, 4)))
    with pytest.raises(ValueError, match="num_samples"):
        importance_nll(cvae, img, 1, num_samples=0)


def test_script_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("cvae_quadrants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv in (
        ["--quadrants", "4"],
        ["--quadrants", "x"],
        ["--epochs", "0"],
        ["--holdout", "-1"],
    ):
        with pytest.raises(SystemExit):
            module.parse_args(argv)
    assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The script, end to end on a tiny budget
# --------------------------------------------------------------------------------------------


def test_script_smoke(mnist, tmp_path: Path) -> None:
    out = tmp_path / "cvae"
    cmd = [sys.executable, str(SCRIPT), "--train-size", "300", "--test-size", "64", "--epochs", "1"]
    cmd += ["--is-samples", "4", "--images", "4", "--samples", "2", "--hidden", "64,64"]
    cmd += ["--z-dim", "8", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert set(result["results"]) == {"1", "2", "3"}
    for q, r in result["results"].items():
        assert r["baseline"]["training"]["epochs"] == 1 == r["cvae"]["training"]["epochs"]
        assert math.isfinite(r["baseline"]["nll_tutorial"])
        assert r["cvae"]["nll_importance_sampled"] > 0 and r["cvae"]["nll_tutorial"] > 0
        assert (out / f"cvae_q{q}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["settings"]["train_images"] == 300 and result["settings"]["test_images"] == 64
    assert {"torch", "pyro", "ppl_vae"} <= set(result["versions"])
    assert "cvae_quadrants.py" in result["command"]
    table = (out / "table.md").read_text()
    for number in ("100.4", "61.9", "25.4", "71.8", "51.0", "24.2"):
        assert number in table
