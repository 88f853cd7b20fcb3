"""Re-ranking parity: each re-ranker against a transcription of its public reference
implementation, kept loop for loop (torch / scipy where the reference uses them), on random
clustered descriptors. The largest score difference seen is recorded beside each assert."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch

from retrieval.evaluation.reranking.diffusion import Diffusion, database_graph, mutual_knn_affinity
from retrieval.evaluation.reranking.k_reciprocal import KReciprocal, k_reciprocal_distance
from retrieval.evaluation.reranking.superglobal import SuperGlobal
from retrieval.evaluation.vectors import l2_normalize


def clustered(n_db: int, n_q: int, dim: int, seed: int, clusters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit descriptors around a few centres, so that neighbourhoods are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    db = centres[rng.integers(clusters, size=n_db)] + 0.6 * rng.standard_normal((n_db, dim))
    q = centres[rng.integers(clusters, size=n_q)] + 0.6 * rng.standard_normal((n_q, dim))
    return l2_normalize(q).astype(np.float32), l2_normalize(db).astype(np.float32)


# ------------------------------------------------------------------ SuperGlobal
# Reference: github.com/ShihaoShao-GH/SuperGlobal, modules/reranking/MDescAug.py and
# modules/reranking/RerankwMDA.py (called as in test/test_model.py), ported with .cuda()
# dropped; ranks are [n_db, n_q] there.
def reference_mdescaug(X, Q, ranks, M=400, K=9, beta=0.15):
    K = K + 1
    ranks_trans_1000 = torch.transpose(ranks, 1, 0)[:, :M]
    X_tensor1 = X[ranks_trans_1000].clone()
    res_ie = torch.einsum("abc,adc->abd", X_tensor1, X_tensor1)
    res_ie_ranks = torch.unsqueeze(torch.argsort(-res_ie.clone(), axis=-1)[:, :, :K], -1)
    res_ie_ranks_value = torch.unsqueeze(-torch.sort(-res_ie.clone(), axis=-1)[0][:, :, :K], -1)
    res_ie_ranks_value[:, :, 1:, :] *= beta
    res_ie_ranks_value[:, :, 0:1, :] = 1.0
    res_ie_ranks = torch.squeeze(res_ie_ranks, -1)
    x_dba = X[ranks_trans_1000]
    x_dba_list = []
    for i, j in zip(res_ie_ranks, x_dba):
        x_dba_list.append(j[i])
    x_dba = torch.stack(x_dba_list, 0)
    x_dba = torch.sum(x_dba * res_ie_ranks_value, 2) / torch.sum(res_ie_ranks_value, 2)
    res_top1000_dba = torch.einsum("ac,adc->ad", Q, x_dba)
    ranks_trans_1000_pre = torch.argsort(-res_top1000_dba, -1)
    rerank_dba_final = []
    for i in range(ranks_trans_1000_pre.shape[0]):
        rerank_dba_final.append(ranks_trans_1000[i][ranks_trans_1000_pre[i]])
    return rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba


def reference_rerank_wmda(
    ranks, rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba, M=400, K=9, beta=0.15
):
    K = K + 1
    ranks_trans_1000 = torch.stack(rerank_dba_final, 0)
    ranks_value_trans_1000 = -torch.sort(-res_top1000_dba, -1)[0]
    ranks_trans = torch.unsqueeze(ranks_trans_1000_pre[:, :K], -1)
    ranks_value_trans = torch.unsqueeze(ranks_value_trans_1000[:, :K].clone(), -1)
    ranks_value_trans[:, :, :] *= beta  # computed, never used (as in the reference)
    X1 = torch.take_along_dim(x_dba, ranks_trans, 1)
    X2 = torch.take_along_dim(x_dba, torch.unsqueeze(ranks_trans_1000_pre, -1), 1)
    X1 = torch.max(X1, 1, True)[0]
    res_rerank = torch.sum(torch.einsum("abc,adc->abd", X1, X2), 1)
    res_rerank = (ranks_value_trans_1000 + res_rerank) / 2.0
    res_rerank_ranks = torch.argsort(-res_rerank, axis=-1)
    rerank_qe_final = []
    ranks_transpose = torch.transpose(ranks, 1, 0)[:, M:]
    for i in range(res_rerank_ranks.shape[0]):
        rerank_qe_final.append(
            torch.concat([ranks_trans_1000[i][res_rerank_ranks[i]], ranks_transpose[i]], 0)
        )
    return torch.transpose(torch.stack(rerank_qe_final, 0), 1, 0), res_rerank


@pytest.mark.parametrize(("m", "k", "beta"), [(400, 9, 0.15), (60, 3, 0.5)])
def test_superglobal_matches_reference(m, k, beta):
    q, db = clustered(700, 12, 32, seed=1)
    X, Q = torch.from_numpy(db), torch.from_numpy(q)
    ranks = torch.argsort(-(X @ Q.T), axis=0)  # [n_db, n_q] as in test_model.py
    out = reference_mdescaug(X, Q, ranks, m, k, beta)
    expected, _ = reference_rerank_wmda(ranks, *out, M=m, K=k, beta=beta)
    shortlist = ranks.T[:, :m].numpy().astype(np.int64)
    ours = SuperGlobal(M=m, K=k, beta=beta, query_block=5)(q, db, shortlist)
    np.testing.assert_array_equal(ours, expected.T[:, :m].numpy())  # same ranking, all 12 queries
    # 98% of the top-400 positions move; largest |ours - reference| seen: refined descriptors
    # 1.5e-7, final scores 2.4e-7 (float32 sums in another order)
    from retrieval.evaluation.reranking.superglobal import mdescaug, rerank_with_mda

    refined = mdescaug(db[shortlist], k, beta)
    np.testing.assert_allclose(refined, out[3].numpy(), atol=1e-5)
    _, final = rerank_with_mda(q, refined, k)
    reference_final = torch.sort(
        reference_rerank_wmda(ranks, *out, M=m, K=k, beta=beta)[1], -1, descending=True
    )[0]
    assert np.abs(final - reference_final.numpy()).max() < 1e-5


# ------------------------------------------------------------------ diffusion
# Reference: github.com/ahmetius/diffusion-retrieval (Iscen et al.'s MATLAB): knngraph.m,
# transition_matrix.m, trunclap.m, ymake.m, findtrunc.m, dfs.m and the truncated branch of
# run_test.m, transcribed. pcg(A, y, tol, it) becomes scipy's cg(rtol=tol, maxiter=it), as in
# the Python port github.com/fyang93/diffusion (diffusion.py: linalg.cg(..., tol=1e-6, maxiter=20)).
def reference_knngraph(knn, sim):  # knn, sim: k x N (MATLAB layout), 0-based ids
    n = knn.shape[1]
    sim = sim.copy()
    sim[sim < 0] = 0
    rows, cols, weights = [], [], []
    for i in range(n):
        mem = np.isin(knn[:, knn[:, i]], i).sum(axis=0)
        if mem.any():
            found = np.nonzero(mem)[0]
            rows += [i] * len(found)
            cols += list(knn[found, i])
            weights += list(sim[found, i])
    a = sparse.csr_matrix((np.asarray(weights, float), (rows, cols)), shape=(n, n)).tolil()
    a.setdiag(0)
    return a.tocsr()


def reference_transition_matrix(w):
    d = np.asarray(w.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        d = sparse.diags(d**-0.5)
    return d @ w @ d


def reference_truncated_query(a_, lvecs, qv, topn, kq, gamma, alpha, tol, it):
    sims = lvecs @ qv
    knn = np.argsort(-sims, kind="stable")[:topn]  # findtrunc: knn_wrap(v, qv, topn)
    sub = np.nonzero(np.isin(np.arange(len(lvecs)), knn))[0]
    t = reference_transition_matrix(a_[sub][:, sub])  # trunclap
    lap = sparse.identity(len(sub)) - alpha * t
    lap.data[~np.isfinite(lap.data)] = 0  # MATLAB's sparse product never touches empty rows
    s = lvecs[sub] @ qv  # ymake on v(:, sub)
    order = np.argsort(-s, kind="stable")
    y = np.zeros(len(sub))
    y[order[:kq]] = np.maximum(s[order[:kq]].astype(float) ** gamma, 0)
    f = np.zeros(len(lvecs))
    f[sub] = sparse_linalg.cg(lap, y, rtol=tol, maxiter=it)[0]  # dfs
    return f


@pytest.mark.parametrize(("k", "kq", "gamma", "truncation"), [(50, 10, 3.0, 1000), (12, 5, 2.0, 120)])
def test_diffusion_matches_reference(k, kq, gamma, truncation):
    q, db = clustered(400, 6, 24, seed=2)
    sims = db @ db.T
    knn = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # knn_wrap(lvecs, lvecs, k)
    a_ = reference_knngraph(knn.T, (np.take_along_axis(sims, knn, 1) ** gamma).T)
    ours_graph = database_graph(db, k, gamma)
    assert abs(ours_graph - a_).max() < 1e-5  # largest seen 8.4e-7 (float32 vs float64 s^gamma)
    diffusion = Diffusion(k=k, kq=kq, gamma=gamma, truncation=truncation)
    top = min(truncation, len(db))
    shortlist = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :top]
    ours_f = diffusion.scores(ours_graph, q, db, shortlist)
    reranked = diffusion(q, db, shortlist, ours_graph)
    # without a graph: only the shortlists' part is built (here 120 of 400 images: a subgraph)
    np.testing.assert_array_equal(diffusion(q, db, shortlist), reranked)
    for row in range(len(q)):
        f = reference_truncated_query(a_, db, q[row], truncation, kq, gamma, 0.99, 1e-6, 20)
        # largest |ours - reference| seen 1.8e-6 on scores up to 16 (relative 1.4e-7); 86% / 48%
        # of the shortlist positions move
        np.testing.assert_allclose(ours_f[row], f[shortlist[row]], rtol=1e-5, atol=1e-6)
        expected = shortlist[row][np.argsort(-f[shortlist[row]], kind="stable")]
        np.testing.assert_array_equal(reranked[row], expected)


def test_mutual_graph_is_symmetric_and_keeps_only_mutual_pairs():
    ids = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
    sims = np.ones(ids.shape) * 0.5
    a = mutual_knn_affinity(ids, sims, gamma=1).toarray()
    # 0-1, 0-2, 2-3 are mutual; 1-3 is one-sided (3 lists 1, 1 lists 3: mutual too)
    assert (a == a.T).all() and np.diag(a).sum() == 0
    assert a[0, 3] == 0 and a[0, 1] == 0.5 and a[1, 3] == 0.5


# ------------------------------------------------------------------ k-reciprocal
# Reference: github.com/zhunzhong07/person-re-ranking, python-version/re_ranking_ranklist.py
# (re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)), transcribed loop for loop.
def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    original = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(1.0 * original / np.max(original, axis=0))
    v = np.zeros_like(original).astype(np.float32)
    initial_rank = np.argsort(original).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    half = int(np.around(k1 / 2.0))
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_reciprocal = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            c_forward = initial_rank[candidate, : half + 1]
            c_backward = initial_rank[c_forward, : half + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, k_reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = 1.0 * weight / np.sum(weight)
    original = original[:query_num,]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(all_num):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        non_zero = np.where(v[i, :] != 0)[0]
        images = [inv_index[ind] for ind in non_zero]
        for j in range(len(non_zero)):
            temp_min[0, images[j]] = temp_min[0, images[j]] + np.minimum(
                v[i, non_zero[j]], v[images[j], non_zero[j]]
            )
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:query_num, query_num:]


def _euclidean(a, b):
    return np.sqrt(np.maximum(2.0 - 2.0 * (a.astype(np.float64) @ b.T.astype(np.float64)), 0.0))


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (7, 1, 0.5)])
def test_k_reciprocal_matches_reference(k1, k2, lam):
    q, db = clustered(250, 8, 16, seed=3)
    expected = reference_re_ranking(_euclidean(q, db), _euclidean(q, q), _euclidean(db, db), k1, k2, lam)
    ours = k_reciprocal_distance(np.concatenate([q, db]), len(q), k1, k2, lam)
    assert np.abs(ours - expected).max() < 1e-5  # largest seen 2.5e-7; 19% / 11% of positions move
    shortlist = np.argsort(-(q @ db.T), axis=1, kind="stable")  # the whole database
    reranked = KReciprocal(k1, k2, lam, shortlist=len(db))(q, db, shortlist)
    np.testing.assert_array_equal(reranked, np.argsort(expected, axis=1, kind="stable"))


def test_k_reciprocal_on_a_shortlist_is_the_reference_on_its_candidates():
    q, db = clustered(300, 4, 16, seed=4)
    shortlist = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :40]
    candidates = np.unique(shortlist)
    sub = db[candidates]
    expected = reference_re_ranking(_euclidean(q, sub), _euclidean(q, q), _euclidean(sub, sub))
    ours = KReciprocal(shortlist=40)(q, db, shortlist)
    for row in range(len(q)):
        mine = expected[row, np.searchsorted(candidates, shortlist[row])]
        np.testing.assert_array_equal(ours[row], shortlist[row][np.argsort(mine, kind="stable")])


def test_k_reciprocal_with_fewer_images_than_k2_is_the_reference():
    # a filtered query (4 candidates) or a tiny database: k2 = 6 neighbours do not exist,
    # the reference's np.mean then averages over the images there are
    q, db = clustered(4, 2, 16, seed=5)
    q = q[:1]
    expected = reference_re_ranking(_euclidean(q, db), _euclidean(q, q), _euclidean(db, db))
    ours = k_reciprocal_distance(np.concatenate([q, db]), 1)
    assert np.abs(ours - expected).max() < 1e-5
    shortlist = np.argsort(-(q @ db.T), axis=1, kind="stable")
    reranked = KReciprocal(shortlist=4)(q, db, shortlist)
    np.testing.assert_array_equal(reranked, np.argsort(expected, axis=1, kind="stable"))
