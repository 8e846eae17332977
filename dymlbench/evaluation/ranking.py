"""Ranks of the relevant gallery items of each query, without an argsort of the gallery.

Every metric of the DyML protocol depends on a query's ranking only through the ranks of its
relevant items. This module computes those ranks for a chunk of queries at once:

1. the similarity rows are sorted by value (``numpy.sort`` on CPU, a vectorised sort that is
   several times faster than an argsort; ``torch.sort`` on CUDA), and turned into one flat,
   ascending array of integer keys ``(row << 32) | order_key(score)``;
2. the relevant items of all rows are gathered into one flat array, sorted by the same kind of
   key (with the match level in the lowest bits where levels are graded);
3. one ``searchsorted`` of the relevant keys into the gallery keys counts, for every relevant
   item, how many gallery items score at least as high.

Ties are broken pessimistically: among items with an equal score, the less relevant items rank
first (for graded relevance: fewer matching levels first). The result is then independent of the
order of the gallery, and for the same scores a chunked evaluation equals an unchunked one bit
for bit. (The scores themselves come from a float32 matrix product, whose last bit may depend on
the number of rows a BLAS call gets.)

Vocabulary: ``scores`` ``[n_rows, n_gallery]`` float32 similarities of a chunk of queries;
``relevant`` a boolean mask of the same shape; excluded items (a query's own entry) carry the
score ``-inf`` and are never relevant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_SCORE_BITS = 32
_SCORE_MASK = (1 << _SCORE_BITS) - 1


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 keys in ``[0, 2**32)`` with the same order.

    ``-0.0`` and ``0.0`` map to the same key, so equal floats always give equal keys.

    Args:
        scores: float32 tensor of any shape, without NaN.

    Returns:
        An int64 tensor of the same shape.

    Example:
        >>> keys = order_keys(torch.tensor([-2.0, -0.0, 0.0, 0.5, float("inf")]))
        >>> bool((keys[1:] >= keys[:-1]).all()), bool(keys[1] == keys[2])
        (True, True)
    """
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32)
    flipped = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return flipped.to(torch.int64) + 2**31


def sort_rows(scores: torch.Tensor) -> torch.Tensor:
    """Sort each row of ``scores`` ascending, by value only.

    On CPU this uses ``numpy.sort``, whose vectorised quicksort is much faster than
    ``torch.sort`` there; on other devices ``torch.sort``.
    """
    if scores.device.type == "cpu":
        return torch.from_numpy(np.sort(scores.numpy(), axis=1))
    return torch.sort(scores, dim=1).values


