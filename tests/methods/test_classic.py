"""Tests of the classic baselines (triplet, N-pair, Multi-Similarity, CosFace, Circle)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from dymlbench.config import DATASETS, ConfigError, resolve_config
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import Progress, StepInput, checked_param_groups
from dymlbench.registry import get_method, list_methods
from methods._pml import EmbeddingHead, PMLMethod

KEYS = ("triplet", "npair", "multi-similarity", "cosface", "circle")

LOSS_PAPERS = {
    "triplet": ("FaceNet", "CVPR 2015", "Weinberger"),
    "npair": ("Sohn", "N-pair", "NeurIPS 2016"),
    "multi-similarity": ("Multi-Similarity Loss", "CVPR 2019"),
    "cosface": ("CosFace", "CVPR 2018"),
    "circle": ("Circle Loss", "CVPR 2020"),
}

HEAD = {"head_norm": "none", "head_lr_mult": 1.0}
LOSS_SETTINGS: dict[str, dict[str, Any]] = {
    "triplet": {"margin": 0.2, "mining": "semihard"},
    "npair": {},
    "multi-similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1},
    "cosface": {"proxy_lr_mult": 1.0, "margin": 0.35, "scale": 64.0},
    "circle": {"m": 0.4, "gamma": 80.0},
}
"""Each module docstring's loss settings, the same on every dataset (but CosFace's toy scale)."""

SCRATCH_RUN = {
    "model.backbone": "resnet34",
    "model.pretrained": "scratch",
    "model.embedding_dim": 512,
    "optim.optimizer": "sgd",
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 1e-4,
    "optim.epochs": 100,
    "optim.schedule": "cosine",
    "optim.schedule_unit": "epoch",
    "optim.min_lr": 1e-6,
    "optim.classes_per_batch": 64,
    "optim.images_per_class": 4,
}
RUNS = {
    "vehicle": SCRATCH_RUN,
    "animal": SCRATCH_RUN,
    "product": {
        **SCRATCH_RUN,
        "model.pretrained": "imagenet",
        "optim.lr": 0.01,
        "optim.epochs": 20,
        "optim.min_lr": 1e-5,
        "optim.freeze_epochs": 5,
        "optim.schedule_during_freeze": "hold",
        "optim.freeze_groups": ("backbone",),
        "optim.freeze_batchnorm": True,
    },
    "toy": {
        "model.backbone": "test_resnet",
        "model.pretrained": "scratch",
        "model.embedding_dim": 64,
        "optim.optimizer": "adam",
        "optim.lr": 1e-3,
        "optim.weight_decay": 1e-4,
        "optim.epochs": 2,
        "optim.schedule": "cosine",
        "optim.classes_per_batch": 16,
        "optim.images_per_class": 4,
    },
}
"""The run-level keys stated in the module docstrings (and in ``methods._pml``)."""

N_CLASSES, N_PER_CLASS, FEATURE_DIM, EMBEDDING_DIM = 4, 4, 32, 16
FINE = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
HIERARCHY = Hierarchy.from_labels(np.stack([FINE, FINE // 2, np.zeros_like(FINE)], axis=1))
LABELS = torch.from_numpy(HIERARCHY.labels)


def build(key: str, **changes: Any) -> PMLMethod:
    method_type = get_method(key)
    config = dataclasses.replace(method_type.recipe("toy").method, **changes)
    return method_type(
        config=config, feature_dim=FEATURE_DIM, embedding_dim=EMBEDDING_DIM, hierarchy=HIERARCHY
    )


def step(method: PMLMethod, features: torch.Tensor, index: int = 0):
    progress = Progress(epoch=0, step=index, n_epochs=1, steps_per_epoch=100)
    return method.training_step(StepInput(features=features, labels=LABELS, progress=progress))


@pytest.mark.parametrize("key", KEYS)
def test_registered_with_the_loss_paper_and_the_dyml_paper(key: str) -> None:
    citation = get_method(key).citation

    assert key in list_methods()
    assert all(part in citation for part in LOSS_PAPERS[key])
    assert "Dynamic Metric Learning" in citation and "CVPR 2021" in citation


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("key", KEYS)
def test_recipe_is_the_one_the_docstring_states(key: str, dataset: str) -> None:
    recipe = get_method(key).recipe(dataset)
    head = {**HEAD, "head_lr_mult": 2.0} if dataset == "product" else HEAD

    settings = LOSS_SETTINGS[key]
    if key == "cosface" and dataset == "toy":
        settings = {**settings, "scale": 16.0}
    assert dataclasses.asdict(recipe.method) == {**head, **settings}
    assert dict(recipe.run) == RUNS[dataset]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("key", KEYS)
def test_recipe_resolves_into_a_valid_run(key: str, dataset: str) -> None:
    config = resolve_config(method=key, dataset=dataset, overrides=["method.head_lr_mult=3"])

    assert config.method == dataclasses.replace(
        get_method(key).recipe(dataset).method, head_lr_mult=3.0
    )
    assert config.optim.lr == RUNS[dataset]["optim.lr"]
    assert config.model.embedding_dim == RUNS[dataset]["model.embedding_dim"]


def test_unknown_dataset_and_bad_values_are_errors() -> None:
    with pytest.raises(ValueError, match="`dataset` must be one of vehicle, animal"):
        get_method("triplet").recipe("cars")
    with pytest.raises(ConfigError, match="`margin` must be > 0, but got -0.1"):
        get_method("triplet").config_type(margin=-0.1)
    with pytest.raises(ConfigError, match="`head_norm` must be one of"):
        get_method("circle").config_type(head_norm="groupnorm")


@pytest.mark.parametrize("key", KEYS)
def test_step_gives_a_finite_loss_with_gradients_in_every_parameter(key: str) -> None:
    torch.manual_seed(0)
    method = build(key)

    output = step(method, torch.randn(len(LABELS), FEATURE_DIM))
    output.loss.backward()

    assert output.loss.ndim == 0 and torch.isfinite(output.loss) and output.loss > 0
    for name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(np.isfinite(value) for value in output.scalar_logs().values())


def test_cosface_class_weights_are_one_per_fine_class_and_get_gradients() -> None:
    method = build("cosface")

    step(method, torch.randn(len(LABELS), FEATURE_DIM)).loss.backward()

    assert method.loss.W.shape == (EMBEDDING_DIM, N_CLASSES)
    assert method.loss.W.grad is not None and method.loss.W.grad.abs().sum() > 0


def test_npair_uses_one_pair_per_class_with_four_images_per_class() -> None:
    method = build("npair")

    step(method, torch.randn(len(LABELS), FEATURE_DIM))

    assert method.loss.num_pairs == N_CLASSES


def _triplet_objective(method: PMLMethod, features: torch.Tensor) -> torch.Tensor:
    # The semi-hard loss is averaged over the triplets inside the margin, which change from step
    # to step; what it drives down is the mean loss over every triplet of the batch.
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    loss = TripletMarginLoss(margin=method.config.margin, reducer=MeanReducer())
    return loss(method.head(features), LABELS[:, 0])


@pytest.mark.parametrize("key", KEYS)
def test_a_few_steps_on_a_fixed_batch_decrease_the_loss(key: str) -> None:
    torch.manual_seed(1)
    method = build(key)
    features = torch.randn(len(LABELS), FEATURE_DIM)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)

    def objective() -> float:
        with torch.no_grad():
            if key == "triplet":
                return float(_triplet_objective(method, features))
            return float(step(method, features).loss)

    before = objective()
    for index in range(8):
        output = step(method, features, index)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()

    assert objective() < 0.8 * before


@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
@pytest.mark.parametrize("key", KEYS)
def test_eval_embedding_is_unit_norm_with_the_configured_size(key: str, norm: str) -> None:
    method = build(key, head_norm=norm).eval()

    with torch.no_grad():
        embeddings = method.embed(torch.randn(5, FEATURE_DIM))

    assert embeddings.shape == (5, EMBEDDING_DIM)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("key", KEYS)
def test_param_groups_cover_every_trainable_parameter(key: str) -> None:
    method = build(key, head_lr_mult=2.0)

    groups = {group.name: group for group in checked_param_groups(method)}

    assert groups["heads"].lr_mult == 2.0
    assert set(groups) == ({"heads", "proxies"} if key == "cosface" else {"heads"})
    if key == "cosface":
        assert groups["proxies"].params == (method.loss.W,)
        assert groups["proxies"].lr_mult == method.config.proxy_lr_mult


@pytest.mark.parametrize("key", KEYS)
def test_metric_loss_takes_a_gathered_batch_of_any_size(key: str) -> None:
    torch.manual_seed(2)
    method = build(key)
    gathered_labels = torch.arange(N_CLASSES).repeat_interleave(N_PER_CLASS).repeat(3)

    output = method.metric_loss(torch.randn(len(gathered_labels), EMBEDDING_DIM), gathered_labels)

    assert torch.isfinite(output.loss)
    with pytest.raises(ValueError, match="`fine_labels` \\[n\\]"):
        method.metric_loss(torch.randn(6, EMBEDDING_DIM), gathered_labels)


def test_head_rejects_an_unknown_norm() -> None:
    with pytest.raises(ValueError, match="`norm` must be 'none', 'batchnorm' or 'layernorm'"):
        EmbeddingHead(feature_dim=4, embedding_dim=2, norm="group")  # type: ignore[arg-type]
