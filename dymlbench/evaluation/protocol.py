"""The DyML evaluation protocols (Sun et al., CVPR 2021), exactly and in bounded memory.

Two protocols:

- **leave-one-out** (DyML-Product, and the validation split): one set of ``embeddings``
  ``[n, dim]`` with ``labels`` ``[n, n_levels]`` (column 0 the finest level); every item queries
  all the others. Binary metrics are computed at each level (relevant = same label at that
  level); with two or more levels, the multi-level metrics ``multi/ndcg``, ``multi/hap`` and
  ``multi/asi`` use the number of agreeing levels as the grade.
- **query/gallery** (DyML-Vehicle and DyML-Animal): one :class:`Benchmark` per level, each with
  its own query and gallery sets and single-column labels; relevant = same label.

Default rules (``mode="default"``):

- ranking by cosine similarity of L2-normalised float32 embeddings (never half precision; TF32
  is switched off on CUDA), the full gallery ranked for every query;
- a query's own entry is excluded by identity: by index in leave-one-out, and in query/gallery
  only where item ids are given (the gallery items whose id equals the query's);
- ties are broken pessimistically: among equal scores the less relevant item ranks first, so
  the result does not depend on the order of the gallery or on the chunk size;
- a query without any relevant item is left out of that level's means, and counted;
- ``overall/<metric>`` is the plain mean of the levels' values; means over queries are plain
  float64 means.

``mode="official"`` reproduces the evaluator of the official HAPPIER and MSA code where it
differs: for every query it drops the top-ranked item (in leave-one-out that is normally the
query itself; in query/gallery it is the query's nearest gallery item, assumed to be the query);
metrics are averaged per batch of 256 queries, and a batch whose mean is NaN (a query without a
relevant item gives NaN for ``map``, ``map@r`` and ``asi``) is skipped for that metric;
``overall/asi`` of a multi-level leave-one-out set also averages in ``multi/asi``. The pop
relevances of ``multi/hap`` count the query itself in both modes, as HAPPIER does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dymlbench.evaluation.metrics import (
    binary_metrics,
    cumulative_log_discounts,
    graded_metrics,
    harmonic_numbers,
    pop_relevances,
)
from dymlbench.evaluation.ranking import (
    ChunkRanks,
    GalleryIndex,
    rank_chunk_by_rows,
    rank_chunk_vectorised,
)
from dymlbench.evaluation.report import EvaluationReport
from dymlbench.hierarchy import LEVEL_NAMES, level_names

logger = logging.getLogger(__name__)

Mode = Literal["default", "official"]
MODES: tuple[str, ...] = ("default", "official")
Backend = Literal["exact", "faiss"]
BACKENDS: tuple[str, ...] = ("exact", "faiss")
OFFICIAL_BATCH_SIZE = 256
"""Queries per batch of the official evaluator's averaging."""
DEFAULT_MEMORY_BUDGET = 512 * 2**20
"""Bytes of working memory per chunk of queries when no chunk size is given."""
_BYTES_PER_SCORE = 40
_BYTES_PER_GRADED_ITEM = 80


@dataclass(frozen=True)
class Benchmark:
    """One query/gallery benchmark of a single level.

    Attributes:
        query_embeddings: float ``[n_query, dim]``.
        query_labels: int ``[n_query]`` (or ``[n_query, 1]``).
        gallery_embeddings: float ``[n_gallery, dim]``.
        gallery_labels: int ``[n_gallery]`` (or ``[n_gallery, 1]``).
        query_ids: optional item ids ``[n_query]``; a gallery item with the same id is the
            query's own entry and is excluded from its ranking.
        gallery_ids: optional item ids ``[n_gallery]``, given together with ``query_ids``.
    """

    query_embeddings: np.ndarray | torch.Tensor
    query_labels: np.ndarray | torch.Tensor
    gallery_embeddings: np.ndarray | torch.Tensor
    gallery_labels: np.ndarray | torch.Tensor
    query_ids: np.ndarray | None = None
    gallery_ids: np.ndarray | None = None


