"""ComicsPAP (Vivoli et al., "ComicsPAP: understanding comic strips by picking the correct panel", arXiv 2503.08561,
ICDAR 2025; dataset ``VLR-CVC/ComicsPAP``, CC BY-SA 4.0) in and out of the workbook:

- ``format``: the dataset's parquet files, found, schema-checked, read one row group at a time, and written;
- ``encode``: a split into a run as a Stage 3 store and comicnb task sets, with a manifest of files and bad rows;
- ``fit``: the Stage 4 model fine-tuned on the train split (early stopping on a held-out share) or taken zero-shot;
- ``scores``: accuracy per skill and pooled as ComicsPAP's evaluate.py, beside baselines and the published table;
  the test split's answers for the competition server;
- ``export``: a run's task sets written as ComicsPAP parquet; ``fixture``: a small folder in the exact schema;
- ``cli``: ``python -m comicnb comicspap encode|fit|eval|predict|export|fixture`` (docs/comicspap.md).
"""
