"""Rows of a leaderboard: aggregation over seeds, grouping by setting, published rows, and the
statistics (bootstrap interval, paired comparison, permutation test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dymlbench.leaderboard import stats
from dymlbench.leaderboard.aggregate import (
    HEADLINE,
    build_rows,
    compare_top_two,
    headline_interval,
    row_query_values,
)
from dymlbench.leaderboard.published import load_published
from dymlbench.leaderboard.records import read_record
from dymlbench.leaderboard.render import cell, overall_frame


def _records(make_run, *specs: dict) -> list:
    return [read_record(make_run(**spec)) for spec in specs]


def test_a_row_is_the_mean_and_sample_std_over_seeds(make_run) -> None:
    records = _records(make_run, *({"seed": seed, "quality": 0.4} for seed in range(3)))

    (row,) = build_rows("toy", records, [])

    values = [100 * item.metrics[HEADLINE] for item in records]
    assert row.n_seeds == 3 and [item.seed for item in row.records] == [0, 1, 2]
    assert row.mean[HEADLINE] == pytest.approx(np.mean(values))
    assert row.std[HEADLINE] == pytest.approx(np.std(values, ddof=1))
    assert cell(row, HEADLINE) == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def test_one_seed_shows_the_mean_alone(make_run) -> None:
    (row,) = build_rows("toy", _records(make_run, {"seed": 0}), [])

    assert math.isnan(row.std[HEADLINE])
    assert "±" not in cell(row, HEADLINE)


def test_runs_are_grouped_by_method_and_setting(make_run) -> None:
    records = _records(
        make_run,
        {"method": "msa", "seed": 0},
        {"method": "msa", "seed": 1},
        {"method": "msa", "seed": 0, "config": {"optim": {"epochs": 5}}, "name": "long"},
        {"method": "msa", "seed": 0, "config": {"engine": {"eval_mode": "official"}}, "name": "o"},
        {"method": "triplet", "seed": 0},
    )

    rows = build_rows("toy", records, [])

    groups = sorted(
        (row.method, row.setting.epochs, row.setting.eval_mode, row.n_seeds) for row in rows
    )
    assert groups == [
        ("msa", 2, "default", 2),
        ("msa", 2, "official", 1),
        ("msa", 5, "default", 1),
        ("triplet", 2, "default", 1),
    ]


def test_other_datasets_records_stay_out(make_run) -> None:
    records = _records(make_run, {"dataset": "toy"}, {"dataset": "animal", "seed": 1})

    assert [row.dataset for row in build_rows("animal", records, [])] == ["animal"]


def test_published_rows_sit_beside_the_runs_and_are_marked(make_run, published_path) -> None:
    table = load_published(published_path)
    records = _records(make_run, {"dataset": "vehicle", "quality": 0.7})

    rows = build_rows("vehicle", records, table.entries)

    assert [row.is_published for row in rows].count(True) == 11
    assert rows[0].method == "msa" and not rows[0].is_published  # 70% beats the 55.6 of MSA
    frame = overall_frame(rows)
    msa = frame[frame["method"] == "MSA"].iloc[0]
    assert msa["source"] == "published (Zhang et al. 2023)"
    assert (msa["ASI"], msa["init"], msa["seeds"]) == ("55.6", "dino", "-")
    happier = frame[frame["method"] == "HAPPIER"].iloc[0]
    assert happier["source"] == "published (Ramzi et al. 2022, presumed)"


def test_rows_are_sorted_by_the_headline_then_map(published_path) -> None:
    rows = build_rows("vehicle", [], load_published(published_path).entries)

    names = [row.method for row in rows]
    assert names[:3] == ["MSA", "HAPPIER", "CSL (rerun by HAPPIER)"]
    assert names.index("CSL") < names.index("CosFace")  # both 23.0 ASI, mAP 12.1 > 12.0
    assert names[-2:] == ["CLCD-ICR", "CLCD-ACR"]  # no ASI: last, by mAP


def test_the_headline_interval_covers_the_row_mean(make_run) -> None:
    records = _records(make_run, *({"seed": seed, "quality": 0.5} for seed in range(3)))
    (row,) = build_rows("toy", records, [])

    interval = headline_interval(row)

    assert interval.estimate == pytest.approx(row.mean[HEADLINE])
    assert interval.low < interval.estimate < interval.high
    assert interval == headline_interval(row)  # a fixed seed: the same numbers every time


def test_the_interval_needs_every_seeds_per_query_values(make_run) -> None:
    records = _records(make_run, {"seed": 0}, {"seed": 1, "per_query": False})
    (row,) = build_rows("toy", records, [])

    assert headline_interval(row) is None


def test_official_mode_counts_the_multi_level_asi_in_the_headline(make_run) -> None:
    official = {"engine": {"eval_mode": "official"}}
    records = _records(make_run, {"seed": 0, "multi": True, "config": official})
    (row,) = build_rows("toy", records, [])

    assert list(row_query_values(row).groups) == ["fine", "middle", "coarse", "multi"]
    assert headline_interval(row).estimate == pytest.approx(row.mean[HEADLINE])


def test_a_clear_winner_is_significant_over_queries(make_run) -> None:
    records = _records(
        make_run,
        *({"method": "msa", "seed": seed, "quality": 0.7} for seed in range(3)),
        *({"method": "triplet", "seed": seed, "quality": 0.4} for seed in range(3)),
    )

    comparison = compare_top_two(build_rows("toy", records, []))

    assert (comparison.first.method, comparison.second.method) == ("msa", "triplet")
    assert comparison.kind == "queries" and comparison.significant
    assert comparison.n_queries == {"fine": 40, "middle": 40, "coarse": 40}
    assert comparison.low < comparison.difference < comparison.high


def test_two_equal_methods_are_not_significantly_different(make_run) -> None:
    records = _records(
        make_run,
        {"method": "msa", "seed": 0, "quality": 0.5},
        {"method": "triplet", "seed": 0, "quality": 0.5},
    )

    comparison = compare_top_two(build_rows("toy", records, []))

    # The same seed draws the same noise: the per-query values are equal, the difference 0.
    assert comparison.kind == "queries" and not comparison.significant
    assert comparison.difference == pytest.approx(0.0)


def test_without_per_query_values_the_seeds_are_compared(make_run) -> None:
    records = _records(
        make_run,
        *({"method": "msa", "seed": s, "quality": 0.7, "per_query": False} for s in range(3)),
        *({"method": "triplet", "seed": s, "quality": 0.4, "per_query": False} for s in range(3)),
    )

    comparison = compare_top_two(build_rows("toy", records, []))

    assert comparison.kind == "seeds"
    # Three seeds against three cannot reach 5%: the smallest two-sided p-value is 2/20.
    assert comparison.p_value == pytest.approx(0.1) and comparison.min_p_value == 0.1
    assert comparison.significant is False


def test_one_seed_without_per_query_values_is_not_enough_data(make_run) -> None:
    records = _records(
        make_run,
        {"method": "msa", "quality": 0.7, "per_query": False},
        {"method": "triplet", "quality": 0.4, "per_query": False},
    )

    comparison = compare_top_two(build_rows("toy", records, []))

    assert comparison.kind == "none" and comparison.significant is None


def test_published_rows_are_not_compared(published_path) -> None:
    assert (
        compare_top_two(build_rows("vehicle", [], load_published(published_path).entries)) is None
    )


def test_the_bootstrap_resamples_each_level_alone() -> None:
    constant = [np.full(30, 0.2), np.full(5, 0.8)]

    interval = stats.bootstrap_mean_of_means(constant)

    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.5, 0.5, 0.5))


def test_the_permutation_test_is_exact_for_small_samples() -> None:
    test = stats.permutation_test([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0])

    assert test.exact and test.difference == -4.0
    assert test.p_value == pytest.approx(2 / 70) and test.min_p_value == pytest.approx(2 / 70)


def test_the_permutation_test_draws_for_large_samples() -> None:
    rng = np.random.default_rng(1)
    first, second = rng.normal(0, 1, 20), rng.normal(3, 1, 20)

    test = stats.permutation_test(first, second)

    assert not test.exact and test.p_value < 0.001
    assert test == stats.permutation_test(first, second)
