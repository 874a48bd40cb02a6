"""The semi-supervised VAE M2 (:mod:`ppl_vae.semisupervised`): losses against hand-written math,
the split, the schedule, bad input, reproducibility, resume, and the experiment script.

The loss tests run in float64 on a tiny network and read the draws of z from the very trace the
ELBO scored, so the comparison is exact up to rounding: Pyro's enumerated ELBO must equal
Σ_y q(y|x) [log p(y) + log p(x|y,z_y) + log p(z_y) − log q(z_y|x,y) − log q(y|x)].
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.optim import SGD
from torch.distributions import Normal
from torch.nn import functional as F

from ppl_vae import ModelConfig, build_model
from ppl_vae.checkpoint import load_checkpoint, save_checkpoint
from ppl_vae.errors import CheckpointError, DataError
from ppl_vae.latent import encode_dataset, posterior_moments
from ppl_vae.likelihoods import GaussianLearnedVariance
from ppl_vae.semisupervised import (
    PYRO_PUBLISHED,
    SCHEDULES,
    SSVAE,
    SemiSupervisedSplit,
    SSHistory,
    SSTrainConfig,
    _joint_step,
    accuracy,
    active_units,
    batch_schedule,
    fit_ssvae,
    label_elbos,
    load_trained,
    split_labelled,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)
K = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> SSVAE:
    # init_std 0.3: a far-from-uniform q(y|x), so a wrong weighting of the labels would show
    return SSVAE(SHAPE, z_dim=3, hidden=(8,), init_std=0.3, seed=seed).to(dtype)


def images(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tiny_split(n_train: int = 120, sup_num: int = 20, n_valid: int = 30) -> SemiSupervisedSplit:
    x = images(n_train + n_valid)
    y = torch.arange(n_train + n_valid) % K
    return split_labelled(x, y, sup_num, validation_num=n_valid, seed=0)


def log_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


# ------------------------------------------------------------------------------ the losses
def hand_enumerated_loss(m: SSVAE, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-Σ_B Σ_y q(y|x) [log p(y) + log p(x|y,z_y) + log p(z_y) − log q(z_y|x,y) − log q(y|x)],
    written out by hand, for one draw ``z`` ``(K, B, z_dim)`` per label and image."""
    b = xs.shape[0]
    log_qy = F.log_softmax(m.classifier_logits(xs), -1).T  # (K, B)
    ys = torch.arange(K).reshape(K, 1)
    loc, scale = m.z_params(xs, ys)  # (K, B, z)
    log_qz = Normal(loc, scale).log_prob(z).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_px = log_bernoulli(m.decoder_logits(z, ys), xs.reshape(b, -1))
    per_label = -math.log(K) + log_px + log_pz - log_qz - log_qy
    return -(log_qy.exp() * per_label).sum()


@pytest.mark.parametrize("num_data", [None, 40])
def test_enumerated_loss_is_the_sum_over_labels(num_data: int | None) -> None:
    m, b = tiny_model(dtype=torch.float64), 5
    xs = images(b, dtype=torch.float64)
    guide = poutine.trace(m.guide)  # records the z the ELBO draws
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, guide, xs, None, num_data)
    z = guide.trace.nodes["z"]["value"]
    assert z.shape == (K, b, 3), "one z per label and image"

    with torch.no_grad():
        hand = hand_enumerated_loss(m, xs, z) * ((num_data or b) / b)
    assert loss == pytest.approx(float(hand), rel=1e-10)


def test_enumerated_loss_has_the_gradient_of_the_sum_over_labels() -> None:
    """The value is not enough: every network, the classifier q(y|x) included (it learns from
    the unlabelled images only through the weights q(y|x) of the sum and its entropy), must get
    the gradient of the hand-written sum, with z = loc + scale·ε on the ELBO's own noise ε."""
    m, b = tiny_model(dtype=torch.float64), 5
    xs = images(b, dtype=torch.float64)
    pyro.set_rng_seed(1)
    guide = poutine.trace(m.guide)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m.model, guide, xs, None)
    pyro_grads = torch.autograd.grad(loss, list(m.parameters()))

    ys = torch.arange(K).reshape(K, 1)
    with torch.no_grad():
        loc, scale = m.z_params(xs, ys)
        eps = (guide.trace.nodes["z"]["value"] - loc) / scale
    loc, scale = m.z_params(xs, ys)
    hand = hand_enumerated_loss(m, xs, loc + scale * eps)
    hand_grads = torch.autograd.grad(hand, list(m.parameters()))

    assert float(loss) == pytest.approx(float(hand), rel=1e-12)
    for (name, _), got, want in zip(m.named_parameters(), pyro_grads, hand_grads):
        assert want.abs().max() > 1e-3, f"{name} gets no gradient: the check would be empty"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)


