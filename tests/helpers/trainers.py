"""In-process Lightning trainers for short CPU runs in tests: no logger, checkpoints,
progress bar or summary, so a test sees only what it asks for."""

from __future__ import annotations

import lightning as L


def quiet_trainer(steps: int, **options) -> L.Trainer:
    """``steps`` optimizer steps on the CPU; the loaders reload each epoch (seeded order)."""
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        **options,
    )
