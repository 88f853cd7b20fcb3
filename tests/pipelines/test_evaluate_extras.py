"""evaluate.py's extras: R-MAC, αQE / DBA, learned whitening, parity with the training
callback, and the side-by-side comparison end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.evaluation import protocols
from retrieval.evaluation.landmark_metrics import classic_metrics
from retrieval.evaluation.learned_whitening import fit_learned_whitening
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.evaluation.query_expansion import alpha_query_expansion, database_side_augmentation
from retrieval.evaluation.vectors import l2_normalize
from retrieval.models.pooling import RMAC, rmac_regions
from retrieval.pipelines.build import build_datamodule, build_model
from retrieval.pipelines.evaluate import evaluate
from retrieval.pipelines.report import comparison_table
from retrieval.pipelines.variants import compose_variants
from retrieval.training.evaluation_callback import RetrievalEvaluation
from retrieval.utils.errors import UserFacingError
from tests.helpers.configs import CONFIGS, SMALL_VGG_MODEL, compose_cfg
from tests.helpers.runs import run_ok

# the tiny VGG set of conftest's small_vgg_root, a resnet18 at 64 px, all on the CPU (the
# callback runs float32 there; embed_batch would use bf16 autocast on a GPU)
SMALL_EVAL = [*SMALL_VGG_MODEL, "embed.device=cpu"]


# ---------------------------------------------------------------------------- R-MAC
def rmac_loop(x: torch.Tensor, levels: int = 3, overlap: float = 0.4) -> torch.Tensor:
    """R-MAC written as the published algorithm reads: float steps, region by region."""
    height, width = x.shape[-2:]
    short = min(height, width)
    # the number of steps in float32, as cirtorch computes it: that decides exact ties (5x9)
    steps = torch.tensor([2.0, 3, 4, 5, 6, 7])
    step_lengths = (max(height, width) - short) / (steps - 1)
    best = int(((short**2 - short * step_lengths) / short**2 - overlap).abs().argmin())
    extra_w = best + 1 if height < width else 0
    extra_h = best + 1 if height > width else 0

    def normalised_max(region: torch.Tensor) -> torch.Tensor:
        v = region.amax(dim=(2, 3))
        return v / (v.norm(dim=1, keepdim=True) + 1e-6)

    total = normalised_max(x)
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)
        centres = []
        for count, length in ((level + extra_h, height), (level + extra_w, width)):
            step = 0 if count == 1 else (length - side) / (count - 1)
            centres.append([math.floor(half + k * step) - half for k in range(count)])
        for top in centres[0]:
            for left in centres[1]:
                total = total + normalised_max(x[:, :, top : top + side, left : left + side])
    return total


@pytest.mark.parametrize(
    "shape", [(7, 7), (5, 9), (9, 5), (10, 14), (3, 4), (6, 13), (14, 14), (1, 1), (2, 3)]
)
def test_rmac_equals_a_region_by_region_loop(shape):
    x = torch.rand(2, 6, *shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(RMAC()(x), rmac_loop(x), rtol=1e-5, atol=1e-6)


def test_rmac_grid_of_a_square_map():
    regions = rmac_regions(7, 7)
    # the whole map, then 1, 4 and 9 squares of side 7, 4 and 3, flush with the borders
    assert len(regions) == 1 + 1 + 4 + 9
    assert regions[:6] == ((0, 0, 7, 7), (0, 0, 7, 7), (0, 0, 4, 4), (0, 3, 4, 4), (3, 0, 4, 4), (3, 3, 4, 4))
    assert {(t, left) for t, left, _, side in regions if side == 3} == {
        (t, left) for t in (0, 2, 4) for left in (0, 2, 4)
    }


# ------------------------------------------------------------------------ αQE / DBA
def expand_loop(vectors, pool, n, alpha, exclude_self):
    out = []
    for i, v in enumerate(vectors):
        candidates = sorted((-float(v @ p), j) for j, p in enumerate(pool) if not (exclude_self and j == i))
        total = v.astype(np.float64).copy()
        for negative_similarity, j in candidates[:n]:
            total += max(-negative_similarity, 0.0) ** alpha * pool[j]
        out.append(total / np.linalg.norm(total))
    return np.array(out)


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("n,alpha", [(1, 3.0), (3, 3.0), (10, 0.5), (0, 3.0)])
def test_query_expansion_and_dba_equal_a_loop(n, alpha):
    queries, database = unit_vectors(7, 8, 1), unit_vectors(30, 8, 2)  # many negative similarities
    np.testing.assert_allclose(
        alpha_query_expansion(queries, database, n, alpha),
        expand_loop(queries, database, n, alpha, exclude_self=False),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        database_side_augmentation(database, n, alpha),
        expand_loop(database, database, n, alpha, exclude_self=True),
        atol=1e-5,
    )


def test_query_expansion_with_itself_as_only_neighbour_is_a_no_op():
    queries, others = unit_vectors(5, 16, 3), unit_vectors(20, 16, 4)
    database = np.concatenate([others, queries])  # each query's best match is itself
    expanded = alpha_query_expansion(queries * 3.0, database, n=1, alpha=0.0)  # q + q, normalised
    np.testing.assert_allclose(expanded, queries, atol=1e-6)
    np.testing.assert_allclose(alpha_query_expansion(queries * 3.0, database, n=0), queries * 3.0)


def test_dba_moves_vectors_towards_their_cluster():
    centres = unit_vectors(4, 32, 5)
    noisy = l2_normalize(np.repeat(centres, 10, axis=0) + 0.3 * unit_vectors(40, 32, 6)).astype(np.float32)
    labels = np.repeat(np.arange(4), 10)
    augmented = database_side_augmentation(noisy, n=5, alpha=3.0)
    to_centre = lambda v: np.mean(np.sum(v * centres[labels], axis=1))  # noqa: E731
    assert to_centre(augmented) > to_centre(noisy) + 0.01


# ----------------------------------------------------------------- learned whitening
def nuisance_data(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmark identity spread over all 24 dimensions, but views of one landmark vary
    strongly along 6 shared nuisance directions (viewpoint, lighting, ...)."""
    rng = np.random.default_rng(seed)
    d = 24
    nuisance = np.linalg.qr(np.random.default_rng(99).standard_normal((d, 6)))[0].T  # same for all seeds
    centres = rng.standard_normal((classes, d))
    x = (
        np.repeat(centres, per_class, axis=0)
        + 4.0 * rng.standard_normal((classes * per_class, 6)) @ nuisance
        + 0.2 * rng.standard_normal((classes * per_class, d))
    )
    return l2_normalize(x).astype(np.float32), np.repeat(np.arange(classes), per_class)


