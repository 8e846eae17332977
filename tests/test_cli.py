"""The command line's shell: version, help, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

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


def test_help_imports_no_heavy_module() -> None:
    # `dymlbench --help` must answer fast: torch, numpy and the library load inside commands.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dymlbench.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = {'torch', 'numpy', 'timm', 'optuna', 'pandas', 'faiss'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "[]"
