"""Readers, hierarchy, validation split and ``data check`` on generated files in the released
layout of each dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dymlbench.cli import app
from dymlbench.data import (
    BENCHMARK_COLUMNS,
    HIERARCHY_COLUMNS,
    DataFormatError,
    DataNotFoundError,
    DataSpec,
    ImageFilesError,
    check_dataset,
    load_dataset,
    read_label_file,
    split_validation,
    write_label_file,
)
from dymlbench.hierarchy import Hierarchy

TRAIN_HEADER = ("fname", "coarse_id", "middle_id", "fine_id")
BENCHMARK_HEADER = ("fname", "labels")
N_FINE = 8
PER_CLASS = 3


def _write_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg")
        names.append(f"{i}.jpg")
    return names


def _table(n_fine: int, per_class: int, offset: int) -> np.ndarray:
    """Labels [n, 3] (fine, middle, coarse) in non-contiguous ids: 2 fine per middle."""
    rows = [(offset + 101 * f, 7 + 5 * (f // 2), 3 + (f // 4)) for f in range(n_fine)]
    return np.repeat(np.array(rows, dtype=np.int64), per_class, axis=0)


def make_layout(root: Path, dataset: str, *, header: str = "fused") -> Path:
    """A tiny dataset in the released layout of ``dataset`` (vehicle, animal or product)."""
    labels = _table(N_FINE, PER_CLASS, 1000)
    names = _write_images(root / "train" / "imgs", len(labels))
    _write(root / "train" / "label.csv", names, labels, TRAIN_HEADER, header)
    test = _table(4, PER_CLASS, 5000)
    if dataset == "product":
        names = _write_images(root / "mini-bmk_all_in_one" / "imgs", len(test))
        _write(root / "mini-bmk_all_in_one" / "label.csv", names, test, TRAIN_HEADER, header)
        return root
    for level, name in enumerate(("fine", "middle", "coarse")):
        folder = root / f"bmk_{name}"
        gallery = _write_images(folder / "gallery", len(test))
        _write(folder / "gallery.csv", gallery, test[:, level], BENCHMARK_HEADER, header)
        query = _write_images(folder / "query", 4)
        _write(folder / "query.csv", query, test[:4, level], BENCHMARK_HEADER, header)
    return root


def _write(path: Path, names, labels, columns, header: str) -> None:
    if header == "none":
        labels = np.asarray(labels).reshape(len(names), -1)
        lines = [
            ", ".join([n, *(str(v) for v in row[::-1])])
            for n, row in zip(names, labels, strict=True)
        ]
        path.write_text("\n".join(lines) + "\n")
    else:
        write_label_file(path, names, labels, header=columns, fused=header == "fused")


def _spec(root: Path) -> DataSpec:
    # the tiny layouts have other class counts than the published ones: read them as `toy`,
    # which detects the layout from the folder
    return DataSpec(dataset="toy", data_dir=root)


def _check(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["data", "check", "--dataset", "toy", "--data-dir", str(root)], catch_exceptions=False
    )
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DYMLBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DYMLBENCH_DATA", raising=False)


@pytest.mark.parametrize("header", ["fused", "ordinary", "none"])
@pytest.mark.parametrize("dataset", ["vehicle", "animal", "product"])
def test_every_row_is_read(tmp_path, dataset, header):
    root = make_layout(tmp_path, dataset, header=header)
    data = load_dataset(_spec(root))

    assert len(data.train) == N_FINE * PER_CLASS
    assert data.train.fnames[0] == "0.jpg"
    assert data.hierarchy.n_classes == (N_FINE, N_FINE // 2, N_FINE // 4)
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.max(axis=0).tolist() == [N_FINE - 1, N_FINE // 2 - 1, 1]
    if dataset == "product":
        assert data.layout == "all_in_one" and len(data.test) == 4 * PER_CLASS
        assert data.benchmarks == {}
    else:
        assert sorted(data.benchmarks) == ["coarse", "fine", "middle"]
        fine = data.benchmarks["fine"]
        assert len(fine.query) == 4 and len(fine.gallery) == 4 * PER_CLASS
        # query and gallery share one id space
        assert fine.query.labels[:, 0].tolist() == fine.gallery.labels[:4, 0].tolist()


def test_fused_header_line_numbers_and_original_ids(tmp_path):
    path = tmp_path / "label.csv"
    path.write_text("fname, coarse_id, middle_id, fine_id0.jpg, 3, 41, 12007\n\n1.jpg, 3, 41, 9\n")
    table = read_label_file(path, columns=HIERARCHY_COLUMNS)

    assert table.header == "fused"
    assert table.fnames == ("0.jpg", "1.jpg")
    assert table.labels.tolist() == [[12007, 41, 3], [9, 41, 3]]
    assert table.line_numbers.tolist() == [1, 3]


def test_fused_header_with_an_unusual_name_uses_the_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "img_0.jpg").write_bytes(b"")
    path = tmp_path / "query.csv"
    path.write_text("fname, levelimg_0.jpg, 17\nimg_1.jpg, 4\n")
    table = read_label_file(path, columns=BENCHMARK_COLUMNS, image_dir=tmp_path / "imgs")
    assert table.fnames == ("img_0.jpg", "img_1.jpg")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("fname, labels0.jpg, 1\n1.jpg\n", "line 2 .* must have 2 fields", id="short"),
        pytest.param("fname, labels0.jpg, 1\n1.jpg, 2, 3\n", "line 2 .* got 3", id="long"),
        pytest.param("fname, labels0.jpg, 1\n1.jpg, x7\n", "line 2 .* an integer", id="nonint"),
        pytest.param("", r"is empty \(line 1\)", id="empty"),
        pytest.param("fname, labels\n", "only a header line", id="header-only"),
        pytest.param("fname, labels0.jpg, 1.5\n", "line 1 .* must be an integer", id="float"),
    ],
)  # fmt: skip
def test_malformed_benchmark_file(tmp_path, text, expected):
    path = tmp_path / "query.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=expected) as info:
        read_label_file(path, columns=BENCHMARK_COLUMNS)
    assert str(path) in str(info.value)


def _break(root: Path, kind: str) -> str:
    """Damage a valid layout; returns a text the error must contain."""
    train = root / "train" / "label.csv"
    lines = train.read_text().splitlines()
    if kind == "short-row":
        lines[4] = "4.jpg, 3, 7"
        train.write_text("\n".join(lines) + "\n")
        return f"line 5 of `{train}`"
    if kind == "non-integer":
        lines[2] = "2.jpg, 3, seven, 1000"
        train.write_text("\n".join(lines) + "\n")
        return "line 3"
    if kind == "hierarchy":
        lines[6] = "6.jpg, 3, 12, 1101"  # fine 1101 sits under middle 7 elsewhere
        train.write_text("\n".join(lines) + "\n")
        return "line 4 and under middle class 12"
    if kind == "empty":
        (root / "bmk_middle" / "gallery.csv").write_text("")
        return "empty"
    if kind == "missing-image":
        (root / "train" / "imgs" / "5.jpg").unlink()
        return "5.jpg"
    if kind == "corrupt-jpeg":
        path = root / "bmk_fine" / "gallery" / "2.jpg"
        path.write_bytes(path.read_bytes()[:40])
        return "2.jpg does not decode"
    if kind == "missing-benchmark":
        for path in sorted((root / "bmk_coarse").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (root / "bmk_coarse").rmdir()
        return "bmk_coarse"
    raise AssertionError(kind)


KINDS = [
    "short-row",
    "non-integer",
    "hierarchy",
    "empty",
    "missing-image",
    "corrupt-jpeg",
    "missing-benchmark",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_problem_fails_data_check(tmp_path, kind):
    root = make_layout(tmp_path / "data", "vehicle")
    expected = _break(root, kind)

    code, output = _check(root)
    report = check_dataset(DataSpec(dataset="toy", data_dir=root))
    assert code == 1
    assert not report.ok
    assert any(expected in problem for problem in report.problems), report.problems


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "corrupt-jpeg"])
def test_each_problem_stops_loading(tmp_path, kind):
    root = make_layout(tmp_path / "data", "vehicle")
    expected = _break(root, kind)
    with pytest.raises((DataFormatError, DataNotFoundError, ImageFilesError, ValueError)) as info:
        load_dataset(DataSpec(dataset="toy", data_dir=root))
    assert expected in str(info.value)


def test_hierarchy_error_names_both_rows(tmp_path):
    root = make_layout(tmp_path, "product")
    _break(root, "hierarchy")
    with pytest.raises(ValueError, match=r"label.csv line 4 and under .*label.csv line 7"):
        load_dataset(DataSpec(dataset="toy", data_dir=root))


def test_missing_images_error_gives_count_and_paths(tmp_path):
    root = make_layout(tmp_path, "product")
    for name in ("1.jpg", "2.jpg"):
        (root / "train" / "imgs" / name).unlink()
    with pytest.raises(ImageFilesError, match=r"2 of 24 are missing, e\.g\. .*1\.jpg, .*2\.jpg"):
        load_dataset(DataSpec(dataset="toy", data_dir=root))


def test_not_found_error_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(DataSpec(dataset="animal", data_dir=tmp_path))
    message = str(info.value)
    for text in (str(tmp_path), "--data-dir", "$DYMLBENCH_DATA", "SupetZYK", "--dataset toy"):
        assert text in message

    code, output = _check(tmp_path)
    assert code == 1 and "error:" in output and "Traceback" not in output


def test_data_dir_from_environment_and_subfolder(tmp_path, monkeypatch):
    make_layout(tmp_path / "DyML-Animal", "animal")
    monkeypatch.setenv("DYMLBENCH_DATA", str(tmp_path))
    from dymlbench.data import resolve_data_dir

    assert resolve_data_dir(DataSpec(dataset="animal")) == tmp_path / "DyML-Animal"


def test_published_counts_are_checked(tmp_path):
    root = make_layout(tmp_path, "product")
    report = check_dataset(DataSpec(dataset="product", data_dir=root))
    assert any("published (1639, 171, 36)" in problem for problem in report.problems)


def test_check_json_and_self_match(tmp_path):
    root = make_layout(tmp_path / "data", "vehicle")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["data", "check", "--dataset", "toy", "--data-dir", str(root), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["train_classes"] == [N_FINE, N_FINE // 2, N_FINE // 4]
    # query i and gallery i hold the same generated pixels, so identical content
    assert {m["benchmark"]: m["in_gallery_by_content"] for m in report["self_match"]} == {
        "fine": 4,
        "middle": 4,
        "coarse": 4,
    }


def test_reading_and_checking_write_nothing_into_the_dataset(tmp_path):
    root = make_layout(tmp_path / "data", "vehicle")
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))
    data = load_dataset(DataSpec(dataset="toy", data_dir=root))
    data.benchmarks["fine"].item_ids()
    check_dataset(DataSpec(dataset="toy", data_dir=root))
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_item_ids_follow_content_not_names(tmp_path):
    root = make_layout(tmp_path, "vehicle")
    benchmark = load_dataset(DataSpec(dataset="toy", data_dir=root)).benchmarks["fine"]
    query_ids, gallery_ids = benchmark.item_ids()
    assert query_ids.tolist() == gallery_ids[:4].tolist()
    assert len(set(gallery_ids.tolist())) == len(gallery_ids)


def test_hierarchy_remaps_and_keeps_parents():
    raw = _table(N_FINE, 1, 1000)
    hierarchy = Hierarchy.from_labels(raw[::-1])
    assert hierarchy.n_classes == (8, 4, 2)
    assert (hierarchy.original_labels == raw[::-1]).all()
    ancestors = hierarchy.ancestors(0)
    assert (ancestors[hierarchy.labels[:, 0]] == hierarchy.labels).all()
    assert hierarchy.children(1, 0).tolist() == [0, 1]


def test_hierarchy_rejects_a_middle_class_under_two_coarse_classes():
    labels = np.array([[1, 10, 100], [2, 10, 101]])
    with pytest.raises(ValueError, match="middle class 10 is under coarse class 100 at row 0"):
        Hierarchy.from_labels(labels)


def test_validation_split_is_class_disjoint_and_deterministic(tmp_path):
    root = make_layout(tmp_path, "product")
    data = load_dataset(DataSpec(dataset="toy", data_dir=root, val_fraction=0.5, val_seed=3))
    again = load_dataset(DataSpec(dataset="toy", data_dir=root, val_fraction=0.5, val_seed=3))
    train, validation = data.train, data.validation

    assert train.fnames == again.train.fnames
    assert set(train.hierarchy.class_ids[0]).isdisjoint(validation.hierarchy.class_ids[0])
    assert len(train) + len(validation) == N_FINE * PER_CLASS
    assert train.hierarchy.n_classes[1:] == (N_FINE // 2, N_FINE // 4)
    assert train.labels[:, 0].max() == train.hierarchy.n_classes[0] - 1
    assert data.spec.to_dict()["val_protocol"] == "leave_one_out"
    with pytest.raises(ValueError, match="must hold out at least one"):
        split_validation(train.subset(train.labels[:, 0] < 2, name="tiny"), fraction=0.1, seed=0)


def test_spec_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="did you mean `channel_order`.* dataset, data_dir"):
        DataSpec.from_dict({"dataset": "toy", "chanel_order": "rgb"})
    with pytest.raises(ValueError, match="`channel_order` must be one of 'bgr', 'rgb'"):
        DataSpec(dataset="toy", channel_order="hsv")
    spec = DataSpec(dataset="vehicle", data_dir="/data/v")
    assert DataSpec.from_dict(spec.to_dict()) == DataSpec(
        dataset="vehicle", data_dir=Path("/data/v")
    )
    assert spec.channel_order == "bgr" and spec.crop_size == 224 and spec.test_resize == 256
