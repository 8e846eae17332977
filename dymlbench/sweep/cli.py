"""``dymlbench sweep``: run a sweep worker, and read a study (status, best, plots).

``dymlbench sweep METHOD --dataset D ...`` runs one worker (the same command on several
machines, with one ``--storage``, shares the study); ``dymlbench sweep status|best|plots``
read a study. Only typer is imported here at module level: the library (torch, Optuna) loads
inside the commands, so that ``dymlbench --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup


class _SweepGroup(TyperGroup):
    """``dymlbench sweep METHOD ...`` is ``dymlbench sweep run METHOD ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(
    cls=_SweepGroup,
    help=(
        "Tune a method with Optuna on the validation split: `dymlbench sweep METHOD --dataset "
        "D` runs a worker; `status`, `best` and `plots` read a study."
    ),
    no_args_is_help=True,
)

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Study storage: an RDB URL (postgresql://..., sqlite:///...) or journal:PATH; "
        "default: sqlite in --output.",
    ),
]
StudyOption = Annotated[
    str | None, typer.Option("--study", help="Study name; default <method>-<dataset>.")
]
SweepFolderOption = Annotated[
    Path | None, typer.Option("--output", help="The sweep's folder (its default SQLite).")
]


def _fail(message: str) -> None:
    from dymlbench.cli import _fail as fail

    fail(message)


@sweep_app.command("run")
def run_command(
    method: Annotated[
        str, typer.Argument(help="Registry key of the method (`dymlbench methods`).")
    ],
    dataset: Annotated[str, typer.Option(help="`vehicle`, `animal`, `product` or `toy`.")],
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            help="Search-space file; default sweeps/METHOD.yaml here, else in the dymlbench "
            "checkout.",
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", help="Trials of the study, over all its workers.")
    ] = 20,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds after which this worker starts no new trial."),
    ] = None,
    storage: StorageOption = None,
    study: StudyOption = None,
    objective: Annotated[
        str, typer.Option(help="Validation metric to maximise (e.g. overall/map).")
    ] = "overall/map",
    seed: Annotated[int, typer.Option(help="Study seed: sampler and trial seeds.")] = 0,
    pruner: Annotated[str, typer.Option(help="`median`, `hyperband` or `none`.")] = "median",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of every trial (optim.epochs), over the space.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Worker folder; default runs/sweep-<method>-<dataset>."),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Train classes held out for validation; default 0.2."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The dataset folder; default `$DYMLBENCH_DATA`."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="`auto`, `cpu` or `cuda` (engine.device).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="A YAML config applied over the recipe.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Fix a config key for every trial (repeatable)."),
    ] = None,
    heartbeat: Annotated[
        int, typer.Option(help="Seconds between heartbeats of a running trial.")
    ] = 30,
    grace_period: Annotated[
        int | None,
        typer.Option(help="Seconds without a heartbeat before a trial is retried; default 2x."),
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Show no progress bar.")
    ] = False,
) -> None:
    """Run a sweep worker until the study has its trials (start it on every machine)."""
    import optuna

    from dymlbench.data import DataFormatError, DataNotFoundError, ImageFilesError
    from dymlbench.sweep.study import SweepSettings, base_config, parse_storage, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space_file = space if space is not None else _default_space(method)
    output = output if output is not None else Path("runs") / f"sweep-{method}-{dataset}"
    flags = {
        "data.data_dir": data_dir,
        "optim.epochs": epochs,
        "engine.device": device,
    }
    assignments = list(overrides or [])
    assignments += [f"{key}={value}" for key, value in flags.items() if value is not None]
    if no_progress:
        assignments.append("engine.progress=false")
    try:
        config, search_space = base_config(
            method=method,
            dataset=dataset,
            space_file=space_file,
            config_file=config_file,
            overrides=assignments,
            val_fraction=val_fraction,
        )
        settings = SweepSettings(
            base=config,
            space=search_space,
            n_trials=trials,
            study_name=study or f"{method}-{dataset}",
            storage=parse_storage(storage, output=output),
            output=output,
            objective=objective,
            seed=seed,
            pruner=pruner,
            timeout=timeout,
            heartbeat=heartbeat,
            grace_period=grace_period,
        )
        summary = run_sweep(settings)
    except (
        ValueError,  # ConfigError, SpaceError and SweepError among them
        TypeError,
        FileNotFoundError,
        DataNotFoundError,
        DataFormatError,
        ImageFilesError,
    ) as error:
        _fail(str(error))
    if summary is not None:
        _print_status(summary.status, settings.storage.shown)


