"""The published table, ``leaderboards/published.yaml``: reading and schema check.

The file (its header comment states the schema) holds every row of REFERENCE.md section 5: per
row the method's name in the source table, its registry key, the paper it comes from, the
backbone, embedding size and batch where known, and per dataset the initialisation, the epochs
and the overall metrics in percent. :func:`load_published` checks every key and value and names
the file and the key of the first problem. Keys are closed: a misspelt one is an error that
lists the valid ones, so a typo cannot drop a number silently.

Example:
    >>> row = {"name": "MSA", "method": "msa", "paper": "msa", "paper_presumed": False,
    ...        "backbone": "resnet34", "embedding_dim": 513, "batch": "64x4",
    ...        "results": {"vehicle": {"initialisation": "dino", "epochs": 70,
    ...                                "metrics": {"overall/asi": 55.6}}}}
    >>> data = {"schema_version": 1, "source": "MSA paper", "papers": {"msa": "Zhang et al."},
    ...         "rows": [row]}
    >>> parse_published(data).for_dataset("vehicle")[0].metrics["overall/asi"]
    55.6
    >>> row["results"]["vehicle"]["metrics"] = {"overall/mAP": 40.8}
    >>> parse_published(data)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dymlbench.leaderboard.published.PublishedSchemaError: `published.yaml`: `rows[0].results\
.vehicle.metrics` must hold only the keys overall/asi, ..., but got 'overall/mAP'
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dymlbench.config import DATASETS

SCHEMA_VERSION = 1
"""Version of the ``published.yaml`` schema."""

PUBLISHED_METRICS: tuple[str, ...] = (
    "overall/asi",
    "overall/map",
    "overall/recall@1",
    "overall/recall@10",
    "overall/recall@20",
)
"""The metric keys a published row may give, in the order of the source table."""

_BATCH_PATTERN = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")
_KEY_PATTERN = re.compile(r"[a-z][a-z0-9_-]*")
_TOP_KEYS = ("schema_version", "source", "papers", "rows")
_ROW_KEYS = (
    "name",
    "method",
    "paper",
    "paper_presumed",
    "backbone",
    "embedding_dim",
    "batch",
    "results",
)
_ROW_OPTIONAL = ("note",)
_RESULT_KEYS = ("initialisation", "epochs", "metrics")


class PublishedSchemaError(ValueError):
    """A ``published.yaml`` that does not follow the schema; the message names file and key."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedEntry:
    """One published row on one dataset.

    Attributes:
        name: the row's name in the source table (``"CSL (rerun by HAPPIER)"``).
        method: the registry key of the method, or ``None`` if none is registered.
        dataset: the dataset name.
        paper: the key of the paper the row comes from, or ``None`` where unknown.
        citation: that paper's citation, or ``None``.
        paper_presumed: whether the paper is presumed rather than stated.
        backbone: the backbone, or ``None`` where unknown.
        embedding_dim: the embedding size, or ``None`` where unknown.
        batch: ``"<classes>x<images>"``, or ``None`` where unknown.
        initialisation: ``"scratch"``, ``"imagenet"``, ``"dino"``..., or ``None`` where unknown.
        epochs: the training epochs, or ``None`` where unknown.
        note: one sentence about the row, or ``None``.
        metrics: metric key (:data:`PUBLISHED_METRICS`) to the value in percent; a value the
            source does not give is absent.
    """

    name: str
    method: str | None
    dataset: str
    paper: str | None
    citation: str | None
    paper_presumed: bool
    backbone: str | None
    embedding_dim: int | None
    batch: str | None
    initialisation: str | None
    epochs: int | None
    note: str | None
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedTable:
    """The whole published table.

    Attributes:
        source: the table the numbers are copied from.
        papers: paper key to its citation.
        entries: one per row and dataset, in the file's order.
    """

    source: str
    papers: Mapping[str, str]
    entries: tuple[PublishedEntry, ...]

    def for_dataset(self, dataset: str) -> list[PublishedEntry]:
        """The entries of one dataset, in the file's order."""
        return [entry for entry in self.entries if entry.dataset == dataset]

    @property
    def datasets(self) -> tuple[str, ...]:
        """The datasets that have at least one entry, in the order of :data:`DATASETS`."""
        present = {entry.dataset for entry in self.entries}
        return tuple(name for name in DATASETS if name in present)


