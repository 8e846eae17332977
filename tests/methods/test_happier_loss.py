"""HAPPIER losses against the official implementation (elias-ramzi/HAPPIER)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import methods.happier as happier
from methods.happier import (
    HAPPIER_LOSS_RECIPES,
    HAPLoss,
    HAPPIERLoss,
    HAPPIERLossConfig,
    NormSoftmaxLoss,
    RankApproximation,
    hap_surrogate,
    match_matrix,
    pop_relevance,
)

# REFERENCE.md section 4, HAPPIER: loss weights (H-AP, cluster) per dataset.
PAPER_WEIGHTS = {"vehicle": (0.9, 0.1), "animal": (0.5, 0.5), "product": (0.9, 0.1)}

RELEVANCE_ATOL = 1e-7
PER_QUERY_HAP_ATOL = 2e-6
"""Tolerances of the reference README, section 8."""


def _batch(n_fine: int, per_class: int, dim: int = 16, seed: int = 0, dtype=torch.float32):
    """Normalised random embeddings over a three-level tree: fine f -> f // 2 -> f // 4."""
    generator = torch.Generator().manual_seed(seed)
    fine = torch.arange(n_fine).repeat_interleave(per_class)
    labels = torch.stack([fine, fine // 2, fine // 4], dim=1)
    embeddings = F.normalize(torch.randn(len(fine), dim, generator=generator, dtype=dtype), dim=1)
    return embeddings.requires_grad_(), labels


def test_reference_case(hap_case) -> None:
    settings = hap_case["hyperparameters"]
    assert hap_case["relevance"]["type"] == "pop"
    assert (settings["hierarchy_level"], settings["return_type"]) == ("MULTI", "1-mHAP")
    assert not settings["with_hrank"] and not settings["stop_grad"]
    rank = RankApproximation(
        **{key: settings[key] for key in ("tau", "rho", "offset", "delta", "start")}
    )
    alpha = hap_case["relevance"]["alpha"]
    embeddings = hap_case.tensor("inputs", "embeddings").requires_grad_()
    labels = hap_case.tensor("inputs", "labels")

    match = match_matrix(labels)
    relevances = pop_relevance(match, n_levels=labels.shape[1], alpha=alpha)
    per_query = hap_surrogate(embeddings, labels, rank=rank, relevance_alpha=alpha)
    loss = HAPLoss(rank=rank, relevance_alpha=alpha)(embeddings, labels)
    loss.backward()

    torch.testing.assert_close(match, hap_case.tensor("derived", "label_matrix"), rtol=0, atol=0)
    torch.testing.assert_close(
        relevances, hap_case.tensor("derived", "relevance_matrix"), rtol=0, atol=RELEVANCE_ATOL
    )
    torch.testing.assert_close(
        per_query.detach(),
        hap_case.tensor("derived", "per_query_hap"),
        rtol=0,
        atol=PER_QUERY_HAP_ATOL,
    )
    hap_case.assert_loss(loss, "outputs", "loss")
    hap_case.assert_gradient(embeddings.grad, "gradients", "embeddings")


@pytest.mark.parametrize("dataset", sorted(PAPER_WEIGHTS))
def test_recipes_match_reference_md(dataset: str) -> None:
    recipe = HAPPIER_LOSS_RECIPES[dataset]
    assert (recipe.hap_weight, recipe.cluster_weight) == PAPER_WEIGHTS[dataset]
    assert recipe.rank == RankApproximation(
        tau=0.01, rho=100.0, offset=1.44, delta=0.05, start=0.5
    )
    assert recipe.relevance_alpha == 1.0
    assert recipe.temperature == 0.05


def test_pop_relevance_counts_the_query_itself() -> None:
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 1]])
    relevances = pop_relevance(match_matrix(labels), n_levels=3)
    # Query 0: two items at match 3 (itself included), one at 2, one at 1, one at 0.
    expected = torch.tensor([1.5 / 2, 1.5 / 2, 1.0, 0.5, 0.0])
    torch.testing.assert_close(relevances[0], expected)
    with pytest.raises(ValueError, match="`n_levels` must be at least 2"):
        pop_relevance(match_matrix(labels[:, :1]), n_levels=1)


