"""One training path for every program: Pyro ``SVI`` over device-resident tensors.

:func:`fit` runs SVI epochs over a tensor that stays on the device (batches are index tensors, no
DataLoader), evaluates the test ELBO after each epoch, writes an atomic checkpoint after each good
epoch, and stops with :class:`~ppl_vae.errors.TrainingDivergedError` — naming epoch and step, and
leaving the last good checkpoint untouched — if the loss stops being finite. What it accepts — any
Pyro program, objective and optimiser — is described in :mod:`ppl_vae.program`,
:mod:`ppl_vae.objectives` and :mod:`ppl_vae.optim`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import PyroOptim
from pyro.poutine.util import is_validation_enabled
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import distributed
from .batching import TrainingBatches
from .checkpoint import load_checkpoint, restore_progress, restore_weights, save_training_state
from .errors import CheckpointError, ProgramError, TrainingDivergedError
from .evaluate import sharded_elbo
from .model import reset_parameters
from .objectives import (
    AUTO,
    OBJECTIVES,
    check_objective,
    make_elbo,
    objective_name,
    resolve_objective,
)
from .optim import SVIStep, make_optim, step_schedulers
from .program import Program, ProgramInfo, StepArgs, as_program, inspect_program

__all__ = ["History", "TrainConfig", "fit", "resolve_device"]


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
    #: Learning rate of the default optimiser (ignored when ``fit`` is given ``optim=``).
    lr: float = 1e-3
    #: A name of :data:`~ppl_vae.objectives.OBJECTIVES` or ``auto`` (ignored when ``fit`` is
    #: given ``loss=``): see :func:`~ppl_vae.objectives.resolve_objective`.
    objective: str = AUTO
    num_particles: int = 1
    #: Weight of the latent sites (β-VAE). With ``warmup_epochs`` > 0 it ramps linearly from
    #: ``beta / steps`` up to ``beta`` over that many epochs (KL warm-up, Sønderby et al. 2016).
    beta: float = 1.0
    warmup_epochs: float = 0.0
    #: Dynamic binarisation: a fresh Bernoulli draw of the training images every time they are used.
    binarize: bool = False
    #: Uniform dequantization of 8-bit images, fresh every time they are used: (k + u)/256, the
    #: data continuous likelihoods are scored on (:func:`~ppl_vae.data.dequantize`).
    dequantize: bool = False
    #: Stream batches through a ``DataLoader`` even when given a tensor (a ``Dataset`` always is).
    stream: bool = False
    #: ``DataLoader`` worker processes when streaming (0: read in the training process).
    num_workers: int = 0
    #: ``float32``, or ``bf16``: bf16 autocast of the forward passes on CUDA (mixed precision).
    precision: str = "float32"
    #: Seeds the batch order, the noise and lazily created ``pyro.param`` values (and, with
    #: ``fit(restart=True)`` or ``build_model(seed=…)``, the initial weights).
    seed: int = 0
    device: str = "auto"
    #: Images per evaluation batch (test ELBO after every epoch).
    eval_batch_size: int = 1000
    #: One multi-tensor Adam over all parameters (:class:`~ppl_vae.optim.MultiTensorAdam`): the
    #: same update as ``pyro.optim.Adam``'s one optimiser per parameter, in fewer Python calls.
    multi_tensor_adam: bool = True
    #: Pyro's validation (site shapes, distribution arguments and supports, model/guide
    #: agreement) runs on the first step if it is enabled (Pyro's default) and is then switched
    #: off: the program is the same at every step and the data were checked before training.
    #: ``True`` keeps it on for every step (about 10% more time per step without JIT).
    validate_every_step: bool = False

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
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be 'float32' or 'bf16', got {self.precision!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.objective != AUTO and self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; choose one of {[AUTO, *sorted(OBJECTIVES)]}"
            )


@dataclass
class History:
    """Per-epoch record. ``train_loss`` is the β-weighted negative objective per data point
    averaged over the epoch's steps (parameters change during the epoch); ``test_elbo`` is the
    ELBO per data point on the test set (β = 1) after the epoch."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: The objective that trained the epochs (what ``auto`` resolved to, or the ELBO's class).
    objective: str | None = None

    def append(self, epoch: int, train_loss: float, test_elbo: float, seconds: float) -> None:
        self.epoch.append(epoch)
        self.train_loss.append(train_loss)
        self.test_elbo.append(test_elbo)
        self.seconds.append(seconds)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in d.items()})


#: Callback signature: ``callback(epoch, history, program)`` after each epoch.
Callback = Callable[[int, History, Any], None]


