"""SSIM miner: parity with a brute-force skimage loop, cache/resume, unreadable and small images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.mining import ssim_miner
from retrieval.mining.crops import CropSpec, build_crop_cache
from retrieval.mining.crops import load_crop as _load_crop
from retrieval.mining.pools import negative_pools_for
from retrieval.mining.ssim_miner import mine_ssim_negatives
from retrieval.mining.ssim_store import QuerySpec

CROP, TOP_K, N_IMAGES = 64, 10, 30
PARAMS = {"top_k": TOP_K, "crop_size": CROP, "show_progress": False, "device": "cpu"}


def write_images(
    folder: Path, n: int = N_IMAGES, size: tuple[int, int] = (120, 90), seed: int = 0
) -> list[Path]:
    """Smoothed-noise RGB PNGs (width x height = size); every third is a noisy copy of a
    previous one, so there are clear near-duplicates to find."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, arrays = [], []
    for i in range(n):
        if i % 3 == 2:
            image = np.clip(arrays[i - 2].astype(int) + rng.integers(-25, 26, arrays[i - 2].shape), 0, 255)
        else:
            noise = gaussian_filter(rng.normal(128, 70, (size[1], size[0], 3)), (2, 2, 0))
            image = np.clip((noise - 128) * 4 + 128, 0, 255)
        arrays.append(image.astype(np.uint8))
        paths.append(folder / f"img_{i:03d}.png")
        Image.fromarray(arrays[-1]).save(paths[-1])
    return paths


def brute_crop(path: Path) -> np.ndarray:
    """Grayscale centre crop written independently of retrieval.mining.crops."""
    gray = np.asarray(Image.open(path).convert("RGB").convert("L"))
    top, left = (gray.shape[0] - CROP) // 2, (gray.shape[1] - CROP) // 2
    return gray[top : top + CROP, left : left + CROP]


