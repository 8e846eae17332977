"""Semantic levels of a DyML hierarchy, label tables and tree checks.

Vocabulary used across dymlbench: ``labels`` is an integer array ``[n, n_levels]`` whose column
0 is the finest level; the level names, finest first, are :data:`LEVEL_NAMES`. A
:class:`Hierarchy` holds such a table with the class ids of every level remapped to the
contiguous range ``0 .. n_classes - 1``, the original ids of every class, and the parent of
every class at the next coarser level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL_NAMES: tuple[str, ...] = ("fine", "middle", "coarse")
"""Names of the DyML levels, finest first: column ``i`` of a label table is ``LEVEL_NAMES[i]``."""


def level_names(n_levels: int) -> tuple[str, ...]:
    """Names of the first ``n_levels`` levels, finest first.

    Args:
        n_levels: number of label columns, 1 to ``len(LEVEL_NAMES)``.

    Returns:
        The level names, e.g. ``("fine", "middle", "coarse")`` for three columns.

    Example:
        >>> level_names(2)
        ('fine', 'middle')
    """
    if not 1 <= n_levels <= len(LEVEL_NAMES):
        raise ValueError(
            f"`n_levels` must be between 1 and {len(LEVEL_NAMES)}, but got {n_levels}"
        )
    return LEVEL_NAMES[:n_levels]


def _check_table(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[1] < 1 or labels.shape[1] > len(LEVEL_NAMES):
        raise ValueError(
            f"`labels` must have shape [n, n_levels] with 1 <= n_levels <= {len(LEVEL_NAMES)}, "
            f"but got shape {tuple(labels.shape)}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`labels` must hold integers, but got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _row_name(row_names: Sequence[str] | None, row: int) -> str:
    return row_names[row] if row_names is not None else f"row {row}"


def find_tree_violations(
    labels: np.ndarray, *, row_names: Sequence[str] | None = None, limit: int | None = None
) -> list[str]:
    """Describe every class that sits under two parents.

    A label table is a tree when every class of level ``l`` has exactly one parent at level
    ``l + 1``: a fine class listed under two middle classes, or a middle class under two coarse
    classes, is a violation. Each violation names the first row that places the class under
    each of its first two parents.

    Args:
        labels: integer table ``[n, n_levels]``, column 0 the finest level, original ids.
        row_names: a readable location per row (``"label.csv line 7"``); default ``"row i"``.
        limit: stop after this many violations; ``None`` for all.

    Returns:
        One sentence per class with several parents, empty for a tree.

    Example:
        >>> find_tree_violations(np.array([[1, 10], [2, 10], [1, 11]]))
        ['fine class 1 is under middle class 10 at row 0 and under middle class 11 at row 2']
    """
    labels = _check_table(labels)
    names = level_names(labels.shape[1])
    violations: list[str] = []
    for level in range(labels.shape[1] - 1):
        pairs, first_rows = np.unique(labels[:, level : level + 2], axis=0, return_index=True)
        children, n_parents = np.unique(pairs[:, 0], return_counts=True)
        for child in children[n_parents > 1]:
            where = np.flatnonzero(pairs[:, 0] == child)
            rows = sorted(first_rows[where])[:2]
            parents = [labels[row, level + 1] for row in rows]
            violations.append(
                f"{names[level]} class {child} is under {names[level + 1]} class {parents[0]} "
                f"at {_row_name(row_names, rows[0])} and under {names[level + 1]} class "
                f"{parents[1]} at {_row_name(row_names, rows[1])}"
            )
            if limit is not None and len(violations) >= limit:
                return violations
    return violations


@dataclass(frozen=True, eq=False, kw_only=True)
class Hierarchy:
    """A label table with contiguous class ids per level and the parent of every class.

    Build one with :meth:`from_labels`; the constructor does not check its arguments.

    Attributes:
        labels: int64 ``[n, n_levels]``, column 0 the finest level, ids of level ``l`` in
            ``0 .. n_classes[l] - 1``.
        class_ids: per level, int64 ``[n_classes[l]]``: the original id of each contiguous id.
        parents: per level except the coarsest, int64 ``[n_classes[l]]``: the contiguous id at
            level ``l + 1`` of the parent of each class of level ``l``.
        level_names: the level names, finest first.

    Example:
        >>> h = Hierarchy.from_labels(np.array([[12007, 41, 3], [9, 41, 3], [12007, 41, 3]]))
        >>> h.labels.tolist()
        [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
        >>> h.n_classes, h.parents[0].tolist(), h.class_ids[0].tolist()
        ((2, 1, 1), [0, 0], [9, 12007])
    """

    labels: np.ndarray
    class_ids: tuple[np.ndarray, ...]
    parents: tuple[np.ndarray, ...]
    level_names: tuple[str, ...]

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, *, row_names: Sequence[str] | None = None
    ) -> Hierarchy:
        """Remap a table of original ids to contiguous ids and check that it is a tree.

        Args:
            labels: integer ``[n, n_levels]`` (or ``[n]`` for one level), column 0 the finest
                level, any integer ids.
            row_names: a readable location per row, used in the error for a broken tree.

        Returns:
            The hierarchy; contiguous ids follow the sorted order of the original ids.

        Raises:
            ValueError: the table has the wrong shape, or a class has two parents (the message
                names both rows).
        """
        labels = _check_table(labels)
        if row_names is not None and len(row_names) != len(labels):
            raise ValueError(
                f"`row_names` must have one entry per row ({len(labels)}), "
                f"but got {len(row_names)}"
            )
        violations = find_tree_violations(labels, row_names=row_names, limit=1)
        if violations:
            raise ValueError(
                f"the labels must form a tree (one parent per class), but {violations[0]}; "
                "fix one of the two rows"
            )

        columns, class_ids = [], []
        for level in range(labels.shape[1]):
            ids, inverse = np.unique(labels[:, level], return_inverse=True)
            class_ids.append(ids)
            columns.append(inverse.reshape(-1))
        contiguous = np.stack(columns, axis=1).astype(np.int64)
        parents = []
        for level in range(labels.shape[1] - 1):
            parent = np.empty(len(class_ids[level]), dtype=np.int64)
            parent[contiguous[:, level]] = contiguous[:, level + 1]
            parents.append(parent)
        return cls(
            labels=contiguous,
            class_ids=tuple(class_ids),
            parents=tuple(parents),
            level_names=level_names(labels.shape[1]),
        )

    @property
    def n_items(self) -> int:
        """Number of rows of the label table."""
        return int(self.labels.shape[0])

    @property
    def n_levels(self) -> int:
        """Number of levels (columns of the label table)."""
        return int(self.labels.shape[1])

    @property
    def n_classes(self) -> tuple[int, ...]:
        """Number of classes per level, finest first."""
        return tuple(len(ids) for ids in self.class_ids)

    @property
    def original_labels(self) -> np.ndarray:
        """The label table in the original ids, int64 ``[n, n_levels]``."""
        return np.stack(
            [self.class_ids[level][self.labels[:, level]] for level in range(self.n_levels)],
            axis=1,
        )

    def ancestors(self, level: int = 0) -> np.ndarray:
        """Contiguous ids of every class of ``level`` at that level and every coarser one.

        Args:
            level: the level whose classes are listed, 0 the finest.

        Returns:
            int64 ``[n_classes[level], n_levels - level]``; column 0 is the class itself.
        """
        if not 0 <= level < self.n_levels:
            raise ValueError(f"`level` must be between 0 and {self.n_levels - 1}, but got {level}")
        columns = [np.arange(self.n_classes[level], dtype=np.int64)]
        for parent in self.parents[level:]:
            columns.append(parent[columns[-1]])
        return np.stack(columns, axis=1)

    def children(self, level: int, class_id: int) -> np.ndarray:
        """Contiguous ids of the classes of ``level - 1`` whose parent is ``class_id``.

        Args:
            level: a level above the finest (1 or 2).
            class_id: a contiguous id at ``level``.

        Returns:
            int64 ``[n_children]``, sorted.
        """
        if not 1 <= level < self.n_levels:
            raise ValueError(f"`level` must be between 1 and {self.n_levels - 1}, but got {level}")
        return np.flatnonzero(self.parents[level - 1] == class_id).astype(np.int64)

    def subset(self, rows: np.ndarray) -> Hierarchy:
        """The hierarchy of a subset of the rows, with the ids remapped to be contiguous again.

        Args:
            rows: int indices ``[m]`` or a boolean mask ``[n]``.

        Returns:
            A new hierarchy whose original ids are those of this one.
        """
        return Hierarchy.from_labels(self.original_labels[np.asarray(rows)])
