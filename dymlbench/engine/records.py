"""The result record of a finished run: one JSON file the leaderboard and sweeps read.

Schema (:data:`SCHEMA_VERSION` 1), keys of ``record.json``:

- ``schema_version``, ``method``, ``dataset``, ``seed``;
- ``config``: the resolved run configuration (:meth:`dymlbench.config.RunConfig.to_dict`);
- ``metrics``: the test metrics of the reported network, flat keys of DESIGN.md
  (``fine/map``, ``overall/map``, ``multi/hap``); ``reported_network``: ``"online"`` or
  ``"ema"``; ``metrics_by_network``: the test metrics of every network evaluated;
  ``n_queries`` and ``n_skipped_queries`` of the reported evaluation; ``per_query_file``:
  the name, in the run folder, of the ``.npz`` file of its per-query values
  (:func:`dymlbench.evaluation.report.write_per_query`), or ``None``;
- ``initialisation``: ``kind`` (``"scratch"``, ``"imagenet"`` or the kind of checkpoint file:
  ``"dino"``, ``"timm"``, ``"state_dict"``), ``path`` and ``sha256`` of the file, and
  ``teacher_from_checkpoint`` (whether the EMA teacher started from a DINO teacher);
- ``hardware``: the device type and name, the number of processes, the CPU and platform;
- ``gpu_hours``: wall-clock hours times the number of GPUs (0 on CPU); ``wall_seconds``;
- ``packages``: versions of Python, dymlbench, torch, torchvision, timm and numpy;
- ``git_commit`` and ``git_dirty`` of the dymlbench checkout (``None`` outside a checkout);
- ``started_at`` and ``finished_at``: UTC times in ISO 8601;
- ``sweep``: ``None`` for a run; for a trial of a sweep (:mod:`dymlbench.sweep`), a mapping
  with ``study`` (the study name), ``trial`` (the trial number) and ``objective`` (the metric
  tuned). A sweep trial never reads the test data: its ``metrics`` and ``metrics_by_network``
  are empty, ``n_queries`` and ``n_skipped_queries`` are ``None``, and ``validation_metrics``
  holds the reported network's metrics of its last validation pass (held-out train classes;
  ``None`` for a run). A record with a ``sweep`` mapping is not a benchmark result and must
  not reach a leaderboard.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1
"""Version of the result-record schema; bumped when a key changes meaning."""

RECORD_FILE = "record.json"

_PACKAGES = ("torch", "torchvision", "timm", "numpy")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Initialisation:
    """How the backbone (and the teacher) were initialised.

    Attributes:
        kind: ``"scratch"``, ``"imagenet"``, or the checkpoint kind (``"dino"``, ``"timm"``,
            ``"state_dict"``).
        path: the checkpoint file, for a local file.
        sha256: the file's SHA-256 digest, for a local file.
        teacher_from_checkpoint: whether the EMA teacher took a DINO checkpoint's teacher.
    """

    kind: str
    path: str | None = None
    sha256: str | None = None
    teacher_from_checkpoint: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return dataclasses.asdict(self)


def file_sha256(path: Path) -> str:
    """The SHA-256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of Python, dymlbench and the packages that change numbers."""
    from dymlbench import __version__

    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions["dymlbench"] = __version__
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state() -> tuple[str | None, bool | None]:
    """The commit and whether the work tree is dirty, for the checkout holding dymlbench."""
    git = shutil.which("git")
    if git is None:
        return None, None
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip(), dirty


def hardware(device: torch.device, world_size: int) -> dict[str, Any]:
    """What the run ran on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": device.type,
        "device_name": name or platform.machine(),
        "n_processes": world_size,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python_implementation": sys.implementation.name,
    }


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_record(
    *,
    config: Any,
    test_reports: dict[str, Any],
    reported_network: str,
    initialisation: Initialisation,
    device: torch.device,
    world_size: int,
    wall_seconds: float,
    started_at: str,
    per_query_file: str | None = None,
    sweep: Mapping[str, Any] | None = None,
    validation_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The result record of a run (see the module docstring for the keys).

    Args:
        config: the resolved :class:`dymlbench.config.RunConfig`.
        test_reports: network name (``"online"``, ``"ema"``) to its test
            :class:`dymlbench.evaluation.EvaluationReport`.
        reported_network: the network whose metrics are the run's result.
        initialisation: how the networks were initialised.
        device: the device the run trained on.
        world_size: the number of processes.
        wall_seconds: the run's wall-clock time (all sessions of a resumed run).
        started_at: when the run started, ISO 8601.
        per_query_file: the name, in the run folder, of the reported network's per-query
            test values, or ``None`` when not written.
        sweep: for a sweep trial, its ``study``, ``trial`` and ``objective``; ``test_reports``
            is then empty.
        validation_metrics: the reported network's last validation metrics (sweep trials).
    """
    commit, dirty = git_state()
    if sweep is not None:
        reported = {"metrics": {}, "n_queries": None, "n_skipped_queries": None}
    else:
        reported = test_reports[reported_network].to_dict()
    n_gpus = world_size if device.type == "cuda" else 0
    return {
        "schema_version": SCHEMA_VERSION,
        "method": config.method_name,
        "dataset": config.data.dataset,
        "seed": config.engine.seed,
        "config": config.to_dict(),
        "metrics": reported["metrics"],
        "reported_network": reported_network,
        "metrics_by_network": {
            name: report.to_dict()["metrics"] for name, report in test_reports.items()
        },
        "n_queries": reported["n_queries"],
        "n_skipped_queries": reported["n_skipped_queries"],
        "per_query_file": per_query_file,
        "initialisation": initialisation.to_dict(),
        "hardware": hardware(device, world_size),
        "gpu_hours": wall_seconds / 3600.0 * n_gpus,
        "wall_seconds": wall_seconds,
        "packages": package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "started_at": started_at,
        "finished_at": utc_now(),
        "sweep": None if sweep is None else dict(sweep),
        "validation_metrics": None if validation_metrics is None else dict(validation_metrics),
    }
