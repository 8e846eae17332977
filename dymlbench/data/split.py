"""A class-disjoint validation split carved from the train split.

Whole fine classes are held out, stratified by middle class: each middle class with at least
two fine classes gives ``fraction`` of them (rounded at random, so the expected share is
``fraction``) and always keeps at least one, so every middle and coarse class stays in the
train part. Fine classes with a single image are never held out: under the leave-one-out
protocol the validation split is evaluated with (each image queries all the others) they would
be queries without a positive. The test benchmarks are not touched.
"""

from __future__ import annotations

import logging

import numpy as np

from dymlbench.data.dataset import Split

logger = logging.getLogger(__name__)


def choose_validation_classes(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Pick the fine classes to hold out.

    Args:
        labels: int64 ``[n, n_levels]`` contiguous ids, column 0 fine, column 1 middle (a
            one-level table is stratified as a single group).
        fraction: expected share of the fine classes to hold out, in ``[0, 1)``.
        seed: the choice is a function of the labels and the seed only.

    Returns:
        Sorted int64 ids of the held-out fine classes.

    Example:
        >>> labels = np.array([[f, f // 4, 0] for f in range(8) for _ in range(2)])
        >>> choose_validation_classes(labels, fraction=0.5, seed=0).size
        4
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), but got {fraction!r}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim == 1:
        labels = labels[:, None]
    rng = np.random.default_rng(seed)

    fine_ids, first, sizes = np.unique(labels[:, 0], return_index=True, return_counts=True)
    groups = labels[first, 1] if labels.shape[1] > 1 else np.zeros_like(fine_ids)
    chosen: list[np.ndarray] = []
    for group in np.unique(groups):
        members = fine_ids[groups == group]
        eligible = members[sizes[groups == group] >= 2]
        wanted = fraction * len(members)
        n_out = int(np.floor(wanted) + (rng.random() < wanted - np.floor(wanted)))
        n_out = min(n_out, len(members) - 1, len(eligible))
        if n_out > 0:
            chosen.append(rng.choice(eligible, size=n_out, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def split_validation(split: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out whole fine classes of ``split`` as a validation split.

    Args:
        split: the train split (three levels).
        fraction: expected share of the fine classes held out, in ``(0, 1)``.
        seed: the split is a function of the labels and the seed only.

    Returns:
        ``(train, validation)``: disjoint fine classes, ids of each remapped to be contiguous;
        every middle and coarse class of ``split`` is still in ``train``.

    Raises:
        ValueError: no fine class could be held out (too few classes or images).
    """
    held_out = choose_validation_classes(split.labels, fraction=fraction, seed=seed)
    if held_out.size == 0:
        raise ValueError(
            f"`val_fraction` {fraction} must hold out at least one fine class, but none of the "
            f"{split.hierarchy.n_classes[0]} fine classes of `{split.label_file}` could be held "
            "out (each middle class keeps one, and classes need two images); raise it"
        )
    mask = np.isin(split.labels[:, 0], held_out)
    train = split.subset(~mask, name="train")
    validation = split.subset(mask, name="validation")
    logger.info(
        "validation split (seed %d): %d of %d fine classes, %d images, leave-one-out",
        seed,
        held_out.size,
        split.hierarchy.n_classes[0],
        len(validation),
    )
    return train, validation
