"""Image decoding and the transforms of the DyML papers, on uint8 tensors.

The papers (REFERENCE.md section 4) train on ``RandomResizedCrop(224, scale 0.16-1, ratio
0.75-1.33)`` plus a horizontal flip and test on ``Resize(256)`` plus ``CenterCrop(224)``, with
ImageNet mean and std. Here decoding is libjpeg-turbo through ``torchvision.io``, the crop and
the resize are one resampling of the uint8 image, and the images stay uint8 until a whole batch
is on its device, where :class:`BatchNormalize` turns it into normalised floats. That moves the
per-image float conversion off the loader workers, so the accelerator, not the loader, is the
bottleneck.

Random draws use torch's global generator, as torchvision's transforms do, so a DataLoader's
per-worker seeding makes them reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet channel means, applied to channels 0, 1, 2 in the order they are fed."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations, applied like :data:`IMAGENET_MEAN`."""


def decode_image(path: str | Path, *, channel_order: str = "bgr") -> torch.Tensor:
    """Decode an image file into a uint8 tensor.

    Args:
        path: a JPEG (or PNG, WebP, GIF) file; grey and CMYK images are converted.
        channel_order: ``bgr`` reverses the decoded RGB channels (what OpenCV-based code such
            as MSA feeds); ``rgb`` keeps them.

    Returns:
        uint8 ``[3, H, W]``.
    """
    # TODO: move to TorchCodec or PIL: torchvision 0.29 deprecates its decoders for removal.
    from torchvision.io import ImageReadMode, read_file
    from torchvision.io import decode_image as decode

    image = decode(read_file(str(path)), mode=ImageReadMode.RGB)
    return image.flip(0) if channel_order == "bgr" else image


class TrainTransform:
    """Random resized crop and horizontal flip of a uint8 image, in one resampling.

    Args:
        size: side of the square output.
        scale: range of the crop area as a share of the image area.
        ratio: range of the crop aspect ratio (width / height).
        flip: flip horizontally with probability 0.5.

    Example:
        >>> TrainTransform(size=8)(torch.zeros(3, 20, 30, dtype=torch.uint8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        *,
        size: int = 224,
        scale: tuple[float, float] = (0.16, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"`size` must be positive, but got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must satisfy 0 < low <= high <= 1, but got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must satisfy 0 < low <= high, but got {ratio}")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip = flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Crop, resize and maybe flip ``image`` (uint8 ``[3, H, W]``) to ``[3, size, size]``."""
        from torchvision.transforms import RandomResizedCrop
        from torchvision.transforms.v2.functional import resized_crop

        top, left, height, width = RandomResizedCrop.get_params(image, self.scale, self.ratio)
        image = resized_crop(
            image, top, left, height, width, [self.size, self.size], antialias=True
        )
        if self.flip and torch.rand(1).item() < 0.5:
            image = image.flip(-1)
        return image

    def __repr__(self) -> str:
        return (
            f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip={self.flip})"
        )


class TestTransform:
    """Resize the shorter side, then crop the centre, of a uint8 image.

    Args:
        size: side of the square output.
        resize: the shorter side before the crop (the papers: 256 for 224 crops).

    Example:
        >>> TestTransform(size=8, resize=10)(torch.zeros(3, 20, 30, dtype=torch.uint8)).shape
        torch.Size([3, 8, 8])
    """

    __test__ = False  # not a pytest test class

    def __init__(self, *, size: int = 224, resize: int = 256) -> None:
        if not 1 <= size <= resize:
            raise ValueError(f"`size` must be between 1 and `resize` ({resize}), but got {size}")
        self.size = size
        self.resize = resize

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and crop ``image`` (uint8 ``[3, H, W]``) to ``[3, size, size]``."""
        from torchvision.transforms.v2.functional import center_crop, resize

        image = resize(image, [self.resize], antialias=True)
        return center_crop(image, [self.size, self.size])

    def __repr__(self) -> str:
        return f"TestTransform(size={self.size}, resize={self.resize})"


def normalize_batch(
    images: torch.Tensor,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scale a uint8 batch to ``[0, 1]`` and normalise it per channel, on its own device.

    Args:
        images: uint8 ``[B, C, H, W]``.
        mean: per-channel mean, in fed channel order.
        std: per-channel standard deviation.
        dtype: the floating dtype of the result.

    Returns:
        ``[B, C, H, W]`` of ``dtype``: ``(images / 255 - mean) / std``.

    Example:
        >>> batch = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
        >>> normalize_batch(batch, mean=(0.5,) * 3, std=(0.5,) * 3).flatten().tolist()
        [1.0, 1.0, 1.0]
    """
    if images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(
            f"`images` must have shape [B, {len(mean)}, H, W], but got {tuple(images.shape)}"
        )
    mean_t = torch.tensor(mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    return images.to(dtype).mul_(1.0 / 255).sub_(mean_t).div_(std_t)


class BatchNormalize(nn.Module):
    """:func:`normalize_batch` as a module, its constants buffers that follow ``.to(device)``.

    Args:
        mean: per-channel mean, in fed channel order.
        std: per-channel standard deviation.
    """

    def __init__(
        self,
        *,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise uint8 ``[B, C, H, W]`` to float32 ``[B, C, H, W]``."""
        if images.dim() != 4 or images.shape[1] != self.scale.shape[1]:
            raise ValueError(
                f"`images` must have shape [B, {self.scale.shape[1]}, H, W], "
                f"but got {tuple(images.shape)}"
            )
        return images.to(self.scale.dtype).mul_(self.scale).add_(self.shift)
