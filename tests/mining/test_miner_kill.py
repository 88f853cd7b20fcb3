"""The real ``retrieval-mine`` command killed and interrupted mid-run: no orphan workers, no
stray temporaries, one line on Ctrl-C, and a rerun that scores only what was not saved and
ends with the pools of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.pipelines.mine import mine
from tests.helpers.configs import compose_cfg
from tests.helpers.processes import session_members, temporary_files, wait_for_no_survivors
from tests.helpers.runs import REPO_ROOT, finish, start_script

LANDMARKS, VIEWS, QUERIES_PER_LANDMARK, DISTRACTORS = 4, 5, 2, 60
QUERIES = LANDMARKS * QUERIES_PER_LANDMARK
N_IMAGES = LANDMARKS * VIEWS + DISTRACTORS
SIZE = 192  # pixels, square; the crop is the whole image
BLOCK = 20  # candidates per saved block: 4 blocks per pass


def write_landmarks(root: Path, seed: int = 0) -> Path:
    """An Oxford-VGG-layout set (jpg/, gt_files/): LANDMARKS x VIEWS noisy views of one
    texture each (the first QUERIES_PER_LANDMARK are queries), plus random distractors."""
    rng = np.random.default_rng(seed)
    images, gt = root / "jpg", root / "gt_files"
    images.mkdir(parents=True)
    gt.mkdir()

    def texture() -> np.ndarray:
        coarse = Image.fromarray(rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8))
        return np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.int16)

    def save(name: str, pixels: np.ndarray) -> None:
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"{name}.jpg", quality=90)

    for lm in range(LANDMARKS):
        base = texture()
        views = [f"lm{lm}_{v:06d}" for v in range(VIEWS)]
        for name in views:
            save(name, base + rng.integers(-30, 31, base.shape))
        for k in range(QUERIES_PER_LANDMARK):
            stem = f"lm{lm}_{k + 1}"
            (gt / f"{stem}_query.txt").write_text(f"oxc1_{views[k]} 0 0 {SIZE} {SIZE}\n")
            (gt / f"{stem}_good.txt").write_text("\n".join(v for v in views if v != views[k]) + "\n")
            (gt / f"{stem}_ok.txt").write_text("")
            (gt / f"{stem}_junk.txt").write_text("")
    for d in range(DISTRACTORS):
        save(f"random_{d:06d}", texture())
    return root


def mine_overrides(data: Path, cache: Path, tmp: Path) -> list[str]:
    """One query per pass and blocks of BLOCK images: a run saves 8 passes of 4 blocks."""
    return [
        "dataset=oxford5k",
        f"paths.data_dir={data}",
        f"paths.cache_dir={cache}",
        f"paths.log_dir={tmp / 'logs'}",
        f"mining.crop_size={SIZE}",
        "mining.top_k=10",
        "mining.queries_per_pass=1",
        f"mining.candidates_per_block={BLOCK}",
        "mining.show_progress=false",
        "mining.device=numpy",  # the path that forks scoring workers, which these kills are about
    ]


def store_of(cache: Path) -> Path | None:
    found = sorted((cache / "oxford5k" / "ssim").glob("ssim-*"))
    return found[0] if found else None


def saved_queries(cache: Path) -> list[str]:
    store = store_of(cache)
    if store is None:
        return []
    # not index.json, nor a temporary (.NAME.tmp-PID-HEX.json) being written
    return sorted(p.stem for p in store.glob("[!.]*.json") if p.name != "index.json")


def start_mining(data: Path, cache: Path, tmp: Path):
    """The real command, leading its own session (its workers belong to that session). It
    starts in the repository, as a user's ``python -m`` does there: the package imported
    is the one under test whatever the environment's editable install points at."""
    overrides = mine_overrides(data, cache, tmp)
    return start_script("-m", "retrieval.pipelines.mine", *overrides, cwd=REPO_ROOT, start_new_session=True)


