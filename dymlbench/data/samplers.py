"""M-per-class batch samplers on the fine label, deterministic, resumable and DDP-aware.

A batch holds ``classes_per_batch`` distinct fine classes with ``samples_per_class`` images each
(the papers: 64 x 4 = 256).

Epoch semantics. An epoch is a plan of batches fixed by ``(seed, epoch)``:

1. every fine class's images are shuffled and cut into groups of ``samples_per_class``; the last
   group of a class is completed with images of the same class drawn again at random;
2. the groups are dealt into batches so that no batch holds two groups of one class, and a
   batch left with fewer classes is completed with groups of random classes not in it;
3. the batches are shuffled, their number rounded up to a multiple of ``world_size`` with extra
   random batches, and rank ``r`` takes batches ``r, r + world_size, ...``.

So over all ranks an epoch covers every image at least once, and repeats images only to
complete groups, batches and ranks. The one exception is a class with more groups than there
are batches: it gets one group per batch and the rest of its images wait for a later epoch.

With ``fine_per_middle = k > 1`` (the hierarchical variant) the fine classes of each middle
class are shuffled and partitioned into sets of ``k``, and each set is dealt as one unit, so a
batch holds ``k`` fine classes of each of its middle classes (sets of a middle class with fewer
than ``k`` fine classes, and completed batches, hold fewer).

Resuming. Like ``DistributedSampler``, call :meth:`~MPerClassBatchSampler.set_epoch` before
each epoch. To resume mid-epoch, call ``set_epoch(epoch)`` then ``skip(n)`` with the number of
batches the engine consumed (a DataLoader fetches ahead, so count consumed batches, not the
sampler's position), or ``load_state_dict({"epoch": epoch, "position": n})``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class MPerClassBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` fine classes x ``samples_per_class`` images.

    Args:
        labels: int ``[n, n_levels]`` (or ``[n]``) labels, column 0 fine, column 1 middle
            (needed when ``fine_per_middle > 1``).
        classes_per_batch: distinct fine classes per batch (P).
        samples_per_class: images per class per batch (M).
        seed: the plan of every epoch is a function of ``(seed, epoch)`` and the labels.
        rank: this process's rank in DDP.
        world_size: the number of DDP processes.
        fine_per_middle: fine classes drawn from the same middle class (1: independent).

    Example:
        >>> labels = np.repeat(np.arange(6), 3)
        >>> sampler = MPerClassBatchSampler(labels, classes_per_batch=2, samples_per_class=2)
        >>> len(sampler), [len(batch) for batch in sampler]
        (6, [4, 4, 4, 4, 4, 4])
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        classes_per_batch: int = 64,
        samples_per_class: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fine_per_middle: int = 1,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or len(labels) == 0:
            raise ValueError(f"`labels` must have shape [n, n_levels], but got {labels.shape}")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(
                "`classes_per_batch` and `samples_per_class` must be positive, but got "
                f"{classes_per_batch} and {samples_per_class}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"`rank` must be in [0, world_size) with world_size >= 1, but got rank {rank} "
                f"and world_size {world_size}"
            )
        if fine_per_middle < 1 or classes_per_batch % fine_per_middle:
            raise ValueError(
                f"`fine_per_middle` must be a positive divisor of `classes_per_batch` "
                f"({classes_per_batch}), but got {fine_per_middle}"
            )
        if fine_per_middle > 1 and labels.shape[1] < 2:
            raise ValueError(
                "`labels` must have a middle column (column 1) when `fine_per_middle` > 1, "
                f"but got shape {labels.shape}"
            )
        classes, fine = np.unique(labels[:, 0], return_inverse=True)
        if len(classes) < classes_per_batch:
            raise ValueError(
                f"`classes_per_batch` must be at most the number of fine classes "
                f"({len(classes)}), but got {classes_per_batch}; lower it"
            )

        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.fine_per_middle = fine_per_middle
        self.epoch = 0
        self._start = 0
        self._position = 0
        self._cached: tuple[int, np.ndarray] | None = None

        fine = fine.reshape(-1)
        self._n_classes = len(classes)
        self._order = np.argsort(fine, kind="stable")
        self._counts = np.bincount(fine, minlength=self._n_classes)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        first = self._order[self._offsets]
        self._middle = (
            np.unique(labels[first, 1], return_inverse=True)[1].reshape(-1)
            if labels.shape[1] > 1
            else np.zeros(self._n_classes, dtype=np.int64)
        )

    @property
    def batch_size(self) -> int:
        """Images per batch, ``classes_per_batch * samples_per_class``."""
        return self.classes_per_batch * self.samples_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration yields, from its first batch."""
        self.epoch = int(epoch)
        self._start = 0
        self._position = 0

    def skip(self, n_batches: int) -> None:
        """Make the next iteration start after the first ``n_batches`` batches of the epoch."""
        if not 0 <= n_batches <= len(self):
            raise ValueError(f"`n_batches` must be between 0 and {len(self)}, but got {n_batches}")
        self._start = int(n_batches)
        self._position = self._start

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches yielded so far in it on this rank, and the seed."""
        return {"epoch": self.epoch, "position": self._position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["epoch"]``, after its first ``state["position"]`` batches."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"the sampler state must come from a sampler with seed {self.seed}, "
                f"but got seed {state['seed']}"
            )
        self.set_epoch(state["epoch"])
        self.skip(state["position"])

    def __len__(self) -> int:
        return len(self._plan(self.epoch)) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        plan = self._plan(self.epoch)
        mine = plan[self.rank :: self.world_size]
        start, self._start = self._start, 0
        for position in range(start, len(mine)):
            self._position = position + 1
            yield mine[position].tolist()

    def _plan(self, epoch: int) -> np.ndarray:
        """All batches of an epoch over all ranks, int64 ``[n_batches, batch_size]``."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups, group_class, class_groups = self._groups(rng)
        units = self._units(rng)
        per_batch = self.classes_per_batch // self.fine_per_middle

        # a unit's group j holds group j (cycled) of each of its classes
        n_unit_groups = np.array([class_groups[u].max() for u in units])
        n_batches = math.ceil(n_unit_groups.sum() / per_batch)
        while n_unit_groups.max() > n_batches:
            n_unit_groups = np.minimum(n_unit_groups, n_batches)
            n_batches = math.ceil(n_unit_groups.sum() / per_batch)
        capped = int((class_groups > n_batches).sum())
        if capped:
            logger.debug("%d classes have more groups than the %d batches", capped, n_batches)

        batches: list[list[int]] = [[] for _ in range(n_batches)]
        position = 0
        first_group = np.concatenate([[0], np.cumsum(class_groups)[:-1]])
        for u in rng.permutation(len(units)):
            for j in range(n_unit_groups[u]):
                batch = batches[position % n_batches]
                batch.extend(int(first_group[c] + j % class_groups[c]) for c in units[u])
                position += 1
        plan = [self._complete(rng, batch, groups, group_class) for batch in batches]
        plan = [plan[i] for i in rng.permutation(len(plan))]
        while len(plan) % self.world_size:
            plan.append(self._complete(rng, [], groups, group_class))
        result = np.stack(plan)
        self._cached = (epoch, result)
        return result

    def _groups(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every class's shuffled images cut into groups of M, the last one completed."""
        m = self.samples_per_class
        class_of_image = np.repeat(np.arange(self._n_classes), self._counts)
        shuffled = self._order[np.lexsort((rng.random(len(self._order)), class_of_image))]
        class_groups = -(-self._counts // m)
        n_pad = class_groups * m - self._counts
        pad_class = np.repeat(np.arange(self._n_classes), n_pad)
        pad_pick = self._offsets[pad_class] + np.floor(
            rng.random(len(pad_class)) * self._counts[pad_class]
        ).astype(np.int64)
        # interleave each class's padding after its own images
        slots = np.concatenate([class_of_image, pad_class])
        images = np.concatenate([shuffled, self._order[pad_pick]])
        images = images[np.argsort(slots, kind="stable")]
        groups = images.reshape(-1, m)
        group_class = np.repeat(np.arange(self._n_classes), class_groups)
        return groups, group_class, class_groups

    def _units(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Sets of fine classes dealt together: single classes, or k of one middle class."""
        k = self.fine_per_middle
        if k == 1:
            return [np.array([c]) for c in range(self._n_classes)]
        units = []
        for middle in np.unique(self._middle):
            members = rng.permutation(np.flatnonzero(self._middle == middle))
            units.extend(members[i : i + k] for i in range(0, len(members), k))
        return units

    def _complete(
        self,
        rng: np.random.Generator,
        batch_groups: list[int],
        groups: np.ndarray,
        group_class: np.ndarray,
    ) -> np.ndarray:
        """The images of a batch, completed to P classes with groups of absent classes."""
        present = set(group_class[batch_groups].tolist())
        need = self.classes_per_batch - len(present)
        extra: list[int] = []
        if need > 0:
            for c in rng.permutation(self._n_classes):
                if int(c) not in present:
                    extra.append(int(c))
                    if len(extra) == need:
                        break
        rows = [groups[batch_groups]] if batch_groups else []
        if extra:
            m = self.samples_per_class
            picks = [
                self._order[
                    self._offsets[c]
                    + rng.choice(self._counts[c], size=m, replace=self._counts[c] < m)
                ]
                for c in extra
            ]
            rows.append(np.stack(picks))
        return np.concatenate(rows).reshape(-1)
