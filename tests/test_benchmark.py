"""The benchmark and the fast training paths it measures.

* the JIT objectives compute Pyro's plain loss on the same noise, with the same gradients, and
  compile once per program and batch shape — not by chance: Pyro 1.9 keyed its graphs by
  ``id(model)``, the address of a fresh bound method (see ``ppl_vae.objectives._StableJit``);
* training with them, or with the multi-tensor Adam, follows the plain path's trajectory;
* the benchmark's hand-written PyTorch loop (``benchmarks/reference.py``, importable because
  ``conftest.py`` puts ``benchmarks/`` on ``sys.path``) is the identical loss and trajectory, so
  the library/hand-written ratio compares equal work;
* ``benchmarks/benchmark.py`` runs end to end on a tiny budget and writes its JSON.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from measure import PeakMemory
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from reference import ANALYTIC_KL, HandWrittenVAE

from ppl_vae import (
    VAE,
    ModelConfig,
    MultiTensorAdam,
    TrainConfig,
    build_model,
    fit,
    load_checkpoint,
    make_elbo,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark.py"
IMG = (1, 8, 8)
PLAIN = {"jit-meanfield": TraceMeanField_ELBO, "jit-trace": Trace_ELBO}
#: Where each JIT objective keeps its compiled function; its ``.compiled`` holds one graph per key.
COMPILED = {"jit-meanfield": "_differentiable_loss", "jit-trace": "_loss_and_surrogate_loss"}
JIT = pytest.mark.parametrize("objective", ["jit-meanfield", "jit-trace"])


def _data(n: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(4, *IMG, generator=g)
    pick = torch.randint(0, 4, (n,), generator=g)
    return (base[pick] * 0.8 + 0.1 * torch.rand(n, *IMG, generator=g)).clamp(0, 1)


def _twins(net: str = "mlp", **kw: object) -> tuple[VAE, VAE]:
    """Two models with identical initial weights (a function of the seed alone)."""
    cfg = ModelConfig(latent_dim=2, hidden=(32,), net=net, **kw)
    return build_model(cfg, IMG, seed=0), build_model(cfg, IMG, seed=0)


class _Renamed(VAE):
    """The VAE's code with its modules registered under other names: a second program whose
    parameters sit in the param store beside the first one's."""

    def pyro_modules(self, which: str = "all") -> list:
        return [(f"other_{name}", m) for name, m in super().pyro_modules(which)]


@torch.no_grad()
def _max_rel_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).abs().max() / q.abs().max().clamp_min(1e-12))
        for p, q in zip(a.parameters(), b.parameters())
    )


def _loss_and_grads(elbo, model, x, seed):
    """One step's loss and gradients on the noise of ``seed``; the param store is left as it is.

    ``model.model`` is a new bound-method object at every call, as in any training loop."""
    pyro.set_rng_seed(seed)
    model.zero_grad(set_to_none=True)
    beta = torch.tensor(1.0, device=x.device)
    loss = elbo.differentiable_loss(
        model.model, model.guide, x, x, beta, num_data=320, batch_size=32
    )
    loss.backward()
    return loss.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _assert_same_step(step, ref):
    (loss, grads), (ref_loss, ref_grads) = step, ref
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ fast paths = plain path
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@JIT
@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_jit_loss_and_gradients_equal_plain_on_same_noise(objective, net, device):
    model, _ = _twins(net)
    model.to(device)
    x = _data(32).to(device)
    plain = _loss_and_grads(PLAIN[objective](max_plate_nesting=1), model, x, 7)
    fast = make_elbo(objective, max_plate_nesting=1)
    compiled = []
    for _ in range(3):  # the first call compiles; later calls replay the graph
        _assert_same_step(_loss_and_grads(fast, model, x, 7), plain)
        compiled.append(getattr(fast, COMPILED[objective]))
        assert len(compiled[-1].compiled) == 1
    assert compiled[1] is compiled[0] and compiled[2] is compiled[0]


@JIT
def test_jit_recompiles_when_the_param_store_was_cleared(objective):
    """A graph reads its parameters from the param store by name. Pyro 1.9 replayed it after
    ``pyro.clear_param_store()`` when ``id(model)`` happened to repeat, and raised ``KeyError``."""
    model, _ = _twins()
    x = _data(32)
    fast = make_elbo(objective, max_plate_nesting=1)
    _loss_and_grads(fast, model, x, 7)
    first = getattr(fast, COMPILED[objective])
    pyro.clear_param_store()
    step = _loss_and_grads(fast, model, x, 7)
    assert getattr(fast, COMPILED[objective]) is not first  # compiled again
    assert len(getattr(fast, COMPILED[objective]).compiled) == 1
    _assert_same_step(step, _loss_and_grads(PLAIN[objective](max_plate_nesting=1), model, x, 7))


