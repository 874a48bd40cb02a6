"""Any ``torch.utils.data.Dataset`` as data, read item by item.

An item may be a tensor, a numpy array or a PIL image, an ``(x, label, ...)`` tuple of them, or
a dict with the data under ``"image"``/``"x"``/``"data"``/... and a label under ``"label"``/
``"y"``/``"target"``/...; :func:`_to_point` turns each into a float32 image ``(C, H, W)``
(scaled like image files) or a table row ``(D,)``. A map-style data set stays the user's
(:class:`DatasetItems` reads items when asked, so it can be larger than memory); an
``IterableDataset`` has no random access, so :func:`iterable_items` reads it whole, within
``max_bytes``. Items of several shapes are refused with the fix (``image_size=`` or a transform).
torchvision data sets whose images are not one array (CelebA) are read through
:class:`DatasetItems` as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..errors import DataError
from .arrays import ArrayItems
from .folders import pil_to_tensor
from .items import Items, labels_of, resize_point, scale_of

__all__ = ["DatasetItems", "iterable_items"]


_X_KEYS = ("image", "img", "x", "data", "input", "inputs", "pixel_values")
_Y_KEYS = ("label", "labels", "y", "target", "targets")


def _split_item(item: Any) -> tuple[Any, Any]:
    """(data, label or None) of one item of a user's data set."""
    if isinstance(item, dict):
        x = next((item[k] for k in _X_KEYS if k in item), None)
        if x is None:
            raise DataError(
                f"items are dicts with keys {sorted(item)}; put the data under one of {_X_KEYS}"
            )
        return x, next((item[k] for k in _Y_KEYS if k in item), None)
    if isinstance(item, tuple | list):
        if not item:
            raise DataError("items are empty tuples")
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _scalar_label(y: Any) -> int | None:
    """An item's class label as an int; None for no label or a non-scalar target."""
    if isinstance(y, torch.Tensor | np.ndarray | np.generic):
        if (y.numel() if isinstance(y, torch.Tensor) else np.size(y)) != 1:
            return None
        y = y.item()
    if isinstance(y, bool):
        return None
    if isinstance(y, int | np.integer):
        return int(y)
    if isinstance(y, float) and y.is_integer():
        return int(y)
    return None


