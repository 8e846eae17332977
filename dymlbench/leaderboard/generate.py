"""Generate the leaderboards: :func:`generate`, what ``dymlbench leaderboard`` runs.

Markdown output (the committed one), into the output folder::

    README.md               the index and the summary across datasets
    <dataset>.md            one page per dataset with published rows or records
    plots/<dataset>-level-map.png     per-level mAP bars per run row
    plots/<dataset>-fine-coarse.png   fine- against coarse-level mAP per run row

A page without run rows (a DyML dataset before any run is added) has the published rows only,
and no plots. Earlier plots and pages of datasets that no longer have any are removed. The
other formats write one ``<dataset>.csv``, ``.json`` or ``.tex`` file per dataset, for papers.
Every file is a function of the records and the published table (:mod:`.render`, :mod:`.plots`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dymlbench.config import DATASETS
from dymlbench.leaderboard import plots, render
from dymlbench.leaderboard.aggregate import (
    HEADLINE,
    Comparison,
    Row,
    build_rows,
    compare_top_two,
    headline_interval,
)
from dymlbench.leaderboard.published import PublishedTable, load_published
from dymlbench.leaderboard.records import StoredRecord, load_results
from dymlbench.leaderboard.stats import N_RESAMPLES, Interval

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("markdown", "csv", "json", "latex")
"""The output formats."""

INDEX_FILE = "README.md"
PLOTS_DIR = "plots"
_EXTENSIONS = {"csv": "csv", "json": "json", "latex": "tex"}


def generate(
    *,
    results_dir: str | Path,
    out_dir: str | Path,
    published_path: str | Path,
    fmt: str = "markdown",
) -> list[Path]:
    """Write the leaderboards from the records and the published table.

    Args:
        results_dir: the folder of published records (``leaderboards/results``).
        out_dir: where the files go (``leaderboards``).
        published_path: the published table (``leaderboards/published.yaml``).
        fmt: one of :data:`FORMATS`.

    Returns:
        The files written, sorted.

    Raises:
        ValueError: an unknown ``fmt``.
        FileNotFoundError: a missing results folder or published table.
        RecordError: a refused record in the results folder.
        PublishedSchemaError: a published table that breaks its schema.
    """
    if fmt not in FORMATS:
        raise ValueError(f"`--format` must be one of {', '.join(FORMATS)}, but got {fmt!r}")
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    records = load_results(results_dir)
    table = load_published(published_path)
    datasets = _datasets(records, table)
    out_dir.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    boards = {dataset: _Board(dataset, records, table) for dataset in datasets}
    if fmt == "markdown":
        link_root = render.relative_link(results_dir, out_dir)
        for board in boards.values():
            written += board.write_markdown(out_dir, link_root)
        index = out_dir / INDEX_FILE
        _write(index, _index_page(list(boards.values()), table, link_root))
        written.append(index)
        _remove_stale(out_dir, written)
    else:
        for board in boards.values():
            path = out_dir / f"{board.dataset}.{_EXTENSIONS[fmt]}"
            _write(path, board.text(fmt))
            written.append(path)
    logger.debug("wrote %d files to %s", len(written), out_dir)
    return sorted(written)


def _datasets(records: Sequence[StoredRecord], table: PublishedTable) -> list[str]:
    present = {item.dataset for item in records} | set(table.datasets)
    known = [name for name in DATASETS if name in present]
    return known + sorted(present - set(known))


class _Board:
    """One dataset's rows and statistics."""

    def __init__(
        self, dataset: str, records: Sequence[StoredRecord], table: PublishedTable
    ) -> None:
        self.dataset = dataset
        self.source = table.source
        self.title = render.DATASET_TITLES.get(dataset, dataset)
        self.rows = build_rows(dataset, records, table.entries)
        self.runs = [row for row in self.rows if not row.is_published]
        self.n_records = sum(row.n_seeds for row in self.runs)
        self.ids = render.row_ids(self.rows)
        self.intervals: dict[int, Interval | None] = {
            id(row): headline_interval(row) for row in self.runs
        }
        self.comparison: Comparison | None = compare_top_two(self.rows)

    def plot_paths(self) -> dict[str, str]:
        """Plot kind to the file name under ``plots/`` (none without run rows)."""
        if not self.runs:
            return {}
        names = {}
        if plots.level_map_data(self.rows, self.ids)["levels"]:
            names["level-map"] = f"{self.dataset}-level-map.png"
        if plots.tradeoff_data(self.rows, self.ids)["rows"]:
            names["fine-coarse"] = f"{self.dataset}-fine-coarse.png"
        return names

    def write_markdown(self, out_dir: Path, link_root: str) -> list[Path]:
        written = []
        names = self.plot_paths()
        if "level-map" in names:
            path = out_dir / PLOTS_DIR / names["level-map"]
            plots.plot_level_map(
                plots.level_map_data(self.rows, self.ids), f"{self.title}: mAP per level", path
            )
            written.append(path)
        if "fine-coarse" in names:
            path = out_dir / PLOTS_DIR / names["fine-coarse"]
            plots.plot_tradeoff(
                plots.tradeoff_data(self.rows, self.ids),
                f"{self.title}: fine- against coarse-level mAP",
                path,
            )
            written.append(path)
        page = out_dir / f"{self.dataset}.md"
        _write(page, self.page(link_root, names))
        written.append(page)
        return written

    def page(self, link_root: str, plot_names: dict[str, str]) -> str:
        """The dataset's markdown page."""
        headline = render.metric_header(HEADLINE)
        n_published = len(self.rows) - len(self.runs)
        parts = [
            f"# {self.title}",
            render.GENERATED_NOTE,
            f"[All leaderboards](README.md). {len(self.runs)} rows from {self.n_records} "
            f"records of runs, {n_published} published rows. Values in percent. A run row is "
            "one method in one setting: its cells are the mean ± sample standard deviation "
            "over its seeds (`seeds`). A published row is one number as printed in its source "
            "(single runs; setting `-` where the source does not say). Sorted by overall "
            f"{headline}, then mAP.",
            "## Overall",
            render.markdown_table(render.overall_frame(self.rows)),
            _SETTING_LEGEND,
        ]
        parts += self._published_notes()

        parts.append("## Per level")
        groups = render.run_groups(self.rows)
        if not groups:
            parts.append(
                "No runs on this dataset yet: the published numbers are overall only. Add runs "
                "with `dymlbench leaderboard add RUN_DIR`."
            )
        for group in groups:
            title = "multi-level (all levels at once)" if group == "multi" else group
            parts += [f"### {title}", render.markdown_table(render.group_frame(self.rows, group))]

        parts += ["## Statistics", *self._statistics()]
        if plot_names:
            parts.append("## Plots")
            if "level-map" in plot_names:
                parts.append(
                    f"![mAP per level]({PLOTS_DIR}/{plot_names['level-map']})\n\n"
                    "mAP at each level per run row; bars: standard deviation over seeds."
                )
            if "fine-coarse" in plot_names:
                parts.append(
                    f"![fine- against coarse-level mAP]({PLOTS_DIR}/{plot_names['fine-coarse']})"
                    "\n\nThe trade-off DyML is about: one embedding good at the fine and at the "
                    "coarse scale is up and to the right."
                )
        if self.runs:
            parts += [
                "## Hardware, cost and records",
                render.markdown_table(render.cost_frame(self.rows, link_root=link_root)),
            ]
        return "\n\n".join(parts) + "\n"

    def _published_notes(self) -> list[str]:
        published = [row for row in self.rows if row.is_published]
        if not published:
            return []
        short = render.short_citation(self.source)
        lines = []
        for row in published:
            entry = row.published
            source = entry.citation or "source unknown."
            if entry.paper_presumed:
                source += " (presumed)"
            note = f" {entry.note}" if entry.note else ""
            lines.append(f"- {self.ids[id(row)]} {entry.name}: {source}{note}")
        return [
            "Published rows, from the table of "
            f'{short}; "presumed" where that table does not name the paper a row comes from:',
            "\n".join(lines),
        ]

    def _statistics(self) -> list[str]:
        headline = render.metric_header(HEADLINE)
        if not self.runs:
            return ["Not enough data: no rows from runs."]
        intervals = render.markdown_table(render.interval_frame(self.rows, self.intervals))
        return [
            f"### Overall {headline}: 95% bootstrap interval over queries",
            f"Per query, its value averaged over the row's seeds; {N_RESAMPLES} resamples of "
            "the queries of each level, independently, the levels averaged (fixed seed).",
            intervals,
            "### The two best rows",
            render.comparison_text(self.comparison, self.ids),
        ]

    def text(self, fmt: str) -> str:
        """The dataset's rows in ``csv``, ``json`` or ``latex``."""
        if fmt == "csv":
            return render.csv_text(self.rows)
        if fmt == "latex":
            return render.latex_text(self.dataset, self.rows)
        extra = {
            "intervals": {
                self.ids[id(row)]: _interval_payload(self.intervals[id(row)]) for row in self.runs
            },
            "comparison": _comparison_payload(self.comparison, self.ids),
        }
        return render.json_text(self.dataset, self.rows, extra)


