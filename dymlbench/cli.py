"""The ``dymlbench`` command line.

Each command is a thin call into the library. Heavy modules (torch, the evaluator, the data
layer) are imported inside the commands, so ``dymlbench --help`` stays fast. The CLI is the only
place that installs a log handler (rich) and that prints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dymlbench import __version__
from dymlbench.leaderboard.cli import leaderboard_app
from dymlbench.sweep.cli import sweep_app

app = typer.Typer(
    name="dymlbench",
    help="Benchmark harness for Dynamic Metric Learning (DyML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Inspect DyML datasets and generate the toy dataset.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(sweep_app, name="sweep")
app.add_typer(leaderboard_app, name="leaderboard")

logger = logging.getLogger("dymlbench")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("dymlbench")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _console():
    """A console for tables: at least 120 columns wide when the output is not a terminal."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 120))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dymlbench {__version__}")
        raise typer.Exit()


def _fail(message: str) -> None:
    """Print a user error in red and exit with status 1, without a traceback."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=1)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    _setup_logging(verbose)


@app.command("eval")
def eval_command(
    embeddings: Annotated[
        Path, typer.Option("--embeddings", help="An embeddings .npz file (see README).")
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help="`default` (exact protocol) or `official` (HAPPIER/MSA evaluator)."),
    ] = "default",
    recall_at: Annotated[
        str, typer.Option("--recall-at", help="Comma-separated k for recall@k.")
    ] = "1,10,20",
    device: Annotated[str, typer.Option(help="`cpu` or `cuda` (or `cuda:N`).")] = "cpu",
    chunk_size: Annotated[
        int | None,
        typer.Option(help="Queries ranked at a time; default: sized to a memory budget."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(help="`exact` (full ranking) or `faiss` (top-k search: recall@k only)."),
    ] = "exact",
) -> None:
    """Evaluate embeddings under the DyML protocol and print the metrics."""
    from dymlbench.evaluation import evaluate_file
    from dymlbench.evaluation.report import render_table

    try:
        ks = tuple(int(k) for k in recall_at.split(",") if k.strip())
    except ValueError:
        _fail(f"`--recall-at` must be comma-separated integers, but got {recall_at!r}")
    try:
        report = evaluate_file(
            embeddings,
            mode=mode,
            recall_at=ks,
            device=device,
            chunk_size=chunk_size,
            backend=backend,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        _fail(str(error))

    _console().print(render_table(report))
    if json_out is not None:
        report.write_json(json_out)
        logger.info("wrote %s", json_out)


@data_app.command("toy")
def data_toy_command(
    out: Annotated[Path, typer.Option("--out", help="The dataset folder to create.")],
    layout: Annotated[
        str, typer.Option(help="`vehicle` (three benchmarks) or `product` (one test set).")
    ] = "vehicle",
    seed: Annotated[int, typer.Option(help="Generator seed; the files are a function of it.")] = 0,
) -> None:
    """Generate the small hierarchical toy dataset in the released DyML layout."""
    from dymlbench.data import ToyConfig, generate_toy_dataset

    try:
        generate_toy_dataset(out, seed=seed, config=ToyConfig(layout=layout))
    except (ValueError, FileExistsError) as error:
        _fail(str(error))


@data_app.command("check")
def data_check_command(
    dataset: Annotated[str, typer.Option(help="`vehicle`, `animal`, `product` or `toy`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The dataset folder; default `$DYMLBENCH_DATA`."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Only check that the files exist; decode nothing.")
    ] = False,
) -> None:
    """Check a dataset's label files and images; exit 1 on any problem."""
    import json

    from dymlbench.data import DataSpec, check_dataset, render_check_report

    try:
        report = check_dataset(DataSpec(dataset=dataset, data_dir=data_dir), full=not fast)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))

    _console().print(render_check_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", json_out)
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("run")
def run_command(
    method: Annotated[
        str, typer.Argument(help="Registry key of the method (`dymlbench methods`).")
    ],
    dataset: Annotated[str, typer.Option(help="`vehicle`, `animal`, `product` or `toy`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The dataset folder; default `$DYMLBENCH_DATA`."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run (engine.seed).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (optim.epochs).")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: `--set optim.lr=0.01` (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="The run folder; default runs/<method>-<dataset>-..."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="`auto`, `cpu` or `cuda` (engine.device).")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Initial backbone weights: a state dict, timm or DINO checkpoint."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --output from its checkpoint.")
    ] = False,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="A YAML config (e.g. a saved config.yaml).")
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Show no progress bar.")
    ] = False,
) -> None:
    """Train a method, evaluate it, and print the table beside the published numbers."""
    from dymlbench.config import resolve_config
    from dymlbench.data import DataFormatError, DataNotFoundError, ImageFilesError
    from dymlbench.engine import NonFiniteLossError, train

    flags = {
        "data.data_dir": data_dir,
        "engine.seed": seed,
        "optim.epochs": epochs,
        "engine.device": device,
        "model.pretrained": weights,
    }
    assignments = list(overrides or [])
    assignments += [f"{key}={value}" for key, value in flags.items() if value is not None]
    if no_progress:
        assignments.append("engine.progress=false")
    if resume and output is None:
        _fail("`--resume` must come with `--output` naming the run folder to continue")
    if resume and config_file is None:
        config_file = output / "config.yaml"
    try:
        config = resolve_config(
            method=method, dataset=dataset, config_file=config_file, overrides=assignments
        )
        result = train(config, output_dir=output, resume=resume)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        DataNotFoundError,
        DataFormatError,
        ImageFilesError,
        NonFiniteLossError,
    ) as error:
        _fail(str(error))
    if result.record is None:
        return

    from dymlbench.evaluation.report import render_table

    console = _console()
    for name, report in result.reports.items():
        table = render_table(report)
        table.title = f"{table.title}: {name} network"
        console.print(table)
    console.print(_published_table(config.method_name, config.data.dataset, result.metrics))
    console.print(f"run folder: {result.run_dir}", highlight=False, soft_wrap=True)


