"""Every anticipated bad input is one paragraph naming the thing and the fix, exit code 2,
no traceback: the table below drives each through the real entry point (its ``main()``,
in-process: the same Hydra composition and error path as the console script, without a
Python start-up per row). The README's "Errors" section lists the same rows (checked)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.pipelines import database, evaluate, export, query, train
from tests.helpers.configs import SMALL_VGG_MODEL
from tests.helpers.runs import REPO_ROOT

ENTRY = {
    "train.py": train.main,
    "evaluate.py": evaluate.main,
    "retrieval-database": database.main,
    "retrieval-export": export.main,
    "retrieval-query": query.main,
}


def _files(tmp: Path, small_database: Path) -> dict[str, Path]:
    """The bad files of the table, made once per test."""
    good = next(small_database.parent.glob("*.ckpt"))
    files = {
        "empty.ckpt": tmp / "empty.ckpt",
        "truncated.ckpt": tmp / "truncated.ckpt",
        "notes.ckpt": tmp / "notes.ckpt",
        "weights.ckpt": tmp / "weights.ckpt",
        "other.ckpt": tmp / "other.ckpt",
        "folder": tmp / "folder",
        "bomb.png": tmp / "bomb.png",
        "query.jpg": tmp / "query.jpg",
    }
    files["empty.ckpt"].write_bytes(b"")
    files["truncated.ckpt"].write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    files["notes.ckpt"].write_text("epoch 3, looked good\n")
    torch.save({"weights": torch.zeros(3)}, files["weights.ckpt"])  # a torch file, not a checkpoint
    torch.save({"state_dict": {"net.backbone.stem.weight": torch.zeros(3)}}, files["other.ckpt"])
    files["folder"].mkdir()
    Image.new("L", (20_001, 20_001)).save(files["bomb.png"])  # 400 M pixels + 1: over the limit
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(files["query.jpg"])
    return files


# (entry point, overrides with {name} for a file above / {db}, the message the user must see)
ROWS: list[tuple[str, str, str]] = [
    ("train.py", "ckpt_path={tmp}/missing.ckpt", "missing.ckpt does not exist"),
    ("train.py", "ckpt_path={empty.ckpt}", "is empty (0 bytes)"),
    ("train.py", "ckpt_path={truncated.ckpt}", "cannot be read"),
    ("train.py", "ckpt_path={notes.ckpt}", "not a PyTorch checkpoint"),
    ("train.py", "ckpt_path={weights.ckpt}", "holds no 'state_dict'"),
    (
        "train.py",
        "ckpt_path={other.ckpt}",
        "1 unexpected: net.backbone.stem.weight). Pass the model overrides it was trained with",
    ),
    (
        "train.py",
        "trainer.max_epochs=abc",
        "trainer.max_epochs='abc' has the wrong type: Trainer takes Optional[int]",
    ),
    ("evaluate.py", "ckpt_path={truncated.ckpt}", "cannot be read"),
    ("retrieval-database", "ckpt_path={notes.ckpt}", "not a PyTorch checkpoint"),
    ("retrieval-export", "ckpt_path={empty.ckpt}", "is empty (0 bytes)"),
    ("retrieval-query", "image={query.jpg} db={db} k=0", "k=0 is out of range: use a whole number from 1 up"),
    ("retrieval-query", "image={query.jpg} db={db} k=-1", "k=-1 is out of range"),
    ("retrieval-query", "image={query.jpg} db={db} k=abc", "k='abc' is not a whole number from 1 up"),
    ("retrieval-query", "image={query.jpg} db={db} k=null", "k=None is not a whole number"),
    ("retrieval-query", "image={query.jpg} db={db} k=2.5", "k=2.5 is not a whole number"),
    (
        "retrieval-query",
        "image={query.jpg} db={db} bbox=[5000,5000,6000,6000]",
        "lies outside the 64x48 image",
    ),
    ("retrieval-query", "image={query.jpg} db={db} bbox=[0,0,inf,inf]", "a box holds finite numbers"),
    ("retrieval-query", "image={query.jpg} db={db} bbox=[10,10,5,5]", "x1 < x2 and y1 < y2"),
    ("retrieval-query", "image={query.jpg} db={db} bbox=7", "bbox=7 is not a box"),
    ("retrieval-query", "image={folder} db={db}", "is a folder; pass one image file"),
    ("retrieval-query", "image={bomb.png} db={db}", "refused as a possible decompression bomb"),
    ("retrieval-query", "image={query.jpg} db={tmp}/nowhere", "nowhere does not exist (db=DIR)"),
]


@pytest.fixture(autouse=True)
def _own_logging():
    """Hydra's job logging points the root logger at this row's captured stderr: put it back,
    or the next row logs into a closed stream (Python then prints a traceback of that)."""
    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _run(entry: Callable[[], object], argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    return exit_info.value.code


@pytest.mark.parametrize("command,overrides,message", ROWS, ids=[f"{c} {o}" for c, o, _ in ROWS])
def test_bad_input_is_one_paragraph_and_exit_code_2(
    command, overrides, message, small_database, small_vgg_root, tmp_path, monkeypatch, capsys
):
    files = _files(tmp_path, small_database)
    values = {
        **{name: str(path) for name, path in files.items()},
        "tmp": str(tmp_path),
        "db": str(small_database),
    }
    for name, value in values.items():
        overrides = overrides.replace(f"{{{name}}}", value)
    argv = overrides.split()
    if command != "retrieval-query":  # the commands that read a dataset: the small one
        argv = [
            *SMALL_VGG_MODEL,
            f"paths.data_dir={small_vgg_root.parent}",
            f"paths.log_dir={tmp_path / 'logs'}",
            *argv,
        ]
    monkeypatch.chdir(tmp_path)
    code = _run(ENTRY[command], argv, monkeypatch)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert message in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1  # one paragraph


def test_the_readme_lists_every_row():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Errors") :]
    for command, overrides, _ in ROWS:
        shown = overrides.split("db={db} ")[-1].split("={")[0]
        assert f"`{command}" in section and shown.split("=")[0] in section, (command, overrides)
