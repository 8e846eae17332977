"""``--weights``: a DINO checkpoint starts the online network from its student and the EMA
teacher from its teacher; the record names the file and its hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from engine_support import tiny_overrides

from dymlbench.config import resolve_config
from dymlbench.engine import build_network
from dymlbench.hierarchy import Hierarchy
from dymlbench.models import create_backbone


def test_a_dino_checkpoint_starts_the_student_and_the_teacher(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    student = create_backbone(name="test_resnet").state_dict()
    teacher = {
        key: value + 1.0 if value.is_floating_point() else value for key, value in student.items()
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "student": {f"module.backbone.{k}": v for k, v in student.items()},
            "teacher": {f"module.backbone.{k}": v for k, v in teacher.items()},
            "epoch": 100,
        },
        path,
    )
    overrides = tiny_overrides(
        toy_root, **{"model.pretrained": path, "method.teacher_momentum": 0.9}
    )
    config = resolve_config(method="engine-proxy", dataset="toy", overrides=overrides)
    hierarchy = Hierarchy.from_labels(torch.tensor([[0, 0, 0], [1, 1, 1]]).numpy())

    network, ema, initialisation = build_network(
        config, hierarchy, device=torch.device("cpu"), total_steps=10
    )

    assert ema is not None
    for key, value in student.items():
        assert torch.equal(network.backbone.state_dict()[key], value), key
        assert torch.equal(ema.module.backbone.state_dict()[key], teacher[key]), key
    assert initialisation.kind == "dino" and initialisation.teacher_from_checkpoint
    assert initialisation.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert initialisation.path == str(path.resolve())
