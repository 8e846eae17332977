"""The DyML protocols on hand-computed cases, ideal and random embeddings, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dymlbench.evaluation import Benchmark, evaluate_benchmarks, evaluate_leave_one_out


def _ranked_gallery(relevant: list[bool]) -> Benchmark:
    """One query whose gallery ranks in the given order (first = most similar)."""
    n = len(relevant)
    angles = np.linspace(0.1, 1.4, n)
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return Benchmark(
        query_embeddings=np.array([[1.0, 0.0]], dtype=np.float32),
        query_labels=np.array([7]),
        gallery_embeddings=gallery,
        gallery_labels=np.where(relevant, 7, 3),
    )


def test_five_items_by_hand() -> None:
    report = evaluate_benchmarks(
        {"fine": _ranked_gallery([True, False, True, False, True])}, recall_at=(1, 2, 10)
    )
    m = report.metrics
    assert m["fine/map"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    assert m["fine/map@r"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["fine/asi"] == pytest.approx((1 / 1 + 1 / 2 + 2 / 3) / 3)
    assert (m["fine/recall@1"], m["fine/recall@2"], m["fine/recall@10"]) == (1.0, 1.0, 1.0)


def test_five_items_first_relevant_late() -> None:
    m = evaluate_benchmarks(
        {"fine": _ranked_gallery([False, False, True, False, True])}, recall_at=(1, 2, 3)
    ).metrics
    assert m["fine/map"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m["fine/map@r"] == 0.0
    assert m["fine/asi"] == 0.0
    assert (m["fine/recall@1"], m["fine/recall@2"], m["fine/recall@3"]) == (0.0, 0.0, 1.0)


def test_graded_metrics_by_hand() -> None:
    # Query 0 ranks A (2 levels agree), B (3), C (0), D (1): angles grow in that order.
    labels = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [5, 5, 5], [2, 1, 0]])
    angles = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    report = evaluate_leave_one_out(embeddings, labels)
    ndcg, hap, asi = (report.per_query[f"multi/{key}"][0] for key in ("ndcg", "hap", "asi"))

    dcg = 3 / math.log2(2) + 7 / math.log2(3) + 1 / math.log2(5)
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg == pytest.approx(dcg / ideal)
    # pop relevances, counting the query itself: t=3: 1.5 / 2, t=2: 1.0 / 1, t=1: 0.5 / 1.
    r_a, r_b, r_d = 1.0, 0.75, 0.5
    h_ranks = [r_a / 1, (min(r_b, r_a) + r_b) / 2, (min(r_d, r_a) + min(r_d, r_b) + r_d) / 4]
    assert hap == pytest.approx(sum(h_ranks) / (r_a + r_b + r_d))
    # top-k multisets {2}, {2, 3}, {2, 3, 0} against the ideal {3}, {3, 2}, {3, 2, 1}.
    assert asi == pytest.approx((0 / 1 + 2 / 2 + 2 / 3) / 3)


def _hierarchical_embeddings(
    n_per_fine: int = 3, branching: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Ideal embeddings: similarity grows with the number of agreeing levels."""
    labels = []
    for coarse in range(branching):
        for middle in range(branching):
            for fine in range(branching):
                middle_id = coarse * branching + middle
                fine_id = middle_id * branching + fine
                labels += [[fine_id, middle_id, coarse]] * n_per_fine
    labels = np.array(labels)
    weights = (1.0, 1.5, 2.0)
    blocks = [
        weight * np.eye(labels[:, level].max() + 1)[labels[:, level]]
        for level, weight in enumerate(weights)
    ]
    return np.concatenate(blocks, axis=1).astype(np.float32), labels


def test_ideal_embeddings_score_one_everywhere() -> None:
    embeddings, labels = _hierarchical_embeddings()
    report = evaluate_leave_one_out(embeddings, labels, recall_at=(1, 5))
    for key, value in report.metrics.items():
        assert value == pytest.approx(1.0), key


def test_ideal_benchmarks_score_one_everywhere() -> None:
    embeddings, labels = _hierarchical_embeddings()
    benchmarks = {
        name: Benchmark(
            query_embeddings=embeddings[::3],
            query_labels=labels[::3, level],
            gallery_embeddings=embeddings,
            gallery_labels=labels[:, level],
            query_ids=np.arange(len(labels))[::3],
            gallery_ids=np.arange(len(labels)),
        )
        for level, name in enumerate(("fine", "middle", "coarse"))
    }
    report = evaluate_benchmarks(benchmarks)
    for key, value in report.metrics.items():
        assert value == pytest.approx(1.0), key


def test_random_embeddings_score_near_chance() -> None:
    rng = np.random.default_rng(0)
    n, n_classes = 2000, 10
    labels = rng.integers(0, n_classes, size=(n, 1))
    report = evaluate_leave_one_out(rng.normal(size=(n, 32)).astype(np.float32), labels)
    # AP of a random ranking is about the share of relevant items; recall@1 likewise.
    assert report.metrics["fine/map"] == pytest.approx(1 / n_classes, abs=0.02)
    assert report.metrics["fine/recall@1"] == pytest.approx(1 / n_classes, abs=0.03)


