"""The evaluator against the official HAPPIER / MSA evaluator's outputs on fixed inputs.

The reference files in tests/data/reference/ were computed with the official code (see that
folder's provenance); every case they hold is checked, so another file of the same format can be
dropped in. Tolerance 1e-6 absolute, as the fixtures' README measures.

Where the default rules differ from the official ones, the test says so:

- leave-one-out: the official evaluator drops each query's top-ranked item, assumed to be the
  query; with these inputs the query is always its own nearest neighbour, so dropping it by
  identity (default) gives the same values. Only ``overall/asi`` differs: officially it also
  averages in ``multi/asi``, by default it is the mean of the three levels.
- query/gallery: the official DyML branch drops every query's nearest gallery item although the
  query is not in the gallery; the default ranks the full gallery. The default values are
  therefore checked against the official plain query/gallery branch, which ranks all but the
  farthest gallery item (a negative for every query here, so it changes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dymlbench.evaluation import Benchmark, evaluate_benchmarks, evaluate_leave_one_out

REFERENCE_DIR = Path(__file__).parents[1] / "data" / "reference"
TOLERANCE = 1e-6
OFFICIAL_NAMES = {
    "AP": "map",
    "P@1": "recall@1",
    "mAP@R": "map@r",
    "R@10": "recall@10",
    "R@20": "recall@20",
    "ASI": "asi",
    "NDCG": "ndcg",
    "H-AP": "hap",
}


def _float32(values: list) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _our_key(official_key: str, level_names: tuple[str, ...]) -> str:
    metric, _, level = official_key.partition("_")
    group = "multi" if level == "multi" else level_names[int(level.removeprefix("level"))]
    return f"{group}/{OFFICIAL_NAMES[metric]}"


def _cases(pattern: str, protocol: str) -> list[tuple[str, dict]]:
    cases = []
    for path in sorted(REFERENCE_DIR.glob(pattern)):
        content = json.loads(path.read_text())
        cases += [
            (f"{path.stem}:{case['name']}", case)
            for case in content["cases"]
            if case["protocol"] == protocol
        ]
    return cases


LEAVE_ONE_OUT = _cases("metrics_*.json", "leave_one_out")
QUERY_GALLERY_FILES = sorted(REFERENCE_DIR.glob("metrics_*.json"))


@pytest.mark.parametrize("mode", ["official", "default"])
@pytest.mark.parametrize(("name", "case"), LEAVE_ONE_OUT, ids=[name for name, _ in LEAVE_ONE_OUT])
def test_leave_one_out_matches_the_official_evaluator(name: str, case: dict, mode: str) -> None:
    level_names = tuple(case["label_columns"])
    report = evaluate_leave_one_out(
        _float32(case["embeddings"]), np.asarray(case["labels"]), mode=mode, recall_at=(1, 10, 20)
    )

    expected = {_our_key(key, level_names): value for key, value in case["metrics"].items()}
    expected |= {f"overall/{OFFICIAL_NAMES[key]}": value for key, value in case["overall"].items()}
    if mode == "default":
        # By default overall/asi is the mean of the levels; officially multi/asi joins it.
        expected["overall/asi"] = np.mean([expected[f"{level}/asi"] for level in level_names])
    for key, value in expected.items():
        assert report.metrics[key] == pytest.approx(value, abs=TOLERANCE), key
    assert sum(report.n_skipped_queries.values()) == 0


def _query_gallery_files() -> list[tuple[str, dict]]:
    files = []
    for path in QUERY_GALLERY_FILES:
        content = json.loads(path.read_text())
        if any(case["protocol"] == "query_gallery" for case in content["cases"]):
            files.append((path.stem, content))
    return files


@pytest.mark.parametrize(
    ("mode", "branch"),
    [("official", "dyml_gallery_distractor_branch"), ("default", "plain_query_gallery_branch")],
)
@pytest.mark.parametrize(
    ("name", "content"), _query_gallery_files(), ids=[name for name, _ in _query_gallery_files()]
)
def test_query_gallery_matches_the_official_evaluator(
    name: str, content: dict, mode: str, branch: str
) -> None:
    cases = [case for case in content["cases"] if case["protocol"] == "query_gallery"]
    benchmarks = {
        case["benchmark_level"]: Benchmark(
            query_embeddings=_float32(case["query_embeddings"]),
            query_labels=np.asarray(case["query_labels"]),
            gallery_embeddings=_float32(case["gallery_embeddings"]),
            gallery_labels=np.asarray(case["gallery_labels"]),
        )
        for case in cases
    }
    report = evaluate_benchmarks(benchmarks, mode=mode, recall_at=(1, 10, 20))

    for case in cases:
        level = case["benchmark_level"]
        for key, value in case["metrics"][branch].items():
            metric, _, column = key.partition("_")
            if column == "multi":
                continue  # with one label column the multi-level values equal the binary ones
            ours = f"{level}/{OFFICIAL_NAMES[metric]}"
            assert report.metrics[ours] == pytest.approx(value, abs=TOLERANCE), ours
    for key, value in content["overall"][branch].items():
        ours = f"overall/{OFFICIAL_NAMES[key.partition('_')[0]]}"
        assert report.metrics[ours] == pytest.approx(value, abs=TOLERANCE), ours


@pytest.mark.parametrize(("name", "case"), LEAVE_ONE_OUT, ids=[name for name, _ in LEAVE_ONE_OUT])
def test_pop_relevances_match_the_official_tables(name: str, case: dict) -> None:
    import torch

    from dymlbench.evaluation.metrics import pop_relevances

    labels = np.asarray(case["labels"])
    n_levels = labels.shape[1]
    agreement = (labels[:, None, :] == labels[None, :, :]).sum(-1)
    counts = np.stack([(agreement == t).sum(1) for t in range(n_levels + 1)], axis=1)
    ours = pop_relevances(torch.from_numpy(counts), n_levels=n_levels).numpy()
    np.testing.assert_allclose(ours, np.asarray(case["relevances"]), atol=1e-7, rtol=0)
