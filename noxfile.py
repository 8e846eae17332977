"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s bench``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = ["torch>=2.1", "torchvision>=0.16"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass ``-- -m slow`` for the slow tests)."""
    session.install(*TORCH)
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check formatting and lint with ruff."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every ``benchmarks/bench_*.py`` script; each prints its ratios to the reference."""
    session.install(*TORCH)
    session.install("-e", ".[dev]")
    for script in sorted(Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


TOY_LEADERBOARD_METHODS = (
    "msa",
    "happier",
    "csl",
    "triplet",
    "npair",
    "multi-similarity",
    "cosface",
    "circle",
)


@nox.session(name="toy-leaderboard")
def toy_leaderboard(session: nox.Session) -> None:
    """Train every DyML method on the toy set with seeds 0, 1, 2, publish their records in
    ``leaderboards/results/`` and regenerate the leaderboards (about an hour on 2 CPU cores)."""
    session.install(*TORCH)
    session.install("-e", ".[dev]")
    runs = Path(session.create_tmp()) / "toy-runs"
    for method in TOY_LEADERBOARD_METHODS:
        for seed in (0, 1, 2):
            run_dir = runs / f"{method}-seed{seed}"
            if not (run_dir / "record.json").is_file():
                session.run(
                    "dymlbench", "run", method, "--dataset", "toy", "--seed", str(seed),
                    "--no-progress", "--output", str(run_dir),
                )  # fmt: skip
    session.run("dymlbench", "leaderboard", "add", *sorted(str(p) for p in runs.iterdir()))
    session.run("dymlbench", "leaderboard")
