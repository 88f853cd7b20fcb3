"""Multi-process (DDP, gloo on CPU) training and evaluation give the single-process numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import run_ok, small_run

pytestmark = pytest.mark.slow


def _small(data_root: Path, tmp: Path) -> list[str]:
    return [*small_run(data_root.parent, tmp), "logger=csv", "evaluate_before=false"]


def _metrics(tmp: Path) -> dict:
    run_dir = next((tmp / "logs" / "train" / "runs").iterdir())
    return json.loads((run_dir / "metrics.json").read_text())


def test_ddp_run_matches_a_single_process_evaluation(small_vgg_root, tmp_path):
    # 2 processes: the 11 database images are padded to 12 by the DistributedSampler, so a
    # callback that kept the duplicate or lost an image would give other numbers
    ddp = tmp_path / "ddp"
    result = run_ok(
        "train.py", *_small(small_vgg_root, ddp), "trainer=ddp_cpu", "trainer.max_epochs=1", cwd=tmp_path
    )
    assert result.stdout.count("metrics written to") == 1  # rank 0 reports, rank 1 does not
    trained = _metrics(ddp)
    best = trained["best_checkpoint"]
    assert Path(best).is_file()

    single = tmp_path / "single"
    result = run_ok(
        "train.py", *_small(small_vgg_root, single), "train=false", f"ckpt_path={best}", cwd=tmp_path
    )
    expected = _metrics(single)["results"]["checkpoint"]
    got = trained["results"]["trained"]
    assert 0.0 < expected["mAP"] < 1.0  # random textures: a ranking with mistakes to reproduce
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name


def test_a_classification_loss_trains_under_ddp_and_its_class_weights_are_checkpointed(tmp_path):
    # every process sizes the class weights in configure_model, before DDP wraps the module
    # (DDP refuses uninitialised parameters); the checkpoint holds the synchronised weights
    run = tmp_path / "arcface"
    result = run_ok(
        "train.py",
        "dataset=toy_classes",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={run / 'logs'}",
        "dataset.image_size=32",
        "loss=arcface",
        "model.loss.lr=1e-2",
        "head=linear",
        "model.net.projection.out_features=16",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "evaluate_before=false",
        cwd=tmp_path,
    )
    assert result.stdout.count("metrics written to") == 1
    best = Path(_metrics(run)["best_checkpoint"])
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert state["loss.criterion.W"].shape == (16, 10)  # 16-d head x the set's 10 classes
