"""search=milvus on embedded milvus-lite: exact top-k with FLAT, the target recall with HNSW,
metadata filters, reuse of the stored collection, and the query command on a database."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from retrieval.pipelines.query import run_query
from retrieval.serving.auto_index import recall_at_k
from retrieval.serving.search import IndexSource, SearchIndex
from tests.serving.test_search_auto import clustered
from tests.serving.test_serving import ROOT, built, data  # noqa: F401 (fixtures)

pytest.importorskip("milvus_lite", reason="pip install 'retrieval[milvus]'")

N, D = 10_000, 32


@pytest.fixture(scope="module")
def vectors():
    return clustered(N, D, seed=3), clustered(100, D, seed=4)


def milvus(vectors, folder, **params) -> SearchIndex:
    names = [f"{'a' if i % 2 else 'b'}_{i:05d}" for i in range(len(vectors))]
    return SearchIndex(vectors, backend="milvus", source=IndexSource(names, "toy", folder), **params)


@pytest.fixture(scope="module")
def flat(vectors, tmp_path_factory):
    folder = tmp_path_factory.mktemp("milvus")
    return milvus(vectors[0], folder, index_type="FLAT"), folder


def test_flat_collection_returns_the_exact_top_k(vectors, flat):
    database, queries = vectors
    index, folder = flat
    assert (folder / "milvus.db").exists()  # the embedded file, beside the database
    scores, indices = index.search(queries, 10)
    exact_scores, exact = SearchIndex(database).search(queries, 10)
    np.testing.assert_array_equal(indices, exact)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_filters_and_reuse(vectors, flat, caplog):
    database, queries = vectors
    index, folder = flat
    _, only_a = index.search(queries[:5], 10, filter='name like "a_%"')
    assert (only_a % 2 == 1).all()  # odd rows are named a_*
    _, same = index.search(queries[:5], 10, filter='dataset == "toy"')
    np.testing.assert_array_equal(same, index.search(queries[:5], 10)[1])
    scores, none = index.search(queries[:2], 10, filter='dataset == "other"')
    assert (none == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError, match="needs search=milvus"):
        SearchIndex(database).search(queries[:1], 3, filter='dataset == "toy"')
    with caplog.at_level(logging.INFO, logger="retrieval.serving.milvus_index"):
        again = milvus(database, folder, index_type="FLAT")
    assert "reusing collection" in caplog.text  # same vectors and names: nothing re-inserted
    np.testing.assert_array_equal(again.search(queries, 10)[1], index.search(queries, 10)[1])


@pytest.mark.slow  # HNSW build in milvus-lite: ~10 s on 2 cores
def test_hnsw_collection_meets_the_recall_target(vectors, tmp_path):
    database, queries = vectors
    index = milvus(
        database,
        tmp_path,
        index_type="HNSW",
        index_params={"M": 16, "efConstruction": 100},
        search_params={"ef": 32},
    )
    exact = SearchIndex(database).search(queries, 10)[1]
    assert recall_at_k(index.search(queries, 10)[1], exact) >= 0.95


@pytest.mark.slow  # builds a database through the CLI (shared fixture)
def test_query_command_on_a_milvus_lite_database(built, data, tmp_path):  # noqa: F811
    db = shutil.copytree(built[0], tmp_path / "db")  # milvus.db goes beside the database
    image = data / "oxford5k" / "jpg" / "tower_000002.jpg"
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "query.yaml",
            overrides=[f"image={image}", f"db={db}", "k=4", "search=milvus", "search.index_type=FLAT"],
        )
    matches = run_query(cfg)
    assert [m.rank for m in matches] == [1, 2, 3, 4]
    assert matches[0].path == str(image) and matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert (db / "milvus.db").exists()
