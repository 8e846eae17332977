"""Backbones: timm models without their classifier, ending in global average pooling.

Every DyML method in REFERENCE.md uses a ResNet-34 with global average pooling (512-d pooled
features); any timm model name works. The backbone maps images ``[batch, 3, H, W]`` to pooled
features ``[batch, feature_dim]``; the method's heads take it from there.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from torch import nn

from dymlbench.models.weights import load_weights
from dymlbench.models.wrappers import unwrap_model

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "resnet34"
"""The backbone of every published DyML result."""


def create_backbone(
    *,
    name: str = DEFAULT_BACKBONE,
    pretrained: str | Path = "scratch",
    channels_last: bool = False,
) -> nn.Module:
    """Build a timm backbone with ``num_classes=0`` and global average pooling.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet34"``.
        pretrained: ``"scratch"`` (random initialisation), ``"imagenet"`` (timm's pretrained
            weights, downloaded to the hub cache unless already there) or the path of a local
            checkpoint, loaded with :func:`dymlbench.models.load_weights` (a DINO checkpoint's
            student).
        channels_last: convert the model to the channels-last memory format.

    Returns:
        The backbone; ``backbone(images)`` is ``[batch, feature_dim(backbone)]``.

    Raises:
        ValueError: an unknown model name (with close matches) or a checkpoint that does not fit.
        RuntimeError: the ImageNet weights cannot be downloaded; the message says how to use a
            local file instead.

    Example:
        >>> backbone = create_backbone(name="test_resnet")
        >>> backbone(torch.zeros(2, 3, 32, 32)).shape == (2, feature_dim(backbone))
        True
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"`model.backbone` must be a timm model name, but got {name!r}{hint} "
            "(timm.list_models() lists them)"
        )

    kwargs = {"num_classes": 0, "global_pool": "avg"}
    if str(pretrained) == "imagenet":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except OSError as error:
            raise RuntimeError(
                f"could not download the ImageNet weights of {name!r} ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no detail'}); "
                "this machine may be offline. Use --weights PATH with a local checkpoint file "
                "(model.pretrained=PATH), or train from scratch (model.pretrained=scratch)"
            ) from error
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if str(pretrained) != "scratch":
            load_weights(model, pretrained, which="student")

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    logger.debug("backbone %s (%s), %d-d features", name, pretrained, feature_dim(model))
    return model


def feature_dim(backbone: nn.Module) -> int:
    """Size of the pooled features a timm backbone outputs.

    timm 1.0 models with a pre-logits layer (MobileNetV3, some ConvNeXts) output
    ``head_hidden_size`` features rather than ``num_features``.

    Args:
        backbone: a model from :func:`create_backbone` (or DDP-wrapped).

    Returns:
        The feature size: 512 for ResNet-34.
    """
    backbone = unwrap_model(backbone)
    size = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(size, int):
        raise TypeError(
            "`backbone` must be a timm model with `num_features`, but got "
            f"{type(backbone).__name__}"
        )
    return size
