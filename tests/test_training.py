"""Training: SVI loop, objectives, resume, NaN handling, checkpoints and bad input."""

from __future__ import annotations

import math
import pickle
import warnings

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae import (
    CheckpointError,
    DataError,
    ModelConfig,
    TrainConfig,
    TrainingDivergedError,
    build_model,
    fit,
    load_checkpoint,
    make_elbo,
    resolve_device,
    resolve_objective,
)
from ppl_vae import train as train_module
from ppl_vae.evaluate import elbo

IMG = (1, 8, 8)


def _data(n: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # blobs with structure so a model can learn something in a few epochs
    base = torch.rand(4, *IMG, generator=g)
    return (base[torch.randint(0, 4, (n,), generator=g)] * 0.8 + 0.1 * torch.rand(n, *IMG)).clamp(
        0, 1
    )


def _model(**kw):
    cfg = {"latent_dim": 2, "hidden": (32,), **kw}
    return build_model(ModelConfig(**cfg), IMG)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 1e-2, "device": "cpu", **kw})


@pytest.mark.parametrize("objective", ["trace", "meanfield", "jit-trace", "jit-meanfield"])
@pytest.mark.parametrize("particles", [1, 3])
def test_every_objective_trains(objective, particles):
    x = _data()
    model = _model()
    before = elbo(model, x)
    # batch 40 over 96 images leaves a short last batch: JIT must handle it (own graph)
    hist = fit(
        model,
        x,
        _cfg(objective=objective, num_particles=particles, batch_size=40, epochs=4),
        test_x=x,
        progress=False,
    )
    assert hist.epoch == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in hist.train_loss + hist.test_elbo)
    assert hist.test_elbo[-1] > before + 1.0


def test_jit_loss_equals_plain_loss_on_same_noise():
    model = _model()
    x = _data(32)
    beta = torch.tensor(1.0)
    losses = {}
    for name in ("trace", "jit-trace", "meanfield", "jit-meanfield"):
        loss_fn = make_elbo(name, max_plate_nesting=1)  # no guessing run drawing numbers
        pyro.set_rng_seed(5)
        losses[name] = loss_fn.loss(
            model.model, model.guide, x, x, beta, num_data=64, batch_size=32
        )
    assert losses["jit-trace"] == pytest.approx(losses["trace"], rel=1e-5)
    assert losses["jit-meanfield"] == pytest.approx(losses["meanfield"], rel=1e-5)


@pytest.mark.parametrize(
    "parts",
    [
        {},
        {"net": "conv"},
        {"prior": "mixture", "likelihood": "gaussian-learned"},
        {"guide": "delta", "prior": "flat"},
    ],
)
def test_auto_objective_is_compiled_trace_elbo_for_library_models(parts):
    """``auto`` (the default) trains the library's models with JitTrace_ELBO on CPU: the same
    objective as Trace_ELBO, so from the same seed the same epoch losses (up to rounding)."""
    model = _model(**parts)
    assert resolve_objective("auto", model, "cpu") == "jit-trace"
    assert resolve_objective("auto", model, "cuda") == "jit-trace"  # measured faster on an H100
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x = _data()
    losses, used = {}, []
    real_make_elbo = train_module.make_elbo

    def spy(objective, *args, **kwargs):
        used.append(objective)
        return real_make_elbo(objective, *args, **kwargs)

    for objective in ("auto", "trace"):
        model.load_state_dict(init)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_module, "make_elbo", spy)
            losses[objective] = fit(model, x, _cfg(objective=objective), progress=False).train_loss
    assert used == ["jit-trace", "trace"]  # auto really ran the compiled ELBO
    assert losses["auto"] == pytest.approx(losses["trace"], rel=1e-4)


PRIORS = ["normal", "laplace", "student-t", "mixture"]
LIKELIHOODS = ["bernoulli", "continuous-bernoulli", "gaussian", "gaussian-learned", "laplace"]


