"""Statistics of the leaderboard: bootstrap over queries, paired comparisons, permutation tests.

Every function draws from a generator seeded with a fixed seed, so its result is a function of
its input and the leaderboard files are byte-identical when regenerated.

The statistic throughout is the one the overall metrics use: the mean over groups (the levels)
of the per-group means over queries. The groups are resampled independently, because their
query sets differ (DyML-Vehicle and DyML-Animal have one benchmark per level).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 1000
"""Bootstrap resamples."""

SEED = 0
"""Seed of every random draw here."""

ALPHA = 0.05
"""Significance level of the comparisons (and 1 - the confidence of the intervals)."""

_MAX_EXACT_PERMUTATIONS = 20000
_CHUNK_ELEMENTS = 2**22


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    Attributes:
        estimate: the statistic on the data.
        low: the lower end of the interval.
        high: the upper end.
    """

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0."""
        return self.low > 0.0 or self.high < 0.0


def mean_of_means(groups: Sequence[np.ndarray]) -> float:
    """The mean over groups of each group's mean.

    Example:
        >>> mean_of_means([np.array([1.0, 0.0]), np.array([1.0])])
        0.75
    """
    return float(np.mean([values.mean() for values in groups]))


def bootstrap_mean_of_means(
    groups: Sequence[np.ndarray],
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 1.0 - ALPHA,
    seed: int = SEED,
) -> Interval:
    """A percentile bootstrap interval of :func:`mean_of_means`, resampling each group alone.

    Args:
        groups: per group (level), the per-query values ``[n_queries]``; none may be empty.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage.
        seed: seed of the draws.

    Returns:
        The estimate and the interval.

    Example:
        >>> interval = bootstrap_mean_of_means([np.ones(50), np.zeros(50)])
        >>> interval.estimate, interval.low, interval.high
        (0.5, 0.5, 0.5)
    """
    if not groups or any(values.size == 0 for values in groups):
        raise ValueError("`groups` must be one or more non-empty arrays of per-query values")
    rng = np.random.default_rng(seed)
    totals = np.zeros(n_resamples)
    for values in groups:
        totals += _resampled_means(values, n_resamples, rng)
    statistics = totals / len(groups)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return Interval(estimate=mean_of_means(groups), low=float(low), high=float(high))


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of ``n_resamples`` resamples with replacement, drawn in bounded chunks."""
    n = values.size
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        draws = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[draws].mean(axis=1)
    return means


@dataclasses.dataclass(frozen=True, kw_only=True)
class PermutationTest:
    """A two-sided permutation test of the difference of two means.

    Attributes:
        difference: mean of the first sample minus mean of the second.
        p_value: the share of relabellings with an absolute difference at least as large.
        min_p_value: the smallest p-value these sample sizes can give.
        exact: whether every relabelling was enumerated.
    """

    difference: float
    p_value: float
    min_p_value: float
    exact: bool


def permutation_test(
    first: Sequence[float], second: Sequence[float], *, seed: int = SEED
) -> PermutationTest:
    """Test whether two samples (the seeds of two rows) differ in mean, by relabelling.

    All relabellings are enumerated when there are at most 20,000 of them; otherwise 20,000
    are drawn (and the p-value counts the observed labelling once more).

    Example:
        >>> test = permutation_test([0.9, 0.8, 0.85], [0.5, 0.55, 0.6])
        >>> round(test.p_value, 3), round(test.min_p_value, 3)
        (0.1, 0.1)
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.size < 1 or b.size < 1:
        raise ValueError("`first` and `second` must each hold at least one value")
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    tolerance = 1e-12 * max(1.0, observed)
    n_total, n_first = pooled.size, a.size
    n_labellings = math.comb(n_total, n_first)

    if n_labellings <= _MAX_EXACT_PERMUTATIONS:
        hits = 0
        total_sum = pooled.sum()
        for chosen in itertools.combinations(range(n_total), n_first):
            first_sum = pooled[list(chosen)].sum()
            difference = first_sum / n_first - (total_sum - first_sum) / (n_total - n_first)
            hits += abs(difference) >= observed - tolerance
        p_value, exact = hits / n_labellings, True
        # The labelling and its mirror image (when the sizes are equal) always count.
        min_p = (2 if n_first * 2 == n_total else 1) / n_labellings
    else:
        rng = np.random.default_rng(seed)
        hits = 1
        for _ in range(_MAX_EXACT_PERMUTATIONS):
            order = rng.permutation(n_total)
            difference = pooled[order[:n_first]].mean() - pooled[order[n_first:]].mean()
            hits += abs(difference) >= observed - tolerance
        p_value, exact = hits / (_MAX_EXACT_PERMUTATIONS + 1), False
        min_p = 1 / (_MAX_EXACT_PERMUTATIONS + 1)
    return PermutationTest(
        difference=float(a.mean() - b.mean()),
        p_value=float(p_value),
        min_p_value=float(min_p),
        exact=exact,
    )
