"""Evaluator benchmark: dymlbench against a torch sort-based evaluator and PML's calculator.

Two workloads on 512-d clustered embeddings (1,000 fine, 100 middle, 5 coarse classes):

(a) 5,000 queries against a 50,000-item gallery, at the fine level (about 50 relevant items per
    query) and at the coarse level (a fifth of the gallery relevant);
(b) a 30,000-item leave-one-out set with three levels, all metrics including the multi-level
    ones.

Every contender runs in its own process, so its peak resident memory (above the inputs it was
handed) can be read. The official HAPPIER / MSA evaluator cannot be part of this project; its
times on 2 cores for (a), measured once with the official code, are quoted for the ratios:
52 s at the fine level and 58 s at the coarse level.

    python benchmarks/bench_evaluator.py            # everything (several minutes on 2 cores)
    python benchmarks/bench_evaluator.py --no-pml   # without pytorch-metric-learning
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

OFFICIAL_SECONDS = {"a-fine": 52.0, "a-coarse": 58.0}
GOALS = "goals: >= 10x official at fine, >= 4x at coarse, >= 15x PML, < 2 GiB, (b) < 60 s"
N_FINE, N_MIDDLE, N_COARSE, DIM = 1000, 100, 5, 512


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings around a three-level tree of centres, and their labels [n, 3]."""
    rng = np.random.default_rng(0)
    coarse_centres = rng.normal(size=(N_COARSE, DIM))
    middle_centres = coarse_centres[np.arange(N_MIDDLE) % N_COARSE] + 0.8 * rng.normal(
        size=(N_MIDDLE, DIM)
    )
    fine_centres = middle_centres[np.arange(N_FINE) % N_MIDDLE] + 0.6 * rng.normal(
        size=(N_FINE, DIM)
    )
    draw = np.random.default_rng(seed)
    fine = draw.integers(0, N_FINE, size=n)
    embeddings = fine_centres[fine] + 2.2 * draw.normal(size=(n, DIM))
    labels = np.stack([fine, fine % N_MIDDLE, fine % N_MIDDLE % N_COARSE], axis=1)
    return embeddings.astype(np.float32), labels


def workload(case: str) -> dict[str, np.ndarray]:
    if case.startswith("a-"):
        level = {"a-fine": 0, "a-coarse": 2}[case]
        query, query_labels = clustered(5_000, seed=1)
        gallery, gallery_labels = clustered(50_000, seed=2)
        return {
            "query": query,
            "query_labels": query_labels[:, level],
            "gallery": gallery,
            "gallery_labels": gallery_labels[:, level],
        }
    embeddings, labels = clustered(30_000, seed=3)
    return {"embeddings": embeddings, "labels": labels}


def run_dymlbench(data: dict[str, np.ndarray]) -> dict[str, float]:
    from dymlbench.evaluation import Benchmark, evaluate_benchmarks, evaluate_leave_one_out

    if "embeddings" in data:
        return evaluate_leave_one_out(data["embeddings"], data["labels"]).metrics
    bench = Benchmark(
        query_embeddings=data["query"],
        query_labels=data["query_labels"],
        gallery_embeddings=data["gallery"],
        gallery_labels=data["gallery_labels"],
    )
    return evaluate_benchmarks({"fine": bench}).metrics


def sort_reference(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    leave_one_out: bool,
) -> dict[str, float]:
    """A straightforward evaluator: argsort every row, then cumulative sums."""
    query = torch.nn.functional.normalize(query, dim=1)
    gallery = torch.nn.functional.normalize(gallery, dim=1)
    sums = {"map": 0.0, "map@r": 0.0, "asi": 0.0, "recall@1": 0.0, "recall@10": 0.0}
    n_valid = 0
    ranks = torch.arange(1, gallery.shape[0] + 1, dtype=torch.float64)
    for start in range(0, query.shape[0], 256):
        scores = query[start : start + 256] @ gallery.T
        if leave_one_out:
            rows = torch.arange(scores.shape[0])
            scores[rows, rows + start] = -torch.inf
        order = torch.argsort(scores, dim=1, descending=True)
        if leave_one_out:
            order = order[:, :-1]
        relevant = (gallery_labels[order] == query_labels[start : start + 256, None]).double()
        n_relevant = relevant.sum(1)
        hits = relevant.cumsum(1)
        precision = hits / ranks[: order.shape[1]]
        within = ranks[: order.shape[1]] <= n_relevant[:, None]
        valid = n_relevant > 0
        sums["map"] += ((precision * relevant).sum(1) / n_relevant)[valid].sum().item()
        sums["map@r"] += ((precision * relevant * within).sum(1) / n_relevant)[valid].sum().item()
        sums["asi"] += ((precision * within).sum(1) / n_relevant)[valid].sum().item()
        sums["recall@1"] += relevant[valid, 0].sum().item()
        sums["recall@10"] += (hits[valid, 9] > 0).double().sum().item()
        n_valid += int(valid.sum())
    return {key: value / n_valid for key, value in sums.items()}