def evaluate_leave_one_out(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    mode: Mode = "default",
    recall_at: Sequence[int] = (1, 10, 20),
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    relevance_alpha: float = 1.0,
    backend: Backend = "exact",
) -> EvaluationReport:
    """Evaluate a leave-one-out set: every item queries all the others.

    Args:
        embeddings: float ``[n, dim]``; normalised here.
        labels: int ``[n, n_levels]`` (or ``[n]`` for one level), column 0 the finest.
        mode: ``"default"`` or ``"official"`` (see the module docstring).
        recall_at: the ``k`` of ``recall@k``.
        device: where to rank (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        chunk_size: queries ranked at a time; by default sized to a 512 MiB budget.
        relevance_alpha: exponent of the pop relevance of ``multi/hap``.
        backend: ``"exact"`` ranks the full gallery; ``"faiss"`` computes only ``recall@k``
            from a faiss top-k search (see :mod:`dymlbench.evaluation.knn`).

    Returns:
        The report: ``<level>/<metric>``, ``overall/<metric>`` and, with two or more levels,
        ``multi/<metric>``.

    Example:
        >>> points = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], dtype=np.float32)
        >>> emb = points[[0, 0, 1, 1, 2, 2]]
        >>> labels = np.array([[0, 0], [0, 0], [1, 0], [1, 0], [2, 1], [2, 1]])
        >>> report = evaluate_leave_one_out(emb, labels)
        >>> report.metrics["fine/map"], report.metrics["multi/ndcg"]
        (1.0, 1.0)
    """
    _check_mode(mode)
    _check_backend(backend, mode)
    ks = _check_recall_at(recall_at)
    embeddings = _as_embeddings(embeddings, "embeddings")
    labels = _as_labels(labels, "labels", n_rows=embeddings.shape[0], single_column=False)
    n_levels = labels.shape[1]
    names = level_names(n_levels)
    device = _resolve_device(device)

    emb = _normalise(embeddings, device)
    lab = labels.to(device)
    if backend == "faiss":
        rows = np.arange(embeddings.shape[0])
        per_query = _faiss_recall(emb, lab, emb, lab, names=names, recall_at=ks, own=(rows, rows))
        return _aggregate(per_query, names=names, mode=mode, protocol="leave_one_out")
    exclude = "top" if mode == "official" else "self"
    per_query = _rank_and_score(
        emb,
        lab,
        emb,
        lab,
        names=names,
        exclude=exclude,
        recall_at=ks,
        graded=n_levels >= 2,
        relevance_alpha=relevance_alpha,
        chunk_size=chunk_size,
    )
    report = _aggregate(per_query, names=names, mode=mode, protocol="leave_one_out")
    logger.debug("leave-one-out evaluation of %d items done", embeddings.shape[0])
    return report