def test_gradient_is_the_derivative_of_the_smooth_pieces() -> None:
    # In float64 no score difference of this batch sits within the finite-difference step of a
    # step piece's jump, so the analytic gradient (zero through the hard steps) is the true one.
    embeddings, labels = _batch(n_fine=6, per_class=2, dim=5, dtype=torch.float64)
    rank = RankApproximation()

    assert torch.autograd.gradcheck(
        lambda x: hap_surrogate(x, labels, rank=rank), (embeddings.detach().requires_grad_(),)
    )


def test_autograd_keeps_no_cubic_tensor() -> None:
    embeddings, labels = _batch(n_fine=16, per_class=4, dim=8)
    batch_size = len(labels)
    saved_sizes = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved_sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        HAPLoss()(embeddings, labels).backward()

    assert saved_sizes and max(saved_sizes) <= batch_size**2


def test_query_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings, labels = _batch(n_fine=8, per_class=4)
    loss = HAPLoss()(embeddings, labels)
    (gradient,) = torch.autograd.grad(loss, embeddings)

    monkeypatch.setattr(happier, "_CHUNK_ELEMENTS", 32 * 32)  # blocks of 32 pairs
    blocked_loss = HAPLoss()(embeddings, labels)
    (blocked_gradient,) = torch.autograd.grad(blocked_loss, embeddings)

    torch.testing.assert_close(blocked_loss, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(blocked_gradient, gradient, rtol=1e-6, atol=1e-9)


def test_paper_batch_size_is_feasible_with_finite_gradients() -> None:
    embeddings, labels = _batch(n_fine=64, per_class=4, dim=513)
    loss = HAPLoss()(embeddings, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0


def test_single_sample_class_gives_finite_gradients() -> None:
    embeddings, labels = _batch(n_fine=5, per_class=3)
    keep = torch.tensor([0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])  # fine class 0: one sample
    loss = HAPPIERLoss(n_classes=5, embedding_dim=16, config=HAPPIER_LOSS_RECIPES["vehicle"])
    total, components = loss(embeddings[keep], labels[keep])
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(value) for value in components.values())
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(loss.cluster_loss.proxies.grad).all()


def test_norm_softmax_hand_computed() -> None:
    loss = NormSoftmaxLoss(n_classes=2, embedding_dim=2, temperature=0.05)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # normalised to e1, e2

    value = loss(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([0, 1]))

    # Logits [20, 0] for label 0 and [12, 16] for label 1.
    expected = (math.log1p(math.exp(-20.0)) + math.log1p(math.exp(-4.0))) / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_happier_loss_is_the_weighted_sum_of_its_parts() -> None:
    embeddings, labels = _batch(n_fine=6, per_class=4)
    config = HAPPIER_LOSS_RECIPES["animal"]
    loss = HAPPIERLoss(n_classes=6, embedding_dim=16, config=config)

    total, components = loss(embeddings, labels)

    assert set(components) == {"loss_hap", "loss_cluster"}
    torch.testing.assert_close(components["loss_hap"], HAPLoss()(embeddings, labels).detach())
    torch.testing.assert_close(
        components["loss_cluster"], loss.cluster_loss(embeddings, labels[:, 0]).detach()
    )
    torch.testing.assert_close(
        total.detach(), 0.5 * components["loss_hap"] + 0.5 * components["loss_cluster"]
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hap_weight": -1.0, "cluster_weight": 0.1}, "`hap_weight` must be non-negative"),
        ({"hap_weight": 0.9, "cluster_weight": 0.1, "temperature": 0.0}, "`temperature` must"),
    ],
    ids=["negative_weight", "zero_temperature"],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HAPPIERLossConfig(**changes)
    with pytest.raises(ValueError, match="`tau` must be positive"):
        RankApproximation(tau=0.0)
