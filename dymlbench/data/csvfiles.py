"""Readers for the label files of the released DyML layout.

Rows are fields separated by a comma and a space. A train file and the Product test file hold
``fname, coarse, middle, fine``; a benchmark file holds ``fname, label``. The released files have
their header line fused with the first record, with no line break between them::

    fname, coarse_id, middle_id, fine_id0.jpg, 3, 41, 12007
    1.jpg, 3, 41, 12011

pandas-based readers take that whole line as the header and lose the first image of every file.
:func:`read_label_file` recovers it, and also reads a file with an ordinary header line or no
header at all. Blank lines are skipped; every other line must be a record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymlbench.data.errors import DataFormatError, DataNotFoundError

logger = logging.getLogger(__name__)

HIERARCHY_COLUMNS: tuple[str, ...] = ("coarse", "middle", "fine")
"""Label columns of a train file and of the Product test file, in file order."""

BENCHMARK_COLUMNS: tuple[str, ...] = ("label",)
"""Label column of a benchmark ``query.csv`` or ``gallery.csv``."""

_KNOWN_HEADER_NAMES = (
    "fine_id",
    "fine_ids",
    "fine",
    "labels",
    "label",
    "label_id",
    "class_id",
    "class",
    "id",
)
_HEADER_NAME = re.compile(r"[A-Za-z_][A-Za-z_ ]*")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, eq=False, kw_only=True)
class LabelFile:
    """The records of one label file.

    Attributes:
        path: the file that was read.
        fnames: image file names, one per record, in file order.
        labels: int64 ``[n, n_levels]`` original ids, column 0 the finest level (the reverse
            of the file's column order).
        line_numbers: int64 ``[n]``, the 1-based line of each record.
        header: ``"fused"``, ``"ordinary"`` or ``"none"``: what the first line held.
    """

    path: Path
    fnames: tuple[str, ...]
    labels: np.ndarray
    line_numbers: np.ndarray
    header: str

    def row_names(self) -> list[str]:
        """A readable location per record, ``"<path> line <k>"``."""
        return [f"{self.path} line {line}" for line in self.line_numbers.tolist()]


def _fields(line: str) -> list[str]:
    return [field.strip() for field in line.split(",")]


def _expected(columns: Sequence[str]) -> str:
    return ", ".join(("fname", *columns))


def _is_header(fields: Sequence[str]) -> bool:
    """Header names have no dot (file names do) and are not integers."""
    return all("." not in field and not _INTEGER.fullmatch(field) for field in fields)


def _split_fused(token: str, image_dir: Path | None) -> tuple[str, str] | None:
    """Separate ``<last header name><first fname>`` into its two parts."""
    for name in _KNOWN_HEADER_NAMES:
        if token.lower().startswith(name) and len(token) > len(name):
            rest = token[len(name) :]
            if image_dir is None or (image_dir / rest).exists() or rest[0].isdigit():
                return token[: len(name)], rest
    if image_dir is not None:
        for cut in range(1, len(token)):
            if _HEADER_NAME.fullmatch(token[:cut]) and (image_dir / token[cut:]).is_file():
                return token[:cut], token[cut:]
    match = re.fullmatch(r"([A-Za-z_][A-Za-z_ ]*?)(\d.*)", token)
    if match:
        return match.group(1), match.group(2)
    return None


def read_label_file(
    path: str | Path, *, columns: Sequence[str], image_dir: str | Path | None = None
) -> LabelFile:
    """Read a DyML label file, recovering the record fused into its header line.

    Args:
        path: the ``label.csv``, ``query.csv`` or ``gallery.csv`` file.
        columns: the label column names in file order: :data:`HIERARCHY_COLUMNS` or
            :data:`BENCHMARK_COLUMNS`.
        image_dir: the folder of the file's images; used only to separate a fused header
            token whose header name is not one of the usual ones.

    Returns:
        The records, labels reordered finest first.

    Raises:
        DataNotFoundError: the file does not exist.
        DataFormatError: the file is empty, or a line is not a record (the message names the
            file, the line number and the expected fields).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "query.csv").write_text("fname, labels0.jpg, 17\\n1.jpg, 4\\n")
        >>> table = read_label_file(folder / "query.csv", columns=BENCHMARK_COLUMNS)
        >>> table.fnames, table.labels[:, 0].tolist(), table.header
        (('0.jpg', '1.jpg'), [17, 4], 'fused')
    """
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else None
    n_fields = 1 + len(columns)
    expected = _expected(columns)
    if not path.is_file():
        raise DataNotFoundError(
            f"the label file `{path}` must exist, but it was not found; check that "
            "`--data-dir` points at the dataset folder of the released layout"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"`{path}` must be UTF-8 text, but byte {error.start} is not; is it a label file?"
        ) from error

    fnames: list[str] = []
    rows: list[list[int]] = []
    line_numbers: list[int] = []
    header = "none"
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = _fields(line)
        if first:
            first = False
            if len(fields) == 2 * n_fields - 1 and _is_header(fields[: n_fields - 1]):
                parts = _split_fused(fields[n_fields - 1], image_dir)
                if parts is None:
                    raise DataFormatError(
                        f"line {number} of `{path}` must be the header `{expected}` fused "
                        f"with the first record, but its field {fields[n_fields - 1]!r} does "
                        "not split into a header name and a file name; put the first record "
                        "on its own line"
                    )
                header = "fused"
                fields = [parts[1], *fields[n_fields:]]
            elif len(fields) == n_fields and _is_header(fields):
                header = "ordinary"
                continue
        if len(fields) != n_fields:
            raise DataFormatError(
                f"line {number} of `{path}` must have {n_fields} fields `{expected}` "
                f"separated by ', ', but got {len(fields)}: {line.strip()!r}; fix or remove "
                "that line"
            )
        if not fields[0]:
            raise DataFormatError(
                f"line {number} of `{path}` must start with an image file name, but the "
                f"`fname` field is empty: {line.strip()!r}"
            )
        for name, field in zip(columns, fields[1:], strict=True):
            if not _INTEGER.fullmatch(field):
                raise DataFormatError(
                    f"line {number} of `{path}`: the `{name}` label must be an integer, but "
                    f"got {field!r} in {line.strip()!r}; fix that line"
                )
        fnames.append(fields[0])
        rows.append([int(field) for field in fields[1:]])
        line_numbers.append(number)

    if not fnames:
        what = "is empty" if header == "none" else "holds only a header line"
        raise DataFormatError(
            f"`{path}` must hold records `{expected}`, but the file {what} (line 1); "
            "restore it from the released archive"
        )
    labels = np.asarray(rows, dtype=np.int64)[:, ::-1].copy()
    logger.debug("read %d records from %s (header: %s)", len(fnames), path, header)
    return LabelFile(
        path=path,
        fnames=tuple(fnames),
        labels=labels,
        line_numbers=np.asarray(line_numbers, dtype=np.int64),
        header=header,
    )


def write_label_file(
    path: str | Path,
    fnames: Sequence[str],
    labels: np.ndarray,
    *,
    header: Sequence[str],
    fused: bool = True,
) -> None:
    """Write a label file in the released format (used by the toy generator and the tests).

    Args:
        path: the file to write.
        fnames: image file names ``[n]``.
        labels: integer ``[n, n_levels]`` original ids, column 0 the finest level; written in
            the reverse order, coarsest first, as the released files are.
        header: the header names, ``fname`` first.
        fused: write the header fused with the first record, as the released files are.
    """
    labels = np.asarray(labels).reshape(len(fnames), -1)
    if len(header) != 1 + labels.shape[1]:
        raise ValueError(f"`header` must have {1 + labels.shape[1]} names, but got {len(header)}")
    records = [
        ", ".join([fname, *(str(int(v)) for v in row[::-1])])
        for fname, row in zip(fnames, labels, strict=True)
    ]
    head = ", ".join(header)
    if fused and records:
        text = head + "\n".join(records) + "\n"
    else:
        text = head + "\n" + "\n".join(records) + "\n"
    Path(path).write_text(text, encoding="utf-8")
