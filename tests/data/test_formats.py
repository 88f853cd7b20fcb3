"""The VGG classic and revisited readers on small datasets written in the exact layout."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from retrieval.data.landmark_formats import load_classic_ground_truth, load_revisited_ground_truth
from retrieval.utils.errors import DatasetError
from tests.helpers.vgg import write_vgg


def test_classic_layout_parses(tmp_path):
    gt = load_classic_ground_truth(write_vgg(tmp_path), "tiny")
    assert len(gt.image_names) == 11 and len(gt.queries) == 4
    q = gt.queries[0]
    assert (q.name, q.landmark, q.bbox) == ("arch_000000", "arch", (1.5, 2.0, 30.0, 25.5))
    assert [gt.image_names[i] for i in q.good] == ["arch_000000", "arch_000001"]
    assert [gt.image_names[i] for i in q.positives] == ["arch_000000", "arch_000001", "arch_000002"]
    assert [gt.image_names[i] for i in q.labelled] == [f"arch_{i:06d}" for i in range(4)]
    assert q.path.name == "arch_000000.jpg"


def test_nested_paris_layout_without_prefix(tmp_path):
    gt = load_classic_ground_truth(write_vgg(tmp_path, nested=True, prefix=""), "tiny")
    assert len(gt.image_names) == 11
    assert gt.image_paths[0].parent.parent.name == "paris"


@pytest.mark.parametrize(
    "breakage,expected",
    [
        (
            lambda r: (r / "gt_files" / "arch_1_good.txt").write_text("arch_000000\nnot_an_image\n"),
            r"arch_1_good.txt:2 names image 'not_an_image'",
        ),
        (
            lambda r: (r / "gt_files" / "arch_1_query.txt").write_text("oxc1_arch_000000 1 2 3\n"),
            r"arch_1_query.txt:1 is not a query line",
        ),
        (lambda r: (r / "gt_files" / "arch_1_ok.txt").unlink(), r"arch_1_ok.txt is missing"),
        (
            lambda r: [(r / "gt_files" / f"arch_1_{k}.txt").write_text("") for k in ("good", "ok")],
            r"both arch_1_good.txt and arch_1_ok.txt are empty",
        ),
    ],
)
def test_bad_ground_truth_names_file_and_line(tmp_path, breakage, expected):
    root = write_vgg(tmp_path)
    breakage(root)
    with pytest.raises(DatasetError, match=expected):
        load_classic_ground_truth(root, "tiny")


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="gt_files does not exist"):
        load_classic_ground_truth(tmp_path, "tiny")


def test_revisited_pickle(tmp_path):
    root = write_vgg(tmp_path)
    names = sorted(p.stem for p in (root / "jpg").glob("*.jpg"))
    gnd = [dict(bbx=[1.0, 2.0, 20.0, 20.0], easy=np.array([0, 1]), hard=[2], junk=[3])]
    with (root / "gnd_tiny.pkl").open("wb") as f:
        pickle.dump(dict(imlist=names, qimlist=["arch_000000"], gnd=gnd), f)
    gt = load_revisited_ground_truth(root, "tiny")
    q = gt.queries[0]
    assert gt.protocol == "revisited" and q.landmark == "arch"
    assert q.easy.tolist() == [0, 1] and q.hard.tolist() == [2] and q.junk.tolist() == [3]
    assert q.bbox == (1.0, 2.0, 20.0, 20.0)


def test_unreadable_pickle_is_named(tmp_path):
    root = write_vgg(tmp_path)
    (root / "gnd_tiny.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="gnd_tiny.pkl is not a revisited ground-truth pickle"):
        load_revisited_ground_truth(root, "tiny")
