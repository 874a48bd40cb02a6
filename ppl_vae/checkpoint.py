"""The checkpoint format, in one place: what a training run saves, how it is read back.

A checkpoint holds the program's Pyro parameters (by param-store name), the state of the module
that owns the program (buffers included), the optimiser's and any scheduler's state, the history,
the configuration, every random stream a resumed run needs to continue exactly (torch's CPU and
CUDA generators, the batch order, the corruption's draws) and, for models built from registry
names, the model's recipe, so :func:`load_model` can rebuild it.

Written atomically (temporary file, fsync, rename) so a crash or a NaN never leaves a half-written
file where the last good one was, and read with ``torch.load(weights_only=True)`` so loading a
checkpoint cannot run code: everything inside is tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.distributions import constraints
from torch import nn

from .errors import CheckpointError

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "load_model",
    "model_recipe",
    "param_store_state",
    "restore_param_store",
    "restore_progress",
    "restore_rng",
    "restore_weights",
    "rng_state",
    "save_checkpoint",
    "save_training_state",
]

FORMAT = "ppl_vae-checkpoint"
VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"

# Pyro's param store keeps constraint *objects*; store them by name so weights_only loading works.
_CONSTRAINTS = {
    name: c
    for name in dir(constraints)
    if isinstance(c := getattr(constraints, name), constraints.Constraint)
}


def _constraint_name(c: constraints.Constraint) -> str:
    if isinstance(c, type(constraints.real)):
        return "real"
    for name, known in _CONSTRAINTS.items():
        if c is known:
            return name
    raise CheckpointError(
        f"cannot save a pyro.param with constraint {c!r}: only the named constraints of "
        "pyro.distributions.constraints (real, positive, simplex, ...) can be checkpointed"
    )


def param_store_state(names: list[str] | None = None) -> dict[str, Any]:
    """The param store's entries ``names`` (all if None) as unconstrained tensors and constraint
    names. Only a program's own parameters go into its checkpoint, not another model's."""
    state = pyro.get_param_store().get_state()
    keep = state["params"] if names is None else names
    return {
        "params": {k: state["params"][k].detach().clone() for k in keep},
        "constraints": {k: _constraint_name(state["constraints"][k]) for k in keep},
    }


def restore_param_store(state: dict[str, Any]) -> None:
    """Put the entries of :func:`param_store_state` back, replacing those of the same names."""
    store = pyro.get_param_store()
    for name in state["params"]:
        if name in store:
            del store[name]
    store.set_state(
        {
            "params": {k: torch.nn.Parameter(v) for k, v in state["params"].items()},
            "constraints": {k: _CONSTRAINTS[v] for k, v in state["constraints"].items()},
        }
    )


def rng_state(device: torch.device, generator: torch.Generator, corruption: Any) -> dict[str, Any]:
    """Every random stream of a training run: torch's (CPU, and CUDA on a GPU — the noise of
    z ~ q), the batch-order generator's and the corruption's own."""
    return {
        "generator_state": generator.get_state().cpu(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": (
            torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None
        ),
        "corruption_state": corruption.get_state() if hasattr(corruption, "get_state") else None,
    }


def restore_rng(
    ckpt: dict[str, Any], generator: torch.Generator, corruption: Any, device: torch.device
) -> None:
    """Continue the streams of :func:`rng_state`. A generator's state only fits a generator of
    the same device type: resumed on another kind of device, the batch order and the corruption
    draws restart from the seed, with a warning — the run goes on, but is no longer the one an
    uninterrupted run would have been."""
    torch.set_rng_state(ckpt["torch_rng_state"].cpu())  # map_location may have moved it
    restarted = []
    try:
        generator.set_state(ckpt["generator_state"].to(generator.get_state().device))
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
            f"the checkpoint was written on another kind of device: {' and '.join(restarted)} "
            "restart from the seed, so this run will differ from an uninterrupted one",
            stacklevel=3,
        )


def model_recipe(module: nn.Module | None) -> dict[str, Any] | None:
    """How to rebuild a model made by :func:`~ppl_vae.model.build_model` (config and data shape),
    or None for other programs."""
    config = getattr(module, "config", None)
    shape = getattr(module, "image_shape", None)
    if config is None or shape is None:
        return None
    return {"config": asdict(config), "image_shape": list(shape)}


def save_training_state(
    path: str | Path,
    *,
    owner: nn.Module | None,
    param_names: list[str],
    optim: Any,
    history: dict[str, list],
    epoch: int,
    config: dict[str, Any],
    generator: torch.Generator,
    corruption: Any,
    device: torch.device,
) -> Path:
    """Write what a run needs to resume exactly after ``epoch`` (see the module docstring)."""
    return save_checkpoint(
        path,
        {
            "param_store": param_store_state(param_names),
            "model_state": (
                None
                if owner is None
                else {k: v.detach().cpu() for k, v in owner.state_dict().items()}
            ),
            "model": model_recipe(owner),
            "optim_state": optim.get_state(),
            "history": history,
            "epoch": epoch,
            "config": config,
            **rng_state(device, generator, corruption),
        },
    )


def restore_weights(ckpt: dict[str, Any], owner: nn.Module | None) -> list[str]:
    """Load the owner module's state and put the saved parameters back into Pyro's param store;
    returns their names (the program must use the same ones)."""
    if owner is not None and ckpt.get("model_state") is not None:
        try:
            owner.load_state_dict(ckpt["model_state"])
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint does not fit this model (different architecture?): {e}"
            ) from e
    restore_param_store(ckpt["param_store"])
    return sorted(ckpt["param_store"]["params"])


def restore_progress(
    ckpt: dict[str, Any],
    optim: Any,
    generator: torch.Generator,
    corruption: Any,
    device: torch.device,
) -> tuple[dict[str, list], int, str | None]:
    """The optimiser's (and scheduler's) state and the random streams, put back; returns the
    history, the epoch to continue from and the objective that wrote the checkpoint."""
    optim.set_state(ckpt["optim_state"])
    restore_rng(ckpt, generator, corruption, device)
    saved = ckpt.get("config", {}).get("train", {})
    return ckpt["history"], int(ckpt["epoch"]), saved.get("resolved_objective")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus a format tag) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; truncated or foreign files raise :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code in it, random bytes, ...
        raise CheckpointError(
            f"{path} is not a readable ppl_vae checkpoint (truncated, corrupted or foreign "
            f"file): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl_vae checkpoint (no '{FORMAT}' tag)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')}, this ppl_vae reads {VERSION} "
            "(retrain, or train with the ppl_vae release that wrote it)"
        )
    for key in ("param_store", "config", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks '{key}': truncated or written by other code")
    return ckpt


def load_model(run: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run folder (or checkpoint file), in eval mode, ready to sample,
    encode and score. Works for models built from registry names (``build_model``, the CLI);
    a checkpoint of a user's own program raises, since only its code can rebuild it."""
    from .model import ModelConfig, build_model

    path = Path(run)
    if path.is_dir() and not (path / CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"{path} holds no {CHECKPOINT_NAME}: not a ppl-vae run folder (or its training never "
            "finished an epoch)"
        )
    ckpt = load_checkpoint(path, map_location=device)
    recipe = ckpt.get("model")
    if recipe is None:
        raise CheckpointError(
            f"{path} holds a program that was not built from registry names: rebuild it with your "
            "own code and load the weights with fit(..., resume=True) or load_checkpoint"
        )
    known = {f.name for f in fields(ModelConfig)}
    config = ModelConfig(**{k: v for k, v in recipe["config"].items() if k in known})
    config.hidden = tuple(config.hidden)
    model = build_model(config, tuple(recipe["image_shape"]))
    try:
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not match the model it describes: {e}") from e
    return model.to(device).eval()
