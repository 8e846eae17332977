"""The result of an evaluation: flat metric keys, query counts, and a rich table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dymlbench.hierarchy import LEVEL_NAMES

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one evaluation.

    Attributes:
        metrics: flat keys of DESIGN.md, ``<level>/<metric>``, ``overall/<metric>`` and
            ``multi/<metric>``, to their value (NaN where no query had a relevant item).
        n_queries: queries per level (and ``multi``).
        n_skipped_queries: queries left out of the means per level: those without any
            relevant item.
        mode: ``"default"`` or ``"official"``.
        protocol: ``"leave_one_out"`` or ``"query_gallery"``.
        per_query: per-query values (NaN where undefined), keyed like ``metrics``.
    """

    metrics: dict[str, float]
    n_queries: dict[str, int]
    n_skipped_queries: dict[str, int]
    mode: str
    protocol: str
    per_query: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``metrics``, ``n_queries``, ``n_skipped_queries``, ``mode``."""
        return {
            "metrics": {key: _json_float(value) for key, value in self.metrics.items()},
            "n_queries": dict(self.n_queries),
            "n_skipped_queries": dict(self.n_skipped_queries),
            "mode": self.mode,
            "protocol": self.protocol,
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` atomically (a temporary file, then a rename)."""
        write_json_atomic(Path(path), self.to_dict())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_per_query(path: Path, report: EvaluationReport) -> None:
    """Write the report's per-query values to an ``.npz`` file, atomically.

    Arrays: for each ``<group>/<metric>`` of :attr:`EvaluationReport.per_query`, the values of
    the queries that count (those with a relevant item), as float64 fractions; and for each
    group (a level, or ``multi``) ``<group>/query_index``, int64, the index of each of those
    queries in the query set. Evaluations of the same data share the indices, so two runs can
    be paired query by query.

    Raises:
        ValueError: the report holds no per-query values, or the metrics of one group leave
            out different queries.
    """
    if not report.per_query:
        raise ValueError("`report.per_query` must hold per-query values, but it is empty")
    arrays: dict[str, np.ndarray] = {}
    counted: dict[str, np.ndarray] = {}
    for key, values in report.per_query.items():
        group = key.split("/", 1)[0]
        defined = ~np.isnan(values)
        if group not in counted:
            counted[group] = defined
            arrays[f"{group}/query_index"] = np.flatnonzero(defined).astype(np.int64)
        elif not np.array_equal(counted[group], defined):
            raise ValueError(
                f"every metric of `{group}` must count the same queries, but `{key}` differs"
            )
        arrays[key] = np.asarray(values, dtype=np.float64)[defined]

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def render_table(report: EvaluationReport) -> Table:
    """A rich table with one row per level, then ``overall`` and ``multi``, in percent."""
    from rich.table import Table

    groups: dict[str, dict[str, float]] = {}
    for key, value in report.metrics.items():
        group, metric = key.split("/", 1)
        groups.setdefault(group, {})[metric] = value
    order = [*(name for name in LEVEL_NAMES if name in groups), "overall", "multi"]
    groups = {name: groups[name] for name in order if name in groups}
    metric_names: list[str] = []
    for values in groups.values():
        metric_names += [name for name in values if name not in metric_names]

    title = f"DyML evaluation ({report.protocol.replace('_', '-')}, {report.mode} mode)"
    table = Table(title=title)
    table.add_column("level")
    for name in metric_names:
        table.add_column(_header(name), justify="right")
    table.add_column("queries", justify="right")
    table.add_column("no pos.", justify="right")
    for group, values in groups.items():
        cells = [_percent(values[name]) if name in values else "" for name in metric_names]
        n_queries = str(report.n_queries.get(group, ""))
        n_skipped = str(report.n_skipped_queries.get(group, ""))
        table.add_row(group, *cells, n_queries, n_skipped, end_section=group == "overall")
    return table


_HEADERS = {"map": "mAP", "map@r": "mAP@R", "asi": "ASI", "ndcg": "NDCG", "hap": "H-AP"}


def _header(name: str) -> str:
    if name.startswith("recall@"):
        return "R@" + name.removeprefix("recall@")
    return _HEADERS.get(name, name)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"