def evaluate_benchmarks(
    benchmarks: Mapping[str, Benchmark],
    *,
    mode: Mode = "default",
    recall_at: Sequence[int] = (1, 10, 20),
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    backend: Backend = "exact",
) -> EvaluationReport:
    """Evaluate per-level query/gallery benchmarks (the DyML-Vehicle / Animal protocol).

    Args:
        benchmarks: level name (``fine``, ``middle``, ``coarse``) to its :class:`Benchmark`.
        mode: ``"default"`` or ``"official"`` (see the module docstring).
        recall_at: the ``k`` of ``recall@k``.
        device: where to rank.
        chunk_size: queries ranked at a time; by default sized to a 512 MiB budget.
        backend: ``"exact"`` ranks the full gallery; ``"faiss"`` computes only ``recall@k``.

    Returns:
        The report: ``<level>/<metric>`` per benchmark and ``overall/<metric>``, their mean.

    Example:
        >>> bench = Benchmark(
        ...     query_embeddings=np.eye(2, dtype=np.float32), query_labels=np.array([0, 1]),
        ...     gallery_embeddings=np.eye(2, dtype=np.float32)[[0, 1, 1]],
        ...     gallery_labels=np.array([0, 1, 1]))
        >>> evaluate_benchmarks({"fine": bench}).metrics["overall/map"]
        1.0
    """
    _check_mode(mode)
    _check_backend(backend, mode)
    ks = _check_recall_at(recall_at)
    if not benchmarks:
        raise ValueError("`benchmarks` must hold at least one level, but got none")
    unknown = sorted(set(benchmarks) - set(LEVEL_NAMES))
    if unknown:
        raise ValueError(f"benchmark levels must be among {list(LEVEL_NAMES)}, but got {unknown}")
    device = _resolve_device(device)

    names = tuple(name for name in LEVEL_NAMES if name in benchmarks)
    per_query: dict[str, np.ndarray] = {}
    for name in names:
        bench = benchmarks[name]
        query = _as_embeddings(bench.query_embeddings, f"{name}/query_embeddings")
        gallery = _as_embeddings(bench.gallery_embeddings, f"{name}/gallery_embeddings")
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"`{name}/query_embeddings` and `{name}/gallery_embeddings` must have the same "
                f"dimension, but got {query.shape[1]} and {gallery.shape[1]}"
            )
        query_labels = _as_labels(
            bench.query_labels, f"{name}/query_labels", n_rows=query.shape[0], single_column=True
        )
        gallery_labels = _as_labels(
            bench.gallery_labels,
            f"{name}/gallery_labels",
            n_rows=gallery.shape[0],
            single_column=True,
        )
        ids = _id_codes(bench, name, query.shape[0], gallery.shape[0])
        if backend == "faiss":
            values = _faiss_recall(
                _normalise(query, device),
                query_labels,
                _normalise(gallery, device),
                gallery_labels,
                names=(name,),
                recall_at=ks,
                own=_own_pairs(*ids) if ids is not None else None,
            )
            per_query.update(values)
            continue
        if ids is not None:
            ids = (ids[0].to(device), ids[1].to(device))
        exclude = "top" if mode == "official" else ("ids" if ids is not None else "none")
        values = _rank_and_score(
            _normalise(query, device),
            query_labels.to(device),
            _normalise(gallery, device),
            gallery_labels.to(device),
            names=(name,),
            exclude=exclude,
            ids=ids,
            recall_at=ks,
            graded=False,
            relevance_alpha=1.0,
            chunk_size=chunk_size,
        )
        per_query.update(values)
    return _aggregate(per_query, names=names, mode=mode, protocol="query_gallery")


