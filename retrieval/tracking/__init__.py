"""Experiment tracking: W&B logger from the Hydra job, retrieval grids, embedding plots,
and a reader for offline W&B runs (so tests and users can inspect a run without syncing)."""
