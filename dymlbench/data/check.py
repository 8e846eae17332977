"""``dymlbench data check``: a full pass over a dataset that reports what a run would trip on.

For every split and level: images, classes, images per class (min / median / max); for every
split: missing and unreadable image files, duplicated file names, hierarchy violations; for
every benchmark: how many queries also sit in the gallery. A query is in the gallery when a
gallery file has identical content (equal BLAKE2b digests of the bytes); equal file names are
counted too but decide nothing, since the query and gallery folders are numbered separately.
The train class counts are compared with the published ones (the official readers lose one
record per file, so a correct reader may see one more class per level).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dymlbench.data.csvfiles import (
    BENCHMARK_COLUMNS,
    HIERARCHY_COLUMNS,
    LabelFile,
    read_label_file,
)
from dymlbench.data.dataset import (
    ALL_IN_ONE,
    DATASETS,
    PRODUCT_TEST_DIR,
    DataSpec,
    detect_layout,
    resolve_data_dir,
)
from dymlbench.data.errors import DataFormatError, DataNotFoundError
from dymlbench.data.files import N_EXAMPLES, find_missing, scan_images
from dymlbench.hierarchy import LEVEL_NAMES, find_tree_violations

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LevelStats:
    """Counts of one split at one level."""

    split: str
    level: str
    images: int
    classes: int
    per_class_min: int
    per_class_median: float
    per_class_max: int


@dataclass(kw_only=True)
class SplitFiles:
    """What the file pass found for one label file."""

    split: str
    label_file: str
    header: str
    images: int
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unreadable: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    duplicate_names: int = 0
    hierarchy_violations: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class SelfMatch:
    """How many queries of a benchmark also sit in its gallery."""

    benchmark: str
    queries: int
    in_gallery_by_content: int
    in_gallery_by_name: int


@dataclass(kw_only=True)
class CheckReport:
    """The result of :func:`check_dataset`; ``problems`` empty means the dataset is usable."""

    dataset: str
    root: str
    levels: list[LevelStats] = field(default_factory=list)
    files: list[SplitFiles] = field(default_factory=list)
    self_match: list[SelfMatch] = field(default_factory=list)
    train_classes: list[int] | None = None
    published_train_classes: list[int] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as plain values (for ``--json``)."""
        values = asdict(self)
        values["ok"] = self.ok
        return values


def _level_stats(split: str, labels: np.ndarray, names: tuple[str, ...]) -> list[LevelStats]:
    stats = []
    for level, name in enumerate(names):
        counts = np.unique(labels[:, level], return_counts=True)[1]
        stats.append(
            LevelStats(
                split=split,
                level=name,
                images=len(labels),
                classes=len(counts),
                per_class_min=int(counts.min()),
                per_class_median=float(np.median(counts)),
                per_class_max=int(counts.max()),
            )
        )
    return stats


def _check_files(
    report: CheckReport,
    split: str,
    table: LabelFile,
    image_dir: Path,
    *,
    full: bool,
    digests: bool,
    workers: int | None,
) -> list[bytes | None] | None:
    """Fill the file entry of one label file; returns content digests if asked for."""
    entry = SplitFiles(
        split=split, label_file=str(table.path), header=table.header, images=len(table.fnames)
    )
    missing = find_missing(image_dir, table.fnames)
    entry.missing = len(missing)
    entry.missing_examples = [str(image_dir / name) for name in missing[:N_EXAMPLES]]
    if missing:
        report.problems.append(
            f"{split}: {len(missing)} of {len(table.fnames)} images listed in `{table.path}` "
            f"are missing, e.g. {', '.join(entry.missing_examples)}"
        )
    names, counts = np.unique(np.asarray(table.fnames), return_counts=True)
    entry.duplicate_names = int((counts > 1).sum())
    if entry.duplicate_names:
        report.problems.append(
            f"{split}: {entry.duplicate_names} file names appear more than once in "
            f"`{table.path}`, e.g. {', '.join(names[counts > 1][:N_EXAMPLES].tolist())}"
        )

    result = None
    if full:
        missing_set = set(missing)
        present = [name for name in table.fnames if name not in missing_set]
        scan = scan_images(
            [image_dir / name for name in present], digests=digests, workers=workers
        )
        entry.unreadable = len(scan.unreadable)
        entry.unreadable_examples = [f"{path} {why}" for path, why in scan.unreadable[:N_EXAMPLES]]
        if scan.unreadable:
            report.problems.append(
                f"{split}: {len(scan.unreadable)} images do not decode, e.g. "
                f"{'; '.join(entry.unreadable_examples)}"
            )
        result = scan.digests
    report.files.append(entry)
    return result


def _check_hierarchy_split(
    report: CheckReport, split: str, folder: Path, *, full: bool, workers: int | None
) -> LabelFile | None:
    try:
        table = read_label_file(
            folder / "label.csv", columns=HIERARCHY_COLUMNS, image_dir=folder / "imgs"
        )
    except (DataFormatError, DataNotFoundError) as error:
        report.problems.append(f"{split}: {error}")
        return None
    report.levels.extend(_level_stats(split, table.labels, LEVEL_NAMES))
    _check_files(report, split, table, folder / "imgs", full=full, digests=False, workers=workers)
    violations = find_tree_violations(table.labels, row_names=table.row_names())
    report.files[-1].hierarchy_violations = violations
    if violations:
        report.problems.append(
            f"{split}: {len(violations)} classes have two parents, e.g. {violations[0]}"
        )
    return table


