"""CSL loss against the official implementation (the CSLLoss of elias-ramzi/HAPPIER)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from methods.csl import CSL_LOSS_RECIPES, CSLLoss, CSLLossConfig

# REFERENCE.md section 4, CSL: margins fine/middle/coarse and scale, the same for every dataset.
PAPER_MARGINS = (0.25, 0.35, 0.45)
PAPER_SCALE = 32.0


def _label_table(middle_of_fine: list[int], coarse_of_middle: list[int]) -> torch.Tensor:
    rows = [(fine, middle, coarse_of_middle[middle]) for fine, middle in enumerate(middle_of_fine)]
    return torch.tensor(rows)


def _batch(label_table: torch.Tensor, per_class: int = 2, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = label_table.repeat_interleave(per_class, dim=0)
    embeddings = F.normalize(torch.randn(len(labels), dim, generator=generator), dim=1)
    return embeddings.requires_grad_(), labels


def test_reference_case(csl_case) -> None:
    settings = csl_case["hyperparameters"]
    assert settings["reduce_type"] == "sum"
    table = _label_table(**csl_case["hierarchy"])
    # Training tables have one row per image, in any order: repeat and shuffle the classes.
    shuffled = table.repeat(3, 1)[torch.randperm(3 * len(table), generator=torch.Generator())]
    config = CSLLossConfig(margins=tuple(settings["margins"]), scale=settings["scale"])
    loss = CSLLoss(
        label_table=shuffled,
        embedding_dim=settings["embedding_size"],
        config=config,
        proxies_seed=settings["proxies_seed"],
    )
    assert torch.equal(loss.proxy_labels, csl_case.tensor("registered_label_table"))
    assert torch.equal(loss.proxies.detach(), csl_case.tensor("proxies", "weight"))
    embeddings = csl_case.tensor("inputs", "embeddings").requires_grad_()

    total, components = loss(embeddings, csl_case.tensor("inputs", "labels"))
    total.backward()

    csl_case.assert_loss(total, "outputs", "loss")
    expected_levels = csl_case["outputs"]["per_level_losses"]
    assert list(components) == [f"loss_level{level}" for level in range(len(expected_levels))]
    for level, value in enumerate(components.values()):
        csl_case.assert_loss(value, "outputs", "per_level_losses", level)
    csl_case.assert_gradient(embeddings.grad, "gradients", "embeddings")
    csl_case.assert_gradient(loss.proxies.grad, "gradients", "weight")


@pytest.mark.parametrize("dataset", ["vehicle", "animal", "product"])
def test_recipes_match_reference_md(dataset: str) -> None:
    recipe = CSL_LOSS_RECIPES[dataset]
    assert recipe.margins == PAPER_MARGINS
    assert recipe.scale == PAPER_SCALE


def test_positive_term_is_the_fine_proxy_at_every_level() -> None:
    table = torch.tensor([[0, 0], [1, 0], [2, 1]])
    loss = CSLLoss(label_table=table, embedding_dim=3, config=CSLLossConfig(margins=(0.1, 0.2)))
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(3))
    embeddings = F.normalize(torch.tensor([[1.0, 0.5, 0.2]]), dim=1)

    _, components = loss(embeddings, table[:1])

    sims = embeddings[0] * 32.0
    positive = -sims[0]
    fine = F.softplus(torch.logsumexp(sims[1:], dim=0) + positive + 0.1 * 32.0)
    middle = F.softplus(sims[2] + positive + 0.2 * 32.0)  # proxy 1 shares the middle class
    torch.testing.assert_close(components["loss_level0"], fine)
    torch.testing.assert_close(components["loss_level1"], middle)


def test_embeddings_are_not_renormalised() -> None:
    table = _label_table([0, 0, 1, 1], [0, 0])
    loss = CSLLoss(label_table=table, embedding_dim=8, config=CSLLossConfig())
    embeddings, labels = _batch(table)
    assert loss(2 * embeddings, labels)[0] != loss(embeddings, labels)[0]


def test_single_coarse_class_and_single_sample_class_are_finite() -> None:
    table = _label_table([0, 0, 1, 1], [0, 0])  # every proxy shares coarse class 0
    loss = CSLLoss(label_table=table, embedding_dim=8, config=CSLLossConfig())
    embeddings, labels = _batch(table)
    keep = torch.tensor([0, 2, 3, 4, 5, 6, 7])  # fine class 0 keeps one sample

    total, components = loss(embeddings[keep], labels[keep])
    total.backward()

    assert components["loss_level2"] == 0
    assert torch.isfinite(total)
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(loss.proxies.grad).all()


def test_proxies_seed_leaves_the_global_generator_alone() -> None:
    table = _label_table([0, 0, 1], [0, 1])
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    first = CSLLoss(label_table=table, embedding_dim=4, config=CSLLossConfig(), proxies_seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    second = CSLLoss(label_table=table, embedding_dim=4, config=CSLLossConfig(), proxies_seed=3)
    assert torch.equal(first.proxies, second.proxies)


def test_rejects_bad_tables_and_labels() -> None:
    config = CSLLossConfig()
    with pytest.raises(ValueError, match="one class per level"):
        CSLLoss(label_table=torch.tensor([[0, 0, 0], [0, 1, 0]]), embedding_dim=4, config=config)
    with pytest.raises(ValueError, match="one column per margin"):
        CSLLoss(label_table=torch.tensor([[0, 0], [1, 0]]), embedding_dim=4, config=config)
    table = _label_table([0, 0, 1], [0, 1])
    loss = CSLLoss(label_table=table, embedding_dim=8, config=config)
    embeddings, labels = _batch(table)
    with pytest.raises(ValueError, match="fine classes of the label table"):
        loss(embeddings, labels + torch.tensor([5, 0, 0]))
    with pytest.raises(ValueError, match="`scale` must be positive"):
        dataclasses.replace(config, scale=0.0)
