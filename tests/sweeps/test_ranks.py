"""Under ``torchrun`` only rank 0 talks to the study: it broadcasts each trial's configuration,
and the other ranks train what they receive until rank 0 sends ``None``; and a real two-process
sweep on gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import LAUNCHER, SPACE, sweep_arguments

from dymlbench.config import resolve_config
from dymlbench.engine import distributed
from dymlbench.engine.distributed import DistContext
from dymlbench.sweep import study as sweep_study
from dymlbench.sweep.space import load_space


def _settings(toy_root: Path, output: Path) -> sweep_study.SweepSettings:
    base = resolve_config(
        method="engine-proxy",
        dataset="toy",
        overrides=[f"data.data_dir={toy_root}", "data.val_fraction=0.25", "optim.epochs=1"],
    )
    return sweep_study.SweepSettings(
        base=base,
        space=load_space(SPACE, base=base),
        n_trials=1,
        study_name="ranks",
        storage=sweep_study.parse_storage(None, output=output),
        output=output,
    )


def test_rank_0_broadcasts_each_trial_then_none(
    methods, toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[object] = []

    def recording_broadcast(value: object) -> object:
        if value is None or isinstance(value, dict):
            sent.append(value)
        return value

    monkeypatch.setattr(distributed, "broadcast_object", recording_broadcast)

    summary = sweep_study.run_sweep(_settings(toy_root, tmp_path))

    assert summary.ran == (0,)
    assert [message["sweep"]["trial"] for message in sent[:-1]] == [0] and sent[-1] is None
    for number, message in enumerate(sent[:-1]):
        assert message["run_dir"] == str((tmp_path / "trials" / f"trial-{number:04d}").resolve())
        assert message["config"]["engine"]["seed"] == sweep_study.trial_seed(0, number)


def test_other_ranks_follow_without_touching_the_study(
    methods, toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(toy_root, tmp_path / "rank0")
    config = settings.base.to_dict()
    messages = [
        {"config": config, "run_dir": str(tmp_path / f"t{k}"), "sweep": {"trial": k}}
        for k in range(2)
    ]
    queue = [*messages, None]
    trained: list[tuple[str, object]] = []

    monkeypatch.setattr(
        distributed, "init_distributed", lambda device: DistContext(rank=1, world_size=2)
    )
    monkeypatch.setattr(distributed, "broadcast_object", lambda value: queue.pop(0))

    def fake_train(config, *, output_dir, on_validation, sweep):
        assert on_validation(1, {}) is False  # only rank 0 decides to stop
        trained.append((str(output_dir), sweep))

    monkeypatch.setattr("dymlbench.engine.train", fake_train)

    assert sweep_study.run_sweep(settings) is None
    assert trained == [(message["run_dir"], message["sweep"]) for message in messages]
    assert not (tmp_path / "rank0").exists()  # no storage, no trial folder


def test_a_sweep_under_torchrun_runs_each_trial_once_on_every_rank(
    toy_root: Path, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        f"--master-port={port}", str(LAUNCHER),
        *sweep_arguments(toy_root, output, "--trials", "2"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(
        study_name="engine-proxy-toy", storage=f"sqlite:///{output / 'study.db'}"
    )
    assert [trial.state for trial in study.get_trials()] == [TrialState.COMPLETE] * 2
    for trial in study.get_trials():
        record = json.loads((Path(trial.user_attrs["run_dir"]) / "record.json").read_text())
        assert record["hardware"]["n_processes"] == 2
        assert record["sweep"]["trial"] == trial.number