def brute_force(paths: list[Path], query: QuerySpec, candidates: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The plain skimage loop over query x candidates, sorted by score (desc) then index."""
    q = brute_crop(query.path)
    excluded = {int(i) for i in query.exclude}
    kept = [i for i in candidates if i not in excluded]
    scores = np.array([structural_similarity(q, brute_crop(paths[i]), data_range=255) for i in kept])
    order = sorted(range(len(kept)), key=lambda j: (-scores[j], kept[j]))[:TOP_K]
    return np.array([kept[j] for j in order]), scores[order]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("ssim_db"))


def queries_for(paths: list[Path]) -> list[QuerySpec]:
    return [
        QuerySpec("q0", paths[0], np.array([0, 2], dtype=np.int64)),
        QuerySpec("q4", paths[4], np.array([4, 7, 9], dtype=np.int64)),
        QuerySpec("q13", paths[13], np.array([13], dtype=np.int64)),
        QuerySpec("q_outside", paths[21], np.array([21, 22], dtype=np.int64)),
    ]


def assert_matches_brute_force(pools, paths, queries, candidates) -> None:
    for query in queries:
        indices, scores = brute_force(paths, query, candidates)
        pool = pools[query.name]
        assert pool.indices.dtype == np.int64 and pool.scores.dtype == np.float32
        np.testing.assert_array_equal(pool.indices, indices)
        np.testing.assert_allclose(pool.scores, scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", "torch:cpu"])
def test_top_k_equals_brute_force_skimage_loop(dataset, tmp_path, device):
    queries = queries_for(dataset)
    pools = mine_ssim_negatives(dataset, queries, tmp_path, **{**PARAMS, "device": device})
    assert list(pools) == [q.name for q in queries]
    assert_matches_brute_force(pools, dataset, queries, list(range(N_IMAGES)))
    assert pools["q0"].indices[0] != 0 and 2 not in pools["q0"].indices  # self and labelled excluded


def test_cache_files_are_readable_and_resume_skips_finished_queries(dataset, tmp_path, monkeypatch):
    queries = queries_for(dataset)
    computed: list[str] = []
    real = ssim_miner._score_block

    def counting(scorer, query_crops, candidates, multichannel, progress, *, fail_after=None):
        if fail_after is not None and len(computed) >= fail_after:
            raise KeyboardInterrupt("killed")
        computed.extend(["?"] * len(query_crops))
        return real(scorer, query_crops, candidates, multichannel, progress)

    monkeypatch.setattr(ssim_miner, "_score_block", lambda *a: counting(*a, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        mine_ssim_negatives(dataset, queries, tmp_path, queries_per_pass=1, **PARAMS)
    assert len(computed) == 2
    run_dirs = list(tmp_path.glob("ssim-*"))
    assert len(run_dirs) == 1
    done = sorted(p.name for p in run_dirs[0].glob("*.json"))
    assert done == ["index.json", "q0.json", "q4.json"]  # no temporary leftovers
    record = json.loads((run_dirs[0] / "q4.json").read_text())
    assert record["names"][0] == dataset[record["indices"][0]].stem and len(record["scores"]) == TOP_K
    assert json.loads((run_dirs[0] / "index.json").read_text())["top_k"] == TOP_K

    computed.clear()
    monkeypatch.setattr(ssim_miner, "_score_block", lambda *a: counting(*a))
    pools = mine_ssim_negatives(dataset, queries, tmp_path, queries_per_pass=1, **PARAMS)
    assert len(computed) == 2  # only q13 and q_outside
    assert_matches_brute_force(pools, dataset, queries, list(range(N_IMAGES)))

    computed.clear()
    again = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    assert computed == []
    for name, pool in pools.items():
        np.testing.assert_array_equal(again[name].indices, pool.indices)

    # a changed exclusion set invalidates that query only; a changed parameter, everything
    changed = [queries[0], QuerySpec("q4", dataset[4], np.array([4], dtype=np.int64))]
    mine_ssim_negatives(dataset, changed, tmp_path, **PARAMS)
    assert len(computed) == 1
    mine_ssim_negatives(dataset, changed, tmp_path, **{**PARAMS, "top_k": 5})
    assert len(computed) == 3


def test_unreadable_image_is_skipped_and_reported(dataset, tmp_path, caplog):
    paths = list(dataset)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    paths[5] = corrupt
    queries = queries_for(paths)
    with caplog.at_level(logging.WARNING):
        pools = mine_ssim_negatives(paths, queries, tmp_path / "cache", **PARAMS)
    assert "corrupt.jpg" in caplog.text
    assert all(5 not in pool.indices for pool in pools.values())
    assert_matches_brute_force(pools, paths, queries, [i for i in range(N_IMAGES) if i != 5])
    cache = build_crop_cache(paths, tmp_path / "cache", CropSpec(CROP), show_progress=False)
    assert cache.failed == [5] and not cache.usable[5] and cache.usable.sum() == N_IMAGES - 1


def test_small_image_excluded_does_not_shift_other_candidates(dataset, tmp_path, caplog):
    paths = list(dataset)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(small)  # 50 x 40 < 64 crop
    paths[3] = small
    queries = queries_for(paths)
    with caplog.at_level(logging.WARNING):
        pools = mine_ssim_negatives(paths, queries, tmp_path, small_images="exclude", **PARAMS)
    assert "small.png" in caplog.text and "excluded" in caplog.text
    assert all(3 not in pool.indices for pool in pools.values())
    # the reference's bug would shift every candidate after index 3 by one position
    assert_matches_brute_force(pools, paths, queries, [i for i in range(N_IMAGES) if i != 3])


def test_small_image_upscaled_is_a_candidate(dataset, tmp_path):
    paths = list(dataset)
    small = tmp_path / "small.png"
    gradient = np.tile(np.linspace(0, 255, 50), (40, 1)).astype(np.uint8)
    Image.fromarray(gradient).convert("RGB").save(small)
    paths[3] = small
    pools = mine_ssim_negatives(
        paths,
        queries_for(paths),
        tmp_path,
        top_k=N_IMAGES,
        crop_size=CROP,
        show_progress=False,
        device="cpu",
    )
    upscaled = np.asarray(Image.fromarray(gradient).resize((80, 64), Image.Resampling.BILINEAR))[:, 8:72]
    q = brute_crop(paths[0])
    pool = pools["q0"]
    assert 3 in pool.indices and len(pool.indices) == N_IMAGES - 2
    got = dict(zip(pool.indices.tolist(), pool.scores.tolist()))
    assert got[3] == pytest.approx(structural_similarity(q, upscaled, data_range=255), abs=1e-5)
    for i in (1, 4, 29):  # the others keep their own scores
        assert got[i] == pytest.approx(
            structural_similarity(q, brute_crop(paths[i]), data_range=255), abs=1e-5
        )


def test_negative_pools_for_ground_truth_excludes_labelled_and_query(dataset, tmp_path):
    names = [p.stem for p in dataset]
    query = Query(
        name=names[6],
        landmark="tower",
        path=dataset[6],
        good=np.array([8]),
        ok=np.array([10]),
        junk=np.array([11]),
    )
    outside_path = tmp_path / "outside.png"  # a query image that is not in the database
    outside_path.write_bytes(dataset[12].read_bytes())
    outside = Query(name="outside", landmark="tower", path=outside_path, good=np.array([1]))
    gt = RetrievalGroundTruth("toy", names, list(dataset), [query, outside], "classic")
    pools = negative_pools_for(gt, tmp_path / "cache", **PARAMS)
    assert set(pools) == {names[6], "outside"}
    assert not {6, 8, 10, 11} & set(pools[names[6]].indices.tolist())
    assert len(pools[names[6]].indices) == TOP_K
    assert 1 not in pools["outside"].indices
    assert pools["outside"].indices[0] == 12 and pools["outside"].scores[0] == pytest.approx(1.0, abs=1e-6)


def test_crop_cache_decodes_once_and_is_reused(dataset, tmp_path, monkeypatch):
    from retrieval.mining import crops

    first = build_crop_cache(dataset, tmp_path, CropSpec(CROP), show_progress=False)
    assert first.crops.shape == (N_IMAGES, CROP, CROP) and first.crops.dtype == np.uint8
    np.testing.assert_array_equal(first.crops[7], brute_crop(dataset[7]))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries

    calls = []
    monkeypatch.setattr(crops, "load_crop", lambda path, spec: calls.append(path) or _load_crop(path, spec))
    again = build_crop_cache(dataset, tmp_path, CropSpec(CROP), show_progress=False)
    assert calls == []
    np.testing.assert_array_equal(np.asarray(again.crops), np.asarray(first.crops))
    build_crop_cache(dataset, tmp_path, CropSpec(CROP, grayscale=False), show_progress=False)
    assert len(calls) == N_IMAGES  # other parameters: another cache, decoded once


def test_colour_mining_matches_skimage_channel_mean(dataset, tmp_path):
    query = QuerySpec("q1", dataset[1], np.array([1]))
    pool = mine_ssim_negatives(dataset[:12], [query], tmp_path, grayscale=False, **PARAMS)["q1"]

    def colour_crop(path: Path) -> np.ndarray:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        top, left = (rgb.shape[0] - CROP) // 2, (rgb.shape[1] - CROP) // 2
        return rgb[top : top + CROP, left : left + CROP]

    q = colour_crop(dataset[1])
    scores = {
        i: structural_similarity(q, colour_crop(dataset[i]), data_range=255, channel_axis=-1)
        for i in range(12)
        if i != 1
    }
    expected = sorted(scores, key=lambda i: (-scores[i], i))[:TOP_K]
    np.testing.assert_array_equal(pool.indices, expected)
    np.testing.assert_allclose(pool.scores, [scores[i] for i in expected], atol=1e-5)


def test_ties_are_broken_by_index():
    from retrieval.mining.ssim_miner import top_negatives

    scores = np.array([0.5, 0.9, 0.5, -np.inf, 0.9, 0.1])
    pool = top_negatives(scores, np.array([0, 1, 2, 4, 5]), top_k=4)
    np.testing.assert_array_equal(pool.indices, [1, 4, 0, 2])
    np.testing.assert_allclose(pool.scores, [0.9, 0.9, 0.5, 0.5])
