"""What pages and JSON show of a search: one row per match, one card per query, URLs of
images. Shared by the HTML and JSON routes, so both say the same thing."""

from __future__ import annotations

import base64
from urllib.parse import quote

from retrieval.serving.app.service import Outcome, SearchService
from retrieval.serving.app.truth import QueryTruth


def image_url(relative: str | None, thumb: bool = False) -> str | None:
    if relative is None:
        return None
    return f"/images/{quote(relative)}" + ("?thumb=1" if thumb else "")


def match_rows(service: SearchService, outcome: Outcome) -> list[dict]:
    rows = []
    for match, label in zip(outcome.matches, outcome.labels or [None] * len(outcome.matches)):
        relative = service.url_of(match.path)
        rows.append(
            {
                "rank": match.rank,
                "score": round(match.score, 6),
                "index": match.index,
                "name": match.name,
                "label": label,
                "image_url": image_url(relative),
                "thumbnail_url": image_url(relative, thumb=True),
            }
        )
    return rows


def query_card(service: SearchService, query: QueryTruth) -> dict:
    relative = service.url_of(query.path)
    return {
        "id": query.id,
        "name": query.name,
        "landmark": query.landmark,
        "bbox": list(query.bbox) if query.bbox is not None else None,
        "positives": len(query.positives),
        "image_url": image_url(relative),
        "thumbnail_url": image_url(relative, thumb=True),
    }


def image_cards(service: SearchService, start: int, stop: int) -> list[dict]:
    """Cards of the database rows ``start..stop`` (a page of the database's images)."""
    artifact, cards = service.artifact, []
    for index in range(start, stop):
        relative = service.url_of(artifact.image_paths[index])
        cards.append(
            {
                "index": index,
                "name": artifact.image_names[index],
                "image_url": image_url(relative),
                "thumbnail_url": image_url(relative, thumb=True),
            }
        )
    return cards


def box_style(bbox, size: tuple[int, int] | None) -> str | None:
    """CSS placing a box over its image in percent, so it scales with the thumbnail."""
    if bbox is None or not size or not size[0] or not size[1]:
        return None
    width, height = size
    x1, y1 = max(bbox[0], 0) / width, max(bbox[1], 0) / height
    x2, y2 = min(bbox[2], width) / width, min(bbox[3], height) / height
    return (
        f"left:{100 * x1:.2f}%;top:{100 * y1:.2f}%;width:{100 * (x2 - x1):.2f}%;height:{100 * (y2 - y1):.2f}%"
    )


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
