"""train.py and evaluate.py run as a user runs them: subprocesses with Hydra overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.runs import REPO_ROOT as ROOT
from tests.helpers.runs import run_ok, small_run
from tests.helpers.runs import run_script as run


def test_missing_dataset_exits_with_one_paragraph(tmp_path):
    result = run(
        "train.py",
        "dataset=paris6k",
        "paths.data_dir=/nonexistent",
        "model.net.backbone.weights=none",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "Dataset 'paris6k' was not found" in message and "/nonexistent/paris6k" in message
    assert "dataset=toy" in message


def test_fast_dev_run_trains_one_batch(tiny_landmarks, tmp_path):
    result = run_ok("train.py", *small_run(tiny_landmarks, tmp_path), "debug=fast", cwd=tmp_path)
    assert "fast_dev_run" in result.stdout + result.stderr
    # a smoke test writes its config, log and plots only: no checkpoint, no W&B or CSV run
    [run_dir] = (tmp_path / "logs" / "debug" / "runs").iterdir()
    written = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith((".hydra/", "plots/"))] == ["debug.log"], written


@pytest.fixture(scope="module")
def trained_run(tiny_landmarks, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("train")
    run_ok("train.py", *small_run(tiny_landmarks, tmp), "trainer.max_epochs=1", cwd=tmp)
    return tmp, next((tmp / "logs" / "train" / "runs").iterdir())


def test_training_reports_untrained_and_trained_metrics(trained_run):
    _, run_dir = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"untrained", "trained"} <= metrics["results"].keys()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").read_text().count("val/mAP") == 1  # header


def test_evaluate_checkpoint_writes_json(tiny_landmarks, trained_run):
    tmp, run_dir = trained_run
    out = tmp / "eval.json"
    result = run_ok(
        "evaluate.py",
        *small_run(tiny_landmarks, tmp),
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"output_json={out}",
        cwd=tmp,
    )
    report = json.loads(out.read_text())
    assert report["protocol"] == "classic" and report["dataset"] == "oxford5k"
    assert set(report["metrics"]) >= {"mAP", "mP@1", "mP@5", "mP@10", "AP@10"}
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert len(report["per_query_ap"]["classic"]) == 4
    assert len(report["checkpoint_sha256"]) == 64
    assert report["config"]["dataset"]["name"] == "oxford5k"
    assert "mAP" in result.stdout
    # the plots of the evaluated embeddings land beside the JSON
    assert (tmp / "embeddings_tsne.png").is_file() and (tmp / "retrieval_grid.png").is_file()


def test_evaluate_refuses_a_checkpoint_of_another_model(tiny_landmarks, trained_run):
    tmp, run_dir = trained_run
    result = run(
        "evaluate.py",
        *small_run(tiny_landmarks, tmp),
        "model.net.backbone.name=resnet34",
        "model.net.backbone.weights=none",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        cwd=tmp,
    )
    assert result.returncode == 2
    assert "was trained with another model" in result.stderr


def test_ssim_mining_feeds_training(tiny_landmarks, tmp_path):
    """mining=ssim end to end: pools mined and cached, triplets drawn from them."""
    result = run_ok(
        "train.py",
        *small_run(tiny_landmarks, tmp_path),
        "debug=fast",
        "mining=ssim",
        "mining.crop_size=24",
        "mining.top_k=3",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    query_files = list((tmp_path / "cache").rglob("ssim-*/*.json"))
    assert sorted(f.stem for f in query_files if f.name != "index.json") == [
        "arch_000000",
        "arch_000001",
        "tower_000000",
        "tower_000001",
    ]  # one per query
    result = run_ok(
        "-m",
        "retrieval.pipelines.mine",
        "dataset=oxford5k",
        f"paths.data_dir={tiny_landmarks}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "mining.crop_size=24",
        "mining.top_k=3",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=ROOT,
    )
    assert "4 queries, pool sizes min 3" in result.stdout


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_users_add_their_own_configs_through_the_search_path(tmp_path, how):
    """A user's experiment file outside the package composes with the shipped groups."""
    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_toy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /pooling: mac\ntrainer:\n  max_epochs: 3\n"
    )
    where = ["--config-dir", str(mine)] if how == "--config-dir" else [f"hydra.searchpath=[file://{mine}]"]
    job = run_ok("train.py", *where, "experiment=my_toy", "--cfg", "job", cwd=tmp_path).stdout
    assert "_target_: retrieval.models.pooling.MAC" in job and "max_epochs: 3" in job
