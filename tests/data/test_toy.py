"""The toy dataset: deterministic, read by the real readers, class-disjoint train and test."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from dymlbench.data import (
    DataSpec,
    ToyConfig,
    ensure_toy_dataset,
    generate_toy_dataset,
    load_dataset,
)

SMALL = dict(
    image_size=24,
    n_coarse=2,
    middle_per_coarse=2,
    train_fine_per_middle=3,
    test_fine_per_middle=2,
    train_images_per_class=3,
    test_images_per_class=3,
    queries_per_class=1,
)


def _same_tree(left, right) -> bool:
    compare = filecmp.dircmp(left, right)
    if compare.left_only or compare.right_only or compare.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compare.common_files, shallow=False)
    return (
        not mismatch
        and not errors
        and all(_same_tree(left / name, right / name) for name in compare.common_dirs)
    )


@pytest.mark.parametrize("layout", ["vehicle", "product"])
def test_same_seed_same_files(tmp_path, layout):
    config = ToyConfig(layout=layout, **SMALL)
    first = generate_toy_dataset(tmp_path / "a", seed=5, config=config)
    second = generate_toy_dataset(tmp_path / "b", seed=5, config=config)
    other = generate_toy_dataset(tmp_path / "c", seed=6, config=config)
    assert _same_tree(first, second)
    assert not _same_tree(first, other)


def test_fused_header_is_written(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", config=ToyConfig(**SMALL))
    assert (
        (root / "train" / "label.csv")
        .read_text()
        .startswith("fname, coarse_id, middle_id, fine_id0.jpg, ")
    )
    assert (root / "bmk_fine" / "query.csv").read_text().startswith("fname, labels0.jpg, ")


def test_vehicle_layout_read_back(tmp_path):
    config = ToyConfig(**SMALL)
    root = generate_toy_dataset(tmp_path / "toy", seed=1, config=config)
    data = load_dataset(DataSpec(dataset="toy", data_dir=root))

    assert data.hierarchy.n_classes == (12, 4, 2)
    assert len(data.train) == 12 * 3
    train_fine = set(data.train.hierarchy.class_ids[0].tolist())
    for level, benchmark in data.benchmarks.items():
        assert len(benchmark.gallery) == 8 * 3
        assert len(benchmark.query) == {"fine": 8, "middle": 4, "coarse": 2}[level] * (
            8 // {"fine": 8, "middle": 4, "coarse": 2}[level]
        )
        query_ids, gallery_ids = benchmark.item_ids()
        assert np.isin(query_ids, gallery_ids).all()
    test_fine = set(data.benchmarks["fine"].gallery.hierarchy.class_ids[0].tolist())
    assert train_fine.isdisjoint(test_fine)
    middle_train = set(data.train.hierarchy.class_ids[1].tolist())
    assert middle_train == set(data.benchmarks["middle"].gallery.hierarchy.class_ids[0].tolist())


def test_product_layout_read_back(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", config=ToyConfig(layout="product", **SMALL))
    data = load_dataset(DataSpec(dataset="toy", data_dir=root))
    assert data.layout == "all_in_one"
    assert data.test.hierarchy.n_classes == (8, 4, 2)
    assert len(data.test) == 8 * 3
    assert set(data.train.hierarchy.class_ids[0]).isdisjoint(data.test.hierarchy.class_ids[0])
    assert (data.train.hierarchy.class_ids[1] == data.test.hierarchy.class_ids[1]).all()


def test_out_must_be_new(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="`--out` must be a new or empty folder"):
        generate_toy_dataset(tmp_path / "full", config=ToyConfig(**SMALL))


def test_ensure_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DYMLBENCH_CACHE", str(tmp_path))
    config = ToyConfig(**SMALL)
    root = ensure_toy_dataset(layout="vehicle", seed=2, config=config)
    assert root.is_relative_to(tmp_path)
    stamp = (root / "train" / "label.csv").stat().st_mtime_ns
    assert ensure_toy_dataset(layout="vehicle", seed=2, config=config) == root
    assert (root / "train" / "label.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary left over


def test_cli_toy_then_check(tmp_path):
    from typer.testing import CliRunner

    from dymlbench.cli import app

    runner = CliRunner()
    out = tmp_path / "toy"
    result = runner.invoke(app, ["data", "toy", "--out", str(out), "--layout", "product"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "check", "--dataset", "toy", "--data-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output
    result = runner.invoke(app, ["data", "toy", "--out", str(out)])
    assert result.exit_code == 1 and "must be a new or empty folder" in result.output
