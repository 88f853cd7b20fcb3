"""The web app's routes, bad inputs and concurrency, on a small real database (conftest)."""

from __future__ import annotations

import asyncio
import io
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import replace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.data.landmark_formats import load_classic_ground_truth
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.serving.app import SearchService, create_app


def expected_label(name: str, landmark: str) -> str:
    """tests/helpers/vgg.write_vgg: every query of a landmark has good <lm>_000000 and
    <lm>_000001, ok <lm>_000002, junk <lm>_000003; other images are wrong."""
    return ("good", "good", "ok", "junk")[int(name[-6:])] if name.startswith(f"{landmark}_") else "wrong"


@pytest.fixture(scope="module")
def client(app_service) -> TestClient:
    return TestClient(create_app(app_service))


@pytest.fixture
def client_with(app_service):
    """A client whose app has other settings (same loaded model and index)."""
    services = []

    def make(**changes) -> TestClient:
        services.append(SearchService(app_service.searcher, replace(app_service.settings, **changes)))
        return TestClient(create_app(services[-1]))

    yield make
    for service in services:
        service.close()


def jpg(root, name: str) -> bytes:
    return (root / "jpg" / f"{name}.jpg").read_bytes()


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width x height`` zeros: kilobytes on disk, gigapixels decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def search(client: TestClient, data: bytes, name: str = "query.jpg", **form) -> httpx.Response:
    return client.post("/api/search", files={"file": (name, data, "image/jpeg")}, data=form)


