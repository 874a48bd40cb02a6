"""Arrays as data: ``.npy``/``.npz``/``.pt`` files, tensors and numpy arrays.

An array is read as images ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``, or as a table
``(N, D)`` of rows (the package docstring gives the rules and the names looked for in an
``.npz`` or a ``.pt`` dict). :class:`ArrayItems` converts rows on demand, so a memory-mapped
``.npy`` larger than memory is never loaded at once; :func:`array_items` checks an array before
it is used (labels passed as the data, unusable shapes and dtypes, NaN or infinite values) and
says how to fix it. Tables read from CSV (:mod:`.tables`), MNIST's tensors and torchvision's
arrays end up as :class:`ArrayItems` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .items import Items, labels_of, nan_message, resize, scale_of

__all__ = ["ARRAY_EXTENSIONS", "ArrayItems", "array_items", "check_not_labels", "open_array_file"]

ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".pt", ".pth")


def _channels_last(shape: Sequence[int]) -> bool:
    """``(N, H, W, C)`` rather than ``(N, C, H, W)``: last dim ≤ 4 and second larger."""
    return shape[-1] <= 4 < shape[1]


class ArrayItems(Items):
    """Rows of an array (numpy, memory-mapped ``.npy`` or torch): images or a table."""

    def __init__(
        self,
        array: np.ndarray | torch.Tensor,
        name: str,
        *,
        layout: str,
        kind: str,
        size: tuple[int, int] | None,
        labels: torch.Tensor | None = None,
        path: Path | None = None,
    ) -> None:
        self.array, self.name, self.layout, self.kind = array, name, layout, kind
        self.n = int(array.shape[0])
        self.labels, self.path, self.shape = labels, path, tuple(array.shape)
        self.scale = scale_of(array.dtype) if kind == "images" else None
        self.size = size
        self.bounds: tuple[float, float] | None = (0.0, 1.0) if self.scale else None
        shape = tuple(int(s) for s in array.shape[1:])
        if layout == "NHW":
            c, hw = 1, shape
        elif layout == "NHWC":
            c, hw = shape[2], shape[:2]
        elif layout == "NCHW":
            c, hw = shape[0], shape[1:]
        else:  # "ND": a table
            c, hw = 0, ()
        if kind == "table":
            self.item_shape = (math.prod(shape) if shape else 1,)
        else:
            self.item_shape = (c, *(size or hw))
        self.value_range = (0.0, 1.0) if self.scale else None

    # numpy memory maps are reopened (not copied) in DataLoader worker processes
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None and isinstance(self.array, np.memmap):
            state["array"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.array is None:
            self.array = np.load(self.path, mmap_mode="r", allow_pickle=False).reshape(self.shape)

    def raw(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows ``idx`` as a tensor of the array's dtype (float32 for odd numpy dtypes)."""
        if isinstance(self.array, torch.Tensor):
            return self.array[idx]
        rows = np.asarray(self.array[idx.numpy()])
        if rows.dtype != np.uint8 and rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(rows))

    def convert(self, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
        t = raw.to(device).to(torch.float32)
        if self.scale is not None:
            t = t / self.scale
        if self.kind == "table":
            return t.reshape(t.shape[0], *self.item_shape)
        if self.layout == "NHW":
            t = t.unsqueeze(1)
        elif self.layout == "NHWC":
            t = t.permute(0, 3, 1, 2)
        return resize(t, self.size, self.bounds).contiguous()

    def take(
        self, idx: torch.Tensor, device: torch.device, chunk: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = None if self.labels is None else self.labels[idx].to(device)
        if len(idx) <= chunk:
            return self.convert(self.raw(idx), device), y
        out = torch.empty((len(idx), *self.item_shape), dtype=torch.float32, device=device)
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            out[start : start + len(part)] = self.convert(self.raw(part), device)
        return out, y

    def scan(self, chunk: int = 8192) -> None:
        """Refuse non-finite values (naming the rows); record the value range of float data.

        Reads the whole array once (in chunks, so a memory map is never loaded at once).
        """
        if self.scale is not None or self.n == 0:
            return
        bad: list[int] = []
        lo, hi = math.inf, -math.inf
        for start in range(0, self.n, chunk):
            part = self.array[start : start + chunk]
            if isinstance(part, torch.Tensor):
                part = part.detach().cpu()
                if part.dtype in (torch.bfloat16, torch.float16):
                    part = part.float()
                part = part.numpy()
            part = np.asarray(part)
            if part.dtype == np.bool_:
                part = part.astype(np.uint8)
            rows = part.reshape(part.shape[0], -1)
            if rows.dtype.kind == "f":
                finite = np.isfinite(rows).all(axis=1)
                bad.extend((start + np.flatnonzero(~finite)).tolist())
                rows = rows[finite]
            if rows.size:
                lo, hi = min(lo, float(rows.min())), max(hi, float(rows.max()))
        if bad:
            raise DataError(nan_message(self.name, bad, self.n, self.kind))
        if lo <= hi:
            self.value_range = (lo, hi)
            self.bounds = (lo, hi)


def _describe_array(a: Any) -> str:
    return f"a {a.ndim}-D {str(a.dtype).replace('torch.', '')} array of shape {tuple(a.shape)}"


def _labels_error(name: str, a: Any, values: np.ndarray) -> DataError:
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:8]) + (", ..." if distinct.size > 8 else "")
    return DataError(
        f"{name} looks like class labels, not data: {_describe_array(a)} of integers with "
        f"{distinct.size} distinct values ({shown}). Pass the images or the table themselves; "
        "labels can go with them (an .npz with arrays 'x' and 'y', or a folder of class "
        "sub-folders). If these numbers really are the data, pass kind='table'."
    )


