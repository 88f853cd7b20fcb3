"""The web app: a gallery of a database's dataset queries, their ground-truth-marked
results and AP, image upload, and a JSON API (FastAPI + Jinja2 templates, served by uvicorn).

    retrieval-app db=DIR [host=127.0.0.1] [port=8000]

:func:`create_app` builds the ASGI app around a :class:`SearchService` (the database, its
network and index, loaded once); the entry point in ``__main__`` serves it.
"""

from retrieval.serving.app.service import SearchService
from retrieval.serving.app.settings import AppSettings
from retrieval.serving.app.web import create_app

__all__ = ["AppSettings", "SearchService", "create_app"]
