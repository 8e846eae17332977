"""Adding records to the results folder: what is copied, what is refused and why, settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dymlbench.cli import app
from dymlbench.engine.run import RUNTIME_KEYS
from dymlbench.leaderboard.records import (
    IGNORED_CONFIG_KEYS,
    RecordError,
    add_records,
    load_results,
    read_record,
    record_name,
)

runner = CliRunner()


def _edit(run_dir: Path, change) -> None:
    path = run_dir / "record.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_add_copies_the_record_and_its_per_query_file(make_run, tmp_path: Path) -> None:
    run_dir = make_run(method="msa", seed=3)
    results = tmp_path / "results"

    added, present = add_records([run_dir], results)

    record = json.loads((run_dir / "record.json").read_text())
    folder = results / "toy" / record_name(record)
    assert added == [folder / "record.json"] and present == []
    assert folder.name.startswith("msa-seed3-") and len(folder.name) == len("msa-seed3-") + 8
    assert (folder / "record.json").read_bytes() == (run_dir / "record.json").read_bytes()
    assert (folder / "per_query.npz").read_bytes() == (run_dir / "per_query.npz").read_bytes()
    assert [item.name for item in load_results(results)] == [folder.name]


def test_adding_the_same_run_twice_changes_nothing(make_run, tmp_path: Path) -> None:
    run_dir = make_run()
    results = tmp_path / "results"
    (first,), _ = add_records([run_dir], results)

    added, present = add_records([run_dir / "record.json", run_dir], results)

    assert added == [] and present == [first, first]


def test_a_run_without_per_query_values_is_added_alone(make_run, tmp_path: Path) -> None:
    (path,), _ = add_records([make_run(per_query=False)], tmp_path / "results")

    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def _sweep(record: dict) -> None:
    record["sweep"] = {"study": "msa-toy", "trial": 4}


def _no_metrics(record: dict) -> None:
    record["metrics"] = {}


def _missing_metrics(record: dict) -> None:
    del record["metrics"]


def _no_overall(record: dict) -> None:
    record["metrics"] = {"fine/map": 0.5}


def _percent_metrics(record: dict) -> None:
    record["metrics"]["overall/map"] = 40.0


def _old_schema(record: dict) -> None:
    record["schema_version"] = 0


def _no_epochs(record: dict) -> None:
    del record["config"]["optim"]["epochs"]


def _escaping_per_query(record: dict) -> None:
    record["per_query_file"] = "../elsewhere.npz"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_sweep, "`sweep` must be null in a leaderboard record, but got {'study': 'msa-toy'"),
        (_no_metrics, "`metrics` must hold the test metrics, but got {}"),
        (_missing_metrics, "`metrics` must hold the test metrics, but got None"),
        (_no_overall, "`metrics` must hold the overall test metrics"),
        (_percent_metrics, "`metrics.overall/map` must be a fraction in [0, 1] or null"),
        (_old_schema, "`schema_version` must be 1, but got 0"),
        (_no_epochs, "`config.optim.epochs` must be given"),
        (_escaping_per_query, "`per_query_file` must be a file name next to the record"),
    ],
    ids=[
        "sweep",
        "empty-metrics",
        "no-metrics",
        "no-overall",
        "percent",
        "schema",
        "config",
        "path",
    ],
)
def test_refused_records_say_which_file_and_why(
    make_run, tmp_path: Path, change, expected: str
) -> None:
    run_dir = make_run()
    _edit(run_dir, change)

    with pytest.raises(RecordError) as caught:
        add_records([run_dir], tmp_path / "results")

    assert str(run_dir / "record.json") in str(caught.value)
    assert expected in str(caught.value)
    assert not (tmp_path / "results").exists()


def test_a_missing_record_says_the_run_must_have_finished(tmp_path: Path) -> None:
    (tmp_path / "unfinished").mkdir()

    with pytest.raises(RecordError, match="record.json .*has finished"):
        read_record(tmp_path / "unfinished")


def test_a_broken_per_query_file_is_refused(make_run, tmp_path: Path) -> None:
    run_dir = make_run()
    arrays = dict(np.load(run_dir / "per_query.npz"))
    arrays["fine/map"] = arrays["fine/map"][:-1]
    np.savez(run_dir / "per_query.npz", **arrays)

    with pytest.raises(RecordError, match="`per_query_file` is unusable: .*`fine/map` must be"):
        add_records([run_dir], tmp_path / "results")


def test_one_refused_record_adds_none(make_run, tmp_path: Path) -> None:
    good, bad = make_run(seed=0), make_run(seed=1)
    _edit(bad, _sweep)

    with pytest.raises(RecordError, match="sweep"):
        add_records([good, bad], tmp_path / "results")

    assert not (tmp_path / "results").exists()


def test_a_second_record_of_one_seed_and_setting_is_refused(make_run, tmp_path: Path) -> None:
    results = tmp_path / "results"
    add_records([make_run(seed=0, quality=0.5)], results)

    with pytest.raises(RecordError, match="must be the only record of msa on toy with seed 0"):
        add_records([make_run(seed=0, quality=0.6)], results)


def test_an_edited_record_in_the_results_folder_is_refused(make_run, tmp_path: Path) -> None:
    results = tmp_path / "results"
    (path,), _ = add_records([make_run()], results)
    _edit(path.parent, lambda record: record["metrics"].update({"overall/asi": 0.99}))

    with pytest.raises(RecordError, match="edited or copied by hand"):
        load_results(results)


def test_the_cli_refuses_a_sweep_trial_with_its_reason(make_run, tmp_path: Path) -> None:
    run_dir = make_run()
    _edit(run_dir, _sweep)

    result = runner.invoke(
        app, ["leaderboard", "add", str(run_dir), "--results", str(tmp_path / "results")]
    )

    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "no record was added" in output and "`sweep` must be null" in output


def test_the_cli_adds_runs(make_run, tmp_path: Path) -> None:
    runs = [make_run(seed=0), make_run(seed=1)]

    result = runner.invoke(
        app, ["leaderboard", "add", *map(str, runs), "--results", str(tmp_path / "results")]
    )

    assert result.exit_code == 0, result.output
    assert result.output.count("added ") == 2
    assert len(load_results(tmp_path / "results")) == 2


def test_the_setting_ignores_seed_paths_and_runtime_keys(make_run) -> None:
    base = read_record(make_run(seed=0)).setting
    elsewhere = make_run(
        seed=1,
        config={
            "data": {"data_dir": "/data/toy"},
            "engine": {"device": "cuda", "num_workers": 2, "progress": True},
        },
    )

    assert read_record(elsewhere).setting == base


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"optim": {"epochs": 5}}, "epochs"),
        ({"optim": {"classes_per_batch": 8}}, "batch"),
        ({"model": {"embedding_dim": 48}}, "embedding_dim"),
        ({"model": {"backbone": "resnet34"}}, "backbone"),
        ({"engine": {"eval_mode": "official"}}, "eval_mode"),
        ({"engine": {"report_network": "ema"}}, "network"),
        ({"optim": {"lr": 0.01}}, "config_hash"),
    ],
    ids=["epochs", "batch", "dim", "backbone", "eval-mode", "network", "other-key"],
)
def test_the_setting_separates_what_moves_the_numbers(make_run, config, field: str) -> None:
    base = read_record(make_run(seed=0)).setting
    other = read_record(make_run(seed=0, config=config, name="other")).setting

    assert getattr(other, field) != getattr(base, field)
    assert other != base


def test_the_setting_names_a_checkpoint_by_its_hash(make_run) -> None:
    initialisation = {"kind": "dino", "path": "/ckpt/dino.pth", "sha256": "ab" * 32}
    setting = read_record(make_run(initialisation=initialisation)).setting

    assert setting.initialisation == "dino:abababab"


def test_the_runtime_keys_of_a_resumed_run_are_ignored_too() -> None:
    assert RUNTIME_KEYS <= IGNORED_CONFIG_KEYS
