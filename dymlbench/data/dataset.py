"""The DyML datasets as the rest of dymlbench sees them: a spec, splits and benchmarks.

Released layout (REFERENCE.md section 1), ``<root>`` being the folder of one dataset::

    <root>/train/label.csv                  <root>/train/imgs/<fname>
    <root>/bmk_<level>/query.csv            <root>/bmk_<level>/query/<fname>     (Vehicle, Animal)
    <root>/bmk_<level>/gallery.csv          <root>/bmk_<level>/gallery/<fname>
    <root>/mini-bmk_all_in_one/label.csv    <root>/mini-bmk_all_in_one/imgs/<fname>   (Product)

A :class:`Split` is one list of images with its label table (a :class:`Hierarchy`); a
:class:`Benchmark` is one query / gallery pair of a level, evaluated by ranking the gallery for
each query. Product's test set is one leave-one-out split with all three levels. Datasets are
read-only: nothing here writes into ``<root>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dymlbench.config import DataConfig
from dymlbench.data.csvfiles import BENCHMARK_COLUMNS, HIERARCHY_COLUMNS, read_label_file
from dymlbench.data.errors import DataNotFoundError
from dymlbench.data.files import (
    content_digests,
    item_ids_from_digests,
    require_present,
)
from dymlbench.hierarchy import LEVEL_NAMES, Hierarchy

logger = logging.getLogger(__name__)

DATA_ENV = "DYMLBENCH_DATA"
"""Environment variable naming the dataset folder (or a folder holding one per dataset)."""

DOWNLOAD_HINT = (
    "the datasets are published by the DyML authors: follow the OneDrive / Baidu links in "
    "https://github.com/SupetZYK/DynamicMetricLearning"
)

QUERY_GALLERY = "query_gallery"
"""Layout with one ``bmk_<level>`` query / gallery benchmark per level (Vehicle, Animal)."""

ALL_IN_ONE = "all_in_one"
"""Layout with one leave-one-out test set holding all levels (Product)."""

PRODUCT_TEST_DIR = "mini-bmk_all_in_one"


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """Facts about one released dataset.

    Attributes:
        name: the key used on the command line.
        title: the published name.
        layout: :data:`QUERY_GALLERY` or :data:`ALL_IN_ONE`.
        train_classes: the train class counts (fine, middle, coarse) the official code asserts
            after loading; it drops the first record of the file, so a correct reader may see
            one more class per level.
    """

    name: str
    title: str
    layout: str
    train_classes: tuple[int, int, int] | None


DATASETS: dict[str, DatasetInfo] = {
    "vehicle": DatasetInfo(
        name="vehicle", title="DyML-Vehicle", layout=QUERY_GALLERY, train_classes=(39491, 93, 5)
    ),
    "animal": DatasetInfo(
        name="animal", title="DyML-Animal", layout=QUERY_GALLERY, train_classes=(495, 28, 5)
    ),
    "product": DatasetInfo(
        name="product", title="DyML-Product", layout=ALL_IN_ONE, train_classes=(1639, 171, 36)
    ),
    "toy": DatasetInfo(
        name="toy", title="dymlbench toy", layout=QUERY_GALLERY, train_classes=None
    ),
}
"""The datasets dymlbench reads, by key."""

DataSpec = DataConfig
"""Which dataset a run reads and how: the run configuration's ``data`` section.

The data layer's name for :class:`dymlbench.config.DataConfig`, the one definition of these
options (keys, types, ranges and the ``crop_size`` / ``test_resize`` defaults), so that the
run configuration and the data layer cannot drift apart.
"""


@dataclass(frozen=True, eq=False, kw_only=True)
class Split:
    """One list of images with its labels.

    Attributes:
        name: ``train``, ``validation``, ``test`` or ``<level>/query``, ``<level>/gallery``.
        image_dir: the folder the file names are relative to.
        fnames: the image file names ``[n]``.
        hierarchy: the labels; for a benchmark split one level, with ids shared by its query
            and gallery.
        label_file: the label file the split was read from.
        line_numbers: int64 ``[n]``, the line of each item in ``label_file``.
    """

    name: str
    image_dir: Path
    fnames: tuple[str, ...]
    hierarchy: Hierarchy
    label_file: Path
    line_numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.fnames)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``[n, n_levels]`` contiguous ids, column 0 the finest level."""
        return self.hierarchy.labels

    @property
    def paths(self) -> list[Path]:
        """The image files ``[n]``."""
        return [self.image_dir / fname for fname in self.fnames]

    @property
    def level_names(self) -> tuple[str, ...]:
        """Names of the label columns."""
        return self.hierarchy.level_names

    def row_names(self) -> list[str]:
        """A readable location per item, ``"<label file> line <k>"``."""
        return [f"{self.label_file} line {line}" for line in self.line_numbers.tolist()]

    def subset(self, rows: np.ndarray, *, name: str) -> Split:
        """The split restricted to ``rows``, its class ids remapped to be contiguous again."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return Split(
            name=name,
            image_dir=self.image_dir,
            fnames=tuple(self.fnames[i] for i in rows.tolist()),
            hierarchy=self.hierarchy.subset(rows),
            label_file=self.label_file,
            line_numbers=self.line_numbers[rows],
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class Benchmark:
    """One query / gallery pair of a level (Vehicle, Animal).

    Attributes:
        level: the level name the labels are at.
        query: the queries, one label column.
        gallery: the gallery, one label column, ids shared with ``query``.
    """

    level: str
    query: Split
    gallery: Split

    def item_ids(self, *, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the items, equal exactly for files with identical content.

        The evaluator excludes a query's own gallery entry by these ids: same item means
        identical file content (BLAKE2b digest), not the same file name.

        Returns:
            ``(query_ids [n_query], gallery_ids [n_gallery])``, int64.
        """
        query = content_digests(self.query.paths, use_cache=use_cache)
        gallery = content_digests(self.gallery.paths, use_cache=use_cache)
        return item_ids_from_digests(query, gallery)


