"""The web app against hostile or careless input (listed images swapped after start-up,
security headers, HEAD, non-finite boxes, the configured pixel limit, server paths) and
the page details users reported: long names, the top-k counts, shareable upload results."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from retrieval.serving.app import SearchService, create_app
from retrieval.serving.app.files import ServableImages
from tests.serving.test_app import bomb_png, jpg, search
from tests.serving.test_app_browser import CHROMIUM, launch

IMAGE = "jpg/random_000000.jpg"  # a listed database image no other test reads by path


@pytest.fixture(scope="module")
def client(app_service) -> TestClient:
    # server errors come back as 500s, not raised: a 500 is what a user would have seen
    return TestClient(create_app(app_service), raise_server_exceptions=False)


@pytest.fixture
def client_with(app_service):
    services = []

    def make(**changes) -> TestClient:
        services.append(SearchService(app_service.searcher, replace(app_service.settings, **changes)))
        return TestClient(create_app(services[-1]), raise_server_exceptions=False)

    yield make
    for service in services:
        service.close()


@contextlib.contextmanager
def swapped(path, make):
    """``path`` replaced by what ``make(path)`` puts there, then the original put back
    (renamed, so it keeps its inode)."""
    backup = path.with_name(path.name + ".orig")
    os.rename(path, backup)
    try:
        make(path)
        yield
    finally:
        if path.is_symlink() or path.exists():
            path.unlink()
        os.rename(backup, path)


# ------------------------------------------------------------- listed files, swapped
@pytest.mark.parametrize(
    "replacement",
    [
        lambda p: p.symlink_to("/etc/passwd"),
        lambda p: p.symlink_to(p.parent / "arch_000000.jpg"),  # another listed image
        lambda p: p.write_bytes(p.with_name(p.name + ".orig").read_bytes()),  # same bytes, new file
        lambda p: os.mkfifo(p),  # would block an open without O_NONBLOCK
    ],
    ids=["symlink-out", "symlink-in", "new-file", "fifo"],
)
@pytest.mark.parametrize("thumb", ["", "?thumb=1"])
def test_a_listed_image_replaced_after_start_up_is_not_served(client, small_vgg_root, replacement, thumb):
    assert client.get(f"/images/{IMAGE}{thumb}").status_code == 200
    with swapped(small_vgg_root / IMAGE, replacement):
        response = client.get(f"/images/{IMAGE}{thumb}")
    assert response.status_code == 404 and "There is no image" in response.text
    assert (
        "root:" not in response.text
        and "/etc" not in response.text
        and str(small_vgg_root) not in response.text
    )
    assert client.get(f"/images/{IMAGE}{thumb}").status_code == 200  # the original, back


def test_a_parent_folder_swapped_for_a_link_is_not_followed(tmp_path):
    root = tmp_path / "root"
    (root / "jpg").mkdir(parents=True)
    (root / "jpg" / "a.jpg").write_bytes(b"listed")
    images = ServableImages(root.resolve(), [root / "jpg" / "a.jpg", root / "jpg" / "missing.jpg"])
    assert list(images.files) == ["jpg/a.jpg"]  # missing at start-up: never served
    file, _ = images.open("jpg/a.jpg")
    with file:
        assert file.read() == b"listed"
    shutil.copytree(root / "jpg", tmp_path / "elsewhere")
    (root / "jpg").rename(root / "jpg.orig")
    (root / "jpg").symlink_to(tmp_path / "elsewhere")  # same name, same bytes, other file
    assert images.open("jpg/a.jpg") is None


# --------------------------------------------------------------------- headers, HEAD
@pytest.mark.parametrize(
    "url", ["/", "/queries/0", f"/images/{IMAGE}", f"/images/{IMAGE}?thumb=1", "/api/health", "/no/page"]
)
def test_every_response_carries_the_security_headers(client, url):
    headers = client.get(url).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer" and headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "url", ["/", "/queries/1", "/upload", "/api/health", "/api/queries", f"/images/{IMAGE}"]
)
def test_head_is_answered_wherever_get_is(client, url):
    got, head = client.get(url), client.head(url)
    assert head.status_code == 200 and head.content == b"", url
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["x-content-type-options"] == "nosniff"
    if url.startswith("/images"):
        assert int(head.headers["content-length"]) == len(got.content)


def test_head_on_the_live_server(live_server):
    import httpx

    assert httpx.head(live_server + "/").status_code == 200
    assert httpx.head(live_server + "/api/search").status_code == 405  # POST only: still refused


# --------------------------------------------------------------------------- boxes
BAD_BOXES = ["0,0,inf,inf", "-inf,-inf,10,10", "nan,0,10,10", "0,0,1e999,10", "0,0," + "9" * 400 + ",10"]


@pytest.mark.parametrize("bbox", BAD_BOXES)
def test_non_finite_boxes_are_a_422_naming_the_box(client, small_vgg_root, bbox):
    api = search(client, jpg(small_vgg_root, "arch_000000"), bbox=bbox)
    assert api.status_code == 422, api.text
    detail = api.json()["detail"]
    assert "box (bbox)" in detail and "finite" in detail and "x1 < x2" in detail and len(detail) < 300
    page = client.post(
        "/upload", files={"file": ("a.jpg", jpg(small_vgg_root, "arch_000000"))}, data={"bbox": bbox}
    )
    assert page.status_code == 422 and 'id="error"' in page.text and "finite" in page.text


def test_huge_finite_boxes_are_clipped_or_refused(client, small_vgg_root):
    image = jpg(small_vgg_root, "arch_000000")
    whole = search(client, image, bbox="-1e300,-1e300,1e300,1e300")
    assert whole.status_code == 200 and whole.json()["results"][0]["name"] == "arch_000000"
    outside = search(client, image, bbox="1e300,0,2e300,10")
    assert outside.status_code == 422 and "lies outside the 64x48 image" in outside.json()["detail"]


# --------------------------------------------------------------------- pixel limit
def test_the_pixel_limit_named_is_the_configured_one(client_with):
    client = client_with(max_pixels=1_000_000)
    bomb = search(client, bomb_png(30_000, 30_000)).json()["detail"]  # past Pillow's own refusal
    assert "decompression bomb" in bomb and "1.0 MP" in bomb and "800" not in bomb
    big = search(client, bomb_png(2_000, 2_000)).json()["detail"]
    assert big == "The image is 2000x2000 pixels (4.0 MP); the limit is 1.0 MP."
    assert "40 MP" in search(client_with(), bomb_png(30_000, 30_000)).json()["detail"]


# ------------------------------------------------------------------ no server paths
def test_pages_and_the_api_never_show_server_paths(client, small_vgg_root, small_database, tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    upload = client.post("/upload", files={"file": ("a.jpg", jpg(small_vgg_root, "arch_000001"))})
    urls = [
        "/",
        "/queries/0",
        "/upload",
        "/api/health",
        "/api/queries",
        "/api/queries/0/search",
        "/x",
        "/openapi.json",
    ]
    for response in [upload, *(client.get(url) for url in urls)]:
        assert response.status_code in (200, 404)
        assert base not in response.text and str(small_database) not in response.text, response.url
    assert (
        client.get("/api/health").json()["ground_truth_note"]
        == "4 queries, classic ground truth from oxford5k"
    )


def test_public_text_names_folders_by_their_name(app_service, small_vgg_root, small_database):
    public = app_service.public
    assert public(f"{small_vgg_root}/gt_files/x.txt is missing") == "oxford5k/gt_files/x.txt is missing"
    assert public(f"database {small_database}: broken") == "database db: broken"
    assert public(f"from {small_vgg_root}.") == "from oxford5k."
    assert public(f"{small_vgg_root}_old/a") == f"{small_vgg_root}_old/a"  # another folder: not renamed


# ------------------------------------------------------------------------ page details
def test_result_cards_keep_long_names_apart_from_the_rank(client):
    html = client.get("/queries/0?k=11").text
    cards = re.findall(
        r'<span class="name" title="([^"]+)">([^<]+)</span><span class="rank">#(\d+)</span>', html
    )
    assert [int(rank) for _, _, rank in cards] == list(range(1, 12))
    assert all(title == name for title, name, _ in cards)  # the whole name on hover when cut
    css = client.get("/").text
    assert re.search(r"\.card \.name \{[^}]*text-overflow:ellipsis", css)
    assert re.search(r"header nav a \{[^}]*white-space:nowrap", css)  # "API schema" on one line


def test_label_counts_say_they_cover_the_top_k(client):
    labels = [r["label"] for r in client.get("/api/queries/0/search?k=4").json()["results"]]
    html = client.get("/queries/0?k=4").text
    positives = sum(label in ("good", "ok") for label in labels)
    assert f"<b>{positives}</b> of the top 4 are ground-truth\n       positives (3 in the database)" in html
    assert "Labels of the top 4:" in html


def test_an_upload_redirects_to_a_results_page_of_its_own(client, small_vgg_root):
    form = {"file": ("mine.jpg", jpg(small_vgg_root, "arch_000002"))}
    posted = client.post("/upload", files=form, data={"bbox": "0,0,40,30"}, follow_redirects=False)
    assert posted.status_code == 303
    location = posted.headers["location"]
    assert re.fullmatch(r"/upload/[A-Za-z0-9_-]{20,}\?k=5", location)
    page = client.get(location)  # a GET: reloads, bookmarks and shares
    assert page.status_code == 200 and "mine.jpg" in page.text and 'id="query-bbox"' in page.text
    assert "data:image/jpeg;base64," in page.text and page.text.count('class="card result') == 5
    fewer = client.get(location.replace("k=5", "k=2"))  # another k, no new upload
    assert fewer.text.count('class="card result') == 2 and 'action="/upload/' in fewer.text
    gone = client.get("/upload/not-an-id")
    assert gone.status_code == 404 and "no longer kept" in gone.text


def test_kept_uploads_are_bounded(client_with, small_vgg_root):
    client = client_with(kept_uploads=1)

    def upload(name: str) -> str:
        form = {"file": (f"{name}.jpg", jpg(small_vgg_root, name))}
        return client.post("/upload", files=form, follow_redirects=False).headers["location"]

    first, second = upload("arch_000000"), upload("tower_000000")
    assert client.get(first).status_code == 404 and client.get(second).status_code == 200


LAYOUT = """() => {
  const name = document.querySelector("a.result .name"), rank = document.querySelector("a.result .rank");
  name.textContent = "a_very_long_image_name_".repeat(8);  // as a real dataset's can be
  const n = name.getBoundingClientRect(), r = rank.getBoundingClientRect();
  const links = [...document.querySelectorAll("header nav a")].map(a => a.getBoundingClientRect().height);
  return {apart: n.right <= r.left && Math.abs(n.top - r.top) < 8, cut: name.scrollWidth > name.clientWidth,
          oneLine: Math.max(...links) < 30};
}"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium")
def test_long_names_and_the_header_on_a_phone(live_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 360, "height": 740})
            page.goto(live_server + "/queries/0")
            assert page.evaluate(LAYOUT) == {"apart": True, "cut": True, "oneLine": True}
        finally:
            browser.close()
