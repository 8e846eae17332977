"""Checkpoints are atomic, a damaged one is skipped, and a resumed run repeats an uninterrupted
one to the last bit on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_support import tiny_overrides

from dymlbench.config import ConfigError, apply_overrides, resolve_config
from dymlbench.engine import train
from dymlbench.engine.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_latest_checkpoint,
    save_atomic,
    save_checkpoint,
)
from dymlbench.engine.loop import Trainer


def test_a_run_stopped_after_epoch_one_and_resumed_is_bit_identical(
    methods, monkeypatch: pytest.MonkeyPatch, toy_root: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(
        toy_root,
        **{
            "method.teacher_momentum": 0.7,
            "data.val_fraction": 0.25,
            "engine.eval_every": 1,
            "optim.optimizer": "sgd",
            "optim.momentum": 0.9,
            "optim.schedule_unit": "step",
        },
    )
    config = resolve_config(method="engine-proxy", dataset="toy", overrides=overrides)
    whole = train(config, output_dir=tmp_path / "whole")

    original = Trainer.train_epoch

    def stop_in_epoch_two(self):
        if self.epochs_done == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config, output_dir=tmp_path / "parts")
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert [path.name for path in list_checkpoints(tmp_path / "parts")] == ["epoch-0001.pt"]
    # a checkpoint of epoch 2 cut off mid-write, and a stray temporary file: neither is loaded
    good = checkpoint_path(tmp_path / "parts", 1).read_bytes()
    checkpoint_path(tmp_path / "parts", 2).write_bytes(good[: len(good) // 2])
    (tmp_path / "parts" / "checkpoints" / ".epoch-0003.pt.x.tmp").write_bytes(good)
    resumed = train(config, output_dir=tmp_path / "parts", resume=True)

    assert resumed.metrics == whole.metrics  # exact equality: bit for bit
    assert resumed.reports["ema"].metrics == whole.reports["ema"].metrics
    assert resumed.history.validation == whole.history.validation
    steps = [epoch["step_losses"] for epoch in resumed.history.train]
    assert steps == [epoch["step_losses"] for epoch in whole.history.train]
    final = torch.load(tmp_path / "parts" / "model.pt", weights_only=True)
    reference = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    assert all(torch.equal(final[key], reference[key]) for key in reference)
    assert final["method.epochs_seen"].item() == 2
    record = json.loads((tmp_path / "parts" / "record.json").read_text())
    assert (
        record["metrics"]
        == json.loads((tmp_path / "whole" / "record.json").read_text())["metrics"]
    )


def test_resuming_needs_the_same_configuration(methods, toy_root: Path, tmp_path: Path) -> None:
    config = resolve_config(
        method="engine-pair",
        dataset="toy",
        overrides=tiny_overrides(toy_root, **{"optim.epochs": 1}),
    )
    train(config, output_dir=tmp_path / "run")

    with pytest.raises(ConfigError, match=r"optim.lr \(0.003 there, 0.1 here\)"):
        train(apply_overrides(config, ["optim.lr=0.1"]), output_dir=tmp_path / "run", resume=True)
    with pytest.raises(FileExistsError, match="already holds a run; pass `--resume`"):
        train(config, output_dir=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="holding config.yaml"):
        train(config, output_dir=tmp_path / "elsewhere", resume=True)


def test_checkpoints_are_written_atomically_and_pruned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for epoch in (1, 2, 3):
        save_checkpoint({"epochs_done": epoch, "weights": torch.ones(3) * epoch}, tmp_path, epoch)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["epoch-0002.pt", "epoch-0003.pt"]

    def crash(payload, stream) -> None:
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epochs_done": 4}, tmp_path, 4)
    monkeypatch.undo()

    assert [path.name for path in list_checkpoints(tmp_path)] == ["epoch-0002.pt", "epoch-0003.pt"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "epoch-0003.pt" and torch.equal(state["weights"], torch.full((3,), 3.0))


def test_a_damaged_newest_checkpoint_falls_back_and_none_readable_is_an_error(
    tmp_path: Path,
) -> None:
    save_atomic({"epochs_done": 1}, checkpoint_path(tmp_path, 1))
    checkpoint_path(tmp_path, 2).write_bytes(checkpoint_path(tmp_path, 1).read_bytes()[:40])

    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "epoch-0001.pt" and state["epochs_done"] == 1

    checkpoint_path(tmp_path, 1).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"none can be read \(unreadable: epoch-0002.pt"):
        load_latest_checkpoint(tmp_path)
