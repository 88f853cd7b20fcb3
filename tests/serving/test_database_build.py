"""Sharded database builds through ``trainer.predict``: a 2-process DDP build gives the
1-process vectors, a SIGKILLed build resumes and embeds only the missing shards, and a
database shrunk and grown by ``remove`` / ``add`` answers as one built in one go. On a
small generated toy set (40 images) with the pip package's ImageNet EfficientNet-Lite0
at 64 px."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from retrieval.acquisition.toy import ensure_toy_dataset
from retrieval.serving.database import load_database
from retrieval.serving.prediction_writer import ShardWriter
from tests.helpers.processes import temporary_files, wait_for_no_survivors
from tests.helpers.runs import REPO_ROOT, finish, run_ok, start_script

TOY = {"landmarks": 4, "views_per_landmark": 8, "distractors": 8}  # 40 images


class KillAfterShards(L.Callback):
    """SIGKILLs its own build once ``shards`` shard files are on disk, as a cluster
    pre-empts a job: no exception, no ``finally``, no Lightning teardown."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def on_predict_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        writer = next(c for c in trainer.callbacks if isinstance(c, ShardWriter))  # type: ignore[attr-defined]
        if len(list(writer.plan.folder.glob("shard-*.npz"))) >= self.shards:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("toy_data")
    ensure_toy_dataset(data, progress=False, **TOY)
    return data


def overrides(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "build",
        "dataset=toy",
        f"paths.data_dir={data}",
        *(f"+dataset.ground_truth.{k}={v}" for k, v in TOY.items()),
        "dataset.image_size=64",
        "dataset.eval_batch_size=4",
        "dataset.num_workers=0",
        f"paths.log_dir={tmp / 'logs'}",
        f"db_dir={tmp / 'db'}",
        "dtype=float32",
        "whitening.enabled=false",
        "embed.shard_size=8",  # 5 shards of 8 images, 2 batches each
        *extra,
    ]


def build(data: Path, tmp: Path, *extra: str) -> tuple[Path, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    result = run_ok("-m", "retrieval.pipelines.database", *overrides(data, tmp, *extra), cwd=tmp)
    return tmp / "db", result.stdout


def embedded_count(stdout: str) -> int:
    found = re.search(r"embedded (\d+) images in 5 shard\(s\) of 8", stdout)
    assert found is not None, stdout
    return int(found[1])


@pytest.fixture(scope="module")
def one_process(toy_data, tmp_path_factory) -> Path:
    db, stdout = build(toy_data, tmp_path_factory.mktemp("one"))
    assert embedded_count(stdout) == 40
    return db


def assert_same_database(got: Path, expected: Path) -> None:
    a, b = load_database(got), load_database(expected)
    assert a.image_names == b.image_names and a.image_paths == b.image_paths
    assert np.abs(a.embeddings.astype(np.float64) - b.embeddings).max() <= 1e-6


@pytest.mark.slow
def test_two_process_ddp_build_gives_the_one_process_vectors(toy_data, one_process, tmp_path):
    db, stdout = build(toy_data, tmp_path, "trainer=ddp_cpu")
    assert embedded_count(stdout) == 40 and stdout.count("database of 40 images") == 1  # rank 0 only
    assert_same_database(db, one_process)
    meta = load_database(db)
    assert [(s["first"], s["count"]) for s in meta.shards] == [(0, 40)]


@pytest.mark.slow
def test_killed_build_resumes_with_only_the_missing_shards(toy_data, one_process, tmp_path):
    kill = [
        f"+embed.callbacks.kill._target_={__name__}.KillAfterShards",
        "+embed.callbacks.kill.shards=4",
        "dataset.num_workers=2",  # its loader workers must die with it
    ]
    env = {"PYTHONPATH": str(REPO_ROOT)}  # the callback lives in this test module
    process = start_script(
        "-m",
        "retrieval.pipelines.database",
        *overrides(toy_data, tmp_path, *kill),
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )
    result = finish(process)
    assert result.returncode == -9, result.stderr[-3000:]
    assert wait_for_no_survivors(process.pid) == []
    assert not (tmp_path / "db").exists()
    work = tmp_path / ".db.shards"
    (folder,) = work.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [f"shard-00000{i}.npz" for i in range(4)]
    # what a kill in the middle of a shard's write leaves: removed by the next start
    stale = folder / f".shard-000004.npz.tmp-{process.pid}-0123abcd.npz"
    stale.write_bytes(b"half a shard")

    # resumed on 2 processes: one shard left, so rank 1 has none (it must not hang or fail)
    db, stdout = build(toy_data, tmp_path, "trainer=ddp_cpu")
    assert embedded_count(stdout) == 8  # shard 4 only: nothing finished is redone
    assert "32 came from the shards of an interrupted build" in stdout
    assert_same_database(db, one_process)
    assert not work.exists() and temporary_files(tmp_path / "db") == [] and not stale.exists()


def test_shards_of_other_settings_are_never_reused(toy_data, tmp_path):
    from retrieval.serving.shards import ShardPlan

    paths = [f"/images/{i}.jpg" for i in range(10)]
    plan = ShardPlan.create(tmp_path, {"scales": [1.0]}, paths, 4)
    assert plan.prepare() == [0, 1, 2]
    plan.write(1, np.arange(4, 8), np.ones((4, 3)), "run")
    assert ShardPlan.create(tmp_path, {"scales": [1.0]}, paths, 4).prepare() == [0, 2]
    other = ShardPlan.create(tmp_path, {"scales": [1.0, 0.7]}, paths, 4)
    assert other.folder != plan.folder and not plan.folder.exists() and other.prepare() == [0, 1, 2]
    with pytest.raises(Exception, match="not its block"):
        other.write(0, np.arange(1, 5), np.ones((4, 3)), "run")
    for shard in (0, 1):
        other.write(shard, np.asarray(other.rows(shard)), np.ones((len(other.rows(shard)), 3)), "run")
    with pytest.raises(Exception, match="shard 2 .* is missing"):
        other.merge()