@dataclass(frozen=True, eq=False, kw_only=True)
class DyMLDataset:
    """A loaded dataset.

    Attributes:
        spec: what was asked for.
        root: the dataset folder that was read.
        layout: :data:`QUERY_GALLERY` or :data:`ALL_IN_ONE`.
        train: the images to train on (the train split less the validation classes).
        validation: the held-out train classes, evaluated leave-one-out; ``None`` when
            ``spec.val_fraction`` is 0.
        benchmarks: per level name, the query / gallery benchmark (query-gallery layout).
        test: the leave-one-out test set with all levels (all-in-one layout).
    """

    spec: DataSpec
    root: Path
    layout: str
    train: Split
    validation: Split | None = None
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    test: Split | None = None

    @property
    def hierarchy(self) -> Hierarchy:
        """The hierarchy of :attr:`train`."""
        return self.train.hierarchy


def _candidates(name: str, base: Path) -> list[Path]:
    title = DATASETS[name].title
    names = dict.fromkeys([name, f"dyml_{name}", f"dyml-{name}", title, title.lower()])
    return [base, *(base / entry for entry in names)]


def _looks_like_dataset(root: Path) -> bool:
    return (root / "train" / "label.csv").is_file()


def not_found_message(name: str, looked: list[Path]) -> str:
    """The error text for a dataset that is not where it was looked for."""
    where = ", ".join(f"`{path}`" for path in looked) or "nowhere (no location given)"
    return (
        f"the {DATASETS[name].title} dataset must be a folder holding `train/label.csv`, but it "
        f"was not found; looked in {where}. Set the location with `--data-dir DIR` or the "
        f"environment variable `${DATA_ENV}`; {DOWNLOAD_HINT}. `--dataset toy` runs without "
        "any download"
    )


def resolve_data_dir(spec: DataSpec) -> Path:
    """Find the folder of the dataset a spec names.

    ``spec.data_dir`` (``--data-dir``) wins over ``$DYMLBENCH_DATA``; each may name the dataset
    folder itself or a folder holding it as ``<name>``, ``dyml_<name>`` or the published title
    (``DyML-Vehicle``). Without either, ``toy`` is generated into the cache.

    Raises:
        DataNotFoundError: says where it looked, how to set the location, where the data is
            published, and that ``--dataset toy`` needs no download.
    """
    if spec.dataset == "toy" and spec.data_dir is None:
        from dymlbench.data.toy import ensure_toy_dataset

        return ensure_toy_dataset(layout=spec.toy_layout, seed=spec.toy_seed)

    if spec.data_dir is not None:
        bases = [spec.data_dir.expanduser()]
    elif os.environ.get(DATA_ENV):
        bases = [Path(os.environ[DATA_ENV]).expanduser()]
    else:
        bases = []
    looked: list[Path] = []
    for base in bases:
        for candidate in _candidates(spec.dataset, base):
            looked.append(candidate)
            if _looks_like_dataset(candidate):
                return candidate
    raise DataNotFoundError(not_found_message(spec.dataset, looked))


def detect_layout(root: Path) -> str:
    """:data:`ALL_IN_ONE` if ``root`` has the Product test folder, else :data:`QUERY_GALLERY`."""
    return ALL_IN_ONE if (root / PRODUCT_TEST_DIR).is_dir() else QUERY_GALLERY


def read_train(root: Path) -> Split:
    """Read ``<root>/train``: three levels, the tree checked.

    Raises:
        DataNotFoundError, DataFormatError: from the reader; ValueError: a broken tree.
    """
    return _read_hierarchy_split(root / "train", name="train")


