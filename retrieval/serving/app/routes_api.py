"""The JSON API: health, the dataset's queries (a page at a time, as the gallery), searching
a dataset query or an upload. Errors are ``{"detail": "<a sentence>"}`` with a 4xx status
(see ``web.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import BaseModel

from retrieval.serving.app.boxes import parse_bbox
from retrieval.serving.app.paging import Page, PageNumber, PerPage, page_of
from retrieval.serving.app.service import Outcome, SearchService
from retrieval.serving.app.uploads import RequestError
from retrieval.serving.app.views import match_rows, query_card

router = APIRouter(prefix="/api", tags=["api"])


class Health(BaseModel):
    status: str
    dataset: str
    images: int
    dim: int
    queries: int
    ground_truth: str | None  # "classic" | "revisited" | None
    ground_truth_note: str
    search_backend: str
    rerank: str | None  # the re-ranker's class (SuperGlobal, Diffusion, KReciprocal) or None
    device: str
    max_upload_bytes: int


class QueryCard(BaseModel):
    id: int
    name: str
    landmark: str
    bbox: list[float] | None
    positives: int
    image_url: str | None
    thumbnail_url: str | None


class Paged(BaseModel):
    """Where a page of a long list sits: paging.Page as JSON, the links keeping ``per_page``."""

    page: int  # 1-based
    per_page: int
    pages: int
    total: int  # items in the whole list
    prev_url: str | None
    next_url: str | None

    @classmethod
    def fields_of(cls, pager: Page) -> dict:
        return {
            "page": pager.number,
            "per_page": pager.per_page,
            "pages": pager.pages,
            "total": pager.total,
            "prev_url": pager.prev_url,
            "next_url": pager.next_url,
        }


class QueryPage(Paged):
    items: list[QueryCard]


class MatchRow(BaseModel):
    rank: int
    score: float  # cosine similarity
    index: int  # row in the database
    name: str
    label: str | None  # good / ok / junk / wrong (revisited: easy / hard / junk / wrong)
    image_url: str | None
    thumbnail_url: str | None


class SearchResult(BaseModel):
    k: int
    results: list[MatchRow]
    query: QueryCard | None = None  # set for a dataset query
    ap: float | None = None  # the dataset query's AP over the full ranking
    ap_setup: str | None = None


def service_of(request: Request) -> SearchService:
    return request.app.state.service


def search_result(
    service: SearchService, k: int, outcome: Outcome, query: dict | None = None
) -> SearchResult:
    return SearchResult(
        k=k,
        results=[MatchRow(**row) for row in match_rows(service, outcome)],
        query=QueryCard(**query) if query else None,
        ap=outcome.ap,
        ap_setup=service.truth.ap_setup if query and service.truth else None,
    )


async def read_upload(service: SearchService, file: UploadFile | None) -> bytes:
    # one byte past the limit is enough to know it is too big
    data = await file.read(service.settings.max_upload_bytes + 1) if file is not None else b""
    if not data and (file is None or not file.filename):  # a form posted with no file chosen
        raise RequestError(400, "No file was uploaded: choose an image (form field 'file').")
    return data


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    service = service_of(request)
    return Health(
        status="ok",
        dataset=service.artifact.dataset,
        images=len(service.artifact.image_paths),
        dim=service.artifact.dim,
        queries=len(service.queries),
        ground_truth=service.truth.protocol if service.truth else None,
        ground_truth_note=service.truth_note,
        search_backend=service.searcher.index.backend,
        rerank=type(reranker).__name__ if (reranker := service.searcher.reranker) is not None else None,
        device=str(service.searcher.device),
        max_upload_bytes=service.settings.max_upload_bytes,
    )


@router.get("/queries", response_model=QueryPage)
def queries(request: Request, page: PageNumber = None, per_page: PerPage = None) -> QueryPage:
    """The dataset queries a page at a time (``?page=&per_page=``, as the gallery): a
    dataset can have more queries than one response should carry."""
    service = service_of(request)
    pager = page_of(len(service.queries), page, per_page, "/api/queries")
    cards = [QueryCard(**query_card(service, q)) for q in service.queries[pager.start : pager.stop]]
    return QueryPage(**Paged.fields_of(pager), items=cards)


FILTER_HELP = 'metadata expression, search=milvus only: dataset == "oxford5k", name like "all_souls%"'


@router.get("/queries/{query_id}/search", response_model=SearchResult)
async def search_query(
    request: Request,
    query_id: int,
    k: Annotated[int | None, Query(description="results to return")] = None,
    filter: Annotated[str | None, Query(description=FILTER_HELP)] = None,
) -> SearchResult:
    """Search with a dataset query (cropped to its box): matches with labels, and its AP
    (over the whole database, unfiltered: the evaluation's)."""
    service = service_of(request)
    query, k = service.dataset_query(query_id), service.check_k(k)
    service.check_filter(filter)
    outcome = await service.run(service.search_dataset_query, query, k, 0, filter)
    return search_result(service, k, outcome, query_card(service, query))


@router.post("/search", response_model=SearchResult)
async def search_upload(
    request: Request,
    file: Annotated[UploadFile | None, File()] = None,
    k: Annotated[int | None, Form()] = None,
    bbox: Annotated[str | None, Form(description="x1,y1,x2,y2 (pixels)")] = None,
    filter: Annotated[str | None, Query(description=FILTER_HELP)] = None,
) -> SearchResult:
    """Search with an uploaded image (multipart field ``file``), optionally cropped to ``bbox``."""
    service = service_of(request)
    k, box = service.check_k(k), parse_bbox(bbox)
    service.check_filter(filter)
    data = await read_upload(service, file)
    return search_result(service, k, await service.run(service.search_upload, data, k, box, filter))