def _rank_and_score(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    names: Sequence[str],
    exclude: Literal["self", "top", "ids", "none"],
    recall_at: Sequence[int],
    graded: bool,
    relevance_alpha: float,
    chunk_size: int | None,
    ids: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Per-query metric values (NaN where undefined) of every level, chunk by chunk."""
    n_query, n_gallery = query.shape[0], gallery.shape[0]
    device = query.device
    harmonic = harmonic_numbers(n_gallery, device=device)
    discounts = cumulative_log_discounts(n_gallery, device=device) if graded else None
    if chunk_size is None:
        per_row = (_BYTES_PER_SCORE + (_BYTES_PER_GRADED_ITEM if graded else 0)) * n_gallery
        chunk_size = max(1, DEFAULT_MEMORY_BUDGET // max(per_row, 1))
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be at least 1, but got {chunk_size}")

    index = GalleryIndex(gallery_labels.numpy()) if device.type == "cpu" else None
    n_threads = torch.get_num_threads()
    gallery_t = _transposed(gallery)
    columns: dict[str, list[torch.Tensor]] = {}
    for start, stop in _chunks(n_query, chunk_size):
        scores = _similarities(query[start:stop], gallery_t)
        n_kept = _exclude(scores, exclude, start, ids)
        chunk_labels = query_labels[start:stop]
        if index is not None:
            ranked = rank_chunk_by_rows(
                scores.numpy(),
                chunk_labels.numpy(),
                index,
                n_kept=n_kept.numpy(),
                graded=graded,
                # Dense levels spend their time in sorts that release the GIL; sparse ones are
                # bound by the interpreter, where threads only add overhead.
                n_threads=n_threads if index.has_dense_class else 1,
            )
        else:
            kept = scores != -math.inf
            ranked = rank_chunk_vectorised(
                scores, chunk_labels, gallery_labels, kept, graded=graded
            )

        score = functools.partial(
            _score_rows,
            ranked,
            names=names,
            recall_at=recall_at,
            harmonic=harmonic,
            discounts=discounts,
            relevance_alpha=relevance_alpha,
        )
        if index is None:
            blocks = [score(0, stop - start, None)]
        else:
            blocks = _map_in_threads(score, _row_blocks(ranked), n_threads)
        for block in blocks:
            for key, column in block.items():
                columns.setdefault(key, []).append(column)

    return {key: torch.cat(parts).cpu().numpy() for key, parts in columns.items()}


_BLOCK_ITEMS = 131_072
"""Ranked items per block of rows whose metrics one CPU thread computes: large enough to
amortise the per-operation overhead, small enough to stay in the cache."""


def _row_blocks(ranked: ChunkRanks) -> list[tuple[int, int, list[int]]]:
    """Split a chunk's rows into blocks of about :data:`_BLOCK_ITEMS` ranked items.

    Returns:
        ``(start, stop, first_items)`` per block: its rows, and for each ranking (the levels,
        then the graded one) the index of the block's first item.
    """
    rankings = [*ranked.levels, *([ranked.graded] if ranked.graded is not None else [])]
    counts = torch.stack([ranking.counts for ranking in rankings])
    ends = torch.cumsum(counts, 1)
    per_row = counts.sum(0)
    block_ids = (torch.cumsum(per_row, 0) - per_row) // _BLOCK_ITEMS
    _, sizes = torch.unique_consecutive(block_ids, return_counts=True)
    blocks, start = [], 0
    for size in sizes.tolist():
        firsts = ends[:, start - 1] if start else torch.zeros(len(rankings), dtype=torch.int64)
        blocks.append((start, start + size, firsts.tolist()))
        start += size
    return blocks


def _score_rows(
    ranked: ChunkRanks,
    start: int,
    stop: int,
    first_items: list[int] | None,
    *,
    names: Sequence[str],
    recall_at: Sequence[int],
    harmonic: torch.Tensor,
    discounts: torch.Tensor | None,
    relevance_alpha: float,
) -> dict[str, torch.Tensor]:
    """The per-query metrics of rows ``start:stop`` of a ranked chunk (all rows: ``None``)."""
    rankings = [*ranked.levels, *([ranked.graded] if ranked.graded is not None else [])]
    if first_items is not None:
        rankings = [
            ranking.select_rows(start, stop, first)
            for ranking, first in zip(rankings, first_items, strict=True)
        ]
    values: dict[str, torch.Tensor] = {}
    for name, level_ranks in zip(names, rankings[: len(names)], strict=True):
        for metric, column in binary_metrics(
            level_ranks, recall_at=recall_at, harmonic=harmonic
        ).items():
            values[f"{name}/{metric}"] = column
    if ranked.graded is not None:
        set_counts = ranked.set_counts[start:stop]
        relevances = pop_relevances(set_counts, n_levels=len(names), alpha=relevance_alpha)
        for metric, column in graded_metrics(
            rankings[-1],
            grade_counts=ranked.list_counts[start:stop],
            relevances=relevances,
            log_discounts=discounts,
            harmonic=harmonic,
        ).items():
            values[f"multi/{metric}"] = column
    return values


def _map_in_threads(
    score: Callable[[int, int, list[int]], dict[str, torch.Tensor]],
    blocks: list[tuple[int, int, list[int]]],
    n_threads: int,
) -> list[dict[str, torch.Tensor]]:
    """``score`` over ``blocks`` in order, on up to ``n_threads`` threads.

    torch releases the GIL inside its operations, so the threads run in parallel; its own
    intra-op threads are switched off meanwhile (several threads each fanning out to every
    core would oversubscribe them).
    """
    if n_threads <= 1 or len(blocks) <= 1:
        return [score(*block) for block in blocks]
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(n_threads, len(blocks))) as pool:
            return list(pool.map(lambda block: score(*block), blocks))
    finally:
        torch.set_num_threads(n_threads)


def _faiss_recall(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    names: Sequence[str],
    recall_at: Sequence[int],
    own: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """Per-query ``recall@k`` of every level from a faiss top-k search."""
    from dymlbench.evaluation.knn import top_k_recall

    values = top_k_recall(
        query.cpu().numpy(),
        query_labels.cpu().numpy(),
        gallery.cpu().numpy(),
        gallery_labels.cpu().numpy(),
        recall_at=recall_at,
        own_pairs=own,
        use_gpu=query.device.type == "cuda",
    )
    return {
        f"{name}/recall@{k}": values[level][:, column]
        for level, name in enumerate(names)
        for column, k in enumerate(recall_at)
    }


def _own_pairs(
    query_codes: torch.Tensor, gallery_codes: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """``(query_rows, gallery_items)`` of every gallery item whose id equals its query's."""
    query_codes, gallery_codes = query_codes.cpu().numpy(), gallery_codes.cpu().numpy()
    order = np.argsort(gallery_codes, kind="stable")
    low = np.searchsorted(gallery_codes[order], query_codes, side="left")
    high = np.searchsorted(gallery_codes[order], query_codes, side="right")
    rows = np.repeat(np.arange(query_codes.size), high - low)
    starts = np.repeat(low, high - low)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(high - low) - (high - low), high - low)
    return rows, order[starts + offsets]