def test_any_likelihood_plugs_in_real_valued_inputs_with_a_learned_variance() -> None:
    """M2 on real-valued inputs (M1+M2: an M1 VAE's codes): with
    ``GaussianLearnedVariance(link="identity")`` the decoder emits a mean and a log-variance per
    input value and the enumerated loss is the same sum over labels with a Gaussian log p(x|y,z);
    the Bernoulli default refuses such inputs."""
    d, b = 6, 5
    m = SSVAE(
        (d,),
        z_dim=3,
        hidden=(8,),
        init_std=0.3,
        seed=0,
        likelihood=GaussianLearnedVariance(link="identity"),
    ).to(torch.float64)
    xs = torch.randn(b, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    guide = poutine.trace(m.guide)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, guide, xs, None, None)
    z = guide.trace.nodes["z"]["value"]
    with torch.no_grad():
        log_qy = F.log_softmax(m.classifier_logits(xs), -1).T
        ys = torch.arange(K).reshape(K, 1)
        loc, scale = m.z_params(xs, ys)
        out = m.decoder_logits(z, ys)
        assert out.shape == (K, b, 2 * d), "a mean and a log-variance per input value"
        mu, log_var = out[..., :d], out[..., d:].clamp(-9.0, 4.0)
        log_px = Normal(mu, (0.5 * log_var).exp()).log_prob(xs).sum(-1)
        per_label = (
            -math.log(K)
            + log_px
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(loc, scale).log_prob(z).sum(-1)
            - log_qy
        )
        hand = -(log_qy.exp() * per_label).sum()
    assert loss == pytest.approx(float(hand), rel=1e-10)
    m.check_data(xs)  # real values are what this likelihood scores
    with pytest.raises(DataError, match=r"Bernoulli.*link='identity'"):
        SSVAE((d,), z_dim=3, hidden=(8,)).check_data(xs.float())


def test_m1_codes_are_the_posterior_means_on_the_active_units() -> None:
    """encode_dataset (what M1+M2 reads M1 with) = the VAE's q means, batch by batch, in eval
    mode (and the mode restored); active_units keeps the units whose mean varies over x by more
    than the threshold, and refuses a VAE none of whose units does."""
    vae = build_model(ModelConfig(latent_dim=3, hidden=(8,)), SHAPE, seed=0)
    x = images(7)
    got = encode_dataset(vae, x, batch_size=3)  # three batches
    assert vae.training, "the caller's mode is restored"
    vae.eval()
    with torch.no_grad():
        torch.testing.assert_close(got, vae.encode(x))
        q = vae.posterior(x)
        want_loc, want_scale = q.base_dist.loc, q.base_dist.scale
    vae.train()
    loc, scale = posterior_moments(vae, x, batch_size=3)  # what --m1-inputs sample draws from
    assert vae.training, "the caller's mode is restored"
    assert torch.equal(loc, got), "M1+M2 on the means reads the same codes as before"
    torch.testing.assert_close(loc, want_loc)
    torch.testing.assert_close(scale, want_scale)
    codes = torch.stack([torch.zeros(50), torch.linspace(-1, 1, 50), 0.05 * torch.randn(50)], 1)
    assert active_units(codes).tolist() == [False, True, False]
    assert active_units(codes, threshold=0.0).tolist() == [False, True, True]
    with pytest.raises(DataError, match="no latent unit is active"):
        active_units(torch.zeros(10, 4))
    with pytest.raises(DataError, match="shape"):
        active_units(torch.zeros(10))


def test_supervised_and_auxiliary_losses_by_hand() -> None:
    m, b, n = tiny_model(dtype=torch.float64), 6, 60
    xs, ys = images(b, dtype=torch.float64), torch.tensor([0, 3, 9, 3, 1, 7])
    guide = poutine.trace(m.guide)
    loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False).loss(
        m.model, guide, xs, ys, n
    )
    z = guide.trace.nodes["z"]["value"]
    assert z.shape == (b, 3)
    aux = Trace_ELBO().loss(m.model_classify, m.guide_classify, xs, ys, n)
    with torch.no_grad():
        loc, scale = m.z_params(xs, ys)
        elbo = (
            -math.log(K)
            + log_bernoulli(m.decoder_logits(z, ys), xs.reshape(b, -1))
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(loc, scale).log_prob(z).sum(-1)
        )
        ce = F.cross_entropy(m.classifier_logits(xs), ys, reduction="sum")
    assert loss == pytest.approx(float(-elbo.sum() * n / b), rel=1e-10)
    assert aux == pytest.approx(float(46.0 * ce * n / b), rel=1e-10)
    # without labels the auxiliary loss has nothing to score
    assert Trace_ELBO().loss(m.model_classify, m.guide_classify, xs, None, n) == 0.0


