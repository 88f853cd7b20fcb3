"""Leave-one-out metrics of class-labelled galleries (R@k, P@k, mAP@k, MAP@R): against a
plain loop, against pytorch-metric-learning's AccuracyCalculator, by hypothesis properties,
and through the evaluation callback (one gallery loader, padded duplicates)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.evaluation.class_metrics import class_metrics, map_at_r
from retrieval.evaluation.protocols import evaluate_embeddings, evaluate_leave_one_out
from retrieval.evaluation.ranking import leave_one_out_rankings
from retrieval.evaluation.vectors import cosine_similarity
from retrieval.training.evaluation_callback import RetrievalEvaluation

KS = (1, 2, 5)


def loop_metrics(embeddings: np.ndarray, labels: np.ndarray, ks=KS) -> dict[str, float]:
    """The definitions, one query at a time: rank the others by cosine similarity (ties by
    index), skip queries alone in their class, average."""
    similarity = cosine_similarity(embeddings, embeddings)
    rows: dict[str, list[float]] = {}
    for q in range(len(labels)):
        order = sorted((j for j in range(len(labels)) if j != q), key=lambda j: (-similarity[q, j], j))
        rel = [bool(labels[j] == labels[q]) for j in order]
        n_pos = sum(rel)
        if n_pos == 0:
            continue
        rows.setdefault("mAP", []).append(hit_precision_sum(rel, n_pos) / n_pos)
        for k in ks:
            rows.setdefault(f"R@{k}", []).append(float(any(rel[:k])))
            rows.setdefault(f"P@{k}", []).append(sum(rel[:k]) / k)
            rows.setdefault(f"mAP@{k}", []).append(hit_precision_sum(rel, k) / min(k, n_pos))
    return {name: float(np.mean(values)) for name, values in rows.items()}


def hit_precision_sum(rel: list[bool], k: int) -> float:
    """Sum of the precision at each hit within the first k."""
    return sum(sum(rel[: i + 1]) / (i + 1) for i in range(min(k, len(rel))) if rel[i])


def random_case(seed: int, n: int = 40, n_classes: int = 6, dim: int = 4, singletons: bool = True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    if not singletons:
        labels = np.sort(
            np.concatenate([np.arange(n_classes), np.arange(n_classes), labels[2 * n_classes :]])
        )
    centres = rng.normal(size=(n_classes, dim))
    return centres[labels] + rng.normal(size=(n, dim)), labels


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_loop(seed):
    embeddings, labels = random_case(seed, n=30 + 7 * seed)
    expected = loop_metrics(embeddings, labels)
    result = evaluate_leave_one_out(embeddings, labels, KS)
    assert result.metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-12), name
    # the similarity path (self included, then skipped) agrees with the ranking path
    from_similarity = class_metrics(cosine_similarity(embeddings, embeddings), labels, KS).metrics
    assert from_similarity == pytest.approx(result.metrics, abs=1e-12)
    assert map_at_r(result.rankings, labels) == pytest.approx(expected["mAP"], abs=1e-12)


def test_hand_case():
    # items 0, 1 of class 0 and 2, 3 of class 1 on a line: 0's nearest is 1, 2's nearest is 1
    embeddings = np.array([[1, 0.0], [1, 0.3], [1, 0.45], [1, 1.5]])
    result = evaluate_leave_one_out(embeddings, np.array([0, 0, 1, 1]), ks=(1, 2))
    # rankings: 0 -> 1 2 3 | 1 -> 2 0 3 | 2 -> 1 0 3 | 3 -> 2 1 0
    assert result.rankings.tolist() == [[1, 2], [2, 0], [1, 0], [2, 1]]
    assert result.metrics["R@1"] == 0.5 and result.metrics["R@2"] == 0.75
    assert result.metrics["mAP"] == 0.5  # AP@R with R = 1: R@1 per query
    assert result.metrics["mAP@2"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert result.metrics["P@2"] == pytest.approx((0.5 + 0.5 + 0 + 0.5) / 4)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pytorch_metric_learning(seed):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    embeddings, labels = random_case(seed, n=60, singletons=False)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)  # L2 kNN = cosine
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    theirs = calculator.get_accuracy(torch.tensor(unit, dtype=torch.float32), torch.tensor(labels))
    ours = evaluate_leave_one_out(embeddings, labels, ks=(1,)).metrics
    assert ours["R@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["mAP"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_blockwise_rankings_equal_one_block_and_exclude_the_query():
    embeddings, _ = random_case(0, n=50)
    embeddings[7] = embeddings[3]  # an exact tie: index order decides, in every block layout
    whole = leave_one_out_rankings(embeddings, depth=10)
    assert np.array_equal(whole, leave_one_out_rankings(embeddings, depth=10, chunk_elements=60))
    assert not (whole == np.arange(50)[:, None]).any()
    assert whole[3, 0] == 7 and whole[7, 0] == 3
    assert leave_one_out_rankings(embeddings[:4], depth=10).shape == (4, 3)


# ----------------------------------------------------------------------------- properties
# dim >= 2: on a line (dim 1) cosine similarities are all ±1, every ranking a tie
cases = st.builds(
    random_case, st.integers(0, 2**31), st.integers(2, 40), st.integers(1, 8), st.integers(2, 6)
)


@settings(max_examples=60, deadline=None)
@given(cases, st.integers(0, 2**31))
def test_invariant_to_item_order_and_label_names(case, seed):
    embeddings, labels = case
    rng = np.random.default_rng(seed)
    order, renamed = rng.permutation(len(labels)), rng.permutation(labels.max() + 1)[labels] + 100
    base = evaluate_leave_one_out(embeddings, labels, KS).metrics
    moved = evaluate_leave_one_out(embeddings[order], renamed[order], KS).metrics
    assert moved == pytest.approx(base, abs=1e-12, nan_ok=True)


@settings(max_examples=60, deadline=None)
@given(cases)
def test_bounds_and_orderings(case):
    embeddings, labels = case
    metrics = evaluate_leave_one_out(embeddings, labels, KS).metrics
    if np.isnan(metrics["mAP"]):  # every class a singleton: no query counts
        assert (np.bincount(labels) <= 1).all()
        return
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["R@1"] <= metrics["R@2"] <= metrics["R@5"]
    assert metrics["R@1"] == metrics["P@1"] == metrics["mAP@1"]
    assert metrics["P@5"] <= metrics["R@5"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 9), st.integers(2, 50))
def test_a_perfect_ranking_scores_one(seed, n_classes, n):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_classes), np.arange(n_classes), rng.integers(0, n_classes, n)])
    # each class on its own axis, jittered: every same-class item outranks every other
    embeddings = np.eye(n_classes)[labels] + 0.01 * rng.random((len(labels), n_classes))
    metrics = evaluate_leave_one_out(embeddings, labels, KS).metrics
    n_pos = np.bincount(labels)[labels] - 1
    for k in KS:
        assert metrics[f"R@{k}"] == 1.0 and metrics[f"mAP@{k}"] == pytest.approx(1.0)
        assert metrics[f"P@{k}"] == pytest.approx(np.mean(np.minimum(n_pos, k) / k))
    assert metrics["mAP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- callback
def class_gt(labels: np.ndarray) -> ClassGroundTruth:
    names = [f"{c}/{i}.png" for i, c in enumerate(labels)]
    return ClassGroundTruth("t", names, [Path(n) for n in names], np.asarray(labels), ["a", "b", "c"])


def run_callback(gt, batches) -> tuple[RetrievalEvaluation, dict]:
    logged: dict[str, float] = {}
    trainer = SimpleNamespace(sanity_checking=False, datamodule=SimpleNamespace(eval_gt=gt), world_size=1)
    module = SimpleNamespace(trainer=trainer, log=lambda name, value, **_: logged.__setitem__(name, value))
    callback = RetrievalEvaluation(ks=(1, 2))
    callback.on_validation_epoch_start(trainer, module)
    for embeddings, indices in batches:
        callback.on_validation_batch_end(
            trainer,
            module,
            {"embeddings": torch.tensor(embeddings), "indices": torch.tensor(indices)},
            None,
            0,
            0,
        )
    callback.on_validation_epoch_end(trainer, module)
    return callback, logged


def test_callback_evaluates_the_gallery_leave_one_out():
    embeddings, labels = random_case(1, n=12, n_classes=3)
    embeddings = embeddings.astype(np.float32)
    # shuffled batches with the padded duplicates a DistributedSampler adds
    order = np.concatenate([np.random.default_rng(0).permutation(12), [0, 5]])
    batches = [(embeddings[order[i : i + 5]], order[i : i + 5]) for i in range(0, 14, 5)]
    callback, logged = run_callback(class_gt(labels), batches)
    result = callback.last_result
    direct = evaluate_embeddings(embeddings, embeddings, class_gt(labels), (1, 2))
    assert result.protocol == "leave_one_out" and result.metrics == direct.metrics
    assert logged["val/mAP"] == result.metrics["mAP"] and "val/R@1" in logged
    assert result.rankings.shape[0] == 12 and np.array_equal(result.rankings, direct.rankings)
    assert result.query_embeddings is result.database_embeddings
    assert np.array_equal(result.query_embeddings, embeddings)
    assert len(result.per_query_ap["leave_one_out"]) == 12


def test_callback_skips_a_partial_gallery():
    embeddings, labels = random_case(1, n=12, n_classes=3)
    callback, logged = run_callback(class_gt(labels), [(embeddings[:5].astype(np.float32), np.arange(5))])
    assert callback.last_result is None and not logged