@sweep_app.command("status")
def status_command(
    storage: StorageOption = None,
    study: StudyOption = None,
    output: SweepFolderOption = None,
) -> None:
    """Trials by state, the best trial so far and where its run folder is."""
    study_object, shown = _open(storage, study, output)
    from dymlbench.sweep.study import study_status

    _print_status(study_status(study_object), shown)


@sweep_app.command("best")
def best_command(
    out: Annotated[Path, typer.Option("--out", help="The YAML file to write.")],
    storage: StorageOption = None,
    study: StudyOption = None,
    output: SweepFolderOption = None,
) -> None:
    """Write the best trial's configuration for `dymlbench run --config FILE`."""
    study_object, _ = _open(storage, study, output)
    from dymlbench.sweep.study import SweepError, write_best_config

    try:
        config, best = write_best_config(study_object, out)
    except SweepError as error:
        _fail(str(error))
    typer.echo(
        f"wrote {out}: trial {best.number} ({best.value:.6g}); run it with `dymlbench run "
        f"{config.method_name} --dataset {config.data.dataset} --config {out}`"
    )


@sweep_app.command("plots")
def plots_command(
    out: Annotated[Path, typer.Option("--out", help="The folder of the PNG files.")],
    storage: StorageOption = None,
    study: StudyOption = None,
    output: SweepFolderOption = None,
) -> None:
    """Plot the optimisation history, the parameter importances and a contour (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    study_object, _ = _open(storage, study, output)
    from dymlbench.sweep.study import write_plots

    written, skipped = write_plots(study_object, out)
    for path in written:
        typer.echo(f"wrote {path}")
    for message in skipped:
        typer.echo(message)


def _open(storage: str | None, study: str | None, output: Path | None) -> tuple[Any, str]:
    import optuna

    from dymlbench.sweep.study import SweepError, load_existing_study, parse_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None and output is None:
        _fail("`--storage` or `--output` must name the sweep's storage, but got neither")
    try:
        spec = parse_storage(storage, output=output or Path("."))
        return load_existing_study(spec, study), spec.shown
    except SweepError as error:
        _fail(str(error))


def _print_status(status: Any, storage: str) -> None:
    from rich.table import Table

    from dymlbench.cli import _console

    console = _console()
    console.print(f"study {status.name} ({storage})")
    table = Table()
    table.add_column("state")
    table.add_column("trials", justify="right")
    for state, count in status.counts.items():
        table.add_row(state.lower(), str(count))
    console.print(table)
    if status.best_number is None:
        console.print("no complete trial yet")
    else:
        objective = status.objective or "objective"
        params = ", ".join(f"{key}={value!r}" for key, value in status.best_params.items())
        console.print(
            f"best: trial {status.best_number}, {objective} {status.best_value:.6g}\n"
            f"params: {params or 'none'}\nrun folder: {status.best_run_dir}",
            highlight=False,
            soft_wrap=True,
        )
    for number, error in status.failures[-5:]:
        console.print(f"trial {number} failed: {error}", highlight=False, soft_wrap=True)


def _default_space(method: str) -> Path:
    """``sweeps/<method>.yaml`` of the working directory, else of the dymlbench checkout the
    package runs from (an editable install), else the working directory's (for the error)."""
    name = Path("sweeps") / f"{method}.yaml"
    checkout = Path(__file__).resolve().parents[2] / name
    return checkout if not name.is_file() and checkout.is_file() else name