def test_label_elbos_by_hand() -> None:
    """label_elbos = log p(y) + mean over its draws of log p(x|y,z) + log p(z) - log q(z|x,y),
    rebuilt here from the same generator's noise, for every label."""
    m, b, s = tiny_model(dtype=torch.float64), 7, 3
    xs = images(b, dtype=torch.float64)
    got = label_elbos(m, xs, num_samples=s, seed=5, batch_size=4)  # two batches
    assert got.shape == (b, K)
    g = torch.Generator().manual_seed(5)
    want = []
    for rows in (slice(0, 4), slice(4, b)):
        x = xs[rows]
        ys = torch.arange(K).reshape(K, 1)
        loc, scale = m.z_params(x, ys)
        acc = 0.0
        for _ in range(s):
            z = loc + scale * torch.randn(loc.shape, generator=g, dtype=torch.float64)
            acc = acc + (
                log_bernoulli(m.decoder_logits(z, ys), x.reshape(x.shape[0], -1))
                + Normal(0.0, 1.0).log_prob(z).sum(-1)
                - Normal(loc, scale).log_prob(z).sum(-1)
            )
        want.append((acc / s).T - math.log(K))
    torch.testing.assert_close(got, torch.cat(want).detach())
    assert torch.equal(got, label_elbos(m, xs, num_samples=s, seed=5, batch_size=4))
    with pytest.raises(ValueError, match="num_samples"):
        label_elbos(m, xs, num_samples=0)


def test_accuracy_is_that_of_the_argmax_of_q_y() -> None:
    m, x = tiny_model(), images(50)
    pred = m.classifier_logits(x).argmax(-1)
    y = pred.clone()
    y[:10] = (y[:10] + 1) % K
    assert accuracy(m, x, y, batch_size=7) == pytest.approx(0.8)


# ------------------------------------------------------------------------------ split, schedule
def test_split_is_balanced_seeded_and_keeps_the_last_images_for_validation() -> None:
    x, y = images(300), torch.arange(300) % K
    s = split_labelled(x, y, 30, validation_num=100, seed=3)
    assert torch.equal(torch.bincount(s.sup_y, minlength=K), torch.full((K,), 3))
    assert torch.equal(s.valid_x, x[200:]) and torch.equal(s.valid_y, y[200:])
    assert s.sup_x.shape[0] + s.unsup_x.shape[0] == s.num_train == 200
    both = torch.cat([s.sup_index, s.unsup_index]).sort().values
    assert torch.equal(both, torch.arange(200)), "labelled and unlabelled partition the rest"
    assert torch.equal(s.sup_x, x[s.sup_index]) and torch.equal(s.sup_y, y[s.sup_index])
    again = split_labelled(x, y, 30, validation_num=100, seed=3)
    other = split_labelled(x, y, 30, validation_num=100, seed=4)
    assert torch.equal(again.sup_index, s.sup_index)
    assert not torch.equal(other.sup_index, s.sup_index)


def test_schedule_is_pyros_periodic_one() -> None:
    # Pyro's example with 3000 labels and batch 200: every 16th batch from the second on
    kinds = batch_schedule(15, 235, 50_000 // 3000)
    assert len(kinds) == 250
    assert [i for i, k in enumerate(kinds) if k] == [1 + 16 * j for j in range(15)]
    # more labelled batches than the interval leaves room for: none is lost
    kinds = batch_schedule(5, 3, 2)
    assert sum(kinds) == 5 and len(kinds) == 8
    assert batch_schedule(2, 2, 1) == [True, True, False, False]


# ------------------------------------------------------------------------------ bad input
def test_bad_splits_are_refused() -> None:
    x, y = images(200), torch.arange(200) % K
    for sup_num, match in [(15, "multiple"), (0, "positive"), (200, "larger")]:
        with pytest.raises(DataError, match=match):
            split_labelled(x, y, sup_num, validation_num=100)
    with pytest.raises(DataError, match="leave training images"):
        split_labelled(x, y, 10, validation_num=200)
    with pytest.raises(DataError, match="class 3"):
        split_labelled(x, torch.where(y == 3, 0, y), 20, validation_num=100)
    with pytest.raises(DataError, match="int64"):
        split_labelled(x, y.float(), 20, validation_num=100)
    with pytest.raises(DataError, match="outside the classes"):
        split_labelled(x, y + 1, 20, validation_num=100)
    with pytest.raises(DataError, match="shape"):
        split_labelled(x, y[:-1], 20, validation_num=100)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda x: x * 2.0, r"\[0, 1\]"),
        (lambda x: x - 0.5, r"\[0, 1\]"),
        (lambda x: x.index_fill(0, torch.tensor([2]), float("nan")), "NaN"),
        (lambda x: x.reshape(x.shape[0], -1), "shape"),
        (lambda x: (x * 255).to(torch.uint8), "floating-point"),
    ],
)
def test_images_the_bernoulli_likelihood_cannot_score_are_refused(bad, match) -> None:
    s, m = tiny_split(), tiny_model()
    broken = SemiSupervisedSplit(**{**s.__dict__, "unsup_x": bad(s.unsup_x)})
    with pytest.raises(DataError, match=match):
        fit_ssvae(m, broken, SSTrainConfig(epochs=1, batch_size=10), progress=False)
    with pytest.raises(DataError, match=match):
        accuracy(m, bad(s.valid_x), s.valid_y)