def wait_until_saved(process, cache: Path, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(saved_queries(cache)) < count:
        if process.poll() is not None:
            pytest.fail(
                f"the miner ended (rc {process.returncode}) before {count} queries were saved:\n"
                f"{process.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, "no query saved in time"
        time.sleep(0.005)


def wait_for_workers(process, timeout: float = 60.0) -> None:
    """Until the miner's scoring workers are running (it forks them for each block of images):
    a kill then lands on a miner with live workers, the case that used to leave orphans."""
    deadline = time.monotonic() + timeout
    while len(session_members(process.pid)) < 3:  # the miner and its 2 workers
        assert process.poll() is None and time.monotonic() < deadline, "the miner never ran its workers"
        time.sleep(0.002)


SUMMARY = re.compile(
    r"mined (\d+) of (\d+) queries in this run \((\d+) saved by an earlier run\); "
    r"(\d+) query-image pairs scored, (\d+) resumed from saved blocks"
)


def pools_in(cache: Path) -> dict[str, tuple[list[int], list[float]]]:
    store = store_of(cache)
    assert store is not None
    records = (json.loads(p.read_text()) for p in store.glob("[!.]*.json") if p.name != "index.json")
    return {r["query"]: (r["indices"], r["scores"]) for r in records}


def test_sigkill_leaves_no_workers_and_the_rerun_mines_only_what_was_not_saved(tmp_path):
    data = tmp_path / "data"
    write_landmarks(data / "oxford5k")
    cache = tmp_path / "cache"
    killed = start_mining(data, cache, tmp_path)
    wait_until_saved(killed, cache, 2)
    wait_for_workers(killed)
    os.kill(killed.pid, signal.SIGKILL)  # as a cluster pre-empts a job: no handler runs
    killed.wait(timeout=30)
    killed.stdout.close(), killed.stderr.close()
    assert wait_for_no_survivors(killed.pid, timeout=10) == []  # the workers died with it

    saved = saved_queries(cache)
    assert 2 <= len(saved) < QUERIES, f"killed too late to test a resume: {saved}"
    store = store_of(cache)
    resumable = sum(np.load(p).size for p in store.glob("partial-*.npy"))  # saved blocks of the open pass
    # what a kill in the middle of a write leaves, under this version's and an earlier one's names
    ssim_dir = store.parent
    strays = [
        ssim_dir / f".crops-0123456789abcdef01234567.npy.tmp{killed.pid}.npy",
        ssim_dir / f".crops-0123456789abcdef01234567.npy.tmp-{killed.pid}-0badc0de.npy",
        store / f".{saved[0]}.json.tmp-{killed.pid}-00c0ffee.json",
    ]
    for stray in strays:
        stray.write_bytes(b"\0" * 1000)

    rerun = finish(start_mining(data, cache, tmp_path), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = SUMMARY.search(rerun.stdout)
    assert summary is not None, rerun.stdout[-3000:]
    mined, total, earlier, scored, resumed = map(int, summary.groups())
    assert (total, earlier, mined) == (QUERIES, len(saved), QUERIES - len(saved))
    assert resumed == resumable  # the saved blocks were read back, not scored again
    assert scored + resumed == mined * N_IMAGES  # and everything else was scored exactly once
    assert temporary_files(cache) == [] and not list(store.glob("partial-*"))

    reference = tmp_path / "reference"
    mine(compose_cfg("mine.yaml", mine_overrides(data, reference, tmp_path)))
    expected = pools_in(reference)
    assert len(expected) == QUERIES and pools_in(cache) == expected


def test_ctrl_c_prints_one_line_exits_130_and_leaves_no_workers(tmp_path):
    data = tmp_path / "data"
    write_landmarks(data / "oxford5k")
    cache = tmp_path / "cache"
    process = start_mining(data, cache, tmp_path)
    wait_until_saved(process, cache, 1)
    wait_for_workers(process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends: the miner and its workers
    result = finish(process, timeout=60)
    assert result.returncode == 130, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    said = re.fullmatch(
        r"interrupted: (\d+) of (\d+) queries mined are saved(?: \(and \d+ of \d+ images scored for 1 more\))?; "
        r"run the same command again to resume",
        lines[0],
    )
    assert said is not None, lines[0]
    assert (int(said[1]), int(said[2])) == (len(saved_queries(cache)), QUERIES)
    assert "Traceback" not in result.stdout
    assert wait_for_no_survivors(process.pid, timeout=10) == []
    assert temporary_files(cache) == []
