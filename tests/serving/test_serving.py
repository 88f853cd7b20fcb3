"""Database artifact, search backends and the query CLI, on a tiny generated VGG set."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from retrieval.evaluation.vectors import l2_normalize
from retrieval.evaluation.whitening import fit_whitening
from retrieval.pipelines.query import run_query
from retrieval.serving.database import (
    FORMAT_VERSION,
    CheckpointMismatchError,
    DatabaseArtifact,
    DatabaseError,
    load_database,
)
from retrieval.serving.search import SearchIndex
from retrieval.serving.searcher import DatabaseSearcher
from retrieval.utils.errors import UserFacingError
from tests.helpers.configs import SMALL_VGG_MODEL, compose_cfg
from tests.helpers.vgg import write_vgg

ROOT = Path(__file__).resolve().parents[2]
SMALL = SMALL_VGG_MODEL


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The VGG layout with distinct random-texture images, so that top-1 is meaningful."""
    data = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for path in sorted((write_vgg(data / "oxford5k") / "jpg").glob("*.jpg")):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return data


def save_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = instantiate(compose_cfg("database.yaml", SMALL).model)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(database dir, its checkpoint, the run folder), built through the CLI as a user would."""
    tmp = tmp_path_factory.mktemp("build")
    ckpt = save_checkpoint(tmp / "model.ckpt", seed=0)
    result = run_module(
        "retrieval.pipelines.database",
        "build",
        *SMALL,
        f"ckpt_path={ckpt}",
        f"paths.data_dir={data}",
        f"paths.log_dir={tmp / 'logs'}",
        f"db_dir={tmp / 'db'}",
        "dtype=float32",
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database of 11 images" in result.stdout
    return tmp / "db", ckpt, tmp


def random_artifact(n: int = 40, d: int = 16, whiten: bool = True) -> DatabaseArtifact:
    x = l2_normalize(np.random.default_rng(1).standard_normal((n, d))).astype(np.float32)
    whitening = fit_whitening(x, dim=8) if whiten else None
    return DatabaseArtifact(
        embeddings=(whitening.apply(x) if whitening else x).astype(np.float16),
        image_paths=[f"/images/{i}.jpg" for i in range(n)],
        image_names=[str(i) for i in range(n)],
        dataset="tiny",
        image_root="/images",
        model_config={"_target_": "x", "net": {}},
        image_size=64,
        checkpoint="/ckpt",
        checkpoint_sha256="ab" * 32,
        whitening=whitening,
        whitening_info={"fit_on": "database"},
        created_at="now",
        versions={"numpy": np.__version__},
    )


def test_artifact_round_trips(tmp_path):
    artifact = random_artifact()
    path = artifact.write(tmp_path / "db")
    assert sorted(p.name for p in path.iterdir()) == ["embeddings.npy", "meta.json", "whitening.npz"]
    loaded = load_database(path)
    assert loaded.embeddings.dtype == np.float16
    np.testing.assert_array_equal(loaded.embeddings, artifact.embeddings)
    np.testing.assert_array_equal(loaded.whitening.projection, artifact.whitening.projection)
    for name in (
        "image_paths",
        "image_names",
        "dataset",
        "image_root",
        "model_config",
        "image_size",
        "checkpoint",
        "checkpoint_sha256",
        "whitening_info",
        "scales",
        "versions",
    ):
        assert getattr(loaded, name) == getattr(artifact, name), name
    assert loaded.path == path and loaded.dim == 8


def test_failed_write_leaves_no_artifact_and_keeps_the_old_one(tmp_path, monkeypatch):
    def crash(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(DatabaseArtifact, "meta", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        random_artifact().write(tmp_path / "db")
    assert list(tmp_path.iterdir()) == []  # neither db nor db.tmp-*
    monkeypatch.undo()

    old = random_artifact(n=30).write(tmp_path / "db")
    monkeypatch.setattr(DatabaseArtifact, "meta", crash)
    with pytest.raises(RuntimeError):
        random_artifact(n=50).write(tmp_path / "db", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
    assert len(load_database(old).image_paths) == 30


def test_existing_database_or_folder_is_not_replaced_silently(tmp_path):
    path = random_artifact(n=30).write(tmp_path / "db")
    with pytest.raises(DatabaseError, match="already exists; pass overwrite=true"):
        random_artifact().write(path)
    random_artifact(n=50).write(path, overwrite=True)
    assert len(load_database(path).image_paths) == 50
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(DatabaseError, match="is not a database"):
        random_artifact().write(tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unlisted(path: Path, embeddings: np.ndarray | None, truncate: str | None = None) -> None:
    """Damage a database as one built before the manifest (no sha256 to compare) would be."""
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta))
    if embeddings is not None:
        np.save(path / "embeddings.npy", embeddings)
    if truncate:
        _truncate(path / truncate)


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda p: (p / "meta.json").unlink(), "is not a database"),
        (lambda p: (p / "meta.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "meta.json").write_text(json.dumps({"format_version": 99})), "format version 99"),
        (
            lambda p: (p / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION})),
            "lacks 'images'",
        ),
        (lambda p: (p / "embeddings.npy").unlink(), "embeddings.npy is missing"),
        (
            lambda p: np.save(p / "embeddings.npy", np.zeros((3, 8), np.float16)),
            "embeddings.npy is not the file",
        ),
        (lambda p: _unlisted(p, np.zeros((3, 8), np.float16)), r"shape \(3, 8\)"),
        (lambda p: (p / "whitening.npz").unlink(), "whitening.npz is missing"),
        # same shape, rows re-ordered: only the manifest sees it
        (
            lambda p: np.save(p / "embeddings.npy", np.load(p / "embeddings.npy")[::-1]),
            "embeddings.npy is not the file",
        ),
        (lambda p: _unlisted(p, np.full((40, 8), np.nan, np.float16)), r"40 row\(s\) .* are not finite"),
        (lambda p: _unlisted(p, np.ones((40, 8), np.float16)), "are not unit vectors"),
        (lambda p: _truncate(p / "whitening.npz"), "whitening.npz is not the file"),
        (lambda p: _unlisted(p, None, truncate="whitening.npz"), "whitening.npz is unreadable"),
    ],
)
def test_broken_database_is_refused_clearly(tmp_path, breakage, message):
    path = random_artifact().write(tmp_path / "db")
    breakage(path)
    with pytest.raises(DatabaseError, match=message):
        load_database(path)


def test_missing_database_is_named(tmp_path):
    with pytest.raises(DatabaseError, match=f"{tmp_path / 'nope'} does not exist"):
        load_database(tmp_path / "nope")


def test_built_database_answers_a_query_with_the_image_itself(built, data):
    db, ckpt, _ = built
    artifact = load_database(db)
    assert artifact.checkpoint == str(ckpt) and len(artifact.checkpoint_sha256) == 64
    assert artifact.model_config["net"]["backbone"]["name"] == "resnet18" and artifact.image_size == 64
    assert artifact.whitening is not None and artifact.dim == 10  # 11 images: clipped to n - 1
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in artifact.image_paths)
    searcher = DatabaseSearcher(artifact)
    for i in (0, 5, 9):
        matches = searcher.query(artifact.image_paths[i], k=3)
        assert [m.rank for m in matches] == [1, 2, 3]
        assert matches[0].index == i and matches[0].name == artifact.image_names[i]
        assert matches[0].score == pytest.approx(1.0, abs=1e-4) and matches[1].score < 0.99
    cropped = searcher.query(artifact.image_paths[0], k=3, bbox=[0, 0, 30, 20])
    assert cropped[0].score < 0.999  # the crop is another image


def test_other_checkpoint_is_refused(built):
    db, _, tmp = built
    other = save_checkpoint(tmp / "other.ckpt", seed=1)
    with pytest.raises(CheckpointMismatchError, match="built with another checkpoint; rebuild it"):
        DatabaseSearcher(load_database(db), ckpt_path=other)


def test_query_cli_prints_json(built, data, tmp_path):
    db, _, _ = built
    image = data / "oxford5k" / "jpg" / "tower_000002.jpg"
    result = run_module(
        "retrieval.pipelines.query", f"image={image}", f"db={db}", "k=4", "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    matches = json.loads(result.stdout)
    assert [m["rank"] for m in matches] == [1, 2, 3, 4]
    assert matches[0]["path"] == str(image) and matches[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert list(tmp_path.iterdir()) == []  # a query writes no run folder


@pytest.mark.parametrize(
    "image,db,message",
    [
        ("missing.jpg", "db", "missing.jpg does not exist"),
        ("notanimage.jpg", "db", "could not be read as an image"),
        ("notanimage.jpg", "nodb", "nodb does not exist"),
        ("???", "db", "image= is required"),
    ],
)
def test_query_errors_are_clear(built, tmp_path, image, db, message):
    (tmp_path / "notanimage.jpg").write_text("hello")
    overrides = [f"db={built[0] if db == 'db' else tmp_path / db}"]
    if image != "???":
        overrides.append(f"image={tmp_path / image}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("query.yaml", overrides=overrides)
    with pytest.raises(UserFacingError, match=message):
        run_query(cfg)


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("faiss_min_batch", [None, 1])  # NumPy only; faiss knn for every batch
@pytest.mark.parametrize("nq", [1, 70])
def test_exact_search_agrees_with_brute_force(faiss_min_batch, nq):
    rng = np.random.default_rng(nq)
    vectors = l2_normalize(rng.standard_normal((3000, 48))).astype(np.float32)
    queries = l2_normalize(rng.standard_normal((nq, 48))).astype(np.float32)
    scores, indices = SearchIndex(vectors, faiss_min_batch=faiss_min_batch).search(queries, k=10)
    expected_scores, expected = brute_force(queries, vectors, 10)
    assert indices.shape == (nq, 10) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_k_beyond_the_database_returns_everything_ranked():
    vectors = l2_normalize(np.random.default_rng(0).standard_normal((5, 8))).astype(np.float32)
    scores, indices = SearchIndex(vectors).search(vectors[2], k=10)
    assert indices.shape == (1, 5) and indices[0, 0] == 2 and np.all(np.diff(scores[0]) <= 0)
    with pytest.raises(ValueError, match="dimension 7"):
        SearchIndex(vectors).search(np.zeros((1, 7)), k=1)


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_search_config_finds_the_neighbours(config):
    """Clustered descriptors (like real ones, unlike isotropic noise); queries are noisy copies."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 64))
    vectors = l2_normalize(centres[rng.integers(0, 30, 2000)] + 0.6 * rng.standard_normal((2000, 64)))
    sources = rng.choice(2000, 100, replace=False)
    queries = l2_normalize(vectors[sources] + 0.05 * rng.standard_normal((100, 64))).astype(np.float32)
    index = instantiate(OmegaConf.load(config))(vectors.astype(np.float32))
    scores, indices = index.search(queries, k=10)
    _, exact = brute_force(queries, vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact)])
    assert recall >= 0.8, f"{config.stem}: recall@10 {recall:.2f}"
    assert np.mean(indices[:, 0] == sources) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_default_whitening_is_kept_only_where_it_does_not_lower_the_map(data, tmp_path):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", seed=0)
    common = [*SMALL, f"ckpt_path={ckpt}", f"paths.data_dir={data}", f"paths.log_dir={tmp_path / 'logs'}"]
    result = run_module(
        "retrieval.pipelines.database", "build", *common, f"db_dir={tmp_path / 'db'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = re.search(
        r"mAP over the oxford5k queries ([\d.]+) plain, ([\d.]+) PCA-whitened", result.stdout
    )
    assert measured is not None, result.stdout
    plain, whitened = (float(v) for v in measured.groups())
    meta = json.loads((tmp_path / "db" / "meta.json").read_text())
    assert (meta["whitening"] is not None) == (whitened > plain)
    if meta["whitening"] is not None:
        assert meta["whitening"]["chosen_by"]["whitened"] == pytest.approx(whitened / 100, abs=1e-4)
    bad = run_module(
        "retrieval.pipelines.database", "build", *common, "whitening.enabled=maybe", cwd=tmp_path
    )
    assert bad.returncode == 2 and "whitening.enabled='maybe': use true, false or auto" in bad.stderr


