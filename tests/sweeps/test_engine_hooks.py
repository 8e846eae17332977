"""What a sweep needs from the engine: a validation callback that can stop a run (the pruner),
and sweep trials that never read the test data and say so in their record."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import SPACE

from dymlbench.config import resolve_config
from dymlbench.engine import train
from dymlbench.sweep import study as sweep_study
from dymlbench.sweep.space import load_space


def _tiny(toy_root: Path, **extra: object):
    overrides = {
        "data.data_dir": toy_root,
        "data.val_fraction": 0.25,
        "optim.epochs": 3,
        "engine.eval_every": 1,
        **extra,
    }
    return resolve_config(
        method="engine-proxy",
        dataset="toy",
        overrides=[f"{key}={value}" for key, value in overrides.items()],
    )


def test_the_validation_callback_sees_every_pass_and_can_stop_the_run(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, float]] = []

    def on_validation(epoch: int, metrics: dict[str, dict[str, float]]) -> bool:
        seen.append((epoch, metrics["online"]["overall/map"]))
        return epoch == 2

    marker = {"study": "s", "trial": 7, "objective": "overall/map"}
    result = train(_tiny(toy_root), output_dir=tmp_path, on_validation=on_validation, sweep=marker)

    assert [epoch for epoch, _ in seen] == [1, 2]
    assert [entry["epoch"] for entry in result.history.train] == [1, 2]
    assert result.reports == {} and result.metrics == {}
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["sweep"] == marker and record["metrics"] == {}
    assert record["validation_metrics"]["overall/map"] == seen[-1][1]
    assert not (tmp_path / "per_query.npz").exists()


def test_the_pruner_stops_a_trial_after_a_validation_pass(
    methods, toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every value is below the threshold, so each trial is pruned at its first report.
    monkeypatch.setattr(
        sweep_study, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=2.0)
    )
    base = _tiny(toy_root)
    settings = sweep_study.SweepSettings(
        base=base,
        space=load_space(SPACE, base=base).without({"optim.epochs"}),
        n_trials=2,
        study_name="pruned",
        storage=sweep_study.parse_storage(None, output=tmp_path),
        output=tmp_path,
    )

    summary = sweep_study.run_sweep(settings)

    assert summary.ran == (0, 1) and summary.status.counts["PRUNED"] == 2
    study = optuna.load_study(study_name="pruned", storage=settings.storage.url)
    for trial in study.get_trials():
        assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert len(metrics["train"]) == 1
