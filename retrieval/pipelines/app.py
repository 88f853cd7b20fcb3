"""``retrieval-app db=DIR [host=127.0.0.1] [port=8000] [k=20] ...``: the web app.

Loads the database, its network and index once, checks that they agree, then serves the
app with uvicorn. A missing or mismatched database stops it here with one paragraph and
exit code 2, before anything listens.
"""

from __future__ import annotations

import logging

import uvicorn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval.pipelines.cli import hydra_command
from retrieval.serving.app.service import SearchService
from retrieval.serving.app.settings import AppSettings
from retrieval.serving.app.web import create_app
from retrieval.utils.errors import UserFacingError

USAGE = "retrieval-app db=DIR [host=127.0.0.1] [port=8000]"


def load_service(cfg: DictConfig) -> SearchService:
    if OmegaConf.is_missing(cfg, "db") or not cfg.db:
        raise UserFacingError(f"db= is required (a database directory); usage: {USAGE}")
    try:
        settings = AppSettings.from_config(cfg)
    except ValueError as error:
        raise UserFacingError(f"invalid app setting: {error}") from None
    return SearchService.load(settings, instantiate(cfg.search))


def serve(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    service = load_service(cfg)
    app = create_app(service)
    print(
        f"serving {service.artifact.dataset} ({len(service.artifact.image_paths)} images, "
        f"{len(service.queries)} queries) on http://{cfg.host}:{cfg.port}",
        flush=True,
    )
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.log_level)


main = hydra_command("app", serve)

if __name__ == "__main__":
    main()
