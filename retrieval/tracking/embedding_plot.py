"""2-D map of the embedding space: t-SNE (or PCA / UMAP) of the database embeddings,
coloured by landmark or class, queries drawn as outlined squares.

``project_2d`` and ``draw_scatter`` are pure; ``plot_embeddings`` takes an evaluation
result and its ground truth and writes a PNG (used by the tracking callback and evaluate.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retrieval.data.truth import OTHER, as_ground_truth
from retrieval.evaluation.protocols import EvaluationResult
from retrieval.tracking.canvas import BLACK, PALETTE, RGB, TEXT, blank, fit_text, font

log = logging.getLogger(__name__)

METHODS = ("tsne", "pca", "umap")
OTHER_COLOUR: RGB = (200, 200, 200)


def project_2d(
    embeddings: np.ndarray, method: str = "tsne", seed: int = 0, threads: int | None = 1
) -> np.ndarray:
    """(n, d) -> (n, 2). t-SNE runs on the top 50 principal components (the usual speed-up).

    ``threads`` caps OpenMP/BLAS threads: beside a training process (torch already uses
    every core) t-SNE's multi-threaded gradient spins against it — on a busy 2-core machine
    1055 points took 62 s with all threads and 17 s with one. None: no cap."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _project_2d(embeddings, method, seed)


def _project_2d(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise ValueError(f"embedding plot method must be one of {METHODS}, got {method!r}")
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if method == "pca" or n < 8:  # t-SNE / UMAP need a handful of neighbours
        return PCA(n_components=2, random_state=seed).fit_transform(x) if n > 2 else np.zeros((n, 2))
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ImportError(
                "embedding_method=umap needs umap-learn (pip install umap-learn); "
                "tsne and pca work without it"
            ) from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
    ).fit_transform(x)


def group_colours(groups: Sequence[str]) -> dict[str, RGB]:
    """Largest groups get the first palette colours; OTHER (unlabelled) is light grey."""
    names = [g for g, _ in Counter(groups).most_common() if g != OTHER]
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(sorted(names))}
    colours[OTHER] = OTHER_COLOUR
    return colours


def draw_scatter(
    points: np.ndarray,
    groups: Sequence[str],
    title: str = "",
    size: int = 640,
    highlight: Sequence[bool] | None = None,
    legend_width: int = 190,
) -> Image.Image:
    """Points coloured by group; ``highlight`` marks points (queries) drawn as outlined squares."""
    points = np.asarray(points, dtype=np.float64)
    highlight = np.zeros(len(points), bool) if highlight is None else np.asarray(highlight, bool)
    margin, top = 16, 30
    canvas = blank(size + legend_width, size + top)
    draw = ImageDraw.Draw(canvas)
    heading = fit_text(draw, title, size + legend_width - 2 * margin, 14)
    draw.text((margin, 8), heading, fill=TEXT, font=font(14))
    low, high = points.min(axis=0), points.max(axis=0)
    scale = (size - 2 * margin) / np.maximum(high - low, 1e-9)
    xy = (points - low) * scale + margin + np.array([0, top])
    colours = group_colours(groups)
    order = sorted(range(len(points)), key=lambda i: (groups[i] != OTHER, highlight[i]))  # others below
    for i in order:
        x, y = xy[i]
        colour = colours[groups[i]]
        if highlight[i]:
            draw.rectangle([x - 5, y - 5, x + 5, y + 5], fill=colour, outline=BLACK, width=2)
        else:
            r = 2.5 if groups[i] == OTHER else 3.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    counts = Counter(g for g, h in zip(groups, highlight) if not h)  # database points
    y = top + 4
    for name in [g for g in colours if g != OTHER] + ([OTHER] if OTHER in groups else []):
        if y > size + top - 40:
            draw.text((size + 4, y), f"… {len(colours) - 1} groups in all", fill=TEXT, font=font(12))
            break
        draw.rectangle([size + 4, y + 3, size + 14, y + 13], fill=colours[name])
        label = fit_text(draw, f"{name} ({counts[name]})", legend_width - 24, 12)
        draw.text((size + 20, y), label, fill=TEXT, font=font(12))
        y += 18
    if highlight.any():
        draw.rectangle([size + 4, y + 9, size + 14, y + 19], outline=BLACK, width=2)
        draw.text((size + 20, y + 6), "query", fill=TEXT, font=font(12))
    return canvas


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def plot_embeddings(
    result: EvaluationResult,
    gt: Any,
    path: Path | str,
    method: str = "tsne",
    max_points: int | None = 2000,
    seed: int = 0,
    title: str | None = None,
    include_queries: bool = True,
) -> Path | None:
    """Write the 2-D map of ``result``'s database (and query) embeddings to ``path`` (PNG).

    Returns the path, or None when the result carries no embeddings."""
    if result.database_embeddings is None:
        log.warning("embedding plot skipped: the evaluation result holds no embeddings")
        return None
    keep = _subsample(len(result.database_embeddings), max_points, seed)
    truth = as_ground_truth(gt)  # without one, every point is OTHER and queries are not drawn
    groups = truth.database_groups() if truth is not None else [OTHER] * len(result.database_embeddings)
    vectors, labels = [result.database_embeddings[keep]], [groups[i] for i in keep]
    is_query = [False] * len(keep)
    q_groups = truth.query_groups() if truth is not None else None
    # leave-one-out results rank the gallery against itself: its queries are already drawn
    queries = result.query_embeddings
    distinct = queries is not None and queries is not result.database_embeddings
    if include_queries and distinct and q_groups is not None:
        vectors.append(result.query_embeddings)
        labels += q_groups
        is_query += [True] * len(q_groups)
    points = project_2d(np.concatenate(vectors), method, seed)
    name = truth.name if truth is not None else ""
    title = title or f"{name}: {method} of {len(keep)} database embeddings" + (
        f" + {sum(is_query)} queries" if any(is_query) else ""
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scatter(points, labels, title, highlight=is_query).save(path)
    return path
