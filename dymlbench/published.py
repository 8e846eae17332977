"""Published overall results of the DyML methods, in percent (REFERENCE.md section 5).

The canonical table is ``leaderboards/published.yaml`` (with the paper, backbone and
initialisation of each row, :mod:`dymlbench.leaderboard.published`); this module holds its
numbers for ``dymlbench run`` in an installed package, which does not ship the ``leaderboards``
folder. ``tests/leaderboard/test_published.py`` checks that the two agree row for row and value
for value, so a change to one without the other fails the tests.

Source: the main table of the MSA paper (Zhang, Li and Zhang, ACM MM 2023); its first six rows
presumably come from the DyML paper (Sun et al., CVPR 2021), the CSL rerun and HAPPIER rows
from the HAPPIER paper (Ramzi et al., ECCV 2022). Keys are the registry keys of the methods and
the dataset names; each entry is a list of rows, since a method can have been published more
than once (CSL, and CSL as rerun by HAPPIER). Values use the metric keys of DESIGN.md; a number
the source does not give is absent.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

_COLUMNS = (
    "overall/asi",
    "overall/map",
    "overall/recall@1",
    "overall/recall@10",
    "overall/recall@20",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedResult:
    """One published row: where it comes from and its overall metrics, in percent.

    Attributes:
        source: the row's name in the source table.
        metrics: metric key (``overall/map``, ...) to the published value in percent.
    """

    source: str
    metrics: Mapping[str, float]


def _row(source: str, *values: float | None) -> PublishedResult:
    metrics = {
        key: value for key, value in zip(_COLUMNS, values, strict=True) if value is not None
    }
    return PublishedResult(source=source, metrics=types.MappingProxyType(metrics))


_TABLE: dict[str, dict[str, tuple[float | None, ...]]] = {
    "Triplet": {
        "vehicle": (18.3, 10.0, 13.8, 52.6, 65.1),
        "animal": (19.3, 11.0, 18.2, 55.5, 66.3),
        "product": (9.2, 9.3, 11.2, 43.6, 53.3),
    },
    "N-pair": {
        "vehicle": (19.4, 10.5, 16.4, 55.7, 68.1),
        "animal": (45.7, 30.3, 39.6, 69.6, 78.8),
        "product": (15.7, 15.3, 20.3, 55.5, 65.6),
    },
    "Multi-Similarity": {
        "vehicle": (19.7, 10.4, 17.4, 56.0, 67.9),
        "animal": (19.9, 11.6, 16.7, 53.5, 64.8),
        "product": (9.8, 10.0, 12.7, 45.7, 56.4),
    },
    "CosFace": {
        "vehicle": (23.0, 12.0, 22.9, 62.1, 73.4),
        "animal": (39.6, 28.4, 45.1, 75.7, 83.3),
        "product": (25.5, 25.0, 49.3, 81.3, 87.7),
    },
    "Circle": {
        "vehicle": (22.8, 12.1, 23.5, 62.0, 73.3),
        "animal": (44.5, 30.6, 41.5, 72.2, 80.3),
        "product": (15.8, 15.0, 26.7, 61.5, 70.3),
    },
    "CSL": {
        "vehicle": (23.0, 12.1, 25.2, 64.2, 75.0),
        "animal": (45.2, 31.0, 52.3, 81.7, 88.3),
        "product": (29.0, 28.7, 54.3, 83.1, 89.4),
    },
    "CSL (rerun by HAPPIER)": {
        "vehicle": (43.6, 30.0, 87.1, None, None),
        "animal": (46.3, 40.8, 60.9, None, None),
        "product": (40.7, 31.1, 52.7, None, None),
    },
    "HAPPIER": {
        "vehicle": (49.8, 37.0, 89.1, None, None),
        "animal": (50.8, 43.8, 68.9, None, None),
        "product": (47.9, 38.0, 63.7, None, None),
    },
    "MSA": {
        "vehicle": (55.6, 40.8, 92.1, 97.2, 97.9),
        "animal": (54.1, 47.0, 73.4, 92.3, 95.3),
        "product": (50.5, 40.7, 68.4, 92.7, 95.6),
    },
}

_METHOD_ROWS: dict[str, tuple[str, ...]] = {
    "triplet": ("Triplet",),
    "npair": ("N-pair",),
    "multi-similarity": ("Multi-Similarity",),
    "cosface": ("CosFace",),
    "circle": ("Circle",),
    "csl": ("CSL", "CSL (rerun by HAPPIER)"),
    "happier": ("HAPPIER",),
    "msa": ("MSA",),
}
"""Registry key of a method to its rows in the source table."""

_ALIASES = {
    "n-pair": "npair",
    "n_pair": "npair",
    "multi_similarity": "multi-similarity",
    "ms": "multi-similarity",
}


def published_results(method: str, dataset: str) -> list[PublishedResult]:
    """The published overall results of ``method`` on ``dataset`` (none for the toy set).

    Args:
        method: the registry key (``"msa"``, ``"csl"``, ``"multi-similarity"``...).
        dataset: ``"vehicle"``, ``"animal"``, ``"product"`` or ``"toy"``.

    Example:
        >>> published_results("msa", "vehicle")[0].metrics["overall/map"]
        40.8
        >>> published_results("msa", "toy")
        []
    """
    rows = _METHOD_ROWS.get(_ALIASES.get(method, method), ())
    return [_row(name, *_TABLE[name][dataset]) for name in rows if dataset in _TABLE[name]]
