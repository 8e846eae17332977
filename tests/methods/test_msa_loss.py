"""MSA heads, eval embedding and losses against the official implementation (Dyfine/MSA)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import methods.msa as msa
from methods.msa import (
    MSA_LOSS_RECIPES,
    MSAHeads,
    MSALoss,
    MSALossConfig,
    MSASingleEmbeddingLoss,
    MultiProxyLoss,
    build_msa_loss,
    cross_level_loss,
    msa_eval_embedding,
)

OFFICIAL_MODULES = {
    "ClusterLoss_MultiEmb": MSALoss,
    "ClusterLoss_SingleEmb": MSASingleEmbeddingLoss,
}

OFFICIAL_COMPONENT_NAMES = {"loss_instance_alignmnet": "loss_instance_alignment"}
"""Official output keys whose name differs here (the official code misspells this one)."""

# REFERENCE.md section 4, MSA, "Per dataset": proxies per class fine/middle/coarse, m, s, alpha,
# beta, and which variant the published number uses.
PAPER_RECIPES = {
    "vehicle": ((2, 20, 4), 0.1, 20.0, 0.25, 0.75, False),
    "animal": ((28, 4, 2), 0.0, 20.0, 0.25, 0.75, False),
    "product": ((22, 3, 2), 0.0, 20.0, 0.25, 0.1, True),
}


def _config_from_case(case) -> MSALossConfig:
    settings = case["hyperparameters"]
    n_levels = sum(key.startswith("num_proxy") for key in settings)
    return MSALossConfig(
        proxies_per_class=tuple(settings[f"num_proxy{level}"] for level in range(n_levels)),
        margin=settings["m_c"],
        scale=settings["s_c"],
        alpha=settings.get("alpha", 0.0),
        beta=settings["beta"],
        single_embedding=case["module"] == "ClusterLoss_SingleEmb",
    )


def _proxies(loss: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [module.proxies for module in loss.modules() if isinstance(module, MultiProxyLoss)]


def _toy_batch(n_classes: tuple[int, ...], per_class: int = 2, dim: int = 12, seed: int = 0):
    """A batch over a consistent toy hierarchy: fine class f belongs to f // 2 at each step up."""
    generator = torch.Generator().manual_seed(seed)
    fine = torch.arange(n_classes[0]).repeat_interleave(per_class)
    labels = torch.stack([fine // 2**level for level in range(len(n_classes))], dim=1)
    embeddings = torch.randn(len(fine), dim, generator=generator, requires_grad=True)
    aux = torch.randn(len(fine), dim, generator=generator, requires_grad=True)
    teacher = torch.randn(len(fine), dim, generator=generator)
    return embeddings, labels, aux, teacher


def test_reference_case(msa_case) -> None:
    config = _config_from_case(msa_case)
    settings = msa_case["hyperparameters"]
    n_levels = sum(key.startswith("num_classes_level") for key in settings)
    n_classes = [settings[f"num_classes_level{level}"] for level in range(n_levels)]
    loss = build_msa_loss(
        config=config, n_classes=n_classes, embedding_dim=settings["embedding_size"]
    )
    assert isinstance(loss, OFFICIAL_MODULES[msa_case["module"]])
    reference_proxies = [f"weight_level{level}m" for level in range(len(_proxies(loss)))]
    assert reference_proxies == list(msa_case["proxies"])
    with torch.no_grad():
        for proxies, key in zip(_proxies(loss), reference_proxies, strict=True):
            proxies.copy_(msa_case.tensor("proxies", key))
    embeddings = msa_case.tensor("inputs", "embeddings").requires_grad_()
    aux = msa_case.tensor("inputs", "di_aux").requires_grad_()

    total, components = loss(
        embeddings,
        msa_case.tensor("inputs", "labels"),
        aux,
        msa_case.tensor("inputs", "emb_ema"),
    )
    total.backward()

    values = {"total_loss": total, **components}
    assert {OFFICIAL_COMPONENT_NAMES.get(key, key) for key in msa_case["outputs"]} == set(values)
    for key in msa_case["outputs"]:
        msa_case.assert_loss(values[OFFICIAL_COMPONENT_NAMES.get(key, key)], "outputs", key)
    msa_case.assert_gradient(embeddings.grad, "gradients", "embeddings")
    msa_case.assert_gradient(aux.grad, "gradients", "di_aux")
    for proxies, key in zip(_proxies(loss), reference_proxies, strict=True):
        msa_case.assert_gradient(proxies.grad, "gradients", key)


def test_recipe_matches_reference_case(msa_case) -> None:
    recipe = MSA_LOSS_RECIPES[msa_case["data_name"]]
    expected = _config_from_case(msa_case)
    n_levels = len(expected.proxies_per_class)
    assert recipe.proxies_per_class[:n_levels] == expected.proxies_per_class
    assert (recipe.margin, recipe.scale, recipe.beta) == (
        expected.margin,
        expected.scale,
        expected.beta,
    )
    if not expected.single_embedding:
        assert recipe.alpha == expected.alpha


@pytest.mark.parametrize("dataset", sorted(PAPER_RECIPES))
def test_recipes_match_reference_md(dataset: str) -> None:
    proxies, margin, scale, alpha, beta, single = PAPER_RECIPES[dataset]
    recipe = MSA_LOSS_RECIPES[dataset]
    assert recipe.proxies_per_class == proxies
    assert recipe.margin == margin
    assert recipe.scale == scale
    assert recipe.alpha == alpha
    assert recipe.beta == beta
    assert recipe.single_embedding is single
    assert recipe.pooling_factor == 10.0


def test_recipes_build_the_variant_they_name() -> None:
    assert set(MSA_LOSS_RECIPES) == {*PAPER_RECIPES, "toy"}
    for dataset, recipe in MSA_LOSS_RECIPES.items():
        loss = build_msa_loss(config=recipe, n_classes=(8, 4, 2), embedding_dim=12)
        expected = MSASingleEmbeddingLoss if PAPER_RECIPES.get(dataset, (0,) * 6)[5] else MSALoss
        assert type(loss) is expected


def test_proxies_grouped_by_class_and_initialised_uniformly() -> None:
    torch.manual_seed(0)
    loss = MultiProxyLoss(n_classes=3, dim=16, proxies_per_class=4, margin=0.0, scale=20.0)
    assert loss.proxies.shape == (12, 16)
    assert loss.proxies.abs().max() <= 1 / math.sqrt(16)

    # Proxy rows 4..7 belong to class 1: a sample on one of them is closest to class 1.
    own_class = loss(loss.proxies[5:6].detach(), torch.tensor([1]))
    other_class = loss(loss.proxies[5:6].detach(), torch.tensor([0]))
    assert own_class < other_class


@pytest.mark.parametrize("n_levels", [2, 3, 4], ids=lambda n: f"{n}_levels")
def test_heads_and_loss_work_for_any_number_of_levels(n_levels: int) -> None:
    torch.manual_seed(0)
    heads = MSAHeads(in_features=10, dim_per_level=5, n_levels=n_levels)
    n_classes = tuple(2 ** (n_levels - level) for level in range(n_levels))
    config = MSALossConfig(
        proxies_per_class=(3,) * n_levels, margin=0.1, scale=20.0, alpha=0.25, beta=0.75
    )
    loss = MSALoss(n_classes=n_classes, embedding_dim=5 * n_levels, config=config)
    _, labels, _, _ = _toy_batch(n_classes, per_class=3)
    features = torch.randn(len(labels), 10)

    embeddings, aux = heads(features)
    with torch.no_grad():
        teacher_aux = heads(features + 0.01)[1]
    total, components = loss(embeddings, labels, aux, teacher_aux)
    total.backward()

    assert embeddings.shape == aux.shape == (len(labels), 5 * n_levels)
    assert set(components) == {
        "loss_cluster",
        *(f"loss_cluster{level}" for level in range(n_levels)),
        "loss_cross_level",
        "loss_instance_alignment",
    }
    parameters = [*heads.parameters(), *loss.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in parameters)
    assert heads.fc_aux.weight.grad.abs().sum() > 0


def test_heads_layer_norm_placement() -> None:
    torch.manual_seed(0)
    features = torch.randn(6, 8)
    after = MSAHeads(in_features=8, dim_per_level=4, n_levels=3)
    embeddings, _ = after(features)
    torch.testing.assert_close(embeddings.mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        embeddings.var(dim=1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0
    )

    before = MSAHeads(in_features=8, dim_per_level=13, n_levels=1, norm_before_fc=True)
    assert before.norm.normalized_shape == (8,)
    embeddings, aux = before(features)
    torch.testing.assert_close(embeddings, before.fc(before.norm(features)))
    torch.testing.assert_close(aux, before.fc_aux(features))


def test_eval_embedding_dot_product_is_mean_level_cosine() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(5, 12), torch.randn(7, 12)
    aggregated = msa_eval_embedding(x, n_levels=3) @ msa_eval_embedding(y, n_levels=3).T
    cosines = [
        torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=2)
        for a, b in zip(x.chunk(3, dim=1), y.chunk(3, dim=1), strict=True)
    ]
    torch.testing.assert_close(aggregated, torch.stack(cosines).mean(dim=0))
    torch.testing.assert_close(msa_eval_embedding(x, n_levels=3).norm(dim=1), torch.ones(5))


def test_cross_level_loss_is_zero_for_ideal_ordered_embeddings() -> None:
    # Identical chunks within each class at every level, opposite chunks across classes
    # (two classes per level): every pair term is (1 - 1)^2 or (-1 + 1)^2.
    labels = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 1]])
    direction = torch.tensor([1.0, 0.0])
    chunks = torch.stack(
        [torch.where(labels[:, [level]] == 0, direction, -direction) for level in range(2)]
    )
    assert cross_level_loss(chunks, labels) == 0


