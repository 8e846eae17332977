"""Throwaway methods the engine tests train: a proxy loss (with an optional EMA teacher) and a
pair loss over embeddings gathered from every rank. Importing this module registers nothing;
:func:`register` does, into a given registry.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dymlbench.config import MethodConfig, bounded
from dymlbench.method import Method, MethodNeeds, Recipe, StepInput, StepOutput
from dymlbench.models import EMASpec
from dymlbench.registry import MethodRegistry

TINY_RUN = {
    "model.backbone": "test_resnet",
    "model.pretrained": "scratch",
    "model.embedding_dim": 32,
    "data.image_size": 32,
    "optim.optimizer": "adam",
    "optim.lr": 3e-3,
    "optim.weight_decay": 0.0,
    "optim.epochs": 2,
    "optim.classes_per_batch": 8,
    "optim.images_per_class": 4,
    "optim.amp": "off",
    "engine.device": "cpu",
    "engine.num_workers": 0,
    "engine.progress": False,
}
"""Run settings of the throwaway recipes: a tiny backbone, 32 px crops, two short epochs."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProxyToyConfig(MethodConfig):
    temperature: float = bounded(0.1, gt=0.0)
    teacher_momentum: float | None = bounded(None, ge=0.0, le=1.0)
    teacher_batchnorm: Literal["running", "batch"] = "running"


class ProxyToy(Method):
    """Normalised-softmax proxies on the fine label; an alignment to the EMA teacher if asked."""

    citation = "A. Author. A throwaway proxy method for engine tests. 2024."
    config_type = ProxyToyConfig

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.feature_dim, self.embedding_dim)
        self.proxies = nn.Parameter(torch.randn(self.n_classes[0], self.embedding_dim))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        return Recipe(method=ProxyToyConfig(), run=TINY_RUN)

    @property
    def needs(self) -> MethodNeeds:
        momentum = self.config.teacher_momentum
        if momentum is None:
            return MethodNeeds()
        return MethodNeeds(
            teacher=EMASpec(momentum=momentum, batchnorm=self.config.teacher_batchnorm)
        )

    def training_step(self, batch: StepInput) -> StepOutput:
        embeddings = self.embed(batch.features)
        logits = embeddings @ F.normalize(self.proxies, dim=1).T / self.config.temperature
        loss = F.cross_entropy(logits, batch.labels[:, 0])
        logs = {"loss/proxy": loss.detach()}
        if batch.teacher_output is not None:
            align = (embeddings - batch.teacher_output).square().sum(dim=1).mean()
            loss = loss + align
            logs["loss/align"] = align.detach()
        return StepOutput(loss=loss, logs=logs)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def after_epoch(self, progress) -> None:
        self.epochs_seen += 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairToyConfig(MethodConfig):
    margin: float = bounded(0.4, ge=-1.0, le=1.0)


class PairToy(Method):
    """A contrastive pair loss on every pair of the global batch (the engine gathers it)."""

    citation = "A. Author. A throwaway pair method for engine tests. 2024."
    config_type = PairToyConfig

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.feature_dim, self.embedding_dim)

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        return Recipe(method=PairToyConfig(), run=TINY_RUN)

    needs = MethodNeeds(whole_batch=True)

    def training_step(self, batch: StepInput) -> StepOutput:
        embeddings = self.embed(batch.features)
        labels = batch.labels[:, 0]
        similarities = embeddings @ embeddings.T
        same = labels[:, None] == labels[None, :]
        off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive = (1.0 - similarities)[same & off_diagonal].mean()
        negative = F.relu(similarities - self.config.margin)[~same].mean()
        loss = positive + negative
        return StepOutput(loss=loss, logs={"loss/positive": positive.detach()})

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)


THROWAWAY = {"engine-proxy": ProxyToy, "engine-pair": PairToy}
"""The throwaway methods by registry key."""


def register(registry: MethodRegistry) -> None:
    """Register the throwaway methods into ``registry``."""
    for key, cls in THROWAWAY.items():
        registry.register(key)(cls)