@pytest.mark.parametrize(
    "parts",
    [{"prior": p} for p in PRIORS]
    + [{"likelihood": lik} for lik in LIKELIHOODS[1:]]
    + [{"guide": "delta", "prior": "laplace"}, {"guide": "delta", "prior": "flat"}],
    ids=lambda d: "-".join(d.values()),
)
@pytest.mark.parametrize("particles", [1, 3])
def test_compiled_trace_elbo_equals_plain_for_every_library_part(parts, particles):
    """What ``auto`` relies on: for each built-in prior, likelihood and guide, JitTrace_ELBO gives
    Trace_ELBO's loss and gradients on the same noise — with a changing β tensor, several
    particles and a short last batch (its own graph)."""
    model = _model(**parts)
    assert resolve_objective("auto", model) == "jit-trace"
    x = _data(40)
    fast = make_elbo("jit-trace", particles, max_plate_nesting=1)
    plain = make_elbo("trace", particles, max_plate_nesting=1)
    for step, (xb, beta) in enumerate([(x[:16], 0.3), (x[16:32], 0.7), (x[32:], 1.0)]):
        results = []
        for loss_fn in (fast, plain):
            pyro.set_rng_seed(step)
            model.zero_grad(set_to_none=True)
            args = (xb, xb, torch.tensor(beta))
            loss = loss_fn.differentiable_loss(
                model.model, model.guide, *args, num_data=40, batch_size=len(xb)
            )
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        (loss_f, grads_f), (loss_p, grads_p) = results
        torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-4)
        for g, ref in zip(grads_f, grads_p):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4)