def _check_benchmark(
    report: CheckReport, root: Path, level: str, *, full: bool, workers: int | None
) -> None:
    folder = root / f"bmk_{level}"
    if not folder.is_dir():
        report.problems.append(
            f"{level} benchmark: the folder `{folder}` must exist in the released layout, but "
            "it was not found"
        )
        return
    tables: dict[str, LabelFile] = {}
    found: dict[str, list[bytes | None] | None] = {}
    for part in ("query", "gallery"):
        split = f"{level}/{part}"
        try:
            tables[part] = read_label_file(
                folder / f"{part}.csv", columns=BENCHMARK_COLUMNS, image_dir=folder / part
            )
        except (DataFormatError, DataNotFoundError) as error:
            report.problems.append(f"{split}: {error}")
            continue
        report.levels.extend(_level_stats(split, tables[part].labels, (level,)))
        found[part] = _check_files(
            report, split, tables[part], folder / part, full=full, digests=True, workers=workers
        )
    if len(tables) < 2:
        return
    by_name = len(set(tables["query"].fnames) & set(tables["gallery"].fnames))
    by_content = -1
    if full and found["query"] is not None and found["gallery"] is not None:
        gallery = {key for key in found["gallery"] if key is not None}
        by_content = sum(key in gallery for key in found["query"] if key is not None)
    report.self_match.append(
        SelfMatch(
            benchmark=level,
            queries=len(tables["query"].fnames),
            in_gallery_by_content=by_content,
            in_gallery_by_name=by_name,
        )
    )


def check_dataset(spec: DataSpec, *, full: bool = True, workers: int | None = None) -> CheckReport:
    """Check every label file and image of a dataset and collect the problems.

    Args:
        spec: the dataset and its location.
        full: decode every image and hash the benchmark images; ``False`` only checks that the
            files exist.
        workers: decoding threads; default the number of CPUs.

    Returns:
        The report; unreadable label files are problems in it, not exceptions.

    Raises:
        DataNotFoundError: the dataset folder itself is not found.
    """
    root = resolve_data_dir(spec)
    report = CheckReport(dataset=spec.dataset, root=str(root))
    layout = detect_layout(root) if spec.dataset == "toy" else DATASETS[spec.dataset].layout

    train = _check_hierarchy_split(report, "train", root / "train", full=full, workers=workers)
    if layout == ALL_IN_ONE:
        folder = root / PRODUCT_TEST_DIR
        if folder.is_dir():
            _check_hierarchy_split(report, "test", folder, full=full, workers=workers)
        else:
            report.problems.append(
                f"test: the folder `{folder}` must exist in the Product layout, but it was "
                "not found"
            )
    else:
        for level in LEVEL_NAMES:
            _check_benchmark(report, root, level, full=full, workers=workers)

    published = DATASETS[spec.dataset].train_classes
    if train is not None:
        seen = [len(np.unique(train.labels[:, level])) for level in range(len(LEVEL_NAMES))]
        report.train_classes = seen
        if published is not None:
            report.published_train_classes = list(published)
            if any(not k <= s <= k + 1 for s, k in zip(seen, published, strict=True)):
                report.problems.append(
                    f"train: the classes per level (fine, middle, coarse) must be the published "
                    f"{tuple(published)} (or one more, the record the official reader loses), "
                    f"but got {tuple(seen)}; is `--dataset` right?"
                )
    for problem in report.problems:
        logger.debug("problem: %s", problem)
    return report


def render_check_report(report: CheckReport) -> Any:
    """The report as rich tables (the CLI prints them)."""
    from rich.console import Group
    from rich.table import Table

    levels = Table(title=f"{report.dataset} at {report.root}")
    for column in ("split", "level", "images", "classes", "per class min / median / max"):
        levels.add_column(column, justify="left" if column in ("split", "level") else "right")
    for row in report.levels:
        spread = f"{row.per_class_min} / {row.per_class_median:g} / {row.per_class_max}"
        levels.add_row(row.split, row.level, str(row.images), str(row.classes), spread)

    files = Table(title="files")
    for column in ("split", "header", "images", "missing", "unreadable", "dup. names", "tree"):
        files.add_column(column, justify="left" if column in ("split", "header") else "right")
    for entry in report.files:
        unreadable = str(entry.unreadable)
        tree = str(len(entry.hierarchy_violations)) if "/" not in entry.split else "-"
        files.add_row(
            entry.split,
            entry.header,
            str(entry.images),
            str(entry.missing),
            unreadable,
            str(entry.duplicate_names),
            tree,
        )
    parts: list[Any] = [levels, files]

    if report.self_match:
        matches = Table(title="queries also in the gallery (same item = identical file content)")
        for column in ("benchmark", "queries", "by content", "by file name"):
            matches.add_column(column, justify="left" if column == "benchmark" else "right")
        for match in report.self_match:
            content = str(match.in_gallery_by_content) if match.in_gallery_by_content >= 0 else "-"
            matches.add_row(
                match.benchmark, str(match.queries), content, str(match.in_gallery_by_name)
            )
        parts.append(matches)
    if report.train_classes is not None:
        published = (
            f", published {tuple(report.published_train_classes)}"
            if report.published_train_classes
            else ""
        )
        parts.append(
            f"train classes (fine, middle, coarse): {tuple(report.train_classes)}{published}"
        )
    if report.problems:
        parts.append(f"[bold red]{len(report.problems)} problem(s):[/]")
        parts.extend(f"[red]- {problem}[/]" for problem in report.problems)
    else:
        parts.append("[bold green]no problems found[/]")
    return Group(*parts)
