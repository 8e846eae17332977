"""One run from start to record: :func:`train`.

The run folder (written by rank 0 only)::

    <run>/config.yaml            the resolved configuration (written before training)
    <run>/checkpoints/epoch-NNNN.pt   resumable checkpoints, written atomically
    <run>/tensorboard/           TensorBoard events
    <run>/metrics.json           per-epoch training values, validation and test metrics
    <run>/model.pt               the final network's weights (a plain state dict)
    <run>/per_query.npz          per-query test values of the reported network
                                 (:func:`dymlbench.evaluation.report.write_per_query`)
    <run>/record.json            the result record (:mod:`dymlbench.engine.records`)

``metrics.json`` and ``record.json`` are written atomically too. ``resume=True`` continues a run
from its newest readable checkpoint; its configuration must be the saved one, except for the
keys that do not change results (:data:`RUNTIME_KEYS`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from dymlbench.config import ConfigError, RunConfig
from dymlbench.engine import distributed
from dymlbench.engine.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    save_atomic,
    save_checkpoint,
)
from dymlbench.engine.logs import RunLogger
from dymlbench.engine.loop import History, Trainer, resolve_device
from dymlbench.engine.records import RECORD_FILE, build_record, utc_now
from dymlbench.evaluation import EvaluationReport
from dymlbench.evaluation.report import write_json_atomic, write_per_query

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
PER_QUERY_FILE = "per_query.npz"

ValidationCallback = Callable[[int, dict[str, dict[str, float]]], bool]
"""``on_validation(epochs_done, metrics per network) -> stop``, see :func:`train`."""

RUNTIME_KEYS = frozenset({"engine.device", "engine.progress", "engine.num_workers"})
"""Keys a resumed run may change: where it runs and how it shows progress, not its results."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a finished run returns (on rank 0; other ranks get empty reports and no record).

    Attributes:
        run_dir: the run folder.
        metrics: the test metrics of the reported network (``engine.report_network``).
        reports: per network (``online``, ``ema``), its test report.
        history: training values and validation metrics per epoch.
        record: the result record, or ``None`` on ranks other than 0.
        record_path: where the record was written, or ``None``.
    """

    run_dir: Path
    metrics: dict[str, float]
    reports: dict[str, EvaluationReport]
    history: History
    record: dict[str, Any] | None
    record_path: Path | None


def default_run_dir(config: RunConfig, *, root: Path = Path("runs")) -> Path:
    """``<root>/<method>-<dataset>-seed<seed>-<UTC time>``, a new folder name for a run."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{config.method_name}-{config.data.dataset}-seed{config.engine.seed}-{stamp}"
    return root / name


