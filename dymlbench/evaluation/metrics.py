"""Per-query retrieval metrics of the DyML protocol, from the ranks of the relevant items.

For one query with ``R`` relevant items at 1-based ranks ``rank_1 < ... < rank_R`` (so the
``i``-th relevant item has precision ``i / rank_i`` at its rank):

- ``map`` (average precision over the full ranking): ``(1/R) sum_i i / rank_i``;
- ``map@r`` (Musgrave et al., ECCV 2020): the same sum restricted to ``rank_i <= R``, still
  divided by ``R``;
- ``recall@k`` (the DyML paper's "recall rate"): 1 if ``rank_1 <= k``; ``recall@1`` is P@1;
- ``asi`` (average set intersection, binary form; Sun et al., CVPR 2021): the mean over
  ``k = 1..R`` of (relevant items in the top ``k``) / ``k``, which equals
  ``(1/R) sum_{i: rank_i <= R} (H_R - H_{rank_i - 1})`` with ``H`` the harmonic numbers.

Graded metrics use ``t``, the number of levels at which a gallery item agrees with the query:

- ``ndcg``: gain ``2^t - 1``, discount ``1 / log2(1 + rank)``, over the full list, divided by
  the ideal DCG;
- ``asi`` (multi-level): for ``k = 1..P`` (``P`` items with ``t > 0``), the sum over values
  ``v > 0`` of ``min(#top-k items with t = v, #items with t = v in the ideal top k)``, divided
  by ``k``, averaged over ``k``;
- ``hap`` (H-AP, Ramzi et al., ECCV 2022): with relevances ``r`` from the "pop" rule,
  ``sum_k H-rank(k) / rank_k / sum_k r_k`` where ``H-rank(k)`` sums ``min(r_j, r_k)`` over the
  relevant items ``j`` ranked at or before ``k``.

Every function returns float64 values per query, NaN where the query has no relevant item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dymlbench.evaluation.ranking import RelevantRanks


def harmonic_numbers(n: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``H_0 .. H_n`` in float64 (``H_0 = 0``).

    Example:
        >>> harmonic_numbers(3).tolist()
        [0.0, 1.0, 1.5, 1.8333333333333333]
    """
    steps = 1.0 / torch.arange(1, n + 1, dtype=torch.float64, device=device)
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.cumsum(steps, 0)])


