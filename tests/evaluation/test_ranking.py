"""The two ranking kernels (row by row on CPU, vectorised on CUDA) against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dymlbench.evaluation.ranking import (
    GalleryIndex,
    order_keys,
    rank_chunk_by_rows,
    rank_chunk_vectorised,
)


def _chunk(seed: int, n_rows: int = 7, n_gallery: int = 40):
    rng = np.random.default_rng(seed)
    # Scores on a coarse grid tie often; one excluded item per row.
    scores = (rng.integers(-4, 5, size=(n_rows, n_gallery)) / 4).astype(np.float32)
    fine = rng.integers(0, 8, size=n_gallery)
    gallery_labels = np.stack([fine, fine // 2, fine // 4], axis=1)
    query_fine = rng.integers(0, 9, size=n_rows)  # class 8 has no gallery item
    query_labels = np.stack([query_fine, query_fine // 2, query_fine // 4], axis=1)
    excluded = rng.integers(0, n_gallery, size=n_rows)
    scores[np.arange(n_rows), excluded] = -np.inf
    return scores, query_labels, gallery_labels


def _brute_force(scores, query_labels, gallery_labels):
    """Ranks from a full sort by (score descending, agreeing levels ascending)."""
    out = []
    for row, labels in zip(scores, query_labels, strict=True):
        agreement = (gallery_labels == labels).sum(1)
        order = sorted(range(row.size), key=lambda j: (-row[j], agreement[j]))
        ranked = [j for j in order if row[j] > -np.inf]
        levels = [
            [rank for rank, j in enumerate(ranked, 1) if gallery_labels[j, level] == labels[level]]
            for level in range(labels.size)
        ]
        graded = [(rank, agreement[j]) for rank, j in enumerate(ranked, 1) if agreement[j] > 0]
        out.append((levels, graded))
    return out


def _per_row(ranks, n_rows):
    return [ranks.ranks[ranks.rows == row].tolist() for row in range(n_rows)]


@pytest.mark.parametrize("kernel", ["by_rows", "by_rows_threaded", "vectorised"])
@pytest.mark.parametrize("seed", range(8))
def test_kernels_match_brute_force(kernel: str, seed: int) -> None:
    scores, query_labels, gallery_labels = _chunk(seed)
    n_kept = (scores > -np.inf).sum(1)
    if kernel.startswith("by_rows"):
        ranked = rank_chunk_by_rows(
            scores.copy(),
            query_labels,
            GalleryIndex(gallery_labels),
            n_kept=n_kept,
            graded=True,
            n_threads=3 if kernel.endswith("threaded") else 1,
        )
    else:
        tensor = torch.from_numpy(scores.copy())
        ranked = rank_chunk_vectorised(
            tensor,
            torch.from_numpy(query_labels),
            torch.from_numpy(gallery_labels),
            tensor != -math.inf,
            graded=True,
        )

    expected = _brute_force(scores, query_labels, gallery_labels)
    n_rows = scores.shape[0]
    for level in range(3):
        assert _per_row(ranked.levels[level], n_rows) == [levels[level] for levels, _ in expected]
    graded = ranked.graded
    got = [
        list(
            zip(
                graded.ranks[graded.rows == row].tolist(),
                graded.grades[graded.rows == row].tolist(),
                strict=True,
            )
        )
        for row in range(n_rows)
    ]
    assert got == [[(rank, int(grade)) for rank, grade in g] for _, g in expected]
    assert ranked.list_counts.sum(1).tolist() == n_kept.tolist()
    assert (ranked.set_counts.sum(1) == scores.shape[1]).all()


def test_order_keys_keep_the_float_order() -> None:
    values = torch.tensor([-math.inf, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, math.inf])
    keys = order_keys(values)
    assert torch.all(keys[1:] >= keys[:-1])
    assert keys[3] == keys[4]
    assert len(set(keys.tolist())) == values.numel() - 1
