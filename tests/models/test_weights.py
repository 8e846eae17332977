"""Tests of weight loading: each checkpoint kind, DINO networks, and clear errors."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from dymlbench.models import create_backbone, load_weights


def tiny_backbone(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name="test_resnet")


def assert_same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.fixture
def source() -> nn.Module:
    return tiny_backbone(seed=1)


@pytest.mark.parametrize(
    ("wrap", "kind"),
    [
        (lambda state: state, "state_dict"),
        (lambda state: {"state_dict": state, "epoch": 3, "arch": "test_resnet"}, "timm"),
        (lambda state: {"model": state, "optimizer": {"state": {}}}, "timm"),
        (lambda state: {f"module.{k}": v for k, v in state.items()}, "state_dict"),
    ],
    ids=["plain", "timm-state-dict", "timm-model", "ddp-prefix"],
)
def test_each_checkpoint_kind_loads(tmp_path: Path, source: nn.Module, wrap, kind: str) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save(wrap(source.state_dict()), path)
    model = tiny_backbone(seed=2)

    report = load_weights(model, path)

    assert report.kind == kind
    assert report.missing == () and report.unexpected == ()
    assert report.n_loaded == len(source.state_dict())
    assert_same_weights(model, source.state_dict())


def test_a_safetensors_file_loads(tmp_path: Path, source: nn.Module) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = tiny_backbone(seed=2)

    assert load_weights(model, path).kind == "state_dict"
    assert_same_weights(model, source.state_dict())


def dino_checkpoint(student: nn.Module, teacher: nn.Module) -> dict:
    """A DINO checkpoint as written by its training script, with its projection head."""

    def network(backbone: nn.Module) -> dict[str, torch.Tensor]:
        state = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
        state["module.head.mlp.0.weight"] = torch.randn(16, 96)
        state["module.head.last_layer.weight_g"] = torch.ones(32, 1)
        return state

    return {
        "student": network(student),
        "teacher": network(teacher),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet34", lr=0.0005, output_dir="/out"),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_dino_checkpoint_student_or_teacher(tmp_path: Path, which: str) -> None:
    student, teacher = tiny_backbone(seed=1), tiny_backbone(seed=2)
    path = tmp_path / "checkpoint.pth"
    torch.save(dino_checkpoint(student, teacher), path)
    model = tiny_backbone(seed=3)

    report = load_weights(model, path, which=which)

    assert (report.kind, report.network) == ("dino", which)
    assert report.n_ignored == 2  # the projection head
    assert report.missing == () and report.unexpected == ()
    expected = student if which == "student" else teacher
    assert_same_weights(model, expected.state_dict())


def test_dino_checkpoint_without_the_requested_network(tmp_path: Path, source: nn.Module) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": dino_checkpoint(source, source)["student"]}, path)

    with pytest.raises(ValueError, match=r"`which` must name a network.*it holds student"):
        load_weights(tiny_backbone(seed=2), path, which="teacher")


def test_classifier_keys_are_reported_as_unexpected(
    tmp_path: Path, source: nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 96), torch.zeros(1000)
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)

    with caplog.at_level(logging.WARNING, logger="dymlbench.models.weights"):
        report = load_weights(tiny_backbone(seed=2), path)

    assert report.unexpected == ("fc.weight", "fc.bias")
    assert "fc.weight, fc.bias" in caplog.text


def test_missing_keys_are_an_error_unless_not_strict(tmp_path: Path, source: nn.Module) -> None:
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"partial.pth.*must provide every weight.*layer4"):
        load_weights(tiny_backbone(seed=2), path)
    report = load_weights(tiny_backbone(seed=2), path, strict=False)
    assert report.missing and all(key.startswith("layer4.") for key in report.missing)


def test_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)

    with pytest.raises(ValueError) as info:
        load_weights(tiny_backbone(seed=1), path)

    message = str(info.value)
    assert str(path) in message
    assert "none of its keys matches" in message
    assert "'weight'" in message and "'conv1.0.weight'" in message


def test_another_width_is_a_shape_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(create_backbone(name="resnet10t").state_dict(), path)

    with pytest.raises(
        ValueError, match=r"wide.pth.*shapes.*conv1.0.weight: file \[24, 3, 3, 3\]"
    ):
        load_weights(tiny_backbone(seed=1), path)


class Unsafe:
    """Not a tensor, container or allowed class: weights_only refuses it."""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"state_dict": {"conv1.0.weight": torch.zeros(1)}, "obj": Unsafe()},
            r"weights_only=True\), but it is not \(Unsupported global: .*Unsafe",
        ),
        ({"epoch": 3, "lr": 0.1}, "must hold a state dict"),
        ({"state_dict": {"conv1.0.weight": 3}}, "must hold only tensors under 'state_dict'"),
        ([torch.zeros(1)], "must hold a mapping"),
    ],
    ids=["unsafe", "no-state-dict", "not-tensors", "not-a-mapping"],
)
def test_unreadable_checkpoints_are_clear_errors(tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / "bad.pth"
    torch.save(content, path)

    with pytest.raises(ValueError, match=expected) as info:
        load_weights(tiny_backbone(seed=1), path)
    assert str(path) in str(info.value)


def test_not_a_checkpoint_and_no_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")

    truncated = tmp_path / "truncated.pth"
    torch.save(tiny_backbone(seed=1).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])

    with pytest.raises(ValueError, match="readable with torch.load"):
        load_weights(tiny_backbone(seed=1), garbage)
    with pytest.raises(ValueError, match="must be a file written by torch.save, but reading"):
        load_weights(tiny_backbone(seed=1), truncated)
    with pytest.raises(FileNotFoundError, match="missing.pth' does not exist"):
        load_weights(tiny_backbone(seed=1), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="`which` must be 'student' or 'teacher'"):
        load_weights(tiny_backbone(seed=1), garbage, which="ema")  # type: ignore[arg-type]