@JIT
def test_jit_objective_handed_another_program_computes_its_loss(objective):
    """Pyro 1.9's compiling closure captured the first program: the same ELBO object handed a
    second one compiled (or replayed) the first one's graph and returned the first one's loss."""
    first, _ = _twins()
    parts = build_model(ModelConfig(latent_dim=3, hidden=(16,)), IMG, seed=1)
    second = _Renamed(
        parts.encoder, parts.decoder, parts.prior, parts.likelihood, IMG, parts.guide_family
    )
    x = _data(32)
    fast = make_elbo(objective, max_plate_nesting=1)
    first_loss, _ = _loss_and_grads(fast, first, x, 7)
    step = _loss_and_grads(fast, second, x, 7)
    plain = _loss_and_grads(PLAIN[objective](max_plate_nesting=1), second, x, 7)
    assert abs(float(first_loss - plain[0])) > 1.0  # the two programs' losses differ
    _assert_same_step(step, plain)


@pytest.mark.parametrize("objective", ["jit-meanfield", "jit-trace", "meanfield", "trace"])
def test_training_matches_the_hand_written_loop(objective):
    """fit() and the benchmark's pure-PyTorch loop: same init, batch order and noise, so the same
    weights after training (the short last batch makes the JIT paths compile a second graph)."""
    x = _data(100)
    lib, ref = _twins()
    hand = HandWrittenVAE(
        ref, x, batch_size=32, lr=1e-2, analytic_kl=ANALYTIC_KL[objective], seed=3
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
    # plain Trace_ELBO: the decoder's Python runs at every step (a compiled graph would replay it)
    cfg = TrainConfig(
        epochs=2, batch_size=32, objective="trace", device="cpu", validate_every_step=every_step
    )
    fit(model, _data(), cfg, progress=False)  # conftest turns validation on
    steps = seen[-6:]  # 2 epochs of 3 steps, after fit's check of the program on the first batch
    assert steps == [True] * 6 if every_step else steps == [True] + [False] * 5
    assert is_validation_enabled()  # restored after training


def test_resumed_training_validates_its_first_step(tmp_path):
    from pyro.poutine.util import is_validation_enabled

    model, _ = _twins()
    path = tmp_path / "ck.pt"
    cfg = {"batch_size": 32, "objective": "trace", "device": "cpu"}
    fit(model, _data(), TrainConfig(epochs=1, **cfg), checkpoint_path=path, progress=False)
    seen = []
    forward = model.decoder.forward
    model.decoder.forward = lambda z: seen.append(is_validation_enabled()) or forward(z)
    fit(model, _data(), TrainConfig(epochs=2, **cfg), checkpoint_path=path, resume=True)
    assert seen[-3:] == [True, False, False]  # the resumed epoch's steps


def test_log_likelihood_chunks_are_bounded_whatever_k(monkeypatch):
    ev = sys.modules["ppl_vae.evaluate"]  # the package's ``evaluate`` is the function

    model, _ = _twins()
    x = _data(50)
    chunks = []
    real = ev._weights
    monkeypatch.setattr(
        ev, "_weights", lambda p, i, xb, k: chunks.append((xb.shape[0], k)) or real(p, i, xb, k)
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
        str(SCRIPT),
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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
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
    # the printed markdown table
    assert "| mlp | jit-meanfield |" in proc.stdout
    assert "| mlp | auto → jit-trace |" in proc.stdout
    assert "| K=20 | 20 |" in proc.stdout


@pytest.mark.parametrize("script", ["benchmarks/benchmark.py"])
def test_benchmark_script_help(script):
    """Run as users run it, from anywhere."""
    cmd = [sys.executable, str(ROOT / script), "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--objectives" in proc.stdout and "--seed-reference" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nets", "resnet"], "unknown network"),
        (["--objectives", "iwae"], "no hand-written counterpart"),
        (["--epochs", "0"], "epochs >= 1"),
    ],
)
def test_benchmark_refuses_bad_settings(capsys, args, message):
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([*args, "--iw-samples", ""]) == 2  # refused before any data is read
    assert message in capsys.readouterr().err
