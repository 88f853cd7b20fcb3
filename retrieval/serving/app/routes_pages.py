"""HTML pages: the query gallery, a dataset query's results, the upload form and its
results, and the images they show (served only from the database's own list)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from retrieval.serving.app.imaging import file_thumbnail, image_size
from retrieval.serving.app.routes_api import read_upload, service_of
from retrieval.serving.app.uploads import RequestError, human_size, parse_bbox
from retrieval.serving.app.views import box_style, data_uri, match_rows, query_card

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)
CACHE = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


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
def gallery(request: Request) -> HTMLResponse:
    service = service_of(request)
    cards = [
        {**query_card(service, q), "box": box_style(q.bbox, image_size(q.path))} for q in service.queries
    ]
    return render(request, "gallery.html", cards=cards, note=service.truth_note)


@router.get("/queries/{query_id}", response_class=HTMLResponse)
async def query_results(
    request: Request, query_id: int, k: Annotated[int | None, Query()] = None
) -> HTMLResponse:
    service = service_of(request)
    query, k = service.dataset_query(query_id), service.check_k(k)
    outcome = await service.run(service.search_dataset_query, query, k)
    card = query_card(service, query)
    return render(
        request,
        "results.html",
        query=card,
        query_src=card["image_url"],
        box=box_style(query.bbox, image_size(query.path)),
        rows=match_rows(service, outcome),
        k=k,
        ap=outcome.ap,
        ap_setup=service.truth.ap_setup,
        legend=service.truth.legend,
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
) -> HTMLResponse:
    service = service_of(request)
    k, box = service.check_k(k), parse_bbox(bbox)
    data = await read_upload(service, file)
    outcome = await service.run(service.search_upload, data, k, box, True)
    name = (file.filename if file is not None else None) or "upload"
    return render(
        request,
        "results.html",
        query={"name": name, "landmark": None},
        query_src=data_uri(outcome.preview),
        box=box_style(box, outcome.image_size),
        rows=match_rows(service, outcome),
        k=k,
        ap=None,
        ap_setup=None,
        legend=(),
        size=outcome.image_size,
    )


@router.get("/images/{path:path}")
def image(request: Request, path: str, thumb: bool = False) -> Response:
    """A database or query image by its path under the image root; any other path (``..``,
    absolute, a non-image file beside the images) is not in the list and gets a 404."""
    service = service_of(request)
    file = service.servable.get(path)
    if file is None or not file.is_file():
        raise RequestError(404, f"There is no image '{path}' in this database.")
    if thumb:
        jpeg = file_thumbnail(file, file.stat().st_mtime_ns, service.settings.thumbnail_size)
        return Response(jpeg, media_type="image/jpeg", headers=CACHE)
    return FileResponse(file, headers=CACHE)
