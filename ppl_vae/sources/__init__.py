"""Bring your own data: every source :func:`ppl_vae.load_dataset` reads besides MNIST's mirrors.

Sources
-------
``source`` may be

* **the name of a torchvision data set** (:data:`TORCHVISION_DATASETS`; case, ``-`` and ``_``
  do not matter: ``"cifar10"``, ``"CIFAR-100"``, ``"kmnist"``, ``"emnist-letters"``, ``"svhn"``,
  ``"stl10"``, ``"celeba"``, ...). torchvision's own class reads the files under ``root``
  (default :func:`~ppl_vae.data.default_root`) and, with ``download=True``, downloads them
  first. When they are absent and cannot be downloaded,
  :class:`~ppl_vae.data.DatasetNotFoundError` says where the files go and where they come from.
  These data sets have their own test split. EMNIST's images are transposed back to the upright
  orientation (torchvision keeps the files' transposed layout); CelebA's are centre-cropped to
  148×148 and resized to 64×64 unless ``image_size`` says otherwise.
* **a folder of images** (PNG, JPEG, BMP, GIF, TIFF, WebP; searched recursively, hidden files
  skipped, other files ignored). Grey images stay one channel; when any image is in colour, all
  are read as RGB (three channels); alpha is dropped; 16-bit grey images are divided by 65535.
  With ``image_size`` (an int for square images, or ``(H, W)``) every image is resized to it
  (bilinear with antialiasing; the aspect ratio is not kept); without it all images must have
  one size. Images in sub-folders (one level: ``cats/1.png``, ``dogs/2.png``, as
  ``torchvision.datasets.ImageFolder`` expects) are labelled by sub-folder, in sorted order. A
  folder that holds ``train/`` and ``test/`` sub-folders gives its own split.
* **an array file**: ``.npy`` (memory-mapped), ``.npz`` or ``.pt``/``.pth``, holding images
  ``(N, H, W)`` (grey), ``(N, C, H, W)`` or ``(N, H, W, C)`` (channels last when the last
  dimension is at most 4 and the second is larger), or a table ``(N, D)`` of rows; a 1-D array
  of non-integers is a table of one column. A ``.npz`` or a ``.pt`` dict holds the data under
  one of ``x``, ``data``, ``images``, ``X``, ``features``, ``arr_0`` (or is a single array) and,
  optionally, labels under ``y``, ``labels``, ``targets``; or a split under ``train``/``test``,
  ``x_train``/``x_test`` (labels ``y_train``/``y_test``) or ``train_x``/``test_x``. A ``.pt``
  may also hold a tensor or an ``(x, y)`` pair.
* **a table file**: ``.csv`` or ``.tsv`` of numbers (the delimiter is detected, a header row is
  allowed; an empty cell or ``NA``/``nan``/``null``/``?`` is a missing value, which is refused).
* **a tensor or numpy array**, read like an array file, or **any ``torch.utils.data.Dataset``**
  whose items are tensors, arrays or PIL images, or ``(x, label, ...)`` tuples, or dicts with
  the data under ``"image"``/``"x"``/``"data"`` and a label under ``"label"``/``"y"``/
  ``"target"``. Its ``targets`` attribute, or the items' labels, give the labels. An
  ``IterableDataset`` is read whole into memory.

A string that is a data set name means the data set; to read a file or folder of that name,
pass a ``pathlib.Path`` or a path with a directory part (``"./cifar10"``).

Values
------
Images are scaled to ``[0, 1]``: uint8 values divided by 255, uint16 by 65535; float images are
kept as they are (:func:`~ppl_vae.data.default_likelihood` then picks a Gaussian if they are
not in ``[0, 1]``). Tables are never scaled. Data points are float32. ``kind="images"`` or
``kind="table"`` overrides the guess from the shape (and turns off the labels check below).

Held-out split
--------------
A source with its own test split keeps it; ``test=`` gives another source as the test set;
otherwise ``test_fraction`` of the data points (default 0.1, rounded, at least one each side;
0 gives an empty test set) are held out, drawn by a generator seeded with ``split_seed`` alone,
each side kept in the source's order.

Data larger than memory
-----------------------
The data become float32 tensors on ``device`` (the fast path: indexed, no ``DataLoader``) when
they fit: when ``N × prod(shape) × 4`` bytes, train and test together, is at most ``max_bytes``,
by default :func:`memory_budget` (a quarter of the machine's physical memory and, on CUDA, at
most half the GPU's free memory). Otherwise, or with ``in_memory=False``, the splits are lazy
:class:`SourceDataset`\\ s that read, convert and resize data points when asked (from the image
files, the memory-mapped ``.npy`` or the user's data set): float32 CPU tensors of the final
shape, which :func:`~ppl_vae.fit` streams through a ``DataLoader``. ``in_memory=True`` forces
tensors. MNIST and Fashion-MNIST always fit.

Errors
------
Data that cannot be used raise :class:`~ppl_vae.errors.DataError` (a ``ValueError``) naming the
fix: an empty folder or one without images, images of several sizes and no ``image_size``, a
table with text cells, rows with NaN or infinite values (listed), a labels array passed as the
data, an array of an unusable shape, a source that is neither a data set name nor an existing
file or folder (the names are listed).

Layout
------
One module per kind of source, each saying only how to read its data points as
:class:`~.items.Items`: :mod:`.torchvision_sets` (names), :mod:`.folders` (image files),
:mod:`.arrays` (array files, tensors), :mod:`.tables` (CSV/TSV), :mod:`.datasets` (a user's
``Dataset``); :mod:`.items` holds what they share and the lazy :class:`SourceDataset`;
:mod:`.load` dispatches, splits and chooses between memory and lazy reading.
"""

from __future__ import annotations

from .arrays import ARRAY_EXTENSIONS
from .folders import IMAGE_EXTENSIONS
from .items import SourceDataset
from .load import load_source, memory_budget
from .tables import TABLE_EXTENSIONS
from .torchvision_sets import TORCHVISION_DATASETS, TorchvisionSpec, canonical_name, dataset_names

__all__ = [
    "ARRAY_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "TABLE_EXTENSIONS",
    "TORCHVISION_DATASETS",
    "SourceDataset",
    "TorchvisionSpec",
    "canonical_name",
    "dataset_names",
    "load_source",
    "memory_budget",
]
