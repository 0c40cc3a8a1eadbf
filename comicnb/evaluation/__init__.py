"""Evaluation: retrieval and agreement metrics, panel labels, query sampling (notebooks 02, 03 and 05)."""