def nearest_neighbour_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def test_learned_whitening_brings_matching_pairs_together():
    train, train_labels = nuisance_data(60, 5, seed=0)
    pairs = np.array(
        [
            (i, j)
            for i in range(len(train))
            for j in range(len(train))
            if i < j and train_labels[i] == train_labels[j]
        ]
    )
    whitening = fit_learned_whitening(train, pairs, dim=24)
    test, test_labels = nuisance_data(40, 5, seed=1)  # other landmarks
    before, after = test, whitening.apply(test)
    positive = test_labels[:, None] == test_labels[None, :]
    np.fill_diagonal(positive, False)
    ratio = lambda v: (v @ v.T)[positive].mean() / (v @ v.T)[~positive].mean()  # noqa: E731
    assert (
        nearest_neighbour_accuracy(after, test_labels) > nearest_neighbour_accuracy(before, test_labels) + 0.2
    )
    assert ratio(after) > ratio(before)
    # the defining property: the pair differences come out with identity covariance
    y = whitening.transform(train)
    differences = y[pairs[:, 0]] - y[pairs[:, 1]]
    np.testing.assert_allclose(differences.T @ differences / len(differences), np.eye(24), atol=1e-3)


def test_learned_whitening_keeps_the_leading_axes_and_refuses_bad_pairs():
    train, labels = nuisance_data(20, 4, seed=2)
    pairs = np.array([(i, i + 1) for i in range(0, len(train), 4)])
    full, reduced = fit_learned_whitening(train, pairs), fit_learned_whitening(train, pairs, dim=8)
    assert (full.dim, reduced.dim) == (24, 8)
    np.testing.assert_allclose(
        np.abs(reduced.transform(train)), np.abs(full.transform(train)[:, :8]), atol=1e-3
    )
    with pytest.raises(ValueError, match="matching pairs"):
        fit_learned_whitening(train, np.empty((0, 2)))


