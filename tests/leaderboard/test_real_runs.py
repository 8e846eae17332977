"""The records and per-query files that ``dymlbench run`` writes go through the leaderboard."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine_support import make_small_toy, tiny_overrides

from dymlbench.config import resolve_config
from dymlbench.engine import train
from dymlbench.leaderboard.generate import generate
from dymlbench.leaderboard.records import add_records, load_results


def test_a_real_run_makes_a_row_with_an_interval(published_path: Path, tmp_path: Path) -> None:
    toy = make_small_toy(tmp_path / "toy")
    overrides = tiny_overrides(toy, **{"optim.epochs": 1})
    config = resolve_config(method="triplet", dataset="toy", overrides=overrides)
    run_dir = train(config, output_dir=tmp_path / "run").run_dir
    board = tmp_path / "leaderboards"
    board.mkdir()
    shutil.copyfile(published_path, board / "published.yaml")

    add_records([run_dir], board / "results")
    generate(results_dir=board / "results", out_dir=board, published_path=board / "published.yaml")

    (record,) = load_results(board / "results")
    assert record.per_query_path is not None and record.per_query_path.is_file()
    toy = (board / "toy.md").read_text()
    assert "| #1  | triplet  | dymlbench |" in toy
    assert "no per-query values" not in toy
    assert (board / "plots" / "toy-level-map.png").is_file()
