"""Folders of image files as data (PNG, JPEG, BMP, GIF, TIFF, WebP).

:func:`open_folder` finds the images (recursively, hidden files skipped), reads only each one's
header to learn its size and mode, labels images by class sub-folder (``ImageFolder`` layout),
honours a ``train/``+``test/`` split, and refuses an empty folder, one without images, or images
of several sizes without ``image_size`` (listing the sizes). :class:`FileItems` then decodes
files only when their data points are asked for, so a folder larger than memory can be read
lazily. :func:`pil_to_tensor` (how a PIL image becomes numbers) also serves :mod:`.datasets`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .items import Items, resize, shape_text

__all__ = ["IMAGE_EXTENSIONS", "FileItems", "open_folder", "pil_to_tensor"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)


def _is_grey(im: Any) -> bool:
    if im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16"):
        return True
    if im.mode in ("P", "PA"):
        pal = im.getpalette() or []
        return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return False


def pil_to_tensor(im: Any, channels: int | None = None) -> torch.Tensor:
    """A PIL image as float32 ``(C, H, W)``: bytes / 255, 16-bit grey / 65535, ``F``-mode floats
    as they are; ``channels`` 1 (grey) or 3 (RGB), by default what the image is."""
    grey = _is_grey(im)
    if channels is None:
        channels = 1 if grey else 3
    if channels == 3 and grey:  # a grey image among colour ones: its grey levels, three times
        return pil_to_tensor(im, 1).expand(3, -1, -1).clone()
    if channels == 3:
        arr, scale = np.asarray(im.convert("RGB")), 255.0
    elif im.mode.startswith("I;16") or im.mode == "I":
        arr, scale = np.asarray(im).astype(np.float32), 65535.0
    elif im.mode == "F":
        arr, scale = np.asarray(im, dtype=np.float32), None
    else:
        arr, scale = np.asarray(im.convert("L")), 255.0
    t = torch.from_numpy(np.array(arr))  # a writable copy
    t = t.permute(2, 0, 1) if t.dim() == 3 else t.unsqueeze(0)
    t = t.to(torch.float32)
    return t / scale if scale is not None else t


def _read_image(path: Path, channels: int) -> torch.Tensor:
    """One image file as float32 ``(C, H, W)`` (:func:`pil_to_tensor`)."""
    from PIL import Image

    with Image.open(path) as im:
        return pil_to_tensor(im, channels)


class FileItems(Items):
    """Image files, read one by one (the header of each was read to know its size and mode)."""

    def __init__(
        self,
        files: list[Path],
        name: str,
        *,
        channels: int,
        hw: tuple[int, int],
        size: tuple[int, int] | None,
        labels: torch.Tensor | None,
        floats: bool,
    ) -> None:
        self.files, self.name, self.channels, self.size = files, name, channels, size
        self.n, self.kind, self.labels = len(files), "images", labels
        self.item_shape = (channels, *(size or hw))
        self.bounds = None if floats else (0.0, 1.0)
        self.value_range = self.bounds

    def get(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            x = _read_image(path, self.channels)
        except Exception as err:
            raise DataError(f"cannot read the image {path}: {type(err).__name__}: {err}") from err
        x = resize(x.unsqueeze(0), self.size, self.bounds)[0]
        if self.bounds is None and not bool(torch.isfinite(x).all()):
            raise DataError(f"the image {path} holds NaN or infinite values; fix or remove it")
        if tuple(x.shape) != self.item_shape:
            raise DataError(
                f"{path} is {shape_text(x.shape[1:])}, not {shape_text(self.item_shape[1:])} as "
                "its header said when the folder was read; was the file changed since?"
            )
        return x

    def take(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = torch.empty((len(idx), *self.item_shape), dtype=torch.float32)
        for k, i in enumerate(idx.tolist()):
            out[k] = self.get(i)
        y = None if self.labels is None else self.labels[idx].to(device)
        return out.to(device), y


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder``, recursively, sorted, hidden ones (and in hidden folders) skipped."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        out.append(p)
    return sorted(out)


def _class_folders(folder: Path, files: list[Path]) -> list[str] | None:
    """Class names when every image is in a sub-folder one level down (ImageFolder layout)."""
    parts = [f.relative_to(folder).parts for f in files]
    if not parts or any(len(p) != 2 for p in parts):
        return None
    return sorted({p[0] for p in parts})


def _image_files(folder: Path) -> tuple[list[Path], list[tuple[int, int]], list[bool], bool]:
    """The image files of ``folder`` with each one's (H, W), greyness, and whether any holds
    floats; refuses an empty folder or one without images."""
    from PIL import Image, UnidentifiedImageError

    everything = _visible_files(folder)
    files = [p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        if not everything:
            raise DataError(
                f"the folder {folder} is empty: put the images (PNG or JPEG, any depth of "
                "sub-folders) in it, or give another folder"
            )
        others = ", ".join(str(p.relative_to(folder)) for p in everything[:5])
        raise DataError(
            f"the folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched "
            f"recursively) but {len(everything)} other files ({others}"
            f"{', ...' if len(everything) > 5 else ''}). Give the folder of the images, or the "
            "file itself for arrays and tables"
        )
    hws, greys, floats = [], [], False
    for p in files:
        try:
            with Image.open(p) as im:
                w, h = im.size
                greys.append(_is_grey(im))
                floats = floats or im.mode == "F"
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(
                f"{p} is not an image that PIL can read ({err}); remove or convert it"
            ) from err
        hws.append((h, w))
    return files, hws, greys, floats


def _check_one_size(folder: Path, files: list[Path], hws: list[tuple[int, int]]) -> None:
    counts = Counter(hws)
    if len(counts) <= 1:
        return
    example = {}
    for p, hw in zip(files, hws, strict=True):
        example.setdefault(hw, p.relative_to(folder))
    listed = "; ".join(
        f"{n} of {shape_text(hw)} (e.g. {example[hw]})" for hw, n in counts.most_common(6)
    )
    more = f"; and {len(counts) - 6} other sizes" if len(counts) > 6 else ""
    h, w = counts.most_common(1)[0][0]
    raise DataError(
        f"the images in {folder} are not all one size (height×width): {listed}{more}. Pass "
        f"image_size=(H, W) — or an int for square images; --image-size on the command line — "
        f"to resize them all, e.g. image_size=({h}, {w})"
    )


def open_folder(folder: Path, size: tuple[int, int] | None) -> tuple[FileItems, FileItems | None]:
    """(train items, test items or None) of a folder of images: its ``train/`` and ``test/``
    sub-folders when it has both, else the whole folder (split later)."""
    subdirs = {}
    if folder.is_dir():
        subdirs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    if "train" in subdirs and "test" in subdirs:
        parts = [("train", subdirs["train"]), ("test", subdirs["test"])]
    else:
        parts = [("", folder)]
    scanned = [(label, sub, *_image_files(sub)) for label, sub in parts]
    channels = 1 if all(all(g) for *_, g, _f in scanned) else 3
    classes: list[str] | None = []
    for _label, sub, files, _hws, _g, _f in scanned:
        found = _class_folders(sub, files)
        classes = None if found is None or classes is None else sorted({*classes, *found})
    out = []
    for label, sub, files, hws, _g, floats in scanned:
        if size is None:
            _check_one_size(sub, files, hws)
        y = None
        if classes:
            index = {c: i for i, c in enumerate(classes)}
            y = torch.tensor([index[f.relative_to(sub).parts[0]] for f in files])
        out.append(
            FileItems(
                files,
                f"{folder.name}[{label}]" if label else folder.name,
                channels=channels,
                hw=hws[0],
                size=size,
                labels=y,
                floats=floats,
            )
        )
    return out[0], (out[1] if len(out) > 1 else None)
