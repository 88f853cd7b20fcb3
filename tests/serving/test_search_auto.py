"""search=auto: the index chosen for a memory budget meets the recall target, stays within the
budget, and is stored and memory-mapped back with the same results."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.evaluation.vectors import l2_normalize
from retrieval.serving.auto_index import AutoIndex, fingerprint, recall_at_k, recall_lower_bound
from retrieval.serving.index_choice import parse_bytes, plan_index
from retrieval.serving.search import IndexSource, SearchIndex
from retrieval.utils.errors import UserFacingError

faiss = pytest.importorskip("faiss")


def clustered(n: int, d: int, seed: int, clusters: int = 100) -> np.ndarray:
    """Unit vectors around ``clusters`` centres with a decaying noise spectrum (as descriptors
    are); the same centres for every seed's draw, so queries come from the database's mixture."""
    centres = np.random.default_rng(0).standard_normal((clusters, d))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, d)) * np.geomspace(1.0, 0.05, d)
    return l2_normalize(centres[rng.integers(0, clusters, n)] + noise).astype(np.float32)


@pytest.mark.parametrize(
    "n,d,budget,kind",
    [
        (5_000, 256, "1GB", "exact"),
        (100_000, 256, "1GB", "hnsw"),
        (1_000_000, 256, "2GB", "ivfflat"),
        (10_000_000, 256, "4GB", "ivfpq"),
        (10_000_000, 256, "640MB", "ivfpq"),
    ],
)
def test_plan_fits_the_budget(n, d, budget, kind):
    plan = plan_index(n, d, parse_bytes(budget))
    assert plan.kind == kind
    assert plan.bytes_per_vector * n <= parse_bytes(budget)
    if kind == "ivfpq":
        assert d % plan.pq_m == 0 and plan.refine > 0 and "HNSW32" in plan.factory  # 10^7: graph quantiser
    if budget == "640MB":
        assert plan.bytes_per_vector <= 64 and plan.pq_m == 32


def test_budget_errors_name_the_setting():
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("2GiB") == 2 * 2**30 and parse_bytes(1024) == 1024
    with pytest.raises(UserFacingError, match="search.memory_budget='lots'"):
        parse_bytes("lots")
    with pytest.raises(UserFacingError, match="raise the budget or use search=exact"):
        plan_index(10_000_000, 256, parse_bytes("50MB"))


# bytes per vector: too little for full vectors (128 B), so IVF-PQ with 8-byte codes
BUDGET = 24


@pytest.fixture(scope="module")
def data():
    return clustered(10_000, 32, seed=1), clustered(200, 32, seed=2)


@pytest.fixture(scope="module")
def stored(data, tmp_path_factory):
    vectors, _ = data
    folder = tmp_path_factory.mktemp("db")
    index = SearchIndex(
        vectors, backend="auto", memory_budget=BUDGET * len(vectors), source=IndexSource(directory=folder)
    )
    return index, folder


@pytest.mark.slow  # trains IVF-PQ: ~20 s of CPU
def test_auto_meets_the_recall_target_within_the_budget(data, stored):
    vectors, queries = data
    index, _ = stored
    impl: AutoIndex = index._impl
    assert impl.plan.kind == "ivfpq" and impl.plan.pq_m == 8
    assert impl.bytes_per_vector <= BUDGET  # measured: the serialised index, codebooks and ids included
    exact = SearchIndex(vectors).search(queries, 10)[1]
    # fresh queries from the mixture, not the held-out rows it was tuned on
    assert recall_at_k(index.search(queries, 10)[1], exact) >= 0.95
    assert impl.recall >= 0.95 and impl.param["nprobe"] < impl.plan.nlist


@pytest.mark.slow
def test_stored_index_is_memory_mapped_back_with_the_same_results(data, stored):
    vectors, queries = data
    index, folder = stored
    files = sorted(p.suffix for p in (folder / "index").iterdir())
    assert files == [".faiss", ".json"]
    again = SearchIndex(
        vectors, backend="auto", memory_budget=BUDGET * len(vectors), source=IndexSource(directory=folder)
    )
    assert again._impl.build_s == 0.0 and again._impl.param == index._impl.param  # read, not trained
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(again._impl.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # mapped, not read into memory
    for a, b in zip(index.search(queries, 10), again.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    # other vectors (the same rows re-ordered): the stored index is not theirs
    assert fingerprint(vectors[::-1].copy()) != fingerprint(vectors)


def test_auto_with_room_for_full_vectors_picks_hnsw_and_meets_the_target(data):
    vectors, queries = data
    index = SearchIndex(vectors[:10_000], backend="auto", memory_budget="100MB")
    assert index._impl.plan.kind == "hnsw"
    exact = SearchIndex(vectors[:10_000]).search(queries, 10)[1]
    assert recall_at_k(index.search(queries, 10)[1], exact) >= 0.95


def test_recall_lower_bound_tightens_with_more_trials():
    # Wilson bound: below the measured recall, closer to it with more queries x k, in [0, 1]
    few, many = recall_lower_bound(0.95, 256 * 10), recall_lower_bound(0.95, 4096 * 10)
    assert 0.93 < few < many < 0.95
    assert recall_lower_bound(1.0, 2560) < 1.0 and recall_lower_bound(0.0, 2560) == 0.0
    assert recall_lower_bound(0.9, 0) == 0.0


@pytest.mark.slow
def test_tuning_rows_are_held_out_of_training_and_the_bound_meets_the_target():
    # 20k rows, 256 cells: the training sample (12,800 rows) leaves enough outside it
    vectors = clustered(20_000, 32, seed=3)
    impl = AutoIndex(vectors, memory_budget=BUDGET * len(vectors), tune_queries=512, max_nlist=256)
    assert impl.plan.kind == "ivfpq" and len(impl._train_rows) < len(vectors)
    rows = impl._tune_rows(512, seed=0)
    assert len(rows) == 512 and not np.isin(rows, impl._train_rows).any()
    assert impl.recall_low >= 0.95 and impl.recall > impl.recall_low
