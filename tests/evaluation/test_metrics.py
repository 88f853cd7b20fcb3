"""Metrics: parity with per-query loop transcriptions of the reference code, properties, hand cases.

The loop references below are written independently of retrieval.evaluation's metric modules, as
direct transcriptions of Oxford's compute_ap.cpp and of revisitop's compute_ap/compute_map
(python/evaluate.py in filipradenovic/revisitop; its ranks are [ndb, nq], ours [nq, ndb]).
bench/metrics.py times the vectorised code against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.data.ground_truth import Query
from retrieval.evaluation.class_metrics import leave_one_out_metrics, map_at_k, precision_at_k, recall_at_k
from retrieval.evaluation.landmark_metrics import (
    average_precisions,
    classic_metrics,
    precision_at_ks,
    reference_ap_at_k,
    revisited_metrics,
)
from retrieval.evaluation.ranking import rank_by_similarity

# ----------------------------------------------------------------------------- references


def cpp_compute_ap(pos: set, amb: set, ranked_list) -> float:
    """compute_ap.cpp (Philbin et al.), in float64 instead of the original float32."""
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size, j = 0, 0
    for item in ranked_list:
        if item in amb:
            continue
        if item in pos:
            intersect_size += 1
        recall = intersect_size / float(len(pos))
        precision = intersect_size / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def revisitop_compute_ap(ranks, nres) -> float:
    ap, recall_step = 0.0, 1.0 / nres
    for j in range(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def revisitop_compute_map(ranks, gnd, kappas=()):
    """revisitop compute_map; ``ranks`` is [ndb, nq] as in the original."""
    nq = len(gnd)
    aps, prs = np.zeros(nq), np.zeros((nq, len(kappas)))
    map_, pr, nempty = 0.0, np.zeros(len(kappas)), 0
    for i in range(nq):
        qgnd = np.asarray(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i], prs[i, :] = float("nan"), float("nan")
            nempty += 1
            continue
        qgndj = np.asarray(gnd[i].get("junk", np.empty(0)))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k, ij = 0, 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = revisitop_compute_ap(pos, len(qgnd))
        map_ += ap
        aps[i] = ap
        pos += 1
        for j in range(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    with np.errstate(invalid="ignore", divide="ignore"):  # all queries empty: NaN, not a crash
        return np.float64(map_) / (nq - nempty), aps, pr / (nq - nempty), prs


def loop_reference_ap_at_k(ranking, pos: set, k: int) -> float:
    """The seed project's AP@k: (sum of precision at each hit within the top k) / k."""
    hits, total = 0, 0.0
    for i, item in enumerate(ranking[:k]):
        if item in pos:
            hits += 1
            total += hits / (i + 1)
    return total / k


def loop_leave_one_out(similarity, labels, k):
    """R@k, P@k, AP@k = sum P(i)rel(i)/min(k, n_pos), per query; None for singleton classes."""
    out = []
    for q in range(len(labels)):
        order = [i for i in np.argsort(-similarity[q], kind="stable") if i != q][:k]
        rel = [labels[i] == labels[q] for i in order]
        n_pos = int(np.sum(labels == labels[q])) - 1
        if n_pos == 0:
            out.append(None)
            continue
        ap = sum(sum(rel[: i + 1]) / (i + 1) for i in range(len(rel)) if rel[i])
        out.append((float(any(rel)), sum(rel) / k, ap / min(k, n_pos)))
    return out


# ----------------------------------------------------------------------------- strategies


@st.composite
def retrieval_cases(draw, max_db: int = 40, max_q: int = 6, overlap: bool = False):
    """Random rankings (permutations) with disjoint positives/junk per query.

    Labels are drawn per database item from {none, positive, junk}; the probabilities vary
    per case so that empty junk, no positives and all-positive queries all occur.
    """
    n_db = draw(st.integers(1, max_db))
    n_q = draw(st.integers(1, max_q))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p_pos = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9]))
    p_junk = draw(st.sampled_from([0.0, 0.2, 0.5]))
    rankings = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    positives, junk = [], []
    for _ in range(n_q):
        u = rng.random(n_db)
        positives.append(np.flatnonzero(u < p_pos))
        junk_mask = (u >= p_pos) & (u < p_pos + p_junk)
        if overlap:
            junk_mask |= rng.random(n_db) < p_junk
        junk.append(np.flatnonzero(junk_mask))
    if draw(st.booleans()):  # positives all at the end of the ranking
        for q in range(n_q):
            is_pos = np.isin(rankings[q], positives[q])
            rankings[q] = np.concatenate([rankings[q][~is_pos], rankings[q][is_pos]])
    return rankings, positives, junk


