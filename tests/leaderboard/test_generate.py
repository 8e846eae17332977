"""Generating the leaderboards: pages, plots, formats, determinism, and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dymlbench.cli import app
from dymlbench.leaderboard.generate import generate
from dymlbench.leaderboard.plots import read_plot_data
from dymlbench.leaderboard.records import add_records

runner = CliRunner()


@pytest.fixture
def board(make_run, published_path: Path, tmp_path: Path) -> Path:
    """A leaderboards folder: the published table and six toy records of two methods."""
    root = tmp_path / "leaderboards"
    root.mkdir()
    shutil.copyfile(published_path, root / "published.yaml")
    runs = [make_run(method="msa", seed=s, quality=0.6) for s in range(3)]
    runs += [make_run(method="triplet", seed=s, quality=0.5, per_query=s != 2) for s in range(3)]
    add_records(runs, root / "results")
    return root


def _generate(root: Path, out: Path | None = None, fmt: str = "markdown") -> list[Path]:
    return generate(
        results_dir=root / "results",
        out_dir=out or root,
        published_path=root / "published.yaml",
        fmt=fmt,
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_pages_hold_runs_published_rows_statistics_plots_and_links(board: Path) -> None:
    written = _generate(board)

    names = sorted(path.relative_to(board).as_posix() for path in written)
    assert names == [
        "README.md",
        "animal.md",
        "plots/toy-fine-coarse.png",
        "plots/toy-level-map.png",
        "product.md",
        "toy.md",
        "vehicle.md",
    ]
    toy = (board / "toy.md").read_text()
    assert "| #1  | msa " in toy and "| #2  | triplet " in toy
    for heading in ("## Overall", "### fine", "### middle", "### coarse", "## Statistics"):
        assert heading in toy
    assert "95% paired bootstrap interval" not in toy  # triplet lacks one seed's values
    assert "permutation test over the seeds (3 against 3)" in toy
    assert "![mAP per level](plots/toy-level-map.png)" in toy
    assert "CPU (x86_64, 2 cores)" in toy
    for record in sorted((board / "results" / "toy").glob("*/record.json")):
        assert f"(results/toy/{record.parent.name}/record.json)" in toy
    index = (board / "README.md").read_text()
    assert "[Toy dataset (generated)](toy.md)" in index and "[DyML-Vehicle](vehicle.md)" in index


def test_without_records_the_dyml_pages_hold_the_published_rows(
    tmp_path: Path, published_path: Path
) -> None:
    root = tmp_path / "leaderboards"
    (root / "results").mkdir(parents=True)
    shutil.copyfile(published_path, root / "published.yaml")

    written = _generate(root)

    assert sorted(path.name for path in written) == [
        "README.md",
        "animal.md",
        "product.md",
        "vehicle.md",
    ]
    vehicle = (root / "vehicle.md").read_text()
    assert "| #1  | MSA " in vehicle and "published (Zhang et al. 2023)" in vehicle
    assert "No runs on this dataset yet" in vehicle
    assert "Not enough data: no rows from runs." in vehicle


def test_regenerating_gives_byte_identical_files(board: Path, tmp_path: Path) -> None:
    _generate(board, tmp_path / "first")
    _generate(board, tmp_path / "second")

    first, second = _tree(tmp_path / "first"), _tree(tmp_path / "second")
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_the_plots_carry_the_numbers_they_show(board: Path) -> None:
    _generate(board)

    levels = read_plot_data(board / "plots" / "toy-level-map.png")
    assert levels["levels"] == ["fine", "middle", "coarse"]
    assert [row["label"] for row in levels["rows"]] == ["#1 msa", "#2 triplet"]
    tradeoff = read_plot_data(board / "plots" / "toy-fine-coarse.png")
    assert [point["label"] for point in tradeoff["rows"]] == ["#1 msa", "#2 triplet"]


def test_stale_plots_and_pages_are_removed(board: Path) -> None:
    _generate(board)
    shutil.rmtree(board / "results" / "toy")

    _generate(board)

    assert not (board / "toy.md").exists()
    assert list((board / "plots").glob("*.png")) == []


@pytest.mark.parametrize("fmt", ["csv", "json", "latex"])
def test_the_paper_formats_write_one_file_per_dataset(
    board: Path, tmp_path: Path, fmt: str
) -> None:
    written = _generate(board, tmp_path / fmt, fmt=fmt)

    extension = {"csv": "csv", "json": "json", "latex": "tex"}[fmt]
    assert sorted(path.name for path in written) == [
        f"{name}.{extension}" for name in ("animal", "product", "toy", "vehicle")
    ]
    text = (tmp_path / fmt / f"toy.{extension}").read_text()
    if fmt == "csv":
        header = text.splitlines()[0].split(",")
        assert header[:3] == ["id", "method", "source"] and "overall/asi mean" in header
    elif fmt == "json":
        payload = json.loads(text)
        assert payload["headline"] == "overall/asi"
        assert [row["method"] for row in payload["rows"]] == ["msa", "triplet"]
        assert payload["comparison"]["kind"] == "seeds"
        assert payload["intervals"]["#2"] is None and payload["intervals"]["#1"]["low"] > 0
    else:
        assert "\\begin{tabular}" in text and "$\\pm$" in text


def test_the_cli_generates_and_rejects_an_unknown_format(board: Path) -> None:
    options = ["--results", str(board / "results"), "--published", str(board / "published.yaml")]

    result = runner.invoke(app, ["leaderboard", *options, "--out", str(board)])
    assert result.exit_code == 0, result.output
    assert "wrote 7 files" in result.output

    result = runner.invoke(app, ["leaderboard", *options, "--format", "html"])
    assert result.exit_code == 1
    assert "`--format` must be one of markdown, csv, json, latex, but got 'html'" in result.output


def test_the_cli_names_the_missing_results_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["leaderboard", "--results", str(tmp_path / "nowhere")])

    assert result.exit_code == 1
    assert "pass `--results`" in " ".join(result.output.split())
