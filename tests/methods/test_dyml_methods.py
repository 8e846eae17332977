"""Tests of the registered DyML methods: MSA, HAPPIER and CSL (recipes, steps, embeddings)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dymlbench.config import DATASETS, ConfigError, RunConfig, resolve_config
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import Method, Network, Progress, StepInput, checked_param_groups
from dymlbench.models import EMATeacher
from dymlbench.registry import get_method, list_methods
from methods.msa import MSALoss, MSASingleEmbeddingLoss

KEYS = ("msa", "happier", "csl")

PAPERS = {
    "msa": ("Multi-Scale Similarity Aggregation for Dynamic Metric Learning", "ACM Multimedia"),
    "happier": ("Hierarchical Average Precision Training", "ECCV 2022"),
    "csl": ("Dynamic Metric Learning", "CVPR 2021"),
}

MSA_LOSS = {"pooling_factor": 10.0, "ema_buffers": "average", "ema_batchnorm": "batch"}
HAP_RANK = {
    "tau": 0.01,
    "rho": 100.0,
    "offset": 1.44,
    "delta": 0.05,
    "start": 0.5,
    "relevance_alpha": 1.0,
    "temperature": 0.05,
}
CSL_LOSS = {"margins": (0.25, 0.35, 0.45), "scale": 32.0, "proxies_seed": 0, "proxy_lr_mult": 1.0}

METHOD_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "msa": {
        "vehicle": {
            "proxies_per_class": (2, 20, 4),
            "margin": 0.1,
            "scale": 20.0,
            "alpha": 0.25,
            "beta": 0.75,
            "single_embedding": False,
            "head_lr_mult": 1.0,
            "proxy_lr_mult": 1.0,
            "ema_momentum": 0.9999,
            **MSA_LOSS,
        },
        "animal": {
            "proxies_per_class": (28, 4, 2),
            "margin": 0.0,
            "scale": 20.0,
            "alpha": 0.25,
            "beta": 0.75,
            "single_embedding": False,
            "head_lr_mult": 1.0,
            "proxy_lr_mult": 1.0,
            "ema_momentum": 0.9999,
            **MSA_LOSS,
        },
        "product": {
            "proxies_per_class": (22, 3, 2),
            "margin": 0.0,
            "scale": 20.0,
            "alpha": 0.25,
            "beta": 0.1,
            "single_embedding": True,
            "head_lr_mult": 4.0,
            "proxy_lr_mult": 4.0,
            "ema_momentum": 0.9999,
            **MSA_LOSS,
        },
        "toy": {
            "proxies_per_class": (2, 2, 2),
            "margin": 0.1,
            "scale": 20.0,
            "alpha": 0.25,
            "beta": 0.75,
            "single_embedding": False,
            "head_lr_mult": 1.0,
            "proxy_lr_mult": 1.0,
            "ema_momentum": 0.99,
            **MSA_LOSS,
        },
    },
    "happier": {
        "vehicle": {"hap_weight": 0.9, "cluster_weight": 0.1, **HAP_RANK},
        "animal": {"hap_weight": 0.5, "cluster_weight": 0.5, **HAP_RANK},
        "product": {
            "hap_weight": 0.9,
            "cluster_weight": 0.1,
            "head_lr_mult": 2.0,
            "proxy_lr_mult": 2.0,
            **HAP_RANK,
        },
        "toy": {"hap_weight": 0.9, "cluster_weight": 0.1, **HAP_RANK},
    },
    "csl": {
        "vehicle": {"head_lr_mult": 1.0, **CSL_LOSS},
        "animal": {"head_lr_mult": 1.0, **CSL_LOSS},
        "product": {"head_lr_mult": 2.0, **CSL_LOSS},
        "toy": {"head_lr_mult": 1.0, **CSL_LOSS},
    },
}
"""Each method's ``method`` section per dataset, as REFERENCE.md section 4 and the official
configs give it (keys left out take the config's default: multipliers 1)."""

SETTLED = {
    "optim.schedule": "cosine",
    "optim.schedule_unit": "epoch",
    "optim.classes_per_batch": 64,
    "optim.images_per_class": 4,
}
MSA_RUNS = {
    "vehicle": {
        **SETTLED,
        "model.backbone": "resnet34",
        "model.pretrained": "scratch",
        "model.embedding_dim": 513,
        "optim.optimizer": "adam",
        "optim.lr": 1e-3,
        "optim.nesterov": False,
        "optim.weight_decay": 2e-4,
        "optim.epochs": 70,
        "optim.min_lr": 1e-6,
        "optim.freeze_epochs": 0,
        "optim.freeze_batchnorm": False,
        "engine.report_network": "online",
    },
    "animal": {
        **SETTLED,
        "model.backbone": "resnet34",
        "model.pretrained": "scratch",
        "model.embedding_dim": 513,
        "optim.optimizer": "sgd",
        "optim.lr": 1e-2,
        "optim.momentum": 0.9,
        "optim.nesterov": True,
        "optim.weight_decay": 5e-5,
        "optim.epochs": 100,
        "optim.min_lr": 1e-6,
        "optim.freeze_epochs": 40,
        "optim.schedule_during_freeze": "hold",
        "optim.freeze_groups": ("backbone",),
        "optim.freeze_batchnorm": False,
        "engine.report_network": "online",
    },
    "product": {
        **SETTLED,
        "model.backbone": "resnet34",
        "model.pretrained": "scratch",
        "model.embedding_dim": 513,
        "optim.optimizer": "sgd",
        "optim.lr": 5e-3,
        "optim.momentum": 0.9,
        "optim.nesterov": True,
        "optim.weight_decay": 1e-4,
        "optim.epochs": 20,
        "optim.min_lr": 1e-5,
        "optim.freeze_epochs": 0,
        "optim.freeze_batchnorm": True,
        "engine.report_network": "online",
    },
    "toy": {
        "model.backbone": "test_resnet",
        "model.pretrained": "scratch",
        "model.embedding_dim": 96,
        "optim.optimizer": "adam",
        "optim.lr": 1e-3,
        "optim.weight_decay": 2e-4,
        "optim.epochs": 2,
        "optim.schedule": "cosine",
        "optim.classes_per_batch": 16,
        "optim.images_per_class": 4,
        "optim.freeze_epochs": 0,
        "engine.report_network": "online",
    },
}
HAPPIER_SCRATCH = {
    **SETTLED,
    "model.backbone": "resnet34",
    "model.pretrained": "scratch",
    "model.embedding_dim": 512,
    "optim.optimizer": "sgd",
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 1e-4,
    "optim.epochs": 100,
    "optim.min_lr": 1e-6,
    "optim.freeze_epochs": 0,
    "optim.freeze_batchnorm": False,
}
HAPPIER_RUNS = {
    "vehicle": HAPPIER_SCRATCH,
    "animal": HAPPIER_SCRATCH,
    "product": {
        **HAPPIER_SCRATCH,
        "model.backbone": "resnet34.tv_in1k",
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
        "optim.freeze_epochs": 0,
    },
}
RUNS = {"msa": MSA_RUNS, "happier": HAPPIER_RUNS, "csl": HAPPIER_RUNS}
"""The resolved run-level values of every recipe (REFERENCE.md section 4), checked key by key
on the resolved configuration, so that a drift in a recipe or in a default is caught."""

N_FINE, N_PER_CLASS, FEATURE_DIM = 8, 4, 16
FINE = np.repeat(np.arange(N_FINE), N_PER_CLASS)
HIERARCHY = Hierarchy.from_labels(np.stack([FINE, FINE // 2, FINE // 4], axis=1))
LABELS = torch.from_numpy(HIERARCHY.labels)
EMBEDDING_DIMS = {"msa": 24, "happier": 16, "csl": 16}


def build(
    key: str,
    dataset: str = "toy",
    *,
    hierarchy: Hierarchy = HIERARCHY,
    embedding_dim: int | None = None,
    **changes: Any,
) -> Method:
    method_type = get_method(key)
    config = dataclasses.replace(method_type.recipe(dataset).method, **changes)
    return method_type(
        config=config,
        feature_dim=FEATURE_DIM,
        embedding_dim=embedding_dim or EMBEDDING_DIMS[key],
        hierarchy=hierarchy,
    )


def teacher_output(method: Method, features: torch.Tensor) -> torch.Tensor | None:
    """What an EMA copy of ``method`` gives its training step (``None`` without a teacher)."""
    if method.needs.teacher is None:
        return None
    teacher = EMATeacher(method, spec=method.needs.teacher)
    with torch.no_grad():
        return teacher.module.teacher_output(features)


def step(method: Method, features: torch.Tensor, target: Any = None, *, labels=LABELS, index=0):
    progress = Progress(epoch=0, step=index, n_epochs=1, steps_per_epoch=100)
    batch = StepInput(features=features, labels=labels, progress=progress, teacher_output=target)
    return method.training_step(batch)


def dotted(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("key", KEYS)
def test_registered_with_the_paper(key: str) -> None:
    citation = get_method(key).citation

    assert key in list_methods()
    assert all(part in citation for part in PAPERS[key])


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("key", KEYS)
def test_recipe_method_section_is_the_reference(key: str, dataset: str) -> None:
    config = get_method(key).recipe(dataset).method
    expected = {"head_lr_mult": 1.0, "proxy_lr_mult": 1.0, **METHOD_CONFIGS[key][dataset]}

    assert dataclasses.asdict(config) == expected


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("key", KEYS)
def test_recipe_resolves_to_the_reference_run_with_an_override(key: str, dataset: str) -> None:
    config = resolve_config(method=key, dataset=dataset, overrides=["method.head_lr_mult=3"])

    for run_key, expected in RUNS[key][dataset].items():
        assert dotted(config, run_key) == expected, run_key
    assert config.optim.batch_size == RUNS[key][dataset]["optim.classes_per_batch"] * 4
    assert config.method == dataclasses.replace(
        get_method(key).recipe(dataset).method, head_lr_mult=3.0
    )


@pytest.mark.parametrize("key", KEYS)
def test_config_defaults_are_the_vehicle_recipe(key: str) -> None:
    method_type = get_method(key)

    assert method_type.config_type() == method_type.recipe("vehicle").method


def test_unknown_dataset_and_bad_values_are_errors() -> None:
    for key in KEYS:
        with pytest.raises(ValueError, match="`dataset` must be one of vehicle, animal"):
            get_method(key).recipe("cars")
    with pytest.raises(ConfigError, match="`proxies_per_class` must hold a positive count"):
        get_method("msa").config_type(proxies_per_class=(2, 0, 1))
    with pytest.raises(ConfigError, match="`margins` must hold one margin per level"):
        get_method("csl").config_type(margins=())
    with pytest.raises(ConfigError, match="`ema_momentum` must be in"):
        get_method("msa").config_type(ema_momentum=1.5)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("key", KEYS)
def test_step_gives_a_finite_loss_with_gradients_in_every_parameter(
    key: str, dataset: str
) -> None:
    torch.manual_seed(0)
    method = build(key, dataset)
    features = torch.randn(len(LABELS), FEATURE_DIM)

    output = step(method, features, teacher_output(method, features))
    output.loss.backward()

    assert output.loss.ndim == 0 and torch.isfinite(output.loss) and output.loss > 0
    trainable = [(name, p) for name, p in method.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(math.isfinite(value) for value in output.scalar_logs().values())


@pytest.mark.parametrize("key", KEYS)
def test_a_few_steps_on_a_fixed_batch_decrease_the_loss(key: str) -> None:
    torch.manual_seed(1)
    method = build(key)
    features = torch.randn(len(LABELS), FEATURE_DIM)
    target = teacher_output(method, features)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)

    with torch.no_grad():
        before = float(step(method, features, target).loss)
    for index in range(10):
        output = step(method, features, target, index=index)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(step(method, features, target).loss)

    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize(
    ("key", "dataset", "multipliers"),
    [
        ("msa", "vehicle", {"heads": 1.0, "proxies": 1.0}),
        ("msa", "product", {"heads": 4.0, "proxies": 4.0}),
        ("happier", "animal", {"heads": 1.0, "proxies": 1.0}),
        ("happier", "product", {"heads": 2.0, "proxies": 2.0}),
        ("csl", "vehicle", {"heads": 1.0, "proxies": 1.0}),
        ("csl", "product", {"heads": 2.0, "proxies": 1.0}),
    ],
)
def test_param_groups_are_heads_and_proxies_with_the_recipe_multipliers(
    key: str, dataset: str, multipliers: dict[str, float]
) -> None:
    method = build(key, dataset)

    groups = {group.name: group for group in checked_param_groups(method)}

    assert {name: group.lr_mult for name, group in groups.items()} == multipliers
    assert set(groups["proxies"].params) == set(method.loss.parameters())
    assert all(group.weight_decay is None for group in groups.values())


@pytest.mark.parametrize("key", KEYS)
def test_eval_embedding_is_unit_norm_with_the_configured_size(key: str) -> None:
    method = build(key).eval()

    with torch.no_grad():
        embeddings = method.embed(torch.randn(5, FEATURE_DIM))

    assert embeddings.shape == (5, EMBEDDING_DIMS[key])
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("key", ["happier", "csl"])
def test_happier_and_csl_feed_the_loss_the_normalised_eval_embedding(key: str) -> None:
    method = build(key)
    features = torch.randn(len(LABELS), FEATURE_DIM)
    seen = []
    method.loss.register_forward_hook(lambda module, args, output: seen.append(args[0]))

    step(method, features)

    torch.testing.assert_close(seen[0], method.embed(features))
    assert isinstance(method.head.norm, nn.LayerNorm)
    assert not method.head.norm.elementwise_affine


def test_msa_eval_dot_product_is_the_mean_per_level_cosine() -> None:
    torch.manual_seed(2)
    method = build("msa")
    features = torch.randn(6, FEATURE_DIM)

    with torch.no_grad():
        embeddings = method.embed(features)
        chunks = F.normalize(method.heads(features)[0].unflatten(1, (3, -1)), dim=2)
    cosines = torch.einsum("ild,jld->ijl", chunks, chunks)

    torch.testing.assert_close(embeddings @ embeddings.T, cosines.mean(dim=2))


def test_msa_teacher_is_a_constant_ema_and_its_output_the_normalised_aux_head() -> None:
    method = build("msa", "vehicle")
    features = torch.randn(4, FEATURE_DIM)

    spec = method.needs.teacher

    assert (spec.momentum, spec.schedule, spec.buffers) == (0.9999, "constant", "average")
    torch.testing.assert_close(
        method.teacher_output(features), F.normalize(method.heads.fc_aux(features), dim=1)
    )
    with pytest.raises(ValueError, match="`teacher_output` must be the EMA teacher's"):
        step(method, torch.randn(len(LABELS), FEATURE_DIM))


def test_msa_product_recipe_is_the_single_embedding_variant_and_multi_is_a_set_away() -> None:
    single = build("msa", "product", embedding_dim=27)
    config = resolve_config(
        method="msa",
        dataset="product",
        overrides=["method.single_embedding=false", "optim.lr=0.01"],
    )
    multi = get_method("msa")(
        config=config.method, feature_dim=FEATURE_DIM, embedding_dim=27, hierarchy=HIERARCHY
    )
    features = torch.randn(len(LABELS), FEATURE_DIM)

    assert isinstance(single.loss, MSASingleEmbeddingLoss)
    assert (single.heads.n_levels, single.heads.norm_before_fc) == (1, True)
    assert single.loss.cluster_loss.proxies.shape == (N_FINE * 22, 27)
    assert set(step(single, features, single.teacher_output(features)).logs) == {
        "loss/cluster/fine",
        "loss/alignment",
    }
    assert isinstance(multi.loss, MSALoss)
    assert (multi.heads.n_levels, multi.heads.norm_before_fc) == (3, False)
    assert (config.method.alpha, config.method.beta, config.optim.lr) == (0.25, 0.1, 0.01)
    assert [tuple(loss.proxies.shape) for loss in multi.loss.cluster_losses] == [
        (N_FINE * 22, 9),
        (N_FINE // 2 * 3, 9),
        (N_FINE // 4 * 2, 9),
    ]


def four_level_hierarchy() -> Hierarchy:
    # Hierarchy.from_labels accepts at most the three DyML levels; the method does not care.
    labels = np.stack([FINE, FINE // 2, FINE // 4, np.zeros_like(FINE)], axis=1)
    class_ids = tuple(np.unique(column) for column in labels.T)
    parents = tuple(np.unique(labels[:, [level, level + 1]], axis=0)[:, 1] for level in range(3))
    names = ("fine", "middle", "coarse", "root")
    return Hierarchy(labels=labels, class_ids=class_ids, parents=parents, level_names=names)


@pytest.mark.parametrize("n_levels", [2, 4])
def test_msa_trains_end_to_end_through_the_network_with_2_and_4_levels(n_levels: int) -> None:
    torch.manual_seed(3)
    if n_levels == 2:
        hierarchy = Hierarchy.from_labels(np.stack([FINE, FINE // 4], axis=1))
    else:
        hierarchy = four_level_hierarchy()
    labels = torch.from_numpy(hierarchy.labels)
    method = build(
        "msa",
        hierarchy=hierarchy,
        embedding_dim=6 * n_levels,
        proxies_per_class=(2,) * n_levels,
    )
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, FEATURE_DIM))
    network = Network(backbone=backbone, method=method)
    teacher = EMATeacher(network, spec=method.needs.teacher)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    images = torch.randn(len(labels), 3, 4, 4)

    losses = []
    for index in range(6):
        progress = Progress(epoch=0, step=index, n_epochs=1, steps_per_epoch=6)
        target = teacher.module.teacher_output(images)
        output = network(images, labels, progress=progress, teacher_output=target)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        teacher.update(network)
        losses.append(float(output.loss.detach()))

    level_logs = {f"loss/cluster/{name}" for name in hierarchy.level_names}
    assert level_logs | {"loss/cluster", "loss/cross_level", "loss/alignment"} == set(output.logs)
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    with torch.no_grad():
        embeddings = network.embed(images)
        chunks = F.normalize(
            method.heads(network.features(images))[0].unflatten(1, (n_levels, -1)), dim=2
        )
    cosines = torch.einsum("ild,jld->ijl", chunks, chunks).mean(dim=2)
    torch.testing.assert_close(embeddings @ embeddings.T, cosines)


def test_msa_rejects_a_hierarchy_its_recipe_does_not_fit() -> None:
    two_levels = Hierarchy.from_labels(np.stack([FINE, FINE // 4], axis=1))

    with pytest.raises(ValueError, match=r"`method.proxies_per_class` must hold one count per"):
        build("msa", hierarchy=two_levels, embedding_dim=24)
    with pytest.raises(ValueError, match="`embedding_dim` must be a multiple of the number"):
        build("msa", embedding_dim=25)


def test_csl_proxies_carry_the_labels_of_the_training_hierarchy() -> None:
    method = build("csl")

    assert method.loss.proxy_labels.tolist() == HIERARCHY.ancestors(0).tolist()
    assert method.loss.proxies.shape == (N_FINE, EMBEDDING_DIMS["csl"])
    assert set(step(method, torch.randn(len(LABELS), FEATURE_DIM)).logs) == {
        "loss/fine",
        "loss/middle",
        "loss/coarse",
    }
    with pytest.raises(ValueError, match="`method.margins` must hold one margin per level"):
        build("csl", hierarchy=Hierarchy.from_labels(np.stack([FINE, FINE // 4], axis=1)))


def test_happier_needs_two_levels_and_logs_its_parts() -> None:
    method = build("happier")

    assert method.needs.teacher is None
    assert set(step(method, torch.randn(len(LABELS), FEATURE_DIM)).logs) == {
        "loss/hap",
        "loss/cluster",
    }
    with pytest.raises(ValueError, match="`hierarchy` must have at least two levels"):
        build("happier", hierarchy=Hierarchy.from_labels(FINE))
