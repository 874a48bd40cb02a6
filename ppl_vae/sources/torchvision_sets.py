"""Data sets by name: MNIST and Fashion-MNIST (with offline mirrors) and other torchvision sets.

:data:`TORCHVISION_DATASETS` says, for each name, which ``torchvision.datasets`` class reads it,
with which arguments for each split, and where its images are (an array of some layout, or item
by item); :func:`canonical_name` forgives case, ``-`` and ``_``. torchvision's own classes read
(and, with ``download=True``, download) the files under ``root``, so this module only adapts
what they return into :class:`~.items.Items`; EMNIST's images are transposed upright and
CelebA's centre-cropped and resized. When the files are absent and cannot be downloaded,
:class:`~ppl_vae.mnist.DatasetNotFoundError` says where they go and where torchvision gets
them. MNIST and Fashion-MNIST are read by :func:`ppl_vae.mnist.read_mirrored`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..mnist import DATASETS, DatasetNotFoundError, first_line, quiet, read_mirrored
from .arrays import ArrayItems
from .datasets import DatasetItems
from .items import Items, labels_of, size_pair

__all__ = [
    "TORCHVISION_DATASETS",
    "TorchvisionSpec",
    "canonical_name",
    "dataset_names",
    "open_named",
]


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to read one torchvision data set: its class, the arguments of each split, where its
    images are (``layout`` of the ``data`` array, or ``"items"``: read item by item), its label
    attribute, and where its files go under ``root`` (for the error message)."""

    cls: str
    train: dict[str, Any]
    test: dict[str, Any]
    layout: str
    files: str
    labels: str | None = "targets"
    transpose: bool = False
    crop: int | None = None
    image_size: int | None = None


def _emnist(split: str) -> TorchvisionSpec:
    return TorchvisionSpec(
        "EMNIST",
        {"split": split, "train": True},
        {"split": split, "train": False},
        "NHW",
        "EMNIST/raw",
        transpose=True,
    )


#: Names → torchvision data sets (besides :data:`~ppl_vae.data.DATASETS`, which have offline
#: mirrors).
TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "kmnist": TorchvisionSpec("KMNIST", {"train": True}, {"train": False}, "NHW", "KMNIST/raw"),
    "qmnist": TorchvisionSpec("QMNIST", {"what": "train"}, {"what": "test"}, "NHW", "QMNIST/raw"),
    "emnist": _emnist("balanced"),
    **{f"emnist-{s}": _emnist(s) for s in ("byclass", "bymerge", "letters", "digits", "mnist")},
    "usps": TorchvisionSpec("USPS", {"train": True}, {"train": False}, "NHW", "."),
    "cifar10": TorchvisionSpec(
        "CIFAR10", {"train": True}, {"train": False}, "NHWC", "cifar-10-batches-py"
    ),
    "cifar100": TorchvisionSpec(
        "CIFAR100", {"train": True}, {"train": False}, "NHWC", "cifar-100-python"
    ),
    "svhn": TorchvisionSpec(
        "SVHN", {"split": "train"}, {"split": "test"}, "NCHW", ".", labels="labels"
    ),
    "stl10": TorchvisionSpec(
        "STL10", {"split": "train"}, {"split": "test"}, "NCHW", "stl10_binary", labels="labels"
    ),
    "celeba": TorchvisionSpec(
        "CelebA",
        {"split": "train"},
        {"split": "test"},
        "items",
        "celeba",
        labels=None,
        crop=148,
        image_size=64,
    ),
}


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower())


def dataset_names() -> tuple[str, ...]:
    """Every data set name :func:`~ppl_vae.load_dataset` knows."""
    return (*DATASETS, *TORCHVISION_DATASETS)


def canonical_name(name: str) -> str | None:
    """The data set a name means (``"CIFAR-10"`` → ``"cifar10"``), or None."""
    squashed = _squash(str(name))
    for known in dataset_names():
        if _squash(known) == squashed:
            return known
    return None


