"""The web app in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright;
no browser is downloaded) against a real uvicorn server on 127.0.0.1.

The same journeys make the README's screenshots from any database:

    python -m tests.serving.test_app_browser DB_DIR docs/images
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(apt-get install chromium); Playwright never downloads one",
    ),
]

# the label colours of base.html, as the browser computes them
LABEL_COLOURS = {
    "good": "rgb(21, 128, 61)",
    "ok": "rgb(101, 163, 13)",
    "junk": "rgb(107, 114, 128)",
    "wrong": "rgb(185, 28, 28)",
}
DROP_FILE = """([data, name]) => {
  const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


def launch(playwright):
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])


def images_loaded(page) -> bool:
    """Every image in view decoded (below the fold they load lazily, on scrolling)."""
    return page.evaluate(
        "Array.from(document.images)"
        ".filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


def gallery_to_results(page, base_url: str, shots: Path, k: int, query: int = 0) -> dict:
    """Open the gallery, click a query, ask for ``k`` results: what the page shows."""
    page.goto(base_url + "/")
    cards = page.locator("a.card.query")
    n_queries = cards.count()
    page.wait_for_load_state("networkidle")
    assert images_loaded(page)
    page.screenshot(path=shots / "webapp_gallery.png")
    cards.nth(query).click()
    page.wait_for_url(f"**/queries/{query}")
    page.fill("input[name=k]", str(k))
    page.click("form button")
    page.wait_for_url(f"**/queries/{query}?k={k}")
    page.wait_for_load_state("networkidle")
    assert images_loaded(page)
    box = page.locator("#query-bbox").bounding_box()
    badges = {label: page.locator(f".badge.{label}") for label in LABEL_COLOURS}
    colours = {
        label: badge.first.evaluate("e => getComputedStyle(e).backgroundColor")
        for label, badge in badges.items()
        if badge.count()
    }
    page.screenshot(path=shots / "webapp_results.png", full_page=True)
    return {
        "queries": n_queries,
        "ap": float(page.text_content("#ap")),
        "box": box,
        "colours": colours,
        "labels": page.locator("a.result").evaluate_all("cards => cards.map(c => c.dataset.label)"),
    }


def upload(page, base_url: str, image: Path, shots: Path | None, drop: bool = False) -> list[str]:
    """Upload ``image`` by the file chooser (or by dropping it): the result names, best first."""
    page.goto(base_url + "/upload")
    if drop:
        page.evaluate(DROP_FILE, [base64.b64encode(image.read_bytes()).decode(), image.name])
    else:
        page.set_input_files("#file", str(image))
    assert image.name in page.text_content("#chosen")
    page.click("#search")
    page.wait_for_selector("#results")
    page.wait_for_load_state("networkidle")
    assert images_loaded(page) and page.get_attribute("#query-image", "src").startswith("data:image/jpeg")
    if shots is not None:
        page.screenshot(path=shots / "webapp_upload_results.png", full_page=True)
    return page.locator("a.result .name").all_text_contents()


def upload_error(page, base_url: str, text_file: Path, shots: Path) -> str:
    page.goto(base_url + "/upload")
    page.set_input_files("#file", str(text_file))
    page.click("#search")
    page.wait_for_selector("#error")
    page.screenshot(path=shots / "webapp_upload_error.png")
    return page.text_content("#error")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser.new_page(viewport={"width": 1280, "height": 860})
        browser.close()


def test_gallery_click_shows_ground_truth_marked_results(page, live_server, tmp_path):
    seen = gallery_to_results(page, live_server, tmp_path, k=11)
    assert seen["queries"] == 4 and 0 <= seen["ap"] <= 1
    assert sorted(seen["labels"]) == sorted(["good"] * 2 + ["ok", "junk"] + ["wrong"] * 7)  # all 11 images
    assert seen["box"]["width"] > 10 and seen["box"]["height"] > 10  # drawn over the query image
    assert seen["colours"] == LABEL_COLOURS
    assert (tmp_path / "webapp_results.png").stat().st_size > 10_000


def test_gallery_pages_through_the_queries(page, live_server):
    """The gallery shows one page of queries; its links walk to the next and back."""
    page.goto(live_server + "/?per_page=3")
    cards = page.locator("a.card.query")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.query)") == ["0", "1", "2"]
    page.locator("a[rel=next]").first.click()
    page.wait_for_url("**/?page=2&per_page=3")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.query)") == ["3"]
    assert page.locator("a[rel=next]").count() == 0 and "page 2 of 2" in page.text_content(".pager")
    page.locator("a[rel=prev]").first.click()
    page.wait_for_url("**/?page=1&per_page=3")
    assert cards.count() == 3


def test_upload_by_chooser_and_by_drop_shows_results(page, live_server, small_vgg_root, tmp_path):
    image = small_vgg_root / "jpg" / "tower_000001.jpg"
    names = upload(page, live_server, image, tmp_path)
    assert len(names) == 5 and names[0] == "tower_000001"  # the app's k; the image itself first
    dropped = upload(page, live_server, small_vgg_root / "jpg" / "arch_000003.jpg", None, drop=True)
    assert dropped[0] == "arch_000003"


def test_uploading_a_text_file_shows_the_error(page, live_server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    assert "not an image this app reads" in upload_error(page, live_server, text, tmp_path)
    assert page.url.endswith("/upload") and page.is_visible("#upload-form")  # the form is back


def main(db: str, out: str) -> None:
    """Screenshots of the app over ``db`` into ``out`` (the README's come from the toy set);
    the results page shows the query with the best AP."""
    import httpx
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from retrieval.serving.app import AppSettings, SearchService, create_app
    from tests.conftest import serve_in_thread

    service = SearchService.load(AppSettings(db=db))
    shots = Path(out)
    shots.mkdir(parents=True, exist_ok=True)
    with (
        serve_in_thread(create_app(service)) as url,
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory() as tmp,
    ):
        page = launch(playwright).new_page(viewport={"width": 1280, "height": 860})
        aps = [httpx.get(f"{url}/api/queries/{q.id}/search?k=1").json()["ap"] or 0 for q in service.queries]
        best = max(range(len(aps)), key=aps.__getitem__)
        print(gallery_to_results(page, url, shots, k=service.settings.k, query=best))
        print(upload(page, url, Path(service.artifact.image_paths[-1]), shots))
        (Path(tmp) / "notes.txt").write_text("not a picture\n")
        print(upload_error(page, url, Path(tmp) / "notes.txt", shots))
    service.close()
    for shot in shots.glob("webapp_*.png"):  # 256 colours: a third of the bytes in git, same look
        image = Image.open(shot).convert("RGB")
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(shot, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
