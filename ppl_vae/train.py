"""One training path for every model: Pyro ``SVI`` over device-resident tensors.

:func:`fit` runs SVI epochs over a tensor that stays on the device (batches are index tensors, no
DataLoader), evaluates the test ELBO after each epoch, writes an atomic checkpoint after each good
epoch, and stops with :class:`~ppl_vae.errors.TrainingDivergedError` — naming epoch and step, and
leaving the last good checkpoint untouched — if the loss stops being finite.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import (
    ELBO,
    SVI,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from tqdm.auto import tqdm

from .checkpoint import (
    load_checkpoint,
    param_store_state,
    restore_param_store,
    save_checkpoint,
)
from .data import batches, binarize
from .errors import CheckpointError, TrainingDivergedError
from .evaluate import elbo as evaluate_elbo
from .model import VAE

__all__ = ["History", "Objective", "TrainConfig", "fit", "make_elbo", "resolve_device"]


class Objective(str, enum.Enum):
    """Which Pyro ELBO estimates the loss.

    ``trace``: Monte Carlo ELBO (``Trace_ELBO``), works for every prior and guide.
    ``meanfield``: analytic KL where Pyro knows it (``TraceMeanField_ELBO``), else Monte Carlo.
    ``jit-*``: the same, compiled with ``torch.jit`` by Pyro (one graph per batch shape).
    """

    TRACE = "trace"
    MEANFIELD = "meanfield"
    JIT_TRACE = "jit-trace"
    JIT_MEANFIELD = "jit-meanfield"


_ELBOS: dict[Objective, type[ELBO]] = {
    Objective.TRACE: Trace_ELBO,
    Objective.MEANFIELD: TraceMeanField_ELBO,
    Objective.JIT_TRACE: JitTrace_ELBO,
    Objective.JIT_MEANFIELD: JitTraceMeanField_ELBO,
}


def make_elbo(objective: Objective | str = Objective.TRACE, num_particles: int = 1) -> ELBO:
    """A Pyro ELBO; several particles are vectorised (one batched pass, not a Python loop)."""
    objective = Objective(objective)
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    kwargs: dict[str, Any] = {
        "num_particles": num_particles,
        "vectorize_particles": num_particles > 1,
        "max_plate_nesting": 1,
    }
    if objective.value.startswith("jit"):
        kwargs["ignore_jit_warnings"] = True
    return _ELBOS[objective](**kwargs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return dev


@dataclass
class TrainConfig:
    """How to train. Defaults are the ones the README's numbers were measured with."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    objective: str = Objective.TRACE.value
    num_particles: int = 1
    #: Weight of the KL term (β-VAE). With ``warmup_epochs`` > 0 it ramps linearly from
    #: ``beta / steps`` up to ``beta`` over that many epochs (KL warm-up, Sønderby et al. 2016).
    beta: float = 1.0
    warmup_epochs: float = 0.0
    #: Dynamic binarisation: a fresh Bernoulli draw of the training images every epoch.
    binarize: bool = False
    seed: int = 0
    device: str = "auto"
    #: Images per evaluation batch (test ELBO after every epoch).
    eval_batch_size: int = 1000

    def validate(self) -> None:
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        Objective(self.objective)  # raises on unknown names


