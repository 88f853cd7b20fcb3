"""Query a database with one image: the top-k database images, best first.

    python -m retrieval.serving.query image=PATH db=DIR [k=10] [bbox=[x1,y1,x2,y2]] [--json]
        [search=ivfpq] [ckpt_path=FILE (if the database's checkpoint moved)] [device=cpu]

The query goes through the database's own network, eval transform, scales and whitening,
so its descriptor lives in the same space as the database's.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.table import Table

from retrieval.datamodules.image_io import load_rgb
from retrieval.serving.database import DatabaseArtifact, load_database, load_model_for_database
from retrieval.serving.embed import embed_batch, resolve_device
from retrieval.serving.search import SearchIndex
from retrieval.utils.errors import UserFacingError, exit_on_user_error

USAGE = "python -m retrieval.serving.query image=PATH db=DIR [k=10] [bbox=[x1,y1,x2,y2]] [--json]"


@dataclass(frozen=True)
class Match:
    rank: int  # 1-based
    score: float  # cosine similarity
    index: int  # row in the database
    name: str
    path: str


class DatabaseSearcher:
    """A loaded database, its network and its search index: answers image queries.
    Build it once and reuse it (a web app, a batch of queries)."""

    def __init__(self, artifact: DatabaseArtifact,
                 index_factory: Callable[[np.ndarray], SearchIndex] = SearchIndex,
                 ckpt_path: str | Path | None = None, device: str = "auto") -> None:
        self.artifact = artifact
        self.device = resolve_device(device)
        model, self.transform = load_model_for_database(artifact, ckpt_path)
        self.model = model.to(self.device)
        self.index = index_factory(artifact.embeddings)

    def embed(self, image: str | Path, bbox: Sequence[float] | None = None) -> np.ndarray:
        """The query's searchable vector ``(1, dim)``: network, then the database's whitening."""
        return self.embed_image(_read_image(Path(image), bbox))

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """:meth:`embed` for an RGB image already in memory (a web upload: never written to disk)."""
        batch = self.transform(image).unsqueeze(0).to(self.device)
        descriptor = embed_batch(self.model, batch, self.artifact.scales).cpu().numpy()
        whitening = self.artifact.whitening
        return whitening.apply(descriptor) if whitening is not None else descriptor

    def query(self, image: str | Path, k: int = 10, bbox: Sequence[float] | None = None) -> list[Match]:
        return self.search_vector(self.embed(image, bbox), k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Match]:
        """The top-``k`` matches of one searchable vector ``(1, dim)`` (from :meth:`embed`)."""
        scores, indices = self.index.search(vector, k)
        a = self.artifact
        return [Match(rank, float(s), int(i), a.image_names[i], a.image_paths[i])
                for rank, (s, i) in enumerate(zip(scores[0], indices[0]), start=1) if i >= 0]


def _read_image(path: Path, bbox: Sequence[float] | None):
    if not path.is_file():
        raise UserFacingError(f"query image {path} does not exist (image=PATH)")
    if bbox is not None and len(bbox) != 4:
        raise UserFacingError(f"bbox must be [x1,y1,x2,y2], got {list(bbox)}")
    try:
        return load_rgb(path, tuple(float(v) for v in bbox) if bbox is not None else None)
    except (UnidentifiedImageError, OSError) as error:
        raise UserFacingError(f"query image {path} could not be read as an image ({error})") from None


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
    artifact = load_database(cfg.db)
    searcher = DatabaseSearcher(artifact, hydra.utils.instantiate(cfg.search), cfg.ckpt_path, cfg.device)
    bbox = list(cfg.bbox) if cfg.bbox is not None else None
    matches = searcher.query(cfg.image, int(cfg.k), bbox)
    if cfg.json:
        print(json.dumps([asdict(m) for m in matches], indent=1))
    else:
        Console().print(results_table(matches, f"top {len(matches)} of {len(artifact.image_paths)} "
                                               f"({artifact.dataset}) for {cfg.image}"))
    return matches


@hydra.main(version_base="1.3", config_path="../../configs", config_name="query.yaml")
@exit_on_user_error
def _main(cfg: DictConfig) -> None:
    run_query(cfg)


def main() -> None:
    # `--json` reads like a flag to people; Hydra only takes key=value overrides
    if "--json" in sys.argv:
        sys.argv = [a for a in sys.argv if a != "--json"] + ["json=true"]
    _main()


if __name__ == "__main__":
    main()
