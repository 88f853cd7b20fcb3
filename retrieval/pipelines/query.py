"""Query a database with one image: the top-k database images, best first.

retrieval-query image=PATH db=DIR [k=10] [bbox=[x1,y1,x2,y2]] [--json]
    [search=ivfpq] [rerank=superglobal|diffusion|k_reciprocal] ["filter='dataset == \\"x\\"'" (search=milvus)]
    [ckpt_path=FILE (if the database's checkpoint moved)] [device=cpu]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from retrieval.pipelines.cli import hydra_command
from retrieval.serving.database import load_database
from retrieval.serving.searcher import DatabaseSearcher, Match
from retrieval.serving.self_check import self_check
from retrieval.utils.errors import UserFacingError
from retrieval.utils.validation import whole_number

USAGE = "retrieval-query image=PATH db=DIR [k=10] [bbox=[x1,y1,x2,y2]] [--json]"


def results_table(matches: Sequence[Match], title: str) -> Table:
    table = Table(title=title)
    for column, justify in (("rank", "right"), ("score", "right"), ("path", "left")):
        table.add_column(column, justify=justify)
    for m in matches:
        table.add_row(str(m.rank), f"{m.score:.4f}", m.path)
    return table


def run_query(cfg: DictConfig) -> list[Match]:
    for key in ("image", "db"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise UserFacingError(f"{key}= is required; usage: {USAGE}")
    k = whole_number(cfg.k, "k")  # before loading anything
    bbox = cfg.bbox
    if bbox is not None and not OmegaConf.is_list(bbox):
        raise UserFacingError(f"bbox={bbox!r} is not a box; write bbox=[x1,y1,x2,y2] (pixels)")
    filter = cfg.get("filter")
    if filter is not None and not isinstance(filter, str):
        raise UserFacingError(
            f'filter={filter!r} is not an expression; write it quoted: "filter=\'dataset == \\"NAME\\"\'"'
        )
    artifact = load_database(cfg.db)
    reranker = hydra.utils.instantiate(cfg.rerank) if cfg.get("rerank") else None
    searcher = DatabaseSearcher(
        artifact, hydra.utils.instantiate(cfg.search), cfg.ckpt_path, cfg.device, reranker
    )
    searcher.check_filter(filter)  # before any embedding: the backend decides
    if cfg.get("check", False):  # re-embed a sample of the database first (as the app does)
        self_check(searcher)
    matches = searcher.query(cfg.image, k, list(bbox) if bbox is not None else None, filter)
    if cfg.json:
        print(json.dumps([asdict(m) for m in matches], indent=1))
    else:
        Console().print(
            results_table(
                matches,
                f"top {len(matches)} of {len(artifact.image_paths)} ({artifact.dataset}) for {cfg.image}",
            )
        )
    return matches


main = hydra_command("query", run_query, flags={"--json": "json=true"})


if __name__ == "__main__":
    main()
