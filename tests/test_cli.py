"""The command line's shell: version, help, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dymlbench import __version__
from dymlbench.cli import app


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"dymlbench {__version__}"


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("eval", "data"):
        assert command in result.output


@pytest.mark.parametrize(
    ("commands", "heavy", "listed"),
    [
        (
            [[]],
            {"torch", "numpy", "timm", "optuna", "pandas", "faiss", "sqlalchemy", "matplotlib"},
            "",
        ),
        (
            [["sweep"], ["sweep", "run"]],
            {"torch", "numpy", "optuna", "sqlalchemy", "matplotlib"},
            "",
        ),
        ([["leaderboard"]], {"torch", "numpy", "pandas", "matplotlib", "tabulate"}, "add"),
    ],
    ids=["dymlbench", "sweep", "leaderboard"],
)
def test_help_imports_no_heavy_module(
    commands: list[list[str]], heavy: set[str], listed: str
) -> None:
    # `--help` must answer fast: torch, numpy and the library load inside the commands.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dymlbench.cli import app\n"
        f"for command in {commands!r}:\n"
        "    result = CliRunner().invoke(app, [*command, '--help'])\n"
        "    assert result.exit_code == 0, result.output\n"
        f"    assert {listed!r} in result.output, result.output\n"
        f"print(sorted({heavy!r} & set(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "[]"
