"""From a source to an :class:`~ppl_vae.data.ImageData`: dispatch, held-out split, memory or lazy.

:func:`load_source` is :func:`ppl_vae.load_dataset` for every source but the plain MNIST fast
path. It asks the module for the source's kind (:mod:`.torchvision_sets`, :mod:`.folders`,
:mod:`.arrays`, :mod:`.tables`, :mod:`.datasets`) for its :class:`~.items.Items`, holds out a
test split when the source has none (seeded by ``split_seed`` alone), and then either takes
every data point as a float32 tensor on the device, when they fit in :func:`memory_budget`, or
wraps them in lazy :class:`~.items.SourceDataset`\\ s. Keeping these decisions here, once, is
what lets each kind of source only say how to read one data point.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..data import KINDS, ImageData
from ..errors import DataError
from ..mnist import default_root, reporter
from .arrays import ARRAY_EXTENSIONS, array_items, open_array_file
from .datasets import DatasetItems, iterable_items
from .folders import IMAGE_EXTENSIONS, open_folder
from .items import Items, SourceDataset, shape_text, size_pair
from .tables import TABLE_EXTENSIONS, table_items
from .torchvision_sets import canonical_name, dataset_names, open_named

__all__ = ["load_source", "memory_budget"]


def memory_budget(device: str | torch.device = "cpu") -> int:
    """Bytes of float32 data that may be held as tensors (the default ``max_bytes``): a quarter
    of the physical memory (8 GiB assumed where it cannot be read) and, on CUDA, at most half
    the GPU's free memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 8 << 30
    budget = int(ram) // 4
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free) // 2)
    return budget


