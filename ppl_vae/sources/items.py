"""What every source becomes: :class:`Items`, ``n`` data points read and converted on demand.

Each kind of source (:mod:`.arrays`, :mod:`.tables`, :mod:`.folders`, :mod:`.datasets`,
:mod:`.torchvision_sets`) only has to say how to read its data points; :mod:`.load` then either
takes them all as tensors on the device or wraps them in a lazy :class:`SourceDataset`. Because
both paths go through the same :meth:`Items.take`, in-memory and lazy data hold the same values.

This module also holds what several kinds share: the ``image_size`` argument, resizing, the
scaling of integer images, reading labels, and the message for NaN or infinite values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "Items",
    "SourceDataset",
    "labels_of",
    "nan_message",
    "resize",
    "resize_point",
    "scale_of",
    "shape_text",
    "size_pair",
]


class Items:
    """``n`` data points of one split, read and converted on demand.

    ``take(idx, device)`` gives ``(x, y)``: float32 ``(len(idx), *item_shape)`` on ``device`` and
    the int64 labels or None; ``get(i)`` one data point as a float32 CPU tensor. A lazy data set
    and an in-memory tensor are built from the same conversions, so they hold the same values.
    """

    name: str
    n: int
    item_shape: tuple[int, ...]
    kind: str
    value_range: tuple[float, float] | None = None
    labels: torch.Tensor | None = None

    def get(self, i: int) -> torch.Tensor:
        return self.take(torch.tensor([i]), torch.device("cpu"))[0][0]

    def take(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def lazy_labels(self) -> torch.Tensor | None:
        """Labels known without reading every data point."""
        return self.labels


class SourceDataset(Dataset):
    """The data points ``indices`` of a source, read and converted when asked: float32 CPU
    tensors of shape :attr:`item_shape` (what ``ImageData.train_x``/``test_x`` are for data
    larger than memory). Indexing one item or a list of them (``__getitems__``, what a
    ``DataLoader`` calls) reads only those."""

    def __init__(self, items: Items, indices: Sequence[int] | torch.Tensor) -> None:
        self.items = items
        self.indices = torch.as_tensor(indices, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} data points")
        return self.items.get(int(self.indices[i]))

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        x, _ = self.items.take(self.indices[torch.as_tensor(indices)], torch.device("cpu"))
        return list(x.unbind(0))

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.items.item_shape)

    @property
    def value_range(self) -> tuple[float, float] | None:
        return self.items.value_range

    @property
    def kind(self) -> str:
        return self.items.kind

    def __repr__(self) -> str:
        return f"SourceDataset({self.items.name!r}, {len(self)} × {self.item_shape})"


def size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)``: an int means a square; None stays None."""
    if size is None:
        return None
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        pair = (int(size), int(size))
    else:
        try:
            h, w = size  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(
                f"image_size must be an int or (height, width), got {size!r}"
            ) from None
        pair = (int(h), int(w))
    if min(pair) <= 0:
        raise ValueError(f"image_size must be positive, got {size!r}")
    return pair


def resize(
    x: torch.Tensor, size: tuple[int, int] | None, bounds: tuple[float, float] | None
) -> torch.Tensor:
    """``(B, C, H, W)`` resized to ``size`` (bilinear, antialiased), clamped to ``bounds``."""
    if size is None or tuple(x.shape[-2:]) == size or x.shape[0] == 0:
        return x
    out = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    if bounds is not None:  # interpolation is a convex combination, up to rounding
        out = out.clamp_(*bounds)
    return out


def resize_point(t: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """One ``(C, H, W)`` image resized, kept within its own range (rounding aside, bilinear
    interpolation never leaves it: images in [0, 1] stay there)."""
    if size is None or tuple(t.shape[-2:]) == size or t.numel() == 0:
        return t
    return resize(t.unsqueeze(0), size, (float(t.min()), float(t.max())))[0]


def shape_text(shape: Sequence[int]) -> str:
    """``(28, 28)`` → ``"28×28"``."""
    return "×".join(str(int(s)) for s in shape)


def scale_of(dtype: Any) -> float | None:
    """What integer images are divided by: 255 for bytes, 65535 for 16-bit; None otherwise."""
    key = str(dtype).replace("torch.", "")
    return {"uint8": 255.0, "uint16": 65535.0}.get(key)


def labels_of(y: Any, n: int) -> torch.Tensor | None:
    """Integer class labels from a list/array/tensor (first column of a 2-D one), or None."""
    if y is None:
        return None
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if t.dim() == 2:
        t = t[:, 0]
    if t.dim() != 1 or t.shape[0] != n:
        return None
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            return None
    elif t.dtype == torch.bool or t.is_complex():
        return None
    return t.to(torch.int64)


def nan_message(
    name: str, bad: Sequence[int], n: int, kind: str, lines: Sequence[int] | None = None
) -> str:
    """The error for data points ``bad`` (of ``n``) holding NaN, missing or infinite values;
    ``lines`` are their line numbers in a table file."""
    what = "rows" if kind == "table" else "data points"
    shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
    where = ""
    if lines is not None:
        where = " (file lines " + ", ".join(str(i) for i in lines[:10])
        where += ", ...)" if len(lines) > 10 else ")"
    return (
        f"{name}: {len(bad)} of its {n} {what} hold NaN, missing or infinite values: {what} "
        f"{shown}{where} (numbered from 0). Drop or impute them first, e.g. "
        "x = x[np.isfinite(x).reshape(len(x), -1).all(axis=1)]"
    )
