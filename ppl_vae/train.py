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
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    SVI,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.util import torch_item
from pyro.optim import PyroOptim
from pyro.poutine.util import is_validation_enabled
from pyro.util import warn_if_nan
from torch import nn
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

__all__ = [
    "History",
    "MultiTensorAdam",
    "Objective",
    "TrainConfig",
    "fit",
    "make_elbo",
    "resolve_device",
    "resolve_objective",
]


class Objective(str, enum.Enum):
    """Which Pyro ELBO estimates the loss.

    ``auto`` (the default): ``jit-trace`` when it is known to be exact and fast, else ``trace``;
    see :func:`resolve_objective`.
    ``trace``: Monte Carlo ELBO (``Trace_ELBO``), works for every prior and guide.
    ``meanfield``: analytic KL where Pyro knows it (``TraceMeanField_ELBO``), else Monte Carlo.
    ``jit-*``: the same estimators, compiled with ``torch.jit`` by Pyro (one graph per batch
    shape): the model and guide run in Python only while a graph is traced, so a step costs about
    what a hand-written PyTorch step costs. Needs a model with static structure (every model this
    library builds has one); same loss on the same noise as the plain objective (tested).
    """

    AUTO = "auto"
    TRACE = "trace"
    MEANFIELD = "meanfield"
    JIT_TRACE = "jit-trace"
    JIT_MEANFIELD = "jit-meanfield"


def _rng_neutral_compile(call: Callable[[], Any], compiled: Callable[[], Any], args: tuple) -> Any:
    """Run ``call`` (a Pyro JIT ELBO method); if it compiled a graph, run it again from the
    random state it started with.

    Compiling runs the model and guide twice in Python (parameter capture, then
    ``torch.jit.trace``) before running the graph, so that step would draw three sets of noise
    instead of one. Replaying from the saved state makes a JIT objective consume the random
    stream exactly as the plain objective does: same seed, same noise, same loss.
    """
    fn = compiled()
    before = -1 if fn is None else len(fn.compiled)
    devices = sorted(
        {a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.is_cuda}
    )
    cpu_state = torch.get_rng_state()
    cuda_states = [torch.cuda.get_rng_state(d) for d in devices]
    out = call()
    fn = compiled()
    if fn is not None and len(fn.compiled) != before:
        del out
        torch.set_rng_state(cpu_state)
        for d, state in zip(devices, cuda_states):
            torch.cuda.set_rng_state(state, d)
        out = call()
    return out


