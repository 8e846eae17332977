"""Resumable checkpoints in the run folder, written atomically and read back safely.

A checkpoint is ``<run>/checkpoints/epoch-<NNNN>.pt`` (the epochs done), a mapping of tensors,
numbers, strings and containers only, so it is read with ``torch.load(weights_only=True)``. It
is written to a temporary file in the same folder, flushed to disk, then renamed over its final
name, so a crash mid-write leaves at most a stray ``.tmp`` file and never a truncated
checkpoint under a checkpoint's name. Reading takes the newest checkpoint that loads; one that
does not (a file truncated by some other copy) is logged and the one before it is taken.

Only the newest :data:`KEEP` checkpoints are kept; ``<run>/model.pt`` holds the final network
weights alone (a plain state dict, loadable with ``--weights``).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
KEEP = 2
"""How many of the newest checkpoints are kept."""

_NAME = re.compile(r"epoch-(\d{4,})\.pt")


def checkpoint_path(run_dir: Path, epochs_done: int) -> Path:
    """The file of the checkpoint taken after ``epochs_done`` epochs."""
    return run_dir / CHECKPOINT_DIR / f"epoch-{epochs_done:04d}.pt"


def save_atomic(payload: Any, path: Path) -> None:
    """``torch.save(payload)`` to ``path`` through a temporary file, an fsync and a rename.

    Args:
        payload: tensors, numbers, strings, ``None`` and containers of them.
        path: the final file; its folder is created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], run_dir: Path, epochs_done: int) -> Path:
    """Write the checkpoint of ``epochs_done`` atomically, then drop all but the newest.

    Returns:
        The checkpoint's path.
    """
    path = checkpoint_path(run_dir, epochs_done)
    save_atomic(state, path)
    for old in list_checkpoints(run_dir)[:-KEEP]:
        old.unlink(missing_ok=True)
    logger.debug("saved %s", path)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first (temporary files are not checkpoints)."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that reads back, skipping unreadable ones.

    Raises:
        FileNotFoundError: no checkpoint of the run can be read (the message says why).
    """
    candidates = list_checkpoints(run_dir)
    problems = []
    for path in reversed(candidates):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            logger.warning("skipping unreadable checkpoint %s: %s", path, error)
            problems.append(f"{path.name}: {type(error).__name__}")
            continue
        if not isinstance(state, dict) or "epochs_done" not in state:
            logger.warning("skipping %s: it is not a dymlbench checkpoint", path)
            problems.append(f"{path.name}: not a dymlbench checkpoint")
            continue
        return path, state
    detail = f" (unreadable: {'; '.join(problems)})" if problems else ""
    raise FileNotFoundError(
        f"`--resume` must find a checkpoint in `{run_dir / CHECKPOINT_DIR}`, but none can be "
        f"read{detail}; start the run again without `--resume`"
    )
