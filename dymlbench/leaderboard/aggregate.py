"""From records and published entries to the rows of a dataset's leaderboard, with statistics.

A run row holds the records of one dataset, method and :class:`~.records.Setting`: its metrics
are the mean and the sample standard deviation (``ddof=1``; none for one seed) over those
records, in percent. A published row holds one :class:`~.published.PublishedEntry`, its
numbers as printed. Rows are sorted by the headline metric (:data:`HEADLINE`, overall ASI, as
REFERENCE.md's tables lead with it), then overall mAP, then by name and setting; a row without
either comes last.

Statistics (:func:`headline_interval`, :func:`compare_top_two`), from the per-query values the
runs store (:func:`dymlbench.leaderboard.records.read_per_query`):

- the headline's 95% bootstrap interval over queries for each run row: per query, the mean of
  its values over the row's seeds; queries resampled per level, levels averaged;
- the comparison of the two best run rows: paired query by query (the queries both rows count,
  per level), the 95% paired bootstrap interval of the difference of the headline, significant
  at 5% when it excludes 0; without per-query values for every record of both rows, a
  permutation test over the seeds' headline values; with fewer than two seeds in a row and no
  per-query values, no test ("not enough data").

Under ``engine.eval_mode=official`` the overall ASI of a multi-level leave-one-out set also
averages in ``multi/asi`` (the official evaluator's rule); the query groups then include
``multi`` too, so that the interval is that of the number in the table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dymlbench.hierarchy import LEVEL_NAMES
from dymlbench.leaderboard import stats
from dymlbench.leaderboard.published import PUBLISHED_METRICS, PublishedEntry
from dymlbench.leaderboard.records import Setting, StoredRecord, read_per_query

logger = logging.getLogger(__name__)

HEADLINE = "overall/asi"
"""The metric rows are sorted by and the statistics are about."""

OVERALL_METRICS: tuple[str, ...] = PUBLISHED_METRICS
"""The columns of the overall table: the metrics of the published table."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One row of a dataset's leaderboard.

    Attributes:
        dataset: the dataset.
        method: the registry key for a run row; the published name for a published row.
        setting: the run row's setting; ``None`` for a published row.
        published: the published entry; ``None`` for a run row.
        records: the run row's records, sorted by seed (empty for a published row).
        mean: metric key to the mean over seeds, in percent (a published row: its value).
        std: metric key to the sample standard deviation over seeds, in percent (NaN with
            one seed; empty for a published row).
        n_seeds: records in the row (0 for a published row).
    """

    dataset: str
    method: str
    setting: Setting | None
    published: PublishedEntry | None
    records: tuple[StoredRecord, ...]
    mean: Mapping[str, float]
    std: Mapping[str, float]
    n_seeds: int

    @property
    def is_published(self) -> bool:
        """Whether the row is a published one."""
        return self.published is not None

    def sort_key(self) -> tuple[Any, ...]:
        """Best headline first, then overall mAP, then name and setting; deterministic."""
        headline = self.mean.get(HEADLINE, math.nan)
        second = self.mean.get("overall/map", math.nan)
        setting = dataclasses.astuple(self.setting) if self.setting is not None else ()
        return (
            math.isnan(headline),
            -headline if not math.isnan(headline) else 0.0,
            math.isnan(second),
            -second if not math.isnan(second) else 0.0,
            self.is_published,
            self.method,
            tuple(str(part) for part in setting),
        )


def build_rows(
    dataset: str, records: Sequence[StoredRecord], published: Sequence[PublishedEntry]
) -> list[Row]:
    """The rows of one dataset: its runs grouped by method and setting, and its published rows.

    Args:
        dataset: the dataset name.
        records: the checked records (other datasets' records are ignored).
        published: the published entries (other datasets' are ignored).

    Returns:
        The rows, sorted (see the module docstring).
    """
    records = [item for item in records if item.dataset == dataset]
    rows: list[Row] = []
    if records:
        frame = pd.DataFrame(
            [
                {"method": item.method, "setting": item.setting, "seed": item.seed, "i": index}
                for index, item in enumerate(records)
            ]
        )
        values = pd.DataFrame(
            [{key: _percent(value) for key, value in item.metrics.items()} for item in records]
        )
        for (method, setting), group in frame.groupby(["method", "setting"], sort=True):
            group = group.sort_values(["seed", "i"])
            members = tuple(records[i] for i in group["i"])
            block = values.iloc[list(group["i"])]
            means = block.mean(skipna=True)
            stds = block.std(ddof=1, skipna=True)
            rows.append(
                Row(
                    dataset=dataset,
                    method=method,
                    setting=setting,
                    published=None,
                    records=members,
                    mean={key: float(value) for key, value in means.items()},
                    std={key: float(value) for key, value in stds.items()},
                    n_seeds=len(members),
                )
            )
    for entry in published:
        if entry.dataset == dataset:
            rows.append(
                Row(
                    dataset=dataset,
                    method=entry.name,
                    setting=None,
                    published=entry,
                    records=(),
                    mean=dict(entry.metrics),
                    std={},
                    n_seeds=0,
                )
            )
    return sorted(rows, key=Row.sort_key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueryValues:
    """A row's per-query values of one metric, averaged over its seeds.

    Attributes:
        groups: group name (a level, or ``multi``) to ``(query_index, values)``, the indices
            sorted, the values the mean over the row's seeds of each query's value.
    """

    groups: Mapping[str, tuple[np.ndarray, np.ndarray]]


def row_query_values(row: Row, metric: str = HEADLINE) -> QueryValues | None:
    """The row's per-query values of an ``overall/<name>`` metric, or ``None`` without them.

    ``None`` when the row is published, or when any of its records lacks a per-query file or
    the metric's arrays.
    """
    if row.is_published or not row.records:
        return None
    if any(item.per_query_path is None for item in row.records):
        return None
    name = metric.removeprefix("overall/")
    per_record = []
    for item in row.records:
        arrays = read_per_query(item.per_query_path)
        groups = [level for level in LEVEL_NAMES if f"{level}/{name}" in arrays]
        official = item.setting.eval_mode == "official"
        if name == "asi" and official and "multi/asi" in arrays:
            groups.append("multi")
        if not groups:
            return None
        per_record.append(
            {
                group: (arrays[f"{group}/query_index"], arrays[f"{group}/{name}"])
                for group in groups
            }
        )

    names = sorted(set.intersection(*(set(groups) for groups in per_record)), key=_group_order)
    averaged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group in names:
        common = per_record[0][group][0]
        for groups in per_record[1:]:
            common = np.intersect1d(common, groups[group][0])
        common = np.unique(common)
        if common.size == 0:
            continue
        if any(groups[group][0].size != common.size for groups in per_record):
            logger.warning(
                "%s: the seeds of %s count different queries at `%s`; using the %d they share",
                row.dataset,
                row.method,
                group,
                common.size,
            )
        stacked = np.stack([_values_at(*groups[group], common) for groups in per_record])
        averaged[group] = (common, stacked.mean(axis=0))
    return QueryValues(groups=averaged) if averaged else None


def _group_order(group: str) -> tuple[int, str]:
    return (LEVEL_NAMES.index(group) if group in LEVEL_NAMES else len(LEVEL_NAMES), group)


def _values_at(index: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(index, kind="stable")
    positions = np.searchsorted(index[order], wanted)
    return values[order][positions]


def headline_interval(row: Row) -> stats.Interval | None:
    """The 95% bootstrap interval over queries of the row's headline, in percent, or ``None``."""
    values = row_query_values(row)
    if values is None:
        return None
    interval = stats.bootstrap_mean_of_means([v for _, v in values.groups.values()])
    recorded = row.mean.get(HEADLINE, math.nan)
    if abs(100.0 * interval.estimate - recorded) > 1e-6:
        logger.warning(
            "%s, %s: the headline from the per-query values (%.4f) differs from the records' "
            "(%.4f)",
            row.dataset,
            row.method,
            100.0 * interval.estimate,
            recorded,
        )
    return stats.Interval(
        estimate=100.0 * interval.estimate, low=100.0 * interval.low, high=100.0 * interval.high
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison:
    """The comparison of a dataset's two best run rows on the headline.

    Attributes:
        first: the better row.
        second: the runner-up.
        kind: ``"queries"`` (paired bootstrap over queries), ``"seeds"`` (permutation test
            over seeds) or ``"none"`` (not enough data).
        difference: first minus second, in percent points (NaN for ``"none"``).
        low: the lower end of the 95% interval of the difference (``"queries"``), else NaN.
        high: the upper end (``"queries"``), else NaN.
        p_value: the permutation test's p-value (``"seeds"``), else NaN.
        min_p_value: the smallest p-value the seed counts allow (``"seeds"``), else NaN.
        n_queries: the paired queries per group (``"queries"``).
        significant: whether the difference is significant at 5%; ``None`` for ``"none"``.
    """

    first: Row
    second: Row
    kind: str
    difference: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    min_p_value: float = math.nan
    n_queries: Mapping[str, int] = dataclasses.field(default_factory=dict)
    significant: bool | None = None


def compare_top_two(rows: Sequence[Row]) -> Comparison | None:
    """Compare the two best run rows with a headline (see the module docstring).

    Returns:
        The comparison, or ``None`` with fewer than two such rows.
    """
    ranked = [row for row in rows if not row.is_published and HEADLINE in row.mean]
    ranked = [row for row in ranked if not math.isnan(row.mean[HEADLINE])]
    if len(ranked) < 2:
        return None
    first, second = ranked[0], ranked[1]

    values_first, values_second = row_query_values(first), row_query_values(second)
    if values_first is not None and values_second is not None:
        differences, counts = [], {}
        for group in sorted(
            set(values_first.groups) & set(values_second.groups), key=_group_order
        ):
            index_a, a = values_first.groups[group]
            index_b, b = values_second.groups[group]
            common = np.intersect1d(index_a, index_b)
            if common.size:
                differences.append(_values_at(index_a, a, common) - _values_at(index_b, b, common))
                counts[group] = int(common.size)
        if differences:
            interval = stats.bootstrap_mean_of_means(differences)
            return Comparison(
                first=first,
                second=second,
                kind="queries",
                difference=100.0 * interval.estimate,
                low=100.0 * interval.low,
                high=100.0 * interval.high,
                n_queries=counts,
                significant=interval.excludes_zero,
            )

    if first.n_seeds >= 2 and second.n_seeds >= 2:
        seeds_first = _seed_values(first)
        seeds_second = _seed_values(second)
        if len(seeds_first) >= 2 and len(seeds_second) >= 2:
            test = stats.permutation_test(seeds_first, seeds_second)
            return Comparison(
                first=first,
                second=second,
                kind="seeds",
                difference=test.difference,
                p_value=test.p_value,
                min_p_value=test.min_p_value,
                significant=test.p_value < stats.ALPHA,
            )
    return Comparison(first=first, second=second, kind="none")


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100.0 * value


def _seed_values(row: Row) -> list[float]:
    """The headline of each of the row's records, in percent, the undefined ones left out."""
    values = [_percent(item.metrics.get(HEADLINE)) for item in row.records]
    return [value for value in values if not math.isnan(value)]
