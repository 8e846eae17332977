"""Several processes: the process group under ``torchrun``, and gathers a loss can use.

``torchrun --nproc-per-node N -m dymlbench run ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_distributed` joins them in one process group
(NCCL on CUDA, gloo on CPU). Without ``torchrun`` every helper here is the identity on one
process, so a method can call :func:`gather_across_ranks` unconditionally.

Batches. ``optim.classes_per_batch x optim.images_per_class`` is the *global* batch: every rank
draws the same plan of batches and takes its own contiguous share of each (whole classes), so a
run on N processes sees the same images per optimiser step as a run on one process.

Pair losses. A loss over pairs of the batch (triplet, multi-similarity, H-AP) must see every
rank's embeddings: ``embeddings = gather_across_ranks(local)`` and ``labels =
gather_across_ranks(batch.labels)``. The gather is differentiable: the gradient of the gathered
tensor flows back to each rank's own part, summed over ranks, so that with DDP's gradient mean
the update equals the one of a single process on the whole batch. A loss that is a mean over
the batch's items (a proxy loss) needs no gather.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistContext:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: this process's rank, from 0.
        world_size: the number of processes.
        local_rank: the rank on this machine (which GPU it takes).
        initialised: whether this context created the process group (and must destroy it).

    Example:
        >>> DistContext(rank=0, world_size=1, local_rank=0).is_main
        True
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which writes the run folder and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def init_distributed(device_type: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device_type: ``"cuda"`` (NCCL) or ``"cpu"`` (gloo).

    Returns:
        The context; ``world_size`` 1 without ``torchrun`` (nothing is initialised).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, initialised=True)


def shutdown_distributed(context: DistContext) -> None:
    """Destroy the process group if ``context`` created it."""
    if context.initialised and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks, then slices."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_across_ranks(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order (this rank's unchanged).

    Differentiable when ``tensor`` requires grad: the gradient of the result reaches each rank's
    own rows, summed over the ranks' losses (see the module docstring). On one process it
    returns ``tensor`` itself.

    Args:
        tensor: ``[rows, ...]``, the same shape on every rank (the engine shards every batch
            equally, so a step's features, embeddings and labels qualify).

    Returns:
        ``[world_size * rows, ...]``.

    Example:
        >>> gather_across_ranks(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    if not _active():
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` over ranks (a new tensor; ``values`` itself on one process)."""
    if not _active():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank; nothing on one process."""
    if _active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable values only); ``value`` on one process."""
    if not _active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