def train(
    config: RunConfig,
    *,
    output_dir: Path | None = None,
    resume: bool = False,
    on_validation: ValidationCallback | None = None,
    sweep: Mapping[str, Any] | None = None,
) -> RunResult:
    """Train, validate and test one run, writing its folder and its result record.

    Under ``torchrun`` every process calls this; rank 0 writes the folder and evaluates.

    Args:
        config: the resolved configuration (:func:`dymlbench.config.resolve_config`).
        output_dir: the run folder; ``None`` for :func:`default_run_dir` (not with ``resume``).
        resume: continue the run in ``output_dir`` from its newest checkpoint.
        on_validation: called on rank 0 after each validation pass with the number of epochs
            done and, per network (``online``, ``ema``), its validation metrics; returning
            ``True`` stops the run after that epoch (a sweep's pruner). Its answer reaches
            every rank, so under ``torchrun`` every rank passes a callback or none.
        sweep: for a trial of a sweep, its ``study``, ``trial`` and ``objective``: the test
            data is then neither read nor evaluated, and the record carries this mapping
            under ``sweep`` with no test metrics (:mod:`dymlbench.engine.records`).

    Returns:
        The run's folder, test metrics, history and record.

    Raises:
        ConfigError: a configuration that cannot run here (``engine.device``), or one that
            differs from the saved run's on ``resume``.
        FileExistsError: ``output_dir`` already holds a run and ``resume`` is not set.
        FileNotFoundError: ``resume`` without a readable checkpoint or ``config.yaml``.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    if resume and output_dir is None:
        raise ValueError("`output_dir` must name the run folder to resume, but got None")
    context = distributed.init_distributed(resolve_device(config.engine.device).type)
    try:
        device = resolve_device(config.engine.device, local_rank=context.local_rank)
        run_dir = Path(output_dir) if output_dir is not None else default_run_dir(config)
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
        if context.is_main:
            prepare_run_dir(run_dir, config, resume=resume)
        distributed.barrier()
        return _run(
            config,
            run_dir=run_dir,
            resume=resume,
            device=device,
            context=context,
            on_validation=on_validation,
            sweep=sweep,
        )
    finally:
        distributed.shutdown_distributed(context)


def prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool) -> None:
    """Check the run folder against ``resume`` and write ``config.yaml``.

    Raises:
        FileExistsError: a new run in a folder that already holds one.
        FileNotFoundError: ``resume`` of a folder without ``config.yaml``.
        ConfigError: ``resume`` with a configuration other than the saved one.
    """
    saved_path = run_dir / CONFIG_FILE
    if resume:
        if not saved_path.is_file():
            raise FileNotFoundError(
                f"`--resume` must name a run folder holding {CONFIG_FILE}, but `{saved_path}` "
                "does not exist; pass the run folder as `--output`"
            )
        diffs = config_differences(RunConfig.read(saved_path), config)
        if diffs:
            shown = "; ".join(f"{key} ({old!r} there, {new!r} here)" for key, old, new in diffs)
            raise ConfigError(
                diffs[0][0],
                "must keep the value of the run being resumed, but these keys differ from "
                f"`{saved_path}`: {shown}",
            )
    elif saved_path.exists() or list_checkpoints(run_dir):
        raise FileExistsError(
            f"`--output` must be a new or empty folder, but `{run_dir}` already holds a run; "
            "pass `--resume` to continue it, or choose another folder"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved_path, config.to_yaml())


def config_differences(saved: RunConfig, current: RunConfig) -> list[tuple[str, Any, Any]]:
    """The dotted keys, other than :data:`RUNTIME_KEYS`, whose values differ."""
    old, new = _flatten(saved.to_dict()), _flatten(current.to_dict())
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in RUNTIME_KEYS and old.get(key) != new.get(key)
    ]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _run(
    config: RunConfig,
    *,
    run_dir: Path,
    resume: bool,
    device: torch.device,
    context: distributed.DistContext,
    on_validation: ValidationCallback | None = None,
    sweep: Mapping[str, Any] | None = None,
) -> RunResult:
    from dymlbench.data import load_dataset

    dataset = load_dataset(config.data, load_test=sweep is None)
    engine, n_epochs = config.engine, config.optim.epochs
    with RunLogger(run_dir=run_dir if context.is_main else None, progress=engine.progress) as log:
        trainer = Trainer(
            config=config, dataset=dataset, device=device, context=context, run_logger=log
        )
        started_at, wall_before = utc_now(), 0.0
        if resume:
            path, state = load_latest_checkpoint(run_dir)
            trainer.load_state_dict(state)
            started_at, wall_before = state["started_at"], float(state["wall_seconds"])
            logger.info("resumed %s after epoch %d", path, trainer.epochs_done)
        session_start = time.perf_counter()

        def wall_seconds() -> float:
            return wall_before + time.perf_counter() - session_start

        while trainer.epochs_done < n_epochs:
            trainer.train_epoch()
            done = trainer.epochs_done
            stop = False
            if (engine.eval_every and done % engine.eval_every == 0) or done == n_epochs:
                results = trainer.validate()
                if on_validation is not None:
                    stop = results is not None and bool(on_validation(done, results))
                    stop = distributed.broadcast_object(stop)
            distributed.barrier()
            checkpoint_due = engine.checkpoint_every and done % engine.checkpoint_every == 0
            if context.is_main:
                _write_metrics(run_dir, trainer.history, config)
                if checkpoint_due or done == n_epochs:
                    state = trainer.state_dict()
                    state.update(started_at=started_at, wall_seconds=wall_seconds())
                    save_checkpoint(state, run_dir, done)
            distributed.barrier()
            if stop:
                logger.info("the validation callback stopped the run after epoch %d", done)
                break

        reports: dict[str, EvaluationReport] = {}
        record = record_path = None
        if context.is_main:
            # A sweep trial never touches the test data: its record holds its validation.
            per_query_file = validation_metrics = None
            if sweep is None:
                reports = trainer.test()
                write_per_query(run_dir / PER_QUERY_FILE, reports[engine.report_network])
                per_query_file = PER_QUERY_FILE
            elif trainer.history.validation:
                validation_metrics = trainer.history.validation[-1].get(engine.report_network)
            save_atomic(trainer.network.state_dict(), run_dir / MODEL_FILE)
            _write_metrics(run_dir, trainer.history, config)
            record = build_record(
                config=config,
                test_reports=reports,
                reported_network=engine.report_network,
                initialisation=trainer.initialisation,
                device=device,
                world_size=context.world_size,
                wall_seconds=wall_seconds(),
                started_at=started_at,
                per_query_file=per_query_file,
                sweep=sweep,
                validation_metrics=validation_metrics,
            )
            record_path = run_dir / RECORD_FILE
            write_json_atomic(record_path, record)
            logger.info("wrote the result record %s", record_path)
        distributed.barrier()

    metrics = reports[engine.report_network].metrics if reports else {}
    return RunResult(
        run_dir=run_dir,
        metrics=metrics,
        reports=reports,
        history=trainer.history,
        record=record,
        record_path=record_path,
    )


def _write_metrics(run_dir: Path, history: History, config: RunConfig) -> None:
    payload = {"reported_network": config.engine.report_network, **history.to_dict()}
    write_json_atomic(run_dir / METRICS_FILE, _json_safe(payload))


def _json_safe(value: Any) -> Any:
    """NaN and infinite floats as ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