def _searchsorted(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Left insertion points of ``keys`` in the 1-d ascending ``sorted_keys``."""
    if sorted_keys.device.type == "cpu":
        return torch.from_numpy(np.searchsorted(sorted_keys.numpy(), keys.numpy(), side="left"))
    return torch.searchsorted(sorted_keys, keys, side="left")


def _sort_flat(keys: torch.Tensor) -> torch.Tensor:
    if keys.device.type == "cpu":
        return torch.from_numpy(np.sort(keys.numpy(), kind="quicksort"))
    return torch.sort(keys).values


def gallery_keys(scores: torch.Tensor) -> torch.Tensor:
    """Flat ascending keys ``(row << 32) | order_key(score)`` of a chunk of score rows.

    Args:
        scores: float32 ``[n_rows, n_gallery]``.

    Returns:
        int64 ``[n_rows * n_gallery]``, ascending.
    """
    n_rows = scores.shape[0]
    keys = order_keys(sort_rows(scores))
    row_base = torch.arange(n_rows, device=scores.device, dtype=torch.int64) << _SCORE_BITS
    keys += row_base[:, None]
    return keys.view(-1)


@dataclass(frozen=True)
class RelevantRanks:
    """Ranks of the relevant items of a chunk of queries, grouped by query.

    Items are ordered by query row, and within a row from the best ranked to the worst.

    Attributes:
        rows: int64 ``[n_relevant]``, the query row (within the chunk) of each relevant item.
        ranks: int64 ``[n_relevant]``, 1-based rank of the item in its query's gallery.
        positions: int64 ``[n_relevant]``, 1-based position among its row's relevant items.
        grades: int64 ``[n_relevant]``, the item's match level (1 for binary relevance).
        counts: int64 ``[n_rows]``, number of relevant items of each row.
    """

    rows: torch.Tensor
    ranks: torch.Tensor
    positions: torch.Tensor
    grades: torch.Tensor
    counts: torch.Tensor

    def select_rows(self, start: int, stop: int, first_item: int) -> RelevantRanks:
        """The items of rows ``start:stop``, their rows renumbered from 0.

        Args:
            start: first row.
            stop: row after the last.
            first_item: index of the first item of row ``start`` (the items of the rows
                before it), so that a caller splitting many rows need not recount.
        """
        counts = self.counts[start:stop]
        items = slice(first_item, first_item + int(counts.sum()))
        return RelevantRanks(
            rows=self.rows[items] - start,
            ranks=self.ranks[items],
            positions=self.positions[items],
            grades=self.grades[items],
            counts=counts,
        )


def relevant_ranks(
    scores: torch.Tensor,
    sorted_keys: torch.Tensor,
    grades: torch.Tensor,
) -> RelevantRanks:
    """Rank every relevant item of every query row.

    Args:
        scores: float32 ``[n_rows, n_gallery]`` similarities, ``-inf`` for excluded items.
        sorted_keys: ``gallery_keys(scores)``, shared by every relevance of the same scores.
        grades: integer ``[n_rows, n_gallery]`` match levels, 0 for irrelevant and excluded
            items; a boolean mask for binary relevance.

    Returns:
        The ranks, see :class:`RelevantRanks`.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1, 0.5, 0.5]])
        >>> grades = torch.tensor([[0, 1, 1, 0]])
        >>> out = relevant_ranks(scores, gallery_keys(scores), grades)
        >>> out.ranks.tolist()  # the tie at 0.5 puts the irrelevant item first
        [3, 4]
    """
    n_rows, n_gallery = scores.shape
    device = scores.device
    grades = grades.to(torch.int64)
    grade_bits = max(1, int(grades.max().item()).bit_length()) if grades.numel() else 1

    rows, cols = torch.nonzero(grades, as_tuple=True)
    item_grades = grades[rows, cols]
    # Ascending keys order the items by row, then by score from the highest, then by grade
    # from the lowest: among equal scores the less relevant item ranks first (pessimistic).
    inverted = _SCORE_MASK - order_keys(scores[rows, cols])
    keys = _sort_flat(
        (rows << (_SCORE_BITS + grade_bits)) | (inverted << grade_bits) | item_grades
    )

    row_shift = _SCORE_BITS + grade_bits
    rows = keys >> row_shift
    inverted = (keys >> grade_bits) & _SCORE_MASK
    item_grades = keys & ((1 << grade_bits) - 1)
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    positions = torch.arange(rows.numel(), device=device) - starts[rows] + 1

    # Gallery items of the row scoring at least as high as the item, the item included ...
    score_keys = _SCORE_MASK - inverted
    at_least = (rows + 1) * n_gallery - _searchsorted(
        sorted_keys, (rows << _SCORE_BITS) | score_keys
    )
    # ... less the relevant ones among them, plus the relevant ones ranked before it. A carry
    # out of the score bits lands on the next row's first key, which is the right bound.
    relevant_at_least = (
        _searchsorted(keys, (rows << row_shift) + ((inverted + 1) << grade_bits)) - starts[rows]
    )
    ranks = at_least - relevant_at_least + positions
    return RelevantRanks(
        rows=rows, ranks=ranks, positions=positions, grades=item_grades, counts=counts
    )


@dataclass(frozen=True)
class ChunkRanks:
    """The ranks a chunk of queries needs for every metric.

    Attributes:
        levels: one :class:`RelevantRanks` per label column (binary relevance: same label).
        graded: ranks of the items agreeing on at least one level, graded by how many, or None
            when only binary metrics are computed.
        set_counts: int64 ``[n_rows, n_levels + 1]``, items of the whole set (excluded items
            included) at each match level; None without graded ranks.
        list_counts: int64 ``[n_rows, n_levels + 1]``, the same over the ranked list only.
    """

    levels: list[RelevantRanks]
    graded: RelevantRanks | None
    set_counts: torch.Tensor | None
    list_counts: torch.Tensor | None


def rank_chunk_vectorised(
    scores: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    kept: torch.Tensor,
    *,
    graded: bool,
) -> ChunkRanks:
    """Rank a chunk with whole-matrix tensor operations (the kernel used on CUDA).

    Args:
        scores: float32 ``[n_rows, n_gallery]``, ``-inf`` where ``kept`` is False.
        query_labels: int64 ``[n_rows, n_levels]``.
        gallery_labels: int64 ``[n_gallery, n_levels]``.
        kept: bool ``[n_rows, n_gallery]``, False for the items a query does not rank.
        graded: also rank by the number of agreeing levels.

    Returns:
        The ranks of the chunk.
    """
    keys = gallery_keys(scores)
    agreement = torch.zeros_like(scores, dtype=torch.int64) if graded else None
    levels = []
    for level in range(query_labels.shape[1]):
        same = gallery_labels[None, :, level] == query_labels[:, level, None]
        levels.append(relevant_ranks(scores, keys, same & kept))
        if agreement is not None:
            agreement += same
    if agreement is None:
        return ChunkRanks(levels=levels, graded=None, set_counts=None, list_counts=None)

    n_levels = query_labels.shape[1]
    set_counts = _grade_counts(agreement, n_levels)
    agreement[~kept] = 0
    list_counts = _grade_counts(agreement, n_levels)
    list_counts[:, 0] = kept.sum(1) - list_counts[:, 1:].sum(1)
    return ChunkRanks(
        levels=levels,
        graded=relevant_ranks(scores, keys, agreement),
        set_counts=set_counts,
        list_counts=list_counts,
    )


def _grade_counts(agreement: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Items at each match level ``0..n_levels`` per row: int64 ``[n_rows, n_levels + 1]``."""
    n_rows = agreement.shape[0]
    offsets = torch.arange(n_rows, device=agreement.device)[:, None] * (n_levels + 1)
    flat = torch.bincount((agreement + offsets).view(-1), minlength=n_rows * (n_levels + 1))
    return flat.view(n_rows, n_levels + 1)