def _to_point(x: Any, kind: str | None, where: str) -> torch.Tensor:
    """One data point as float32: images ``(C, H, W)`` (scaled), a table row ``(D,)``."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - torchvision brings Pillow
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        t = pil_to_tensor(x)
        return t if kind != "table" else t.reshape(-1)
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where} is an array of {x.dtype}; items must hold numbers")
        scale = scale_of(x.dtype)
        t = torch.from_numpy(np.array(x, dtype=np.uint8 if scale == 255.0 else np.float32))
    elif isinstance(x, torch.Tensor):
        scale = scale_of(x.dtype)
        t = x.detach().cpu()
    elif isinstance(x, int | float) and not isinstance(x, bool):
        scale, t = None, torch.tensor([float(x)])
    else:
        raise DataError(
            f"{where} is a {type(x).__name__}; items must be tensors, numpy arrays or PIL "
            "images, or (x, label) tuples of them"
        )
    if kind == "table" or t.dim() <= 1:
        return t.to(torch.float32).reshape(-1)
    t = t.to(torch.float32)
    if scale is not None:
        t = t / scale
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        return t.permute(2, 0, 1).contiguous() if t.shape[-1] <= 4 < t.shape[0] else t
    raise DataError(f"{where} has shape {tuple(t.shape)}; expected (C, H, W), (H, W) or (D,)")


class DatasetItems(Items):
    """A user's map-style data set, converted item by item."""

    def __init__(
        self,
        dataset: Dataset,
        name: str,
        *,
        size: tuple[int, int] | None,
        crop: int | None = None,
        kind: str | None = None,
    ) -> None:
        self.dataset, self.name, self.size, self.crop = dataset, name, size, crop
        try:
            self.n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"{name}: a map-style Dataset needs __len__") from None
        if self.n == 0:
            raise DataError(f"{name} is empty (len 0)")
        first, _ = self._convert(0, kind)
        self.kind = kind or ("table" if first.dim() == 1 else "images")
        if self.kind == "images" and first.dim() != 3:
            raise DataError(
                f"{name}: item 0 has shape {tuple(first.shape)}, not an image (C, H, W) or (H, W)"
            )
        if self.kind == "table" and size is not None:
            raise DataError(f"{name} holds table rows; image_size applies only to images")
        self.item_shape = tuple(first.shape)
        self.labels = labels_of(getattr(dataset, "targets", None), self.n)

    def _convert(self, i: int, kind: str | None = None) -> tuple[torch.Tensor, int | None]:
        x, y = _split_item(self.dataset[i])
        t = _to_point(x, kind or getattr(self, "kind", None), f"{self.name} item {i}")
        if t.dim() == 3:
            if self.crop is not None:
                h, w = t.shape[-2:]
                s = min(self.crop, h, w)
                top, left = (h - s) // 2, (w - s) // 2
                t = t[:, top : top + s, left : left + s]
            t = resize_point(t, self.size)
        if not bool(torch.isfinite(t).all()):
            raise DataError(
                f"{self.name}: item {i} holds NaN or infinite values; drop or impute it first"
            )
        return t, _scalar_label(y)

    def get(self, i: int) -> torch.Tensor:
        t, _ = self._convert(i)
        if tuple(t.shape) != self.item_shape:
            raise DataError(
                _mixed_items_message(self.name, {self.item_shape: 0, tuple(t.shape): i})
            )
        return t

    def take(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        points, labels, shapes = [], [], {}
        for i in idx.tolist():
            t, y = self._convert(i)
            shapes.setdefault(tuple(t.shape), i)
            points.append(t)
            labels.append(y)
        if len(shapes) > 1:
            raise DataError(_mixed_items_message(self.name, shapes))
        if not points:
            return torch.empty((0, *self.item_shape), device=device), None
        x = torch.stack(points).to(device)
        if self.labels is not None:
            return x, self.labels[idx].to(device)
        y = None if any(v is None for v in labels) else torch.tensor(labels, device=device)
        return x, y


def _mixed_items_message(name: str, shapes: dict[tuple[int, ...], int]) -> str:
    listed = "; ".join(f"{tuple(s)} (e.g. item {i})" for s, i in list(shapes.items())[:6])
    return (
        f"the items of {name} do not all have one shape: {listed}. Pass image_size=(H, W) to "
        "resize images to one size, or give the data set a transform that does (and that "
        "makes every image grey or every image RGB)"
    )


def iterable_items(
    dataset: IterableDataset,
    name: str,
    *,
    size: tuple[int, int] | None,
    kind: str | None,
    max_bytes: int,
) -> ArrayItems:
    """An IterableDataset read whole into memory (it has no random access)."""
    points, labels, used = [], [], 0
    for i, item in enumerate(dataset):
        x, y = _split_item(item)
        t = _to_point(x, kind, f"{name} item {i}")
        if t.dim() == 3:
            t = resize_point(t, size)
        if points and t.shape != points[0].shape:
            raise DataError(
                _mixed_items_message(name, {tuple(points[0].shape): 0, tuple(t.shape): i})
            )
        used += t.numel() * 4
        if used > max_bytes:
            raise DataError(
                f"{name} is an IterableDataset larger than max_bytes={max_bytes}: it cannot be "
                "read lazily (no random access). Give a map-style Dataset (with __len__ and "
                "__getitem__) for data larger than memory"
            )
        points.append(t)
        labels.append(_scalar_label(y))
    if not points:
        raise DataError(f"{name} yielded no items")
    x = torch.stack(points)
    y = None if any(v is None for v in labels) else torch.tensor(labels)
    table = x.dim() == 2
    items = ArrayItems(
        x,
        name,
        layout="ND" if table else "NCHW",
        kind="table" if table else "images",
        size=None,
        labels=y,
    )
    items.scan()
    return items
