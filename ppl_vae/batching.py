"""The batches of a training epoch: one order for every path (in memory, streamed, distributed).

Epoch ``e`` visits the data in a permutation drawn from a generator seeded by ``(seed, e)``
alone, cut into global batches of ``batch_size``; with ``world_size`` processes each global batch
is split into contiguous shares, one per rank. So

* the order is a function of the seed and the epoch: a resumed run, a streamed run and an
  in-memory run see the same batches, whatever ran before (:meth:`EpochBatches.set_epoch`, as
  ``torch.utils.data.DistributedSampler`` has);
* the ranks of a distributed run see disjoint shares of the same global batches, and other shares
  every epoch; together they see exactly the batch a single process would, so with gradients
  weighted by share size (:mod:`ppl_vae.distributed`) N ranks train as one process with the same
  global batch.

Data that fit on the device are indexed with these index tensors (no DataLoader); a ``Dataset``
is streamed through a ``DataLoader`` whose ``batch_sampler`` is the same object
(:func:`stream_batches`), with worker processes, pinned memory and prefetching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from . import distributed
from .data import binarize, check_8bit, dequantize
from .errors import DataError

__all__ = [
    "EpochBatches",
    "TrainingBatches",
    "collate",
    "dataset_size",
    "stack",
    "stream_batches",
]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) into an independent stream for every pair
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class EpochBatches(Sampler[list[int]]):
    """This rank's share of each global batch of a seeded per-epoch permutation.

    Iterating yields index tensors. A global batch too small to give every rank a point (the
    last one, with several ranks) is dropped; with one process nothing is.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if n <= 0:
            raise ValueError(f"no data to batch (n={n})")
        batch_size = int(batch_size)
        if batch_size < world_size:
            raise ValueError(
                f"the global batch ({batch_size}) must hold at least one point per process "
                f"({world_size} processes)"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration follows."""
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        """The epoch's global batches (index tensors), before sharding."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=_epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.n)
        out = list(order.split(self.batch_size))
        if self.world_size > 1 and out[-1].numel() < self.world_size:
            out.pop()
        return out

    def __iter__(self) -> Iterator[Any]:
        for batch in self.global_batches():
            yield batch.tensor_split(self.world_size)[self.rank]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and (self.world_size == 1 or rest >= self.world_size) else 0)


def dataset_size(data: Any) -> int:
    """Number of data points of a tensor or a sized ``Dataset``."""
    if isinstance(data, torch.Tensor):
        return data.shape[0]
    try:
        return len(data)
    except TypeError:
        raise TypeError(
            f"training data must be a tensor or a Dataset with __len__, got {type(data).__name__}"
        ) from None


def _first(item: Any) -> torch.Tensor:
    """A data point: the tensor itself, or the first element of an (x, label, ...) tuple."""
    x = item[0] if isinstance(item, tuple | list) else item
    return torch.as_tensor(x)


def collate(items: list[Any]) -> torch.Tensor:
    """A batch tensor from data points (tensors, or (x, label, ...) tuples: the labels dropped)."""
    return torch.stack([_first(item) for item in items]).float()


def stream_batches(
    dataset: Dataset,
    sampler: EpochBatches,
    device: torch.device,
    *,
    num_workers: int = 0,
    prefetch_factor: int = 2,
) -> Iterator[torch.Tensor]:
    """The sampler's batches of ``dataset``, read by a ``DataLoader`` (``num_workers``
    processes, pinned memory on CUDA, ``prefetch_factor`` batches ahead per worker) and moved to
    ``device`` asynchronously. Items may be tensors or (x, label) tuples; labels are dropped."""
    loader = DataLoader(
        dataset,
        batch_sampler=_ListsOf(sampler),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
        # its own generator (workers' seeds): a DataLoader would otherwise draw from the global
        # stream and shift the training noise away from the in-memory path's
        generator=_epoch_generator(sampler.seed, sampler.epoch),
    )
    for batch in loader:
        yield batch.to(device, non_blocking=True)


class _ListsOf(Sampler[list[int]]):
    """The same batches as index lists (what a DataLoader's ``batch_sampler`` yields)."""

    def __init__(self, sampler: EpochBatches) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.sampler:
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.sampler)


class TrainingBatches:
    """The training data, epoch by epoch: ``(batch on the device, weight)`` pairs, the weight
    this rank's share of the global batch (1 in one process).

    A tensor is moved to the device once and indexed (the fast path); a ``Dataset`` — or a tensor
    with ``stream=True`` — is read through a ``DataLoader`` in the same batches. Dynamic
    binarisation draws each batch's bits as it is used. ``check`` (the program's data check)
    sees the whole tensor, or the first batch of a stream.
    """

    def __init__(
        self,
        train: torch.Tensor | Dataset,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        check: Callable[[torch.Tensor, str], None],
        stream: bool = False,
        num_workers: int = 0,
        binarize: bool = False,
        dequantize: bool = False,
    ) -> None:
        if binarize and dequantize:
            raise ValueError("binarize and dequantize exclude each other: choose one")
        self.batch_size, self.device = batch_size, device
        self.num_workers, self.binarize, self.dequantize = num_workers, binarize, dequantize
        self.n = dataset_size(train)
        self.streamed = stream or not isinstance(train, torch.Tensor)
        if isinstance(train, torch.Tensor):
            check(train, "training data")
            train = TensorDataset(train) if self.streamed else train.to(device)
        elif self.n == 0:
            raise DataError("training data is empty")
        self.train = train
        self.sampler = EpochBatches(
            self.n,
            batch_size,
            seed=seed,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        if self.streamed:
            check(self.first_batch(), "training data (first batch)")
        if dequantize:
            check_8bit(train if isinstance(train, torch.Tensor) else self.first_batch())
        self.global_sizes: list[int] = []

    def first_batch(self) -> torch.Tensor:
        if isinstance(self.train, torch.Tensor):
            return self.train[: self.batch_size]
        return stack(self.train, range(min(self.batch_size, self.n))).to(self.device)

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, float]]:
        self.sampler.set_epoch(epoch)
        self.global_sizes = [len(b) for b in self.sampler.global_batches()]
        if self.streamed:
            batches = stream_batches(
                self.train, self.sampler, self.device, num_workers=self.num_workers
            )
        else:
            batches = (self.train[idx.to(self.device)] for idx in self.sampler)
        for i, x in enumerate(batches):
            if self.binarize:
                x = binarize(x, gen)
            elif self.dequantize:
                x = dequantize(x, gen)
            yield x, len(x) / self.global_sizes[i]


def stack(dataset: Dataset, idx: Iterable[int]) -> torch.Tensor:
    """The data points ``idx`` of ``dataset`` as one batch tensor."""
    return collate([dataset[i] for i in idx])
