"""Reading the embeddings file of ``dymlbench eval``.

The file is a NumPy ``.npz`` archive in one of two layouts (DESIGN.md):

- one leave-one-out set: ``embeddings`` float32 ``[n, dim]`` and ``labels`` int64
  ``[n, n_levels]``, column 0 the finest level; every item queries all the others;
- per-level benchmarks: for each level name ``L`` in ``fine``, ``middle``, ``coarse`` that is
  present, ``L/query_embeddings``, ``L/query_labels``, ``L/gallery_embeddings``,
  ``L/gallery_labels`` (labels ``[n]`` or ``[n, 1]``), and optionally ``L/query_ids`` and
  ``L/gallery_ids`` to exclude a query's own gallery entry by identity.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dymlbench.evaluation.protocol import (
    Benchmark,
    Mode,
    evaluate_benchmarks,
    evaluate_leave_one_out,
)
from dymlbench.evaluation.report import EvaluationReport
from dymlbench.hierarchy import LEVEL_NAMES

BENCHMARK_ARRAYS: tuple[str, ...] = (
    "query_embeddings",
    "query_labels",
    "gallery_embeddings",
    "gallery_labels",
)
OPTIONAL_BENCHMARK_ARRAYS: tuple[str, ...] = ("query_ids", "gallery_ids")


def load_embeddings_file(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray] | dict[str, Benchmark]:
    """Read and check an embeddings file.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(embeddings, labels)`` for a leave-one-out file, or the benchmarks by level name.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an ``.npz`` archive, or an array is missing, unknown or
            has the wrong shape (the message names the array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path}: must be a NumPy .npz archive (np.savez), but could not be read: {error}"
        ) from error
    with archive:
        arrays = {key: archive[key] for key in archive.files}

    if "embeddings" in arrays or "labels" in arrays:
        for key in ("embeddings", "labels"):
            if key not in arrays:
                raise ValueError(
                    f"{path}: a leave-one-out file must hold `{key}`, but it is missing"
                )
        extra = sorted(set(arrays) - {"embeddings", "labels", "ids"})
        if extra:
            raise ValueError(
                f"{path}: a leave-one-out file holds `embeddings`, `labels` (and optional `ids`),"
                f" but got unknown arrays {extra}"
            )
        return arrays["embeddings"], arrays["labels"]

    benchmarks: dict[str, Benchmark] = {}
    known = set(BENCHMARK_ARRAYS) | set(OPTIONAL_BENCHMARK_ARRAYS)
    for key in sorted(arrays):
        level, _, name = key.partition("/")
        if level not in LEVEL_NAMES or name not in known:
            raise ValueError(
                f"{path}: array `{key}` is not part of the format; expected `embeddings` and "
                f"`labels`, or `<level>/<array>` with level in {list(LEVEL_NAMES)} and array in "
                f"{list(BENCHMARK_ARRAYS + OPTIONAL_BENCHMARK_ARRAYS)}"
            )
    for level in LEVEL_NAMES:
        present = [name for name in BENCHMARK_ARRAYS if f"{level}/{name}" in arrays]
        if not present:
            continue
        missing = [f"{level}/{name}" for name in BENCHMARK_ARRAYS if name not in present]
        if missing:
            raise ValueError(
                f"{path}: benchmark `{level}` must hold {missing}, but they are missing"
            )
        benchmarks[level] = Benchmark(
            **{name: arrays[f"{level}/{name}"] for name in BENCHMARK_ARRAYS},
            query_ids=arrays.get(f"{level}/query_ids"),
            gallery_ids=arrays.get(f"{level}/gallery_ids"),
        )
    if not benchmarks:
        raise ValueError(
            f"{path}: must hold `embeddings` and `labels`, or benchmark arrays "
            "`<level>/query_embeddings` ..., but holds no array of either layout"
        )
    return benchmarks


def evaluate_file(
    path: str | os.PathLike[str],
    *,
    mode: Mode = "default",
    recall_at: Sequence[int] = (1, 10, 20),
    device: str = "cpu",
    chunk_size: int | None = None,
    backend: str = "exact",
) -> EvaluationReport:
    """Evaluate an embeddings file with the protocol its layout selects.

    Errors name the file and the array that is wrong.
    """
    content = load_embeddings_file(path)
    try:
        if isinstance(content, dict):
            return evaluate_benchmarks(
                content,
                mode=mode,
                recall_at=recall_at,
                device=device,
                chunk_size=chunk_size,
                backend=backend,
            )
        embeddings, labels = content
        return evaluate_leave_one_out(
            embeddings,
            labels,
            mode=mode,
            recall_at=recall_at,
            device=device,
            chunk_size=chunk_size,
            backend=backend,
        )
    except (ValueError, TypeError) as error:
        raise type(error)(f"{path}: {error}") from error