def fit(
    program: Any,
    train_x: torch.Tensor | Dataset,
    config: TrainConfig | None = None,
    *,
    loss: ELBO | str | None = None,
    optim: PyroOptim | None = None,
    test_x: torch.Tensor | Dataset | None = None,
    corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    restart: bool = False,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
    callbacks: tuple[Callback, ...] = (),
) -> History:
    """Train a Pyro program with ``SVI`` on ``train_x`` (first dimension: data points).

    Args:
        program: a :class:`~ppl_vae.model.VAE`, an object with ``model``/``guide`` methods or a
            ``(model, guide)`` pair (:mod:`ppl_vae.program` says how they are called).
        train_x: a tensor (kept on the device and indexed: the fast path) or a ``Dataset``
            (streamed through a ``DataLoader``; :mod:`ppl_vae.batching`), same batches either way.
        config: optimisation settings (:class:`TrainConfig`).
        loss: a ``pyro.infer.ELBO`` or a registered name (default: ``config.objective``).
        optim: a ``pyro.optim.PyroOptim``, schedulers included (default: Adam, ``config.lr``).
        test_x: if given, the test ELBO is computed after each epoch.
        corruption: ``x -> x̃`` applied to each batch before the guide's encoder sees it (the
            denoising AE; the program must take ``x_in``); the model still scores the clean ``x``.
        checkpoint_path: written atomically after every epoch whose loss stayed finite.
        resume: continue from ``checkpoint_path`` (parameters, optimiser, history, random streams).
        restart: start over instead of continuing: the program's parameters leave Pyro's param
            store (``pyro.param`` values restart from their initial values) and the owner
            module's weights are re-initialised from ``config.seed``. Without it a second ``fit``
            continues from the current parameters.
        extra_state: JSON-like dict stored in the checkpoint (the CLI puts its config here).
    Returns:
        the :class:`History` of all epochs, resumed ones included. Inside a ``torch.distributed``
        process group every rank trains its share of each global batch (:mod:`ppl_vae.distributed`).
    """
    config = config or TrainConfig()
    config.validate()
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError("precision='bf16' is bf16 autocast on CUDA; on this CPU use 'float32'")
    prog = as_program(program)
    data = TrainingBatches(
        train_x,
        batch_size=config.batch_size,
        seed=config.seed,
        device=device,
        check=prog.check_data,
        stream=config.stream,
        num_workers=config.num_workers,
        binarize=config.binarize,
        dequantize=config.dequantize,
    )
    if test_x is not None and isinstance(test_x, torch.Tensor):
        prog.check_data(test_x, "test data")
        test_x = test_x.to(device)
    if prog.owner is not None:
        prog.owner.to(device)
    ckpt = _load_for_resume(checkpoint_path, device) if resume else None

    rank, world = distributed.rank(), distributed.world_size()
    pyro.set_rng_seed(config.seed + rank)  # the ranks draw different noise
    gen = torch.Generator(device=device).manual_seed(config.seed + rank)
    n = data.n
    step = StepArgs(
        prog,
        n,
        device,
        corruption=corruption,
        beta=config.beta,
        warmup_steps=config.warmup_epochs * math.ceil(n / config.batch_size),
    )
    # one clean batch to check the program (the corruption draws only for training steps)
    args, kwargs = step(data.first_batch(), 0, corrupt=False)
    info = _prepare(prog, args, kwargs, n, config.seed, ckpt=ckpt, restart=restart)
    distributed.broadcast_(_state_tensors(prog, info))  # one set of initial values for all ranks
    elbo = _make_objective(loss, prog, device, info, config, n)
    # what the checkpoint records of this run's settings (and what a resume compares with)
    train_record = {
        **asdict(config),
        "resolved_objective": objective_name(elbo),
        "world_size": world,
        "num_data": n,
        # a user's optimiser carries its own learning rate; config.lr is not used
        **({"lr": None} if optim is not None else {}),
    }
    optim = make_optim(optim, config.lr, config.multi_tensor_adam)
    model = prog.model
    if isinstance(elbo, TraceEnum_ELBO) and info.model_only:
        # sum out the discrete latents the guide does not sample (sites the user marked keep
        # their own setting), as the evaluation does
        model = config_enumerate(model, default="parallel")
    svi = SVIStep(model, prog.guide, optim, elbo)
    history, start_epoch = History(), 0
    if ckpt is not None:
        saved_history, start_epoch, before = restore_progress(ckpt, optim, gen, corruption, device)
        history = History.from_dict(saved_history)
        if distributed.is_main():  # one warning, not one per rank
            _warn_if_objective_changed(before, objective_name(elbo), checkpoint_path)
            _warn_if_settings_changed(ckpt, train_record, checkpoint_path)
        if world > 1 or ckpt["config"]["train"].get("world_size", 1) > 1:
            # the saved streams were rank 0's: each rank starts its own, from seed and epoch
            pyro.set_rng_seed(_stream_seed(config.seed, start_epoch, rank))
            gen.manual_seed(_stream_seed(config.seed, start_epoch, rank))
    history.objective = objective_name(elbo)

    main = distributed.is_main()
    validation = is_validation_enabled()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.precision == "bf16")
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(
            data.epoch(epoch, gen),
            total=len(data.sampler),
            disable=not (progress and main),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            unit="batch",
        )
        for i, (xb, share) in enumerate(bar):
            validate = validation and (config.validate_every_step or not svi.checked)
            with pyro.validation_enabled(validate), warnings.catch_warnings(), autocast:
                # torch >= 2.9 deprecates torch.jit.trace, which the jit-* objectives use
                warnings.filterwarnings("ignore", ".*torch.jit.trace", FutureWarning)
                args, kwargs = step(xb, epoch * len(data.sampler) + i)
                svi.weight = share if world > 1 else None
                batch_loss = svi.step(*args, **kwargs)
            if not math.isfinite(batch_loss):
                raise TrainingDivergedError(
                    f"training diverged: the loss became {batch_loss} at epoch {epoch + 1}, step "
                    f"{i + 1}/{len(data.sampler)}; {_kept(checkpoint_path, epoch)}. Try a smaller "
                    "learning rate or a likelihood with bounded variance.",
                    epoch=epoch + 1,
                    step=i + 1,
                )
            total += batch_loss / n * data.global_sizes[i]  # loss / n: this batch's estimate
            if progress and main and i % 20 == 0:
                bar.set_postfix(loss=f"{batch_loss / n:.2f}")
        bar.close()
        _refuse_non_finite_parameters(info, epoch, len(data.sampler), checkpoint_path)
        train_loss = total / sum(data.global_sizes)
        step_schedulers(optim, train_loss)
        test_elbo = (
            float("nan")
            if test_x is None
            else sharded_elbo(prog, test_x, batch_size=config.eval_batch_size)
        )
        seconds = time.perf_counter() - t0
        history.append(epoch + 1, train_loss, test_elbo, seconds)
        if progress and main:
            tqdm.write(
                f"epoch {epoch + 1:3d}/{config.epochs}  train loss {train_loss:9.3f}  "
                f"test ELBO {test_elbo:9.3f} nats/point  ({seconds:.1f}s)"
            )
        if checkpoint_path is not None and main:
            save_training_state(
                checkpoint_path,
                owner=prog.owner,
                param_names=info.param_names,
                optim=optim,
                history=history.to_dict(),
                epoch=epoch + 1,
                config={"train": train_record, **(extra_state or {})},
                generator=gen,
                corruption=corruption,
                device=device,
            )
        distributed.barrier()
        for cb in callbacks:
            cb(epoch + 1, history, program)
    return history


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _state_tensors(prog: Program, info: ProgramInfo) -> list[torch.Tensor]:
    """Every tensor that must agree across ranks: the program's parameters and buffers."""
    store = pyro.get_param_store()
    tensors = [store._params[name] for name in info.param_names]
    if prog.owner is not None:
        tensors += list(prog.owner.buffers())
    return tensors