def _literal_cross_level(chunks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The constraint level by level as REFERENCE.md states it, generalised to any depth."""
    n_levels, batch_size = chunks.shape[:2]
    sims = chunks @ chunks.transpose(1, 2)
    positives = labels.T.unsqueeze(2) == labels.T.unsqueeze(1)
    terms = torch.where(positives, (1 - sims) ** 2, (1 + sims) ** 2)
    total = 0.0
    for level in range(n_levels):
        switched = torch.zeros_like(positives[level])
        for other in range(n_levels):
            if other == level:
                continue
            if other > level:
                broken = positives[level] & (sims[other] < sims[level]).detach()
            else:
                broken = ~positives[level] & (sims[other] > sims[level]).detach()
            switched |= broken
            total = total + (broken * terms[other]).sum() / batch_size**2
        total = total + (terms[level] * ~switched).mean()
    return total / n_levels


@pytest.mark.parametrize("n_levels", [2, 3, 4], ids=lambda n: f"{n}_levels")
def test_cross_level_loss_matches_the_literal_rule(n_levels: int) -> None:
    n_classes = tuple(2 ** (n_levels - level) for level in range(n_levels))
    _, labels, _, _ = _toy_batch(n_classes, per_class=2)
    generator = torch.Generator().manual_seed(1)
    chunks = torch.randn(n_levels, len(labels), 6, generator=generator, dtype=torch.float64)
    chunks = torch.nn.functional.normalize(chunks, dim=2).requires_grad_()

    value = cross_level_loss(chunks, labels)
    (gradient,) = torch.autograd.grad(value, chunks)
    expected = _literal_cross_level(chunks, labels)
    (expected_gradient,) = torch.autograd.grad(expected, chunks)

    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(gradient, expected_gradient)
    assert torch.autograd.gradcheck(
        lambda x: cross_level_loss(x, labels), (chunks,), fast_mode=True
    )


def test_cross_level_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels, _, _ = _toy_batch((8, 4, 2), per_class=4)
    chunks = torch.nn.functional.normalize(torch.randn(3, len(labels), 5), dim=2)
    chunks.requires_grad_()
    value = cross_level_loss(chunks, labels)
    (gradient,) = torch.autograd.grad(value, chunks)

    monkeypatch.setattr(msa, "_BLOCK_ELEMENTS", 1)
    blocked = cross_level_loss(chunks, labels)
    (blocked_gradient,) = torch.autograd.grad(blocked, chunks)

    torch.testing.assert_close(blocked, value)
    torch.testing.assert_close(blocked_gradient, gradient)


def test_single_sample_class_and_gradients_finite() -> None:
    embeddings, labels, aux, teacher = _toy_batch((4, 2, 1), per_class=2)
    keep = torch.tensor([0, 2, 3, 4, 5, 6, 7])  # fine class 0 keeps one sample
    embeddings_kept = embeddings[keep]
    embeddings_kept.retain_grad()
    for recipe in (MSA_LOSS_RECIPES["vehicle"], MSA_LOSS_RECIPES["product"]):
        embeddings_kept.grad = None
        loss = build_msa_loss(config=recipe, n_classes=(4, 2, 1), embedding_dim=12)
        total, components = loss(embeddings_kept, labels[keep], aux[keep], teacher[keep])
        total.backward(retain_graph=True)
        assert torch.isfinite(total)
        assert all(torch.isfinite(value) for value in components.values())
        assert torch.isfinite(embeddings_kept.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in loss.parameters())


def test_single_embedding_uses_the_whole_embedding_and_no_cross_term() -> None:
    embeddings, labels, aux, teacher = _toy_batch((4, 2, 1))
    recipe = MSA_LOSS_RECIPES["product"]
    loss = build_msa_loss(config=recipe, n_classes=(4, 2, 1), embedding_dim=12)
    total, components = loss(embeddings, labels, aux, teacher)
    assert loss.cluster_loss.proxies.shape == (4 * 22, 12)
    assert set(components) == {"loss_cluster0", "loss_instance_alignment"}
    torch.testing.assert_close(total.detach(), sum(components.values()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"proxies_per_class": (2, 0, 2)}, "`proxies_per_class` must"),
        ({"scale": 0.0}, "`scale` must be positive"),
        ({"beta": -0.1}, "`beta` must be non-negative"),
    ],
    ids=["zero_proxies", "zero_scale", "negative_beta"],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MSA_LOSS_RECIPES["vehicle"], **changes)


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one count per level"):
        MSALoss(n_classes=(4, 2), embedding_dim=12, config=MSA_LOSS_RECIPES["vehicle"])
    with pytest.raises(ValueError, match="multiple of the number of levels"):
        MSALoss(n_classes=(4, 2, 1), embedding_dim=13, config=MSA_LOSS_RECIPES["vehicle"])
    loss = MSALoss(n_classes=(4, 2, 1), embedding_dim=12, config=MSA_LOSS_RECIPES["vehicle"])
    embeddings, labels, aux, teacher = _toy_batch((4, 2, 1))
    with pytest.raises(ValueError, match="`labels` must be"):
        loss(embeddings, labels[:, :2], aux, teacher)