def _segment_sum(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``counts[i]`` values each (0 for an empty segment).

    Each sum depends only on its own segment, so a chunked evaluation sums exactly as an
    unchunked one does.
    """
    return torch.segment_reduce(values.to(torch.float64), "sum", lengths=counts)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-d table (``index_select`` is much faster than indexing)."""
    return table.index_select(0, index)


def binary_metrics(
    ranked: RelevantRanks,
    *,
    recall_at: Sequence[int],
    harmonic: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Binary metrics of every query of a chunk.

    Args:
        ranked: the ranks of the relevant items, from
            :func:`~dymlbench.evaluation.ranking.relevant_ranks` with binary grades.
        recall_at: the ``k`` of ``recall@k``; ``k`` larger than the gallery is allowed.
        harmonic: ``harmonic_numbers(n)`` for an ``n`` of at least the gallery size.

    Returns:
        ``map``, ``map@r``, ``asi`` and ``recall@k`` for each ``k``: float64 ``[n_rows]``,
        NaN for queries without a relevant item.

    Example:
        >>> from dymlbench.evaluation.ranking import gallery_keys, relevant_ranks
        >>> scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
        >>> relevant = torch.tensor([[True, False, True, False]])
        >>> ranked = relevant_ranks(scores, gallery_keys(scores), relevant)
        >>> out = binary_metrics(ranked, recall_at=(1,), harmonic=harmonic_numbers(4))
        >>> [round(out[key].item(), 4) for key in ("map", "map@r", "asi", "recall@1")]
        [0.8333, 0.5, 0.75, 1.0]
    """
    rows, ranks, positions, counts = ranked.rows, ranked.ranks, ranked.positions, ranked.counts
    total = counts.to(torch.float64)
    empty = counts == 0

    precision = positions.to(torch.float64) / ranks
    row_counts = _take(counts, rows)
    within_r = ranks <= row_counts
    steps = _take(harmonic, row_counts) - _take(harmonic, ranks - 1)
    out = {
        "map": _segment_sum(precision, counts) / total,
        "map@r": _segment_sum(precision * within_r, counts) / total,
        "asi": _segment_sum(steps * within_r, counts) / total,
    }

    # A row's items run from its best rank, so its first item holds its best rank.
    starts = torch.cumsum(counts, 0) - counts
    best = _take(torch.cat([ranks, ranks.new_zeros(1)]), starts)  # empty rows: NaN below
    for k in recall_at:
        out[f"recall@{k}"] = (best <= k).to(torch.float64)
    for values in out.values():
        values[empty] = math.nan
    return out


def pop_relevances(
    grade_counts: torch.Tensor, *, n_levels: int, alpha: float = 1.0
) -> torch.Tensor:
    """HAPPIER's "pop" relevance of each match level, per query.

    The relevance of an item agreeing with the query on ``t`` levels is
    ``(t / (n_levels - 1)) ** alpha / n_t``, with ``n_t`` the number of items of the set at
    match level ``t`` (0 where there are none). Ramzi et al., ECCV 2022.

    Args:
        grade_counts: int ``[n_rows, n_levels + 1]``, items of the set at each match level.
        n_levels: number of label columns (at least 2).
        alpha: the exponent of the rule.

    Returns:
        float64 ``[n_rows, n_levels + 1]``; column 0 is 0.

    Example:
        >>> pop_relevances(torch.tensor([[6, 2, 1, 1]]), n_levels=3).tolist()
        [[0.0, 0.25, 1.0, 1.5]]
    """
    if n_levels < 2:
        raise ValueError(f"`n_levels` must be at least 2 for graded relevance, but got {n_levels}")
    weights = (
        torch.arange(n_levels + 1, dtype=torch.float64, device=grade_counts.device)
        / (n_levels - 1)
    ) ** alpha
    counts = grade_counts.to(torch.float64)
    return torch.where(counts > 0, weights / counts.clamp(min=1), torch.zeros_like(counts))


def graded_metrics(
    ranked: RelevantRanks,
    *,
    grade_counts: torch.Tensor,
    relevances: torch.Tensor,
    log_discounts: torch.Tensor,
    harmonic: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Multi-level metrics (``ndcg``, ``asi``, ``hap``) of every query of a chunk.

    Args:
        ranked: ranks of the items with ``t > 0``, from
            :func:`~dymlbench.evaluation.ranking.relevant_ranks` with graded relevance.
        grade_counts: int ``[n_rows, n_levels + 1]``, items of the ranked list at each match
            level (column ``t``).
        relevances: float64 ``[n_rows, n_levels + 1]``, the relevance of each match level, see
            :func:`pop_relevances`.
        log_discounts: float64 ``[n + 1]``, cumulative discounts ``sum_{m <= j} 1/log2(1+m)``
            for ``j = 0..n`` with ``n`` at least the gallery size.
        harmonic: ``harmonic_numbers(n)`` for the same ``n``.

    Returns:
        float64 ``[n_rows]`` per metric, NaN for queries without an item with ``t > 0``.
    """
    rows, ranks, grades, counts = ranked.rows, ranked.ranks, ranked.grades, ranked.counts
    n_rows, n_grades = grade_counts.shape
    device = counts.device
    empty = counts == 0
    n_items = _take(counts, rows)

    gains = torch.pow(2.0, torch.arange(n_grades, dtype=torch.float64, device=device)) - 1.0
    discounts = _take(log_discounts, ranks) - _take(log_discounts, ranks - 1)
    dcg = _segment_sum(_take(gains, grades) * discounts, counts)
    # In the ideal order the items of level v fill positions (before_v, before_v + n_v].
    above = grade_counts[:, 1:].flip(1).cumsum(1).flip(1)
    block_start = above - grade_counts[:, 1:]
    ideal = ((log_discounts[above] - log_discounts[block_start]) * gains[1:]).sum(1)

    # seen[v - 1]: items of level v at or before each item of its row, the item included.
    starts = torch.cumsum(counts, 0) - counts
    seen = []
    same_level_seen = torch.zeros_like(ranks)
    for level in range(1, n_grades):
        at_level = grades == level
        running = torch.cumsum(at_level, 0)
        before_row = torch.cat([running.new_zeros(1), running]).index_select(0, starts)
        seen.append(running - _take(before_row, rows))
        same_level_seen = torch.where(at_level, seen[-1], same_level_seen)

    # ASI: at cut-off k the top-k items of level v meet the ideal top k in
    # min(cnt_v(k), max(k - s_v, 0)) items (s_v: items of higher levels), so the j-th item of
    # level v counts at every k >= max(rank, s_v + j), a harmonic difference as for binary ASI.
    cell = rows * (n_grades - 1) + grades - 1
    first_k = torch.maximum(ranks, _take(block_start.reshape(-1), cell) + same_level_seen)
    asi_terms = (_take(harmonic, n_items) - _take(harmonic, first_k - 1)) * (first_k <= n_items)
    asi = _segment_sum(asi_terms, counts) / counts.to(torch.float64)

    # H-AP: H-rank(k) = sum over levels v of min(r_v, r_k) times the items of level v seen.
    item_relevance = _take(relevances.reshape(-1), rows * n_grades + grades)
    h_rank = torch.zeros_like(item_relevance)
    for level, level_seen in enumerate(seen, start=1):
        level_relevance = _take(relevances[:, level].contiguous(), rows)
        h_rank += torch.minimum(level_relevance, item_relevance) * level_seen
    relevance_total = (relevances[:, 1:] * grade_counts[:, 1:]).sum(1)
    hap = _segment_sum(h_rank / ranks, counts) / relevance_total

    out = {"ndcg": dcg / ideal, "hap": hap, "asi": asi}
    for values in out.values():
        values[empty] = math.nan
    return out


def cumulative_log_discounts(n: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``D_0 .. D_n`` with ``D_j = sum_{m <= j} 1 / log2(1 + m)``, in float64.

    Example:
        >>> [round(value, 4) for value in cumulative_log_discounts(2).tolist()]
        [0.0, 1.0, 1.6309]
    """
    steps = 1.0 / torch.log2(1.0 + torch.arange(1, n + 1, dtype=torch.float64, device=device))
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.cumsum(steps, 0)])
