"""Checkpoints: module weights, Pyro param store, optimiser state, config and history.

Written atomically (temporary file, fsync, rename) so a crash or a NaN never leaves a half-written
file where the last good one was, and read with ``torch.load(weights_only=True)`` so loading a
checkpoint cannot run code. Everything inside is tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.distributions import constraints

from .errors import CheckpointError

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "param_store_state",
    "restore_param_store",
    "save_checkpoint",
]

FORMAT = "ppl_vae-checkpoint"
VERSION = 1

# Pyro's param store keeps constraint *objects*; store them by name so weights_only loading works.
_CONSTRAINTS = {
    name: c
    for name in dir(constraints)
    if isinstance(c := getattr(constraints, name), constraints.Constraint)
}


def _constraint_name(c: constraints.Constraint) -> str:
    for name, known in _CONSTRAINTS.items():
        if c is known:
            return name
    raise CheckpointError(
        f"cannot save a pyro.param with constraint {c!r}: only the named constraints of "
        "pyro.distributions.constraints (real, positive, simplex, ...) can be checkpointed"
    )


def param_store_state() -> dict[str, Any]:
    """The global param store as unconstrained tensors plus constraint names."""
    state = pyro.get_param_store().get_state()
    return {
        "params": {k: v.detach().clone() for k, v in state["params"].items()},
        "constraints": {k: _constraint_name(c) for k, c in state["constraints"].items()},
    }


def restore_param_store(state: dict[str, Any]) -> None:
    """Inverse of :func:`param_store_state` (replaces the global store's contents)."""
    store = pyro.get_param_store()
    store.set_state(
        {
            "params": {k: torch.nn.Parameter(v) for k, v in state["params"].items()},
            "constraints": {k: _CONSTRAINTS[v] for k, v in state["constraints"].items()},
        }
    )


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
            f"{path} has checkpoint version {ckpt.get('version')}, this ppl_vae reads {VERSION}"
        )
    for key in ("model_state", "config", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks '{key}': truncated or written by other code")
    return ckpt