# ------------------------------------------------------------ evaluate.py vs callback
def test_evaluate_equals_the_training_callback_for_one_checkpoint(small_vgg_root, tmp_path):
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            *SMALL_EVAL,
            f"paths.data_dir={small_vgg_root.parent}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"output_json={tmp_path / 'm.json'}",
        ],
    )
    # weights unlike evaluate.py's own seeded initialisation: equality needs the checkpoint loaded
    torch.manual_seed(123)
    model = build_model(cfg)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.ckpt")
    datamodule = build_datamodule(cfg)
    datamodule.val_triplets = False
    callback = RetrievalEvaluation(ks=tuple(cfg.ks))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = trainer.validate(model, datamodule=datamodule, verbose=False)[0]

    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "model.ckpt")
    report = evaluate(cfg)
    assert report["metrics"] == callback.last_result.metrics  # exactly, every metric
    assert report["metrics"]["mAP"] == pytest.approx(logged["val/mAP"], rel=1e-6)  # logged as float32
    expected = callback.last_result.per_query_ap["classic"]
    assert list(report["per_query_ap"]["classic"].values()) == expected.tolist()
    assert list(report["variants"]) == ["checkpoint"]


# ------------------------------------------------------------------- side by side
def test_comparison_table_has_one_row_per_variant_and_the_protocol_columns():
    revisited = {f"{s}/{m}": 0.5 for s in "EMH" for m in ("mAP", "mP@1", "mP@5", "AP@5")}
    table = comparison_table(
        {"checkpoint": ("a", revisited), "mac": ("b", {"E/mAP": 0.25})}, "t", "revisited"
    )
    headers = [str(c.header) for c in table.columns]
    assert headers == [
        "variant",
        "setup",
        "E/mAP",
        "M/mAP",
        "H/mAP",
        "E/mP@1",
        "E/mP@5",
        "M/mP@1",
        "M/mP@5",
        "H/mP@1",
        "H/mP@5",
    ]
    assert table.row_count == 2 and list(table.columns[2].cells) == ["50.00", "25.00"]
    assert list(table.columns[3].cells) == ["50.00", "-"]
    classic = comparison_table({"x": ("s", {"mAP": 0.1, "mP@1": 0.2, "AP@1": 0.3})}, "t", "classic")
    assert [str(c.header) for c in classic.columns][2:] == ["mAP", "mP@1", "AP@1"]


@pytest.mark.slow
def test_side_by_side_comparison_end_to_end(small_vgg_root, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # Rich fits the table to the terminal width
    out = tmp_path / "compare.json"
    compare = ["mac", "rmac", "pcaw+qe", "lw+dba", "ms"]
    result = run_ok(
        "evaluate.py",
        *SMALL_EVAL,
        f"paths.data_dir={small_vgg_root.parent}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"output_json={out}",
        f"compare=[{','.join(compare)}]",
        cwd=tmp_path,
    )
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert list(variants) == ["untrained", *compare]
    assert variants["untrained"]["metrics"] == report["metrics"]
    for entry in variants.values():
        assert 0.0 <= entry["metrics"]["mAP"] <= 1.0 and len(entry["per_query_ap"]["classic"]) == 4
    assert variants["mac"]["overrides"] == ["pooling=mac", "ckpt_path=null"]
    assert variants["pcaw+qe"]["whitening"]["dim"] <= 10  # 11 database images: rank <= 10
    assert variants["pcaw+qe"]["qe"] == {"n": 2, "alpha": 3.0}
    assert (
        variants["lw+dba"]["whitening"]["kind"] == "learned"
        and variants["lw+dba"]["whitening"]["pairs"] == 12
    )
    assert variants["ms"]["scales"] == [1.0, 0.7071, 0.5]
    # different networks and post-processing give different rankings
    assert len({json.dumps(v["per_query_ap"]) for v in variants.values()}) > 2
    table = result.stdout
    assert "variant" in table and "mAP" in table
    for name in ["untrained", *compare]:
        assert f"│ {name} " in table
    assert "resnet18 RMAC (random)" in table and "αQE n=2 α=3" in table


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["compare=[mac,mac+nope]"], r"unknown variant\(s\) \['nope'\]"),
        (["compare=[mac,mac]"], "lists a variant twice"),
        (["whitening.kind=learned", "whitening.fit_on=database"], "set whitening.fit_on=train"),
        (["compare=[pcaw]", "whitening.fit_on=everything"], "whitening.fit_on must be one of"),
        (["qe.n=-1"], "must be >= 0"),
        (["rerank=superglobal", "rerank.M=0"], r"rerank\.M=0"),
        (["rerank=superglobal", "rerank.K=400"], "must be below rerank.M"),
        (["rerank=diffusion", "rerank.alpha=1.0"], r"rerank\.alpha=1\.0 \(must be in \[0, 1\)"),
        (["rerank=k_reciprocal", "rerank.lambda_value=2"], "lambda_value=2"),
    ],
)
def test_impossible_settings_are_user_errors_before_any_work(overrides, message):
    with pytest.raises(UserFacingError, match=message):
        compose_variants(compose_cfg("evaluate.yaml", overrides))


