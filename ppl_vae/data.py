"""Data sets as whole tensors on the training device, or as lazy ``Dataset``s when too large.

:func:`load_dataset` reads the built-in MNIST and Fashion-MNIST (below), a torchvision data set
by name, a folder of images, an array or table file, or any ``torch.utils.data.Dataset``
(:mod:`ppl_vae.sources` says how each is read, split and scaled), and returns an
:class:`ImageData`. :func:`default_likelihood` picks a likelihood that suits the data.

MNIST and Fashion-MNIST are small (60k + 10k images of 28×28 bytes), so they are read once into
memory and moved to the device in one go; training then indexes them with :func:`batches` instead
of going through a ``DataLoader`` (no worker processes, no per-batch host→device copies).

For these two, :func:`load_dataset` reads the data through :func:`ppl_vae.mnist.read_mirrored`:
torchvision's cache under ``root``, else its download, else an offline mirror
(:mod:`ppl_vae.mirrors`); :class:`DatasetNotFoundError` says what was tried and how to get the
data when none works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

# Re-exported so that ``from ppl_vae.data import ...`` keeps working. The mirror code looks up
# ``DEBIAN_FASHION_MNIST_DIR`` and the md5 tables in ppl_vae.mirrors: patch them (in tests) there.
from .errors import DataError
from .mirrors import DEBIAN_FASHION_MNIST_DIR, IDX_FILES, DatasetIntegrityError
from .mnist import DATASETS, DatasetNotFoundError, default_root, read_mirrored

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_FILES",
    "KINDS",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "ImageData",
    "LazySubset",
    "binarize",
    "check_8bit",
    "default_likelihood",
    "default_root",
    "dequantize",
    "load_dataset",
    "read_mirrored",
]

# --------------------------------------------------------------------------------------------
# The data set: tensors on the device, or lazy Datasets
# --------------------------------------------------------------------------------------------

#: What an :class:`ImageData` holds: ``"images"`` (``(C, H, W)`` data points) or ``"table"``
#: (rows of ``D`` numbers, data points of shape ``(D,)``).
KINDS: tuple[str, ...] = ("images", "table")


class LazySubset(Subset):
    """A :class:`~torch.utils.data.Subset` of a lazy data set that keeps its ``item_shape``
    and ``value_range`` (what :class:`ImageData` and :func:`default_likelihood` read)."""

    @property
    def item_shape(self) -> tuple[int, ...]:
        return _item_shape(self.dataset)

    @property
    def value_range(self) -> tuple[float, float] | None:
        return getattr(self.dataset, "value_range", None)


def _item_shape(x: torch.Tensor | Dataset) -> tuple[int, ...]:
    """Shape of one data point of a tensor (``x.shape[1:]``) or a data set (``item_shape``, else
    that of its first item)."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape[1:])
    shape = getattr(x, "item_shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(x, Subset):
        return _item_shape(x.dataset)
    item = x[0]
    if isinstance(item, tuple | list):
        item = item[0]
    return tuple(torch.as_tensor(item).shape)


def _size(x: torch.Tensor | Dataset) -> int:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else len(x)  # type: ignore[arg-type]


def _take(x: torch.Tensor | Dataset, n: int | None) -> torch.Tensor | Dataset:
    if n is None:
        return x
    if isinstance(x, torch.Tensor):
        return x[:n]
    return LazySubset(x, range(min(n, len(x))))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """Train and test data with their labels, on one device or read lazily.

    ``train_x``/``test_x`` are float32 tensors whose first dimension indexes the data points:
    images ``(N, C, H, W)`` with grey levels in ``[0, 1]`` (bytes divided by 255) for MNIST and
    image sources, or rows ``(N, D)`` of a table (``kind == "table"``, values as they were).
    Data too large for memory (:mod:`ppl_vae.sources`) are instead ``torch.utils.data.Dataset``s
    whose items are float32 CPU tensors of the same per-point shape (:attr:`in_memory` is then
    False); :func:`~ppl_vae.fit` streams those through a ``DataLoader``.

    ``train_y``/``test_y`` are ``(N,)`` int64 class labels, or None when the source has none.
    The class is immutable: :meth:`to` and :meth:`subset` return new instances (sharing storage
    where they can), so a loaded data set can be passed around without defensive copies.
    """

    name: str
    train_x: torch.Tensor | Dataset
    train_y: torch.Tensor | None
    test_x: torch.Tensor | Dataset
    test_y: torch.Tensor | None
    #: ``"images"`` or ``"table"`` (:data:`KINDS`): what :func:`default_likelihood` reads.
    kind: str = "images"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if y is not None and _size(x) != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split} has {_size(x)} data points but {y.shape[0]} labels"
                )

    def __repr__(self) -> str:
        shape = self.image_shape
        where = f"device={self.device}" if self.in_memory else "lazy"
        return (
            f"ImageData(name={self.name!r}, kind={self.kind!r}, "
            f"train={(_size(self.train_x), *shape)}, test={(_size(self.test_x), *shape)}, "
            f"dtype={getattr(self.train_x, 'dtype', torch.float32)}, {where})"
        )

    @property
    def in_memory(self) -> bool:
        """True when ``train_x`` and ``test_x`` are tensors (False: lazy ``Dataset``s)."""
        return isinstance(self.train_x, torch.Tensor) and isinstance(self.test_x, torch.Tensor)

    @property
    def device(self) -> torch.device:
        """The device the tensors live on (that of ``train_x``; CPU for lazy data)."""
        if isinstance(self.train_x, torch.Tensor):
            return self.train_x.device
        return torch.device("cpu")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one data point, read off the data: ``(C, H, W)`` for images (``(1, 28, 28)``
        for MNIST), ``(D,)`` for a table. What :func:`~ppl_vae.build_model` takes."""
        return _item_shape(self.train_x)

    @property
    def has_labels(self) -> bool:
        """Whether class labels are known (``train_y``/``test_y`` are not None)."""
        return self.train_y is not None

    def to(self, device: torch.device | str) -> ImageData:
        """Return a copy with every tensor moved to ``device`` (no copy if already there).

        Lazy ``Dataset``s stay as they are (their batches are moved when they are read)."""

        def move(t: Any) -> Any:
            return t.to(device) if isinstance(t, torch.Tensor) else t

        return dataclasses.replace(
            self,
            train_x=move(self.train_x),
            train_y=move(self.train_y),
            test_x=move(self.test_x),
            test_y=move(self.test_y),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> ImageData:
        """Keep the first ``n_train`` training and ``n_test`` test examples (``None``: all).

        Meant for quick runs and tests; the first examples of MNIST are a fair sample, so no
        shuffling is done (it would make the subset depend on a seed); the held-out split that
        :mod:`ppl_vae.sources` makes is already shuffled. Views, not copies.
        """
        for label, n in (("n_train", n_train), ("n_test", n_test)):
            if n is not None and n < 0:
                raise ValueError(f"{label} must be >= 0 or None, got {n}")

        def cut(y: torch.Tensor | None, n: int | None) -> torch.Tensor | None:
            return y if y is None or n is None else y[:n]

        return dataclasses.replace(
            self,
            train_x=_take(self.train_x, n_train),
            train_y=cut(self.train_y, n_train),
            test_x=_take(self.test_x, n_test),
            test_y=cut(self.test_y, n_test),
        )


def _value_range(x: torch.Tensor | Dataset, probe: int = 256) -> tuple[float, float] | None:
    """(min, max) of a tensor; of a lazy data set, its ``value_range`` when it knows it, else
    that of its first ``probe`` items. None for empty data."""
    if isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return None
        return float(x.min()), float(x.max())
    known = getattr(x, "value_range", None)
    if known is not None:
        return known
    n = min(probe, len(x))  # type: ignore[arg-type]
    if n == 0:
        return None
    items = [x[i] for i in range(n)]
    t = torch.stack([torch.as_tensor(i[0] if isinstance(i, tuple | list) else i) for i in items])
    return float(t.min()), float(t.max())


def default_likelihood(data: ImageData) -> tuple[str, dict[str, str]]:
    """The likelihood that suits ``data``, as ``(name, likelihood_kwargs)`` for
    :class:`~ppl_vae.ModelConfig` (and ``--likelihood``/``--likelihood-kwargs``):

    * ``("bernoulli", {})`` for images whose values lie in ``[0, 1]`` (what every image source
      gives: bytes are divided by 255): the usual cross-entropy of grey levels;
    * ``("gaussian-learned", {"link": "identity"})`` for tables and for data outside
      ``[0, 1]``: a Gaussian whose mean is unbounded (the default sigmoid link would confine it to
      ``[0, 1]``) and whose variance is learned per coordinate (floored, so it cannot collapse),
      since the noise level of a user's data is not known in advance.

    For a lazy data set the range is its ``value_range`` when the source knows it (image files,
    byte arrays) or else that of its first 256 items.
    """
    gaussian = ("gaussian-learned", {"link": "identity"})
    if data.kind == "table":
        return gaussian
    ranges = [r for r in (_value_range(data.train_x), _value_range(data.test_x)) if r is not None]
    if ranges and all(lo >= 0.0 and hi <= 1.0 for lo, hi in ranges):
        return "bernoulli", {}
    return gaussian


# --------------------------------------------------------------------------------------------
# Mini-batching and binarization
# --------------------------------------------------------------------------------------------


def check_8bit(x: torch.Tensor, what: str = "data") -> None:
    """Raise :class:`DataError` unless ``x`` holds 8-bit levels k/255 (what dequantization
    assumes)."""
    levels = x * 255
    off = float((levels - levels.round()).abs().max()) if x.numel() else 0.0
    if off > 1e-3 or float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError(
            f"dequantization needs 8-bit images (values k/255 in [0, 1]); {what} are not "
            f"(a value is {off:.3g} of a level away): pass dequantize=False / --dequantize off"
        )


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit levels x = k/255: y = (k + u) / 256 with u ~ U(0, 1).

    A continuous density p(y) on [0, 1]^D then bounds the probability of the discrete image:
    log P(k) ≥ E_u[log p(y)] − D·log 256 (Theis et al., 2016), so continuous likelihoods are
    scored on a scale where they cannot grow without bound and compare with each other in bits
    per dimension of the 8-bit data. Uniforms come from ``generator`` (on its device).
    """
    rand_device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=rand_device, dtype=x.dtype)
    return ((x * 255).round() + u.to(x.device)) / 256


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: an independent Bernoulli(``x``) draw per pixel.

    Drawing fresh binary images each time they are used (rather than thresholding once) is the
    standard way to fit Bernoulli likelihoods to grey-level MNIST without overfitting to one
    arbitrary binarization. The result has ``x``'s dtype and device and holds only 0 and 1.
    Uniforms are drawn on the generator's device (``x.device`` if no generator), so a CPU
    generator can drive data on a GPU reproducibly.
    """
    rand_device = generator.device if generator is not None else x.device
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    u = torch.rand(x.shape, generator=generator, device=rand_device, dtype=dtype)
    return (u.to(x.device) < x).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _to_image_data(
    name: str,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
) -> ImageData:
    """uint8 ``(N, H, W)`` images → float32 ``(N, 1, H, W)`` in ``[0, 1]`` on ``device``.

    The bytes are moved first and converted on the device: a quarter of the transfer.
    """
    tr_x, tr_y, te_x, te_y = tensors

    def grey(x: torch.Tensor) -> torch.Tensor:
        return x.to(device).unsqueeze(1).to(torch.float32).div_(255.0)

    return ImageData(
        name=name,
        train_x=grey(tr_x),
        train_y=tr_y.to(device=device, dtype=torch.int64),
        test_x=grey(te_x),
        test_y=te_y.to(device=device, dtype=torch.int64),
    )


def load_dataset(
    source: Any,
    root: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    download: bool = True,
    verbose: bool = True,
    image_size: int | tuple[int, int] | None = None,
    test: Any = None,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    in_memory: bool | None = None,
    max_bytes: int | None = None,
    kind: str | None = None,
) -> ImageData:
    """Load a data set into an :class:`ImageData` on ``device``.

    ``source`` is ``"mnist"`` or ``"fashion-mnist"`` (:data:`DATASETS`, read as described in
    the module docstring), the name of another torchvision data set (``"cifar10"``,
    ``"kmnist"``, ``"svhn"``, ``"celeba"``, ...: :data:`ppl_vae.sources.TORCHVISION_DATASETS`),
    a folder of images, a ``.npy``/``.npz``/``.pt``/``.csv``/``.tsv`` file, a tensor or array, or
    any ``torch.utils.data.Dataset``: :mod:`ppl_vae.sources` describes each and the options
    (``image_size`` resizes images; ``test`` gives a test set, else ``test_fraction`` of the data
    is held out with ``split_seed``; ``in_memory``/``max_bytes`` choose between tensors on the
    device and lazy ``Dataset``s; ``kind`` = ``"images"``/``"table"`` overrides the guess).
    ``root`` (default :func:`default_root`) is where named data sets are cached. With
    ``verbose`` one short line per step goes to stderr.

    Raises :class:`DatasetNotFoundError` when a named data set has no files and cannot be
    downloaded, :class:`DatasetIntegrityError` when an offline mirror does not match the
    published md5 sums, and :class:`~ppl_vae.errors.DataError` (with the fix) for data that
    cannot be used or a source that is neither a name nor an existing path.
    """
    from . import sources  # imports this module: imported here, not at the top

    name = sources.canonical_name(source) if isinstance(source, str) else None
    plain = image_size is None and in_memory is not False and test is None
    if name in DATASETS and plain and kind in (None, "images"):
        device = torch.device(device)
        return _to_image_data(name, read_mirrored(name, root, download, verbose), device)
    return sources.load_source(
        source,
        root,
        device=device,
        download=download,
        verbose=verbose,
        image_size=image_size,
        test=test,
        test_fraction=test_fraction,
        split_seed=split_seed,
        in_memory=in_memory,
        max_bytes=max_bytes,
        kind=kind,
    )
