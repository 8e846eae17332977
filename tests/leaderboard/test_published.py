"""``leaderboards/published.yaml``: every published row, its schema, and its agreement with
``dymlbench/published.py`` (what ``dymlbench run`` prints)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dymlbench import published as run_published
from dymlbench.leaderboard.published import (
    PublishedSchemaError,
    load_published,
    parse_published,
)
from dymlbench.registry import list_methods

ROW_NAMES = [
    "Triplet",
    "N-pair",
    "Multi-Similarity",
    "CosFace",
    "Circle",
    "CSL",
    "CLCD-ACR",
    "CLCD-ICR",
    "CSL (rerun by HAPPIER)",
    "HAPPIER",
    "MSA",
]
"""The rows of REFERENCE.md section 5, in its order."""

CLCD = {
    ("CLCD-ACR", "vehicle"): (16.0, 42.9, 74.0, 84.1),
    ("CLCD-ACR", "animal"): (36.0, 57.1, 85.2, 90.1),
    ("CLCD-ACR", "product"): (29.4, 58.8, 86.2, 90.7),
    ("CLCD-ICR", "vehicle"): (16.6, 43.7, 75.4, 86.3),
    ("CLCD-ICR", "animal"): (35.7, 56.0, 84.8, 89.7),
    ("CLCD-ICR", "product"): (30.2, 59.5, 87.1, 92.1),
}
"""The two rows without a registered method, which dymlbench/published.py does not hold."""


def test_every_published_row_is_there_on_the_three_datasets(published_path: Path) -> None:
    table = load_published(published_path)

    for dataset in ("vehicle", "animal", "product"):
        assert [entry.name for entry in table.for_dataset(dataset)] == ROW_NAMES
    assert table.datasets == ("vehicle", "animal", "product")


def test_the_rows_without_a_method_hold_the_reference_numbers(published_path: Path) -> None:
    table = load_published(published_path)
    keys = ("overall/map", "overall/recall@1", "overall/recall@10", "overall/recall@20")

    for (name, dataset), values in CLCD.items():
        (entry,) = [e for e in table.for_dataset(dataset) if e.name == name]
        assert entry.method is None
        assert dict(entry.metrics) == dict(zip(keys, values, strict=True))


def test_the_table_agrees_with_dymlbench_published_value_for_value(published_path: Path) -> None:
    table = load_published(published_path)
    methods = {entry.method for entry in table.entries if entry.method is not None}
    methods |= set(run_published._METHOD_ROWS)

    for method in sorted(methods):
        for dataset in ("vehicle", "animal", "product", "toy"):
            in_yaml = [
                (entry.name, dict(entry.metrics))
                for entry in table.for_dataset(dataset)
                if entry.method == method
            ]
            in_module = [
                (row.source, dict(row.metrics))
                for row in run_published.published_results(method, dataset)
            ]
            assert in_module == in_yaml, (
                f"{method} on {dataset}: dymlbench/published.py and leaderboards/published.yaml "
                "disagree; the YAML is canonical: copy its numbers into dymlbench/published.py"
            )


def test_method_keys_are_registered(published_path: Path) -> None:
    table = load_published(published_path)

    keys = {entry.method for entry in table.entries if entry.method is not None}
    assert keys <= set(list_methods())


def test_rows_state_backbone_and_initialisation_where_known(published_path: Path) -> None:
    table = load_published(published_path)

    msa = [entry for entry in table.entries if entry.name == "MSA"]
    assert {entry.initialisation for entry in msa} == {"dino"}
    happier = {e.dataset: e.initialisation for e in table.entries if e.name == "HAPPIER"}
    assert happier == {"vehicle": "scratch", "animal": "scratch", "product": "imagenet"}
    assert all(entry.backbone == "resnet34" for entry in table.entries if entry.method)


def _mutated(published_path: Path, change) -> dict:
    data = yaml.safe_load(published_path.read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    change(data)
    return data


def _set_metric(data: dict) -> None:
    data["rows"][0]["results"]["vehicle"]["metrics"]["overall/map"] = 180.0


def _misspell_metric(data: dict) -> None:
    metrics = data["rows"][0]["results"]["vehicle"]["metrics"]
    metrics["overall/recal@1"] = metrics.pop("overall/recall@1")


def _unknown_paper(data: dict) -> None:
    data["rows"][1]["paper"] = "cvpr"


def _duplicate_name(data: dict) -> None:
    data["rows"][1]["name"] = data["rows"][0]["name"]


def _bad_batch(data: dict) -> None:
    data["rows"][-1]["batch"] = 256


def _unknown_dataset(data: dict) -> None:
    data["rows"][0]["results"]["vehcle"] = data["rows"][0]["results"].pop("vehicle")


def _missing_backbone(data: dict) -> None:
    del data["rows"][2]["backbone"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _set_metric,
            "`rows[0].results.vehicle.metrics.overall/map` must be a number in [0, 100]",
        ),
        (_misspell_metric, "must hold only the keys overall/asi"),
        (_unknown_paper, "`rows[1].paper` must be one of ['dyml', 'happier', 'msa'] or null"),
        (_duplicate_name, "`rows[1].name` must be unique among the rows, but got 'Triplet'"),
        (_bad_batch, "`rows[10].batch` must be '<classes>x<images>'"),
        (_unknown_dataset, "`rows[0].results.vehcle` must be keyed by a dataset"),
        (_missing_backbone, "`rows[2].backbone` must be given"),
    ],
    ids=[
        "out-of-range",
        "misspelt-key",
        "unknown-paper",
        "duplicate",
        "batch",
        "dataset",
        "missing",
    ],
)
def test_schema_errors_name_the_file_and_the_key(published_path: Path, change, expected) -> None:
    with pytest.raises(PublishedSchemaError) as caught:
        parse_published(_mutated(published_path, change), source="published.yaml")

    assert str(caught.value).startswith("`published.yaml`: ")
    assert expected in str(caught.value)


def test_a_missing_file_says_which_flag_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pass `--published`"):
        load_published(tmp_path / "published.yaml")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "published.yaml"
    path.write_text("rows: [unclosed\n")

    with pytest.raises(PublishedSchemaError, match="must be valid YAML"):
        load_published(path)
