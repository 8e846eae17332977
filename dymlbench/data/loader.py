"""The torch side of a split: a ``Dataset`` of uint8 crops and a collate function.

An item is a dict ``{"image": uint8 [3, H, W], "labels": int64 [n_levels], "index": int}``;
:func:`collate_batch` stacks items into ``{"images": uint8 [B, 3, H, W], "labels": int64
[B, n_levels], "indices": int64 [B]}``. Normalise ``images`` on the device with
:class:`~dymlbench.data.transforms.BatchNormalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dymlbench.data.dataset import DataSpec, Split
from dymlbench.data.errors import ImageFilesError
from dymlbench.data.transforms import TestTransform, TrainTransform


class ImageDataset(Dataset):
    """The images of a split, decoded, transformed and put in the spec's channel order.

    Args:
        split: the images and their labels.
        transform: uint8 ``[3, H, W]`` to uint8 ``[3, h, w]``; ``None`` for none.
        channel_order: ``bgr`` or ``rgb`` (see :class:`~dymlbench.data.dataset.DataSpec`).
    """

    def __init__(
        self,
        split: Split,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        channel_order: str = "bgr",
    ) -> None:
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"`channel_order` must be 'bgr' or 'rgb', but got {channel_order!r}")
        self.split = split
        self.transform = transform
        self.channel_order = channel_order
        self.paths = [str(path) for path in split.paths]
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            image = decode_image(read_file(self.paths[index]), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as error:
            line = int(self.split.line_numbers[index])
            raise ImageFilesError(
                f"the image `{self.paths[index]}` (line {line} of `{self.split.label_file}`) "
                f"must decode, but it does not ({error}); run `dymlbench data check` for the "
                "full list"
            ) from error
        if self.transform is not None:
            image = self.transform(image)
        if self.channel_order == "bgr":
            image = image.flip(0)
        return {"image": image, "labels": self.labels[index], "index": index}


def collate_batch(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack dataset items into a batch.

    Returns:
        ``images`` uint8 ``[B, 3, H, W]`` (contiguous), ``labels`` int64 ``[B, n_levels]``,
        ``indices`` int64 ``[B]``.
    """
    return {
        "images": torch.stack([item["image"] for item in items]),
        "labels": torch.stack([item["labels"] for item in items]),
        "indices": torch.tensor([item["index"] for item in items], dtype=torch.int64),
    }


def train_transform(spec: DataSpec) -> TrainTransform:
    """The paper's train transform at the spec's crop size."""
    return TrainTransform(size=spec.crop_size)


def eval_transform(spec: DataSpec) -> TestTransform:
    """The paper's test transform at the spec's sizes."""
    return TestTransform(size=spec.crop_size, resize=spec.test_resize)


def image_dataset(split: Split, spec: DataSpec, *, train: bool) -> ImageDataset:
    """An :class:`ImageDataset` with the spec's transform and channel order.

    Args:
        split: the images.
        spec: sizes and channel order.
        train: the random train transform, else the deterministic test transform.
    """
    transform = train_transform(spec) if train else eval_transform(spec)
    return ImageDataset(split, transform=transform, channel_order=spec.channel_order)