def _read_hierarchy_split(folder: Path, *, name: str) -> Split:
    label_file = folder / "label.csv"
    table = read_label_file(label_file, columns=HIERARCHY_COLUMNS, image_dir=folder / "imgs")
    return Split(
        name=name,
        image_dir=folder / "imgs",
        fnames=table.fnames,
        hierarchy=Hierarchy.from_labels(table.labels, row_names=table.row_names()),
        label_file=label_file,
        line_numbers=table.line_numbers,
    )


def read_benchmark(root: Path, level: str) -> Benchmark:
    """Read ``<root>/bmk_<level>/{query,gallery}.csv``.

    Raises:
        DataNotFoundError: the benchmark folder or one of its files is missing.
        DataFormatError: from the reader.
    """
    folder = root / f"bmk_{level}"
    if not folder.is_dir():
        raise DataNotFoundError(
            f"the benchmark folder `{folder}` must exist in the released layout, but it was "
            f"not found; `--data-dir` must point at the folder holding `train/` and "
            f"`bmk_fine/`, `bmk_middle/`, `bmk_coarse/`"
        )
    tables = {
        part: read_label_file(
            folder / f"{part}.csv", columns=BENCHMARK_COLUMNS, image_dir=folder / part
        )
        for part in ("query", "gallery")
    }
    joint = Hierarchy.from_labels(
        np.concatenate([tables["query"].labels, tables["gallery"].labels])
    )
    n_query = len(tables["query"].fnames)
    splits = {}
    for part, rows in (("query", slice(0, n_query)), ("gallery", slice(n_query, None))):
        table = tables[part]
        hierarchy = Hierarchy(
            labels=joint.labels[rows],
            class_ids=joint.class_ids,
            parents=(),
            level_names=(level,),
        )
        splits[part] = Split(
            name=f"{level}/{part}",
            image_dir=folder / part,
            fnames=table.fnames,
            hierarchy=hierarchy,
            label_file=table.path,
            line_numbers=table.line_numbers,
        )
    return Benchmark(level=level, query=splits["query"], gallery=splits["gallery"])


def read_product_test(root: Path) -> Split:
    """Read ``<root>/mini-bmk_all_in_one``: three levels, the tree checked."""
    folder = root / PRODUCT_TEST_DIR
    if not folder.is_dir():
        raise DataNotFoundError(
            f"the test folder `{folder}` must exist in the Product layout, but it was not found"
        )
    return _read_hierarchy_split(folder, name="test")


def load_dataset(
    spec: DataSpec, *, check_files: bool = True, load_test: bool = True
) -> DyMLDataset:
    """Read a dataset, check its trees and (fast pass) that its images exist.

    The test data is read here too, so that a broken benchmark stops a run before training;
    it is meant to be evaluated once, at the end of a run.

    Args:
        spec: the dataset and its options.
        check_files: check that every listed image exists (one directory listing per folder).
        load_test: read the test data; ``False`` opens no test label file and lists no test
            folder (a sweep trial, which must never see the test data), and the dataset has
            neither ``benchmarks`` nor ``test``.

    Returns:
        The dataset; with ``spec.val_fraction > 0``, ``train`` lacks the validation classes.

    Raises:
        DataNotFoundError, DataFormatError, ImageFilesError, ValueError: with the file, the
            line where there is one, and the fix.
    """
    root = resolve_data_dir(spec)
    layout = detect_layout(root) if spec.dataset == "toy" else DATASETS[spec.dataset].layout
    train = read_train(root)
    benchmarks: dict[str, Benchmark] = {}
    test = None
    evaluated: list[Split] = []
    if load_test and layout == QUERY_GALLERY:
        benchmarks = {level: read_benchmark(root, level) for level in LEVEL_NAMES}
        evaluated = [split for b in benchmarks.values() for split in (b.query, b.gallery)]
    elif load_test:
        test = read_product_test(root)
        evaluated = [test]
    if check_files:
        for split in (train, *evaluated):
            require_present(split.image_dir, split.fnames, label_file=split.label_file)

    known = DATASETS[spec.dataset].train_classes
    if known is not None:
        seen = train.hierarchy.n_classes
        if any(not k <= s <= k + 1 for s, k in zip(seen, known, strict=True)):
            logger.warning(
                "%s train classes per level are %s, but the official code sees %s "
                "(one more is expected where the first record's class is unique)",
                DATASETS[spec.dataset].title,
                seen,
                known,
            )

    validation = None
    if spec.val_fraction > 0:
        from dymlbench.data.split import split_validation

        train, validation = split_validation(train, fraction=spec.val_fraction, seed=spec.val_seed)
    logger.info(
        "read %s from %s: %d train images, classes per level %s",
        DATASETS[spec.dataset].title,
        root,
        len(train),
        train.hierarchy.n_classes,
    )
    return DyMLDataset(
        spec=spec,
        root=root,
        layout=layout,
        train=train,
        validation=validation,
        benchmarks=benchmarks,
        test=test,
    )