def load_published(path: str | Path) -> PublishedTable:
    """Read and check a published table.

    Args:
        path: the YAML file, e.g. the repository's ``leaderboards/published.yaml``.

    Returns:
        The checked table.

    Raises:
        FileNotFoundError: the file does not exist.
        PublishedSchemaError: the file is not valid YAML or breaks the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"`published` must be the published table (leaderboards/published.yaml), but "
            f"`{path}` does not exist; run from the repository root or pass `--published`"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PublishedSchemaError(f"`{path}` must be valid YAML, but: {error}") from None
    return parse_published(data, source=str(path))


def parse_published(data: Any, *, source: str = "published.yaml") -> PublishedTable:
    """Check the loaded YAML of a published table and build it (see :func:`load_published`).

    Args:
        data: the output of ``yaml.safe_load``.
        source: the file name used in error messages.
    """
    checker = _Checker(source)
    checker.mapping(data, "", required=_TOP_KEYS, closed=True)
    if data["schema_version"] != SCHEMA_VERSION:
        checker.fail("schema_version", f"must be {SCHEMA_VERSION}", data["schema_version"])
    table_source = checker.text(data["source"], "source")
    papers = checker.mapping(data["papers"], "papers")
    for key, citation in papers.items():
        checker.key(key, f"papers.{key}")
        checker.text(citation, f"papers.{key}")
    rows = data["rows"]
    if not isinstance(rows, list) or not rows:
        checker.fail("rows", "must be a non-empty list of rows", rows)

    entries: list[PublishedEntry] = []
    names: set[str] = set()
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        checker.mapping(row, where, required=_ROW_KEYS, optional=_ROW_OPTIONAL, closed=True)
        name = checker.text(row["name"], f"{where}.name")
        if name in names:
            checker.fail(f"{where}.name", "must be unique among the rows", name)
        names.add(name)
        method = checker.optional(checker.key, row["method"], f"{where}.method")
        paper = checker.optional(checker.key, row["paper"], f"{where}.paper")
        if paper is not None and paper not in papers:
            checker.fail(f"{where}.paper", f"must be one of {sorted(papers)} or null", paper)
        presumed = row["paper_presumed"]
        if not isinstance(presumed, bool):
            checker.fail(f"{where}.paper_presumed", "must be true or false", presumed)
        backbone = checker.optional(checker.text, row["backbone"], f"{where}.backbone")
        embedding_dim = checker.optional(
            checker.positive_int, row["embedding_dim"], f"{where}.embedding_dim"
        )
        batch = checker.optional(checker.batch, row["batch"], f"{where}.batch")
        note = checker.optional(checker.text, row.get("note"), f"{where}.note")
        results = checker.mapping(row["results"], f"{where}.results")
        if not results:
            checker.fail(f"{where}.results", "must give at least one dataset", results)

        for dataset, result in results.items():
            at = f"{where}.results.{dataset}"
            if dataset not in DATASETS:
                checker.fail(at, f"must be keyed by a dataset of {list(DATASETS)}", dataset)
            checker.mapping(result, at, required=_RESULT_KEYS, closed=True)
            initialisation = checker.optional(
                checker.key, result["initialisation"], f"{at}.initialisation"
            )
            epochs = checker.optional(checker.positive_int, result["epochs"], f"{at}.epochs")
            metrics = checker.mapping(
                result["metrics"], f"{at}.metrics", optional=PUBLISHED_METRICS, closed=True
            )
            if not metrics:
                checker.fail(f"{at}.metrics", "must give at least one metric", metrics)
            values = {
                key: checker.percent(metrics[key], f"{at}.metrics.{key}")
                for key in PUBLISHED_METRICS
                if key in metrics
            }
            entries.append(
                PublishedEntry(
                    name=name,
                    method=method,
                    dataset=dataset,
                    paper=paper,
                    citation=papers.get(paper) if paper is not None else None,
                    paper_presumed=presumed,
                    backbone=backbone,
                    embedding_dim=embedding_dim,
                    batch=batch,
                    initialisation=initialisation,
                    epochs=epochs,
                    note=note,
                    metrics=types.MappingProxyType(values),
                )
            )
    return PublishedTable(
        source=table_source, papers=types.MappingProxyType(dict(papers)), entries=tuple(entries)
    )


class _Checker:
    """Schema checks that raise :class:`PublishedSchemaError` naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, must: str, value: Any) -> None:
        key = f"`{where}` " if where else "the file "
        raise PublishedSchemaError(f"`{self.source}`: {key}{must}, but got {value!r}")

    def mapping(
        self,
        value: Any,
        where: str,
        *,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
        closed: bool = False,
    ) -> dict[str, Any]:
        """Check a mapping; a closed one may hold only the required and optional keys."""
        if not isinstance(value, dict):
            self.fail(where, "must be a mapping", value)
        prefix = f"{where}." if where else ""
        valid = (*required, *optional)
        for key in value:
            if closed and key not in valid:
                self.fail(where, f"must hold only the keys {', '.join(valid)}", key)
        for key in required:
            if key not in value:
                self.fail(f"{prefix}{key}", "must be given", None)
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, "must be a non-empty string", value)
        return value

    def key(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not _KEY_PATTERN.fullmatch(value):
            self.fail(where, "must be a lower-case key (letters, digits, '-', '_')", value)
        return value

    def positive_int(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(where, "must be a positive integer or null", value)
        return value

    def batch(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not _BATCH_PATTERN.fullmatch(value):
            self.fail(where, "must be '<classes>x<images>' (e.g. '64x4') or null", value)
        return value

    def percent(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            self.fail(where, "must be a number in [0, 100] (percent)", value)
        return float(value)

    def optional(self, check: Any, value: Any, where: str) -> Any:
        return None if value is None else check(value, where)
