"""Training speed of the library against hand-written PyTorch, measured side by side in one run.

For each network (the PyTorch example's 784-400-20 MLP VAE and the convolutional VAE) and each
objective, one process trains two copies of the same network from the same initial weights on the
same device-resident tensor, alternating epochs:

* the library: :func:`ppl_vae.train.fit` (Pyro SVI on the model/guide pair);
* a hand-written PyTorch loop of the identical network and loss — the same ``nn.Module`` s, the
  loss written out (Bernoulli cross-entropy summed plus the analytic KL for the mean-field
  objectives, plus ``log q(z) − log p(z)`` at the sampled ``z`` for the Monte Carlo ones), scaled
  by ``N / B`` like the library's plate, ``torch.optim.Adam`` (fused where torch has it, as the
  library's :class:`~ppl_vae.train.MultiTensorAdam`), batches indexed from a ``randperm``.

Interleaving puts both loops under the same machine load, which matters on shared machines: the
ratio library/hand is the median of the per-pair ratios over the timed epochs (warm-up epochs,
which include JIT compilation, are dropped). It is given for wall-clock time and for this
process's CPU time; the latter does not count time the process waited for a core, so on a loaded
machine run with ``--threads 1`` it is the steadier of the two. Each side reads its loss back
every step (the library checks it for NaN; the hand loop accumulates it), as any real training
loop does. From the same initial weights, batch order and noise the two loops train the same
weights (up to float rounding), so their final test ELBOs agree. How closely is judged against
the seed-to-seed scatter: for the networks in ``--seed-reference`` a third, untimed hand-written
loop trains from the next seed, and the table shows how far its test ELBO lies from the first
(rounding differences grow during training like a change of seed does, so "within noise" means
within that scatter, not within the evaluation's standard error).

It also times the importance-sampled log-likelihood (:func:`ppl_vae.evaluate.log_likelihood`) of
the test images for each requested K, with its peak memory.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the process's peak
resident set size (``VmHWM``, reset before each phase through ``/proc/self/clear_refs`` after
``malloc_trim`` has returned freed heap pages), reported both absolute (data set, libraries and
all) and above the resident size when the phase started (the phase's own working set).

Run ``python experiments/benchmark.py --help`` (or ``ppl-vae benchmark``) for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch.nn import functional as F

from .data import load_dataset
from .evaluate import CPU_MAX_ELEMENTS, elbo_per_image, log_likelihood
from .model import VAE, ModelConfig, build_model
from .train import History, Objective, TrainConfig, fit, resolve_device, resolve_objective

__all__ = [
    "NETWORKS",
    "BenchConfig",
    "HandWrittenVAE",
    "PeakMemory",
    "build_parser",
    "main",
    "run_benchmark",
]

#: Benchmark networks: the PyTorch example's 784-400-20 MLP and the library's conv nets.
NETWORKS: dict[str, ModelConfig] = {
    "mlp": ModelConfig(latent_dim=20, hidden=(400,), net="mlp"),
    "conv": ModelConfig(latent_dim=20, net="conv"),
}

_MEANFIELD = {Objective.MEANFIELD.value, Objective.JIT_MEANFIELD.value}


@dataclass
class BenchConfig:
    """What to time. Defaults are the README's table (full MNIST, both networks)."""

    dataset: str = "mnist"
    nets: tuple[str, ...] = ("mlp", "conv")
    #: ``auto`` is the library's default (:func:`~ppl_vae.train.resolve_objective`; on CPU the
    #: compiled ``Trace_ELBO``), ``trace`` the plain ``Trace_ELBO`` path.
    objectives: tuple[str, ...] = (Objective.AUTO.value, Objective.TRACE.value)
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
    #: Write the results here as JSON (``None``: print only).
    out: str | None = None

    def validate(self) -> None:
        for net in (*self.nets, *self.seed_reference):
            if net not in NETWORKS:
                raise ValueError(f"unknown network {net!r}; choose from {sorted(NETWORKS)}")
        for objective in self.objectives:
            Objective(objective)
        if self.epochs < 1 or self.warmup < 0:
            raise ValueError("need epochs >= 1 timed epoch and warmup >= 0")
        if any(k < 1 for k in self.iw_samples):
            raise ValueError(f"iw_samples must be positive, got {self.iw_samples}")


