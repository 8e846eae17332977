"""The training engine: one loop for every method, checkpoints and resume, records, DDP.

- :func:`train`: one run from a resolved :class:`dymlbench.config.RunConfig` to its run folder
  and result record (:mod:`dymlbench.engine.run`);
- :class:`Trainer`: the loop itself (:mod:`dymlbench.engine.loop`);
- :func:`gather_across_ranks`: the differentiable all-gather a pair loss calls so that it sees
  every rank's embeddings (:mod:`dymlbench.engine.distributed`).

Example:
    >>> import torch
    >>> from dymlbench.engine import gather_across_ranks
    >>> gather_across_ranks(torch.zeros(4, 2)).shape   # one process: the tensor itself
    torch.Size([4, 2])
"""

from __future__ import annotations

from dymlbench.engine.distributed import gather_across_ranks
from dymlbench.engine.loop import NonFiniteLossError, Trainer, build_network
from dymlbench.engine.run import RunResult, default_run_dir, train

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "Trainer",
    "build_network",
    "default_run_dir",
    "gather_across_ranks",
    "train",
]
