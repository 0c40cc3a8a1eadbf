"""Metrics on the floor below both stages: accuracy with its intervals and tie rule, totals over tasks, reading-order
agreement and retrieval (recall@k, mAP, collapse diagnostics). Stage 3's trainer, Stage 4's baselines and models,
the COMICS scorer and notebook 05's report all score with these.

``from comicnb.metrics import accuracy_interval, kendall_tau, recall_at_k``: every name of the three modules.
"""

from comicnb.metrics.accuracy import (
    FEW_BOOKS,
    INTERVALS,
    MIN_BOOKS,
    accuracy,
    accuracy_interval,
    book_accuracy_interval,
    bootstrap_interval,
    clustered_interval,
    expected_hit,
    expected_hits,
    mean_task_accuracy,
    total_accuracy,
    wilson_interval,
)
from comicnb.metrics.order import exact_order, kendall_tau, order_agreement, pairwise_accuracy
from comicnb.metrics.retrieval import (
    collapse_diagnostics,
    mean_average_precision,
    overlap_recall,
    page_index,
    recall_at_k,
    recall_at_k_labels,
    same_panel_retrieval,
)

__all__ = [
    "FEW_BOOKS",
    "INTERVALS",
    "MIN_BOOKS",
    "accuracy",
    "accuracy_interval",
    "book_accuracy_interval",
    "bootstrap_interval",
    "clustered_interval",
    "collapse_diagnostics",
    "exact_order",
    "expected_hit",
    "expected_hits",
    "kendall_tau",
    "mean_average_precision",
    "mean_task_accuracy",
    "order_agreement",
    "overlap_recall",
    "page_index",
    "pairwise_accuracy",
    "recall_at_k",
    "recall_at_k_labels",
    "same_panel_retrieval",
    "total_accuracy",
    "wilson_interval",
]