def _published_table(method: str, dataset: str, metrics: dict[str, float]):
    """This run's overall metrics beside the published ones of the method and dataset."""
    from rich.table import Table

    from dymlbench.published import published_results

    keys = (
        "overall/asi",
        "overall/map",
        "overall/recall@1",
        "overall/recall@10",
        "overall/recall@20",
    )
    table = Table(title=f"{method} on {dataset}: overall, percent")
    table.add_column("result")
    for key in keys:
        table.add_column(key.removeprefix("overall/"), justify="right")
    table.add_row("this run", *(_cell(metrics.get(key), 100.0) for key in keys))
    rows = published_results(method, dataset)
    for row in rows:
        table.add_row(
            f"published: {row.source}", *(_cell(row.metrics.get(key), 1.0) for key in keys)
        )
    if not rows:
        table.caption = "no published numbers for this method and dataset"
    return table


def _cell(value: float | None, scale: float) -> str:
    return "-" if value is None or value != value else f"{scale * value:.1f}"


@app.command("methods")
def methods_command() -> None:
    """List the registered methods with their citation and default recipe per dataset."""
    from rich.table import Table

    from dymlbench.config import DATASETS
    from dymlbench.registry import get_method, list_methods

    keys = list_methods()
    console = _console()
    if not keys:
        console.print("no methods are registered")
        return
    for key in keys:
        method_type = get_method(key)
        table = Table(title=f"{key}: {method_type.citation}", title_justify="left")
        table.add_column("dataset")
        table.add_column("run settings")
        table.add_column("method settings")
        for dataset in DATASETS:
            try:
                recipe = method_type.recipe(dataset)
            except ValueError as error:
                table.add_row(dataset, f"no recipe: {error}", "")
                continue
            run = ", ".join(f"{name}={value}" for name, value in recipe.run.items())
            own = ", ".join(f"{name}={value}" for name, value in recipe.method.to_dict().items())
            table.add_row(dataset, run or "defaults", own or "none")
        console.print(table)


def main() -> None:
    """Run the ``dymlbench`` command line."""
    app()


if __name__ == "__main__":
    main()
