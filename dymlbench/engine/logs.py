"""What a run reports while it trains: TensorBoard scalars, a progress bar, a line per epoch.

Only rank 0 reports. Scalars go to TensorBoard under the metric keys of DESIGN.md, prefixed by
where they come from: ``train/loss`` and the method's logs per step, ``train/lr/<group>``,
``val/<network>/<metric>`` after each evaluation and ``test/<network>/<metric>`` at the end,
``<network>`` being ``online`` or ``ema``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class RunLogger:
    """TensorBoard events and the per-epoch progress bar of one run.

    Args:
        run_dir: the run folder (events go to ``<run_dir>/tensorboard``); ``None`` on ranks
            other than 0, which report nothing.
        progress: show a progress bar per epoch (only when standard error is a terminal).
    """

    def __init__(self, *, run_dir: Path | None, progress: bool) -> None:
        self.enabled = run_dir is not None
        self.show_progress = progress and self.enabled and sys.stderr.isatty()
        self._writer: Any = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self._bar: Any = None
        self._task: Any = None
        self._epoch_start = 0.0
        self._images = 0

    def scalars(self, values: Mapping[str, float], *, step: int, prefix: str = "") -> None:
        """Write ``values`` at ``step`` (finite values only; NaN metrics are left out)."""
        if self._writer is None:
            return
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}{key}", value, global_step=step)

    def start_epoch(self, epoch: int, n_epochs: int, n_steps: int) -> None:
        """Open the progress bar of ``epoch`` (from 0) with ``n_steps`` steps."""
        self._epoch_start = time.perf_counter()
        self._images = 0
        if not self.show_progress:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            "train", total=n_steps, epoch=f"{epoch + 1}/{n_epochs}", loss="-", speed="-"
        )

    def step(self, loss: float, n_images: int) -> None:
        """Advance the bar by one step of ``n_images`` images (all ranks) with ``loss``."""
        self._images += n_images
        if self._bar is None:
            return
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        self._bar.update(
            self._task, advance=1, loss=f"{loss:.4f}", speed=f"{self._images / elapsed:.0f}"
        )

    def end_epoch(self) -> float:
        """Close the bar; returns the epoch's images per second."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return self._images / max(time.perf_counter() - self._epoch_start, 1e-9)

    def close(self) -> None:
        """Close the bar and flush the events."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def format_metrics(metrics: Mapping[str, float], keys: tuple[str, ...]) -> str:
    """``"overall/map 41.20 overall/recall@1 70.00"``: chosen metrics in percent.

    Example:
        >>> format_metrics({"overall/map": 0.412, "fine/map": 0.3}, ("overall/map", "x"))
        'overall/map 41.20'
    """
    shown = [f"{key} {100 * metrics[key]:.2f}" for key in keys if key in metrics]
    return " ".join(shown)
