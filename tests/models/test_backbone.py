"""Tests of the timm backbones: feature sizes, memory format, initialisation choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from dymlbench.models import create_backbone, feature_dim


@pytest.mark.parametrize(
    ("name", "expected"),
    [("test_resnet", 96), ("test_vit", 64), ("mobilenetv3_small_050", 1024)],
    ids=["resnet", "vit", "pre-logits"],
)
def test_features_have_the_reported_size(name: str, expected: int) -> None:
    backbone = create_backbone(name=name).eval()

    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))

    assert feature_dim(backbone) == expected
    assert features.shape == (2, expected)


def test_resnet34_is_the_default_with_512_features() -> None:
    backbone = create_backbone()

    assert type(backbone).__name__ == "ResNet"
    assert feature_dim(backbone) == 512
    assert backbone.global_pool.pool_type == "avg"


def test_channels_last() -> None:
    backbone = create_backbone(name="test_resnet", channels_last=True)

    assert backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"`model.backbone` must be a timm model.*'resnet34'"):
        create_backbone(name="resnet43")


def test_a_local_checkpoint_initialises_the_backbone(tmp_path: Path) -> None:
    source = create_backbone(name="test_resnet")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)

    backbone = create_backbone(name="test_resnet", pretrained=path)

    for key, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_imagenet_download_failure_says_how_to_use_a_local_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*args, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("Name or service not known")
        raise AssertionError("only the pretrained call is expected")

    monkeypatch.setattr(timm, "create_model", offline)

    with pytest.raises(RuntimeError, match=r"ImageNet weights of 'test_resnet'.*--weights PATH"):
        create_backbone(name="test_resnet", pretrained="imagenet")