def _download_hint(cls: type) -> str:
    """Where torchvision downloads ``cls``'s files from, read off the class's own attributes."""
    urls: list[str] = []
    files: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, str):
            if obj.startswith(("http://", "https://")):
                urls.append(obj)
            elif "." in obj and "/" not in obj and not re.fullmatch(r"[0-9a-f]{32}", obj):
                files.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    for attr in ("url", "urls", "mirrors", "resources", "split_list", "file_list", "filename"):
        walk(getattr(cls, attr, None))
    out = []
    if urls:
        out.append("from " + ", ".join(dict.fromkeys(urls)))
    elif files:
        out.append("from the addresses in its class attributes")
    if files:
        out.append("files: " + ", ".join(dict.fromkeys(files)))
    return "; ".join(out)


def open_named(
    key: str,
    root: Path,
    *,
    download: bool,
    verbose: bool,
    size: tuple[int, int] | None,
    kind: str | None,
    say: Callable[[str], None],
) -> tuple[Items, Items]:
    """(train items, test items) of the data set ``key`` (a :func:`canonical_name`)."""
    if kind == "table":
        raise DataError(f"{key} is a data set of images; kind='table' does not apply")
    if key in DATASETS:
        tr_x, tr_y, te_x, te_y = read_mirrored(key, root, download, verbose)
        return (
            ArrayItems(tr_x, key, layout="NHW", kind="images", size=size, labels=tr_y),
            ArrayItems(te_x, key, layout="NHW", kind="images", size=size, labels=te_y),
        )
    spec = TORCHVISION_DATASETS[key]
    train, test = _torchvision_splits(key, spec, root, download=download, verbose=verbose)
    say(f"read with torchvision.datasets.{spec.cls} under {root}")
    train_items = _split_items(key, spec, train, "train", size)
    return train_items, _split_items(key, spec, test, "test", size)


def _torchvision_splits(
    key: str, spec: TorchvisionSpec, root: Path, *, download: bool, verbose: bool
) -> tuple[Any, Any]:
    """torchvision's train and test data sets of ``key``, or a :class:`DatasetNotFoundError`
    that says where their files go and where torchvision gets them."""
    from torchvision import datasets

    cls = getattr(datasets, spec.cls)
    where = (root / spec.files).resolve() if spec.files != "." else root.resolve()
    try:
        with quiet(not verbose):
            train = cls(str(root), download=download, **spec.train)
            test = cls(str(root), download=download, **spec.test)
    except ImportError:  # a reader torchvision needs (scipy for SVHN, ...): its own message
        raise
    except Exception as err:
        first = first_line(err)
        tried = (
            f"download failed ({type(err).__name__}: {first})"
            if download
            else f"no usable files ({first or type(err).__name__}) and download=False"
        )
        hint = _download_hint(cls)
        raise DatasetNotFoundError(
            f"could not find the {key} data set: torchvision.datasets.{spec.cls} looked under "
            f"{root.resolve()}: {tried}.\nTo get it: call load_dataset({key!r}, download=True) "
            "on a machine with internet access (torchvision downloads it"
            + (f" {hint}" if hint else "")
            + f"), or put its files there yourself, in torchvision's layout ({where}). Set "
            "PPL_VAE_DATA or pass root= to use another directory."
        ) from err
    return train, test


def _split_items(
    key: str, spec: TorchvisionSpec, ds: Any, part: str, size: tuple[int, int] | None
) -> Items:
    """One split of a torchvision data set as items: its ``data`` array, or item by item."""
    name = f"{key}[{part}]"
    if spec.layout == "items":
        return DatasetItems(ds, name, size=size or size_pair(spec.image_size), crop=spec.crop)
    x = ds.data
    if spec.transpose:
        x = x.transpose(1, 2) if isinstance(x, torch.Tensor) else x.transpose(0, 2, 1)
    y = labels_of(getattr(ds, spec.labels), len(x)) if spec.labels else None
    return ArrayItems(x, name, layout=spec.layout, kind="images", size=size, labels=y)
