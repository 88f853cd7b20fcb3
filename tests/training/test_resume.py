"""A run resumed from a checkpoint replays the uninterrupted run exactly: from an epoch's
end, and from a mid-epoch checkpoint of a run SIGKILLed as a cluster pre-empts a job."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import temporary_files, wait_for_no_survivors
from tests.helpers.runs import finish, run_ok, small_run, start_script

# augmentations on, so that the RNG of the transforms matters too; 12 triplets in batches of
# 2: six batches per epoch, loaded by two workers (what made resume inexact before)
SETTINGS = [
    "augmentation=reference",
    "trainer.deterministic=true",
    "evaluate_before=false",
    "evaluate_after=false",
    "dataset.triplets_per_epoch=12",
    "dataset.batch_size=2",
    "dataset.num_workers=2",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=2",
]
BATCHES_PER_EPOCH = 6


def _train(data: Path, tmp: Path, *overrides: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    run_ok("train.py", *small_run(data, tmp), *SETTINGS, *overrides, cwd=tmp)
    return _run_dir(tmp)


def _run_dir(tmp: Path) -> Path:
    return next((tmp / "logs" / "train" / "runs").iterdir())


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _epoch_metrics(run_dir: Path, epoch: int) -> dict[str, float]:
    """The epoch's logged values (Lightning's CSV has one row per logging call)."""
    values: dict[str, float] = {}
    for row in _rows(run_dir):
        if row.get("epoch") == str(epoch):
            values.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return values


def _step_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss_step"]) for r in _rows(run_dir) if r.get("train/loss_step")}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


# the uninterrupted reference run, shared by every test here (each run costs tens of seconds):
# a checkpoint every 2 steps for the kill test, and "epoch" monitored in mode min, so epoch 0
# stays the best and epoch 1 is "worse" (last.ckpt must still be epoch 1)
EVERY_2 = "callbacks.step_checkpoint.every_n_train_steps=2"
WORSE_LATER = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]


@pytest.fixture(scope="module")
def full(tiny_landmarks, tmp_path_factory) -> Path:
    return _train(tiny_landmarks, tmp_path_factory.mktemp("full"), EVERY_2, *WORSE_LATER)


def _same_weights(a: Path, b: Path) -> bool:
    left, right = _weights(a / "checkpoints" / "last.ckpt"), _weights(b / "checkpoints" / "last.ckpt")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(full, tiny_landmarks, tmp_path):
    first = _train(tiny_landmarks, tmp_path / "first", "trainer.max_epochs=1")
    resumed = _train(tiny_landmarks, tmp_path / "resumed", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    assert len(_step_losses(full)) == 2 * BATCHES_PER_EPOCH
    expected, got = _epoch_metrics(full, 1), _epoch_metrics(resumed, 1)
    assert {"train/loss_epoch", "val/mAP", "val/loss"} <= expected.keys()
    assert _epoch_metrics(resumed, 0) == {}  # epoch 0 was not trained again
    for key in ("train/loss_epoch", "val/mAP", "val/loss"):
        assert got[key] == expected[key], key
    # every step of the second epoch, and the final weights, bit for bit
    assert _step_losses(resumed) == {k: v for k, v in _step_losses(full).items() if k >= BATCHES_PER_EPOCH}
    assert _same_weights(full, resumed)
    # the interrupted run's first epoch was the full run's first epoch
    assert _epoch_metrics(first, 0)["train/loss_epoch"] == _epoch_metrics(full, 0)["train/loss_epoch"]


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_at_the_next_batch(full, tiny_landmarks, tmp_path):
    # a checkpoint every 2 steps; SIGKILL after step 8 (epoch 1, batch 2 of 6): no teardown
    killed_tmp = tmp_path / "killed"
    killed_tmp.mkdir()
    process = start_script(
        "train.py",
        *small_run(tiny_landmarks, killed_tmp),
        *SETTINGS,
        EVERY_2,
        "+callbacks.kill._target_=tests.helpers.kill.KillAtStep",
        "+callbacks.kill.step=8",
        cwd=killed_tmp,
        start_new_session=True,
    )
    result = finish(process)
    assert result.returncode == -9, result.stderr[-2000:]
    assert wait_for_no_survivors(process.pid) == []  # its DataLoader workers died with it
    killed = _run_dir(killed_tmp)
    assert temporary_files(killed / "checkpoints") == []
    checkpoint = killed / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 8

    resumed = _train(tiny_landmarks, tmp_path / "resumed", f"ckpt_path={checkpoint}")
    after_kill = {k: v for k, v in _step_losses(full).items() if k >= 8}
    assert _step_losses(resumed) == after_kill  # batches 2..5 of epoch 1, none repeated
    assert _epoch_metrics(resumed, 1)["val/mAP"] == _epoch_metrics(full, 1)["val/mAP"]
    assert _same_weights(full, resumed)


@pytest.mark.slow
def test_last_checkpoint_is_the_latest_epoch_even_after_a_worse_one(full):
    checkpoints = full / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
    assert torch.load(checkpoints / "epoch_000.ckpt", weights_only=False)["epoch"] == 0