@dataclass
class History:
    """Per-epoch record. ``train_loss`` is the β-weighted negative ELBO per image averaged over
    the epoch's steps (parameters change during the epoch); ``test_elbo`` is the ELBO per image
    on the test set (β = 1) after the epoch."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, train_loss: float, test_elbo: float, seconds: float) -> None:
        self.epoch.append(epoch)
        self.train_loss.append(train_loss)
        self.test_elbo.append(test_elbo)
        self.seconds.append(seconds)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> History:
        return cls(**{k: list(v) for k, v in d.items()})


#: Callback signature: ``callback(epoch, history, model)`` after each epoch.
Callback = Callable[[int, History, VAE], None]


def fit(
    model: VAE,
    train_x: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    test_x: torch.Tensor | None = None,
    corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
    callbacks: tuple[Callback, ...] = (),
) -> History:
    """Train ``model`` with ``SVI`` on ``train_x`` of shape ``(N, *image_shape)``.

    Args:
        config: optimisation settings (:class:`TrainConfig`).
        test_x: if given, the test ELBO is computed after each epoch.
        corruption: ``x -> x̃`` applied to each batch before the guide's encoder sees it (the
            denoising AE); the model still scores the clean ``x``.
        checkpoint_path: written atomically after every epoch whose loss stayed finite.
        resume: continue from ``checkpoint_path`` (weights, param store, optimiser, history).
        extra_state: JSON-like dict stored in the checkpoint (the CLI puts its config here).
    Returns:
        the :class:`History` of all epochs, resumed ones included.
    """
    config = config or TrainConfig()
    config.validate()
    device = resolve_device(config.device)
    model.check_data(train_x, "training data")
    if test_x is not None:
        model.check_data(test_x, "test data")
    model.to(device)
    train_x = train_x.to(device)
    test_x = None if test_x is None else test_x.to(device)

    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": config.lr})
    elbo = make_elbo(config.objective, config.num_particles)
    svi = SVI(model.model, model.guide, optim, elbo)
    history, start_epoch = History(), 0
    gen = torch.Generator(device=device).manual_seed(config.seed)

    if resume:
        if checkpoint_path is None or not Path(checkpoint_path).exists():
            raise CheckpointError(f"--resume given but there is no checkpoint at {checkpoint_path}")
        ckpt = load_checkpoint(checkpoint_path, map_location=device)
        try:
            model.load_state_dict(ckpt["model_state"])
        except RuntimeError as e:
            raise CheckpointError(
                f"{checkpoint_path} does not fit this model (different architecture?): {e}"
            ) from e
        restore_param_store(ckpt["param_store"])
        # Make the modules use the restored store tensors, so the optimiser updates what the
        # forward pass reads (pyro.module alone keeps the module's own tensors).
        for name, module in model.pyro_modules():
            pyro.module(name, module, update_module_params=True)
        optim.set_state(ckpt["optim_state"])
        history = History.from_dict(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        gen.set_state(ckpt["generator_state"].to(gen.get_state().device))
        torch.set_rng_state(ckpt["torch_rng_state"])

    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    warmup_steps = config.warmup_epochs * steps_per_epoch
    jit = config.objective.startswith("jit")
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        x_epoch = binarize(train_x, gen) if config.binarize else train_x
        total, seen = 0.0, 0
        bar = tqdm(
            batches(train_x, config.batch_size, shuffle=True, generator=gen),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for step, idx in enumerate(bar):
            x = x_epoch[idx]
            x_in = corruption(x) if corruption is not None else (x if jit else None)
            global_step = epoch * steps_per_epoch + step
            beta = config.beta
            if warmup_steps > 0:
                beta = config.beta * min(1.0, (global_step + 1) / warmup_steps)
            beta_t = torch.tensor(beta, device=device) if (jit or beta != 1.0) else None
            loss = svi.step(x, x_in, beta_t, num_data=n, batch_size=len(idx))
            if not math.isfinite(loss):
                where = f"epoch {epoch + 1}, step {step + 1}/{steps_per_epoch}"
                kept = (
                    f"the last good checkpoint {checkpoint_path} (after epoch {epoch}) is intact"
                    if checkpoint_path is not None and Path(checkpoint_path).exists()
                    else "no checkpoint had been written yet"
                )
                raise TrainingDivergedError(
                    f"training diverged: the loss became {loss} at {where}; {kept}. "
                    "Try a smaller learning rate or a likelihood with bounded variance.",
                    epoch=epoch + 1,
                    step=step + 1,
                )
            # loss / n is the per-image negative objective estimated from this batch.
            total += loss / n * len(idx)
            seen += len(idx)
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{loss / n:.2f}")
        bar.close()
        train_loss = total / max(seen, 1)
        test_elbo = float("nan")
        if test_x is not None:
            test_elbo = evaluate_elbo(model, test_x, batch_size=config.eval_batch_size)
        seconds = time.perf_counter() - t0
        history.append(epoch + 1, train_loss, test_elbo, seconds)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1:3d}/{config.epochs}  train loss {train_loss:9.3f}  "
                f"test ELBO {test_elbo:9.3f} nats/image  ({seconds:.1f}s)"
            )
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "param_store": param_store_state(),
                    "optim_state": optim.get_state(),
                    "history": history.to_dict(),
                    "epoch": epoch + 1,
                    "config": {"train": asdict(config), **(extra_state or {})},
                    "generator_state": gen.get_state().cpu(),
                    "torch_rng_state": torch.get_rng_state(),
                },
            )
        for cb in callbacks:
            cb(epoch + 1, history, model)
    return history
