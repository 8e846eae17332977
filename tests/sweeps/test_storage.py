"""Storages, the budget over workers and the per-trial seeds."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from sweep_helpers import sweep_arguments
from typer.testing import CliRunner

from dymlbench.cli import app
from dymlbench.sweep.study import (
    SweepError,
    budget,
    make_sampler,
    parse_storage,
    trial_seed,
)


@pytest.mark.parametrize(
    ("given", "kind", "url"),
    [
        (None, "sqlite", "sqlite:///{out}/study.db"),
        ("sqlite:////data/s.db", "sqlite", "sqlite:////data/s.db"),
        ("postgresql://u:p@db:5432/s", "rdb", "postgresql+psycopg://u:p@db:5432/s"),
        ("postgresql+psycopg2://u@db/s", "rdb", "postgresql+psycopg2://u@db/s"),
        ("mysql+pymysql://u@db/s", "rdb", "mysql+pymysql://u@db/s"),
        ("journal:/shared/s.log", "journal", "/shared/s.log"),
    ],
    ids=["default", "sqlite", "postgres", "postgres-driver", "mysql", "journal"],
)
def test_storage_urls(tmp_path: Path, given: str | None, kind: str, url: str) -> None:
    spec = parse_storage(given, output=tmp_path)

    assert spec.kind == kind
    assert spec.url == url.format(out=tmp_path.resolve())


def test_a_storage_that_is_not_a_url_names_the_forms_it_takes(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="must be an RDB URL .* or journal:PATH"):
        parse_storage("study.db", output=tmp_path)


def test_trial_seeds_follow_the_study_seed_and_the_trial_number() -> None:
    seeds = [trial_seed(0, number) for number in range(100)]

    assert len(set(seeds)) == 100 and all(0 <= seed < 2**31 for seed in seeds)
    assert seeds == [trial_seed(0, number) for number in range(100)]
    assert seeds[:5] != [trial_seed(1, number) for number in range(5)]


def _first_params(storage: optuna.storages.BaseStorage, name: str, n: int) -> list[float]:
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(7))
    trials = [study.ask({"x": FloatDistribution(0.0, 1.0)}) for _ in range(n)]
    return [trial.params["x"] for trial in trials]


def test_the_sampler_repeats_a_sweep_and_parallel_workers_draw_apart() -> None:
    alone = _first_params(optuna.storages.InMemoryStorage(), "a", 3)
    again = _first_params(optuna.storages.InMemoryStorage(), "a", 3)
    assert alone == again and len(set(alone)) == 3

    # Two workers (two samplers, both seeded 7) on one study take trials 0-1 and 2-3.
    shared = optuna.storages.InMemoryStorage()
    first = _first_params(shared, "shared", 2)
    second = optuna.load_study(study_name="shared", storage=shared, sampler=make_sampler(7))
    later = [second.ask({"x": FloatDistribution(0.0, 1.0)}).params["x"] for _ in range(2)]
    assert first == alone[:2] and later[0] == alone[2]
    assert len(set(first + later)) == 4


def _trial(number: int, state: TrialState, **system_attrs) -> optuna.trial.FrozenTrial:
    value = 0.5 if state == TrialState.COMPLETE else None
    trial = create_trial(state=state, value=value, system_attrs=system_attrs)
    trial.number = number
    return trial


def test_the_budget_counts_a_dead_workers_trial_once() -> None:
    trials = [
        _trial(0, TrialState.COMPLETE),
        _trial(1, TrialState.FAIL),  # its worker died: trial 3 retries it
        _trial(2, TrialState.FAIL),  # raised an error: counts
        _trial(3, TrialState.WAITING, failed_trial=1, retry_history=[1]),
        _trial(4, TrialState.RUNNING),
    ]

    assert budget(trials) == (4, 1, 1)


def test_a_journal_storage_runs_a_sweep(methods, toy_root: Path, tmp_path: Path) -> None:
    journal = tmp_path / "shared" / "study.log"
    arguments = sweep_arguments(
        toy_root, tmp_path / "out", "--trials", "1", "--storage", f"journal:{journal}"
    )

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    status = CliRunner().invoke(app, ["sweep", "status", "--storage", f"journal:{journal}"])
    assert status.exit_code == 0 and "best: trial 0" in " ".join(status.output.split())