class GalleryIndex:
    """The gallery items of every class at every level, for the row-by-row kernel.

    Args:
        labels: int ``[n_gallery, n_levels]`` gallery labels.
        cache_items: graded member lists are kept, keyed by the query's label row, up to this
            many items in all (5 bytes each).
    """

    def __init__(self, labels: np.ndarray, *, cache_items: int = 2**23) -> None:
        self.n_gallery, self.n_levels = labels.shape
        self._members: list[dict[int, np.ndarray]] = []
        for level in range(self.n_levels):
            order = np.argsort(labels[:, level], kind="stable")
            classes, starts, counts = np.unique(
                labels[order, level], return_index=True, return_counts=True
            )
            self._members.append(
                {
                    int(label): order[start : start + count]
                    for label, start, count in zip(classes, starts, counts, strict=True)
                }
            )
        largest = max(
            (int(count) for members in self._members for count in map(len, members.values())),
            default=0,
        )
        self.has_dense_class = largest * _DENSE_SHARE > self.n_gallery
        """Whether some class takes the dense path, whose sorts run well in parallel threads."""
        self._graded: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._cache_items = cache_items
        self._cached_items = 0
        self._empty = np.zeros(0, dtype=np.int64)

    def members(self, level: int, label: int) -> np.ndarray:
        """Indices of the gallery items with ``label`` at ``level``."""
        return self._members[level].get(int(label), self._empty)

    def graded_members(self, label_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gallery items agreeing with ``label_row`` on at least one level, and on how many."""
        key = tuple(int(label) for label in label_row)
        found = self._graded.get(key)
        if found is None:
            parts = [self.members(level, label) for level, label in enumerate(key)]
            items, grades = np.unique(np.concatenate(parts), return_counts=True)
            found = (items.astype(np.int32), grades.astype(np.int8))
            if self._cached_items + items.size > self._cache_items:
                self._graded.clear()
                self._cached_items = 0
            self._graded[key] = found
            self._cached_items += items.size
        return found


def rank_chunk_by_rows(
    scores: np.ndarray,
    query_labels: np.ndarray,
    index: GalleryIndex,
    *,
    n_kept: np.ndarray,
    graded: bool,
    n_threads: int = 1,
) -> ChunkRanks:
    """Rank a chunk one query at a time with NumPy (the kernel used on CPU).

    A query's relevant items are ranked against the gallery items that could precede them: the
    items scoring at least as high as its worst relevant item (for a useful embedding a small
    part of the gallery) are sorted once and serve every level and the graded ranking. A query
    with a single ranking in which a large share of the gallery is relevant instead sorts the
    relevant and the other items apart and counts them against each other.

    Args:
        scores: float32 ``[n_rows, n_gallery]``, ``-inf`` for excluded items.
        query_labels: int ``[n_rows, n_levels]``.
        index: the gallery's :class:`GalleryIndex`.
        n_kept: int ``[n_rows]``, gallery items each query ranks (not excluded).
        graded: also rank by the number of agreeing levels.
        n_threads: rows are shared among this many threads (NumPy releases the GIL in sorts).

    Returns:
        The ranks of the chunk, equal to :func:`rank_chunk_vectorised`'s.
    """
    n_rows, n_gallery = scores.shape
    n_levels = query_labels.shape[1]
    parts = np.array_split(np.arange(n_rows), max(1, min(n_threads, n_rows)))
    if len(parts) == 1:
        results = [_rank_rows(scores, query_labels, index, parts[0], graded)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            results = list(
                pool.map(lambda rows: _rank_rows(scores, query_labels, index, rows, graded), parts)
            )

    levels = [
        _assemble([ranks for result in results for ranks in result[0][level]], None)
        for level in range(n_levels)
    ]
    if not graded:
        return ChunkRanks(levels=levels, graded=None, set_counts=None, list_counts=None)
    graded_ranks = [item for result in results for item in result[1]]
    set_counts = np.concatenate([result[2] for result in results])
    list_counts = np.concatenate([result[3] for result in results])
    set_counts[:, 0] = n_gallery - set_counts[:, 1:].sum(1)
    list_counts[:, 0] = n_kept - list_counts[:, 1:].sum(1)
    return ChunkRanks(
        levels=levels,
        graded=_assemble([ranks for ranks, _ in graded_ranks], [g for _, g in graded_ranks]),
        set_counts=torch.from_numpy(set_counts),
        list_counts=torch.from_numpy(list_counts),
    )


_DENSE_SHARE = 8
"""A single ranking whose relevant items exceed 1/8 of the gallery sorts both sides apart."""


def _rank_rows(
    scores: np.ndarray,
    query_labels: np.ndarray,
    index: GalleryIndex,
    row_ids: np.ndarray,
    graded: bool,
) -> tuple[list[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    n_gallery = scores.shape[1]
    n_levels = query_labels.shape[1]
    level_parts: list[list[np.ndarray]] = [[] for _ in range(n_levels)]
    graded_parts: list[tuple[np.ndarray, np.ndarray]] = []
    set_counts = np.zeros((row_ids.size, n_levels + 1), dtype=np.int64)
    list_counts = np.zeros((row_ids.size, n_levels + 1), dtype=np.int64)

    for out_row, row_id in enumerate(row_ids):
        row = scores[row_id]
        member_lists = [
            index.members(level, query_labels[row_id, level]) for level in range(n_levels)
        ]
        graded_values = None
        if graded:
            items, grades = index.graded_members(query_labels[row_id])
            values = row[items]
            ranked = values > -np.inf
            set_counts[out_row] = np.bincount(grades, minlength=n_levels + 1)
            list_counts[out_row] = np.bincount(grades[ranked], minlength=n_levels + 1)
            graded_values, graded_grades = _graded_order(values[ranked], grades[ranked])
        # A level with as many items as the graded list has the same items (its members are
        # part of that list): its scores, and so its ranks, are the graded ones.
        rankings = [
            graded_values
            if graded_values is not None and members.size == items.size
            else np.sort(_finite(row[members]))[::-1]
            for members in member_lists
        ]
        if graded_values is not None:
            rankings.append(graded_values)

        if len(rankings) == 1 and member_lists[0].size * _DENSE_SHARE > n_gallery:
            level_parts[0].append(_ranks_against(_others(row, member_lists[0]), rankings[0]))
            continue
        # One sort of every item that can precede a relevant one serves all the rankings.
        lowest = min((values[-1] for values in rankings if values.size), default=np.inf)
        candidates = row[row >= lowest]
        candidates.sort()
        computed: dict[int, np.ndarray] = {}
        for level, descending in enumerate(rankings):
            if id(descending) not in computed:
                computed[id(descending)] = _ranks_among(candidates, descending)
            if level < n_levels:
                level_parts[level].append(computed[id(descending)])
            else:
                graded_parts.append((computed[id(descending)], graded_grades))
    return level_parts, graded_parts, set_counts, list_counts


def _finite(values: np.ndarray) -> np.ndarray:
    return values[values > -np.inf]


def _others(row: np.ndarray, members: np.ndarray) -> np.ndarray:
    """The scores of the items not in ``members``, sorted ascending."""
    mask = np.ones(row.size, dtype=bool)
    mask[members] = False
    others = row[mask]
    others.sort()
    return others


def _ranks_among(candidates: np.ndarray, descending: np.ndarray) -> np.ndarray:
    """Ranks of relevant items (scores ``descending``) among sorted candidates, which hold
    every item scoring at least as high as the lowest of them, relevant ones included."""
    ascending = descending[::-1]
    # Ascending keys let NumPy's binary search narrow from the previous answer.
    at_least = candidates.size - np.searchsorted(candidates, ascending, side="left")[::-1]
    if not (descending[1:] == descending[:-1]).any():
        return at_least  # without ties, the relevant items at least as high are those before
    relevant_at_least = ascending.size - np.searchsorted(ascending, descending, side="left")
    return at_least - relevant_at_least + np.arange(1, descending.size + 1)


def _ranks_against(others: np.ndarray, descending: np.ndarray) -> np.ndarray:
    """Ranks of relevant items (scores ``descending``) given the sorted scores of all others;
    an other item with an equal score ranks first."""
    ahead = others.size - np.searchsorted(others, descending, side="left")
    return ahead + np.arange(1, descending.size + 1)


def _graded_order(values: np.ndarray, grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and grades best first: by score descending, ties by grade ascending."""
    bits = max(1, int(grades.max(initial=1)).bit_length())
    keys = (_numpy_order_keys(values) << bits) | ((1 << bits) - 1 - grades)
    keys.sort()
    keys = keys[::-1]
    return _numpy_from_order_keys(keys >> bits), (1 << bits) - 1 - (keys & ((1 << bits) - 1))


def _numpy_order_keys(values: np.ndarray) -> np.ndarray:
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) + 2**31


def _numpy_from_order_keys(keys: np.ndarray) -> np.ndarray:
    bits = (keys - 2**31).astype(np.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(np.float32)


def _assemble(ranks: list[np.ndarray], grades: list[np.ndarray] | None) -> RelevantRanks:
    counts = np.array([part.size for part in ranks], dtype=np.int64)
    rows = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    positions = np.arange(rows.size) - starts[rows] + 1
    flat = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    flat_grades = np.concatenate(grades) if grades else np.ones_like(flat)
    return RelevantRanks(
        rows=torch.from_numpy(rows),
        ranks=torch.from_numpy(flat.astype(np.int64)),
        positions=torch.from_numpy(positions),
        grades=torch.from_numpy(flat_grades.astype(np.int64)),
        counts=torch.from_numpy(counts),
    )
