"""The benchmark and the fast training paths it measures.

* the JIT objectives compute Pyro's plain loss on the same noise, with the same gradients, and
  compile once per batch shape (Pyro 1.9's ``JitTraceMeanField_ELBO`` recompiled every step);
* training with them, or with the multi-tensor Adam, follows the plain path's trajectory;
* the benchmark's hand-written PyTorch loop is the identical loss and trajectory, so the
  library/hand-written ratio compares equal work;
* ``experiments/benchmark.py`` runs end to end on a tiny budget and writes its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae import ModelConfig, TrainConfig, build_model, fit, load_checkpoint
from ppl_vae.bench import HandWrittenVAE, PeakMemory, markdown_table
from ppl_vae.train import MultiTensorAdam, make_elbo

ROOT = Path(__file__).resolve().parents[1]
IMG = (1, 8, 8)
PLAIN = {"jit-meanfield": TraceMeanField_ELBO, "jit-trace": Trace_ELBO}


def _data(n: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(4, *IMG, generator=g)
    pick = torch.randint(0, 4, (n,), generator=g)
    return (base[pick] * 0.8 + 0.1 * torch.rand(n, *IMG, generator=g)).clamp(0, 1)


def _twins(net: str = "mlp", **kw: object) -> tuple:
    """Two models with identical initial weights."""
    cfg = ModelConfig(latent_dim=2, hidden=(32,), net=net, **kw)
    a, b = build_model(cfg, IMG), build_model(cfg, IMG)
    b.load_state_dict(a.state_dict())
    return a, b


@torch.no_grad()
def _max_rel_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).abs().max() / q.abs().max().clamp_min(1e-12))
        for p, q in zip(a.parameters(), b.parameters())
    )


def _loss_and_grads(elbo, model, x, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = elbo.differentiable_loss(
        model.model,
        model.guide,
        x,
        x,
        torch.tensor(1.0, device=x.device),
        num_data=320,
        batch_size=32,
    )
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------ fast paths = plain path
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("objective", ["jit-meanfield", "jit-trace"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_jit_loss_and_gradients_equal_plain_on_same_noise(objective, net, device):
    model, _ = _twins(net)
    model.to(device)
    x = _data(32).to(device)
    plain_loss, plain_grads = _loss_and_grads(PLAIN[objective](max_plate_nesting=1), model, x, 7)
    fast = make_elbo(objective)
    for seed in (7, 7, 7):  # the first call compiles; later calls replay the graph
        loss, grads = _loss_and_grads(fast, model, x, seed)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-3)
        for g, ref in zip(grads, plain_grads):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4)


def test_jit_meanfield_compiles_once_per_batch_shape():
    model, _ = _twins()
    elbo = make_elbo("jit-meanfield")
    model_fn, guide_fn = model.model, model.guide
    beta = torch.tensor(1.0)
    for b in (32, 32, 32, 16, 16, 32):
        x = _data(b)
        elbo.differentiable_loss(model_fn, guide_fn, x, x, beta, num_data=96, batch_size=b)
    # Pyro 1.9's JitTraceMeanField_ELBO made a new compiled function on every call
    assert len(elbo._differentiable_loss.compiled) == 2


@pytest.mark.parametrize("objective", ["jit-meanfield", "jit-trace", "meanfield", "trace"])
def test_training_matches_the_hand_written_loop(objective):
    """fit() and the benchmark's pure-PyTorch loop: same init, batch order and noise, so the same
    weights after training (the short last batch makes the JIT paths compile a second graph)."""
    x = _data(100)
    lib, ref = _twins()
    hand = HandWrittenVAE(
        ref, x, batch_size=32, lr=1e-2, analytic_kl="meanfield" in objective, seed=3
    )
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, objective=objective, seed=3, device="cpu")
    hist = fit(lib, x, cfg, progress=False)
    losses = [hand.epoch() for _ in range(2)]
    assert hist.train_loss == pytest.approx(losses, rel=1e-5)
    assert _max_rel_diff(lib, ref) < 1e-4


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_hand_written_loss_is_pyros_loss(net):
    model, twin = _twins(net)
    x = _data(32)
    for analytic, elbo_cls in ((True, TraceMeanField_ELBO), (False, Trace_ELBO)):
        pyro.clear_param_store()
        pyro.set_rng_seed(11)
        ref = elbo_cls(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
        hand = HandWrittenVAE(twin, x, batch_size=32, lr=1e-3, analytic_kl=analytic, seed=11)
        assert float(hand.loss(x).detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_multi_tensor_adam_matches_pyro_adam():
    x = _data()
    a, b = _twins()
    fit(a, x, TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu"), progress=False)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu", multi_tensor_adam=False)
    fit(b, x, cfg, progress=False)
    assert _max_rel_diff(a, b) < 1e-4


@pytest.mark.parametrize("first, second", [(True, False), (False, True)])
def test_checkpoints_resume_across_optimisers(tmp_path, first, second):
    x = _data()
    straight, part = _twins()
    cfg = {"batch_size": 32, "lr": 1e-2, "device": "cpu"}
    fit(straight, x, TrainConfig(epochs=3, **cfg), progress=False)
    path = tmp_path / "ck.pt"
    first_cfg = TrainConfig(epochs=1, multi_tensor_adam=first, **cfg)
    fit(part, x, first_cfg, checkpoint_path=path, progress=False)
    state = load_checkpoint(path)["optim_state"]
    names = {f"{n}$$${k}" for n, m in part.pyro_modules() for k, _ in m.named_parameters()}
    assert set(state) == names
    assert all(len(s["state"]) == 1 for s in state.values())  # one Adam state per parameter
    pyro.clear_param_store()
    resumed, _ = _twins()
    fit(
        resumed,
        x,
        TrainConfig(epochs=3, multi_tensor_adam=second, **cfg),
        checkpoint_path=path,
        resume=True,
        progress=False,
    )
    assert _max_rel_diff(resumed, straight) < 1e-4


@pytest.mark.parametrize("every_step", [False, True])
def test_pyro_validation_runs_on_the_first_step(every_step):
    from pyro.poutine.util import is_validation_enabled

    model, _ = _twins()
    seen = []
    forward = model.decoder.forward

    def spy(z):
        seen.append(is_validation_enabled())
        return forward(z)

    model.decoder.forward = spy
    cfg = TrainConfig(epochs=2, batch_size=32, device="cpu", validate_every_step=every_step)
    fit(model, _data(), cfg, progress=False)  # conftest turns validation on
    assert seen == [True] * 6 if every_step else seen == [True] + [False] * 5
    assert is_validation_enabled()  # restored after training


def test_resumed_training_validates_its_first_step(tmp_path):
    from pyro.poutine.util import is_validation_enabled

    model, _ = _twins()
    path = tmp_path / "ck.pt"
    cfg = {"batch_size": 32, "device": "cpu"}
    fit(model, _data(), TrainConfig(epochs=1, **cfg), checkpoint_path=path, progress=False)
    seen = []
    forward = model.decoder.forward
    model.decoder.forward = lambda z: seen.append(is_validation_enabled()) or forward(z)
    fit(model, _data(), TrainConfig(epochs=2, **cfg), checkpoint_path=path, resume=True)
    assert seen == [True, False, False]


def test_log_likelihood_chunks_are_bounded_whatever_k(monkeypatch):
    ev = sys.modules["ppl_vae.evaluate"]  # the package's ``evaluate`` is the function

    model, _ = _twins()
    x = _data(50)
    chunks = []
    real = ev._log_weights
    monkeypatch.setattr(
        ev, "_log_weights", lambda m, xb, k: chunks.append((xb.shape[0], k)) or real(m, xb, k)
    )
    monkeypatch.setattr(ev, "CPU_MAX_ELEMENTS", 25 * 64 * 7)  # 7 particles of 25 images
    for k in (10, 1000):
        chunks.clear()
        ll = ev.log_likelihood(model, x, num_samples=k, batch_size=25, max_elements=2**25)
        assert ll.shape == (50,) and torch.isfinite(ll).all()
        assert max(k_ for _, k_ in chunks) == 7  # the CPU cap, not max_elements, binds here
        assert sum(k_ for _, k_ in chunks) == 2 * k


def test_multi_tensor_adam_state_before_first_step_is_what_was_set():
    optim = MultiTensorAdam({"lr": 1e-3})
    optim.set_state({"w": {"state": {}, "param_groups": []}})
    assert optim.get_state() == {"w": {"state": {}, "param_groups": []}}


# ------------------------------------------------------------------ the benchmark itself
def test_peak_memory_sees_an_allocation():
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    peak = memory.peak()
    del block
    assert peak["above_start_mib"] > 32 or memory.method.startswith("ru_maxrss")


def test_benchmark_script_smoke(mnist, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "benchmark.py"),
        "--nets",
        "mlp,conv",
        "--objectives",
        "auto,jit-meanfield,trace",
        "--train-size",
        "256",
        "--test-size",
        "200",
        "--epochs",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--iw-samples",
        "5,20",
        "--iw-images",
        "20",
        "--seed-reference",
        "mlp",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = results["training"]
    assert [(r["net"], r["objective"], r["resolved_objective"]) for r in rows] == [
        (net, objective, resolved)
        for net in ("mlp", "conv")
        for objective, resolved in (
            ("auto", "jit-trace"),  # the default: compiled Trace_ELBO on CPU
            ("jit-meanfield", "jit-meanfield"),
            ("trace", "trace"),
        )
    ]
    for r in rows:
        assert r["ratio"] > 0 and len(r["epoch_ratios"]) == 1
        for side in ("library", "hand_written"):
            assert r[side]["seconds_per_epoch"] > 0 and r[side]["images_per_second"] > 0
            assert r[side]["peak_mib"] > 0 and len(r[side]["epoch_seconds"]) == 2
        # same init, order and noise: the two loops train the same weights
        assert abs(r["test_elbo_difference"]) < 0.5
        # the seed-to-seed scatter is measured for the nets asked for, and only for them
        if r["net"] == "mlp":
            other = r["seed_reference_test_elbo"]
            assert other == pytest.approx(
                r["hand_written_test_elbo"] + r["seed_to_seed_difference"]
            )
            assert other != r["hand_written_test_elbo"]  # another seed trains other weights
        else:
            assert "seed_reference_test_elbo" not in r
    assert [r["num_samples"] for r in results["log_likelihood"]] == [5, 20]
    assert all(r["images"] == 20 and r["peak_mib"] > 0 for r in results["log_likelihood"])
    assert results["environment"]["torch_threads"] == 1
    assert "| mlp | jit-meanfield |" in markdown_table(results)
    assert "| mlp | auto → jit-trace |" in markdown_table(results)
    assert "ratio" in proc.stdout


def test_benchmark_refuses_bad_settings(capsys):
    from ppl_vae.bench import main

    assert main(["--nets", "resnet", "--iw-samples", ""]) == 2
    assert "unknown network" in capsys.readouterr().err
