"""Top-k search with faiss, for the metrics that need only the nearest items (``recall@k``).

The exact evaluator ranks the full gallery, which ``map``, ``map@r`` and ``asi`` need. Where only
``recall@k`` is wanted, a top-k search is enough: faiss's exact inner-product index
(``IndexFlatIP``, on GPU with faiss-gpu) finds the ``k`` most similar gallery items of every
query. One search serves every level of a multi-level set.

Differences from the exact evaluator, stated so that nobody mistakes one for the other: ties at
the k-th place are resolved by faiss (not pessimistically), and only ``recall@k`` is computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ValueError(
            "`backend` 'faiss' needs the faiss package: `pip install faiss-cpu` (or faiss-gpu), "
            "or use the exact backend"
        ) from error
    return faiss


def top_k_recall(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    recall_at: Sequence[int],
    own_pairs: tuple[np.ndarray, np.ndarray] | None,
    use_gpu: bool = False,
) -> dict[int, np.ndarray]:
    """``recall@k`` of every query at every level from one faiss top-k search.

    Args:
        query: float32 ``[n_query, dim]``, L2-normalised.
        query_labels: int ``[n_query, n_levels]``.
        gallery: float32 ``[n_gallery, dim]``, L2-normalised.
        gallery_labels: int ``[n_gallery, n_levels]``.
        recall_at: the ``k`` values.
        own_pairs: ``(query_rows, gallery_items)``, int ``[n_pairs]`` each: the gallery items
            that are a query's own entry and are not ranked; None for none.
        use_gpu: search on the GPU (needs faiss-gpu).

    Returns:
        For each level, float64 ``[n_query, len(recall_at)]``: 1.0 if a relevant item is among
        the top k, NaN for a query without any relevant item.

    Example:
        >>> emb = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
        >>> labels = np.array([[0], [0], [1], [2]])
        >>> own = (np.arange(4), np.arange(4))
        >>> top_k_recall(emb, labels, emb, labels, recall_at=(1,), own_pairs=own)[0][:, 0].tolist()
        [1.0, 1.0, nan, nan]
    """
    faiss = _faiss()
    n_query, n_gallery = query.shape[0], gallery.shape[0]
    own_rows, own_items = own_pairs if own_pairs is not None else (np.zeros(0, int),) * 2
    n_own = np.bincount(own_rows, minlength=n_query)
    depth = min(n_gallery, max(recall_at) + int(n_own.max(initial=0)))

    index = faiss.IndexFlatIP(gallery.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(query, dtype=np.float32), depth)

    # Move each row's own entries to the end, keeping the order of the others.
    codes = np.arange(n_query)[:, None] * n_gallery + neighbours
    dropped = np.isin(codes, own_rows * n_gallery + own_items)
    order = np.argsort(dropped, axis=1, kind="stable")
    neighbours = np.take_along_axis(neighbours, order, axis=1)
    kept_depth = depth - dropped.sum(1)

    out = {}
    for level in range(query_labels.shape[1]):
        relevant = gallery_labels[neighbours, level] == query_labels[:, level, None]
        n_relevant = _class_sizes(gallery_labels[:, level], query_labels[:, level])
        own_relevant = gallery_labels[own_items, level] == query_labels[own_rows, level]
        n_relevant = n_relevant - np.bincount(own_rows[own_relevant], minlength=n_query)
        values = np.zeros((n_query, len(recall_at)))
        for column, k in enumerate(recall_at):
            within = np.arange(depth)[None, :] < np.minimum(k, kept_depth)[:, None]
            values[:, column] = (relevant & within).any(1)
        values[n_relevant == 0] = math.nan
        out[level] = values
    return out


def _class_sizes(gallery_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Gallery items of each query's class."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    position = np.clip(np.searchsorted(classes, query_labels), 0, classes.size - 1)
    return np.where(classes[position] == query_labels, counts[position], 0)
