"""Tests of the EMA teacher: the update formula, buffers, schedule, state, wrappers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dymlbench.models import EMASpec, EMATeacher


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


def perturb(model: nn.Module) -> None:
    """Change the student's parameters and batch-norm statistics as a training step would."""
    model.train()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
        model(torch.randn(8, 3, dtype=torch.float64) * 3 + 1)


def test_update_is_the_momentum_formula() -> None:
    student = small_network()
    teacher = EMATeacher(student, spec=EMASpec(momentum=0.9))
    before = {k: v.clone() for k, v in teacher.module.named_parameters()}
    perturb(student)

    teacher.update(student)

    for name, param in student.named_parameters():
        expected = 0.9 * before[name] + (1 - 0.9) * param
        torch.testing.assert_close(dict(teacher.module.named_parameters())[name], expected)
    assert teacher.num_updates == 1


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_buffers_are_averaged_or_copied(buffers: str) -> None:
    student = small_network()
    teacher = EMATeacher(student, spec=EMASpec(momentum=0.75, buffers=buffers))
    old_mean = teacher.module[1].running_mean.clone()
    perturb(student)

    teacher.update(student)

    new_mean = student[1].running_mean
    expected = 0.75 * old_mean + 0.25 * new_mean if buffers == "average" else new_mean
    torch.testing.assert_close(teacher.module[1].running_mean, expected)
    # Integer buffers are always copied.
    assert teacher.module[1].num_batches_tracked.item() == student[1].num_batches_tracked.item()


def test_cosine_schedule_ramps_the_momentum_to_one() -> None:
    student = small_network()
    teacher = EMATeacher(student, spec=EMASpec(momentum=0.9, schedule="cosine"), total_steps=4)
    momenta = []
    for _ in range(6):
        momenta.append(teacher.momentum())
        teacher.update(student)

    expected = [1 - 0.1 * (1 + math.cos(math.pi * min(k, 4) / 4)) / 2 for k in range(6)]
    assert momenta == pytest.approx(expected)
    assert momenta[0] == pytest.approx(0.9) and momenta[4:] == [1.0, 1.0]
    with pytest.raises(ValueError, match="`total_steps` must be a positive integer"):
        EMATeacher(student, spec=EMASpec(schedule="cosine"))


def test_the_teacher_takes_no_gradients_and_stays_in_eval_mode() -> None:
    student = small_network()
    teacher = EMATeacher(student)
    student.train()

    output = teacher(torch.randn(2, 3, dtype=torch.float64))

    assert not any(param.requires_grad for param in teacher.module.parameters())
    assert not output.requires_grad
    assert not teacher.module.training
    assert teacher.spec.momentum == 0.9999
    assert teacher.device == torch.device("cpu")


def test_state_round_trip_resumes_exactly() -> None:
    student = small_network()
    teacher = EMATeacher(student, spec=EMASpec(momentum=0.5))
    perturb(student)
    teacher.update(student)

    resumed = EMATeacher(small_network(), spec=EMASpec(momentum=0.5))
    resumed.load_state_dict(copy.deepcopy(teacher.state_dict()))

    assert resumed.num_updates == 1
    for key, value in teacher.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    with pytest.raises(ValueError, match="lacks \\['num_updates'\\]"):
        resumed.load_state_dict({"module": {}})


def test_a_data_parallel_student_is_unwrapped() -> None:
    student = small_network()
    teacher = EMATeacher(nn.DataParallel(student), spec=EMASpec(momentum=0.0))
    perturb(student)

    teacher.update(nn.DataParallel(student))

    assert not isinstance(teacher.module, nn.DataParallel)
    for key, value in student.state_dict().items():
        assert torch.equal(teacher.module.state_dict()[key], value), key


def test_a_ddp_student_is_unwrapped(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        student = small_network()
        ddp = nn.parallel.DistributedDataParallel(student)
        teacher = EMATeacher(ddp, spec=EMASpec(momentum=0.5))
        before = teacher.module[0].weight.clone()
        perturb(student)

        teacher.update(ddp)

        assert set(teacher.module.state_dict()) == set(student.state_dict())  # no "module."
        expected = 0.5 * before + 0.5 * student[0].weight
        torch.testing.assert_close(teacher.module[0].weight, expected)
    finally:
        dist.destroy_process_group()
