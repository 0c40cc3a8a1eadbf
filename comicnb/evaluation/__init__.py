"""Evaluation: notebook 05's study of a run's held-out books: the task report and ``metrics.json`` (``report``),
retrieval by shared label (``retrieval``), pages and strips (``strips``) and their galleries (``figures``)."""