# ----------------------------------------------------------------------------- measurement
class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._status = Path("/proc/self/status")
        self._resettable = device.type != "cuda" and _can_reset_rss()
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "VmHWM (peak RSS, reset per phase)"
            if self._resettable
            else "ru_maxrss (peak RSS of the whole process, not reset per phase)"
        )
        self.start_mib = 0.0

    def reset(self) -> None:
        """Start a phase: forget the previous peak and remember the current footprint."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _trim_heap()  # give freed heap pages back, so RSS counts live memory only
            if self._resettable:
                Path("/proc/self/clear_refs").write_text("5")
            self.start_mib = self._rss_mib()

    def peak(self) -> dict[str, float]:
        """``{"peak_mib": …, "above_start_mib": …}`` since the last :meth:`reset`."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._resettable:
            peak = _proc_status_kib(self._status, "VmHWM") / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"peak_mib": round(peak, 1), "above_start_mib": round(peak - self.start_mib, 1)}

    def _rss_mib(self) -> float:
        if self._status.exists():
            return _proc_status_kib(self._status, "VmRSS") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_kib(path: Path, key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", path.read_text(), re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def _trim_heap() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover - not glibc
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _can_reset_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return Path("/proc/self/status").exists()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- hand-written loop
class HandWrittenVAE:
    """The VAE training step written out in plain PyTorch, for the library to be measured against.

    Uses ``model``'s encoder and decoder modules directly (so the network and its initial weights
    are identical) with a Normal q(z|x) (loc, softplus scale + 1e-5), a N(0, I) prior and a
    Bernoulli likelihood on logits. ``analytic_kl`` selects the loss: the closed-form KL (what
    ``TraceMeanField_ELBO`` computes) or the single-sample ``log q(z) − log p(z)`` (what
    ``Trace_ELBO`` computes). The batch loss is scaled by ``N / B`` as the library's plate does.
    """

    def __init__(
        self,
        model: VAE,
        train_x: torch.Tensor,
        *,
        batch_size: int,
        lr: float,
        analytic_kl: bool,
        seed: int,
    ) -> None:
        self.encoder, self.decoder = model.encoder, model.decoder
        self.x = train_x
        self.batch_size = batch_size
        self.analytic_kl = analytic_kl
        params = list(model.encoder.parameters()) + list(model.decoder.parameters())
        self.optimizer = _adam(params, lr)
        # fit(seed=s) draws its batch order from Generator(device).manual_seed(s) and its noise
        # from the global RNG seeded with s; two generators seeded alike replay both streams, so
        # from the same initial weights the two loops follow the same trajectory (up to rounding)
        self.order = torch.Generator(device=train_x.device).manual_seed(seed)
        self.noise = torch.Generator(device=train_x.device).manual_seed(seed)

    def epoch(self) -> float:
        """One pass over the data in a random order; returns the mean loss per image."""
        n, b = self.x.shape[0], self.batch_size
        perm = torch.randperm(n, generator=self.order, device=self.x.device)
        total = 0.0
        for start in range(0, n, b):
            x = self.x[perm[start : start + b]]
            loss = self.loss(x) * (n / x.shape[0])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * x.shape[0] / n
        return total / n

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch ``x`` (one reparameterised sample per image)."""
        z_loc, z_raw = self.encoder(x).chunk(2, dim=-1)
        z_scale = F.softplus(z_raw) + 1e-5
        eps = torch.randn(z_loc.shape, generator=self.noise, device=z_loc.device, dtype=z_loc.dtype)
        z = z_loc + z_scale * eps
        logits = self.decoder(z)
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        if self.analytic_kl:
            kl = 0.5 * (z_loc.square() + z_scale.square() - 1.0).sum() - z_scale.log().sum()
        else:  # log q(z|x) − log p(z) at the sampled z; (z − loc) / scale = eps
            kl = (0.5 * (z.square() - eps.square()) - z_scale.log()).sum()
        return nll + kl


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """The fastest torch Adam for these parameters (fused on CPU/CUDA), as the library uses."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # pragma: no cover - torch without fused Adam for this device
        return torch.optim.Adam(params, lr=lr, foreach=True)


# ----------------------------------------------------------------------------- the benchmark
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


def _test_elbos(
    lib_model: VAE, hand_model: VAE, test_x: torch.Tensor, seed: int
) -> dict[str, float]:
    """Mean per-image test ELBO of both copies (one Monte Carlo draw per image, the same noise
    for both) and the standard error of their difference over the images."""
    per_image = []
    for model in (lib_model, hand_model):
        pyro.clear_param_store()  # both copies use the same module names: keep them apart
        pyro.set_rng_seed(seed)
        per_image.append(elbo_per_image(model, test_x))
    diff = per_image[0] - per_image[1]
    return {
        "library_test_elbo": round(float(per_image[0].mean()), 3),
        "hand_written_test_elbo": round(float(per_image[1].mean()), 3),
        "test_elbo_difference": round(float(diff.mean()), 3),
        "test_elbo_difference_stderr": round(float(diff.std() / math.sqrt(diff.numel())), 3),
    }


def _seed_reference_elbo(
    net: str,
    objective: str,
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
    torch.manual_seed(seed)
    model = build_model(NETWORKS[net], tuple(train_x.shape[1:])).to(device)
    hand = HandWrittenVAE(
        model,
        train_x,
        batch_size=config.batch_size,
        lr=config.lr,
        analytic_kl=objective in _MEANFIELD,
        seed=seed,
    )
    for _ in range(config.warmup + config.epochs):
        hand.epoch()
    model.eval()
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    return float(elbo_per_image(model, test_x).mean())


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
    torch.manual_seed(config.seed)
    lib_model = build_model(NETWORKS[net], tuple(train_x.shape[1:])).to(device)
    hand_model = build_model(NETWORKS[net], tuple(train_x.shape[1:])).to(device)
    hand_model.load_state_dict(lib_model.state_dict())  # same initial weights
    resolved = resolve_objective(objective, lib_model, device).value
    hand = HandWrittenVAE(
        hand_model,
        train_x,
        batch_size=config.batch_size,
        lr=config.lr,
        analytic_kl=resolved in _MEANFIELD,
        seed=config.seed,
    )
    memory = PeakMemory(device)
    lib, hw = _Side(), _Side()
    n = train_x.shape[0]
    cpu_mark = [0.0]  # process CPU time when the library's epoch started

    def hand_epoch(epoch: int, history: History, model: VAE) -> None:
        # fit() measured its own epoch (History.seconds: the step loop only, no test set given)
        lib.seconds.append(history.seconds[-1])
        lib.cpu_seconds.append(time.process_time() - cpu_mark[0])
        lib.memory.append(memory.peak())
        memory.reset()
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = hand.epoch()
        _sync(device)
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
    lib_model.eval()
    hand_model.eval()
    result = {
        "net": net,
        "objective": objective,
        "resolved_objective": resolved,
        "hand_written_kl": "analytic" if resolved in _MEANFIELD else "monte-carlo",
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
            f"  {net:4s} {objective:13s} seed reference: "
            f"hand-written loop from seed {config.seed + 1}"
        )
        other = _seed_reference_elbo(net, resolved, train_x, test_x, config, device)
        result["seed_reference_test_elbo"] = round(other, 3)
        result["seed_to_seed_difference"] = round(other - result["hand_written_test_elbo"], 3)
    return result, lib_model


def time_log_likelihood(
    model: VAE,
    test_x: torch.Tensor,
    num_samples: int,
    config: BenchConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Time :func:`log_likelihood` over ``test_x`` with ``num_samples`` particles per image."""
    memory = PeakMemory(device)
    pyro.clear_param_store()
    memory.reset()
    _sync(device)
    t0 = time.perf_counter()
    ll = log_likelihood(
        model,
        test_x,
        num_samples=num_samples,
        batch_size=config.iw_batch_size,
        max_elements=config.iw_max_elements,
    )
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "num_samples": num_samples,
        "images": test_x.shape[0],
        "batch_size": config.iw_batch_size,
        "max_elements": config.iw_max_elements,
        "chunk_elements": (
            min(config.iw_max_elements, CPU_MAX_ELEMENTS)
            if device.type == "cpu"
            else config.iw_max_elements
        ),
        "seconds": round(seconds, 2),
        "images_per_second": round(test_x.shape[0] / seconds, 2),
        "log_likelihood": round(float(ll.mean()), 3),
        **memory.peak(),
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so a JSON file says where its numbers come from."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor()


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every requested measurement; returns the JSON-ready results (also written to
    ``config.out`` when set)."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, device=device, verbose=False)
    train_x = data.train_x if config.train_size is None else data.train_x[: config.train_size]
    test_x = data.test_x if config.test_size is None else data.test_x[: config.test_size]
    results: dict[str, Any] = {
        "config": asdict(config),
        "environment": environment(device),
        "memory_method": PeakMemory(device).method,
        "training": [],
        "log_likelihood": [],
    }
    log(f"benchmark on {device} ({torch.get_num_threads()} threads), {train_x.shape[0]} images")
    trained: VAE | None = None  # an MLP VAE trained by the library, for log p(x)
    for net in config.nets:
        for objective in config.objectives:
            row, model = time_training(net, objective, train_x, test_x, config, device, log)
            results["training"].append(row)
            log(_training_line(row))
            if net == "mlp" and trained is None:
                trained = model
    if config.iw_samples and trained is None:
        torch.manual_seed(config.seed)
        trained = build_model(NETWORKS["mlp"], tuple(train_x.shape[1:])).to(device)
        fit(
            trained,
            train_x,
            TrainConfig(
                epochs=1,
                batch_size=config.batch_size,
                lr=config.lr,
                objective=Objective.JIT_MEANFIELD.value,
                seed=config.seed,
                device=str(device),
            ),
            progress=False,
        )
    if config.iw_samples:
        xs = data.test_x if config.iw_images is None else data.test_x[: config.iw_images]
        trained.eval()
        for k in config.iw_samples:
            row = time_log_likelihood(trained, xs, k, config, device)
            results["log_likelihood"].append(row)
            log(
                f"log p(x), K={k}, {row['images']} images: {row['seconds']:.1f}s "
                f"({row['images_per_second']:.1f} images/s), mean {row['log_likelihood']:.2f} "
                f"nats, peak {row['peak_mib']:.0f} MiB ({row['above_start_mib']:+.0f} MiB)"
            )
    if config.out is not None:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {out}")
    log(markdown_table(results))
    return results


def _training_line(row: dict[str, Any]) -> str:
    lib, hand = row["library"], row["hand_written"]
    return (
        f"{row['net']:4s} {_label(row):13s} library {lib['seconds_per_epoch']:.2f}s/epoch "
        f"({lib['images_per_second']:.0f} img/s)  hand-written {hand['seconds_per_epoch']:.2f}"
        f"s/epoch ({hand['images_per_second']:.0f} img/s)  ratio {row['ratio']:.3f} (CPU time "
        f"{row['cpu_ratio']:.3f})  test ELBO "
        f"{row['library_test_elbo']:.2f} vs {row['hand_written_test_elbo']:.2f}"
        + (
            f" (hand-written from another seed: {row['seed_reference_test_elbo']:.2f})"
            if "seed_reference_test_elbo" in row
            else ""
        )
    )


def markdown_table(results: dict[str, Any]) -> str:
    """The README's performance table from a results dict."""
    lines: list[str] = []
    if results["training"]:
        lines += [
            "| net | objective | library s/epoch | hand-written s/epoch | ratio | ratio (CPU time) "
            "| library img/s | peak MiB (lib / hand) | test ELBO (lib / hand) | ELBO diff ± s.e. "
            "| seed-to-seed diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in results["training"]:
        lib, hand = row["library"], row["hand_written"]
        lines.append(
            f"| {row['net']} | {_label(row)} | {lib['seconds_per_epoch']:.2f} "
            f"| {hand['seconds_per_epoch']:.2f} | {row['ratio']:.3f} | {row['cpu_ratio']:.3f} "
            f"| {lib['images_per_second']:.0f} "
            f"| {lib['peak_mib']:.0f} / {hand['peak_mib']:.0f} "
            f"| {row['library_test_elbo']:.2f} / {row['hand_written_test_elbo']:.2f} "
            f"| {row['test_elbo_difference']:+.2f} ± {row['test_elbo_difference_stderr']:.2f} "
            f"| {_signed(row.get('seed_to_seed_difference'))} |"
        )
    if results["log_likelihood"]:
        lines += [
            *([""] if lines else []),
            "| log p(x) | images | seconds | images/s | peak MiB | above start MiB |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["log_likelihood"]:
            lines.append(
                f"| K={row['num_samples']} | {row['images']} | {row['seconds']:.1f} "
                f"| {row['images_per_second']:.1f} | {row['peak_mib']:.0f} "
                f"| {row['above_start_mib']:.0f} |"
            )
    return "\n".join(lines)


def _label(row: dict[str, Any]) -> str:
    """``auto → jit-trace`` for the default objective, else the objective's name."""
    objective, resolved = row["objective"], row.get("resolved_objective", row["objective"])
    return objective if objective == resolved else f"{objective} → {resolved}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


# ----------------------------------------------------------------------------- command line
def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


def _names(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def build_parser(prog: str = "ppl-vae benchmark") -> argparse.ArgumentParser:
    """Options of ``ppl-vae benchmark`` / ``experiments/benchmark.py``."""
    d = BenchConfig()
    p = argparse.ArgumentParser(
        prog=prog, description="Time the library's training against hand-written PyTorch."
    )
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--nets", type=_names, default=d.nets, help="comma-separated: mlp,conv")
    p.add_argument(
        "--objectives",
        type=_names,
        default=d.objectives,
        help=f"comma-separated, from {', '.join(o.value for o in Objective)}",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="timed epochs per loop")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed epochs first")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--train-size", type=int, default=None, help="first N training images only")
    p.add_argument("--test-size", type=int, default=None, help="first N test images only")
    p.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--iw-samples",
        type=_ints,
        default=d.iw_samples,
        help="K values for the log-likelihood timing, e.g. 1000,5000 ('' skips it)",
    )
    p.add_argument("--iw-images", type=int, default=None, help="first N test images (all)")
    p.add_argument("--iw-batch-size", type=int, default=d.iw_batch_size)
    p.add_argument("--iw-max-elements", type=int, default=d.iw_max_elements)
    p.add_argument(
        "--seed-reference",
        type=_names,
        default=d.seed_reference,
        help="nets for which an extra hand-written loop from seed+1 gives the seed-to-seed "
        "scatter of the test ELBO ('' skips it)",
    )
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "ppl-vae benchmark") -> int:
    """Parse ``argv`` into a :class:`BenchConfig`, run it, return an exit status."""
    args = build_parser(prog).parse_args(argv)
    config = BenchConfig(**vars(args))
    try:
        run_benchmark(config, log=lambda s: print(s, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