def _transposed(gallery: torch.Tensor) -> torch.Tensor:
    """The gallery as a contiguous ``[dim, n_gallery]`` matrix, the fast layout for BLAS."""
    return gallery.T.contiguous()


def _similarities(query: torch.Tensor, gallery_t: torch.Tensor) -> torch.Tensor:
    """float32 cosine similarities ``[n_query, n_gallery]`` of normalised embeddings."""
    if query.device.type == "cpu":
        # NumPy's OpenBLAS is faster than torch's CPU BLAS for this product on most machines.
        return torch.from_numpy(query.numpy() @ gallery_t.numpy())
    with _full_precision_matmul(query.device):
        return query @ gallery_t


@contextlib.contextmanager
def _full_precision_matmul(device: torch.device) -> Iterator[None]:
    """Switch TF32 off for the similarity products on CUDA: scores stay true float32."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _exclude(
    scores: torch.Tensor,
    exclude: str,
    start: int,
    ids: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Give the items a query does not rank the score ``-inf``; return how many each ranks."""
    n_rows, n_gallery = scores.shape
    rows = torch.arange(n_rows, device=scores.device)
    if exclude == "self":
        scores[rows, rows + start] = -math.inf
    elif exclude == "top":
        # The official evaluator's first-ranked item; the lowest index among tied maxima.
        scores[rows, scores.argmax(dim=1)] = -math.inf
    elif exclude == "ids":
        query_ids, gallery_ids = ids
        own = gallery_ids[None, :] == query_ids[start : start + n_rows, None]
        scores.masked_fill_(own, -math.inf)
        return n_gallery - own.sum(1)
    n_excluded = 0 if exclude == "none" else 1
    return torch.full((n_rows,), n_gallery - n_excluded, device=scores.device)


def _aggregate(
    per_query: dict[str, np.ndarray], *, names: Sequence[str], mode: str, protocol: str
) -> EvaluationReport:
    """Means over queries, the overall means over levels, and the query counts."""
    metrics: dict[str, float] = {}
    n_queries: dict[str, int] = {}
    n_skipped: dict[str, int] = {}
    for key, values in per_query.items():
        group = key.split("/", 1)[0]
        undefined = np.isnan(values)
        n_queries[group] = int(values.size)
        n_skipped[group] = int(undefined.sum())
        if mode == "official":
            metrics[key] = _official_mean(key, values)
        else:
            metrics[key] = float(values[~undefined].mean()) if (~undefined).any() else math.nan

    metric_names = [key.split("/", 1)[1] for key in per_query if key.startswith(f"{names[0]}/")]
    for metric in metric_names:
        parts = [metrics[f"{name}/{metric}"] for name in names]
        if mode == "official" and metric == "asi" and "multi/asi" in metrics:
            parts.append(metrics["multi/asi"])
        metrics[f"overall/{metric}"] = float(np.mean(parts))
    for key, value in metrics.items():
        if math.isnan(value):
            logger.warning("`%s` is undefined: no query has a relevant item", key)
    return EvaluationReport(
        metrics=metrics,
        n_queries=n_queries,
        n_skipped_queries=n_skipped,
        mode=mode,
        protocol=protocol,
        per_query=per_query,
    )


