"""Helpers of the sweep tests, loaded by ``tests/sweeps/conftest.py`` as ``sweep_helpers``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parent / "engine" / "launch.py"
SPACE = HERE / "engine-proxy.yaml"
"""Two swept keys (a log-uniform learning rate, a uniform temperature) and one epoch."""


def sweep_arguments(data_dir: Path, output: Path, *extra: str) -> list[str]:
    """``sweep engine-proxy`` on ``data_dir`` with the test space, writing into ``output``."""
    return [
        "sweep",
        "engine-proxy",
        "--dataset",
        "toy",
        "--data-dir",
        str(data_dir),
        "--space",
        str(SPACE),
        "--output",
        str(output),
        "--val-fraction",
        "0.25",
        "--no-progress",
        *extra,
    ]


def start_worker(arguments: list[str], *, log: Path) -> subprocess.Popen:
    """A sweep worker in its own process (the launcher registers the throwaway methods)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(log, "w", encoding="utf-8") as stream:
        return subprocess.Popen(
            [sys.executable, str(LAUNCHER), *arguments],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
