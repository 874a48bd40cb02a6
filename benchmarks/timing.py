"""One measurement of the benchmark: paired library / hand-written training epochs, or log p(x).

For one network and objective, :func:`time_training` trains two copies of the same network from
the same initial weights on the same device-resident tensor, alternating epochs:

* the library: :func:`ppl_vae.fit` (Pyro SVI on the model/guide pair);
* :class:`reference.HandWrittenVAE`: a plain PyTorch loop of the identical network and loss,
  scaled by ``N / B`` like the library's plate, fused ``torch.optim.Adam`` (as the library's
  ``MultiTensorAdam``), batches indexed from a ``randperm``.

Interleaving puts both loops under the same machine load, which matters on shared machines: the
ratio library/hand is the median of the per-pair ratios over the timed epochs (warm-up epochs,
which include JIT compilation, are dropped). It is given for wall-clock time and for this
process's CPU time; the latter does not count time the process waited for a core, so on a loaded
machine run with ``--threads 1`` it is the steadier of the two. Each side reads its loss back
every step (the library checks it for NaN; the hand loop accumulates it), as any real training
loop does. From the same initial weights, batch order and noise the two loops train the same
weights (up to float rounding), so their final test ELBOs agree. How closely is judged against
the seed-to-seed scatter: for the networks in ``seed_reference`` a third, untimed hand-written
loop trains from the next seed, and the table shows how far its test ELBO lies from the first
(rounding differences grow during training like a change of seed does, so "within noise" means
within that scatter, not within the evaluation's standard error).

:func:`time_log_likelihood` times the importance-sampled :func:`ppl_vae.log_likelihood` of the
test images for one K, with its peak memory (see :mod:`measure`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from measure import PeakMemory, sync
from reference import ANALYTIC_KL, HandWrittenVAE

from ppl_vae import (
    VAE,
    History,
    ModelConfig,
    TrainConfig,
    build_model,
    elbo_per_image,
    fit,
    log_likelihood,
    resolve_objective,
)
from ppl_vae.evaluate import CPU_MAX_ELEMENTS

__all__ = ["NETWORKS", "BenchConfig", "time_log_likelihood", "time_training", "trained_mlp"]

#: Benchmark networks: the PyTorch example's 784-400-20 MLP and the library's conv nets.
NETWORKS: dict[str, ModelConfig] = {
    "mlp": ModelConfig(latent_dim=20, hidden=(400,), net="mlp"),
    "conv": ModelConfig(latent_dim=20, net="conv"),
}


@dataclass
class BenchConfig:
    """What to time. Defaults are the README's table (full MNIST, both networks)."""

    dataset: str = "mnist"
    nets: tuple[str, ...] = ("mlp", "conv")
    #: ``auto`` is the library's default (on CPU the compiled ``Trace_ELBO``), ``trace`` the
    #: plain ``Trace_ELBO`` path.
    objectives: tuple[str, ...] = ("auto", "trace")
    #: Timed epochs per loop and variant, after ``warmup`` untimed ones (JIT compilation).
    epochs: int = 3
    warmup: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    #: Train on the first ``train_size`` images only (``None``: all); for smoke tests.
    train_size: int | None = None
    #: Score the final test ELBO on the first ``test_size`` test images (``None``: all).
    test_size: int | None = None
    device: str = "auto"
    #: ``torch.set_num_threads`` for this run (``None``: leave torch's default).
    threads: int | None = None
    seed: int = 0
    #: K values of the importance-sampled log-likelihood to time (empty: skip).
    iw_samples: tuple[int, ...] = (1000,)
    #: Test images for the log-likelihood (``None``: all of them).
    iw_images: int | None = None
    iw_batch_size: int = 100
    iw_max_elements: int = 2**25
    #: Networks for which a third, untimed hand-written loop is trained from another seed
    #: (``seed + 1``: other initial weights, batch order and noise). Its test ELBO gives the
    #: seed-to-seed scatter that the library-vs-hand difference should be compared with.
    seed_reference: tuple[str, ...] = ("mlp",)
    #: ``DataLoader`` worker counts for which an epoch of the streaming path is timed against
    #: the in-memory path (empty: skip).
    stream_workers: tuple[int, ...] = ()
    #: Write the results here as JSON (``None``: print only).
    out: str | None = None

    def validate(self) -> None:
        for net in (*self.nets, *self.seed_reference):
            if net not in NETWORKS:
                raise ValueError(f"unknown network {net!r}; choose from {sorted(NETWORKS)}")
        for objective in self.objectives:
            if objective != "auto" and objective not in ANALYTIC_KL:
                raise ValueError(
                    f"objective {objective!r} has no hand-written counterpart; choose from "
                    f"{['auto', *ANALYTIC_KL]}"
                )
        if self.epochs < 1 or self.warmup < 0:
            raise ValueError("need epochs >= 1 timed epoch and warmup >= 0")
        if any(k < 1 for k in self.iw_samples):
            raise ValueError(f"iw_samples must be positive, got {self.iw_samples}")