def test_queries_without_relevant_items_are_skipped_and_counted() -> None:
    benchmark = Benchmark(
        query_embeddings=np.eye(3, dtype=np.float32),
        query_labels=np.array([0, 1, 9]),
        gallery_embeddings=np.eye(3, dtype=np.float32)[[0, 1, 1]],
        gallery_labels=np.array([0, 1, 1]),
    )
    report = evaluate_benchmarks({"middle": benchmark})
    assert report.metrics["middle/map"] == 1.0
    assert report.n_queries["middle"] == 3
    assert report.n_skipped_queries["middle"] == 1
    assert math.isnan(report.per_query["middle/map"][2])


def test_official_mode_skips_batches_with_a_query_without_relevant_items() -> None:
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(300, 8)).astype(np.float32)
    query_labels = rng.integers(0, 5, size=300)
    query_labels[3] = 99  # no relevant item: the first 256-query batch becomes NaN
    benchmark = Benchmark(
        query_embeddings=queries,
        query_labels=query_labels,
        gallery_embeddings=gallery,
        gallery_labels=rng.integers(0, 5, size=50),
    )
    official = evaluate_benchmarks({"fine": benchmark}, mode="official")
    default = evaluate_benchmarks({"fine": benchmark}, mode="default")
    # The official value is the mean over the last 44 queries alone (its rank-1 item dropped).
    assert official.metrics["fine/map"] != pytest.approx(default.metrics["fine/map"])
    assert default.n_skipped_queries["fine"] == 1