def _cpp_aps(rankings, positives, junk):
    return np.array(
        [
            cpp_compute_ap(set(p.tolist()), set(j.tolist()), r.tolist()) if len(p) else np.nan
            for r, p, j in zip(rankings, positives, junk)
        ]
    )


# ----------------------------------------------------------------------------- parity


@settings(max_examples=500, deadline=None)
@given(retrieval_cases())
def test_ap_and_precision_match_revisitop_and_compute_ap_cpp(case):
    rankings, positives, junk = case
    ks = (1, 2, 5, 10)
    gnd = [{"ok": p, "junk": j} for p, j in zip(positives, junk)]
    _, ref_aps, _, ref_prs = revisitop_compute_map(rankings.T.copy(), gnd, ks)
    aps = average_precisions(rankings, positives, junk)
    np.testing.assert_allclose(aps, ref_aps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aps, _cpp_aps(rankings, positives, junk), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        precision_at_ks(rankings, positives, junk, ks), ref_prs, rtol=1e-12, atol=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(overlap=True))
def test_overlapping_positive_and_junk_follow_revisitop(case):
    rankings, positives, junk = case
    gnd = [{"ok": p, "junk": j} for p, j in zip(positives, junk)]
    _, ref_aps, _, ref_prs = revisitop_compute_map(rankings.T.copy(), gnd, (1, 5))
    np.testing.assert_allclose(average_precisions(rankings, positives, junk), ref_aps, atol=1e-12)
    np.testing.assert_allclose(precision_at_ks(rankings, positives, junk, (1, 5)), ref_prs, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(), st.integers(1, 40))
def test_truncated_rankings_match_compute_ap_cpp(case, depth):
    """A shortlist: positives never retrieved contribute 0 but still count in n_pos."""
    rankings, positives, junk = case
    short = rankings[:, :depth]
    np.testing.assert_allclose(
        average_precisions(short, positives, junk), _cpp_aps(short, positives, junk), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(), st.integers(1, 45))
def test_reference_ap_at_k_matches_loop(case, k):
    rankings, positives, _ = case
    expected = [
        loop_reference_ap_at_k(r.tolist(), set(p.tolist()), k) if len(p) else np.nan
        for r, p in zip(rankings, positives)
    ]
    np.testing.assert_allclose(reference_ap_at_k(rankings, positives, k), expected, atol=1e-12)


