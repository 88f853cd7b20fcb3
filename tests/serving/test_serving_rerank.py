"""Re-ranking, metadata filters and the exact AP in the query command and the app, on the
session's small real database (11 images, 4 dataset queries)."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from retrieval.data.landmark_formats import load_classic_ground_truth
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.evaluation.ranking import rank_by_similarity
from retrieval.evaluation.reranking.superglobal import SuperGlobal
from retrieval.evaluation.vectors import cosine_similarity
from retrieval.pipelines.query import run_query
from retrieval.serving.app import SearchService
from retrieval.serving.app.web import create_app
from retrieval.serving.database import load_database
from retrieval.serving.search import SearchIndex
from retrieval.serving.searcher import DatabaseSearcher, FilterUnsupportedError
from tests.serving.test_serving import random_artifact

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def query_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("query.yaml", overrides=list(overrides))


@pytest.mark.parametrize("rerank", ["superglobal", "diffusion", "k_reciprocal"])
def test_query_rerank_equals_the_reranker_on_the_exact_top_depth(small_database, small_vgg_root, rerank):
    image = small_vgg_root / "jpg" / "arch_000001.jpg"
    # a crop: a query that is no database image (its own image would stay first everywhere)
    cfg = query_cfg(
        f"image={image}", f"db={small_database}", "k=6", "bbox=[0,0,40,30]", "json=true", f"rerank={rerank}"
    )
    matches = run_query(cfg)
    # by hand: the exact cosine top-depth of the same query vector, re-ranked, cut to k
    searcher, reranker = DatabaseSearcher(load_database(small_database)), instantiate(cfg.rerank)
    vector = searcher.embed(image, [0, 0, 40, 30])
    db = searcher.artifact.embeddings
    exact = rank_by_similarity(cosine_similarity(vector, db))[:, : reranker.depth]
    expected = reranker(vector, db, exact)[0]
    assert [m.index for m in matches] == expected[:6].tolist()
    assert [m.rank for m in matches] == [1, 2, 3, 4, 5, 6]
    # each match keeps its own cosine score, and the re-ranker did re-order this query
    np.testing.assert_allclose([m.score for m in matches], (vector @ db.T)[0][expected[:6]], atol=1e-5)
    assert expected.tolist() != exact[0].tolist()


def test_filter_on_a_backend_without_metadata_is_a_user_error(small_database, small_vgg_root):
    image = small_vgg_root / "jpg" / "arch_000001.jpg"
    # Hydra: a value with spaces and '==' is quoted (shell: "filter='dataset == \"oxford5k\"'")
    cfg = query_cfg(f"image={image}", f"db={small_database}", "filter='dataset == \"oxford5k\"'")
    with pytest.raises(FilterUnsupportedError, match=r"needs a backend with metadata.*search=exact"):
        run_query(cfg)


# starts milvus-lite: 2.4 s here on 2 cores
def test_filter_selects_by_dataset_on_milvus(small_database, small_vgg_root, tmp_path):
    pytest.importorskip("milvus_lite", reason="pip install 'retrieval[milvus]'")
    db = shutil.copytree(small_database, tmp_path / "db")  # milvus.db goes beside the database
    image = small_vgg_root / "jpg" / "arch_000001.jpg"
    dataset = load_database(db).dataset
    common = [f"image={image}", f"db={db}", "k=4", "search=milvus", "search.index_type=FLAT"]
    kept = run_query(query_cfg(*common, f"filter='dataset == \"{dataset}\"'"))
    assert [m.rank for m in kept] == [1, 2, 3, 4] and kept[0].path == str(image)
    assert run_query(query_cfg(*common, "filter='dataset == \"another\"'")) == []
    named = run_query(query_cfg(*common, "filter='name like \"tower%\"'", "rerank=superglobal"))
    assert named and all(m.name.startswith("tower") for m in named)


def test_app_refuses_a_filter_its_backend_cannot_apply(app_service, small_vgg_root):
    client = TestClient(create_app(app_service))
    assert client.get("/api/health").json()["rerank"] is None
    answer = client.get("/api/queries/0/search", params={"filter": 'dataset == "oxford5k"'})
    assert answer.status_code == 422 and "search=milvus" in answer.json()["detail"]
    image = (small_vgg_root / "jpg" / "arch_000001.jpg").read_bytes()
    upload = client.post(
        "/api/search", params={"filter": "x"}, files={"file": ("q.jpg", image, "image/jpeg")}
    )
    assert upload.status_code == 422 and "filter='x'" in upload.json()["detail"]


def test_app_ap_is_the_evaluations_whatever_the_index_and_with_reranking(app_service, small_vgg_root):
    """HNSW (approximate) and a re-ranker: the AP still comes from exact scores over the
    stored vectors, re-ranked as the evaluation re-ranks; the top k shown is the index's."""
    artifact, reranker = app_service.artifact, SuperGlobal()
    hnsw = partial(SearchIndex, backend="hnsw", ef_search=16)
    searcher = DatabaseSearcher(artifact, hnsw, reranker=reranker)
    service = SearchService(searcher, app_service.settings)
    try:
        health = TestClient(create_app(service)).get("/api/health").json()
        assert health["rerank"] == "SuperGlobal" and health["search_backend"] == "hnsw"
        gt = load_classic_ground_truth(small_vgg_root, "oxford5k")
        embedded = np.concatenate([searcher.embed(q.path, q.bbox) for q in service.queries])
        expected = evaluate_embeddings(embedded, artifact.embeddings, gt, reranker=reranker)
        plain = evaluate_embeddings(embedded, artifact.embeddings, gt)
        assert not np.allclose(expected.per_query_ap["classic"], plain.per_query_ap["classic"])
        for query_id, query in enumerate(service.queries):
            outcome = service.search_dataset_query(query, 3)
            assert outcome.ap == pytest.approx(expected.per_query_ap["classic"][query_id], abs=1e-9)
            shown = searcher.search_vector(embedded[query_id : query_id + 1], 3)
            assert [m.index for m in outcome.matches] == [m.index for m in shown]
    finally:
        service.close()


def test_float32_embeddings_are_memory_mapped_float16_loaded(small_database, tmp_path):
    mapped = load_database(small_database).embeddings
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float32 and not mapped.flags.writeable
    half = load_database(random_artifact().write(tmp_path / "half")).embeddings
    assert not isinstance(half, np.memmap) and half.dtype == np.float16
