"""A run resumed from its last checkpoint replays the uninterrupted run exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import run_ok, small_run

# augmentations on, so that the RNG of the transforms matters too
SETTINGS = [
    "augmentation=reference",
    "trainer.deterministic=true",
    "evaluate_before=false",
    "evaluate_after=false",
    "dataset.triplets_per_epoch=12",
]


def _train(data: Path, tmp: Path, *overrides: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    run_ok("train.py", *small_run(data, tmp), *SETTINGS, *overrides, cwd=tmp)
    return next((tmp / "logs" / "train" / "runs").iterdir())


def _epoch_metrics(run_dir: Path, epoch: int) -> dict[str, float]:
    """The epoch's logged values (Lightning's CSV has one row per logging call)."""
    values: dict[str, float] = {}
    with (run_dir / "csv" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("epoch") == str(epoch):
                values.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return values


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tiny_landmarks, tmp_path):
    full = _train(tiny_landmarks, tmp_path / "full", "trainer.max_epochs=2")
    first = _train(tiny_landmarks, tmp_path / "first", "trainer.max_epochs=1")
    resumed = _train(
        tiny_landmarks,
        tmp_path / "resumed",
        "trainer.max_epochs=2",
        f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
    )
    expected, got = _epoch_metrics(full, 1), _epoch_metrics(resumed, 1)
    assert {"train/loss_epoch", "val/mAP", "val/loss"} <= expected.keys()
    assert _epoch_metrics(resumed, 0) == {}  # epoch 0 was not trained again
    for key in ("train/loss_epoch", "val/mAP", "val/loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    # the interrupted run's first epoch was the full run's first epoch
    assert _epoch_metrics(first, 0)["train/loss_epoch"] == pytest.approx(
        _epoch_metrics(full, 0)["train/loss_epoch"], rel=1e-5
    )


@pytest.mark.slow
def test_last_checkpoint_is_the_latest_epoch_even_after_a_worse_one(tiny_landmarks, tmp_path):
    # monitor "epoch" in mode min: epoch 0 stays the best, every later epoch is "worse"
    run_dir = _train(
        tiny_landmarks,
        tmp_path,
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.monitor=epoch",
        "callbacks.model_checkpoint.mode=min",
    )
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
    assert torch.load(checkpoints / "epoch_000.ckpt", weights_only=False)["epoch"] == 0