# ----------------------------------------------------------------------------- JSON API
def test_health_describes_the_database(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["dataset"] == "oxford5k"
    assert (health["images"], health["queries"], health["dim"]) == (11, 4, 10)
    assert health["ground_truth"] == "classic" and health["max_upload_bytes"] == 10 * 2**20


def test_queries_list_the_dataset_queries_with_servable_images(client):
    listing = client.get("/api/queries").json()
    assert (listing["page"], listing["per_page"], listing["pages"], listing["total"]) == (1, 60, 1, 4)
    assert listing["prev_url"] is None and listing["next_url"] is None
    queries = listing["items"]
    assert [q["name"] for q in queries] == ["arch_000000", "arch_000001", "tower_000000", "tower_000001"]
    assert queries[0]["bbox"] == [1.5, 2.0, 30.0, 25.5] and queries[0]["positives"] == 3
    image = client.get(queries[0]["image_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 48)


def test_dataset_query_results_carry_ground_truth_labels_and_the_evaluation_ap(
    client, app_service, small_vgg_root
):
    gt = load_classic_ground_truth(small_vgg_root, "oxford5k")
    embedded = np.concatenate([app_service.searcher.embed(q.path, q.bbox) for q in gt.queries])
    expected_ap = evaluate_embeddings(embedded, app_service.artifact.embeddings, gt).per_query_ap["classic"]
    for query_id in range(4):
        body = client.get(f"/api/queries/{query_id}/search", params={"k": 11}).json()
        assert body["ap"] == pytest.approx(expected_ap[query_id], abs=1e-9)
        assert [r["rank"] for r in body["results"]] == list(range(1, 12))
        for row in body["results"]:
            assert row["label"] == expected_label(row["name"], body["query"]["landmark"]), row
    assert len(client.get("/api/queries/0/search").json()["results"]) == 5  # the app's default k


def test_upload_finds_the_image_itself(client, small_vgg_root):
    for name in ("arch_000001", "random_000002"):
        body = search(client, jpg(small_vgg_root, name), k="3").json()
        assert [r["rank"] for r in body["results"]] == [1, 2, 3] and body["ap"] is None
        best = body["results"][0]
        assert best["name"] == name and best["score"] == pytest.approx(1, abs=1e-4) and best["label"] is None
    cropped = search(client, jpg(small_vgg_root, "arch_000001"), bbox="0, 0, 30, 20").json()
    assert cropped["results"][0]["score"] < 0.999


@pytest.mark.parametrize(
    "request_args,status,message",
    [
        (("get", "/api/queries/9/search"), 404, "There is no dataset query 9"),
        (("get", "/api/queries/0/search?k=0"), 422, "k must be between 1 and 200"),
        (("get", "/api/queries/0/search?k=201"), 422, "k must be between 1 and 200"),
        (("get", "/api/queries/0/search?k=ten"), 422, "k: Input should be a valid integer"),
        (("get", "/api/queries?page=2"), 422, "page must be between 1 and 1, got 2"),
        (("get", "/api/queries?page=0"), 422, "page must be between 1 and 1, got 0"),
        (("get", "/api/queries?per_page=201"), 422, "per_page must be between 1 and 200, got 201"),
        (("get", "/api/queries?per_page=0"), 422, "per_page must be between 1 and 200, got 0"),
        (("get", "/api/queries?page=two"), 422, "page: Input should be a valid integer"),
        (("get", "/api/nothing"), 404, "Not Found"),
        (("post", "/api/search"), 400, "No file was uploaded"),
    ],
)
def test_bad_api_requests_get_a_sentence(client, request_args, status, message):
    method, url = request_args
    response = getattr(client, method)(url)
    assert response.status_code == status and message in response.json()["detail"]


@pytest.mark.parametrize(
    "make_data,form,status,message",
    [
        (lambda root: b"", {}, 400, "The uploaded file is empty"),
        (lambda root: b"name,label\nx,1\n", {}, 415, "not an image this app reads"),
        (lambda root: b"%PDF-1.4 not really", {}, 415, "not an image"),
        (lambda root: jpg(root, "arch_000000")[:300], {}, 422, "could not be decoded"),
        (lambda root: bomb_png(10_000, 10_000), {}, 413, "10000x10000 pixels (100 MP); the limit is 40 MP"),
        (lambda root: bomb_png(30_000, 30_000), {}, 413, "decompression bomb"),
        (lambda root: jpg(root, "arch_000000"), {"bbox": "1,2,3"}, 422, "The box (bbox) must be four finite"),
        (
            lambda root: jpg(root, "arch_000000"),
            {"bbox": "100,100,200,200"},
            422,
            "lies outside the 64x48 image",
        ),
        (lambda root: jpg(root, "arch_000000"), {"k": "0"}, 422, "k must be between"),
    ],
)
def test_bad_uploads_are_refused_with_a_sentence(client, small_vgg_root, make_data, form, status, message):
    data = make_data(small_vgg_root)
    assert len(data) < 200_000  # a bomb is small on the wire
    response = search(client, data, name="photo.jpg", **form)  # the name and type claim an image
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_upload_size_limit(client_with):
    client = client_with(max_upload_bytes=50_000)
    assert search(client, png(100, 100)).status_code == 200  # 30 kB
    just_over = search(client, png(135, 135))  # 55 kB: within the form allowance, caught on reading
    assert just_over.status_code == 413
    assert just_over.json()["detail"] == "The file is larger than 48.8 kB, the upload limit."
    declared = search(client, png(300, 300))  # 264 kB: refused on its Content-Length, unread
    assert declared.status_code == 413
    assert declared.json()["detail"] == "The upload is 264.5 kB; the limit is 48.8 kB per file."
    page = client.post("/upload", files={"file": ("big.png", png(300, 300))})  # the form says it too
    assert page.status_code == 413 and 'id="error"' in page.text and "The upload is 264.5 kB" in page.text
    body, boundary = b"x" * 200_000, "b0undary"
    chunked = client.post(
        "/api/search",
        content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert chunked.status_code == 413 and "The upload is over" in chunked.json()["detail"]


def test_uploads_leave_no_files_behind(client, small_vgg_root, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a spooled upload would go
    big = png(1000, 600)  # 1.8 MB: Starlette spools it past 1 MB
    assert len(big) > 2**20 and search(client, big).status_code == 200
    assert search(client, b"not an image").status_code == 415
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "jpg/..%2F..%2Fdb%2Fmeta.json",
        "gt_files/arch_1_good.txt",
        "jpg/link.jpg",
        "jpg/nope.jpg",
    ],
)
def test_images_are_served_only_from_the_database_list(client, small_vgg_root, path):
    link = small_vgg_root / "jpg" / "link.jpg"  # inside the root, pointing outside it
    link.symlink_to("/etc/hostname")
    try:
        response = client.get(f"/images/{path}")
    finally:
        link.unlink()
    assert response.status_code == 404 and "There is no image" in response.text


def test_images_and_thumbnails(client, small_vgg_root):
    full = client.get("/images/jpg/tower_000002.jpg")
    assert full.status_code == 200 and full.content == jpg(small_vgg_root, "tower_000002")
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["x-content-type-options"] == "nosniff"
    thumb = client.get("/images/jpg/tower_000002.jpg?thumb=1")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 48)


def test_openapi_schema_lists_the_api_only(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/health",
        "/api/queries",
        "/api/queries/{query_id}/search",
        "/api/search",
    }
    assert "multipart/form-data" in schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN


# ------------------------------------------------------------------------------- pages
def test_gallery_links_every_query_with_its_box(client):
    html = client.get("/").text
    for query_id in range(4):
        assert f'href="/queries/{query_id}"' in html
    assert html.count('class="bbox"') == 4 and "left:2.34%;top:4.17%;width:44.53%;height:48.96%" in html


def test_results_page_shows_marks_and_ap(client):
    html = client.get("/queries/0?k=11").text
    assert 'id="ap"' in html and 'id="query-bbox"' in html
    for label in ("good", "ok", "junk", "wrong"):
        assert f'data-label="{label}"' in html
    missing = client.get("/queries/7")
    assert missing.status_code == 404 and "There is no dataset query 7" in missing.text


def test_upload_pages(client, small_vgg_root):
    assert 'enctype="multipart/form-data"' in client.get("/upload").text
    page = client.post("/upload", files={"file": ("mine.jpg", jpg(small_vgg_root, "arch_000002"))})
    assert page.status_code == 200 and "data:image/jpeg;base64," in page.text and "mine.jpg" in page.text
    assert page.text.index("arch_000002") < page.text.index('id="results"') + 400  # ranked first
    refused = client.post("/upload", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert refused.status_code == 415 and 'id="error"' in refused.text and "not an image" in refused.text
    assert client.post("/upload", data={"k": "3"}).status_code == 400
    assert client.get("/no/such/page").status_code == 404 and "Error 404" in client.get("/no/such/page").text


# ------------------------------------------------------------------------- concurrency
def test_50_concurrent_searches_on_the_live_server(live_server, app_service, small_vgg_root):
    names = app_service.artifact.image_names
    expected = {
        n: [(m.name, m.score) for m in app_service.searcher.query(path, k=4)]
        for n, path in zip(names, app_service.artifact.image_paths)
    }

    async def one(client: httpx.AsyncClient, name: str) -> tuple[str, list]:
        response = await client.post(
            "/api/search", files={"file": (name, jpg(small_vgg_root, name))}, data={"k": "4"}
        )
        response.raise_for_status()
        return name, [(r["name"], r["score"]) for r in response.json()["results"]]

    async def all_at_once() -> list:
        async with httpx.AsyncClient(base_url=live_server, timeout=60) as client:
            return await asyncio.gather(*(one(client, names[i % len(names)]) for i in range(50)))

    started = time.perf_counter()
    answers = asyncio.run(all_at_once())
    print(f"50 concurrent searches: {time.perf_counter() - started:.2f} s")
    assert len(answers) == 50
    for name, results in answers:
        assert [r[0] for r in results] == [e[0] for e in expected[name]] and results[0][0] == name
        np.testing.assert_allclose([r[1] for r in results], [e[1] for e in expected[name]], atol=1e-5)


def test_the_server_answers_while_the_model_works(app_service, small_vgg_root, monkeypatch):
    started, release = threading.Event(), threading.Event()
    embed = app_service.searcher.embed_image

    def slow_embed(image):
        started.set()
        assert release.wait(20)
        return embed(image)

    monkeypatch.setattr(app_service.searcher, "embed_image", slow_embed)

    async def scenario() -> tuple[float, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(app_service))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            upload = {"file": ("a.jpg", jpg(small_vgg_root, "arch_000000"))}
            pending = asyncio.create_task(client.post("/api/search", files=upload))
            while not started.is_set():
                await asyncio.sleep(0.005)
            tick = time.perf_counter()
            assert (await client.get("/api/health")).status_code == 200
            waited = time.perf_counter() - tick
            assert not pending.done()  # the search is still in the model's thread
            release.set()
            return waited, await pending

    waited, searched = asyncio.run(scenario())
    assert waited < 1.0 and searched.json()["results"][0]["name"] == "arch_000000"
