"""The app's pages page through large databases: a 2000-image database (the small real
database's network, 2000 generated images with synthetic vectors) never lists more than
``per_page`` items on a page, and the links walk every page; a dataset with 250 queries
(the small dataset's 4, repeated) pages the same way in the gallery and in /api/queries."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.evaluation.vectors import l2_normalize
from retrieval.serving.app import AppSettings, SearchService, create_app
from retrieval.serving.app.truth import DatasetTruth
from retrieval.serving.database import load_database
from retrieval.serving.searcher import DatabaseSearcher

N = 2000


@pytest.fixture(scope="module")
def large_client(small_database, tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    paths = []
    for i in range(N):
        paths.append(str(root / f"img_{i:05d}.jpg"))
        Image.new("RGB", (8, 8), (i % 256, i // 8 % 256, 7)).save(paths[-1])
    small = load_database(small_database)
    vectors = l2_normalize(np.random.default_rng(0).standard_normal((N, small.dim))).astype(np.float32)
    artifact = dataclasses.replace(
        small,
        embeddings=vectors,
        image_paths=paths,
        image_names=[f"img_{i:05d}" for i in range(N)],
        image_root=str(root),
    )
    settings = AppSettings(db=str(small_database), k=5, ground_truth="none")
    service = SearchService(DatabaseSearcher(artifact), settings)
    yield TestClient(create_app(service))
    service.close()


def listed(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-index="(\d+)"', html)]


def test_database_pages_list_at_most_per_page_images(large_client):
    first = large_client.get("/database")
    assert first.status_code == 200 and listed(first.text) == list(range(60))
    assert "page 1 of 34" in first.text and 'href="/database?page=2&amp;per_page=60"' in first.text
    page = large_client.get("/database?page=7&per_page=200")
    assert listed(page.text) == list(range(1200, 1400)) and "page 7 of 10" in page.text
    last = large_client.get("/database?page=10&per_page=200")
    assert listed(last.text) == list(range(1800, 2000)) and 'rel="next"' not in last.text
    for bad, message in [
        ("page=11&per_page=200", "page must be between 1 and 10"),
        ("page=0", "page must be between 1 and 34"),
        ("per_page=201", "per_page must be between 1 and 200"),
        ("per_page=0", "per_page must be between 1 and 200"),
    ]:
        response = large_client.get(f"/database?{bad}")
        assert response.status_code == 422 and message in response.text, bad


def test_upload_results_page_through_the_ranking(large_client):
    image = Path(large_client.app.state.service.artifact.image_paths[3]).read_bytes()  # type: ignore[attr-defined]
    redirect = large_client.post(
        "/upload", files={"file": ("q.jpg", image, "image/jpeg")}, data={"k": "4"}, follow_redirects=False
    )
    assert redirect.status_code == 303
    location = redirect.headers["location"]
    first, second = large_client.get(location), large_client.get(f"{location}&page=2")
    ranks = [re.findall(r'class="rank">#(\d+)<', r.text) for r in (first, second)]
    assert ranks == [["1", "2", "3", "4"], ["5", "6", "7", "8"]] and "Ranks 5–8" in second.text
    assert 'rel="prev"' in second.text and "page=3" in second.text
    assert large_client.get(f"{location}&page=51").status_code == 422  # searched to its end: bounded


def test_gallery_and_query_results_pages(app_service):
    service = SearchService(app_service.searcher, replace(app_service.settings, k=2))
    with TestClient(create_app(service)) as client:
        gallery = client.get("/?per_page=3")
        assert gallery.text.count('class="card query"') == 3 and "page 1 of 2" in gallery.text
        assert client.get("/?page=2&per_page=3").text.count('class="card query"') == 1
        pages = [client.get(f"/queries/0?k=2&page={p}").text for p in (1, 2)]
        ranks = [re.findall(r'class="rank">#(\d+)<', page) for page in pages]
        assert ranks == [["1", "2"], ["3", "4"]]
        full = re.findall(r'class="rank">#(\d+)<', client.get("/queries/0?k=4").text)
        assert full == ["1", "2", "3", "4"]
    service.close()


N_QUERIES = 250  # over one default page (60) and over the largest page (200)


@pytest.fixture(scope="module")
def many_queries_client(app_service):
    service = SearchService(app_service.searcher, app_service.settings)
    real = service.truth.queries
    service.truth = DatasetTruth(
        service.truth.protocol,
        [replace(real[i % len(real)], id=i, name=f"q_{i:03d}") for i in range(N_QUERIES)],
    )
    yield TestClient(create_app(service))
    service.close()


def test_api_queries_page_through_a_dataset_with_many_queries(many_queries_client):
    client = many_queries_client
    first = client.get("/api/queries").json()
    assert (first["page"], first["per_page"], first["pages"], first["total"]) == (1, 60, 5, N_QUERIES)
    assert [q["id"] for q in first["items"]] == list(range(60)) and first["prev_url"] is None
    assert first["next_url"] == "/api/queries?page=2&per_page=60"
    second = client.get(first["next_url"]).json()
    assert [q["name"] for q in second["items"]] == [f"q_{i:03d}" for i in range(60, 120)]
    assert second["prev_url"] == "/api/queries?page=1&per_page=60"
    last = client.get("/api/queries?page=5").json()
    assert [q["id"] for q in last["items"]] == list(range(240, 250)) and last["next_url"] is None
    largest = client.get("/api/queries?page=2&per_page=200").json()
    assert (largest["pages"], len(largest["items"]), largest["items"][0]["id"]) == (2, 50, 200)
    for bad, message in [
        ("page=6", "page must be between 1 and 5, got 6"),  # past the end
        ("page=3&per_page=200", "page must be between 1 and 2, got 3"),
        ("per_page=201", "per_page must be between 1 and 200, got 201"),
        ("page=-1", "page must be between 1 and 5, got -1"),
    ]:
        response = client.get(f"/api/queries?{bad}")
        assert response.status_code == 422 and response.json() == {"detail": f"{message}."}, bad
    # a query of a later page is searchable by the id its page gave
    assert client.get("/api/queries/249/search?k=1").json()["query"]["name"] == "q_249"


def test_gallery_pages_through_a_dataset_with_many_queries(many_queries_client):
    first = many_queries_client.get("/").text
    assert first.count('class="card query"') == 60 and "page 1 of 5" in first
    assert 'href="/?page=2&amp;per_page=60"' in first and "Queries (250)" in first
    last = many_queries_client.get("/?page=5").text
    assert re.findall(r'data-query="(\d+)"', last) == [str(i) for i in range(240, 250)]