def load_source(
    source: Any,
    root: str | Path | None,
    *,
    device: str | torch.device,
    download: bool,
    verbose: bool,
    image_size: int | tuple[int, int] | None,
    test: Any,
    test_fraction: float,
    split_seed: int,
    in_memory: bool | None,
    max_bytes: int | None,
    kind: str | None,
) -> ImageData:
    """:func:`ppl_vae.load_dataset` for every source, with its arguments (it gives their
    defaults; the package docstring says how each source is read, split, held in memory or
    lazily, and refused)."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    size = size_pair(image_size)
    device = torch.device(device)
    root = Path(root).expanduser() if root is not None else default_root()
    budget = memory_budget(device) if max_bytes is None else int(max_bytes)
    label = source if isinstance(source, str | os.PathLike) else type(source).__name__
    say = reporter(label, verbose)

    opts = {"download": download, "verbose": verbose, "size": size, "kind": kind}
    name, train, given_test = _open(source, root, max_bytes=budget, say=say, **opts)
    if test is not None:
        if given_test is not None:
            raise ValueError(f"{name} has its own test split; test= cannot replace it")
        _, given_test, extra = _open(test, root, max_bytes=budget, say=say, **opts)
        if extra is not None:
            raise ValueError("test= must be one set of data, not a source with its own split")
    if given_test is not None:
        if (given_test.kind, given_test.item_shape) != (train.kind, train.item_shape):
            raise DataError(
                f"{name}: the training data are {train.kind} of shape {train.item_shape} but the "
                f"test data are {given_test.kind} of shape {given_test.item_shape}; give both "
                "one shape (image_size= resizes images)"
            )
        parts = [(train, torch.arange(train.n)), (given_test, torch.arange(given_test.n))]
        how = "its own test split"
    else:
        tr_idx, te_idx = _split(train.n, test_fraction, split_seed, name)
        parts = [(train, tr_idx), (train, te_idx)]
        how = (
            f"{len(te_idx)} held out for testing (test_fraction={test_fraction}, seed {split_seed})"
        )
    points = sum(len(idx) for _, idx in parts)
    nbytes = points * math.prod(train.item_shape) * 4
    lazy = in_memory is False or (in_memory is None and nbytes > budget)
    if lazy:
        splits = [(SourceDataset(items, idx), _lazy_labels(items, idx)) for items, idx in parts]
        why = "in_memory=False" if in_memory is False else f"more than max_bytes={_mb(budget)}"
        where = f"read lazily ({_mb(nbytes)}: {why})"
    else:
        splits = [items.take(idx, device) for items, idx in parts]
        where = f"in memory on {device} ({_mb(nbytes)})"
    (train_x, train_y), (test_x, test_y) = splits
    if (train_y is None) != (test_y is None):
        train_y = test_y = None
    what = "rows" if train.kind == "table" else "images"
    say(f"{points} {what} of {shape_text(train.item_shape)}; {how}; {where}")
    return ImageData(name, train_x, train_y, test_x, test_y, kind=train.kind)


def _open(
    source: Any,
    root: Path,
    *,
    download: bool,
    verbose: bool,
    size: tuple[int, int] | None,
    kind: str | None,
    max_bytes: int,
    say: Callable[[str], None],
) -> tuple[str, Items, Items | None]:
    """(name, train items, test items or None) of any source."""
    key = canonical_name(source) if isinstance(source, str) else None
    if key is not None:
        tr, te = open_named(
            key, root, download=download, verbose=verbose, size=size, kind=kind, say=say
        )
        return key, tr, te
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not path.exists():
            raise _unknown_source(str(source))
        name = path.stem if path.is_file() else path.name
        if path.is_dir():
            tr, te = open_folder(path, size)
            return name, tr, te
        suffix = path.suffix.lower()
        if suffix in ARRAY_EXTENSIONS:
            tr, te = open_array_file(path, kind=kind, size=size)
            return name, tr, te
        if suffix in TABLE_EXTENSIONS:
            return name, table_items(path, kind=kind, size=size), None
        if suffix in IMAGE_EXTENSIONS:
            raise DataError(
                f"{path} is a single image; a data set is a folder of images: give its folder"
            )
        raise DataError(
            f"cannot read {path}: give a folder of images, a "
            f"{', '.join(ARRAY_EXTENSIONS + TABLE_EXTENSIONS)} file, a tensor, an array or a "
            "torch.utils.data.Dataset"
        )
    if isinstance(source, torch.Tensor | np.ndarray):
        x = source.detach().cpu() if isinstance(source, torch.Tensor) else source
        return "tensor", array_items(x, "the tensor", kind=kind, size=size), None
    if isinstance(source, IterableDataset):
        name = type(source).__name__
        items = iterable_items(source, name, size=size, kind=kind, max_bytes=max_bytes)
        return name, items, None
    if isinstance(source, Dataset) or (
        hasattr(source, "__getitem__") and hasattr(source, "__len__")
    ):
        name = type(source).__name__
        return name, DatasetItems(source, name, size=size, kind=kind), None
    raise DataError(
        f"cannot use a {type(source).__name__} as data: give a data set name "
        f"({', '.join(dataset_names())}), a path, a tensor or array, or a torch.utils.data.Dataset"
    )


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.startswith(".") or bool(Path(s).suffix)


def _unknown_source(source: str) -> DataError:
    names = ", ".join(dataset_names())
    where = "" if Path(source).is_absolute() else f" (relative to {Path.cwd()})"
    if _looks_like_path(source):
        return DataError(
            f"no such file or folder: {source}{where}. Give an existing folder of images, a "
            f"{'/'.join(ARRAY_EXTENSIONS + TABLE_EXTENSIONS)} file, or a data set name: {names}"
        )
    return DataError(
        f"unknown data source {source!r}: not a data set name ({names}) and no file or folder "
        f"of that name exists{where}"
    )


def _split(n: int, test_fraction: float, seed: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices, each sorted: ``test_fraction`` of ``n`` (rounded, at least one each
    side) drawn by a generator seeded with ``seed`` alone."""
    if test_fraction == 0:
        return torch.arange(n), torch.arange(0)
    if n < 2:
        raise DataError(
            f"{name} has {n} data point(s): too few to hold one out for testing; give more data, "
            "a test set (test=...) or test_fraction=0"
        )
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _lazy_labels(items: Items, idx: torch.Tensor) -> torch.Tensor | None:
    y = items.lazy_labels()
    return None if y is None else y[idx]


def _mb(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"
