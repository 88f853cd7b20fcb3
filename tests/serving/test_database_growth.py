"""``retrieval-database remove`` / ``add``: a database shrunk and grown again holds the rows
of one built in one go (stored whitening reused), so it answers every query the same; only
the new images are embedded. The toy set (40 images), ImageNet EfficientNet-Lite0 at 64 px."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from retrieval.acquisition.toy import ensure_toy_dataset
from retrieval.pipelines.database import build_database, database_job
from retrieval.serving.database import DatabaseError, load_database
from retrieval.serving.search import SearchIndex
from retrieval.utils.errors import UserFacingError
from tests.helpers.configs import compose_cfg

TOY = {"landmarks": 4, "views_per_landmark": 8, "distractors": 8}


def database_cfg(data: Path, tmp: Path, *extra: str):
    cfg = compose_cfg(
        "database.yaml",
        [
            "dataset=toy",
            f"paths.data_dir={data}",
            *(f"+dataset.ground_truth.{k}={v}" for k, v in TOY.items()),
            "dataset.image_size=64",
            "dataset.num_workers=0",
            "dtype=float32",
            "embed.shard_size=16",
            f"db_dir={tmp / 'db'}",
            *extra,
        ],
    )
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp / "cache")
    return cfg


@pytest.fixture(scope="module")
def whitened(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grow")
    ensure_toy_dataset(tmp / "data", progress=False, **TOY)
    return build_database(database_cfg(tmp / "data", tmp, "whitening.enabled=true"))


def top10(db: Path, queries: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    artifact = load_database(db)
    scores, rows = SearchIndex(artifact.embeddings.astype(np.float32)).search(queries, k=10)
    return [[artifact.image_names[i] for i in r] for r in rows], scores


@pytest.mark.slow
def test_removed_then_added_images_give_the_fresh_build(whitened, tmp_path, capsys):
    db = shutil.copytree(whitened, tmp_path / "db")
    fresh = load_database(whitened)
    assert fresh.whitening is not None
    gone = fresh.image_names[3:40:9]  # 5 images from several shards of the build
    files = [fresh.image_paths[fresh.image_names.index(n)] for n in gone]
    data = Path(fresh.image_root).parent  # type: ignore[arg-type]

    database_job(database_cfg(data, tmp_path, "action=remove", f"names=[{','.join(gone)}]"))
    smaller = load_database(db)
    assert len(smaller.image_names) == 35 and not set(gone) & set(smaller.image_names)
    assert [(s["first"], s["count"]) for s in smaller.shards] == [(0, 35)]

    capsys.readouterr()
    database_job(database_cfg(data, tmp_path, "action=add", f"images=[{','.join(files)}]"))
    out = capsys.readouterr().out
    assert "embedded 5 images" in out and "added 5 images" in out
    grown = load_database(db)
    assert [(s["first"], s["count"], s["source"][:3]) for s in grown.shards] == [
        (0, 35, "bui"),
        (35, 5, "add"),
    ]
    assert grown.image_names[35:] == gone and grown.whitening is not None
    np.testing.assert_array_equal(grown.whitening.projection, fresh.whitening.projection)
    order = [grown.image_names.index(n) for n in fresh.image_names]
    assert np.abs(grown.embeddings[order].astype(np.float64) - fresh.embeddings).max() <= 1e-6

    queries = fresh.embeddings.astype(np.float32)
    (names_fresh, scores_fresh), (names_grown, scores_grown) = top10(whitened, queries), top10(db, queries)
    assert names_grown == names_fresh
    np.testing.assert_allclose(scores_grown, scores_fresh, atol=1e-5)

    # the same images again: nothing to embed; a whole folder adds only what is missing
    database_job(database_cfg(data, tmp_path, "action=add", f"images={Path(files[0]).parent}"))
    assert "nothing to add" in capsys.readouterr().out


@pytest.mark.slow
def test_growth_errors_name_the_bad_input(whitened, tmp_path):
    db = shutil.copytree(whitened, tmp_path / "db")
    data = Path(load_database(db).image_root).parent  # type: ignore[arg-type]
    with pytest.raises(UserFacingError, match=r"1 name\(s\) to remove are not in database .*'nope'"):
        database_job(database_cfg(data, tmp_path, "action=remove", "names=[nope]"))
    with pytest.raises(UserFacingError, match="names= is required"):
        database_job(database_cfg(data, tmp_path, "action=remove"))
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(load_database(db).image_paths[0], outside)
    with pytest.raises(UserFacingError, match="outside the database's image root"):
        database_job(database_cfg(data, tmp_path, "action=add", f"images={outside}"))
    with pytest.raises(UserFacingError, match="no such file or folder"):
        database_job(database_cfg(data, tmp_path, "action=add", f"images={tmp_path / 'nothing'}"))
    with pytest.raises(DatabaseError, match="does not exist"):
        database_job(database_cfg(data, tmp_path / "none", "action=add", f"images={outside}"))