# ----------------------------------------------------------------------------- training
@dataclass
class _Side:
    seconds: list[float] = field(default_factory=list)  # wall clock
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time
    memory: list[dict[str, float]] = field(default_factory=list)


def _summary(side: _Side, warmup: int, n: int) -> dict[str, Any]:
    med = statistics.median(side.seconds[warmup:])
    mem = side.memory[warmup:] or side.memory
    return {
        "seconds_per_epoch": round(med, 3),
        "images_per_second": round(n / med, 1),
        "cpu_seconds_per_epoch": round(statistics.median(side.cpu_seconds[warmup:]), 3),
        "epoch_seconds": [round(s, 3) for s in side.seconds],
        "epoch_cpu_seconds": [round(s, 3) for s in side.cpu_seconds],
        "peak_mib": max(m["peak_mib"] for m in mem),
        "peak_above_start_mib": max(m["above_start_mib"] for m in mem),
    }


def _paired_ratios(lib: list[float], hand: list[float], warmup: int) -> list[float]:
    return [a / b for a, b in zip(lib[warmup:], hand[warmup:])]


def _test_elbo(model: VAE, test_x: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-image test ELBO, one draw per image from the evaluation noise of ``seed``."""
    model.eval()
    pyro.clear_param_store()  # all copies use the same module names: keep them apart
    pyro.set_rng_seed(seed)
    return elbo_per_image(model, test_x)


def _test_elbos(lib_model: VAE, hand_model: VAE, test_x: torch.Tensor, seed: int) -> dict:
    """Mean test ELBO of both copies (same noise for both) and the standard error of their
    difference over the images."""
    lib, hand = _test_elbo(lib_model, test_x, seed), _test_elbo(hand_model, test_x, seed)
    diff = lib - hand
    return {
        "library_test_elbo": round(float(lib.mean()), 3),
        "hand_written_test_elbo": round(float(hand.mean()), 3),
        "test_elbo_difference": round(float(diff.mean()), 3),
        "test_elbo_difference_stderr": round(float(diff.std() / math.sqrt(diff.numel())), 3),
    }


def _seed_reference_elbo(
    net: str,
    resolved: str,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    config: BenchConfig,
    device: torch.device,
) -> float:
    """Test ELBO of the hand-written loop trained from ``seed + 1`` for the same epochs.

    Same network, loss and budget; other initial weights, batch order and noise. Scored on the
    same evaluation noise as :func:`_test_elbos`, so the difference to the seed-``seed`` run is
    what one retraining changes: the scale against which a library-vs-hand difference is noise.
    """
    seed = config.seed + 1
    model = build_model(NETWORKS[net], tuple(train_x.shape[1:]), seed=seed).to(device)
    hand = HandWrittenVAE(
        model,
        train_x,
        batch_size=config.batch_size,
        lr=config.lr,
        analytic_kl=ANALYTIC_KL[resolved],
        seed=seed,
    )
    for _ in range(config.warmup + config.epochs):
        hand.epoch()
    return float(_test_elbo(model, test_x, config.seed).mean())


def time_training(
    net: str,
    objective: str,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    config: BenchConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], VAE]:
    """Alternate library and hand-written epochs of one network/objective.

    Returns the summary and the library's trained model."""
    shape = tuple(train_x.shape[1:])
    # initial weights are a function of the seed alone: the two copies start identical
    lib_model = build_model(NETWORKS[net], shape, seed=config.seed).to(device)
    hand_model = build_model(NETWORKS[net], shape, seed=config.seed).to(device)
    resolved = resolve_objective(objective, lib_model, device)
    if resolved not in ANALYTIC_KL:
        raise ValueError(f"{objective!r} resolved to {resolved!r}: no hand-written counterpart")
    hand = HandWrittenVAE(
        hand_model,
        train_x,
        batch_size=config.batch_size,
        lr=config.lr,
        analytic_kl=ANALYTIC_KL[resolved],
        seed=config.seed,
    )
    memory = PeakMemory(device)
    lib, hw = _Side(), _Side()
    n = train_x.shape[0]
    cpu_mark = [0.0]  # process CPU time when the library's epoch started

    def hand_epoch(epoch: int, history: History, program: Any) -> None:
        # fit() measured its own epoch (History.seconds: the step loop only, no test set given)
        lib.seconds.append(history.seconds[-1])
        lib.cpu_seconds.append(time.process_time() - cpu_mark[0])
        lib.memory.append(memory.peak())
        memory.reset()
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = hand.epoch()
        sync(device)
        hw.seconds.append(time.perf_counter() - t0)
        hw.cpu_seconds.append(time.process_time() - c0)
        hw.memory.append(memory.peak())
        log(
            f"  {net:4s} {objective:13s} epoch {epoch}: library {lib.seconds[-1]:7.2f}s "
            f"(loss {history.train_loss[-1]:8.2f})  hand-written {hw.seconds[-1]:7.2f}s "
            f"(loss {loss:8.2f})  CPU time {lib.cpu_seconds[-1]:.2f}s vs {hw.cpu_seconds[-1]:.2f}s"
        )
        memory.reset()
        cpu_mark[0] = time.process_time()

    train_config = TrainConfig(
        epochs=config.warmup + config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        objective=objective,
        seed=config.seed,
        device=str(device),
    )
    memory.reset()
    cpu_mark[0] = time.process_time()
    fit(lib_model, train_x, train_config, progress=False, callbacks=(hand_epoch,))

    pairs = _paired_ratios(lib.seconds, hw.seconds, config.warmup)
    cpu_pairs = _paired_ratios(lib.cpu_seconds, hw.cpu_seconds, config.warmup)
    lib_summary, hand_summary = _summary(lib, config.warmup, n), _summary(hw, config.warmup, n)
    result = {
        "net": net,
        "objective": objective,
        "resolved_objective": resolved,
        "hand_written_kl": "analytic" if ANALYTIC_KL[resolved] else "monte-carlo",
        "epochs": config.warmup + config.epochs,
        "warmup_epochs": config.warmup,
        "train_images": n,
        "ratio": round(statistics.median(pairs), 3),
        "ratio_of_medians": round(
            lib_summary["seconds_per_epoch"] / hand_summary["seconds_per_epoch"], 3
        ),
        "epoch_ratios": [round(r, 3) for r in pairs],
        "cpu_ratio": round(statistics.median(cpu_pairs), 3),
        "epoch_cpu_ratios": [round(r, 3) for r in cpu_pairs],
        "library": lib_summary,
        "hand_written": hand_summary,
        **_test_elbos(lib_model, hand_model, test_x, config.seed),
    }
    if net in config.seed_reference:
        log(
            f"  {net:4s} {objective:13s} seed reference: hand-written loop from seed "
            f"{config.seed + 1}"
        )
        other = _seed_reference_elbo(net, resolved, train_x, test_x, config, device)
        result["seed_reference_test_elbo"] = round(other, 3)
        result["seed_to_seed_difference"] = round(other - result["hand_written_test_elbo"], 3)
    return result, lib_model


# ----------------------------------------------------------------------------- log p(x)
def time_log_likelihood(
    model: VAE, test_x: torch.Tensor, num_samples: int, config: BenchConfig, device: torch.device
) -> dict[str, Any]:
    """Time :func:`ppl_vae.log_likelihood` over ``test_x`` with ``num_samples`` per image."""
    memory = PeakMemory(device)
    pyro.clear_param_store()
    memory.reset()
    sync(device)
    t0 = time.perf_counter()
    ll = log_likelihood(
        model,
        test_x,
        num_samples=num_samples,
        batch_size=config.iw_batch_size,
        max_elements=config.iw_max_elements,
    )
    sync(device)
    seconds = time.perf_counter() - t0
    cpu = device.type == "cpu"
    return {
        "num_samples": num_samples,
        "images": test_x.shape[0],
        "batch_size": config.iw_batch_size,
        "max_elements": config.iw_max_elements,
        "chunk_elements": min(config.iw_max_elements, CPU_MAX_ELEMENTS)
        if cpu
        else config.iw_max_elements,
        "seconds": round(seconds, 2),
        "images_per_second": round(test_x.shape[0] / seconds, 2),
        "log_likelihood": round(float(ll.mean()), 3),
        **memory.peak(),
    }


def trained_mlp(train_x: torch.Tensor, config: BenchConfig, device: torch.device) -> VAE:
    """An MLP VAE trained one epoch, when no training run above left one."""
    model = build_model(NETWORKS["mlp"], tuple(train_x.shape[1:]), seed=config.seed).to(device)
    cfg = TrainConfig(
        epochs=1,
        batch_size=config.batch_size,
        lr=config.lr,
        objective="jit-meanfield",
        seed=config.seed,
        device=str(device),
    )
    fit(model, train_x, cfg, progress=False)
    return model


class _Images(torch.utils.data.Dataset):
    """Data points one at a time, as a user's Dataset serves them (here from memory)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.cpu()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def time_streaming(
    train_x: torch.Tensor, workers: int | None, config: BenchConfig, device: torch.device
) -> dict[str, Any]:
    """Images per second of one epoch of ``fit`` (MLP VAE, ``auto``) on the device-resident
    tensor (``workers`` None) or streamed from a Dataset through a DataLoader with ``workers``
    processes, after ``config.warmup`` untimed epochs. Same batches and losses either way."""
    model = build_model(NETWORKS["mlp"], tuple(train_x.shape[1:]), seed=config.seed).to(device)
    data = train_x if workers is None else _Images(train_x)
    cfg = TrainConfig(
        epochs=config.warmup + 1,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        device=str(device),
        num_workers=workers or 0,
    )
    history = fit(model, data, cfg, progress=False)
    return {
        "path": "in memory" if workers is None else f"streamed, {workers} workers",
        "seconds": history.seconds[-1],
        "images_per_second": train_x.shape[0] / history.seconds[-1],
        "train_loss": history.train_loss[-1],
    }
