"""The GLDv2 reader on generated trees in the published layout (cvdfoundation/google-landmark
README.md: train.csv id,url,landmark_id; train_clean.csv landmark_id,images; train/a/b/c/<id>.jpg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from retrieval.data.gldv2_format import landmark_disjoint_split, read_gldv2
from retrieval.data.image_paths import ImagePaths
from retrieval.utils.errors import DatasetError
from tests.helpers.configs import compose_cfg
from tests.helpers.large_sets import gldv2_ids, gldv2_layout, write_gldv2


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[int, list[str]], dict[int, list[str]]]:
    clean = gldv2_ids(12, 4)
    more = gldv2_ids(1, 4, seed=1)[1000]
    # landmarks clean dropped, and noisy images of a clean one: in train.csv only
    extra = {5: more[:1], 9: more[1:2], 1000: more[2:]}
    return write_gldv2(tmp_path_factory.mktemp("gld") / "gldv2", clean, extra), clean, extra


def test_clean_reads_train_clean_csv_with_ids_as_paths_and_landmarks_as_classes(tree):
    root, clean, _ = tree
    gt = read_gldv2(root, "clean", val_fraction=0.25, seed=0)
    expected = [(i, lm) for lm, ids in clean.items() for i in ids]
    assert gt.image_names == [i for i, _ in expected]
    assert isinstance(gt.image_paths, ImagePaths)
    assert [p.relative_to(root).as_posix() for p in gt.image_paths] == [
        f"train/{gldv2_layout(i)}" for i, _ in expected
    ]
    assert gt.image_paths[5] == root / "train" / gldv2_layout(expected[5][0])
    assert [gt.class_names[c] for c in gt.labels] == [str(lm) for _, lm in expected]
    assert all(p.is_file() for p in gt.image_paths)


def test_full_reads_train_csv_including_the_images_clean_left_out(tree):
    root, clean, extra = tree
    gt = read_gldv2(root, "full", val_fraction=0.25)
    assert len(gt) == sum(map(len, clean.values())) + sum(map(len, extra.values()))
    assert len(gt.class_names) == len(clean) + len(extra) - 1  # landmark 1000 is in both
    assert gt.image_names[-2:] == extra[1000]


def test_the_validation_split_is_landmark_disjoint_seeded_and_sized(tree):
    root, clean, _ = tree
    gt = read_gldv2(root, "clean", val_fraction=0.25, seed=3)
    split, labels = np.asarray(gt.split), gt.labels
    val, train = set(labels[split == "val"].tolist()), set(labels[split == "train"].tolist())
    assert not val & train and len(val) == 3 and len(val | train) == len(clean)
    assert read_gldv2(root, "clean", val_fraction=0.25, seed=3).split == gt.split
    assert read_gldv2(root, "clean", val_fraction=0.25, seed=4).split != gt.split
    # a landmark with one image never goes to validation: it has nothing to retrieve there
    lone = landmark_disjoint_split(np.asarray([1, 1, 2, 3, 3, 4]), 0.75, seed=0)
    assert "val" not in lone[[2, 5]].tolist()


def test_the_image_folder_is_never_listed(tree, monkeypatch):
    root, _, _ = tree
    listed = []
    real_scandir, real_listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda p=".": listed.append(str(p)) or real_scandir(p))
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(str(p)) or real_listdir(p))
    read_gldv2(root, "full")
    assert not [p for p in listed if str(root / "train") in p]


def test_only_the_shards_the_downloader_unpacked_are_used(tree, tmp_path):
    root, clean, _ = tree
    ids = [i for v in clean.values() for i in v]
    (root / "shards").mkdir()
    try:
        (root / "shards" / "images_000.txt").write_text("".join(f"{gldv2_layout(i)}\n" for i in ids[:20]))
        gt = read_gldv2(root, "clean")
        assert gt.image_names == ids[:20]
    finally:
        (root / "shards" / "images_000.txt").unlink()
        (root / "shards").rmdir()


def test_a_missing_csv_names_the_file_and_the_download_command(tmp_path):
    with pytest.raises(DatasetError) as error:
        read_gldv2(tmp_path / "gldv2", "clean")
    assert str(tmp_path / "gldv2" / "train_clean.csv") in str(error.value)
    assert "retrieval-download dataset=gldv2" in str(error.value)
    with pytest.raises(DatasetError, match="version='sample'"):
        read_gldv2(tmp_path, "sample")


def test_missing_images_name_a_file_and_the_download_command(tree, tmp_path):
    root, clean, _ = tree
    bare = tmp_path / "gldv2"
    bare.mkdir()
    (bare / "train_clean.csv").write_bytes((root / "train_clean.csv").read_bytes())
    with pytest.raises(DatasetError) as error:
        read_gldv2(bare, "clean")
    message = str(error.value)
    assert "missing" in message and str(bare / "train") in message
    assert "retrieval-download dataset=gldv2" in message and "shards=N" in message


def test_a_csv_with_other_columns_or_bad_ids_is_refused_by_name(tmp_path):
    (tmp_path / "train_clean.csv").write_text("id,landmark\nabc,1\n")
    with pytest.raises(DatasetError, match=r"train_clean.csv: the header .* lacks landmark_id, images"):
        read_gldv2(tmp_path, "clean")
    (tmp_path / "train.csv").write_text("id,url,landmark_id\nnot-an-id,u,12\n")
    with pytest.raises(DatasetError, match=r"1 entries .* id='not-an-id'"):
        read_gldv2(tmp_path, "full")


@pytest.mark.slow  # imports Lightning and torchvision: ~5 s idle, 20+ s on a loaded machine
def test_dataset_gldv2_trains_on_p_by_k_batches_and_evaluates_held_out_landmarks(tree):
    root, clean, _ = tree
    cfg = compose_cfg(
        "train.yaml",
        [
            "dataset=gldv2",
            f"dataset.root={root}",
            "dataset.val_fraction=0.25",
            "dataset.num_workers=0",
            "dataset.image_size=32",
            "dataset.classes_per_batch=3",
            "dataset.images_per_class=2",
        ],
    )
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    train_classes = set(datamodule.train_gt.labels.tolist())
    assert not train_classes & set(datamodule.eval_gt.labels.tolist())
    assert len(datamodule.eval_gt) == 3 * 4 and isinstance(datamodule.train_gt.image_paths, ImagePaths)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (6, 3, 32, 32) and set(labels.tolist()) <= train_classes
