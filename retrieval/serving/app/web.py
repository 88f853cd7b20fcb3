"""The FastAPI application: routes, the upload body limit, security headers, HEAD wherever
GET, and errors that read as sentences (JSON ``{"detail": ...}`` under /api, an HTML page
elsewhere) and never show this server's absolute paths."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.serving.app import routes_api, routes_images, routes_pages
from retrieval.serving.app.middleware import HeadAsGetMiddleware, SecurityHeadersMiddleware
from retrieval.serving.app.service import SearchService
from retrieval.serving.app.uploads import FORM_OVERHEAD, BodyLimitMiddleware, RequestError

DESCRIPTION = (
    "Content-based image retrieval over one database: search with an uploaded image "
    "(`POST /api/search`) or with one of its dataset's queries, whose results carry "
    "their ground-truth labels and the query's AP."
)


def create_app(service: SearchService) -> FastAPI:
    """The app around a loaded service; the server's shutdown stops its worker threads."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    # no /docs or /redoc: their pages load scripts from a CDN; /openapi.json is the schema
    app = FastAPI(
        title="retrieval web app",
        description=DESCRIPTION,
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    # the last added runs first: every response, HEAD ones and refusals included, gets the headers
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(routes_api.router)
    app.include_router(routes_pages.router)
    app.include_router(routes_images.router)
    app.add_exception_handler(RequestError, lambda r, e: error_response(r, e.status, e.message))
    app.add_exception_handler(
        StarletteHTTPException, lambda r, e: error_response(r, e.status_code, str(e.detail))
    )
    app.add_exception_handler(
        RequestValidationError, lambda r, e: error_response(r, 422, validation_message(e))
    )
    return app


def validation_message(error: RequestValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in error.errors()]
    return "Invalid request: " + "; ".join(parts) + "."


def error_response(request: Request, status: int, message: str) -> Response:
    message = routes_api.service_of(request).public(message)
    if request.url.path.startswith("/api") or request.url.path == "/openapi.json":
        return JSONResponse({"detail": message}, status_code=status)
    if request.url.path == "/upload" and request.method == "POST":
        return routes_pages.upload_form(request, error=message, status_code=status)
    return routes_pages.render(request, "error.html", status, status=status, message=message)
