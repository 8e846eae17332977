"""The embeddings file format and `dymlbench eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dymlbench.cli import app
from dymlbench.evaluation import Benchmark, evaluate_file, load_embeddings_file


def _leave_one_out_file(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(6), 5)
    arrays = {
        "embeddings": rng.normal(size=(30, 8)).astype(np.float32),
        "labels": np.stack([fine, fine // 2, fine // 6], axis=1),
    }
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def _benchmark_file(path: Path, levels=("fine", "middle", "coarse"), **overrides) -> Path:
    rng = np.random.default_rng(1)
    arrays = {}
    for level in levels:
        arrays[f"{level}/query_embeddings"] = rng.normal(size=(10, 8)).astype(np.float32)
        arrays[f"{level}/query_labels"] = rng.integers(0, 3, size=10)
        arrays[f"{level}/gallery_embeddings"] = rng.normal(size=(40, 8)).astype(np.float32)
        arrays[f"{level}/gallery_labels"] = rng.integers(0, 3, size=(40, 1))
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_leave_one_out_file_round_trip(tmp_path: Path) -> None:
    path = _leave_one_out_file(tmp_path / "emb.npz")
    embeddings, labels = load_embeddings_file(path)
    assert embeddings.shape == (30, 8) and labels.shape == (30, 3)
    report = evaluate_file(path)
    assert report.protocol == "leave_one_out"
    assert {"fine/map", "coarse/asi", "overall/recall@10", "multi/hap"} <= report.metrics.keys()


def test_benchmark_file_selects_the_query_gallery_protocol(tmp_path: Path) -> None:
    path = _benchmark_file(tmp_path / "emb.npz", levels=("fine", "coarse"))
    content = load_embeddings_file(path)
    assert isinstance(content, dict) and set(content) == {"fine", "coarse"}
    assert isinstance(content["fine"], Benchmark)
    report = evaluate_file(path)
    assert report.protocol == "query_gallery"
    assert "middle/map" not in report.metrics and "overall/map" in report.metrics


@pytest.mark.parametrize(
    ("maker", "overrides", "message"),
    [
        (_leave_one_out_file, {"labels": None}, "must hold `labels`"),
        (
            _leave_one_out_file,
            {"labels": np.zeros((29, 3), dtype=int)},
            "`labels` must have shape",
        ),
        (
            _leave_one_out_file,
            {"embeddings": np.full((30, 8), np.inf, dtype=np.float32)},
            "`embeddings` must be finite",
        ),
        (
            _leave_one_out_file,
            {"labels": np.full((30, 3), 0.5)},
            "`labels` must hold integer labels",
        ),
        (_leave_one_out_file, {"extra": np.zeros(3)}, "unknown arrays \\['extra'\\]"),
        (_benchmark_file, {"fine/gallery_labels": None}, "must hold \\['fine/gallery_labels'\\]"),
        (
            _benchmark_file,
            {"tiny/query_labels": np.zeros(3, dtype=int)},
            "array `tiny/query_labels` is not part of the format",
        ),
        (
            _benchmark_file,
            {"coarse/gallery_embeddings": np.zeros((40, 5), dtype=np.float32) + 1},
            "must have the same dimension",
        ),
    ],
    ids=[
        "missing-labels",
        "label-rows",
        "inf",
        "float-labels",
        "unknown-array",
        "missing-gallery-labels",
        "unknown-level",
        "dimension-mismatch",
    ],
)
def test_bad_files_name_the_array(tmp_path: Path, maker, overrides, message) -> None:
    path = maker(tmp_path / "bad.npz", **overrides)
    with pytest.raises((ValueError, TypeError), match=message) as error:
        evaluate_file(path)
    assert str(path) in str(error.value)


def test_cli_eval_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    path = _leave_one_out_file(tmp_path / "emb.npz")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["eval", "--embeddings", str(path), "--json", str(out), "--recall-at", "1,5"]
    )
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "overall" in result.output
    content = json.loads(out.read_text())
    assert content["mode"] == "default"
    assert set(content["n_queries"]) == {"fine", "middle", "coarse", "multi"}
    assert content["n_skipped_queries"]["fine"] == 0
    assert content["metrics"]["fine/recall@5"] == pytest.approx(
        evaluate_file(path, recall_at=(1, 5)).metrics["fine/recall@5"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "fast"], "`mode` must be one of"),
        (["--recall-at", "1,x"], "`--recall-at` must be comma-separated integers"),
    ],
    ids=["mode", "recall-at"],
)
def test_cli_eval_bad_options_exit_1_without_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    path = _leave_one_out_file(tmp_path / "emb.npz")
    result = CliRunner().invoke(app, ["eval", "--embeddings", str(path), *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_eval_bad_file_exits_1_naming_the_array(tmp_path: Path) -> None:
    path = _leave_one_out_file(tmp_path / "emb.npz", labels=np.zeros((29, 3), dtype=int))
    result = CliRunner().invoke(app, ["eval", "--embeddings", str(path)])
    assert result.exit_code == 1
    assert "`labels` must have shape" in result.output
    assert "Traceback" not in result.output


def test_cli_eval_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--embeddings", str(tmp_path / "nope.npz")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_per_query_file_keeps_the_counted_queries_and_their_indices(tmp_path: Path) -> None:
    from dymlbench.evaluation import evaluate_leave_one_out
    from dymlbench.evaluation.report import write_per_query

    rng = np.random.default_rng(2)
    fine = np.array([0, 0, 1, 1, 2, 3, 3, 3])  # item 4 has no other item of its fine class
    labels = np.stack([fine, fine // 2], axis=1)
    report = evaluate_leave_one_out(rng.normal(size=(8, 4)).astype(np.float32), labels)

    write_per_query(tmp_path / "per_query.npz", report)

    with np.load(tmp_path / "per_query.npz") as arrays:
        assert arrays["fine/query_index"].tolist() == [0, 1, 2, 3, 5, 6, 7]
        assert arrays["middle/query_index"].tolist() == list(range(8))
        assert arrays["fine/map"].mean() == pytest.approx(report.metrics["fine/map"])
        assert arrays["multi/hap"].mean() == pytest.approx(report.metrics["multi/hap"])
        assert {"fine/asi", "fine/recall@10", "multi/query_index"} <= set(arrays.files)
    assert not list(tmp_path.glob(".*.tmp"))
