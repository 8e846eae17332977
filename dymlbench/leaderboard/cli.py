"""``dymlbench leaderboard``: generate the leaderboards; ``dymlbench leaderboard add``: add runs.

This module imports only typer (and the standard library) at the top, so that
``dymlbench --help`` stays fast; the library is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DIR = Path("leaderboards")
"""The leaderboards folder, relative to the working directory (the repository root)."""

leaderboard_app = typer.Typer(
    help=(
        "Generate the leaderboards from the result records (no subcommand), or add finished "
        "runs' records (`add`)."
    ),
    invoke_without_command=True,
)


@leaderboard_app.callback(invoke_without_command=True)
def leaderboard_command(
    context: typer.Context,
    results: Annotated[
        Path, typer.Option("--results", help="The folder of published records.")
    ] = DEFAULT_DIR / "results",
    out: Annotated[
        Path, typer.Option("--out", help="Where the pages (or other formats) go.")
    ] = DEFAULT_DIR,
    published: Annotated[
        Path, typer.Option("--published", help="The published table.")
    ] = DEFAULT_DIR / "published.yaml",
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="`markdown` (pages and plots), or `csv`, `json`, `latex` per dataset."
        ),
    ] = "markdown",
) -> None:
    """Write leaderboards/README.md and one page per dataset from the records."""
    if context.invoked_subcommand is not None:
        return
    from dymlbench.cli import _fail
    from dymlbench.leaderboard.generate import generate
    from dymlbench.leaderboard.published import PublishedSchemaError
    from dymlbench.leaderboard.records import RecordError

    try:
        written = generate(results_dir=results, out_dir=out, published_path=published, fmt=fmt)
    except (ValueError, FileNotFoundError, RecordError, PublishedSchemaError) as error:
        _fail(str(error))
    typer.echo(f"wrote {len(written)} files to {out}")


@leaderboard_app.command("add")
def add_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR", help="Finished run folders (or their record.json files)."
        ),
    ],
    results: Annotated[
        Path, typer.Option("--results", help="The folder of published records.")
    ] = DEFAULT_DIR / "results",
) -> None:
    """Check finished runs' records and copy them into the results folder.

    A sweep trial's record, or one without test metrics, is refused with the reason; one
    refused record adds none. Regenerate the pages afterwards with `dymlbench leaderboard`.
    """
    from dymlbench.cli import _fail
    from dymlbench.leaderboard.records import RecordError, add_records

    try:
        added, present = add_records(run_dirs, results)
    except (RecordError, FileNotFoundError) as error:
        _fail(f"no record was added:\n{error}")
    for path in added:
        typer.echo(f"added {path}")
    for path in present:
        typer.echo(f"already present: {path}")
    if added:
        typer.echo("regenerate the leaderboards with `dymlbench leaderboard`")
