"""The real ``retrieval-mine`` command killed while it decodes the crop cache: no survivor, no
stray temporary, and a rerun that decodes only the rows the killed build had not recorded and
ends with the bytes of an uninterrupted build. In process: a Ctrl-C'd build resumed, a record
that does not match discarded, abandoned partials of other keys removed."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.mining import crops
from retrieval.mining.crop_partial import PARTIAL_MAX_AGE_S, partial_paths, rows_done
from retrieval.mining.crop_spec import CropSpec, load_crop
from retrieval.mining.crops import build_crop_cache
from retrieval.pipelines.mine import mine
from tests.helpers.configs import compose_cfg
from tests.helpers.processes import temporary_files, wait_for_no_survivors
from tests.helpers.runs import REPO_ROOT, finish, start_script
from tests.mining.test_miner_kill import write_landmarks

BIG, BIG_SIDE = 400, 800  # noise JPEGs: ~6 ms each to decode, a few seconds in all on one thread
CROP = 64  # small: the miner's scoring after the build is quick
DECODED = re.compile(r"crop cache: (\d+) decoded, (\d+) resumed from an interrupted build")


def write_set(root: Path) -> None:
    write_landmarks(root)
    rng = np.random.default_rng(1)
    for i in range(BIG):
        pixels = rng.integers(0, 256, (BIG_SIDE, BIG_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "jpg" / f"big_{i:06d}.jpg", quality=90)
    for i in range(3):  # smaller than the crop (upscaled), and first: among the resumed rows
        Image.fromarray(pixels[: CROP - 16, : CROP - 8]).save(root / "jpg" / f"a_small_{i:06d}.jpg")


def overrides(data: Path, cache: Path, tmp: Path) -> list[str]:
    return [
        "dataset=oxford5k",
        f"paths.data_dir={data}",
        f"paths.cache_dir={cache}",
        f"paths.log_dir={tmp / 'logs'}",
        f"mining.crop_size={CROP}",
        "mining.top_k=10",
        "mining.num_workers=1",  # one decoding thread: the build lasts long enough to be killed in
        "mining.show_progress=false",
        "mining.device=numpy",  # no kernel to compile before the decoding starts
    ]


def crop_files(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (cache / "oxford5k" / "ssim").glob("crops-*")}


@pytest.mark.slow  # ~30 s on 2 shared cores: 400 JPEGs written, three builds, two of them then mine
def test_sigkill_during_the_crop_build_resumes_its_recorded_rows(tmp_path):
    data = tmp_path / "data"
    write_set(data / "oxford5k")
    cache = tmp_path / "cache"
    killed = start_script(
        "-m",
        "retrieval.pipelines.mine",
        *overrides(data, cache, tmp_path),
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    ssim_dir = cache / "oxford5k" / "ssim"
    deadline = time.monotonic() + 120
    while not (records := list(ssim_dir.glob(".crops-*.partial.json"))) or rows_done(records[0]) == 0:
        if killed.poll() is not None:
            pytest.fail(
                f"the miner ended (rc {killed.returncode}) before a row was recorded:\n{killed.stderr.read()}"
            )
        assert time.monotonic() < deadline, "no crop row recorded in time"
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)  # as a cluster pre-empts a job: no handler runs
    killed.wait(timeout=30)
    killed.stdout.close(), killed.stderr.close()
    assert wait_for_no_survivors(killed.pid, timeout=10) == []

    resumable, total = rows_done(records[0]), json.loads(records[0].read_text())["count"]
    assert 0 < resumable < total, f"killed too late to test a resume: {resumable} of {total} rows"
    assert crop_files(cache) == {}  # nothing under the final names yet
    rerun = finish(
        start_script("-m", "retrieval.pipelines.mine", *overrides(data, cache, tmp_path), cwd=REPO_ROOT),
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = DECODED.search(rerun.stdout + rerun.stderr)
    assert said is not None, (rerun.stdout + rerun.stderr)[-3000:]
    assert (int(said[1]), int(said[2])) == (total - resumable, resumable)  # the recorded rows, not again
    assert temporary_files(cache) == [] and not list(ssim_dir.glob(".crops-*"))

    reference = tmp_path / "reference"
    mine(compose_cfg("mine.yaml", overrides(data, reference, tmp_path)))
    expected = crop_files(reference)
    assert sorted(expected) == sorted(crop_files(cache)) and len(expected) == 2  # the array and its sidecar
    assert crop_files(cache) == expected  # byte for byte: the crops, and the small images listed
    sidecar = next(name for name in expected if name.endswith(".json"))
    assert json.loads(expected[sidecar])["small"] == [0, 1, 2]  # recorded by the killed build


def noise_images(folder: Path, count: int = 12, side: int = 48) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(2)
    paths = [folder / f"{i:03d}.jpg" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)).save(path)
    return paths


def interrupted_build(paths: list[Path], cache: Path, after: int, monkeypatch) -> Path:
    """A build that Ctrl-C stops at its ``after``-th image: its record, which keeps the rows done."""
    calls: list[Path] = []

    def load(path, spec):
        if len(calls) == after:
            raise KeyboardInterrupt
        calls.append(path)
        return load_crop(path, spec)

    with monkeypatch.context() as patch:
        patch.setattr(crops, "load_crop", load)
        with pytest.raises(KeyboardInterrupt):
            build_crop_cache(paths, cache, CropSpec(32), num_workers=1, show_progress=False)
    (record,) = cache.glob(".crops-*.partial.json")
    assert rows_done(record) == after
    return record


def test_an_interrupted_build_resumes_and_a_mismatched_record_is_discarded(tmp_path, monkeypatch, caplog):
    paths = noise_images(tmp_path / "images")
    expected = build_crop_cache(paths, tmp_path / "reference", CropSpec(32), show_progress=False)
    caplog.set_level(logging.INFO, logger="retrieval.mining")

    interrupted_build(paths, tmp_path / "resumed", 5, monkeypatch)
    resumed = build_crop_cache(paths, tmp_path / "resumed", CropSpec(32), show_progress=False)
    assert "crop cache: 7 decoded, 5 resumed from an interrupted build" in caplog.messages
    np.testing.assert_array_equal(np.asarray(resumed.crops), np.asarray(expected.crops))
    assert [p.name for p in (tmp_path / "resumed").iterdir() if p.name.startswith(".")] == []

    record = interrupted_build(paths, tmp_path / "mismatched", 5, monkeypatch)
    record.write_text(record.read_text().replace('"shape": [32, 32]', '"shape": [16, 16]'))
    caplog.clear()
    again = build_crop_cache(paths, tmp_path / "mismatched", CropSpec(32), show_progress=False)
    assert [m for m in caplog.messages if "discarding the interrupted crop cache build" in m] != []
    assert "crop cache: 12 decoded, 0 resumed from an interrupted build" in caplog.messages
    np.testing.assert_array_equal(np.asarray(again.crops), np.asarray(expected.crops))


def test_abandoned_partials_of_other_keys_are_removed_after_a_day(tmp_path):
    paths = noise_images(tmp_path / "images", count=2)
    cache = tmp_path / "cache"
    cache.mkdir()
    old, recent = partial_paths(cache, "0ld"), partial_paths(cache, "recent")
    for path in (*old, *recent):
        path.write_bytes(b"\0" * 100)
    for path in old:
        os.utime(path, (time.time() - PARTIAL_MAX_AGE_S - 60,) * 2)
    build_crop_cache(paths, cache, CropSpec(32), show_progress=False)
    assert not any(p.exists() for p in old) and all(p.exists() for p in recent)