@pytest.mark.parametrize("hidden", [(64,), ()])
def test_output_init_torch_is_pyros_initialisation(hidden: tuple[int, ...]) -> None:
    """Pyro's MLPs draw the hidden layers from N(0, 0.001²) and leave the output layers at
    nn.Linear's U(±1/√fan_in); ``output_init="normal"`` draws those from N(0, 0.001²) too. With
    no hidden layer a joint network's output layer is its split first layer (fan-in x + y)."""
    d = 784
    torch_init = SSVAE((d,), hidden=hidden, seed=3, output_init="torch")
    normal_init = SSVAE((d,), hidden=hidden, seed=3)
    outputs = {  # each network's output layer(s) and their fan-in
        "encoder_y": ([torch_init.encoder_y[-1]], hidden[-1] if hidden else d),
        "encoder_z": (
            [torch_init.encoder_z.rest[-1]]
            if hidden
            else [torch_init.encoder_z.a_part, torch_init.encoder_z.y_part],
            hidden[-1] if hidden else d + K,
        ),
        "decoder": (
            [torch_init.decoder.rest[-1]]
            if hidden
            else [torch_init.decoder.a_part, torch_init.decoder.y_part],
            hidden[-1] if hidden else torch_init.z_dim + K,
        ),
    }
    out_params = set()
    for layers, fan_in in outputs.values():
        bound = 1 / math.sqrt(fan_in)
        for layer in layers:
            for p in (q for q in (layer.weight, layer.bias) if q is not None):
                out_params.add(id(p))
                assert p.abs().max() <= bound
            # U(±b) has standard deviation b/√3: far above the hidden layers' 0.001
            assert float(layer.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.2)
    for (name, p), (_, q) in zip(torch_init.named_parameters(), normal_init.named_parameters()):
        if id(p) in out_params:
            assert q.std() < 2e-3, name
        else:
            assert float(p.std()) == pytest.approx(1e-3, rel=0.35), name
            assert float(q.std()) == pytest.approx(1e-3, rel=0.35), name
    again = SSVAE((d,), hidden=hidden, seed=3, output_init="torch")
    for p, q in zip(torch_init.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_bad_labels_settings_and_checkpoints_are_refused(tmp_path: Path) -> None:
    s, m = tiny_split(), tiny_model()
    with pytest.raises(DataError, match="one-hot"):
        accuracy(m, s.valid_x, F.one_hot(s.valid_y, K))
    with pytest.raises(DataError, match="int64"):
        accuracy(m, s.valid_x, s.valid_y.float())
    with pytest.raises(DataError, match="outside the classes"):
        accuracy(m, s.valid_x, s.valid_y + K)
    for cfg in (SSTrainConfig(batch_size=0), SSTrainConfig(lr=-1.0), SSTrainConfig(beta1=1.0)):
        with pytest.raises(ValueError):
            fit_ssvae(m, s, cfg, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        SSVAE(SHAPE, num_classes=1)
    with pytest.raises(ValueError, match="output_init"):
        SSVAE(SHAPE, output_init="xavier")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit_ssvae(m, s, checkpoint_path=tmp_path / "none.pt", resume=True, progress=False)


def test_joint_step_is_one_step_on_the_sum_of_the_three_losses() -> None:
    """The joint schedule's step = one optimiser step along the gradient of -U(unlabelled) +
    -L(labelled) + α'·CE(labelled), each scaled to its set: checked against the three Pyro
    losses differentiated one by one on the same noise, with SGD (lr 1) so the step is -grad."""
    s = tiny_split()
    xu, xl, yl = s.unsup_x[:10], s.sup_x[:6], s.sup_y[:6]
    nu, nl = s.unsup_x.shape[0], s.sup_x.shape[0]
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    aux_elbo = Trace_ELBO()

    m = tiny_model()
    pyro.set_rng_seed(3)
    parts = [
        elbo.differentiable_loss(m.model, m.guide, xu, None, nu),
        elbo.differentiable_loss(m.model, m.guide, xl, yl, nl),
        aux_elbo.differentiable_loss(m.model_classify, m.guide_classify, xl, yl, nl),
    ]
    grads = torch.autograd.grad(sum(parts), list(m.parameters()))
    expected = [p.detach() - g for p, g in zip(m.parameters(), grads)]

    m2 = tiny_model()
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    losses = _joint_step(m2, (elbo, aux_elbo), SGD({"lr": 1.0}), (xu, nu), (xl, yl, nl))
    for got, want in zip(losses, parts):
        assert got == pytest.approx(float(want.detach()), rel=1e-5)
    for (name, p), e in zip(m2.named_parameters(), expected):
        torch.testing.assert_close(p.detach(), e, msg=name)
    assert parts[2] > 0 and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("sup_batch", [None, 3])
def test_joint_schedule_uses_every_labelled_image_evenly(sup_batch: int | None) -> None:
    """Every step sees a labelled batch (``sup_batch_size`` images, default the unlabelled
    batch's size); over an epoch the labelled images are cycled through whole shuffled passes,
    so each is used the same number of times (±1)."""
    s = tiny_split(n_train=220, sup_num=20)
    seen: list[torch.Tensor] = []
    m = tiny_model()
    original = m.model_classify

    def spy(xs, ys=None, num_data=None):
        if ys is not None:
            seen.append(xs.detach().clone())
        return original(xs, ys, num_data)

    m.model_classify = spy
    cfg = SSTrainConfig(epochs=1, batch_size=8, seed=0, schedule="joint", sup_batch_size=sup_batch)
    fit_ssvae(m, s, cfg, progress=False)
    steps, per_step = math.ceil(s.unsup_x.shape[0] / 8), sup_batch or 8
    assert len(seen) == steps and all(b.shape[0] == per_step for b in seen)
    uses = torch.stack([(torch.cat(seen) == x).flatten(1).all(1).sum() for x in s.sup_x])
    assert int(uses.max() - uses.min()) <= 1 and int(uses.sum()) == steps * per_step


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sup_batch_size": 0}, "positive"),
        ({"sup_batch_size": 2.5}, "integer"),
        ({"sup_batch_size": 4, "schedule": "pyro"}, "'joint' schedule only"),
    ],
)
def test_sup_batch_size_is_checked(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SSTrainConfig(**{"schedule": "joint", **changes}).validate()


# ------------------------------------------------------------------------------ reproducibility
def _train(seed: int, epochs: int = 2, schedule: str = "joint", **kw) -> tuple[SSVAE, object]:
    m = tiny_model(seed=seed)
    cfg = SSTrainConfig(epochs=epochs, batch_size=10, lr=1e-2, seed=seed, schedule=schedule)
    return m, fit_ssvae(m, tiny_split(), cfg, progress=False, **kw)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_split_with_scales_trains_on_fresh_draws_around_the_means(schedule: str) -> None:
    """Kingma et al.'s M1+M2 input: every batch a new x_i + scale_i * eps (eps ~ N(0, 1)) for
    the labelled and the unlabelled inputs alike, each input with its own scale; the same seed
    gives the same draws.

    Input i's mean is 0.01 * i in every pixel and its scale 1e-3 (odd i) or 1e-5 (even i), so
    each recorded row says which input it was drawn around and how far it strayed."""
    n, n_valid = 120, 30
    index = torch.arange(n + n_valid)
    means = (0.01 * index.double()).reshape(-1, 1, 1, 1).expand(-1, *SHAPE).float().contiguous()
    per_input = torch.where(index % 2 == 1, 1e-3, 1e-5)
    scale = per_input.reshape(-1, 1, 1, 1).expand(-1, *SHAPE).contiguous()
    y = index % K
    split = split_labelled(means, y, 20, validation_num=n_valid, seed=0, scale=scale)
    assert torch.equal(split.sup_scale, scale[split.sup_index])
    assert torch.equal(split.unsup_scale, scale[split.unsup_index])
    cfg = SSTrainConfig(epochs=2, batch_size=10, seed=0, schedule=schedule)

    def real_valued() -> SSVAE:
        return SSVAE(
            SHAPE, z_dim=3, hidden=(8,), seed=0, likelihood=GaussianLearnedVariance(link="identity")
        )

    def train() -> list[tuple[torch.Tensor, bool]]:
        m = real_valued()
        seen = []
        model_fn = m.model

        def recording(xs, ys=None, *args, **kwargs):
            seen.append((xs.detach().clone(), ys is not None))
            return model_fn(xs, ys, *args, **kwargs)

        m.model = recording  # what every ELBO of fit_ssvae scores
        fit_ssvae(m, split, cfg, progress=False)
        return seen

    seen = train()
    rows = torch.cat([xs.flatten(1) for xs, _ in seen])
    labelled = torch.cat([torch.full((len(xs),), sup) for xs, sup in seen])
    which = (rows.double().mean(1) / 0.01).round().long()  # the input each row was drawn around
    assert set(which[labelled].tolist()) == set(split.sup_index.tolist())
    assert set(which[~labelled].tolist()) == set(split.unsup_index.tolist())
    dev = rows.double() - 0.01 * which.double()[:, None]
    wide = which % 2 == 1
    # each row strayed by its own input's scale: a scale taken from another input, or from
    # the other set, would put 1e-3 deviations among the 1e-5 ones (or the reverse)
    assert 0.9e-3 < float(dev[wide].std()) < 1.1e-3
    assert 0.8e-5 < float(dev[~wide].std()) < 1.2e-5
    assert float(dev[~wide].abs().max()) < 1e-4
    # fresh draws: the same input seen again (the next epoch, or the next pass over the labels)
    # is another point
    assert bool((torch.bincount(which, minlength=n)[:n] >= 2).all()), "two epochs: twice each"
    for i in which.unique():
        got = rows[which == i]
        for a in range(len(got)):
            for b in range(a + 1, len(got)):
                assert not torch.equal(got[a], got[b]), int(i)
    again = train()
    assert len(again) == len(seen)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, seen))
    # a model whose likelihood scores only [0, 1] is not given draws that can leave it
    with pytest.raises(DataError, match="fresh draws"):
        fit_ssvae(
            tiny_model(),
            split_labelled(torch.full_like(means, 0.5), y, 20, validation_num=n_valid, scale=scale),
            cfg,
            progress=False,
        )
    with pytest.raises(DataError, match="scale"):
        split_labelled(means, y, 20, validation_num=n_valid, scale=scale[:-1])
    with pytest.raises(DataError, match="positive"):
        split_labelled(means, y, 20, validation_num=n_valid, scale=scale - 1.0)
    with pytest.raises(DataError, match="both be given or both be None"):
        fit_ssvae(real_valued(), SemiSupervisedSplit(**{**split.__dict__, "unsup_scale": None}))
    with pytest.raises(DataError, match="must match them"):
        bad = SemiSupervisedSplit(**{**split.__dict__, "sup_scale": split.sup_scale.double()})
        fit_ssvae(real_valued(), bad)
    assert (
        split_labelled(means, y, 20, validation_num=n_valid, scale=scale.double()).sup_scale.dtype
        == torch.float32
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_same_seed_same_run_other_seed_other_run(schedule: str) -> None:
    m1, h1 = _train(0, schedule=schedule)
    m2, h2 = _train(0, schedule=schedule)
    m3, h3 = _train(1, schedule=schedule)
    assert h1.sup_loss == h2.sup_loss and h1.unsup_loss == h2.unsup_loss
    assert h1.valid_accuracy == h2.valid_accuracy
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert h3.unsup_loss != h1.unsup_loss
    assert not torch.equal(m3.decoder.a_part.weight, m1.decoder.a_part.weight)
    # training moved this model's own tensors, not stale ones left in Pyro's param store
    assert not torch.equal(m1.decoder.a_part.weight, tiny_model(seed=0).decoder.a_part.weight)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_resume_continues_exactly(tmp_path: Path, schedule: str) -> None:
    ckpt = tmp_path / "ck.pt"
    m_full, h_full = _train(0, epochs=2, schedule=schedule)
    _train(0, epochs=1, schedule=schedule, checkpoint_path=ckpt)
    m, h = _train(0, epochs=2, schedule=schedule, checkpoint_path=ckpt, resume=True)
    assert h.epoch == [1, 2] and h.unsup_loss == h_full.unsup_loss
    for (k, a), b in zip(m.state_dict().items(), m_full.state_dict().values()):
        assert torch.equal(a, b), k
    loaded = load_trained(ckpt, tiny_model(seed=7))
    for (k, a), b in zip(loaded.state_dict().items(), m_full.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="does not fit"):
        load_trained(ckpt, SSVAE(SHAPE, z_dim=4, hidden=(8,)))


def test_resume_refuses_another_split_or_other_settings(tmp_path: Path) -> None:
    """Resuming continues the same run: a checkpoint of another draw of the labels, of means
    against fresh draws, or of other settings (α' included) is refused, not silently mixed in;
    more epochs and another time budget are allowed."""
    ckpt = tmp_path / "ck.pt"
    cfg = SSTrainConfig(epochs=1, batch_size=10, lr=1e-2, seed=0, schedule="joint")
    split = tiny_split()
    fit_ssvae(tiny_model(), split, cfg, checkpoint_path=ckpt, progress=False)

    def resume(model: SSVAE, s: SemiSupervisedSplit, c: SSTrainConfig) -> SSHistory:
        return fit_ssvae(model, s, c, checkpoint_path=ckpt, resume=True, progress=False)

    x, y = images(150), torch.arange(150) % K
    other_labels = split_labelled(x, y, 20, validation_num=30, seed=1)
    trained = tiny_model()
    trained_state = {k: v.clone() for k, v in trained.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"another split \(.*labels_digest: "):
        resume(trained, other_labels, replace(cfg, epochs=2))
    for k, v in trained.state_dict().items():  # refused before any weight was overwritten
        assert torch.equal(v, trained_state[k]), k
    with pytest.raises(CheckpointError, match=r"another split \(labelled_inputs_mean_std: "):
        resume(tiny_model(), split_labelled(x * 0.5, y, 20, validation_num=30, seed=0), cfg)
    with pytest.raises(CheckpointError, match=r"\(dtype: 'torch.float32' then, 'torch.float64'"):
        resume(tiny_model().double(), split_labelled(x.double(), y, 20, validation_num=30), cfg)
    fewer = split_labelled(x, y, 10, validation_num=30, seed=0)
    with pytest.raises(CheckpointError, match="labelled: 20 then, 10 now"):
        resume(tiny_model(), fewer, replace(cfg, epochs=2))
    with pytest.raises(CheckpointError, match=r"other settings.*lr: 0\.01 then, 0\.001 now"):
        resume(tiny_model(), split, replace(cfg, epochs=2, lr=1e-3))
    alpha = SSVAE(SHAPE, z_dim=3, hidden=(8,), init_std=0.3, aux_loss_multiplier=4.6)
    with pytest.raises(CheckpointError, match=r"aux_loss_multiplier: 46\.0 then, 4\.6 now"):
        resume(alpha, split, replace(cfg, epochs=2))
    for change in ({"sup_batch_size": 5}, {"schedule": "pyro"}, {"batch_size": 20}):
        with pytest.raises(CheckpointError, match=rf"other settings \({next(iter(change))}: "):
            resume(tiny_model(), split, replace(cfg, epochs=2, **change))
    h = resume(tiny_model(), split, replace(cfg, epochs=2, max_seconds=1e6, eval_batch_size=7))
    assert h.epoch == [1, 2]
    # a checkpoint that predates the split record and sup_batch_size: its settings are checked,
    # a missing one as its default
    old = load_checkpoint(ckpt)
    del old["split"], old["config"]["train"]["sup_batch_size"]
    save_checkpoint(ckpt, {k: v for k, v in old.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match=r"\(sup_batch_size: None then, 5 now\)"):
        resume(tiny_model(), split, replace(cfg, epochs=3, sup_batch_size=5))
    assert resume(tiny_model(), split, replace(cfg, epochs=3)).epoch == [1, 2, 3]
    with pytest.raises(ValueError, match="sup_batch_size=21 is more than the 20 labelled"):
        fit_ssvae(tiny_model(), split, replace(cfg, sup_batch_size=21), progress=False)

    # means, then fresh draws around them: another kind of input
    gauss = GaussianLearnedVariance(link="identity")
    means = split_labelled(x, y, 20, validation_num=30, seed=0)
    draws = split_labelled(x, y, 20, validation_num=30, seed=0, scale=torch.full_like(x, 0.1))
    real = tmp_path / "real.pt"
    fit_ssvae(
        SSVAE(SHAPE, z_dim=3, hidden=(8,), likelihood=gauss),
        means,
        cfg,
        checkpoint_path=real,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="fresh_draws: False then, True now"):
        fit_ssvae(
            SSVAE(SHAPE, z_dim=3, hidden=(8,), likelihood=GaussianLearnedVariance(link="identity")),
            draws,
            replace(cfg, epochs=2),
            checkpoint_path=real,
            resume=True,
            progress=False,
        )


# ------------------------------------------------------------------------------ the script
def test_script_on_a_tiny_budget(tmp_path: Path, mnist, monkeypatch) -> None:
    out = tmp_path / "ssvae"
    base = [sys.executable, str(ROOT / "experiments" / "ss_vae.py"), "--out", str(out)]
    base += ["--sup-num", "20", "--n-train", "300", "--validation-num", "100"]
    base += ["--n-test", "200", "--batch-size", "20", "--hidden", "32", "--z-dim", "4"]
    base += ["--threads", "1"]
    run = subprocess.run([*base, "--epochs", "1"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((out / "sup20-s0" / "result.json").read_text())
    assert r["epochs"] == 1 and r["sup_num"] == 20 and r["seed"] == 0
    assert 0.0 <= r["test_accuracy"] <= 1.0
    assert all(0.0 <= a <= 1.0 for a in r["valid_accuracy_per_epoch"])
    assert r["num_images"] == {"labelled": 20, "unlabelled": 180, "validation": 100, "test": 200}
    for key in ("settings", "command", "torch", "pyro", "train_seconds", "test_accuracy_per_epoch"):
        assert key in r
    table = (out / "table.md").read_text()
    assert (
        f"{PYRO_PUBLISHED[100][0]:.4f}" in table
        and "| 20 (subset) | 0 | pyro (hidden 32, z 4) | pixels | 46 | 1 |" in table
    )
    # a longer budget continues the run from its checkpoint; the finished result is kept
    # (in this process: the second import of torch, Pyro and ppl_vae would double the time)
    spec = importlib.util.spec_from_file_location("ss_vae_script", base[1])
    script = importlib.util.module_from_spec(spec)
    # importlib's recipe (dataclasses look their module up), undone after the test
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    script.main([*base[2:], "--epochs", "2"])
    r2 = json.loads((out / "sup20-s0" / "result.json").read_text())
    assert r2["epochs"] == 2
    assert r2["valid_accuracy_per_epoch"][0] == r["valid_accuracy_per_epoch"][0]
    assert json.loads((out / "sup20-s0" / "result-1epochs.json").read_text()) == r
    # the stacked M1+M2: M1 trained first (kept, with its active units), M2 on its codes
    m1m2 = tmp_path / "m1m2"
    stacked = ["--features", "m1", "--m1-epochs", "1", "--m1-active-threshold", "0"]
    script.main([*base[2:], "--epochs", "1", *stacked, "--out", str(m1m2)])
    r3 = json.loads((m1m2 / "sup20-s0" / "result.json").read_text())
    assert r3["settings"]["features"] == "m1" and r3["m1"]["epochs"] == 1
    assert r3["m1"]["images"] == 200 and r3["m1"]["active_units"] == 50
    assert "Gaussian" in r3["likelihood"] and 0.0 <= r3["test_accuracy"] <= 1.0
    assert (
        "| 20 (subset) | 0 | pyro (hidden 32, z 4) | M1 e1 (50 units) | 46 | 1 |"
        in (m1m2 / "table.md").read_text()
    )
    assert (m1m2 / "m1-e1-s0-n300-v100" / "checkpoint.pt").exists()
    # a finished run is only reported: without M1's weights (a fresh clone keeps m1.json and the
    # results, not the weights) M1 is not retrained
    (m1m2 / "m1-e1-s0-n300-v100" / "checkpoint.pt").unlink()
    script.main([*base[2:], "--epochs", "1", *stacked, "--out", str(m1m2)])
    assert not (m1m2 / "m1-e1-s0-n300-v100" / "checkpoint.pt").exists()
    assert json.loads((m1m2 / "sup20-s0" / "result.json").read_text()) == r3
    # M2 on fresh draws z1 ~ q(z1 | x) of M1's codes: recorded, and a recipe of its own
    draws_run = ["--m1-inputs", "sample", "--seed", "1", "--out", str(m1m2)]
    draws_run += ["--schedule", "joint", "--sup-batch-size", "5"]  # 5 labelled images per step
    script.main([*base[2:], "--epochs", "1", *stacked, *draws_run])
    r4 = json.loads((m1m2 / "sup20-s1" / "result.json").read_text())
    assert r4["settings"]["m1_inputs"] == "sample" and "fresh draw" in r4["likelihood"]
    assert "m1_inputs" not in r3["settings"], "runs on the means keep their settings"
    assert r4["settings"]["sup_batch_size"] == 5 and "sup_batch_size" not in r3["settings"]
    row = next(
        line
        for line in (m1m2 / "table.md").read_text().splitlines()
        if "| 20 (subset) | 1 |" in line
    )
    assert row.startswith(
        "| 20 (subset) | 1 | joint (hidden 32, z 4) | M1 e1 (50 units, draws) | 46 | 1 |"
    )
    assert row.split(" | ")[7] == "20/5", row
    # a convolutional M1 (--m1-net conv): its own folder, recorded, named in the table
    conv_run = ["--m1-net", "conv", "--seed", "2", "--out", str(m1m2)]
    script.main([*base[2:], "--epochs", "1", *stacked, *conv_run])
    r5 = json.loads((m1m2 / "sup20-s2" / "result.json").read_text())
    assert r5["settings"]["m1_net"] == "conv" and "m1_net" not in r3["settings"]
    assert r5["m1"]["model"]["net"] == "conv" and r3["m1"]["model"]["net"] == "mlp"
    assert (m1m2 / "m1-conv-e1-s0-n300-v100" / "checkpoint.pt").exists()
    assert (
        "| 20 (subset) | 2 | pyro (hidden 32, z 4) | conv M1 e1 (50 units) |"
        in (m1m2 / "table.md").read_text()
    )
    # the table's mean over draws of the labels: the same recipe on other seeds, by hand
    draws = [
        {
            **r3,
            "seed": seed,
            "settings": {**r3["settings"], "seed": seed},
            "test_accuracy": a,
            "test_accuracy_at_best_valid": a + 0.01,
        }
        for seed, a in ((0, 0.80), (1, 0.84), (2, 0.90))
    ]
    other = {**r3, "settings": {**r3["settings"], "aux_loss_multiplier": 7.0}}  # its own recipe
    # the same settings on another M1 (a wrapper's, named in the result) are another recipe, and
    # a second run of seed 0 (another folder) is not another draw
    other_m1 = {**draws[1], "m1": {**r3["m1"], "label": "Their M1"}, "test_accuracy": 0.1}
    again = {**draws[0], "test_accuracy": 0.2}
    text = "\n".join(script._draw_means([*draws, other, other_m1, again]))
    half = 1.96 * float(torch.tensor([0.80, 0.84, 0.90]).std()) / math.sqrt(3)
    assert f"3 draws (seeds 0, 1, 2): test accuracy 0.8467 ± {half:.4f} at the last epoch" in text
    assert f"0.8567 ± {half:.4f} at the best validation epoch" in text
    assert "α' 7" not in text, "a recipe run on one draw has no mean"
    assert "Their M1" not in text and text.count("draws (seeds") == 1