def run_sort(data: dict[str, np.ndarray]) -> dict[str, float]:
    if "embeddings" in data:
        embeddings = torch.from_numpy(data["embeddings"])
        out = {}
        for level, name in enumerate(("fine", "middle", "coarse")):
            labels = torch.from_numpy(data["labels"][:, level])
            values = sort_reference(embeddings, labels, embeddings, labels, leave_one_out=True)
            out |= {f"{name}/{key}": value for key, value in values.items()}
        return out
    values = sort_reference(
        torch.from_numpy(data["query"]),
        torch.from_numpy(data["query_labels"]),
        torch.from_numpy(data["gallery"]),
        torch.from_numpy(data["gallery_labels"]),
        leave_one_out=False,
    )
    return {f"fine/{key}": value for key, value in values.items()}


def run_pml(data: dict[str, np.ndarray]) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calculator = AccuracyCalculator(
        include=("mean_average_precision", "precision_at_1"), k=None, device=torch.device("cpu")
    )
    query = torch.nn.functional.normalize(torch.from_numpy(data["query"]), dim=1)
    gallery = torch.nn.functional.normalize(torch.from_numpy(data["gallery"]), dim=1)
    values = calculator.get_accuracy(
        query,
        torch.from_numpy(data["query_labels"]),
        gallery,
        torch.from_numpy(data["gallery_labels"]),
        ref_includes_query=False,
    )
    return {
        "fine/map": values["mean_average_precision"],
        "fine/recall@1": values["precision_at_1"],
    }


CONTENDERS = {"dymlbench": run_dymlbench, "sort": run_sort, "pml": run_pml}


def worker(name: str, case: str) -> None:
    """Run one contender on one workload and print its time and memory as JSON."""
    data = workload(case)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    metrics = CONTENDERS[name](data)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": (peak - baseline) / 1024,
                "metrics": {key: float(value) for key, value in metrics.items()},
            }
        )
    )


def measure(name: str, case: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--case", case],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(CONTENDERS))
    parser.add_argument("--case", choices=["a-fine", "a-coarse", "b"])
    parser.add_argument("--no-pml", action="store_true", help="skip pytorch-metric-learning")
    parser.add_argument("--no-sort", action="store_true", help="skip the sort-based reference")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.case)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {GOALS}")
    for case in ("a-fine", "a-coarse", "b"):
        names = ["dymlbench"]
        names += [] if args.no_sort else ["sort"]
        names += ["pml"] if case == "a-fine" and not args.no_pml else []
        results = {name: measure(name, case) for name in names}
        ours = results["dymlbench"]
        print(f"\n[{case}]")
        for name, result in results.items():
            line = f"  {name:10s} {result['seconds']:7.2f} s  peak {result['peak_mib']:7.0f} MiB"
            if name != "dymlbench":
                line += f"  dymlbench is {result['seconds'] / ours['seconds']:.1f}x faster"
                shared = sorted(set(result["metrics"]) & set(ours["metrics"]))
                gap = max(abs(result["metrics"][key] - ours["metrics"][key]) for key in shared)
                line += f"  (max metric difference {gap:.1e})"
            print(line)
        if case in OFFICIAL_SECONDS:
            quoted = OFFICIAL_SECONDS[case]
            print(
                f"  official   {quoted:7.2f} s  (quoted)  dymlbench is "
                f"{quoted / ours['seconds']:.1f}x faster"
            )
        headline = {k: round(v, 4) for k, v in ours["metrics"].items() if k.endswith("/map")}
        print(f"  dymlbench mAP: {headline}")


if __name__ == "__main__":
    main()