def check_not_labels(name: str, a: Any, kind: str | None) -> None:
    """A 1-D integer array, or one integer column with few distinct values, is labels."""
    if kind is not None or a.ndim not in (1, 2) or (a.ndim == 2 and a.shape[1] != 1):
        return
    n = int(a.shape[0])
    if n == 0:
        return
    values = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    values = values.reshape(-1)
    if values.dtype == np.bool_:
        values = values.astype(np.int64)
    integer = values.dtype.kind in "iu"
    if not integer:
        if values.dtype.kind != "f" or not np.isfinite(values).all():
            return
        if not np.array_equal(values, np.round(values)):
            return
    few = np.unique(values).size <= min(1000, max(2, n // 2))
    if (a.ndim == 1 and integer) or few:
        raise _labels_error(name, a, values)


def array_items(
    a: np.ndarray | torch.Tensor,
    name: str,
    *,
    kind: str | None,
    size: tuple[int, int] | None,
    labels: Any = None,
    path: Path | None = None,
) -> ArrayItems:
    """Read an array's shape as images or a table (module docstring) and check it."""
    if isinstance(a, np.ndarray) and a.dtype == object:
        raise DataError(f"{name} is an array of Python objects; save a numeric array instead")
    if isinstance(a, np.ndarray) and a.dtype.kind not in "biuf":
        raise DataError(
            f"{name} is {_describe_array(a)}, not numbers; convert it to a numeric array "
            "(text columns must be encoded, e.g. one-hot, first)"
        )
    if isinstance(a, torch.Tensor) and a.is_complex():
        raise DataError(f"{name} is {_describe_array(a)}; give real numbers")
    check_not_labels(name, a, kind)
    if a.ndim == 0 or a.shape[0] == 0:
        raise DataError(f"{name} is {_describe_array(a)}: it holds no data points")
    if a.ndim == 1:
        if kind == "images":
            raise DataError(f"{name} is {_describe_array(a)}: not images; use kind='table'")
        a = a.reshape(-1, 1)
        kind = "table"
    if a.ndim == 2:
        if kind == "images":
            raise DataError(
                f"{name} is {_describe_array(a)}: a table of rows, not images. Reshape it to "
                "(N, H, W) or (N, C, H, W) first (e.g. x.reshape(-1, 1, 28, 28))"
            )
        layout, kind = "ND", "table"
    elif a.ndim in (3, 4):
        if kind == "table":
            layout = "ND"  # rows flattened
        elif a.ndim == 3:
            layout, kind = "NHW", "images"
        else:
            layout, kind = ("NHWC" if _channels_last(a.shape) else "NCHW"), "images"
    else:
        raise DataError(
            f"{name} is {_describe_array(a)}; expected images (N, H, W), (N, C, H, W) or "
            "(N, H, W, C), or a table (N, D)"
        )
    if kind == "table" and size is not None:
        raise DataError(f"{name} is a table (N, D); image_size applies only to images")
    y = labels_of(labels, int(a.shape[0])) if labels is not None else None
    items = ArrayItems(a, name, layout=layout, kind=kind, size=size, labels=y, path=path)
    items.scan()
    return items


_SPLIT_KEYS = (("train", "test"), ("x_train", "x_test"), ("train_x", "test_x"))
_SPLIT_LABELS = (("y_train", "y_test"), ("train_y", "test_y"), ("train_labels", "test_labels"))
_DATA_KEYS = ("x", "data", "images", "X", "features", "arr_0")
_LABEL_KEYS = ("y", "labels", "targets", "label", "target", "Y")


def _pick(arrays: dict[str, Any], name: str) -> tuple[Any, Any, Any, Any]:
    """(x, y, test_x, test_y) out of the named arrays of an .npz or a .pt dict."""
    keys = list(arrays)
    for tr, te in _SPLIT_KEYS:
        if tr in arrays and te in arrays:
            ys = next(((a, b) for a, b in _SPLIT_LABELS if a in arrays and b in arrays), None)
            return (
                arrays[tr],
                arrays[ys[0]] if ys else None,
                arrays[te],
                arrays[ys[1]] if ys else None,
            )
    if len(keys) == 1:
        return arrays[keys[0]], None, None, None
    key = next((k for k in _DATA_KEYS if k in arrays), None)
    if key is None:
        raise DataError(
            f"{name} holds arrays {keys} and none is named as data: save the data as one of "
            f"{list(_DATA_KEYS)} (labels as one of {list(_LABEL_KEYS)}), or a split as "
            "train/test or x_train/x_test (with y_train/y_test)"
        )
    ykey = next((k for k in _LABEL_KEYS if k in arrays), None)
    return arrays[key], (arrays[ykey] if ykey else None), None, None


def _read_array_file(path: Path) -> tuple[Any, Any, Any, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None, None, None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _pick({k: z[k] for k in z.files}, path.name)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if isinstance(obj, torch.Tensor):
        return obj, None, None, None
    if isinstance(obj, dict):
        return _pick(dict(obj), path.name)
    if isinstance(obj, tuple | list) and len(obj) == 2 and isinstance(obj[0], torch.Tensor):
        return obj[0], obj[1], None, None
    raise DataError(
        f"{path} holds a {type(obj).__name__}; a .pt data file must hold a tensor, an (x, y) "
        "pair of tensors or a dict of tensors"
    )


def open_array_file(
    path: Path, *, kind: str | None, size: tuple[int, int] | None
) -> tuple[ArrayItems, ArrayItems | None]:
    """(train items, test items or None) of an array file; a ``.npy`` is memory-mapped."""
    x, y, tx, ty = _read_array_file(path)
    mm = path if path.suffix.lower() == ".npy" else None
    train = array_items(x, path.name, kind=kind, size=size, labels=y, path=mm)
    test = None
    if tx is not None:
        test = array_items(tx, f"{path.name}[test]", kind=kind, size=size, labels=ty)
    return train, test