def test_exact_ties_rank_the_less_relevant_item_first() -> None:
    same_point = np.array([[1.0, 0.0]] * 4, dtype=np.float32)
    benchmark = Benchmark(
        query_embeddings=np.array([[1.0, 0.0]], dtype=np.float32),
        query_labels=np.array([1]),
        gallery_embeddings=same_point,
        gallery_labels=np.array([1, 0, 1, 0]),
    )
    m = evaluate_benchmarks({"fine": benchmark}, recall_at=(1, 2, 3)).metrics
    assert m["fine/map"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert (m["fine/recall@2"], m["fine/recall@3"]) == (0.0, 1.0)


def test_recall_at_k_larger_than_the_gallery() -> None:
    m = evaluate_benchmarks(
        {"fine": _ranked_gallery([False, False, True])}, recall_at=(1, 100)
    ).metrics
    assert (m["fine/recall@1"], m["fine/recall@100"]) == (0.0, 1.0)


def test_query_ids_exclude_the_own_gallery_entry_only() -> None:
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    benchmark = Benchmark(
        query_embeddings=gallery[:1],
        query_labels=np.array([0]),
        gallery_embeddings=gallery,
        gallery_labels=np.array([0, 0, 1]),
        query_ids=np.array(["a.jpg"]),
        gallery_ids=np.array(["a.jpg", "b.jpg", "c.jpg"]),
    )
    with_ids = evaluate_benchmarks({"fine": benchmark}, recall_at=(1,))
    assert with_ids.metrics["fine/map"] == 1.0  # b.jpg is the only relevant item, first
    without = Benchmark(**{**benchmark.__dict__, "query_ids": None, "gallery_ids": None})
    # Without ids the query's own copy stays in the gallery and counts as relevant.
    assert evaluate_benchmarks({"fine": without}).per_query["fine/map"][0] == 1.0
    assert evaluate_benchmarks({"fine": without}).n_queries["fine"] == 1


def _tie_heavy_embeddings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors with four entries of +-1/2: every dot product is exact, ties are common."""
    embeddings = np.zeros((n, 6), dtype=np.float32)
    for row in embeddings:
        row[rng.choice(6, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
    return embeddings


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    chunk_size=st.integers(min_value=1, max_value=45),
    seed=st.integers(min_value=0, max_value=2**16),
    ties=st.booleans(),
)
def test_chunked_equals_unchunked(n: int, chunk_size: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    # Exact scores make the comparison exact: BLAS may round a product differently for another
    # number of rows, which would flip exact ties between duplicates.
    if ties:
        embeddings = _tie_heavy_embeddings(rng, n)
    else:
        embeddings = rng.normal(size=(n, 3)).astype(np.float32)
    fine = rng.integers(0, 6, size=n)
    labels = np.stack([fine, fine // 2, fine // 4], axis=1)
    whole = evaluate_leave_one_out(embeddings, labels, chunk_size=n, recall_at=(1, 3))
    chunked = evaluate_leave_one_out(embeddings, labels, chunk_size=chunk_size, recall_at=(1, 3))
    assert whole.per_query.keys() == chunked.per_query.keys()
    for key in whole.per_query:
        np.testing.assert_array_equal(whole.per_query[key], chunked.per_query[key], err_msg=key)


def test_one_query_chunks_equal_the_default_chunking() -> None:
    embeddings, labels = _hierarchical_embeddings()
    rng = np.random.default_rng(3)
    noisy = embeddings + rng.normal(scale=0.5, size=embeddings.shape).astype(np.float32)
    one = evaluate_leave_one_out(noisy, labels, chunk_size=1)
    default = evaluate_leave_one_out(noisy, labels)
    assert one.metrics == default.metrics


def test_gallery_order_does_not_change_the_metrics() -> None:
    rng = np.random.default_rng(4)
    gallery = _tie_heavy_embeddings(rng, 60)
    labels = rng.integers(0, 4, size=60)
    queries = gallery[:20]
    order = rng.permutation(60)

    def run(g, gl):
        bench = Benchmark(
            query_embeddings=queries,
            query_labels=labels[:20],
            gallery_embeddings=g,
            gallery_labels=gl,
        )
        return evaluate_benchmarks({"fine": bench}).metrics

    assert run(gallery, labels) == run(gallery[order], labels[order])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "`mode` must be one of"),
        ({"recall_at": (0,)}, "`recall_at` must be positive"),
        ({"chunk_size": 0}, "`chunk_size` must be at least 1"),
        ({"device": "cuda:7"}, "use `--device cpu`"),
    ],
    ids=["mode", "recall_at", "chunk_size", "device"],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    import torch

    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("the machine has CUDA")
    embeddings, labels = _hierarchical_embeddings()
    with pytest.raises(ValueError, match=message):
        evaluate_leave_one_out(embeddings, labels, **kwargs)


@pytest.mark.parametrize(
    ("embeddings", "labels", "error", "message"),
    [
        (np.ones((4, 2)), np.zeros((3, 1), dtype=int), ValueError, r"`labels` must have shape"),
        (np.ones(4), np.zeros(4, dtype=int), ValueError, r"`embeddings` must be a non-empty 2-d"),
        (
            np.array([[1.0, np.nan], [1.0, 0.0]]),
            np.zeros(2, dtype=int),
            ValueError,
            "must be finite",
        ),
        (np.ones((2, 2)), np.array([0.5, 1.0]), TypeError, "must hold integer labels"),
        (np.zeros((2, 2)), np.zeros(2, dtype=int), ValueError, "no all-zero row"),
    ],
    ids=["label-rows", "1d-embeddings", "nan", "float-labels", "zero-row"],
)
def test_bad_inputs_are_named(embeddings, labels, error, message) -> None:
    with pytest.raises(error, match=message):
        evaluate_leave_one_out(embeddings, labels)


@pytest.mark.gpu
def test_cuda_equals_cpu() -> None:
    embeddings, labels = _hierarchical_embeddings()
    rng = np.random.default_rng(5)
    noisy = embeddings + rng.normal(scale=0.5, size=embeddings.shape).astype(np.float32)
    cpu = evaluate_leave_one_out(noisy, labels)
    cuda = evaluate_leave_one_out(noisy, labels, device="cuda")
    for key, value in cpu.metrics.items():
        assert cuda.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_faiss_backend_recall_equals_the_exact_one() -> None:
    rng = np.random.default_rng(6)
    embeddings = rng.normal(size=(300, 16)).astype(np.float32)
    fine = rng.integers(0, 30, size=300)
    labels = np.stack([fine, fine // 5, fine // 15], axis=1)
    exact = evaluate_leave_one_out(embeddings, labels, recall_at=(1, 5, 50))
    knn = evaluate_leave_one_out(embeddings, labels, recall_at=(1, 5, 50), backend="faiss")
    assert set(knn.metrics) == {key for key in exact.metrics if "/recall@" in key}
    for key, value in knn.metrics.items():
        assert value == exact.metrics[key], key


def test_faiss_backend_excludes_own_entries_by_id() -> None:
    embeddings, labels = _hierarchical_embeddings()
    rng = np.random.default_rng(7)
    noisy = embeddings + rng.normal(scale=0.8, size=embeddings.shape).astype(np.float32)
    query_rows = np.arange(0, len(labels), 2)
    bench = Benchmark(
        query_embeddings=noisy[query_rows],
        query_labels=labels[query_rows, 0],
        gallery_embeddings=noisy,
        gallery_labels=labels[:, 0],
        query_ids=query_rows,
        gallery_ids=np.arange(len(labels)),
    )
    exact = evaluate_benchmarks({"fine": bench}, recall_at=(1, 2))
    knn = evaluate_benchmarks({"fine": bench}, recall_at=(1, 2), backend="faiss")
    for key, value in knn.metrics.items():
        assert value == exact.metrics[key], key
    assert knn.metrics["fine/recall@1"] < 1.0  # the query's own copy is not counted


def test_faiss_backend_refuses_the_official_mode() -> None:
    embeddings, labels = _hierarchical_embeddings()
    with pytest.raises(ValueError, match="must go with mode 'default'"):
        evaluate_leave_one_out(embeddings, labels, backend="faiss", mode="official")