def _prepare(
    prog: Program,
    args: tuple,
    kwargs: dict,
    n: int,
    seed: int,
    *,
    ckpt: dict[str, Any] | None,
    restart: bool,
) -> ProgramInfo:
    """Bind and check the program's parameters before the first step (see inspect_program):
    from the checkpoint when resuming, from scratch with ``restart``, else as they are."""
    if ckpt is not None:
        saved = restore_weights(ckpt, prog.owner)
        info = inspect_program(prog, args, kwargs, num_data=n, bind_from_store=True)
        if saved != info.param_names:
            raise CheckpointError(
                f"the checkpoint holds parameters {saved[:4]}... but this program uses "
                f"{info.param_names[:4]}...: it was written by another program"
            )
        return info
    info = inspect_program(prog, args, kwargs, num_data=n, bind_from_store=False)
    if restart:
        if info.unowned_module_params:
            raise ProgramError(
                f"restart=True cannot re-initialise {info.unowned_module_params[:3]}...: they "
                "belong to networks that plain functions register with pyro.module, which fit "
                "cannot see. Build new networks instead, or give model and guide as methods of "
                "an nn.Module that holds them (then restart resets them from the seed)"
            )
        store = pyro.get_param_store()
        for name in info.param_names:
            del store[name]
        if prog.owner is not None:
            reset_parameters(prog.owner, seed)
        info = inspect_program(prog, args, kwargs, num_data=n, bind_from_store=False)
    return info