def test_self_check_samples_a_bounded_seeded_spread_of_rows():
    from retrieval.serving.self_check import self_check_rows

    rows = self_check_rows(1_000_000)
    assert (
        len(rows) == 8 and rows[0] == 0 and rows == sorted(set(rows)) and rows == self_check_rows(1_000_000)
    )
    assert all(k * 125_000 <= r < (k + 1) * 125_000 for k, r in enumerate(rows))  # one per eighth
    assert self_check_rows(5) == [0, 1, 2, 3, 4]


def test_self_check_catches_rows_swapped_past_the_first(small_database, tmp_path):
    """Rows 1.. reversed, row 0 intact and no manifest to compare: only re-embedding a
    sample of rows sees it (the check of row 0 alone passed such a database)."""
    from retrieval.serving.self_check import self_check

    db = Path(shutil.copytree(small_database, tmp_path / "db"))
    stored = np.load(db / "embeddings.npy")
    self_check(DatabaseSearcher(load_database(db)))
    _unlisted(db, np.concatenate([stored[:1], stored[1:][::-1]]))
    with pytest.raises(DatabaseError, match=r"does not match its model: re-embedding .* \(row \d+\)"):
        self_check(DatabaseSearcher(load_database(db)))
    image = load_database(db).image_paths[0]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("query.yaml", overrides=[f"image={image}", f"db={db}", "k=2", "check=true"])
    with pytest.raises(DatabaseError, match=r"\(row \d+\)"):
        run_query(cfg)


def test_manifest_names_the_shard_whose_rows_changed(tmp_path):
    artifact = random_artifact()
    artifact.shards = [
        {"first": 0, "count": 25, "source": "build"},
        {"first": 25, "count": 15, "source": "add"},
    ]
    path = artifact.write(tmp_path / "db")
    recorded = json.loads((path / "meta.json").read_text())["shards"]
    assert [(s["first"], s["count"], len(s["sha256"])) for s in recorded] == [(0, 25, 64), (25, 15, 64)]
    assert load_database(path).shards == artifact.shards
    rows = np.load(path / "embeddings.npy")
    rows[30] = rows[31]
    np.save(path / "embeddings.npy", rows)
    with pytest.raises(DatabaseError, match=r"is not the file .*; changed: rows 25-39\)"):
        load_database(path)
