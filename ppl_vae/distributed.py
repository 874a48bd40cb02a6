"""Training across processes with ``torch.distributed``: what ``fit`` needs, in one place.

Launched by ``torchrun --nproc-per-node=N -m ppl_vae train …`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), or from Python after
``torch.distributed.init_process_group``: ``fit`` sees the process group and

* gives each rank its share of every global batch (:class:`~ppl_vae.batching.EpochBatches`), with
  the data plate still scaled to the whole data set (``num_data``), so each rank's loss is an
  unbiased estimate of the data set's;
* sums the ranks' gradients, each weighted by its share of the global batch — the gradient of the
  global batch's loss, as one process with that batch would compute (DDP's all-reduce, done on the
  gradients of whatever Pyro registered, so any ``PyroOptim`` steps them);
* reduces the test metrics over the ranks' shares of the test set;
* lets rank 0 alone write checkpoints, logs and figures. A checkpoint holds no rank-specific
  parameters (every rank holds the same), so a run resumes with any number of ranks.

Backends: gloo on CPU, NCCL on CUDA (one GPU per process: ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = [
    "agree",
    "average_gradients",
    "barrier",
    "broadcast_",
    "init_from_env",
    "is_main",
    "rank",
    "shutdown",
    "sum_",
    "world_size",
]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True in a single process and on rank 0: the one that writes files and prints."""
    return rank() == 0


def init_from_env(device: str = "auto") -> str:
    """Join the process group a launcher described in the environment (``torchrun`` sets it) and
    return the device this process trains on; without such an environment, do nothing.

    NCCL with ``cuda:LOCAL_RANK`` when CUDA is asked for (or ``auto`` and available), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _active():
        return device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return device if cuda else "cpu"


def sum_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum of ``t`` over all ranks (``t`` itself in one process)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: Iterable[torch.Tensor], weight: float, loss: float) -> float:
    """Replace each gradient by Σ_ranks weight_r · grad_r and return Σ_ranks weight_r · loss_r.

    One flat all-reduce for all gradients and the loss together (so every rank also learns
    whether any rank's loss stopped being finite). A parameter without a gradient on this rank
    contributes zeros.
    """
    params = [p for p in params]
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    buf = torch.cat([*flat, torch.tensor([loss], dtype=flat[0].dtype, device=flat[0].device)])
    buf.mul_(weight)
    sum_(buf)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = buf[offset : offset + n].view_as(p).clone()
        offset += n
    return float(buf[-1])


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """In place: every rank gets ``src``'s values (the same initial parameters everywhere)."""
    if _active():
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src)


def barrier() -> None:
    if _active():
        dist.barrier()


def agree(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a run folder named from the clock, say)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if _active():
        dist.destroy_process_group()
