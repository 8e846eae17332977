"""``dymlbench sweep`` end to end on SQLite: trials on the validation split only, their folders
and records, status, the best configuration reloaded into ``dymlbench run``, plots, seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from engine_support import registry_with_throwaway_methods
from optuna.trial import TrialState
from sweep_helpers import SPACE, sweep_arguments
from typer.testing import CliRunner

from dymlbench import registry
from dymlbench.cli import app
from dymlbench.config import RunConfig
from dymlbench.sweep.study import STUDY_DB, study_status, trial_seed

runner = CliRunner()


def _study(output: Path, name: str = "engine-proxy-toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{output / STUDY_DB}")


@pytest.fixture(scope="module")
def swept(toy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three trials on a copy of the toy dataset without its test benchmarks."""
    root = tmp_path_factory.mktemp("sweep")
    train_only = root / "toy-train-only"
    shutil.copytree(toy_root, train_only)
    for folder in train_only.glob("bmk_*"):
        shutil.rmtree(folder)
    output = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "METHODS", registry_with_throwaway_methods())
        from dymlbench.data import dataset

        read = dataset.read_label_file
        label_files: list[Path] = []

        def recording_read(path, **kwargs):
            label_files.append(Path(path))
            return read(path, **kwargs)

        patch.setattr(dataset, "read_label_file", recording_read)
        result = runner.invoke(
            app, sweep_arguments(train_only, output, "--trials", "3", "--seed", "5")
        )
        patch.setattr(dataset, "read_label_file", read)
        yield SimpleNamespace(
            result=result, output=output, train_only=train_only, label_files=label_files
        )


def test_a_sweep_runs_its_trials_and_keeps_each_run_folder_with_its_config(swept) -> None:
    assert swept.result.exit_code == 0, swept.result.output
    study = _study(swept.output)
    trials = study.get_trials()

    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == (swept.output / "trials" / f"trial-{trial.number:04d}").resolve()
        config = RunConfig.read(run_dir / "config.yaml")
        assert config.engine.seed == trial.user_attrs["seed"] == trial_seed(5, trial.number)
        assert config.data.val_fraction == 0.25
        assert config.optim.lr == trial.params["optim.lr"]
        assert config.method.temperature == trial.params["method.temperature"]
        assert 1e-3 <= config.optim.lr <= 1e-2 and config.optim.epochs == 1
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert trial.value == metrics["validation"][-1]["online"]["overall/map"]
        assert trial.intermediate_values == {1: trial.value}


def test_the_test_benchmarks_are_never_read_during_a_sweep(swept) -> None:
    # The sweep ran on a copy without any test file, and opened only the train label file.
    assert swept.result.exit_code == 0, swept.result.output
    assert not list(swept.train_only.glob("bmk_*"))
    assert swept.label_files and all(path.parent.name == "train" for path in swept.label_files), (
        swept.label_files
    )
    for trial in _study(swept.output).get_trials():
        record = json.loads((Path(trial.user_attrs["run_dir"]) / "record.json").read_text())
        assert record["sweep"] == {
            "study": "engine-proxy-toy",
            "trial": trial.number,
            "objective": "overall/map",
        }
        assert record["metrics"] == {} and record["metrics_by_network"] == {}
        assert record["validation_metrics"]["overall/map"] == trial.value
    # The same copy cannot make a run: a run reads the test data.
    result = runner.invoke(
        app,
        ["run", "engine-proxy", "--dataset", "toy", "--data-dir", str(swept.train_only),
         "--output", str(swept.output / "not-a-sweep")],
    )  # fmt: skip
    assert result.exit_code == 1 and "bmk_fine" in " ".join(result.output.split())


def test_status_and_the_best_config_reload_into_dymlbench_run(
    swept, toy_root: Path, tmp_path: Path
) -> None:
    best = _study(swept.output).best_trial

    status = runner.invoke(app, ["sweep", "status", "--output", str(swept.output)])
    assert status.exit_code == 0, status.output
    shown = " ".join(status.output.split())
    assert "complete │ 3" in shown and f"best: trial {best.number}" in shown
    assert f"run folder: {best.user_attrs['run_dir']}" in " ".join(status.output.split())

    best_file = tmp_path / "best.yaml"
    written = runner.invoke(
        app, ["sweep", "best", "--output", str(swept.output), "--out", str(best_file)]
    )
    assert written.exit_code == 0, written.output
    config = RunConfig.read(best_file)
    assert config.optim.lr == best.params["optim.lr"]
    assert config.method.temperature == best.params["method.temperature"]
    assert config.data.val_fraction == 0.0 and config.engine.seed == 0

    run_dir = tmp_path / "final"
    result = runner.invoke(
        app,
        ["run", "engine-proxy", "--dataset", "toy", "--config", str(best_file),
         "--data-dir", str(toy_root), "--output", str(run_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "record.json").read_text())
    assert record["sweep"] is None and "overall/map" in record["metrics"]
    assert record["config"]["optim"]["lr"] == best.params["optim.lr"]


def test_plots_are_written_as_png_files(swept, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sweep", "plots", "--output", str(swept.output), "--out", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    for name in ("history.png", "importances.png", "contour.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_the_same_seed_samples_the_same_trials(swept, methods, tmp_path: Path) -> None:
    result = runner.invoke(
        app, sweep_arguments(swept.train_only, tmp_path, "--trials", "1", "--seed", "5")
    )

    assert result.exit_code == 0, result.output
    first = [trial.params for trial in _study(swept.output).get_trials()[:1]]
    assert [trial.params for trial in _study(tmp_path).get_trials()] == first


def test_a_failing_trial_is_recorded_with_its_error_and_the_sweep_goes_on(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    arguments = sweep_arguments(
        toy_root, tmp_path, "--trials", "2", "--set", "model.backbone=nope"
    )

    result = runner.invoke(app, arguments)

    assert result.exit_code == 0, result.output
    status = study_status(_study(tmp_path))
    assert status.counts["FAIL"] == 2 and status.best_number is None
    assert [number for number, _ in status.failures] == [0, 1]
    assert all("nope" in error for _, error in status.failures)


def test_a_second_worker_on_one_sqlite_file_is_refused(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    from dymlbench.sweep.study import _single_worker_lock, parse_storage

    with _single_worker_lock(parse_storage(None, output=tmp_path)):
        result = runner.invoke(app, sweep_arguments(toy_root, tmp_path, "--trials", "1"))

    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "SQLite cannot serve parallel workers" in message
    assert "--storage postgresql://" in message and "--storage journal:PATH" in message


def test_the_space_file_line_is_named_on_the_command_line(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.read_text() + "method.temprature: 0.1\n", encoding="utf-8")
    arguments = sweep_arguments(toy_root, tmp_path / "out", "--space", str(space))

    result = runner.invoke(app, arguments)

    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"{space}, line 5: unknown key `method.temprature`" in message
    assert "did you mean `method.temperature`?" in message
