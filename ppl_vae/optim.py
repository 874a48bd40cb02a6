"""Optimisers: any ``pyro.optim.PyroOptim`` (learning-rate schedulers included), a fast Adam, and
the SVI step ``fit`` runs.

``fit(optim=…)`` takes a ``PyroOptim`` — ``pyro.optim.Adam``, ``ClippedAdam``, or a scheduler
such as ``pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-3},
"gamma": 0.9})``. Schedulers are stepped once per epoch (``ReduceLROnPlateau`` with the epoch's
training loss); their state and the optimiser's go into the checkpoint through
``PyroOptim.get_state``. Without one, ``fit`` uses :class:`MultiTensorAdam`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import torch_item
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler

from .distributed import average_gradients
from .errors import ProgramError

__all__ = ["MultiTensorAdam", "SVIStep", "make_optim", "step_schedulers"]


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


def make_optim(optim: PyroOptim | None, lr: float, multi_tensor: bool = True) -> PyroOptim:
    """``optim`` itself after a type check, or the default Adam with learning rate ``lr``."""
    if optim is None:
        return MultiTensorAdam({"lr": lr}) if multi_tensor else pyro.optim.Adam({"lr": lr})
    if isinstance(optim, PyroOptim):
        return optim
    hint = ""
    if isinstance(optim, torch.optim.Optimizer) or (
        isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer)
    ):
        name = optim.__name__ if isinstance(optim, type) else type(optim).__name__
        hint = f" (wrap it: pyro.optim.PyroOptim(torch.optim.{name}, {{'lr': 1e-3}}))"
    raise TypeError(
        "optim must be a pyro.optim.PyroOptim, e.g. pyro.optim.ClippedAdam({'lr': 1e-3}) or "
        f"pyro.optim.ExponentialLR({{...}}); got {type(optim).__name__}{hint}"
    )


def step_schedulers(optim: PyroOptim, epoch_loss: float) -> None:
    """End of an epoch: step a learning-rate scheduler (``ReduceLROnPlateau`` gets the loss)."""
    if not isinstance(optim, PyroLRScheduler):
        return
    plateau = optim.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau
    optim.step(epoch_loss) if plateau else optim.step()


class SVIStep(SVI):
    """``pyro.infer.SVI`` whose step releases the gradients instead of zeroing them, and whose
    first step refuses parameters that got no gradient.

    ``SVI.step`` ends by replacing every gradient with a fresh tensor of zeros, which the next
    backward pass then adds to. Setting them to ``None`` lets that pass write the gradients
    directly: the same numbers with two fewer passes over the parameters' memory (what
    ``torch.optim.Optimizer.zero_grad`` does by default).

    A parameter the program reads from the param store but whose gradient stays ``None`` would
    never be trained — typically a stale store entry of an earlier model with the same names, while
    the module computes with its own tensor. The first step checks for it.
    """

    checked = False
    #: In a distributed run, this rank's share of the global batch: gradients and loss become
    #: the share-weighted sums over ranks before the update (:mod:`ppl_vae.distributed`).
    weight: float | None = None

    def step(self, *args: Any, **kwargs: Any) -> float:
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        if not self.checked:
            self._check_gradients(params)
        if self.weight is not None:  # the same order on every rank: by name
            store = pyro.get_param_store()
            ordered = sorted(params, key=store.param_name)
            loss = average_gradients(ordered, self.weight, torch_item(loss))
        self.optim(params)
        for p in params:
            p.grad = None
        return torch_item(loss)

    def _check_gradients(self, params: Iterable[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        dead = sorted(store.param_name(p) for p in params if p.grad is None)
        if dead:
            raise ProgramError(
                f"parameters {dead[:4]}{' ...' if len(dead) > 4 else ''} are read from Pyro's "
                "param store but the loss does not depend on them, so they would never be "
                "trained. If an earlier model registered the same names, the store holds its "
                "tensors: call "
                "pyro.clear_param_store() or fit(..., restart=True); otherwise remove them"
            )
        self.checked = True
