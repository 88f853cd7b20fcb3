"""Experiment tracking: retrieval grids, embedding plots, the W&B logger and offline runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.evaluation.protocols import EvaluationResult
from retrieval.tracking.embedding_plot import group_colours, plot_embeddings, project_2d
from retrieval.tracking.offline_run import offline_runs, read_offline_run
from retrieval.tracking.retrieval_grid import (
    BLUE,
    BOX,
    COLOURS,
    build_grid_rows,
    cell_origin,
    draw_retrieval_grid,
    save_retrieval_grid,
)
from retrieval.tracking.wandb_run import create_wandb_logger, finishing_wandb_run
from tests.helpers.runs import run_ok, tiny_run


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        Image.new("RGB", (60, 40), (20 * i, 100, 200 - 15 * i)).save(folder / f"img_{i}.jpg")
        paths.append(folder / f"img_{i}.jpg")
    return paths


def _landmark_gt(tmp_path: Path, protocol: str = "classic") -> RetrievalGroundTruth:
    """6 database images; query 0 (landmark 'arch'): good 1, ok 3, junk 2 (or easy/hard/junk)."""
    paths = _images(tmp_path / "jpg", 6)
    labels = dict(good=[1], ok=[3], junk=[2]) if protocol == "classic" else dict(easy=[1], hard=[3], junk=[2])
    queries = [
        Query(
            "img_0", "arch", paths[0], (5.0, 5.0, 40.0, 30.0), **{k: np.array(v) for k, v in labels.items()}
        ),
        Query("img_5", "tower", paths[5], None, good=np.array([4])),
    ]
    return RetrievalGroundTruth("tiny", [p.stem for p in paths], paths, queries, protocol)


def _result(
    rankings: list[list[int]], embeddings: np.ndarray | None = None, protocol: str = "classic"
) -> EvaluationResult:
    aps = np.array([0.5] + [np.nan] * (len(rankings) - 1))
    return EvaluationResult(
        protocol,
        {"mAP": 0.5},
        {protocol: aps},
        np.array(rankings),
        None if embeddings is None else embeddings[: len(rankings)],
        embeddings,
    )


def test_grid_frames_each_result_by_its_ground_truth(tmp_path):
    gt = _landmark_gt(tmp_path)
    rows = build_grid_rows(_result([[1, 2, 4, 3, 0], [4, 5, 0, 1, 2]]), gt, [0, 1], top_k=5, thumb=32)
    grid = draw_retrieval_grid(rows, thumb=32, border=4, title="test")
    expected = ["query", "good", "junk", "wrong", "ok", "wrong"]  # ranked 1, 2, 4, 3, 0
    for column, label in enumerate(expected):
        x, y = cell_origin(0, column, thumb=32, border=4)
        assert grid.getpixel((x + 1, y + 1)) == COLOURS[label], (column, label)
    assert COLOURS["good"] == COLOURS["ok"] != COLOURS["junk"] != COLOURS["wrong"]
    assert [c.caption for c in rows[0].results][:2] == ["1. good", "2. junk"]
    assert rows[0].query.caption == "AP 50 · img_0"

    # the query's box is drawn into its thumbnail; the second query has none
    def box_pixels(row: int) -> int:  # near the box colour (shrinking blends its edges)
        x, y = cell_origin(row, 0, thumb=32, border=4)
        thumb = np.asarray(grid.crop((x + 4, y + 4, x + 36, y + 36))).reshape(-1, 3).astype(int)
        return int((np.abs(thumb - BOX).max(axis=1) < 60).sum())

    assert box_pixels(0) > 20 and box_pixels(1) == 0
    assert grid.getpixel(cell_origin(1, 0, thumb=32, border=4)) == BLUE


def test_relevance_of_revisited_and_class_labelled_ground_truth(tmp_path):
    revisited = _landmark_gt(tmp_path, "revisited")
    assert revisited.relevance(0, [3, 1, 2, 0]) == ["hard", "easy", "junk", "wrong"]
    assert revisited.database_groups() == ["other", "arch", "other", "arch", "tower", "other"]
    paths = _images(tmp_path / "gallery", 4)  # leave-one-out gallery
    gallery = ClassGroundTruth("g", [p.stem for p in paths], paths, np.array([0, 1, 0, 1]), ["daisy", "rose"])
    assert gallery.relevance(0, [2, 1]) == ["same", "wrong"]
    assert gallery.query_groups() == ["daisy", "rose", "daisy", "rose"]
    rows = build_grid_rows(_result([[2, 1, 3], [3, 0, 2]], protocol="leave_one_out"), gallery, [0, 1], 3, 32)
    assert [c.label for c in rows[1].results] == ["same", "wrong", "wrong"]
    unknown = SimpleNamespace(protocol="recall", image_paths=paths)  # no labels: not drawn
    assert save_retrieval_grid(_result([[0, 1]], protocol="recall"), unknown, tmp_path / "g.png") is None
    assert not (tmp_path / "g.png").exists()


def _clusters(n_per: int = 25, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 4
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_projection_keeps_clusters_apart(method):
    x, labels = _clusters()
    points = project_2d(x, method, seed=0)
    assert points.shape == (len(x), 2)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(x)) * 1e9
    assert (labels[distances.argmin(axis=1)] == labels).mean() == 1.0  # 1-NN in the plot


def test_embedding_plot_colours_database_by_landmark(tmp_path):
    paths = _images(tmp_path / "jpg", 75)
    x, labels = _clusters()
    landmarks = ["arch", "tower", "bridge"]
    # the first image of each cluster is its query; cluster 2 has no query: distractors
    queries = [
        Query(f"q{c}", landmarks[c], paths[c * 25], None, good=np.arange(c * 25, c * 25 + 25)) for c in (0, 1)
    ]
    gt = RetrievalGroundTruth("tiny", [p.stem for p in paths], paths, queries, "classic")
    result = EvaluationResult("classic", {}, {}, np.zeros((2, 75), int), x[[0, 25]], x)
    out = plot_embeddings(result, gt, tmp_path / "plots" / "tsne.png", method="tsne")
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    colours = group_colours([str(g) for g in gt.database_groups()])
    assert set(colours) == {"arch", "tower", "other"}
    for name, colour in colours.items():  # dots beyond the legend's 11x11 swatch
        assert (pixels == colour).all(axis=1).sum() > 121 + 40, name
    assert (pixels == (0, 0, 0)).all(axis=1).sum() > 2 * 30  # the two outlined query squares


def test_wandb_logger_is_offline_and_may_log_checkpoints(tmp_path):
    """Lightning refuses offline=True with log_model; the factory passes mode to wandb.init."""
    logger = create_wandb_logger(
        save_dir=str(tmp_path / "out"),
        mode="dryrun",
        name="train-toy",
        tags=["dev", "x" * 100],
        log_model=True,
    )
    init = logger._wandb_init
    assert init["mode"] == "offline" and init["name"] == "train-toy" and init["group"] is None
    assert init["tags"] == ["dev", "x" * 64]  # W&B's tag length limit
    assert (tmp_path / "out").is_dir()


def test_offline_run_reader_and_failed_job_marks_its_run(tmp_path, monkeypatch):
    import wandb

    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    with pytest.raises(ValueError), finishing_wandb_run():
        run = wandb.init(project="t", dir=str(tmp_path), mode="offline", name="job", config={"lr": 0.1})
        for step in range(3):
            run.log({"val/mAP": step / 10, "nested": {"a": step}})
        run.summary["best"] = 7
        raise ValueError("the job failed")
    assert wandb.run is None  # finished: the next job starts its own run
    [offline] = offline_runs(tmp_path, wait_s=30)
    assert offline == read_offline_run(next(offline.path.glob("*.wandb")))
    assert offline.name == "job" and offline.config["lr"] == 0.1 and offline.exit_code == 1
    assert [row["val/mAP"] for row in offline.history] == [0.0, 0.1, 0.2]
    assert offline.summary["val/mAP"] == 0.2 and offline.summary["best"] == 7


@pytest.mark.slow
def test_offline_wandb_run_holds_config_summary_grid_and_checkpoint(tiny_landmarks, tmp_path):
    run_ok(
        "train.py",
        *tiny_run(
            tiny_landmarks, tmp_path / "logs", "logger.wandb.log_model=true", "model.optimizer.lr=2e-5"
        ),
        cwd=tmp_path,
    )
    [run_dir] = (tmp_path / "logs" / "train" / "runs").iterdir()
    [run] = offline_runs(run_dir)
    assert run.exit_code == 0 and run.name.startswith("train-oxford5k[") and "dev" in run.tags
    # the fully resolved config, plus Hydra's group choices
    assert run.config["model"]["optimizer"]["lr"] == 2e-5
    assert run.config["paths"]["data_dir"] == str(tiny_landmarks)
    assert run.config["hydra"]["choices"]["dataset"] == "oxford5k"
    assert 0.0 <= run.summary["val/mAP"] <= 1.0 and "lr-Adam" in run.summary
    # untrained, epoch 0 and best-checkpoint evaluations: three grids, tables and t-SNE maps
    assert sum("val/mAP" in row for row in run.history) == 3
    grids = [p for p in run.media() if p.name.startswith("retrieval_grid")]
    assert len(grids) == 3 and all(Image.open(p).size[0] > 500 for p in grids)
    assert sum(p.name.startswith("embeddings") for p in run.media()) == 3
    assert run.summary["val/per_query_ap/nrows"] == 4
    assert sorted(p.name for p in (run_dir / "plots").glob("retrieval_grid_*.png")) == [
        "retrieval_grid_000_validate_epoch000.png",
        "retrieval_grid_001_fit_epoch000.png",
        "retrieval_grid_002_validate_epoch001.png",
    ]
    assert any(name.startswith("model-") for name in run.artifacts)  # logger.wandb.log_model=true
