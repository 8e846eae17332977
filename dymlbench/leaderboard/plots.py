"""The leaderboard's plots (matplotlib, Agg, PNG): per-level mAP, and fine against coarse mAP.

PNGs are written to be reproducible: a fixed figure size and resolution, matplotlib's bundled
DejaVu Sans, default style, and no ``Software`` metadata (which would carry the version). The
same rows on the same matplotlib and FreeType give the same bytes. Across versions the pixels
may differ, so each PNG also carries, in its ``Comment`` text chunk, the JSON of the numbers it
plots (:data:`DATA_KEY`), and in its ``Source`` chunk the versions that drew it
(:data:`RENDERER_KEY`); the drift test compares the numbers always, and the bytes where the
versions match.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dymlbench.hierarchy import LEVEL_NAMES
from dymlbench.leaderboard.aggregate import Row

DATA_KEY = "Comment"
"""The PNG text chunk holding the plotted numbers as JSON."""

RENDERER_KEY = "Source"
"""The PNG text chunk naming the matplotlib and FreeType versions that drew the pixels."""

_SIZE = (7.0, 4.0)
_DPI = 100
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "path.simplify": False,
}


def row_label(row_id: str, row: Row) -> str:
    """The label of a row in a plot: ``#1 msa``."""
    return f"{row_id} {row.method}"


def level_map_data(rows: Sequence[Row], ids: Mapping[int, str]) -> dict[str, Any]:
    """The numbers of the per-level mAP plot: per run row, mean and std at each level."""
    runs = [row for row in rows if not row.is_published]
    levels = [level for level in LEVEL_NAMES if any(f"{level}/map" in row.mean for row in runs)]
    return {
        "levels": levels,
        "rows": [
            {
                "label": row_label(ids[id(row)], row),
                "mean": [_rounded(row.mean.get(f"{level}/map", math.nan)) for level in levels],
                "std": [_rounded(row.std.get(f"{level}/map", math.nan)) for level in levels],
            }
            for row in runs
        ],
    }


def tradeoff_data(rows: Sequence[Row], ids: Mapping[int, str]) -> dict[str, Any]:
    """The numbers of the fine-against-coarse mAP plot, per run row that has both levels."""
    runs = [row for row in rows if not row.is_published]
    points = []
    for row in runs:
        if "fine/map" in row.mean and "coarse/map" in row.mean:
            points.append(
                {
                    "label": row_label(ids[id(row)], row),
                    "fine": _rounded(row.mean["fine/map"]),
                    "coarse": _rounded(row.mean["coarse/map"]),
                    "fine_std": _rounded(row.std.get("fine/map", math.nan)),
                    "coarse_std": _rounded(row.std.get("coarse/map", math.nan)),
                }
            )
    return {"rows": points}


def plot_level_map(data: Mapping[str, Any], title: str, path: Path) -> None:
    """Bars of mAP per level for each run row, with the std over seeds as error bars."""
    with _figure() as (figure, axes):
        levels, rows = data["levels"], data["rows"]
        width = 0.8 / max(1, len(levels))
        for position, level in enumerate(levels):
            xs = [index + (position - (len(levels) - 1) / 2) * width for index in range(len(rows))]
            means = [_value(row["mean"][position]) for row in rows]
            stds = [_value(row["std"][position], 0.0) for row in rows]
            axes.bar(xs, means, width=width, yerr=stds, capsize=2, label=level)
        axes.set_xticks(range(len(rows)))
        axes.set_xticklabels([row["label"] for row in rows], rotation=20, ha="right")
        axes.set_ylabel("mAP (%)")
        axes.set_title(title)
        axes.legend(title="level", loc="upper right")
        axes.set_ylim(0, 100)
        figure.tight_layout()
        _save(figure, data, path)


def plot_tradeoff(data: Mapping[str, Any], title: str, path: Path) -> None:
    """Fine-level against coarse-level mAP, one point per run row, std over seeds as bars."""
    with _figure() as (figure, axes):
        for point in data["rows"]:
            axes.errorbar(
                point["fine"],
                point["coarse"],
                xerr=_value(point["fine_std"], 0.0),
                yerr=_value(point["coarse_std"], 0.0),
                fmt="o",
                capsize=2,
                label=point["label"],
            )
        axes.set_xlabel("fine-level mAP (%)")
        axes.set_ylabel("coarse-level mAP (%)")
        axes.set_xlim(0, 100)
        axes.set_ylim(0, 100)
        axes.set_title(title)
        axes.grid(True, linewidth=0.3)
        if data["rows"]:
            axes.legend(loc="lower right")
        figure.tight_layout()
        _save(figure, data, path)


def renderer() -> str:
    """The versions that decide the pixels: ``matplotlib 3.11.2, FreeType 2.6.1``."""
    import matplotlib
    from matplotlib import ft2font

    return f"matplotlib {matplotlib.__version__}, FreeType {ft2font.__freetype_version__}"


def read_plot_chunks(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (:data:`DATA_KEY`, :data:`RENDERER_KEY`)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return dict(getattr(image, "text", {}))


def read_plot_data(path: Path) -> Any:
    """The JSON numbers a PNG written here carries, or ``None``."""
    text = read_plot_chunks(path).get(DATA_KEY)
    return json.loads(text) if text is not None else None


@contextlib.contextmanager
def _figure() -> Iterator[tuple[Any, Any]]:
    """A figure and its axes on the Agg canvas, under the fixed style; no pyplot, no global
    backend."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # matplotlib's defaults first, so that no matplotlibrc of the user changes the pixels.
    with matplotlib.style.context(["default", _STYLE]):
        figure = Figure(figsize=_SIZE, dpi=_DPI)
        FigureCanvasAgg(figure)
        yield figure, figure.add_subplot()


def _save(figure: Any, data: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "Software": None,
        DATA_KEY: json.dumps(data, sort_keys=True),
        RENDERER_KEY: renderer(),
    }
    figure.savefig(path, format="png", dpi=_DPI, metadata=metadata)


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _value(value: float | None, missing: float = math.nan) -> float:
    return missing if value is None else value
