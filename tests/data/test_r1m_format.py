"""ROxford5k / RParis6k + revisitop's 1M distractors on generated trees in revisitop's layout
(filipradenovic/revisitop python/dataset.py: revisitop1m.txt, paths relative to jpg/)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from retrieval.data.image_paths import ChainedPaths
from retrieval.data.landmark_formats import load_revisited_ground_truth
from retrieval.data.r1m_format import load_revisited_with_distractors, read_distractors
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.utils.errors import DatasetError
from tests.helpers.configs import compose_cfg
from tests.helpers.large_sets import r1m_names, write_r1m

GND = [
    {"bbx": [1.0, 2.0, 20.0, 15.0], "easy": [0, 1], "hard": [2], "junk": [3]},
    {"bbx": [0.0, 0.0, 10.0, 10.0], "easy": [4], "hard": [5], "junk": [0]},
]


def write_roxford(root: Path) -> Path:
    imlist = [f"{lm}_{i:06d}" for lm in ("all_souls", "ashmolean") for i in range(1, 4)]
    qimlist = ["all_souls_000000", "ashmolean_000000"]
    (root / "jpg").mkdir(parents=True)
    for k, name in enumerate(imlist + qimlist):
        Image.new("RGB", (32, 24), color=(k * 30, 90, 160)).save(root / "jpg" / f"{name}.jpg")
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": GND}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("r1m")
    write_roxford(data / "roxford5k")
    write_r1m(data / "revisitop1m", r1m_names(30))
    return data


def test_distractors_are_appended_and_the_ground_truth_indices_are_unchanged(data):
    base = load_revisited_ground_truth(data / "roxford5k", "roxford5k")
    gt = load_revisited_with_distractors(data / "roxford5k", "roxford5k", data / "revisitop1m")
    names = r1m_names(30)
    assert gt.name == "roxford5k+r1m" and gt.protocol == "revisited"
    assert gt.image_names == base.image_names + names
    assert isinstance(gt.image_paths, ChainedPaths) and len(gt.image_paths) == 6 + 30
    assert list(gt.image_paths)[:6] == base.image_paths
    assert gt.image_paths[6 + 4] == data / "revisitop1m" / "jpg" / names[4]
    assert all(p.is_file() for p in gt.image_paths)
    for q, b in zip(gt.queries, base.queries):
        assert (q.name, q.bbox, q.path) == (b.name, b.bbox, b.path)
        for label in ("easy", "hard", "junk"):
            assert np.array_equal(getattr(q, label), getattr(b, label))
    assert gt.distractors is not None and gt.distractors.offset == 6 and len(gt.distractors) == 30
    assert gt.subset_queries([1]).distractors is gt.distractors
    again = load_revisited_with_distractors(data / "roxford5k", "roxford5k", data / "revisitop1m")
    assert again.distractors.fingerprint == gt.distractors.fingerprint


def test_distractors_are_evaluated_with_the_revisited_metrics_and_can_only_hurt(data):
    base = load_revisited_ground_truth(data / "roxford5k", "roxford5k")
    gt = load_revisited_with_distractors(data / "roxford5k", "roxford5k", data / "revisitop1m")
    rng = np.random.default_rng(0)
    queries = np.eye(8)[:2]
    own = rng.normal(size=(6, 8)) * 0.1
    for q, query in enumerate(base.queries):  # each query's positives lie nearest to it
        own[np.union1d(query.easy, query.hard)] += queries[q]
    near = np.repeat(queries, 15, axis=0) + rng.normal(size=(30, 8)) * 0.01  # closer still
    alone = evaluate_embeddings(queries, own, base).metrics
    hurt = evaluate_embeddings(queries, np.concatenate([own, near]), gt).metrics
    assert alone["M/mAP"] == pytest.approx(1.0) and hurt["M/mAP"] < 0.5
    far = evaluate_embeddings(queries, np.concatenate([own, -near]), gt).metrics
    assert far["M/mAP"] == pytest.approx(alone["M/mAP"]) and far["H/mAP"] == pytest.approx(alone["H/mAP"])


def test_only_the_archives_the_downloader_unpacked_are_used(tmp_path):
    names = r1m_names(12)
    root = write_r1m(tmp_path / "revisitop1m", names[:6], list_names=names)  # 6 listed, not on disk
    (root / "shards").mkdir()
    (root / "shards" / "revisitop1m.1.txt").write_text("".join(f"{n}\n" for n in names[:6]))
    distractors = read_distractors(root, offset=70)
    assert distractors.names == names[:6] and distractors.offset == 70
    # without the downloader's record, the sample finds the missing ones
    (root / "shards" / "revisitop1m.1.txt").unlink()
    (root / "shards").rmdir()
    with pytest.raises(
        DatasetError, match=r"sampled distractors .* missing.*retrieval-download dataset=roxford5k\+r1m"
    ):
        read_distractors(root, offset=70)


def test_names_without_an_extension_get_jpg_as_in_revisitops_matlab_reader(tmp_path):
    root = write_r1m(tmp_path / "revisitop1m", ["a/x", "a/y"])
    assert [p.name for p in read_distractors(root, 0).paths] == ["x.jpg", "y.jpg"]


def test_a_missing_image_list_names_the_file_and_the_download_command(data, tmp_path):
    with pytest.raises(DatasetError) as error:
        load_revisited_with_distractors(data / "roxford5k", "roxford5k", tmp_path / "revisitop1m")
    assert str(tmp_path / "revisitop1m" / "revisitop1m.txt") in str(error.value)
    assert "retrieval-download dataset=roxford5k+r1m" in str(error.value)


@pytest.mark.slow  # imports Lightning for the datamodule: ~5 s idle, 20+ s on a loaded machine
@pytest.mark.parametrize("name", ["roxford5k+r1m", "rparis6k+r1m"])
def test_dataset_config_with_a_plus_in_its_name_composes_and_reads(data, tmp_path, name):
    cfg = compose_cfg("evaluate.yaml", [f"dataset={name}", f"paths.data_dir={data}"])
    assert cfg.dataset.name == name and cfg.model.net.backbone.name == "resnet50"
    if name == "roxford5k+r1m":
        gt = instantiate(cfg.dataset.ground_truth)()
        assert len(gt.image_names) == 36 and gt.distractors.offset == 6
    missing = compose_cfg("evaluate.yaml", [f"dataset={name}", f"paths.data_dir={tmp_path}"])
    with pytest.raises(DatasetError) as error:  # through the datamodule, as a run reads it
        instantiate(missing.dataset).read_ground_truth()
    assert f"retrieval-download dataset={name} " in str(error.value)
