"""retrieval.utils.atomic: a name holds the old content or the complete new one, never half."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.utils import atomic
from retrieval.utils.atomic import (
    atomic_directory,
    atomic_file,
    remove_stale,
    remove_stale_in,
    replace_directory,
    scratch_directory,
    sibling,
    write_atomic,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_atomic_replaces_a_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "meta.json"
    write_atomic(target, "old")
    assert write_atomic(target, b"new \xff") == target
    assert target.read_bytes() == b"new \xff"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_failed_file_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "crops.npy"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as staged:
        staged.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["crops.npy"]


def test_a_file_temporary_keeps_the_suffix_so_numpy_writes_that_name(tmp_path):
    target = tmp_path / "crops.npy"
    with atomic_file(target) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".crops.npy.tmp-")
        assert staged.suffix == ".npy" and not staged.exists()
        np.save(staged, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["crops.npy"]


def test_directory_appears_complete_and_replaces_an_existing_one(tmp_path):
    target = tmp_path / "db"
    with atomic_directory(target) as staged:
        assert staged.is_dir() and not target.exists()
        (staged / "a").write_text("1")
    with atomic_directory(target, fsync_files=True) as staged:
        (staged / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_failed_directory_build_keeps_the_old_one(tmp_path):
    target = tmp_path / "db"
    with atomic_directory(target) as staged:
        (staged / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staged:
        (staged / "b").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "new"):
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_keep_existing_discards_the_new_build(tmp_path):
    target = tmp_path / "toy"
    with atomic_directory(target, keep_existing=lambda: target.exists()) as staged:
        target.mkdir()  # a concurrent process finished first
        (target / "theirs").write_text("")
        (staged / "ours").write_text("")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]


def test_old_folder_is_put_back_when_the_rename_fails(tmp_path, monkeypatch):
    target, staged = tmp_path / "db", tmp_path / "staged"
    target.mkdir()
    (target / "old").write_text("")
    staged.mkdir()
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the rename of the new folder
            raise OSError("no space")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="no space"):
        replace_directory(staged, target)
    assert [p.name for p in target.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "staged"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "toy"
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".toy.tmp-{dead}-0123abcd", tmp_path / f".toy.old-{dead}-ab12ab12"]
    for path in stale:
        path.mkdir()
        (path / "x").write_text("")
    (tmp_path / f".toy.json.tmp-{dead}-00ff00ff.json").write_text("")  # another target's file
    kept = [
        tmp_path / f".toy.tmp-{alive}-0123abcd",
        sibling(target),
        tmp_path / ".toy.tmp-notapid-1",
        tmp_path / "toy",
        tmp_path / f".toy.json.tmp-{dead}-00ff00ff.json",
    ]
    for path in kept[:-1]:
        path.mkdir()
    assert sorted(remove_stale(target)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    file_target = tmp_path / "toy.json"
    assert remove_stale(file_target) == [tmp_path / f".toy.json.tmp-{dead}-00ff00ff.json"]


def test_a_folder_sweep_removes_every_dead_temporary_whatever_its_target(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [
        tmp_path / f".shard-000001.npz.tmp-{dead}-0123abcd.npz",
        tmp_path / f".vectors.npy.old-{dead}-ab12ab12",
    ]
    kept = [tmp_path / f".shard-000002.npz.tmp-{alive}-0123abcd.npz", tmp_path / "shard-000000.npz"]
    for path in stale + kept:
        path.write_text("")
    assert sorted(remove_stale_in(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_in(tmp_path / "missing") == []


def test_scratch_directory_is_removed_whatever_happens(tmp_path):
    with scratch_directory(tmp_path, "unpack-a.tgz") as scratch:
        assert scratch.is_dir() and scratch.name.startswith(".unpack-a.tgz.tmp-")
        (scratch / "f").write_text("")
    with pytest.raises(ValueError), scratch_directory(tmp_path, "unpack-a.tgz") as scratch:
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_cleans_up_after_a_killed_build(tmp_path):
    target: Path = tmp_path / "db"
    leftover = tmp_path / f".db.tmp-{_dead_pid()}-deadbeef"
    leftover.mkdir()
    with atomic_directory(target) as staged:
        (staged / "meta.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
