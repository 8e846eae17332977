"""The committed leaderboards are what the committed records and published table generate.

The pages and plots in ``leaderboards/`` are never edited by hand: this test regenerates them
from ``leaderboards/results`` and ``leaderboards/published.yaml`` into a temporary copy and
compares. Markdown must match byte for byte; a PNG must carry the same plotted numbers, and the
same bytes when it was drawn by the same matplotlib and FreeType as here.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from dymlbench.leaderboard.generate import generate
from dymlbench.leaderboard.plots import DATA_KEY, RENDERER_KEY, read_plot_chunks, renderer

LEADERBOARDS = Path(__file__).resolve().parents[2] / "leaderboards"
FIX = (
    "regenerate them with `dymlbench leaderboard` (from the repository root) and commit the "
    "result; never edit them by hand"
)


def _generated(folder: Path) -> dict[str, Path]:
    """The generated files of a leaderboards folder: its pages and its plots."""
    paths = [*folder.glob("*.md"), *folder.glob("plots/*.png")]
    return {path.relative_to(folder).as_posix(): path for path in sorted(paths)}


def drift(committed: Path, work: Path) -> str | None:
    """Regenerate ``committed``'s pages from its records into ``work``; what differs, or None."""
    fresh = work / "leaderboards"
    fresh.mkdir(parents=True)
    shutil.copyfile(committed / "published.yaml", fresh / "published.yaml")
    shutil.copytree(committed / "results", fresh / "results")

    generate(results_dir=fresh / "results", out_dir=fresh, published_path=fresh / "published.yaml")

    expected, present = _generated(fresh), _generated(committed)
    missing = sorted(set(expected) - set(present))
    stale = sorted(set(present) - set(expected))
    if missing or stale:
        return f"leaderboards/ lacks {missing} and holds stale {stale}: {FIX}"

    problems = []
    for name, path in expected.items():
        old = present[name]
        if name.endswith(".md"):
            if old.read_bytes() != path.read_bytes():
                diff = difflib.unified_diff(
                    old.read_text(encoding="utf-8").splitlines(),
                    path.read_text(encoding="utf-8").splitlines(),
                    f"committed/{name}",
                    f"regenerated/{name}",
                    lineterm="",
                )
                problems.append("\n".join(list(diff)[:30]))
            continue
        old_chunks, new_chunks = read_plot_chunks(old), read_plot_chunks(path)
        if old_chunks.get(DATA_KEY) != new_chunks.get(DATA_KEY):
            problems.append(f"{name}: the plotted numbers differ")
        elif old_chunks.get(RENDERER_KEY) == renderer() and old.read_bytes() != path.read_bytes():
            problems.append(f"{name}: the pixels differ with the same matplotlib and FreeType")
    if problems:
        return f"leaderboards/ is out of date: {FIX}\n" + "\n".join(problems)
    return None


def test_the_committed_leaderboards_are_up_to_date(tmp_path: Path) -> None:
    problem = drift(LEADERBOARDS, tmp_path)

    assert problem is None, problem


def test_a_hand_edit_fails_with_the_command_to_run(tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(LEADERBOARDS, edited)
    page = edited / "vehicle.md"
    page.write_text(page.read_text(encoding="utf-8").replace("55.6", "56.6"), encoding="utf-8")

    problem = drift(edited, tmp_path / "work")

    assert "regenerate them with `dymlbench leaderboard`" in problem
    assert "-| #1  | MSA" in problem and "+| #1  | MSA" in problem
