"""Tests of the method interface: construction checks, parameter groups, results, the network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from dymlbench.config import MethodConfig
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import (
    Method,
    MethodNeeds,
    Network,
    ParamGroup,
    Progress,
    Recipe,
    StepInput,
    StepOutput,
    checked_param_groups,
)
from dymlbench.models import EMASpec, EMATeacher, create_backbone, feature_dim

HIERARCHY = Hierarchy.from_labels(np.array([[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 1]]))
LABELS = torch.from_numpy(HIERARCHY.labels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProxyConfig(MethodConfig):
    proxy_lr_mult: float = 4.0
    momentum: float | None = None


class Proxy(Method):
    """A throwaway method: a linear head, one proxy per fine class, an optional teacher."""

    citation = "A. Author. A toy method. 2024."
    config_type = ProxyConfig

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.feature_dim, self.embedding_dim)
        self.proxies = nn.Parameter(torch.randn(self.n_classes[0], self.embedding_dim))
        self.steps_seen = 0

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        return Recipe(method=ProxyConfig())

    @property
    def needs(self) -> MethodNeeds:
        momentum = self.config.momentum
        return MethodNeeds(teacher=None if momentum is None else EMASpec(momentum=momentum))

    def training_step(self, batch: StepInput) -> StepOutput:
        embeddings = nn.functional.normalize(self.head(batch.features), dim=1)
        logits = embeddings @ nn.functional.normalize(self.proxies, dim=1).T
        loss = nn.functional.cross_entropy(logits / 0.1, batch.labels[:, 0])
        logs = {"loss/proxy": loss.detach()}
        if batch.teacher_output is not None:
            align = (embeddings - batch.teacher_output).square().sum(dim=1).mean()
            loss = loss + align
            logs["loss/align"] = align.detach()
        return StepOutput(loss=loss, logs=logs)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(features), dim=1)

    def param_groups(self) -> list[ParamGroup]:
        return [
            ParamGroup(name="heads", params=self.head.parameters()),
            ParamGroup(name="proxies", params=[self.proxies], lr_mult=self.config.proxy_lr_mult),
        ]

    def after_step(self, progress: Progress) -> None:
        self.steps_seen += 1


def build(config: ProxyConfig | None = None, **kwargs) -> Proxy:
    arguments = {
        "config": config or ProxyConfig(),
        "feature_dim": 8,
        "embedding_dim": 4,
        "hierarchy": HIERARCHY,
    }
    return Proxy(**{**arguments, **kwargs})


def test_custom_param_groups_are_checked_and_kept() -> None:
    method = build()

    groups = checked_param_groups(method)

    assert (method.n_classes, method.n_levels) == ((4, 3, 2), 3)
    assert [(group.name, group.lr_mult) for group in groups] == [("heads", 1.0), ("proxies", 4.0)]
    assert sum(len(group.params) for group in groups) == 3


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (lambda m: [ParamGroup(name="heads", params=m.head.parameters())], "proxies are in none"),
        (
            lambda m: [
                ParamGroup(name="a", params=m.parameters()),
                ParamGroup(name="a", params=[]),
            ],
            "names must be unique",
        ),
        (
            lambda m: [
                ParamGroup(name="a", params=m.parameters()),
                ParamGroup(name="b", params=[m.proxies]),
            ],
            "in both 'a' and 'b'",
        ),
        (
            lambda m: [
                ParamGroup(name="a", params=m.parameters()),
                ParamGroup(name="b", params=[nn.Parameter(torch.zeros(1))]),
            ],
            "groups ['b'] hold others",
        ),
    ],
    ids=["left-out", "repeated-name", "twice", "foreign"],
)
def test_wrong_param_groups_are_errors(
    monkeypatch: pytest.MonkeyPatch, groups, expected: str
) -> None:
    method = build()
    monkeypatch.setattr(method, "param_groups", lambda: groups(method))

    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        checked_param_groups(method)


def test_param_group_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="other than 'backbone'"):
        ParamGroup(name="backbone", params=[])
    with pytest.raises(ValueError, match="`lr_mult` of group 'x' must be > 0"):
        ParamGroup(name="x", params=[], lr_mult=0.0)
    with pytest.raises(ValueError, match="`weight_decay` of group 'x' must be >= 0"):
        ParamGroup(name="x", params=[], weight_decay=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"config": MethodConfig()}, "`config` must be a ProxyConfig"),
        ({"feature_dim": 0}, "`feature_dim` must be a positive integer"),
        ({"embedding_dim": True}, "`embedding_dim` must be a positive integer"),
        ({"hierarchy": LABELS}, r"`hierarchy` must be a Hierarchy \(Hierarchy.from_labels"),
    ],
    ids=["config", "feature-dim", "embedding-dim", "hierarchy"],
)
def test_construction_arguments_are_checked(kwargs: dict, expected: str) -> None:
    with pytest.raises((TypeError, ValueError), match=expected):
        build(**kwargs)


def test_step_output_and_recipe_checks() -> None:
    with pytest.raises(ValueError, match="`loss` must be a 0-d tensor"):
        StepOutput(loss=torch.zeros(3))
    with pytest.raises(ValueError, match="must not set the method section"):
        Recipe(method=ProxyConfig(), run={"method.proxy_lr_mult": 2.0})
    recipe = Recipe(method=ProxyConfig(), run={"optim.lr": 0.1})
    with pytest.raises(TypeError):
        recipe.run["optim.lr"] = 1.0  # type: ignore[index]


def test_defaults_declare_no_teacher_and_one_group() -> None:
    class Plain(Proxy):
        param_groups = Method.param_groups
        needs = Method.needs

    method = Plain(config=ProxyConfig(), feature_dim=8, embedding_dim=4, hierarchy=HIERARCHY)

    assert method.needs == MethodNeeds()
    assert [group.name for group in checked_param_groups(method)] == ["heads"]
    assert torch.equal(method.teacher_output(torch.ones(2, 8)), method.embed(torch.ones(2, 8)))


def test_a_loop_written_against_the_interface_trains_with_a_teacher() -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name="test_resnet")
    method = Proxy(
        config=ProxyConfig(momentum=0.5),
        feature_dim=feature_dim(backbone),
        embedding_dim=4,
        hierarchy=HIERARCHY,
    )
    network = Network(backbone=backbone, method=method, autocast_dtype=torch.bfloat16)
    groups = [{"params": list(backbone.parameters()), "lr": 0.01}] + [
        {"params": list(group.params), "lr": 0.01 * group.lr_mult}
        for group in checked_param_groups(method)
    ]
    optimizer = torch.optim.SGD(groups, lr=0.01)
    spec = method.needs.teacher
    teacher = EMATeacher(network, spec=spec) if spec is not None else None
    images, labels = torch.randn(4, 3, 32, 32), LABELS

    for step in range(2):
        progress = Progress(epoch=0, step=step, n_epochs=1, steps_per_epoch=2)
        teacher_output = None
        if teacher is not None:
            with torch.no_grad():
                teacher_output = teacher.module.teacher_output(images)
        output = network(images, labels, progress=progress, teacher_output=teacher_output)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if teacher is not None:
            teacher.update(network)
        method.after_step(progress)

    assert teacher is not None and teacher.num_updates == 2
    assert set(output.scalar_logs()) == {"loss", "loss/proxy", "loss/align"}
    assert method.steps_seen == 2
    assert network.features(images).dtype == torch.float32
    network.eval()
    with torch.no_grad():
        assert network.embed(images).shape == (4, 4)
