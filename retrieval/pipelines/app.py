"""``retrieval-app db=DIR [host=127.0.0.1] [port=8000] [k=20] ...``: the web app.

In this order, each failure one paragraph on stderr and exit code 2 (nothing half
started): the settings are checked (``port=99999``, ``k`` over ``max_k``...), the port is
bound (a busy one names itself), the database, its network and index load and are
checked against each other; only then does the server listen and say "serving on".
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval.pipelines.cli import hydra_command
from retrieval.serving.app.server import bind_port, serve_on
from retrieval.serving.app.service import SearchService
from retrieval.serving.app.settings import AppSettings
from retrieval.serving.app.web import create_app
from retrieval.utils.errors import UserFacingError

USAGE = "retrieval-app db=DIR [host=127.0.0.1] [port=8000]"


def app_settings(cfg: DictConfig) -> AppSettings:
    """The checked settings: a bad value is a UserFacingError before anything loads."""
    if OmegaConf.is_missing(cfg, "db") or not cfg.db:
        raise UserFacingError(f"db= is required (a database directory); usage: {USAGE}")
    try:
        return AppSettings.from_config(cfg)
    except ValueError as error:
        raise UserFacingError(f"invalid app setting: {error}") from None


def load_service(cfg: DictConfig, settings: AppSettings | None = None) -> SearchService:
    reranker = instantiate(cfg.rerank) if cfg.get("rerank") else None
    return SearchService.load(settings or app_settings(cfg), instantiate(cfg.search), reranker)


def serve(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = app_settings(cfg)
    with bind_port(settings.host, settings.port) as sock:
        service = load_service(cfg, settings)
        images, queries = len(service.artifact.image_paths), len(service.queries)

        def say_serving() -> None:
            print(
                f"serving {service.artifact.dataset} ({images} images, {queries} queries) "
                f"on http://{settings.host}:{settings.port}",
                flush=True,
            )

        serve_on(create_app(service), sock, settings.host, cfg.log_level, say_serving)


main = hydra_command("app", serve)

if __name__ == "__main__":
    main()
