"""The M-per-class batch sampler: composition, determinism, coverage, ranks and resuming."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dymlbench.data import MPerClassBatchSampler


def _labels(seed: int = 0) -> np.ndarray:
    """Imbalanced fine classes (1 to 13 images) under 6 middle classes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 14, size=30)
    fine = np.repeat(np.arange(30), sizes)
    labels = np.stack([fine, fine // 5, fine // 15], axis=1)
    return labels[rng.permutation(len(labels))]


@pytest.mark.parametrize("fine_per_middle", [1, 2], ids=["flat", "hierarchical"])
def test_batch_composition(fine_per_middle):
    labels = _labels()
    sampler = MPerClassBatchSampler(
        labels, classes_per_batch=8, samples_per_class=4, fine_per_middle=fine_per_middle
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(labels[batch, 0].tolist())
        assert len(batch) == 32 and len(counts) == 8 and set(counts.values()) == {4}
    if fine_per_middle == 2:
        paired = [max(Counter(labels[batch, 1].tolist()).values()) >= 8 for batch in batches]
        assert np.mean(paired) > 0.9


def test_an_epoch_covers_every_image():
    labels = _labels()
    for epoch in range(3):
        sampler = MPerClassBatchSampler(labels, classes_per_batch=8, samples_per_class=4, seed=1)
        sampler.set_epoch(epoch)
        seen = {index for batch in sampler for index in batch}
        assert seen == set(range(len(labels)))


def test_deterministic_for_a_seed_and_epoch():
    labels = _labels()

    def epoch_batches(seed, epoch):
        sampler = MPerClassBatchSampler(labels, classes_per_batch=8, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 0) == epoch_batches(0, 0)
    assert epoch_batches(0, 0) != epoch_batches(0, 1)
    assert epoch_batches(0, 0) != epoch_batches(1, 0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_distinct_batches_that_cover_the_epoch(world_size):
    labels = _labels()
    per_rank = []
    for rank in range(world_size):
        sampler = MPerClassBatchSampler(
            labels, classes_per_batch=8, seed=4, rank=rank, world_size=world_size
        )
        sampler.set_epoch(2)
        per_rank.append([tuple(batch) for batch in sampler])
    assert len({len(batches) for batches in per_rank}) == 1
    all_batches = [batch for batches in per_rank for batch in batches]
    assert len(set(all_batches)) == len(all_batches)
    assert {index for batch in all_batches for index in batch} == set(range(len(labels)))


def test_resume_mid_epoch():
    labels = _labels()
    sampler = MPerClassBatchSampler(labels, classes_per_batch=8, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)

    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "position": 5, "seed": 7}

    resumed = MPerClassBatchSampler(labels, classes_per_batch=8, seed=7)
    resumed.load_state_dict(state)
    assert consumed + list(resumed) == full
    assert list(resumed) == full  # the skip applies to one iteration only

    resumed.set_epoch(3)
    resumed.skip(len(full) - 1)
    assert list(resumed) == full[-1:]


def test_rejects_impossible_requests():
    labels = _labels()
    with pytest.raises(ValueError, match="at most the number of fine classes"):
        MPerClassBatchSampler(labels, classes_per_batch=64)
    with pytest.raises(ValueError, match="`rank` must be in"):
        MPerClassBatchSampler(labels, classes_per_batch=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="positive divisor"):
        MPerClassBatchSampler(labels, classes_per_batch=8, fine_per_middle=3)
