"""SSIM miner: parity with a brute-force skimage loop, cache/resume (per query and per block of
images), damaged cache files, stray temporaries, unreadable and small images, bounded
messages, settings checked first, workers that die with a killed miner. The real command
killed and interrupted: tests/mining/test_miner_kill.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.mining import ssim_pass, ssim_scorers
from retrieval.mining.crop_spec import CropSpec
from retrieval.mining.crop_spec import load_crop as _load_crop
from retrieval.mining.crops import build_crop_cache
from retrieval.mining.pools import negative_pools_for
from retrieval.mining.ssim_miner import mine_ssim_negatives
from retrieval.mining.ssim_report import MiningInterrupted
from retrieval.mining.ssim_store import QuerySpec
from retrieval.utils.errors import UserFacingError

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
    """Grayscale centre crop written independently of retrieval.mining.crop_spec."""
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


@pytest.mark.parametrize(
    ("device", "path"),
    [
        ("cpu", "fused Numba kernel, 2 thread(s)"),
        ("numpy", "NumPy path, 2 worker process(es)"),
        ("torch:cpu", "torch on cpu"),
    ],
)
def test_top_k_equals_brute_force_skimage_loop(dataset, tmp_path, device, path, caplog):
    queries = queries_for(dataset)
    with caplog.at_level(logging.INFO, logger="retrieval.mining.ssim_scorers"):
        pools = mine_ssim_negatives(dataset, queries, tmp_path, **{**PARAMS, "device": device})
    assert path in caplog.text  # the path that scored is said in the log
    assert list(pools) == [q.name for q in queries]
    assert_matches_brute_force(pools, dataset, queries, list(range(N_IMAGES)))
    assert pools["q0"].indices[0] != 0 and 2 not in pools["q0"].indices  # self and labelled excluded


def test_without_the_fused_kernel_cpu_falls_back_to_numpy_and_fused_is_an_error(
    dataset, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(ssim_scorers, "fused_unavailable", lambda: "ImportError: No module named 'numba'")
    queries = queries_for(dataset)[:1]
    with caplog.at_level(logging.INFO, logger="retrieval.mining.ssim_scorers"):
        pools = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    assert "NumPy path (the fused Numba kernel cannot run here: ImportError" in caplog.text
    assert_matches_brute_force(pools, dataset, queries, list(range(N_IMAGES)))
    with pytest.raises(UserFacingError, match=r"mining.device=fused: .* cannot run here \(ImportError"):
        mine_ssim_negatives(dataset, queries, tmp_path / "forced", **{**PARAMS, "device": "fused"})
    assert not list(tmp_path.glob("forced/**/crops-*"))  # failed before decoding any crop


def test_cache_files_are_readable_and_resume_skips_finished_queries(dataset, tmp_path, monkeypatch):
    queries = queries_for(dataset)
    computed: list[str] = []
    real = ssim_pass._score_block

    def counting(scorer, query_crops, candidates, multichannel, progress, *, fail_after=None):
        if fail_after is not None and len(computed) >= fail_after:
            raise KeyboardInterrupt("killed")
        computed.extend(["?"] * len(query_crops))
        return real(scorer, query_crops, candidates, multichannel, progress)

    monkeypatch.setattr(ssim_pass, "_score_block", lambda *a: counting(*a, fail_after=2))
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
    monkeypatch.setattr(ssim_pass, "_score_block", lambda *a: counting(*a))
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
    from retrieval.mining.ssim_pass import top_negatives

    scores = np.array([0.5, 0.9, 0.5, -np.inf, 0.9, 0.1])
    pool = top_negatives(scores, np.array([0, 1, 2, 4, 5]), top_k=4)
    np.testing.assert_array_equal(pool.indices, [1, 4, 0, 2])
    np.testing.assert_allclose(pool.scores, [0.9, 0.9, 0.5, 0.5])


# -- resume within a pass, damaged files, stray temporaries, bounded messages --------------------


REAL_SCORE_BLOCK = ssim_pass._score_block


def counting_scorer(monkeypatch, interrupt_after: int | None = None) -> list[int]:
    """Patch the miner's block scorer: it records how many (query, image) pairs each call
    scores and raises KeyboardInterrupt (Ctrl-C) once ``interrupt_after`` calls are done."""
    scored: list[int] = []
    real = REAL_SCORE_BLOCK

    def score(scorer, query_crops, candidates, multichannel, progress):
        if interrupt_after is not None and len(scored) >= interrupt_after:
            raise KeyboardInterrupt
        scored.append(len(query_crops) * len(candidates))
        return real(scorer, query_crops, candidates, multichannel, progress)

    monkeypatch.setattr(ssim_pass, "_score_block", score)
    return scored


def store_dir(cache: Path) -> Path:
    (found,) = cache.glob("ssim-*")
    return found


BLOCKS = {"queries_per_pass": 4, "candidates_per_block": 8}  # one pass, blocks of 8, 8, 8, 6 images


@pytest.mark.parametrize("damage_progress", [False, True])
def test_interrupted_pass_resumes_after_its_last_saved_block(
    dataset, tmp_path, monkeypatch, caplog, damage_progress
):
    queries = queries_for(dataset)
    counting_scorer(monkeypatch, interrupt_after=2)
    with pytest.raises(MiningInterrupted) as interrupted:
        mine_ssim_negatives(dataset, queries, tmp_path, **BLOCKS, **PARAMS)
    assert str(interrupted.value) == (
        "interrupted: 0 of 4 queries mined are saved (and 16 of 30 images scored for 4 more); "
        "run the same command again to resume"
    )
    (progress,) = store_dir(tmp_path).glob("partial-*.npy")
    assert np.load(progress).shape == (4, 16)
    if damage_progress:
        progress.write_bytes(progress.read_bytes()[:100])  # truncated, as by a full disk

    scored = counting_scorer(monkeypatch)
    with caplog.at_level(logging.INFO):
        pools = mine_ssim_negatives(dataset, queries, tmp_path, **BLOCKS, **PARAMS)
    if damage_progress:
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert progress.name in warning and "scored again" in warning
        assert sum(scored) == 4 * 30
    else:
        assert sum(scored) == 4 * (30 - 16)  # the two saved blocks are not scored again
        assert "64 resumed from saved blocks" in caplog.text
    assert not list(store_dir(tmp_path).glob("partial-*"))
    assert_matches_brute_force(pools, dataset, queries, list(range(N_IMAGES)))


def test_garbage_pool_json_is_reported_once_and_mined_again(dataset, tmp_path, monkeypatch, caplog):
    queries = queries_for(dataset)
    first = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    broken = store_dir(tmp_path) / "q4.json"
    broken.write_text('{"query": "q4", "indices": [1, 2')  # cut short
    (store_dir(tmp_path) / "q13.json").write_bytes(b"\x00\xff garbage")
    scored = counting_scorer(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 damaged" in warning and str(broken) in warning and "q13.json" in warning
    assert sum(scored) == 2 * N_IMAGES  # those two queries only
    for name, pool in first.items():
        np.testing.assert_array_equal(again[name].indices, pool.indices)
        np.testing.assert_array_equal(again[name].scores, pool.scores)
    caplog.clear()
    mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)  # repaired: silent, nothing scored
    assert not caplog.records and sum(scored) == 2 * N_IMAGES


@pytest.mark.parametrize("damage", ["truncated array", "garbage sidecar"])
def test_damaged_crop_cache_is_reported_once_and_decoded_again(
    dataset, tmp_path, monkeypatch, caplog, damage
):
    queries = queries_for(dataset)
    first = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    (array,) = tmp_path.glob("crops-*.npy")
    size = array.stat().st_size
    damaged = array if damage == "truncated array" else array.with_suffix(".json")
    if damage == "truncated array":
        with open(array, "r+b") as f:
            f.truncate(size // 2)
    else:
        damaged.write_text("{'failed': [")
    for pool_file in store_dir(tmp_path).glob("q*.json"):
        pool_file.unlink()  # the queries must be mined again, from the crops
    with caplog.at_level(logging.WARNING):
        again = mine_ssim_negatives(dataset, queries, tmp_path, **PARAMS)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert damaged.name in warning and "decoding the crops again" in warning
    assert array.stat().st_size == size
    for name, pool in first.items():
        np.testing.assert_array_equal(again[name].indices, pool.indices)
        np.testing.assert_array_equal(again[name].scores, pool.scores)
    cache = build_crop_cache(dataset, tmp_path, CropSpec(CROP), show_progress=False)
    np.testing.assert_array_equal(cache.crops[7], brute_crop(dataset[7]))


def test_temporaries_of_dead_processes_are_removed_at_start_and_live_ones_kept(dataset, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    mine_ssim_negatives(dataset[:6], [QuerySpec("q0", dataset[0])], tmp_path, **PARAMS)
    store = store_dir(tmp_path)
    stale = [
        tmp_path / f".crops-0123456789abcdef01234567.npy.tmp{dead_pid}.npy",  # an earlier version's name
        tmp_path / f".crops-0123456789abcdef01234567.npy.tmp-{dead_pid}-0badc0de.npy",
        tmp_path / f".crops-0123456789abcdef01234567.json.tmp-{dead_pid}-0badc0df.json",
        store / f".q0.json.tmp-{dead_pid}-00c0ffee.json",
        store / f".partial-0123.npy.tmp-{dead_pid}-00c0ffef.npy",
    ]
    live = [tmp_path / ".crops-0123456789abcdef01234567.npy.tmp-1-0badcafe.npy", store / ".q0.json.tmp1"]
    for path in stale + live:
        path.write_bytes(b"\0" * 100)
    mine_ssim_negatives(
        dataset[:6], [QuerySpec("q0", dataset[0]), QuerySpec("q1", dataset[1])], tmp_path, **PARAMS
    )
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in live)  # pid 1 is alive: maybe a concurrent run's file
    stale[0].write_bytes(b"\0" * 100)
    mine_ssim_negatives(dataset[:6], [QuerySpec("q0", dataset[0])], tmp_path, **PARAMS)  # nothing to mine
    assert not stale[0].exists()


def test_many_unreadable_images_make_one_bounded_warning(dataset, tmp_path, caplog):
    paths = list(dataset)
    for i in range(5, 30):
        paths[i] = tmp_path / f"broken_{i:03d}.jpg"
        paths[i].write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        mine_ssim_negatives(paths, queries_for(paths)[:2], tmp_path / "cache", **PARAMS)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("25 unreadable image(s) skipped") and warning.endswith("and 15 more")
    assert "broken_005.jpg" in warning and "broken_029.jpg" not in warning and len(warning) < 2000


def test_name_some_bounds_a_list():
    from retrieval.mining.name_lists import name_some

    assert name_some(["a", "b"]) == "a, b"
    assert name_some(range(1000)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 990 more"


# -- settings are checked before any work -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "mining.crop_size=3",
            "mining.crop_size=3 is smaller than SSIM's 7x7 window: the minimum is 7 pixels",
        ),
        ("mining.top_k=0", "mining.top_k=0 must be a whole number of at least 1"),
        ("mining.top_k=-5", "mining.top_k=-5 must be a whole number of at least 1"),
        ("mining.top_k=2.5", "mining.top_k=2.5 must be a whole number of at least 1"),
        ("mining.crop_size=64.5", "mining.crop_size=64.5 must be a whole number of at least 7"),
        ("mining.num_workers=-1", "mining.num_workers=-1 must be a whole number of at least 0"),
        (
            "mining.candidates_per_block=0",
            "mining.candidates_per_block=0 must be a whole number of at least 1",
        ),
        ("mining.small_images=shrink", "mining.small_images=shrink must be one of upscale, exclude"),
        ("mining.device=gpu", "mining.device=gpu must be auto, cpu"),
        ("dataset=folder", "dataset=folder is class-labelled: it has no queries to mine negatives for"),
    ],
)
def test_bad_settings_are_one_paragraph_and_exit_2_before_any_work(tmp_path, capsys, override, message):
    from retrieval.pipelines.mine import main
    from tests.helpers.configs import compose_cfg

    missing = tmp_path / "no-data"  # any read of the dataset would fail differently
    cfg = compose_cfg(
        "mine.yaml", [override, f"paths.data_dir={missing}", f"paths.cache_dir={tmp_path / 'cache'}"]
    )
    with pytest.raises(SystemExit) as exit_:
        main(cfg)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    if override != "dataset=folder":
        assert error.endswith("Nothing was mined.") and "batch_miner" not in error
    else:
        assert "batch_miner=" in error
    assert not missing.exists() and not (tmp_path / "cache").exists()


def test_top_k_zero_fails_at_once_in_the_library_too(dataset, tmp_path):
    from retrieval.utils.errors import UserFacingError

    with pytest.raises(UserFacingError, match="mining.top_k=0"):
        mine_ssim_negatives(dataset, queries_for(dataset), tmp_path, **{**PARAMS, "top_k": 0})
    assert list(tmp_path.iterdir()) == []


# -- worker processes die with the miner -----------------------------------------------------------

FORKING_MINER = """
import json, multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from retrieval.mining import worker_lifetime
if sys.argv[1] == "watchdog":  # as where prctl does not exist
    worker_lifetime._parent_death_signal = lambda sig: False
    worker_lifetime._WATCH_INTERVAL_S = 0.05