class _JitTrace_ELBO(JitTrace_ELBO):
    """``JitTrace_ELBO`` whose compiling steps draw the same noise as every other step, and whose
    ``differentiable_loss`` has the gradient of ``Trace_ELBO``'s.

    (Pyro 1.9 returns ``loss + (surrogate - surrogate.detach())`` there, but under JIT ``loss``
    is a tensor with its own gradient, so the gradient came out twice. Training uses
    ``loss_and_grads``, which was right.)
    """

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        loss = warn_if_nan(loss.detach(), "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())

    def loss_and_surrogate_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parent = super().loss_and_surrogate_loss
        return _rng_neutral_compile(
            lambda: parent(model, guide, *args, **dict(kwargs)),
            lambda: getattr(self, "_loss_and_surrogate_loss", None),
            args,
        )


class _JitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that keeps its compiled loss between calls.

    Pyro 1.9's ``differentiable_loss`` tests the cache attribute ``_loss_and_surrogate_loss`` but
    stores the compiled function as ``_differentiable_loss``, so every step traces the model and
    guide again and compiles a new graph (about 4x slower than no JIT at all). Here the graph is
    compiled once per batch shape, and compiling steps draw the same noise as every other step.
    """

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return _rng_neutral_compile(
            lambda: self._compiled_loss(model, guide, args, dict(kwargs)),
            lambda: getattr(self, "_differentiable_loss", None),
            args,
        )

    def _compiled_loss(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        args: tuple,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return compiled(*args, **kwargs)


_ELBOS: dict[Objective, type[ELBO]] = {
    Objective.TRACE: Trace_ELBO,
    Objective.MEANFIELD: TraceMeanField_ELBO,
    Objective.JIT_TRACE: _JitTrace_ELBO,
    Objective.JIT_MEANFIELD: _JitTraceMeanField_ELBO,
}


def resolve_objective(
    objective: Objective | str, model: VAE, device: str | torch.device = "cpu"
) -> Objective:
    """The concrete objective ``objective`` stands for when training ``model`` on ``device``.

    ``auto`` becomes ``jit-trace`` — ``Trace_ELBO``, compiled — when the device is a CPU and the
    whole model is library code: encoder, decoder, prior, likelihood and guide family are this
    library's classes, holding only functions of torch, Pyro or this library (a likelihood's
    ``family`` and ``mean_fn``, say). Otherwise it becomes ``trace``. A compiled graph replays
    the operations the model and guide ran while it was traced, so it is exact only for code
    whose control flow does not depend on the values: true of the library's parts (same loss
    and gradients as ``trace`` on the same noise, tested), unknown for a user's own code, which
    therefore runs in plain Python. On CUDA the JIT objectives are expected to work (their CUDA
    tests are written) but have not been run yet — no GPU behind the README's numbers — so
    ``auto`` keeps the plain path there. Other names are returned unchanged.
    """
    objective = Objective(objective)
    if objective is not Objective.AUTO:
        return objective
    parts = (model.encoder, model.decoder, model.prior, model.likelihood, model.guide_family)
    # the model and guide SVI runs must be the library's methods, not replaced or overridden ones
    own_program = _library_code(type(model)) and not {"model", "guide"} & set(vars(model))
    cpu = torch.device(device).type == "cpu"
    jit = cpu and own_program and all(map(_library_part, parts))
    return Objective.JIT_TRACE if jit else Objective.TRACE


_LIBRARY_MODULES = (f"{__package__}.", "torch.", "pyro.")
#: torch layers whose forward is a fixed function of inputs and parameters (no running buffers
#: such as BatchNorm's, no train/eval switch such as Dropout's): safe to replay from a graph.
_STATELESS_TORCH_LAYERS = (
    "torch.nn.modules.linear",
    "torch.nn.modules.conv",
    "torch.nn.modules.activation",
    "torch.nn.modules.flatten",
    "torch.nn.modules.container",
)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _library_part(part: object) -> bool:
    """Library code through and through: the part — and, for a module, each of its sub-modules —
    is a class of this library or a stateless torch layer, with no hooks, holding only library,
    torch or Pyro functions (or modules that pass the same test)."""
    if not isinstance(part, nn.Module):
        return type(part).__module__.startswith(f"{__package__}.")
    if any(getattr(nn.modules.module, name, None) for name in _GLOBAL_HOOKS):
        return False  # hooks registered for every module run only while a graph is traced
    for piece in part.modules():
        cls = type(piece).__module__
        if not (cls.startswith(f"{__package__}.") or cls in _STATELESS_TORCH_LAYERS):
            return False
        if any(getattr(piece, name, None) for name in _HOOKS):
            return False
        held = [v for v in vars(piece).values() if callable(v) and not isinstance(v, nn.Module)]
        held += [v for v in getattr(piece, "_params", {}).values() if callable(v)]
        for f in held:
            if isinstance(f, nn.Module) and not _library_part(f):
                return False
            if not isinstance(f, nn.Module) and not _library_code(f):
                return False
    return True


def _library_code(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module in ("torch", "pyro") or module.startswith(_LIBRARY_MODULES)


def make_elbo(objective: Objective | str = Objective.TRACE, num_particles: int = 1) -> ELBO:
    """A Pyro ELBO; several particles are vectorised (one batched pass, not a Python loop)."""
    objective = Objective(objective)
    if objective is Objective.AUTO:
        raise ValueError("'auto' depends on the model and device: call resolve_objective first")
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


class MultiTensorAdam(PyroOptim):
    """``pyro.optim.Adam`` whose update is applied by one multi-tensor torch optimizer.

    ``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter and steps them one by one in
    a Python loop. This keeps a single ``torch.optim.Adam`` over every parameter SVI hands it and
    steps them all with one fused kernel call (CPU and CUDA; ``foreach`` elsewhere). The update
    rule and hyper-parameters are Adam's, unchanged, so the trajectory matches the per-parameter
    optimisers to float rounding (tested). :meth:`get_state` and :meth:`set_state` use
    ``PyroOptim``'s format — one single-parameter Adam state dict per param-store name — so
    checkpoints written with either optimiser resume with the other.
    """

    def __init__(self, optim_args: dict[str, Any]) -> None:
        super().__init__(torch.optim.Adam, dict(optim_args))
        self._optim: torch.optim.Adam | None = None
        self._known: set[torch.Tensor] = set()

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        new = [p for p in params if p not in self._known]
        if new:
            self._add_params(new)
        if self._optim is not None:
            self._optim.step(*args, **kwargs)

    def _add_params(self, new: list[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        # sorted by name: the order (and so the saved state) does not depend on set iteration
        new = [p for _, p in sorted(((store.param_name(p), p) for p in new), key=_first)]
        if self._optim is None:
            self._optim = _make_adam(new, self.pt_optim_args)
        else:
            self._optim.add_param_group({"params": new})
        self._known.update(new)
        waiting = {
            i: self._state_waiting_to_be_consumed.pop(name)
            for i, name in self._indexed_names()
            if name in self._state_waiting_to_be_consumed
        }
        if waiting:
            state = self._optim.state_dict()
            for i, saved in waiting.items():
                per_param = saved.get("state", {})
                if per_param:
                    state["state"][i] = next(iter(per_param.values()))
            self._optim.load_state_dict(state)  # casts and moves the tensors like torch does

    def _indexed_names(self) -> list[tuple[int, str]]:
        assert self._optim is not None
        store = pyro.get_param_store()
        params = [p for group in self._optim.param_groups for p in group["params"]]
        return [(i, store.param_name(p)) for i, p in enumerate(params)]

    def get_state(self) -> dict[str, Any]:
        """``{param name: single-parameter Adam state dict}``, as ``PyroOptim.get_state``."""
        if self._optim is None:
            return dict(self._state_waiting_to_be_consumed)
        state = self._optim.state_dict()
        groups = {i: g for g in state["param_groups"] for i in g["params"]}
        out = {}
        for i, name in self._indexed_names():
            hyper = {k: v for k, v in groups[i].items() if k != "params"}
            out[name] = {
                "state": {0: state["state"][i]} if i in state["state"] else {},
                "param_groups": [{**hyper, "params": [0]}],
            }
        return out


def _first(item: tuple[str, torch.Tensor]) -> str:
    return item[0]


def _make_adam(params: list[torch.Tensor], optim_args: dict[str, Any]) -> torch.optim.Adam:
    fusable = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
        for p in params
    )
    if fusable and "fused" not in optim_args and "foreach" not in optim_args:
        try:
            return torch.optim.Adam(params, **optim_args, fused=True)
        except RuntimeError:  # older torch: no fused Adam on this device
            pass
    return torch.optim.Adam(params, **{"foreach": True, **optim_args})


class _SVI(SVI):
    """``pyro.infer.SVI`` whose step releases the gradients instead of zeroing them.

    ``SVI.step`` ends by replacing every gradient with a fresh tensor of zeros, which the next
    backward pass then adds to. Setting them to ``None`` lets that pass write the gradients
    directly: the same numbers with two fewer passes over the parameters' memory (what
    ``torch.optim.Optimizer.zero_grad`` does by default). Everything else is ``SVI.step``.
    """

    def step(self, *args: Any, **kwargs: Any) -> float:
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        self.optim(params)
        for p in params:
            p.grad = None
        return torch_item(loss)


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
    #: ``auto``: compiled ``Trace_ELBO`` for the library's own models on CPU, plain otherwise
    #: (:func:`resolve_objective`); or name one (:class:`Objective`).
    objective: str = Objective.AUTO.value
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
    #: One multi-tensor Adam over all parameters (:class:`MultiTensorAdam`): the same update as
    #: ``pyro.optim.Adam``'s one optimiser per parameter, in fewer Python calls. ``False`` uses
    #: ``pyro.optim.Adam``. Checkpoints resume with either.
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
    optim = (
        MultiTensorAdam({"lr": config.lr})
        if config.multi_tensor_adam
        else pyro.optim.Adam({"lr": config.lr})
    )
    objective = resolve_objective(config.objective, model, device)
    elbo = make_elbo(objective, config.num_particles)
    svi = _SVI(model.model, model.guide, optim, elbo)
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
        torch.set_rng_state(ckpt["torch_rng_state"].cpu())  # map_location may have moved it
        _restore_device_rng(ckpt, gen, corruption, device, checkpoint_path)
        _warn_if_objective_changed(ckpt, config, objective, checkpoint_path)

    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    warmup_steps = config.warmup_epochs * steps_per_epoch
    # β enters as a tensor (a JIT graph input) only when it is not 1 throughout: a JIT graph
    # cannot switch between a tensor and None, and β = 1 needs no scaling ops at all.
    weighted = config.beta != 1.0 or warmup_steps > 0
    jit = objective.value.startswith("jit")
    validation, first_step = is_validation_enabled(), True
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
            args = (x, x_in, torch.tensor(beta, device=device)) if weighted else (x, x_in)
            validate = validation and (config.validate_every_step or first_step)
            with pyro.validation_enabled(validate), warnings.catch_warnings():
                # torch >= 2.9 deprecates torch.jit.trace, which the jit-* objectives use
                warnings.filterwarnings("ignore", ".*torch.jit.trace", FutureWarning)
                loss = svi.step(*args, num_data=n, batch_size=len(idx))
            first_step = False
            if not math.isfinite(loss):
                where = f"epoch {epoch + 1}, step {step + 1}/{steps_per_epoch}"
                raise TrainingDivergedError(
                    f"training diverged: the loss became {loss} at {where}; "
                    f"{_kept(checkpoint_path, epoch)}. "
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
        # svi.step reports the loss *before* its update: a non-finite gradient on the last step
        # would only show in the parameters. Never checkpoint those.
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDivergedError(
                f"training diverged: parameters {bad[:3]} became NaN/Inf during epoch {epoch + 1}"
                f" (the losses stayed finite); {_kept(checkpoint_path, epoch)}.",
                epoch=epoch + 1,
                step=steps_per_epoch,
            )
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
                    "config": {
                        "train": {**asdict(config), "resolved_objective": objective.value},
                        **(extra_state or {}),
                    },
                    "generator_state": gen.get_state().cpu(),
                    "torch_rng_state": torch.get_rng_state(),
                    # the noise of z ~ q on a GPU, and the DAE's corruption draws
                    "cuda_rng_state": (
                        torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None
                    ),
                    "corruption_state": (
                        corruption.get_state() if hasattr(corruption, "get_state") else None
                    ),
                },
            )
        for cb in callbacks:
            cb(epoch + 1, history, model)
    return history


def _restore_device_rng(
    ckpt: dict[str, Any],
    gen: torch.Generator,
    corruption: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
    checkpoint_path: str | Path,
) -> None:
    """Continue the batch order, the GPU noise and the corruption draws where the checkpoint
    left them. A generator's state only fits a generator of the same device type: resumed on
    another kind of device they restart (from ``seed``), with a warning — the run goes on, but
    is no longer the one an uninterrupted run would have been."""
    restarted = []
    try:
        gen.set_state(ckpt["generator_state"].to(gen.get_state().device))
    except RuntimeError:
        restarted.append("the batch order")
    if device.type == "cuda" and ckpt.get("cuda_rng_state") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng_state"].cpu(), device)
    saved = ckpt.get("corruption_state") or {}
    if saved and hasattr(corruption, "set_state"):
        here = {
            k: v for k, v in saved.items() if torch.device(k.rsplit("|", 1)[-1]).type == device.type
        }
        corruption.set_state(here)
        if len(here) < len(saved):
            restarted.append("the corruption draws")
    if restarted:
        warnings.warn(
            f"{checkpoint_path} was written on another kind of device: {' and '.join(restarted)} "
            "restart from the seed, so this run will differ from an uninterrupted one",
            stacklevel=3,
        )


def _warn_if_objective_changed(
    ckpt: dict[str, Any], config: TrainConfig, objective: Objective, checkpoint_path: str | Path
) -> None:
    """Resuming with another estimator than the one that wrote the checkpoint is allowed (the
    compiled and plain ELBOs are the same objective) but is not bit-identical: say so."""
    saved = ckpt.get("config", {}).get("train", {})
    before = saved.get("resolved_objective", saved.get("objective"))
    if before is not None and before not in (objective.value, Objective.AUTO.value):
        warnings.warn(
            f"{checkpoint_path} was trained with objective {before!r}; continuing with "
            f"{objective.value!r} (pass objective={before!r} to continue exactly)",
            stacklevel=3,
        )


def _kept(checkpoint_path: str | Path | None, epoch: int) -> str:
    """What is left on disk after a divergence in (0-based) ``epoch``."""
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        return f"the last good checkpoint {checkpoint_path} (after epoch {epoch}) is intact"
    return "no checkpoint had been written yet"
