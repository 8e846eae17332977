"""Several processes: ``torchrun`` runs DDP on gloo, with the loss trajectory of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_support import LAUNCHER, tiny_overrides

from dymlbench.engine import gather_across_ranks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather_worker(rank: int, port: int, outputs: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    inputs = torch.randn(4, 3)[rank * 2 : rank * 2 + 2]
    gathered = gather_across_ranks(inputs @ weight)
    loss = (gathered @ gathered.T).square().mean()
    loss.backward()
    dist.all_reduce(weight.grad)
    weight.grad /= 2  # the mean DDP takes
    torch.save(
        {"loss": loss.detach(), "grad": weight.grad, "rows": gathered.shape[0]}, outputs[rank]
    )
    dist.destroy_process_group()


def test_gathered_embeddings_give_the_gradient_of_the_whole_batch(tmp_path: Path) -> None:
    outputs = [str(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    # forked, so that the workers need not import this module
    mp.start_processes(_gather_worker, args=(_free_port(), outputs), nprocs=2, start_method="fork")

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    embeddings = torch.randn(4, 3) @ weight
    loss = (embeddings @ embeddings.T).square().mean()
    loss.backward()
    for output in outputs:
        result = torch.load(output, weights_only=True)
        assert result["rows"] == 4
        torch.testing.assert_close(result["loss"], loss.detach())
        torch.testing.assert_close(result["grad"], weight.grad)


def _run_cli(arguments: list[str], *, nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc == 1:
        command = [sys.executable, str(LAUNCHER), *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={_free_port()}",
            str(LAUNCHER),
            *arguments,
        ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_gloo_processes_follow_the_loss_trajectory_of_one(
    toy_root: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(toy_root, **{"optim.freeze_batchnorm": True})
    # batch norm frozen: each rank would otherwise normalise with its own half of the batch
    trajectories = {}
    for nproc in (1, 2):
        run_dir = tmp_path / f"run{nproc}"
        arguments = ["run", "engine-pair", "--dataset", "toy", "--output", str(run_dir)]
        arguments += [item for override in overrides for item in ("--set", override)]
        finished = _run_cli(arguments, nproc=nproc, cwd=tmp_path)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        trajectories[nproc] = [loss for e in metrics["train"] for loss in e["step_losses"]]
        record = json.loads((run_dir / "record.json").read_text())
        assert record["hardware"]["n_processes"] == nproc

    assert len(trajectories[1]) == len(trajectories[2]) >= 6
    # float32 sums in another order (the gradient all-reduce), amplified by 24 Adam steps:
    # the first steps agree to ~1e-7, the last to ~6e-4 relative
    assert trajectories[2][:3] == pytest.approx(trajectories[1][:3], rel=1e-5)
    assert trajectories[2] == pytest.approx(trajectories[1], rel=2e-3)