def _make_objective(
    loss: ELBO | str | None,
    prog: Program,
    device: torch.device,
    info: ProgramInfo,
    config: TrainConfig,
    n: int,
) -> ELBO:
    asked = loss if loss is not None else config.objective
    chosen = resolve_objective(asked, prog, device, info)
    compiled = (
        chosen.startswith("jit-") if isinstance(chosen, str) else "Jit" in type(chosen).__name__
    )
    if config.precision == "bf16" and compiled:
        # a traced graph is not known to replay autocast faithfully: bf16 runs in plain Python
        if asked != "auto":
            raise ValueError(f"precision='bf16' runs with plain objectives; {chosen!r} is compiled")
        chosen = "trace"
    elbo = make_elbo(chosen, config.num_particles, max_plate_nesting=info.max_plate_nesting)
    weighted = config.beta != 1.0 or config.warmup_epochs > 0
    check_objective(elbo, info, subsampled=config.batch_size < n, weighted=weighted)
    return elbo


def _load_for_resume(checkpoint_path: str | Path | None, device: torch.device) -> dict[str, Any]:
    if checkpoint_path is None or not Path(checkpoint_path).exists():
        raise CheckpointError(f"resume requested but there is no checkpoint at {checkpoint_path}")
    return load_checkpoint(checkpoint_path, map_location=device)


def _refuse_non_finite_parameters(
    info: ProgramInfo, epoch: int, steps: int, checkpoint_path: str | Path | None
) -> None:
    """``svi.step`` reports the loss *before* its update: a non-finite gradient on the last step
    would only show in the parameters. Never checkpoint those."""
    store = pyro.get_param_store()
    bad = [n for n in info.param_names if not torch.isfinite(store[n]).all()]
    if bad:
        raise TrainingDivergedError(
            f"training diverged: parameters {bad[:3]} became NaN/Inf during epoch {epoch + 1} "
            f"(the losses stayed finite); {_kept(checkpoint_path, epoch)}.",
            epoch=epoch + 1,
            step=steps,
        )


def _warn_if_objective_changed(
    before: str | None, objective: str, checkpoint_path: str | Path | None
) -> None:
    """Resuming with another estimator than the one that wrote the checkpoint is allowed (the
    compiled and plain ELBOs are the same objective) but is not bit-identical: say so."""
    if before is not None and before not in (objective, AUTO):
        warnings.warn(
            f"{checkpoint_path} was trained with objective {before!r}; continuing with "
            f"{objective!r} (pass objective={before!r} to continue exactly)",
            stacklevel=3,
        )


#: Settings that change what a resumed run computes (the data size too): a resume that changes
#: them continues, but it is no longer the run the checkpoint started, so fit says so.
_RUN_DEFINING = (
    "seed",
    "batch_size",
    "lr",
    "num_particles",
    "beta",
    "warmup_epochs",
    "binarize",
    "dequantize",
    "precision",
)


def _warn_if_settings_changed(
    ckpt: dict[str, Any], now: dict[str, Any], path: str | Path | None
) -> None:
    """Resuming with other data or other optimisation settings is allowed (fine-tuning on more
    data, a smaller step) but is a different run from the one the checkpoint started: name what
    changed between the checkpoint's record of its settings and ``now``, this run's record,
    instead of continuing silently. A run with a user's optimiser records ``lr=None`` (the
    optimiser carries its own): ``lr`` is not compared when the resumed run brings its own
    optimiser, and a switch back to the default Adam is named. Settings a checkpoint predates
    are not compared."""
    saved = ckpt.get("config", {}).get("train", {})

    def show(k: str, v: Any) -> str:
        return "a user's optimiser" if k == "lr" and v is None else repr(v)

    changed = [
        f"{k}={show(k, saved[k])} -> {show(k, now[k])}"
        for k in (*_RUN_DEFINING, "num_data")
        if k in saved and saved[k] != now[k] and not (k == "lr" and now[k] is None)
    ]
    if changed:
        warnings.warn(
            f"{path} was trained with other settings ({', '.join(changed)}); continuing with "
            "the new ones: the result is not the run the checkpoint started (pass the same "
            "settings and data to continue exactly)",
            stacklevel=3,
        )


def _kept(checkpoint_path: str | Path | None, epoch: int) -> str:
    """What is left on disk after a divergence in (0-based) ``epoch``."""
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        return f"the last good checkpoint {checkpoint_path} (after epoch {epoch}) is intact"
    return "no checkpoint had been written yet"
