"""HTML pages: the query gallery, a dataset query's results, the upload form and an
upload's results (a page of its own, ``/upload/<id>``, so it can be reloaded and shared)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from retrieval.serving.app.boxes import parse_bbox
from retrieval.serving.app.imaging import image_size
from retrieval.serving.app.paging import MAX_RESULT_PAGES, Page, PageNumber, PerPage, page_of
from retrieval.serving.app.routes_api import read_upload, service_of
from retrieval.serving.app.uploads import RequestError, human_size
from retrieval.serving.app.views import box_style, data_uri, image_cards, match_rows, query_card

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    service = service_of(request)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "dataset": service.artifact.dataset,
            "n_images": len(service.artifact.image_paths),
            "n_queries": len(service.queries),
            **context,
        },
        status_code=status_code,
    )


def upload_form(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    settings = service_of(request).settings
    return render(
        request,
        "upload.html",
        status_code,
        error=error,
        k=settings.k,
        max_k=settings.max_k,
        limit=human_size(settings.max_upload_bytes),
    )


@router.get("/", response_class=HTMLResponse)
def gallery(request: Request, page: PageNumber = None, per_page: PerPage = None) -> HTMLResponse:
    service = service_of(request)
    pager = page_of(len(service.queries), page, per_page, "/")
    cards = [
        {**query_card(service, q), "box": box_style(q.bbox, image_size(q.path))}
        for q in service.queries[pager.start : pager.stop]
    ]
    return render(request, "gallery.html", cards=cards, note=service.truth_note, pager=pager)


@router.get("/database", response_class=HTMLResponse)
def database_images(request: Request, page: PageNumber = None, per_page: PerPage = None) -> HTMLResponse:
    """The database's images, a page at a time (never the whole collection)."""
    service = service_of(request)
    pager = page_of(len(service.artifact.image_paths), page, per_page, "/database")
    return render(request, "database.html", images=image_cards(service, pager.start, pager.stop), pager=pager)


@router.get("/queries/{query_id}", response_class=HTMLResponse)
async def query_results(
    request: Request, query_id: int, k: Annotated[int | None, Query()] = None, page: PageNumber = None
) -> HTMLResponse:
    service = service_of(request)
    query, k = service.dataset_query(query_id), service.check_k(k)
    pager = results_page(service, page, k, f"/queries/{query_id}")
    outcome = await service.run(service.search_dataset_query, query, k, pager.start)
    card = query_card(service, query)
    return render(
        request,
        "results.html",
        query=card,
        query_src=card["image_url"],
        box=box_style(query.bbox, image_size(query.path)),
        rows=match_rows(service, outcome),
        k=k,
        k_action=f"/queries/{query_id}",
        ap=outcome.ap,
        ap_setup=service.truth.ap_setup,
        legend=service.truth.legend,
        positives_in_top=outcome.positives_in_top,
        pager=pager,
    )


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request) -> HTMLResponse:
    return upload_form(request)


@router.post("/upload", response_class=HTMLResponse)
async def upload_results(
    request: Request,
    file: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int | None, Form()] = None,
    bbox: Annotated[str | None, Form()] = None,
) -> RedirectResponse:
    """Embed the upload once and keep it (kept.py); 303 to its results page, a GET URL."""
    service = service_of(request)
    k, box = service.check_k(k), parse_bbox(bbox)
    data = await read_upload(service, file)
    name = (file.filename if file is not None else None) or "upload"
    upload_id = service.uploads.keep(await service.run(service.embed_upload, data, name, box))
    return RedirectResponse(f"/upload/{upload_id}?k={k}", status_code=303)


@router.get("/upload/{upload_id}", response_class=HTMLResponse)
async def kept_upload_results(
    request: Request, upload_id: str, k: Annotated[int | None, Query()] = None, page: PageNumber = None
) -> HTMLResponse:
    service = service_of(request)
    upload, k = service.uploads.get(upload_id), service.check_k(k)
    if upload is None:
        raise RequestError(
            404,
            f"These upload results are no longer kept: the server keeps the last "
            f"{service.uploads.max_items} uploads in memory, until it restarts. Upload the image again.",
        )
    pager = results_page(service, page, k, f"/upload/{upload_id}")
    outcome = await service.run(service.search_kept, upload, k, pager.start)
    return render(
        request,
        "results.html",
        query={"name": upload.name, "landmark": None},
        query_src=data_uri(upload.preview),
        box=box_style(upload.box, upload.size),
        rows=match_rows(service, outcome),
        k=k,
        k_action=f"/upload/{upload_id}",
        ap=None,
        ap_setup=None,
        legend=(),
        size=upload.size,
        pager=pager,
    )


def results_page(service, page: int | None, k: int, path: str) -> Page:
    """Pages of ``k`` ranks over the database, at most MAX_RESULT_PAGES of them (a page is
    searched to its end)."""
    return page_of(len(service.artifact.image_paths), page, k, path, max_pages=MAX_RESULT_PAGES, k=k)
