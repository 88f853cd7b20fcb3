"""A picture of what the model retrieves: per row one query (its box drawn in), then its
top-k database images, each framed by what the ground truth says about it.

Frames: green = a positive (good / ok, easy / hard, or the same class), grey = junk
(ignored by the metric), red = wrong. ``draw_retrieval_grid`` is pure drawing on images;
``build_grid_rows`` turns an evaluation result into rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from retrieval.data.truth import JUNK, POSITIVE_LABELS, WRONG, as_ground_truth
from retrieval.evaluation.protocols import EvaluationResult
from retrieval.tracking.canvas import RGB, TEXT, blank, fit_text, font

log = logging.getLogger(__name__)

GREEN: RGB = (0, 170, 60)
GREY: RGB = (160, 160, 160)
RED: RGB = (220, 30, 30)
BLUE: RGB = (0, 90, 200)  # the query
BOX: RGB = (255, 210, 0)  # the query's bounding box
COLOURS: dict[str, RGB] = {**{name: GREEN for name in POSITIVE_LABELS}, JUNK: GREY, WRONG: RED, "query": BLUE}
LEGEND = (("query", BLUE), ("positive", GREEN), ("junk", GREY), ("wrong", RED))
MARGIN, CAPTION, HEADER, GAP = 8, 16, 22, 14  # caption row, title/legend row, query | results gap


@dataclass(frozen=True)
class Cell:
    image: Image.Image  # any size: it is fitted into the thumbnail square
    label: str  # a key of COLOURS
    caption: str = ""


@dataclass(frozen=True)
class Row:
    query: Cell
    results: Sequence[Cell]


def thumbnail(image: Image.Image, size: int, bbox: Sequence[float] | None = None) -> Image.Image:
    """``image`` fitted (aspect kept) into a ``size`` square on dark grey, ``bbox`` drawn in."""
    image = image.convert("RGB")
    if bbox is not None:
        image = image.copy()
        width = max(2, round(max(image.size) / size * 2))  # about 2 px after shrinking
        ImageDraw.Draw(image).rectangle([float(v) for v in bbox], outline=BOX, width=width)
    square = blank(size, size, (40, 40, 40))
    fitted = ImageOps.contain(image, (size, size))
    square.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return square


def _draw_cell(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, cell: Cell, x: int, y: int, thumb: int, border: int
) -> None:
    colour = COLOURS.get(cell.label, GREY)
    draw.rectangle([x, y, x + thumb + 2 * border - 1, y + thumb + 2 * border - 1], fill=colour)
    canvas.paste(thumbnail(cell.image, thumb), (x + border, y + border))
    caption = fit_text(draw, cell.caption, thumb + 2 * border, 11)
    draw.text((x, y + thumb + 2 * border + 2), caption, fill=TEXT, font=font(11))


def cell_origin(row: int, column: int, thumb: int = 96, border: int = 4) -> tuple[int, int]:
    """Top-left pixel of a cell's frame; column 0 is the query, 1.. its ranked results."""
    cell_w = thumb + 2 * border
    x = MARGIN if column == 0 else MARGIN + cell_w + GAP + (column - 1) * (cell_w + 4)
    return x, MARGIN + HEADER + row * (cell_w + CAPTION + 6)


def draw_retrieval_grid(
    rows: Sequence[Row], thumb: int = 96, border: int = 4, title: str = ""
) -> Image.Image:
    """Rows of query + results; a title and a colour legend on top."""
    if not rows:
        raise ValueError("no rows to draw")
    columns = max(len(r.results) for r in rows)
    width = cell_origin(0, columns + 1, thumb, border)[0] - 4 + MARGIN
    height = cell_origin(len(rows), 0, thumb, border)[1] + MARGIN
    canvas = blank(width, height)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), fit_text(draw, title, width // 2, 13), fill=TEXT, font=font(13))
    x = width - MARGIN
    for name, colour in reversed(LEGEND):  # legend right-aligned on the title row
        x -= draw.textbbox((0, 0), name, font=font(12))[2] + 22
        draw.rectangle([x, MARGIN + 2, x + 12, MARGIN + 14], fill=colour)
        draw.text((x + 16, MARGIN), name, fill=TEXT, font=font(12))
    for r, row in enumerate(rows):
        for c, cell in enumerate([row.query, *row.results]):
            _draw_cell(canvas, draw, cell, *cell_origin(r, c, thumb, border), thumb, border)
    return canvas


def pick_queries(n_queries: int, count: int) -> list[int]:
    """Evenly spread query indices, the same every epoch so grids can be compared."""
    return sorted(set(np.linspace(0, n_queries - 1, min(count, n_queries)).round().astype(int).tolist()))


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def build_grid_rows(
    result: EvaluationResult, gt: Any, queries: Sequence[int], top_k: int, thumb: int = 96
) -> list[Row] | None:
    """Grid rows for ``queries``, or None when the ground truth is of a kind we cannot judge
    (not a :class:`~retrieval.data.truth.GroundTruth`)."""
    truth = as_ground_truth(gt)
    if truth is None:
        log.debug("retrieval grid skipped: protocol %r has no relevance labels we know", result.protocol)
        return None
    setup = "M" if "M" in result.per_query_ap else next(iter(result.per_query_ap), None)
    paths = truth.image_paths
    rows = []
    for q in queries:
        ranked = result.rankings[q, :top_k]
        labels = truth.relevance(q, ranked)
        path, bbox = truth.query_image(q)
        ap = result.per_query_ap[setup][q] if setup is not None else np.nan
        caption = ("" if np.isnan(ap) else f"AP {100 * ap:.0f} · ") + truth.query_name(q)
        query = Cell(thumbnail(_open(path), thumb, bbox), "query", caption)
        results = [
            Cell(thumbnail(_open(paths[i]), thumb), label, f"{rank + 1}. {label}")
            for rank, (i, label) in enumerate(zip(ranked, labels))
        ]
        rows.append(Row(query, results))
    return rows


def save_retrieval_grid(
    result: EvaluationResult,
    gt: Any,
    path: Path | str,
    n_queries: int = 4,
    top_k: int = 8,
    thumb: int = 96,
    title: str | None = None,
) -> Path | None:
    """Draw ``n_queries`` evenly spread queries with their ``top_k`` results into ``path``
    (PNG); None when the ground truth is of a kind the grid cannot judge."""
    rows = build_grid_rows(result, gt, pick_queries(len(result.rankings), n_queries), top_k, thumb)
    if rows is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = title if title is not None else f"{gt.name} · top {top_k}"  # rows: a GroundTruth
    draw_retrieval_grid(rows, thumb, title=title).save(path)
    return path