_SETTING_LEGEND = (
    "Setting columns: `backbone` (model.backbone); `init` the initialisation "
    "(`scratch`, `imagenet`, or a checkpoint kind with the first 8 hex digits of its SHA-256); "
    "`dim` the embedding size; `epochs`; `batch` classes x images per class; `eval` the test "
    "evaluation's rules (`default` or `official`, engine.eval_mode); `net` the reported network "
    "(`online` or `ema`); `config` a hash of every other key of the run's configuration, so "
    "rows that differ elsewhere stay apart."
)


def _interval_payload(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {
        "estimate": round(interval.estimate, 4),
        "low": round(interval.low, 4),
        "high": round(interval.high, 4),
    }


def _comparison_payload(comparison: Comparison | None, ids: dict[int, str]) -> dict | None:
    if comparison is None:
        return None

    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {
        "first": ids[id(comparison.first)],
        "second": ids[id(comparison.second)],
        "kind": comparison.kind,
        "difference": number(comparison.difference),
        "low": number(comparison.low),
        "high": number(comparison.high),
        "p_value": number(comparison.p_value),
        "min_p_value": number(comparison.min_p_value),
        "n_queries": dict(comparison.n_queries),
        "significant": comparison.significant,
    }


def _index_page(boards: Sequence[_Board], table: PublishedTable, link_root: str) -> str:
    headline = render.metric_header(HEADLINE)
    index_lines = [
        {
            "dataset": f"[{board.title}]({board.dataset}.md)",
            "rows from runs": str(len(board.runs)),
            "records": str(board.n_records),
            "published rows": str(len(board.rows) - len(board.runs)),
            "best run row": _best_run(board),
        }
        for board in boards
    ]
    parts = [
        "# dymlbench leaderboards",
        render.GENERATED_NOTE,
        "Generated by `dymlbench leaderboard` from the result records in "
        f"[{link_root}/]({link_root}/) and the published table "
        "[published.yaml](published.yaml); never edited by hand. Add a finished run with "
        "`dymlbench leaderboard add RUN_DIR`, then regenerate with `dymlbench leaderboard`. "
        "Values in percent; runs: mean ± standard deviation over seeds, the seed count in "
        f"brackets. The headline is overall {headline} (the metric the DyML tables lead with).",
        f"Published numbers: {table.source}",
        "## Datasets",
        render.markdown_table(pd.DataFrame(index_lines)),
    ]
    for key, title in ((HEADLINE, headline), ("overall/map", "mAP")):
        parts += [
            f"## Summary: overall {title}",
            "Per method and dataset, the row with the best overall "
            f"{headline}; runs first, then the published rows.",
            render.markdown_table(_summary_frame(boards, key)),
        ]
    return "\n\n".join(parts) + "\n"


def _best_run(board: _Board) -> str:
    if not board.runs:
        return "-"
    best = board.runs[0]
    return f"{board.ids[id(best)]} {best.method}: {render.cell(best, HEADLINE)}"


def _summary_frame(boards: Sequence[_Board], key: str) -> pd.DataFrame:
    methods = sorted({row.method for board in boards for row in board.runs})
    published = []
    for board in boards:
        for row in board.rows:
            if row.is_published and row.method not in published:
                published.append(row.method)
    lines = []
    for name, is_published in [*((m, False) for m in methods), *((p, True) for p in published)]:
        line = {"method": name, "source": "published" if is_published else "dymlbench"}
        for board in boards:
            line[board.dataset] = _summary_cell(board.rows, name, is_published, key)
        lines.append(line)
    return pd.DataFrame(lines)


def _summary_cell(rows: Sequence[Row], method: str, is_published: bool, key: str) -> str:
    for row in rows:
        if row.method == method and row.is_published == is_published:
            text = render.cell(row, key)
            return f"{text} ({row.n_seeds})" if not is_published and text != "-" else text
    return ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def _remove_stale(out_dir: Path, written: Sequence[Path]) -> None:
    """Remove generated files of an earlier run that this one did not write again."""
    keep = {path.resolve() for path in written}
    candidates = [out_dir / f"{name}.md" for name in DATASETS]
    candidates += sorted((out_dir / PLOTS_DIR).glob("*.png"))
    for path in candidates:
        if path.is_file() and path.resolve() not in keep:
            path.unlink()
            logger.info("removed the stale %s", path)