def test_auto_objective_runs_user_code_in_plain_python():
    """A graph replays what the code did while traced: exact for the library's parts, unknown
    for a user's, so any user code in the model keeps ``auto`` on the plain path."""
    import pyro.distributions as dist

    from ppl_vae.likelihoods import Independent

    class Doubling(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 2 * t if t.sum() > 0 else t  # value-dependent: a trace would freeze a branch

    model = _model()
    model.likelihood = Independent(dist.Normal, loc=lambda t: t.sigmoid(), scale=0.1)
    assert resolve_objective("auto", model) == "trace"
    model = _model()
    model.likelihood = Independent(dist.Normal, loc=torch.sigmoid, scale=0.1)  # torch's own
    assert resolve_objective("auto", model) == "jit-trace"
    model.encoder = torch.nn.Sequential(model.encoder, Doubling())
    assert resolve_objective("auto", model) == "trace"
    model = _model()
    model.encoder = torch.nn.Sequential(model.encoder, torch.nn.Identity())  # torch's layers
    assert resolve_objective("auto", model) == "jit-trace"
    model.encoder = torch.nn.Sequential(model.encoder, torch.nn.BatchNorm1d(4))  # running stats
    assert resolve_objective("auto", model) == "trace"
    model = _model()
    hook = model.decoder.register_forward_hook(lambda *a: None)  # would run only while tracing
    try:
        assert resolve_objective("auto", model) == "trace"
    finally:
        hook.remove()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:  # a global hook left behind would change every later test
        assert resolve_objective("auto", model) == "trace"
    finally:
        hook.remove()
    assert resolve_objective("auto", model) == "jit-trace"
    model.model = lambda *a, **k: None  # a replaced program
    assert resolve_objective("auto", model) == "trace"
    for name in ("trace", "meanfield", "jit-trace", "jit-meanfield"):
        assert resolve_objective(name, model) == name  # named ones are kept
    with pytest.raises(ValueError, match="resolve_objective"):
        make_elbo("auto")


def test_beta_and_warmup_change_the_objective_not_the_evaluation():
    x = _data()
    h1 = fit(_model(), x, _cfg(epochs=1, beta=1.0), progress=False)
    h2 = fit(_model(), x, _cfg(epochs=1, beta=0.1, warmup_epochs=1.0), progress=False)
    # same seed, same init: a smaller KL weight gives a smaller loss
    assert h2.train_loss[0] < h1.train_loss[0]


def test_dynamic_binarization_gives_fresh_draws():
    x = _data()
    seen = []

    class Spy:
        def __call__(self, xb):
            seen.append(xb.clone())
            return xb

    fit(_model(), x, _cfg(epochs=2, binarize=True, batch_size=96), corruption=Spy(), progress=False)
    assert set(torch.unique(seen[0]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(seen[0], seen[1])  # different epoch, different draw (and order)


def test_dae_resume_continues_the_corruption_draws(tmp_path):
    """A resumed denoising AE sees the corruptions an uninterrupted run would have drawn: the
    corruption's generator state travels in the checkpoint."""
    from ppl_vae.corruptions import PixelDropout

    x = _data()
    dae = {"guide": "delta", "prior": "flat"}
    init = {k: v.clone() for k, v in _model(**dae).state_dict().items()}

    def train(epochs: int, path: str, resume: bool = False):
        model = _model(**dae)
        model.load_state_dict(init)
        fit(
            model,
            x,
            _cfg(epochs=epochs),
            corruption=PixelDropout(0.5, seed=3),  # each call: a fresh object, as a new process
            checkpoint_path=tmp_path / path,
            resume=resume,
            progress=False,
        )
        return model

    straight = train(3, "a.pt")
    train(1, "b.pt")
    assert load_checkpoint(tmp_path / "b.pt")["corruption_state"]  # the generator was saved
    resumed = train(3, "b.pt", resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_corruption_state_round_trip():
    from ppl_vae.corruptions import PixelDropout

    x = torch.rand(4, *IMG)
    a = PixelDropout(0.5, seed=1)
    a(x)
    saved = a.get_state()
    expected = a(x)
    b = PixelDropout(0.5, seed=1)
    b.set_state(saved)
    torch.testing.assert_close(b(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="without a seed"):
        PixelDropout(0.5).set_state(saved)


def test_one_likelihood_cannot_serve_images_of_two_ranks():
    from ppl_vae.likelihoods import Bernoulli
    from ppl_vae.model import VAE
    from ppl_vae.nets import make_networks
    from ppl_vae.priors import Normal

    lik = Bernoulli()
    enc, dec = make_networks("mlp", (1, 8, 8), 2, 4, (1, 8, 8), hidden=(8,))
    VAE(enc, dec, Normal(2), lik, (1, 8, 8))
    VAE(enc, dec, Normal(2), lik, (1, 8, 8))  # same rank: sharing is harmless
    enc, dec = make_networks("mlp", (64,), 2, 4, (64,), hidden=(8,))
    with pytest.raises(ValueError, match="its own likelihood"):
        VAE(enc, dec, Normal(2), lik, (64,))


def test_compose_saves_and_restores_its_parts_generators():
    from ppl_vae.corruptions import Compose, GaussianNoise, PixelDropout

    def chain():
        return Compose([PixelDropout(0.5, seed=1), GaussianNoise(0.3, seed=2)])

    x = torch.rand(4, *IMG)
    a = chain()
    a(x)
    saved = a.get_state()
    assert set(saved) == {"part0|cpu", "part1|cpu"}
    expected = a(x)
    b = chain()
    b.set_state(saved)
    torch.testing.assert_close(b(x), expected, rtol=0, atol=0)


def test_resume_on_another_kind_of_device_warns_and_goes_on(tmp_path):
    """A generator state only fits a generator of its device type: a checkpoint from a GPU run
    resumed on a CPU restarts the batch order and corruption draws, and says so."""
    from ppl_vae.checkpoint import save_checkpoint
    from ppl_vae.corruptions import PixelDropout

    x = _data()
    path = tmp_path / "ck.pt"
    dae = {"guide": "delta", "prior": "flat"}
    fit(_model(**dae), x, _cfg(epochs=1), corruption=PixelDropout(0.5, seed=3),
        checkpoint_path=path, progress=False)  # fmt: skip
    ckpt = load_checkpoint(path)
    ckpt["generator_state"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    ckpt["corruption_state"] = {"cuda:0": torch.zeros(16, dtype=torch.uint8)}
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.warns(UserWarning, match="batch order and the corruption draws restart"):
        hist = fit(_model(**dae), x, _cfg(epochs=2), corruption=PixelDropout(0.5, seed=3),
                   checkpoint_path=path, resume=True, progress=False)  # fmt: skip
    assert hist.epoch == [1, 2]


def test_resume_with_another_estimator_warns(tmp_path):
    x = _data()
    path = tmp_path / "ck.pt"
    fit(_model(), x, _cfg(epochs=1, objective="trace"), checkpoint_path=path, progress=False)
    assert load_checkpoint(path)["config"]["train"]["resolved_objective"] == "trace"
    with pytest.warns(UserWarning, match="trained with objective 'trace'; continuing with"):
        fit(_model(), x, _cfg(epochs=2), checkpoint_path=path, resume=True, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same estimator: nothing to say
        fit(_model(), x, _cfg(epochs=3, objective="jit-trace"), checkpoint_path=path,
            resume=True, progress=False)  # fmt: skip


def test_resume_with_other_settings_or_data_warns(tmp_path):
    """Fine-tuning from a checkpoint with another batch size, learning rate or more data is
    allowed, but it is not the run the checkpoint started: fit names what changed. The same
    settings with more epochs say nothing; a user's optimiser carries its own learning rate."""
    x = _data()
    path = tmp_path / "ck.pt"
    fit(_model(), x, _cfg(epochs=1), checkpoint_path=path, progress=False)
    assert load_checkpoint(path)["config"]["train"]["num_data"] == x.shape[0]
    bs = _cfg().batch_size
    with pytest.warns(UserWarning, match=rf"other settings \(batch_size={bs} -> {bs // 2}\); "):
        fit(_model(), x, _cfg(epochs=2, batch_size=bs // 2), checkpoint_path=path,
            resume=True, progress=False)  # fmt: skip
    more = torch.cat([x, _data(seed=1)])
    with pytest.warns(UserWarning, match=rf"\(num_data={x.shape[0]} -> {more.shape[0]}\)"):
        fit(_model(), more, _cfg(epochs=3, batch_size=bs // 2), checkpoint_path=path,
            resume=True, progress=False)  # fmt: skip
    with pytest.warns(UserWarning, match=r"\(lr=0\.01 -> 0\.005\)"):
        fit(_model(), more, _cfg(epochs=4, batch_size=bs // 2, lr=5e-3), checkpoint_path=path,
            resume=True, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same data and settings, a user's own Adam: nothing to say
        fit(_model(), more, _cfg(epochs=5, batch_size=bs // 2, lr=0.5),
            optim=pyro.optim.Adam({"lr": 1e-3}), checkpoint_path=path, resume=True,
            progress=False)  # fmt: skip
    # the checkpoint then says the learning rate was the user's optimiser's, not config.lr
    assert load_checkpoint(path)["config"]["train"]["lr"] is None
    with pytest.warns(UserWarning, match=r"\(lr=a user's optimiser -> 0\.01\)"):
        fit(_model(), more, _cfg(epochs=6, batch_size=bs // 2), checkpoint_path=path,
            resume=True, progress=False)  # fmt: skip


def test_resume_matches_uninterrupted_training(tmp_path):
    x = _data()
    init = {k: v.clone() for k, v in _model().state_dict().items()}

    straight = _model()
    straight.load_state_dict(init)
    fit(straight, x, _cfg(epochs=3), checkpoint_path=tmp_path / "a.pt", progress=False)

    part = _model()
    part.load_state_dict(init)
    fit(part, x, _cfg(epochs=1), checkpoint_path=tmp_path / "b.pt", progress=False)
    pyro.clear_param_store()
    torch.manual_seed(99)  # a new process would have another RNG state and another init
    resumed = _model()
    hist = fit(
        resumed, x, _cfg(epochs=3), checkpoint_path=tmp_path / "b.pt", resume=True, progress=False
    )
    assert hist.epoch == [1, 2, 3]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    # the optimiser moved the tensors the modules use (not detached copies in the store)
    store = pyro.get_param_store()
    assert store["encoder$$$net.0.weight"] is resumed.encoder.net[0].weight


def test_checkpoint_contents_round_trip(tmp_path):
    x = _data()
    model = _model()
    path = tmp_path / "ck.pt"
    fit(model, x, _cfg(epochs=2), checkpoint_path=path, extra_state={"note": "hi"}, progress=False)
    ck = load_checkpoint(path)  # weights_only=True inside
    assert ck["epoch"] == 2 and ck["config"]["note"] == "hi"
    assert ck["config"]["train"]["lr"] == 1e-2
    assert set(ck["param_store"]["params"]) == {
        f"{n}$$${k}" for n, m in model.pyro_modules() for k, _ in m.named_parameters()
    }
    assert ck["optim_state"]  # Adam moments per parameter
    assert len(ck["history"]["test_elbo"]) == 2


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    x = _data()
    model = _model()
    path = tmp_path / "ck.pt"
    calls = {"n": 0, "armed": False}
    original = model.decoder.forward

    def poisoned(z):
        calls["n"] += 1
        out = original(z)
        # the resumed fit runs the program once to check it, then steps: poison its step 2
        if calls["armed"] and calls["n"] == 1 + 2:
            out = out * float("nan")
        return out

    model.decoder.forward = poisoned
    fit(model, x, _cfg(epochs=1), checkpoint_path=path, progress=False)
    good = path.read_bytes()
    calls.update(n=0, armed=True)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 2/3") as info:
        fit(model, x, _cfg(epochs=3), checkpoint_path=path, resume=True, progress=False)
    assert info.value.epoch == 2 and info.value.step == 2
    assert "intact" in str(info.value)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(10, 1, 28, 28), "shape"),
        (torch.rand(10, 64), "shape"),
        (torch.full((10, *IMG), float("nan")), "NaN"),
        (torch.rand(10, *IMG).index_put_((torch.tensor([3]),), torch.tensor(float("inf"))), "Inf"),
        (torch.rand(10, *IMG) * 2.0, "support"),
        (torch.rand(10, *IMG) - 0.5, "support"),
        (torch.randint(0, 2, (10, *IMG)), "floating"),
        (torch.rand(10, *IMG, dtype=torch.float64), "float64"),
        (torch.rand(0, *IMG), "empty"),
    ],
)
def test_bad_data_is_refused_before_training(bad, match):
    with pytest.raises(DataError, match=match):
        fit(_model(), bad, _cfg(epochs=1), progress=False)


def test_unbounded_data_need_the_identity_link():
    """A sigmoid mean can never reach data outside [0, 1]: refused, naming the fix."""
    x = _data() * 3 - 1
    with pytest.raises(DataError, match="'link': 'identity'"):
        fit(_model(likelihood="gaussian"), x, _cfg(epochs=1), progress=False)
    model = _model(likelihood="gaussian", likelihood_kwargs={"link": "identity"})
    fit(model, x, _cfg(epochs=1), progress=False)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -1e-3}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"beta": 0.0}, "beta"),
        ({"objective": "elbo++"}, "elbo"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        fit(_model(), _data(), _cfg(**kw), progress=False)


def test_truncated_foreign_and_mismatched_checkpoints(tmp_path):
    x = _data()
    good = tmp_path / "good.pt"
    fit(_model(), x, _cfg(epochs=1), checkpoint_path=good, progress=False)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    with pytest.raises(CheckpointError, match="not a ppl_vae checkpoint"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "ppl_vae-checkpoint", "x": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)

    with pytest.raises(CheckpointError, match="does not fit this model"):
        fit(
            _model(latent_dim=5),
            x,
            _cfg(epochs=2),
            checkpoint_path=good,
            resume=True,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(
            _model(),
            x,
            _cfg(),
            checkpoint_path=tmp_path / "missing.pt",
            resume=True,
            progress=False,
        )


def test_point_mass_guide_trains_on_same_svi_path():
    x = _data()
    ae = _model(guide="delta", prior="flat", likelihood="gaussian")
    hist = fit(ae, x, _cfg(epochs=3), test_x=x, progress=False)
    assert hist.test_elbo[-1] > hist.test_elbo[0]
    with pytest.raises(ValueError, match="cannot sample"):
        ae.sample(3)


def test_model_and_guide_work_with_other_pyro_utilities():
    model = _model()
    x = _data(16)
    pred = pyro.infer.Predictive(model.model, guide=model.guide, num_samples=4)(x)
    assert pred["z"].shape == (4, 16, 2)
    assert pred["x"].shape == (4, 16, *IMG)
    tr = pyro.poutine.trace(model.guide).get_trace(x)
    latent = {n for n, site in tr.nodes.items() if site["type"] == "sample" and n != "data"}
    assert latent == {"z"}  # "data" is the plate's subsample site
    assert TraceMeanField_ELBO().loss(model.model, model.guide, x) > 0
    assert Trace_ELBO().loss(model.model, model.guide, x) > 0


def test_device_auto_and_errors():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_epoch():  # pragma: no cover - runs only on a GPU machine
    x = _data()
    model = _model()
    hist = fit(model, x, _cfg(epochs=1, device="cuda"), test_x=x, progress=False)
    assert next(model.parameters()).is_cuda and math.isfinite(hist.test_elbo[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("objective", ["trace", "jit-trace"])
def test_cuda_resume_matches_uninterrupted_training(tmp_path, objective):  # pragma: no cover
    """On a GPU z's noise comes from the CUDA generator: its state is checkpointed too."""
    x = _data()
    init = {k: v.clone() for k, v in _model().state_dict().items()}
    cfg = {"device": "cuda", "objective": objective}
    straight = _model()
    straight.load_state_dict(init)
    fit(straight, x, _cfg(epochs=3, **cfg), checkpoint_path=tmp_path / "a.pt", progress=False)
    part = _model()
    part.load_state_dict(init)
    fit(part, x, _cfg(epochs=1, **cfg), checkpoint_path=tmp_path / "b.pt", progress=False)
    torch.cuda.manual_seed(99)  # a new process would start from another CUDA RNG state
    resumed = _model()
    fit(
        resumed,
        x,
        _cfg(epochs=3, **cfg),
        checkpoint_path=tmp_path / "b.pt",
        resume=True,
        progress=False,
    )
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_nan_parameters_after_finite_losses_are_never_checkpointed(tmp_path):
    """A NaN gradient on an epoch's last step leaves finite losses but NaN weights."""
    x = _data()
    model = _model()
    path = tmp_path / "ck.pt"
    fit(model, x, _cfg(epochs=1), checkpoint_path=path, progress=False)
    good = path.read_bytes()
    calls = {"n": 0}
    original = model.decoder.forward

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    def poisoned(z):
        calls["n"] += 1
        out = original(z)
        # the resumed fit checks the program once, then steps: poison the last step of epoch 2
        return NanGrad.apply(out) if calls["n"] == 1 + 3 else out

    model.decoder.forward = poisoned
    with pytest.raises(TrainingDivergedError, match=r"parameters .* during epoch 2") as info:
        fit(model, x, _cfg(epochs=2), checkpoint_path=path, resume=True, progress=False)
    assert "intact" in str(info.value)
    assert path.read_bytes() == good
