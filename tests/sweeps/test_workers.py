"""Several workers on one study: two processes sharing a PostgreSQL study, and a worker killed
in the middle of a trial whose successor re-runs that trial with the same parameters."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import start_worker, sweep_arguments

from dymlbench.sweep.study import STUDY_DB

POSTGRES_ENV = "DYMLBENCH_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://dymlbench:dymlbench@127.0.0.1:5432/dymlbench_test"
"""The server `.ci/run` starts (a role and a database named dymlbench on loopback)."""


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A reachable PostgreSQL server; skips without one, except in CI where it fails."""
    url = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES_URL)
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as error:
        reason = (
            f"no PostgreSQL server at {url} ({type(error).__name__}: {error}); set "
            f"{POSTGRES_ENV} or start one as .ci/run does"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def _wait(process, *, log: Path, timeout: float = 300.0) -> None:
    try:
        code = process.wait(timeout=timeout)
    except BaseException:
        process.kill()
        raise
    assert code == 0, log.read_text()


def test_two_workers_share_a_postgres_study_and_run_exactly_the_budget(
    postgres_url: str, toy_root: Path, tmp_path: Path
) -> None:
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    options = ("--trials", "4", "--storage", postgres_url, "--study", name)
    workers = []
    for worker in ("a", "b"):
        arguments = sweep_arguments(toy_root, tmp_path / worker, *options)
        log = tmp_path / f"{worker}.log"
        workers.append((start_worker(arguments, log=log), log))
    for process, log in workers:
        _wait(process, log=log)

    storage = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    try:
        assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4
        assert sorted(trial.number for trial in trials) == [0, 1, 2, 3]
        assert len({tuple(sorted(trial.params.items())) for trial in trials}) == 4
        by_worker = [
            sorted(path.name for path in (tmp_path / worker / "trials").glob("trial-*"))
            for worker in "ab"
        ]
        assert sorted(sum(by_worker, [])) == [f"trial-{k:04d}" for k in range(4)]
        assert all(by_worker), f"one worker ran every trial: {by_worker}"
        for trial in trials:
            assert (Path(trial.user_attrs["run_dir"]) / "record.json").is_file()
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_a_killed_workers_trial_is_rerun_with_its_parameters(
    toy_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "sweep"
    arguments = sweep_arguments(
        toy_root, output, "--trials", "2", "--epochs", "2", "--heartbeat", "1",
        "--grace-period", "2",
    )  # fmt: skip
    storage = f"sqlite:///{output / STUDY_DB}"

    first = start_worker(arguments, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first worker never started a trial"
            if (output / "trials" / "trial-0000" / "config.yaml").is_file():
                break
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    study = optuna.load_study(study_name="engine-proxy-toy", storage=storage)
    [killed] = study.get_trials()
    assert killed.state == TrialState.RUNNING

    second = start_worker(arguments, log=tmp_path / "second.log")
    _wait(second, log=tmp_path / "second.log")

    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == 2 and len(trials) == 3
    [retry] = [trial for trial in complete if trial.user_attrs.get("retry_of") == 0]
    assert retry.params == killed.params
    assert retry.user_attrs["seed"] == killed.user_attrs["seed"]
