"""Tables as data: ``.csv`` and ``.tsv`` files of numbers.

:func:`table_items` reads a table whole into the :class:`~.arrays.ArrayItems` of its rows (never
scaled; a table larger than memory is better saved as a ``.npy``, which is memory-mapped). The
reader is written out rather than left to ``numpy.loadtxt`` so that each refusal names the
fix: the delimiter is detected, a header row is allowed, and text cells (by column and line),
ragged rows and rows with missing or infinite values (by row and file line) are refused.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .arrays import ArrayItems, array_items, check_not_labels
from .items import nan_message

__all__ = ["TABLE_EXTENSIONS", "table_items"]

TABLE_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv")


def table_items(path: Path, *, kind: str | None, size: tuple[int, int] | None) -> ArrayItems:
    """The rows of the table file ``path`` (``kind`` may only be None or ``"table"``, and
    ``size`` None: it is refused with a message)."""
    if kind == "images":
        raise DataError(f"{path} is a table; kind='images' does not apply")
    table = torch.from_numpy(_read_table(path).astype(np.float32))
    check_not_labels(path.name, table, kind)
    return array_items(table, path.name, kind="table", size=size)


_MISSING = {"", "na", "nan", "n/a", "null", "none", "?", "-nan"}


def _parse_cell(cell: str) -> float | None:
    s = cell.strip()
    if s.lower() in _MISSING:
        return math.nan
    try:
        return float(s)
    except ValueError:
        return None


def _read_table(path: Path) -> np.ndarray:
    """A numeric CSV/TSV as float64 ``(N, D)``; a header row is allowed; refuses text cells,
    ragged rows and (naming them) rows with missing or infinite values."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [(no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"the table {path} is empty")
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t ").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.reader([line for _, line in lines], delimiter=delimiter))
    header = None
    first = [_parse_cell(c) for c in rows[0]]
    if any(v is None for v in first):
        header, rows, lines = rows[0], rows[1:], lines[1:]
    if not rows:
        raise DataError(f"the table {path} has a header but no rows")
    width = len(header) if header is not None else len(rows[0])
    numbers = np.empty((len(rows), width), dtype=np.float64)
    bad_text: list[tuple[int, int, str]] = []
    for r, ((no, _), row) in enumerate(zip(lines, rows, strict=True)):
        if len(row) != width:
            raise DataError(
                f"{path}: line {no} has {len(row)} cells but the table has {width} columns; "
                "every row needs one value per column"
            )
        for c, cell in enumerate(row):
            v = _parse_cell(cell)
            if v is None:
                bad_text.append((no, c, cell))
                v = math.nan
            numbers[r, c] = v
    if bad_text:
        cols = sorted({c for _, c, _ in bad_text})
        named = ", ".join(
            f"{c} ({header[c]!r})" if header is not None else str(c) for c in cols[:8]
        )
        no, c, cell = bad_text[0]
        raise DataError(
            f"the table {path} is not numeric: {len(bad_text)} cells hold text, in columns "
            f"{named} (numbered from 0), first on line {no}: {cell!r}. Every cell must be a "
            "number: drop those columns or encode them (e.g. one-hot) first"
        )
    lines_no = [no for no, _ in lines]
    finite = np.isfinite(numbers).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise DataError(nan_message(path.name, bad, len(rows), "table", [lines_no[i] for i in bad]))
    return numbers
