"""Ranking a large database in bounded memory: each query's first ``depth`` images plus the
exact rank of every labelled image (positives and junk), from database blocks, never an
[n_queries, n_database] similarity or ranking in memory.

Exactness: the full ranking is ``np.argsort(-similarity, kind="stable")`` (descending
score, ties by lower index). Each (score, index) pair is mapped to one int64 key that sorts
in exactly that order (the float32 bits made monotone, then the index in the low bits), so
a top-k is an ``np.partition`` of keys and the rank of a labelled image is the number of
keys below its own, summed over blocks. The metrics computed from these ranks equal those
of the full ranking to the last bit (tested against :func:`.ranking.positive_ranks`).

Two passes over the database: the first keeps the top ``depth`` keys per query and reads
each labelled image's score from the very block product it is ranked in (so a score never
differs by an ulp between the two), the second counts, per labelled image, the keys below
it. Memory: O(n_queries × block) for the block's similarities and keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.evaluation.ranking import PositiveRanks, flatten_index_lists
from retrieval.evaluation.vectors import unit_rows

BLOCK_ELEMENTS = 1 << 21  # scores per block (8 MB of float32, 16 MB of keys), any query count
_SCORE_BITS, _KEY_BITS = 32, 63


def descending_keys(
    scores: np.ndarray, columns: np.ndarray, index_bits: int, prefix: np.ndarray | int = 0
) -> np.ndarray:
    """int64 keys that sort like (-score, index): the float32 bits of -score made monotone
    (negative floats get their 31 low bits flipped), shifted above ``index_bits`` bits that
    hold the column index; ``prefix`` (already shifted) is OR-ed on top. One int64 array is
    allocated, the rest is done in place (this runs on every score of a 1M database)."""
    negated = np.negative(scores, dtype=np.float32)
    negated += np.float32(0.0)  # -0.0 -> +0.0: argsort ties them
    bits = negated.view(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # signed int32 order = float order
    keys = bits.astype(np.int64)
    keys += 1 << 31
    keys <<= index_bits
    keys |= np.asarray(columns, dtype=np.int64)
    keys |= prefix
    return keys


@dataclass(frozen=True)
class TopRanking:
    """Each query's first ``depth`` database images ([nq, depth], best first, scores beside)
    and the 0-based position in the full ranking of every labelled (query, image) pair."""

    ids: np.ndarray  # int64 [nq, depth]
    scores: np.ndarray  # float32 [nq, depth]
    labelled: np.ndarray  # int64 sorted keys q * n_database + image
    positions: np.ndarray  # int64 [len(labelled)]: 0-based rank in the query's full ranking
    n_database: int

    def with_head(self, head: np.ndarray) -> TopRanking:
        """The same ranking with its first columns re-ordered (a re-ranker's output: each row
        a permutation of the first ``head.shape[1]`` ids)."""
        head = np.asarray(head, dtype=np.int64)
        width = head.shape[1]
        original = self.ids[:, :width]
        if width > self.ids.shape[1] or not np.array_equal(np.sort(head, axis=1), np.sort(original, axis=1)):
            raise ValueError("a re-ranked head must permute the ranking's first columns")
        # a labelled image inside the head moves to its new column, the rest keep their rank;
        # its column is found by one searchsorted over global keys q * n + image of the heads
        in_head = self.positions < width
        lookup = np.argsort(head, axis=1)
        rows = np.arange(len(head), dtype=np.int64)[:, None] * self.n_database
        head_keys = (rows + np.take_along_axis(head, lookup, axis=1)).ravel()
        positions = self.positions.copy()
        positions[in_head] = lookup.ravel()[np.searchsorted(head_keys, self.labelled[in_head])]
        ids = self.ids.copy()
        ids[:, :width] = head
        return TopRanking(ids, self.scores, self.labelled, positions, self.n_database)

    def positive_ranks(
        self, positives: Sequence[np.ndarray], junk: Sequence[np.ndarray] | None = None
    ) -> PositiveRanks:
        """As :func:`.ranking.positive_ranks` on the full ranking (every index must be labelled)."""
        n_queries = len(self.ids)
        pos_q, pos_rank, n_pos = self._ranks_of(positives)
        junk_q, junk_rank, _ = self._ranks_of(
            junk if junk is not None else [np.empty(0, np.int64)] * n_queries
        )
        width = self.n_database
        pos_key, junk_key = pos_q * width + pos_rank, np.sort(junk_q * width + junk_rank)
        order_by_rank = np.argsort(pos_key, kind="stable")
        pos_q, pos_rank, pos_key = pos_q[order_by_rank], pos_rank[order_by_rank], pos_key[order_by_rank]
        junk_before = np.searchsorted(junk_key, pos_key) - np.searchsorted(junk_key, pos_q * width)
        per_query = np.bincount(pos_q, minlength=n_queries)
        first = np.cumsum(per_query) - per_query
        order = np.arange(len(pos_q), dtype=np.int64) - first[pos_q]
        return PositiveRanks(pos_q, order, pos_rank - junk_before, n_pos)

    def _ranks_of(self, index_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(index_lists) != len(self.ids):
            raise ValueError(f"{len(self.ids)} queries need as many index lists")
        q, image = flatten_index_lists(index_lists)
        keys = np.unique(q * self.n_database + image)  # duplicates count once
        where = np.searchsorted(self.labelled, keys)
        if len(keys) and (where.max() >= len(self.labelled) or np.any(self.labelled[where] != keys)):
            raise ValueError("an index list names an image that was not labelled when ranking")
        q = keys // self.n_database
        return q, self.positions[where], np.bincount(q, minlength=len(self.ids)).astype(np.int64)


def rank_top_and_labelled(
    queries: np.ndarray,
    database: np.ndarray,
    depth: int,
    labelled: Sequence[np.ndarray] | None = None,
    block_columns: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> TopRanking:
    """Cosine ranking of ``database`` (an array or a memory map, read block by block) for
    every query: its top ``depth`` and the full-ranking position of each of ``labelled[q]``
    (``None``: nothing labelled, one pass). Queries and database images are taken in blocks
    of about ``BLOCK_ELEMENTS`` scores (``block_columns`` database images at once)."""
    q_vectors = unit_rows(queries)
    n_queries, n_db = len(q_vectors), len(database)
    labelled = [np.empty(0, np.int64)] * n_queries if labelled is None else labelled
    if len(labelled) != n_queries:
        raise ValueError(f"{n_queries} queries need as many labelled index lists")
    index_bits = max(1, int(n_db).bit_length())
    query_bits = _KEY_BITS - _SCORE_BITS - index_bits  # queries ranked together per group
    if query_bits < 1:
        raise ValueError(f"{n_db} database images: too many for 63-bit rank keys")
    # queries ranked together: as the key bits allow and so that a block stays ~BLOCK_ELEMENTS
    group = min(1 << query_bits, max(1, BLOCK_ELEMENTS // 1024))
    block_columns = block_columns or max(1024, BLOCK_ELEMENTS // min(group, max(n_queries, 1)))
    parts = [
        _rank_group(
            q_vectors[g : g + group], database, depth, labelled[g : g + group], block_columns, progress
        )
        for g in range(0, n_queries, group)  # one group unless there are > 1024 queries for 1M images
    ]
    offsets = np.cumsum([0] + [len(p.ids) for p in parts[:-1]]) * n_db
    return TopRanking(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labelled + o for p, o in zip(parts, offsets)]),
        np.concatenate([p.positions for p in parts]),
        n_db,
    )


def _rank_group(
    q_vectors: np.ndarray,
    database: np.ndarray,
    depth: int,
    labelled: Sequence[np.ndarray],
    block_columns: int,
    progress: Callable[[int], None] | None,
) -> TopRanking:
    n_queries, n_db = len(q_vectors), len(database)
    index_bits = max(1, int(n_db).bit_length())
    query_shift = _SCORE_BITS + index_bits
    depth = max(0, min(depth, n_db))
    lab_q, lab_image = flatten_index_lists(labelled)
    lab_keys = np.unique(lab_q * n_db + lab_image)  # sorted by query, then image
    lab_q, lab_image = lab_keys // n_db, lab_keys % n_db
    lab_score = np.empty(len(lab_keys), dtype=np.float32)
    row_prefix = np.arange(n_queries, dtype=np.int64)[:, None] << query_shift

    def block_keys(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        # the same call for the same block: the same float32 bits in both passes
        scores = q_vectors @ unit_rows(np.asarray(database[start:stop])).T
        return scores, descending_keys(scores, np.arange(start, stop), index_bits, row_prefix)

    top = np.empty((n_queries, 0), dtype=np.int64)
    blocks = [(start, min(start + block_columns, n_db)) for start in range(0, n_db, block_columns)]
    for start, stop in blocks:  # pass 1: top keys, and each labelled image's score
        scores, keys = block_keys(start, stop)
        top = _smallest(np.concatenate([top, keys], axis=1), depth)
        inside = (lab_image >= start) & (lab_image < stop)
        lab_score[inside] = scores[lab_q[inside], lab_image[inside] - start]
        if progress:
            progress(stop - start)
    top.sort(axis=1)
    ids = top & ((1 << index_bits) - 1)
    bits = (((top >> index_bits) & ((1 << _SCORE_BITS) - 1)) - (1 << 31)).astype(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # the transform is its own inverse
    top_scores = -bits.view(np.float32) + np.float32(0.0)
    # pass 2: for each labelled key, the keys of its query's row that sort before it. One
    # searchsorted of every block key into the sorted labelled keys (query bits on top keep
    # the queries apart), a cumulative count, minus the earlier queries' whole rows.
    own = descending_keys(lab_score, lab_image, index_bits, lab_q << query_shift)
    order = np.argsort(own)
    sorted_own = own[order]
    positions = np.zeros(len(own), dtype=np.int64)
    for start, stop in blocks if len(own) else ():
        slots = np.searchsorted(sorted_own, block_keys(start, stop)[1].ravel(), side="right")
        below = np.cumsum(np.bincount(slots, minlength=len(own) + 1)[: len(own)])
        positions[order] += below - lab_q[order] * (stop - start)
        if progress:
            progress(stop - start)
    return TopRanking(ids, top_scores, lab_keys, positions, n_db)


def _smallest(keys: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` smallest keys of each row, unordered."""
    if keys.shape[1] <= depth:
        return keys
    return np.partition(keys, depth - 1, axis=1)[:, :depth] if depth else keys[:, :0]
