"""retrieval.utils.block_plan: which rows go in which block file, which blocks are missing,
and what killed runs left half-written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from retrieval.utils.block_plan import BlockPlan
from tests.utils.test_atomic import _dead_pid  # the pid of a process that has exited


class _Parts(BlockPlan):
    block_name = "part-{:06d}.npy"


def test_rows_cover_the_count_once_and_the_last_block_is_short(tmp_path):
    plan = BlockPlan(tmp_path, count=10, size=4)
    assert plan.n_blocks == 3
    assert [plan.rows(b) for b in range(3)] == [range(0, 4), range(4, 8), range(8, 10)]
    assert BlockPlan(tmp_path, count=8, size=4).n_blocks == 2  # no empty block when size divides
    assert BlockPlan(tmp_path, count=0, size=4).n_blocks == 0
    with pytest.raises(ValueError, match="at least one row"):
        BlockPlan(tmp_path, count=10, size=0)


def test_paths_keep_the_subclass_file_names(tmp_path):
    assert BlockPlan(tmp_path, 10, 4).path(2) == tmp_path / "block-000002.npy"
    assert _Parts(tmp_path, 10, 4).path(12) == tmp_path / "part-000012.npy"


def test_prepare_creates_the_folder_and_lists_the_blocks_not_written(tmp_path):
    plan = _Parts(tmp_path / "cache" / "key", count=10, size=4)
    assert plan.prepare() == [0, 1, 2] and plan.folder.is_dir()
    with plan.staged(1) as staged:
        np.save(staged, np.arange(4))
    assert plan.prepare() == [0, 2]
    np.testing.assert_array_equal(np.load(plan.path(1)), np.arange(4))


def test_prepare_removes_dead_processes_temporaries_only(tmp_path):
    plan = _Parts(tmp_path, count=10, size=4)
    dead, alive = _dead_pid(), os.getppid()  # our parent outlives this test
    of_dead_block = tmp_path / f".part-000000.npy.tmp-{dead}-0123abcd.npy"
    of_dead_merge = tmp_path / f".vectors.npy.tmp-{dead}-89abcdef.npy"  # the folder is the plan's
    of_living = tmp_path / f".part-000001.npy.tmp-{alive}-0123abcd.npy"
    for path in (of_dead_block, of_dead_merge, of_living):
        path.write_bytes(b"half a block")
    assert plan.prepare() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [of_living.name]


def test_a_staged_block_leaves_no_temporary_and_a_failed_one_no_file(tmp_path):
    plan = _Parts(tmp_path, count=10, size=4)
    with plan.staged(2) as staged:
        assert staged.parent == tmp_path and staged != plan.path(2)
        np.save(staged, np.ones(2))
        assert not plan.path(2).exists()  # the name holds nothing until the block is complete
    assert [p.name for p in tmp_path.iterdir()] == ["part-000002.npy"]
    with pytest.raises(RuntimeError), plan.staged(0) as staged:
        np.save(staged, np.ones(4))
        raise RuntimeError("killed mid-block")
    assert [p.name for p in tmp_path.iterdir()] == ["part-000002.npy"]
    assert plan.prepare() == [0, 1]
