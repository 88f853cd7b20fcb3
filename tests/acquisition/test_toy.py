"""The generated toy dataset: exact Oxford/revisited layout, labels, determinism, caching."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.acquisition import toy, toy_sources, toy_views
from tests.helpers.runs import run_script as run

SMALL = {"landmarks": 3, "views_per_landmark": 14, "distractors": 8}  # 50 images, ~2 s
GT_FILE = re.compile(r"^(?P<landmark>[a-z0-9_]+)_(?P<k>\d+)_(?P<kind>good|ok|junk|query)\.txt$")
QUERY_LINE = re.compile(r"^oxc1_(\S+) (\d+\.\d) (\d+\.\d) (\d+\.\d) (\d+\.\d)\n$")
IMAGE_NAME = re.compile(r"^(?:[a-z0-9_]+|distractor)_\d{6}$")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return toy.ensure_toy_dataset(tmp_path_factory.mktemp("small"), progress=False, **SMALL)


def _names(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _query(path: Path) -> tuple[str, list[float]]:
    m = QUERY_LINE.match(path.read_text())
    assert m, f"bad query line in {path.name}: {path.read_text()!r}"
    return m.group(1), [float(v) for v in m.groups()[1:]]


def test_layout_is_oxfords(small: Path):
    assert sorted(p.name for p in small.iterdir()) == ["gnd_toy.pkl", "gt_files", "jpg", "manifest.json"]
    images = {p.stem for p in (small / "jpg").iterdir()}
    assert all(p.suffix == ".jpg" for p in (small / "jpg").iterdir())
    assert all(IMAGE_NAME.match(n) for n in images)
    assert len(images) == 3 * 14 + 8
    landmarks = json.loads((small / "manifest.json").read_text())["landmarks"]
    assert landmarks == ["astronaut", "cameraman", "chelsea_cat"]
    files = {m.group(0): m for p in (small / "gt_files").iterdir() if (m := GT_FILE.match(p.name))}
    assert len(files) == len(list((small / "gt_files").iterdir()))  # every file matches
    expected = {
        f"{lm}_{k}_{kind}.txt"
        for lm in landmarks
        for k in range(1, 6)
        for kind in ("good", "ok", "junk", "query")
    }
    assert set(files) == expected  # 5 queries per landmark, 4 files each
    for lm in landmarks:
        for k in range(1, 6):
            stem = small / "gt_files" / f"{lm}_{k}"
            labelled = {kind: _names(Path(f"{stem}_{kind}.txt")) for kind in ("good", "ok", "junk")}
            every = [n for names in labelled.values() for n in names]
            assert set(every) <= images and len(every) == len(set(every)) == 14
            assert all(n.startswith(f"{lm}_") for n in every)  # distractors never labelled
            name, (x1, y1, x2, y2) = _query(Path(f"{stem}_query.txt"))
            assert name in images and name in labelled["good"]  # like Oxford
            width, height = Image.open(small / "jpg" / f"{name}.jpg").size
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert (x2 - x1) * (y2 - y1) > 0.2 * width * height  # a well-framed query


def test_images_are_small_jpegs(small: Path):
    for path in sorted((small / "jpg").iterdir())[::7]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size in {(320, 240), (240, 320)}


def test_pkl_matches_text_files(small: Path):
    with open(small / "gnd_toy.pkl", "rb") as f:
        gnd = pickle.load(f)
    assert gnd["imlist"] == sorted(p.stem for p in (small / "jpg").iterdir())
    landmarks = json.loads((small / "manifest.json").read_text())["landmarks"]
    stems = [small / "gt_files" / f"{lm}_{k}" for lm in landmarks for k in range(1, 6)]
    assert len(gnd["qimlist"]) == len(gnd["gnd"]) == len(stems) == 15
    index = {n: i for i, n in enumerate(gnd["imlist"])}
    for stem, qname, entry in zip(stems, gnd["qimlist"], gnd["gnd"]):
        name, bbox = _query(Path(f"{stem}_query.txt"))
        assert qname == name and entry["bbx"] == bbox
        for key, kind in (("easy", "good"), ("hard", "ok"), ("junk", "junk")):
            expected = sorted(index[n] for n in _names(Path(f"{stem}_{kind}.txt")))
            assert np.asarray(entry[key]).dtype.kind == "i"
            assert list(entry[key]) == expected


def test_the_real_readers_load_it_identically_from_text_files_and_pkl(small: Path):
    classic = toy.load_toy_ground_truth(small.parent, progress=False, **SMALL)
    revisited = toy.load_toy_ground_truth(small.parent, protocol="revisited", progress=False, **SMALL)
    assert classic.image_names == revisited.image_names and len(classic.queries) == 15
    by_name = {q.name: q for q in revisited.queries}
    for q in classic.queries:  # 5 queries per landmark, each its own image: names are unique
        r = by_name[q.name]
        assert q.landmark == r.landmark and q.bbox == r.bbox
        for mine, theirs in ((q.good, r.easy), (q.ok, r.hard), (q.junk, r.junk)):
            assert np.array_equal(mine, theirs)


def test_labels_follow_visibility():
    canvas = (320, 240)
    clear = np.zeros(canvas[::-1], np.uint8)
    whole = np.diag([1.0, 1.0, 1.0])  # a 320x240 landmark filling the frame exactly
    assert toy_views.visibility(whole, canvas, canvas, clear) == pytest.approx((1.0, 1.0))
    half_out = np.array([[1.0, 0, 160], [0, 1, 0], [0, 0, 1]])  # right half leaves the frame
    assert toy_views.visibility(half_out, canvas, canvas, clear)[0] == pytest.approx(0.5)
    occluded = clear.copy()
    occluded[:, :240] = 255  # three quarters hidden
    vis, area = toy_views.visibility(whole, canvas, canvas, occluded)
    assert vis == pytest.approx(0.25) and area == pytest.approx(0.25)
    label = toy_views.label
    assert label(toy_views.View(0.9, 0.5, (0, 0, 1, 1))) == "good"
    assert label(toy_views.View(0.4, 0.3, (0, 0, 1, 1))) == "ok"
    assert label(toy_views.View(0.2, 0.2, (0, 0, 1, 1))) == "junk"
    assert label(toy_views.View(0.9, 0.01, (0, 0, 1, 1))) == "junk"  # too small to recognise


def test_same_seed_same_bytes_whatever_the_workers(small: Path, tmp_path: Path):
    again = toy.ensure_toy_dataset(tmp_path / "a", workers=2, progress=False, **SMALL)
    assert _hashes(again) == _hashes(small)  # small was made with the default worker count
    serial = toy.ensure_toy_dataset(tmp_path / "b", workers=1, progress=False, **SMALL)
    assert _hashes(serial) == _hashes(small)
    other = toy.ensure_toy_dataset(tmp_path / "c", seed=1, progress=False, **SMALL)
    assert _hashes(other)["jpg/astronaut_000007.jpg"] != _hashes(small)["jpg/astronaut_000007.jpg"]


def test_second_call_reuses_the_dataset(small: Path, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(toy, "generate_toy_dataset", fail)
    assert toy.ensure_toy_dataset(small.parent, progress=False, **SMALL) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*")} == before


def test_partial_or_outdated_dataset_is_regenerated(tmp_path: Path):
    params = {"landmarks": 2, "views_per_landmark": 6, "distractors": 3}
    partial = tmp_path / "toy"
    (partial / "jpg").mkdir(parents=True)
    (partial / "jpg" / "astronaut_000000.jpg").write_bytes(b"truncated")  # no manifest
    path = toy.ensure_toy_dataset(tmp_path, progress=False, **params)
    assert path == partial and len(list((path / "jpg").iterdir())) == 15
    Image.open(path / "jpg" / "astronaut_000000.jpg").verify()
    path = toy.ensure_toy_dataset(tmp_path, progress=False, **(params | {"distractors": 4}))
    assert json.loads((path / "manifest.json").read_text())["stats"]["images"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporaries left


def test_crash_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "_write_ground_truth", crash)
    with pytest.raises(KeyboardInterrupt):
        toy.ensure_toy_dataset(tmp_path, progress=False, landmarks=1, views_per_landmark=5, distractors=0)
    assert list(tmp_path.iterdir()) == []


def test_missing_bundled_photos_are_skipped_for_procedural_scenes(tmp_path: Path, monkeypatch):
    # An install without some sample files (skimage would try to download them): they are
    # skipped, never fetched, and procedural scenes make up the count.
    data = tmp_path / "skimage_data"
    data.mkdir()
    (data / "astronaut.png").write_bytes((toy_sources.PKG_DATA / "astronaut.png").read_bytes())
    monkeypatch.setattr(toy_sources, "PKG_DATA", data)
    toy_sources.library.cache_clear()
    try:
        path = toy.ensure_toy_dataset(
            tmp_path / "out", progress=False, landmarks=3, views_per_landmark=5, distractors=4
        )
    finally:
        toy_sources.library.cache_clear()
    landmarks = json.loads((path / "manifest.json").read_text())["landmarks"]
    assert landmarks == ["astronaut", "scene_02", "scene_03"]
    assert (path / "gt_files" / "scene_03_5_query.txt").is_file()


def test_the_download_command_generates_it_with_toy_parameters_as_overrides(tmp_path: Path):
    result = run(
        "-m",
        "retrieval.pipelines.download",
        "dataset=toy",
        f"paths.data_dir={tmp_path}",
        "dataset.ground_truth.seed=3",
        "+dataset.ground_truth.landmarks=1",
        "+dataset.ground_truth.views_per_landmark=6",
        "+dataset.ground_truth.distractors=2",
        cwd=tmp_path,
    )
    assert f"toy: ready in {tmp_path / 'toy'}" in result.stdout
    assert len(list((tmp_path / "toy" / "jpg").iterdir())) == 8
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["params"]["views_per_landmark"] == 6


@pytest.mark.slow
def test_default_dataset(tmp_path: Path):
    """The set ``python train.py`` uses: Oxford-sized ground truth (55 queries), 640 images."""
    path = toy.ensure_toy_dataset(tmp_path, progress=False)
    stats = json.loads((path / "manifest.json").read_text())["stats"]
    assert stats["images"] == 640 and stats["queries"] == 55
    with open(path / "gnd_toy.pkl", "rb") as f:
        gnd = pickle.load(f)
    assert len(gnd["imlist"]) == 640 and len(gnd["qimlist"]) == 55
    easy, hard, junk = (np.array([len(q[k]) for q in gnd["gnd"]]) for k in ("easy", "hard", "junk"))
    # database views are mostly small and whole (good), partly cropped or occluded ones rarer
    assert easy.min() >= 15 and hard.sum() > 0 and junk.sum() > 0  # every label occurs
    assert easy.mean() > hard.mean()