def test_realistic_size_parity():
    """70 queries × 600 images with tens of positives and junk, as in ROxford."""
    rng = np.random.default_rng(0)
    rankings = np.stack([rng.permutation(600) for _ in range(70)])
    labels = [rng.permutation(600)[: rng.integers(0, 120)] for _ in range(70)]
    positives = [np.sort(lab[: len(lab) * 2 // 3]) for lab in labels]
    junk = [np.sort(lab[len(lab) * 2 // 3 :]) for lab in labels]
    gnd = [{"ok": p, "junk": j} for p, j in zip(positives, junk)]
    ref_map, ref_aps, ref_pr, _ = revisitop_compute_map(rankings.T.copy(), gnd, (1, 5, 10))
    np.testing.assert_allclose(average_precisions(rankings, positives, junk), ref_aps, atol=1e-12)
    mean_precision = np.nanmean(precision_at_ks(rankings, positives, junk), axis=0)
    np.testing.assert_allclose(mean_precision, ref_pr, atol=1e-12)
    mean_ap = np.nanmean(average_precisions(rankings, positives, junk))
    assert mean_ap == pytest.approx(ref_map, abs=1e-12)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(), st.integers(0, 2**32 - 1))
def test_relabelling_database_indices_changes_nothing(case, seed):
    rankings, positives, junk = case
    relabel = np.random.default_rng(seed).permutation(rankings.shape[1])
    relabelled = average_precisions(
        relabel[rankings], [relabel[p] for p in positives], [relabel[j] for j in junk]
    )
    np.testing.assert_allclose(relabelled, average_precisions(rankings, positives, junk), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(), st.integers(0, 2**32 - 1))
def test_perfect_ranking_scores_one_wherever_the_junk_sits(case, seed):
    rankings, positives, junk = case
    rng = np.random.default_rng(seed)
    for q in range(len(rankings)):
        is_pos = np.isin(rankings[q], positives[q])
        rankings[q] = np.concatenate([rng.permutation(rankings[q][is_pos]), rankings[q][~is_pos]])
        rankings[q] = _scatter_junk(rankings[q], junk[q], rng)
    has_pos = np.array([len(p) > 0 for p in positives])
    aps = average_precisions(rankings, positives, junk)
    np.testing.assert_allclose(aps[has_pos], 1.0, rtol=1e-12)
    assert np.isnan(aps[~has_pos]).all()
    np.testing.assert_allclose(precision_at_ks(rankings, positives, junk)[has_pos], 1.0)


def _scatter_junk(ranking: np.ndarray, junk: np.ndarray, rng) -> np.ndarray:
    """The same ranking of non-junk items, with the junk items moved to random places."""
    is_junk = np.isin(ranking, junk)
    rest, junk_items = list(ranking[~is_junk]), rng.permutation(ranking[is_junk])
    for item in junk_items:
        rest.insert(int(rng.integers(0, len(rest) + 1)), item)
    return np.asarray(rest, dtype=ranking.dtype)


@settings(max_examples=100, deadline=None)
@given(retrieval_cases(), st.integers(0, 2**32 - 1))
def test_moving_junk_changes_nothing(case, seed):
    rankings, positives, junk = case
    rng = np.random.default_rng(seed)
    moved = np.stack([_scatter_junk(r, j, rng) for r, j in zip(rankings, junk)])
    np.testing.assert_allclose(
        average_precisions(moved, positives, junk), average_precisions(rankings, positives, junk), atol=1e-12
    )
    np.testing.assert_allclose(
        precision_at_ks(moved, positives, junk), precision_at_ks(rankings, positives, junk), atol=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(retrieval_cases(), st.integers(0, 2**32 - 1))
def test_ap_in_unit_interval_and_moving_a_positive_forward_never_hurts(case, seed):
    rankings, positives, junk = case
    before = average_precisions(rankings, positives, junk)
    finite = before[~np.isnan(before)]
    assert ((finite >= 0) & (finite <= 1 + 1e-12)).all()
    rng = np.random.default_rng(seed)
    for q in range(len(rankings)):
        pos_at = np.flatnonzero(np.isin(rankings[q], positives[q]))
        other_at = np.flatnonzero(~np.isin(rankings[q], positives[q]))
        if len(pos_at) == 0 or len(other_at) == 0 or other_at[0] > pos_at[-1]:
            continue
        b = rng.choice(pos_at[pos_at > other_at[0]])
        a = rng.choice(other_at[other_at < b])  # a non-positive ahead of that positive
        rankings[q, [a, b]] = rankings[q, [b, a]]
    after = average_precisions(rankings, positives, junk)
    assert (after[~np.isnan(before)] >= before[~np.isnan(before)] - 1e-12).all()


# ----------------------------------------------------------------------------- hand cases


def test_hand_computed_values():
    ranking = np.array([[0, 1, 2, 3]])
    # positives at ranks 0 and 2: (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 19/24
    no_junk = [np.array([], np.int64)]
    assert average_precisions(ranking, [np.array([0, 2])], no_junk)[0] == pytest.approx(19 / 24)
    # junk ahead of everything is removed first: the same 19/24
    with_junk = average_precisions(np.array([[9, 0, 1, 2, 3]]), [np.array([0, 2])], [np.array([9])])
    assert with_junk[0] == pytest.approx(19 / 24)
    # one positive at rank 1: the trapezoid from precision 0 to 1/2 gives 1/4, not 1/2
    assert average_precisions(ranking, [np.array([1])])[0] == pytest.approx(0.25)
    # two positives, only one in the shortlist: half of 1.0
    assert average_precisions(np.array([[5, 6]]), [np.array([5, 7])])[0] == pytest.approx(0.5)
    # revisitop P@10 with positives at 1-based ranks 1 and 3: kq = min(3, 10), P = 2/3
    np.testing.assert_allclose(
        precision_at_ks(ranking, [np.array([0, 2])], ks=(1, 2, 10)), [[1.0, 0.5, 2 / 3]]
    )
    # seed AP@3: hits at 1 and 3 -> (1 + 2/3) / 3
    assert reference_ap_at_k(ranking, [np.array([0, 2])], 3)[0] == pytest.approx(5 / 9)
    assert np.isnan(average_precisions(ranking, [np.array([], np.int64)])[0])


def test_rank_by_similarity_is_stable_on_ties():
    sim = np.array([[1.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(rank_by_similarity(sim), [[1, 2, 0, 3], [0, 1, 2, 3]])
    unsigned = np.array([[0, 3, 255]], np.uint8)  # must not wrap when negated
    np.testing.assert_array_equal(rank_by_similarity(unsigned), [[2, 1, 0]])


def _query(name: str, **labels) -> Query:
    return Query(
        name,
        "tower",
        Path(f"{name}.jpg"),
        **{k: np.asarray(sorted(v), dtype=np.int64) for k, v in labels.items()},
    )


def test_classic_protocol_uses_good_and_ok_and_ignores_junk():
    queries = [_query("a", good=[0], ok=[2], junk=[1]), _query("b", good=[3]), _query("c")]
    rankings = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    result = classic_metrics(rankings, queries, ks=(1, 3))
    # a: junk 1 removed -> positives at 0, 1 -> AP 1; b: positive at 3 -> (0/3 + 1/4)/2 = 1/8
    np.testing.assert_allclose(result.per_query_ap["classic"], [1.0, 1 / 8, np.nan])
    assert result.metrics["mAP"] == pytest.approx((1 + 1 / 8) / 2)
    assert result.metrics["mP@1"] == pytest.approx(0.5)  # c has no positives: left out
    assert result.metrics["AP@3"] == pytest.approx((1 + 1) / 3 / 2)  # a: 2 hits of precision 1


def test_revisited_setups():
    q = _query("q", easy=[0], hard=[2], junk=[1])
    rankings = np.array([[3, 2, 1, 0], [0, 1, 2, 3]])
    result = revisited_metrics(rankings, [q, _query("empty")], ks=(1,))
    # E: ranking minus {1, 2} is [3, 0] -> easy at rank 1 -> 1/4; H: [3, 2] -> 1/4;
    # M: [3, 2, 0] -> (0 + 1/2)/2/2 + (1/2 + 2/3)/2/2 = 5/12
    assert result.metrics["E/mAP"] == pytest.approx(0.25)
    assert result.metrics["H/mAP"] == pytest.approx(0.25)
    assert result.metrics["M/mAP"] == pytest.approx(5 / 12)
    assert result.metrics["M/mP@1"] == 0.0
    assert np.isnan(result.per_query_ap["E"][1])


# ----------------------------------------------------------------------------- leave-one-out


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_leave_one_out_matches_loop(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    similarity = rng.integers(0, 4, (n, n)).astype(np.float64)  # many ties
    ks = (1, 3, 7)
    got = leave_one_out_metrics(similarity, labels, ks)
    for k in ks:
        rows = [r for r in loop_leave_one_out(similarity, labels, k) if r is not None]
        for name, col in (("R", 0), ("P", 1), ("mAP", 2)):
            expected = np.mean([r[col] for r in rows]) if rows else np.nan
            np.testing.assert_allclose(got[f"{name}@{k}"], expected, atol=1e-12)
    # an integer ranking (the query still in it) gives the same numbers as the similarity
    from_rankings = leave_one_out_metrics(rank_by_similarity(similarity), labels, ks)
    assert from_rankings == pytest.approx(got, nan_ok=True)


def test_leave_one_out_hand_case():
    labels = np.array([0, 0, 1, 1])
    similarity = np.array([[9, 1, 5, 0], [1, 9, 0, 5], [5, 0, 9, 1], [0, 1, 5, 9]], dtype=float)
    # 0: ranks 2, 1, 3 -> first hit at 2; 1: 3, 0 -> hit 2; 2: 0, 3 -> hit 2; 3: 2 -> hit 1
    assert recall_at_k(similarity, labels, ks=(1, 2)) == {"R@1": 0.25, "R@2": 1.0}
    assert precision_at_k(similarity, labels, ks=(2,)) == {"P@2": 0.5}
    assert map_at_k(similarity, labels, ks=(2,))["mAP@2"] == pytest.approx((0.5 * 3 + 1) / 4)
