"""Training and evaluation batches: sharded across ranks, augmented reproducibly.

Training batches come from :class:`dymlbench.data.MPerClassBatchSampler` drawing *global*
batches (``optim.classes_per_batch x optim.images_per_class``); :class:`ShardedBatchSampler`
gives rank ``r`` of ``N`` the ``r``-th contiguous share of each, whole classes, so every
optimiser step sees the same images whatever the number of processes.

Every training item carries its own seed, a function of the run's seed, the epoch, the batch
and the item's slot in the global batch; :class:`SeededItems` seeds the random transform with
it. The augmentation of an image is therefore the same with or without data-loading workers,
on one process or several, and in a resumed run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dymlbench.config import DataConfig
from dymlbench.data import MPerClassBatchSampler, Split, collate_batch, image_dataset

_MASK = (1 << 64) - 1


def _splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), the same on every platform.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    value = 0
    for part in parts:
        value = _splitmix(value ^ (int(part) & _MASK))
    return value & ((1 << 63) - 1)


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's share of every global batch, each item paired with its augmentation seed.

    Args:
        base: the sampler of global batches (built with ``world_size=1``).
        seed: the run's seed.
        rank: this process's rank.
        world_size: the number of processes; must divide ``base.classes_per_batch``.
    """

    def __init__(
        self, base: MPerClassBatchSampler, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if base.world_size != 1:
            raise ValueError(
                f"`base` must draw global batches (world_size 1), but got {base.world_size}"
            )
        if base.classes_per_batch % world_size:
            raise ValueError(
                f"`optim.classes_per_batch` must be a multiple of the number of processes "
                f"({world_size}), but got {base.classes_per_batch}"
            )
        self.base = base
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.share = base.batch_size // world_size
        self._start = 0

    def __len__(self) -> int:
        return len(self.base)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration yields."""
        return self.base.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields, from its first batch."""
        self.base.set_epoch(epoch)
        self._start = 0

    def skip(self, n_batches: int) -> None:
        """Make the next iteration start after the epoch's first ``n_batches`` batches."""
        self.base.skip(n_batches)
        self._start = int(n_batches)

    def state_dict(self) -> dict[str, Any]:
        """The base sampler's state: epoch, position and seed."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["epoch"]`` after ``state["position"]`` batches."""
        self.base.load_state_dict(state)
        self._start = int(state["position"])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start, self._start = self.base.epoch, self._start, 0
        low = self.rank * self.share
        for batch_index, batch in enumerate(self.base, start=start):
            yield [
                (index, derive_seed(self.seed, epoch, batch_index, low + slot))
                for slot, index in enumerate(batch[low : low + self.share])
            ]


class SeededItems(Dataset):
    """Items of ``dataset`` fetched by ``(index, seed)``, the random transform seeded with it.

    The global torch generator is restored afterwards, so fetching in the main process
    (``num_workers=0``) leaves the training's own randomness untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # the CPU generator alone: torch.manual_seed would also seed (and trace) every device
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


def available_workers(requested: int) -> int:
    """``requested`` data-loading workers, capped at the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(requested, cpus or 1)


def train_loader(
    split: Split,
    data: DataConfig,
    *,
    classes_per_batch: int,
    images_per_class: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool,
) -> tuple[DataLoader, ShardedBatchSampler]:
    """The training loader of a split and its sampler (call ``set_epoch`` before each epoch).

    Returns:
        The loader, yielding :func:`dymlbench.data.collate_batch` batches of this rank's share,
        and its :class:`ShardedBatchSampler`.
    """
    base = MPerClassBatchSampler(
        split.labels,
        classes_per_batch=classes_per_batch,
        samples_per_class=images_per_class,
        seed=seed,
    )
    sampler = ShardedBatchSampler(base, seed=seed, rank=rank, world_size=world_size)
    workers = available_workers(num_workers)
    loader = DataLoader(
        SeededItems(image_dataset(split, data, train=True)),
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def eval_loader(
    split: Split, data: DataConfig, *, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """The images of a split in order, with the deterministic test transform."""
    workers = available_workers(num_workers)
    return DataLoader(
        image_dataset(split, data, train=False),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_batch,
        num_workers=workers,
        pin_memory=pin_memory,
    )


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU float32 copy of ``tensor`` as a numpy array."""
    return tensor.detach().to("cpu", torch.float32).numpy()
