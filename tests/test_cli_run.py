"""``dymlbench run`` and ``dymlbench methods``: configuration errors name the key, a toy run
prints its table and its folder, and the saved configuration round-trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dymlbench import registry
from dymlbench.cli import app
from dymlbench.config import RunConfig, resolve_config

runner = CliRunner()


def _run(*arguments: str):
    return runner.invoke(app, ["run", *arguments])


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--set", "optim.lerning_rate=0.1"], "unknown key `optim.lerning_rate`"),
        (["--set", "optim.lr=fast"], "`optim.lr` must be a number, but got 'fast'"),
        (["--set", "optim.lr=-1"], "`optim.lr` must be > 0, but got -1.0"),
        (["--epochs", "0"], "`optim.epochs` must be >= 1, but got 0"),
        (["--set", "method.temprature=1"], "did you mean `method.temperature`?"),
        (["--device", "tpu"], "`engine.device` must be one of 'auto', 'cpu', 'cuda'"),
        (["--resume"], "`--resume` must come with `--output`"),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "epochs", "method-key", "device", "resume"],
)
def test_configuration_errors_name_the_key(methods, arguments: list[str], expected: str) -> None:
    result = _run("engine-proxy", "--dataset", "toy", *arguments)

    assert result.exit_code == 1
    assert expected in " ".join(result.output.split())


def test_an_unknown_method_lists_the_close_matches(methods) -> None:
    result = _run("engine-proxi", "--dataset", "toy")

    assert result.exit_code == 1
    assert "did you mean 'engine-proxy'" in " ".join(result.output.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_cuda_on_a_machine_without_it_says_which_flag_to_use(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    result = _run(
        "engine-proxy",
        "--dataset",
        "toy",
        "--data-dir",
        str(toy_root),
        "--device",
        "cuda",
        "--output",
        str(tmp_path / "run"),
    )

    assert result.exit_code == 1
    assert "pass --device cpu" in " ".join(result.output.split())


def test_a_toy_run_prints_its_table_and_folder_and_saves_its_config(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    arguments = [
        "engine-proxy",
        "--dataset",
        "toy",
        "--data-dir",
        str(toy_root),
        "--seed",
        "3",
        "--epochs",
        "1",
        "--output",
        str(run_dir),
        "--no-progress",
        "--set",
        "optim.lr=0.002",
    ]

    result = _run(*arguments)

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "overall" in output and "this run" in output and f"run folder: {run_dir}" in output
    saved = RunConfig.read(run_dir / "config.yaml")
    expected = resolve_config(
        method="engine-proxy",
        dataset="toy",
        overrides=[
            "optim.lr=0.002",
            f"data.data_dir={toy_root}",
            "engine.seed=3",
            "optim.epochs=1",
            "engine.progress=false",
        ],
    )
    assert saved == expected
    assert RunConfig.from_yaml(saved.to_yaml()) == saved

    again = _run(*arguments)
    assert again.exit_code == 1 and "already holds a run" in " ".join(again.output.split())
    resumed = _run("engine-proxy", "--dataset", "toy", "--output", str(run_dir), "--resume")
    assert resumed.exit_code == 0, resumed.output


def test_a_saved_config_starts_a_run_and_official_evaluation_is_a_setting(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--epochs", "1", "--no-progress"]
    result = _run(
        "engine-proxy", "--dataset", "toy", "--data-dir", str(toy_root), "--output", str(first),
        *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    result = _run(
        "engine-proxy", "--dataset", "toy", "--config", str(first / "config.yaml"),
        "--output", str(second), "--set", "engine.eval_mode=official", *common,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    saved = RunConfig.read(second / "config.yaml")
    assert saved.engine.eval_mode == "official"
    official = dataclasses.replace(saved.engine, eval_mode="default")
    assert dataclasses.replace(saved, engine=official) == RunConfig.read(first / "config.yaml")
    # The same training, but the official evaluator drops each query's nearest gallery item.
    metrics = [json.loads((run / "record.json").read_text())["metrics"] for run in (first, second)]
    assert metrics[0]["overall/map"] != metrics[1]["overall/map"]


def test_methods_lists_citations_and_recipes(methods) -> None:
    result = runner.invoke(app, ["methods"])

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "engine-proxy" in output and "A throwaway proxy method for engine tests" in output
    assert "model.backbone=test_resnet" in output
    for key in registry.list_methods():
        assert key in output