def _official_mean(key: str, values: np.ndarray) -> float:
    """The official averaging: per 256-query batch, NaN batches skipped, weighted by size."""
    if key.split("/", 1)[1].startswith("recall@"):
        values = np.nan_to_num(values, nan=0.0)
    total, weight = 0.0, 0
    for start in range(0, values.size, OFFICIAL_BATCH_SIZE):
        batch = values[start : start + OFFICIAL_BATCH_SIZE]
        mean = float(np.float32(batch.mean(dtype=np.float64)))
        if not math.isnan(mean):
            total += mean * batch.size
            weight += batch.size
    return total / weight if weight else math.nan


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, but got {mode!r}")


def _check_backend(backend: str, mode: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {list(BACKENDS)}, but got {backend!r}")
    if backend == "faiss" and mode == "official":
        raise ValueError(
            "`backend` 'faiss' must go with mode 'default', but got mode 'official'; the "
            "official evaluator's rules need the exact backend"
        )


def _check_recall_at(recall_at: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(recall_at)
    if not ks or any(not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise ValueError(f"`recall_at` must be positive integers, but got {list(recall_at)}")
    return tuple(sorted(set(int(k) for k in ks)))


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"`device` must be available, but got {str(device)!r} on a machine without CUDA; "
            "use `--device cpu`"
        )
    return device


def _as_embeddings(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 2-d array [n, dim], but got shape {tuple(tensor.shape)}"
        )
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"`{name}` must hold floating-point values, but got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        n_bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(f"`{name}` must be finite, but {n_bad} rows hold NaN or inf")
    if (tensor.norm(dim=1) == 0).any():
        raise ValueError(f"`{name}` must have no all-zero row (it has no direction to rank by)")
    return tensor


def _as_labels(
    array: np.ndarray | torch.Tensor, name: str, *, n_rows: int, single_column: bool
) -> torch.Tensor:
    values = array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.dtype.kind not in "iu":
        if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0):
            values = values.astype(np.int64)
        else:
            raise TypeError(f"`{name}` must hold integer labels, but got dtype {values.dtype}")
    if values.ndim == 1:
        values = values[:, None]
    max_columns = 1 if single_column else len(LEVEL_NAMES)
    if values.ndim != 2 or values.shape[0] != n_rows or not 1 <= values.shape[1] <= max_columns:
        expected = f"[{n_rows}]" + (" or [n, 1]" if single_column else f" or [{n_rows}, n_levels]")
        raise ValueError(f"`{name}` must have shape {expected}, but got {values.shape}")
    return torch.from_numpy(values.astype(np.int64))


def _id_codes(
    bench: Benchmark, name: str, n_query: int, n_gallery: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Item ids as integer codes shared by query and gallery, or None without ids."""
    if bench.query_ids is None and bench.gallery_ids is None:
        return None
    if bench.query_ids is None or bench.gallery_ids is None:
        given = "query_ids" if bench.query_ids is not None else "gallery_ids"
        raise ValueError(
            f"`{name}/query_ids` and `{name}/gallery_ids` must be given together, "
            f"but only `{name}/{given}` is"
        )
    query_ids, gallery_ids = np.asarray(bench.query_ids), np.asarray(bench.gallery_ids)
    for key, ids, n in (
        ("query_ids", query_ids, n_query),
        ("gallery_ids", gallery_ids, n_gallery),
    ):
        if ids.shape != (n,):
            raise ValueError(f"`{name}/{key}` must have shape [{n}], but got {ids.shape}")
    _, codes = np.unique(np.concatenate([query_ids, gallery_ids]), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64))
    return codes[:n_query], codes[n_query:]


def _normalise(embeddings: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.to(device), dim=1)
