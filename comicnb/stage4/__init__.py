"""Stage 4: narrative tasks over panel sequences.

One view of a run (``view``) feeds everything: the task sets (``tasks``, ``negatives``, ``drafts``, ``samplers``,
``task_sets``), what a model and a baseline are given of a candidate (``inputs``, ``geometry``), per-sample results and
their table (``results``), the baselines (``baselines``), the sequence model and its batches (``config``, ``model``,
``batches``), training (``trainer``), inference (``scoring``, ``export``) and figures. Inference imports no training
code.
"""