fork = multiprocessing.get_context("fork")
with worker_lifetime.workers_die_with_this_process():
    guarded = ProcessPoolExecutor(2, mp_context=fork)
    guarded.submit(time.sleep, 0).result()
unguarded = ProcessPoolExecutor(1, mp_context=fork)  # not while scoring: not our business
unguarded.submit(time.sleep, 0).result()
print(json.dumps([list(guarded._processes), list(unguarded._processes)]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
def test_workers_forked_while_scoring_die_with_a_killed_miner(mechanism):
    import subprocess
    import sys
    import time

    from tests.helpers.processes import session_members
    from tests.helpers.runs import REPO_ROOT

    miner = subprocess.Popen(
        [sys.executable, "-c", FORKING_MINER, mechanism],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = miner.stdout.readline()  # not communicate(): the unguarded orphan keeps the pipe open
        miner.wait(timeout=60)
        assert miner.returncode == -signal.SIGKILL, line
        guarded, unguarded = json.loads(line)
        deadline = time.monotonic() + 10
        while set(guarded) & set(session_members(miner.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(guarded) & set(session_members(miner.pid)) == set()
        # the bug the guard fixes: a pool worker whose parent was SIGKILLed waits forever
        assert set(unguarded) <= set(session_members(miner.pid))
    finally:
        miner.stdout.close()
        for pid in session_members(miner.pid):  # what this test started and left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