# ------------------------------------------------------------------- re-ranking
def test_reranking_variants_beside_qe_and_dba_in_one_evaluation(small_vgg_root, tmp_path, monkeypatch):
    """compare=[...] with the re-rankers: one embedding, one row each, recorded in the JSON.
    The database is ranked as a large one would be (blocked, with its progress bar), which
    tests/evaluation/test_reranking_blocked_ranking.py shows equal to the full ranking."""
    monkeypatch.setattr(protocols, "FULL_RANKING_LIMIT", 0)
    monkeypatch.setattr(protocols, "BLOCKED_DEPTH", 3)
    overrides = [
        *SMALL_EVAL,
        f"paths.data_dir={small_vgg_root.parent}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"output_json={tmp_path / 'm.json'}",
        f"paths.output_dir={tmp_path}",
        "embedding_plot=null",
        "compare=[superglobal,diffusion,kr,dba+qe+superglobal]",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
        report = evaluate(cfg, overrides)
    variants = report["variants"]
    assert list(variants) == ["untrained", "superglobal", "diffusion", "kr", "dba+qe+superglobal"]
    assert variants["untrained"]["rerank"] is None
    assert (
        variants["superglobal"]["rerank"]["M"] == 400
        and "SuperGlobal M=400 K=9 β=0.15" in (variants["superglobal"]["setup"])
    )
    assert variants["diffusion"]["rerank"]["k"] == 50 and variants["kr"]["rerank"]["k1"] == 20
    assert "DBA n=2" in variants["dba+qe+superglobal"]["setup"]
    for entry in variants.values():
        assert 0.0 <= entry["metrics"]["mAP"] <= 1.0


def test_reranked_metrics_are_those_of_the_reordered_ranking():
    """evaluate_embeddings with a re-ranker = the metrics of the cosine ranking whose first
    columns are the re-ranker's output (here a reversal, so every metric moves)."""

    class Reverse:
        depth = 6

        def __call__(self, queries, database, shortlist):
            return shortlist[:, ::-1]

    rng = np.random.default_rng(0)
    queries, database = rng.standard_normal((3, 8)), rng.standard_normal((20, 8))
    gt = RetrievalGroundTruth(
        "t",
        [str(i) for i in range(20)],
        [Path(f"{i}.jpg") for i in range(20)],
        [Query(f"q{i}", "l", Path("q.jpg"), good=np.array([i, 5 + i]), junk=np.array([9])) for i in range(3)],
        "classic",
    )
    plain_result = evaluate_embeddings(queries, database, gt)
    reranked = evaluate_embeddings(queries, database, gt, reranker=Reverse())
    expected = plain_result.rankings.copy()
    expected[:, :6] = expected[:, 5::-1]
    np.testing.assert_array_equal(reranked.rankings, expected)
    assert reranked.metrics == classic_metrics(expected, gt.queries).metrics != plain_result.metrics
