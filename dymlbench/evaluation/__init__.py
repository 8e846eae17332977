"""The DyML evaluator: ranking, metric kernels, the protocols and their aggregation.

One call evaluates embeddings from any model::

    from dymlbench.evaluation import evaluate_leave_one_out
    report = evaluate_leave_one_out(embeddings, labels)   # [n, dim], [n, n_levels]
    report.metrics["overall/map"]

See :mod:`dymlbench.evaluation.protocol` for the rules, and the ``official`` mode that
reproduces the HAPPIER / MSA evaluator.
"""

from __future__ import annotations

from dymlbench.evaluation.io import evaluate_file, load_embeddings_file
from dymlbench.evaluation.protocol import (
    MODES,
    Benchmark,
    evaluate_benchmarks,
    evaluate_leave_one_out,
)
from dymlbench.evaluation.report import EvaluationReport, render_table

__all__ = [
    "MODES",
    "Benchmark",
    "EvaluationReport",
    "evaluate_benchmarks",
    "evaluate_file",
    "evaluate_leave_one_out",
    "load_embeddings_file",
    "render_table",
]
