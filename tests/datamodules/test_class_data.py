"""Class-labelled collections: the generated set, the folder and CSV readers, every bad
input they must name, the datamodule's splits and loaders, and train.py end to end."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from retrieval.acquisition.toy_classes import write_toy_classes
from retrieval.data.class_formats import read_class_csv, read_class_folders
from retrieval.datamodules.class_datamodule import ClassDataModule, split_items
from retrieval.training.class_metric_module import ClassMetricModule
from retrieval.utils.errors import DatasetError
from tests.helpers.configs import compose_cfg
from tests.helpers.runs import run_ok
from tests.helpers.runs import run_script as run

N_CLASSES, PER_CLASS = 6, 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_classes(tmp_path_factory.mktemp("toy_classes"), N_CLASSES, PER_CLASS, size=32)


def tiny_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color=(value, 0, 0)).save(path)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------ generated set + readers
def test_generator_is_deterministic_real_images(toy, tmp_path):
    again = write_toy_classes(tmp_path, N_CLASSES, PER_CLASS, size=32)
    files = sorted(p.relative_to(toy) for p in toy.rglob("*.png"))
    assert len(files) == N_CLASSES * PER_CLASS

    def digest(root: Path) -> str:
        return hashlib.sha256(b"".join((root / f).read_bytes() for f in files)).hexdigest()

    assert digest(toy) == digest(again)
    pixels = np.asarray(Image.open(toy / files[0]))
    assert pixels.shape == (32, 32, 3) and pixels.std() > 10  # a picture, not a flat colour


def test_folder_reader(toy):
    gt = read_class_folders(toy)
    assert gt.class_names == sorted(p.name for p in toy.iterdir() if p.is_dir())
    assert len(gt) == N_CLASSES * PER_CLASS and gt.split is None
    assert np.array_equal(gt.class_sizes(), [PER_CLASS] * N_CLASSES)
    i = 9
    assert gt.image_names[i] == gt.image_paths[i].relative_to(toy).as_posix()
    assert gt.class_names[gt.labels[i]] == gt.image_paths[i].parent.name
    assert gt.queries[i].landmark == gt.class_names[gt.labels[i]]  # reads like a landmark query


def test_folder_reader_nested_hidden_and_stray_files(tmp_path, caplog):
    for name in ("a/x.png", "a/deeper/y.jpg", "b/1.png", "b/2.png"):
        tiny_image(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    tiny_image(tmp_path / "stray.png")
    gt = read_class_folders(tmp_path)
    assert gt.image_names == ["a/deeper/y.jpg", "a/x.png", "b/1.png", "b/2.png"]
    assert "1 images lie directly in" in caplog.text


def test_csv_reader_with_split_column(toy):
    gt = read_class_csv(toy / "labels.csv")
    assert len(gt) == N_CLASSES * PER_CLASS
    assert gt.split.count("val") == N_CLASSES * 2 and set(gt.split) == {"train", "val"}
    assert all(p.is_file() for p in gt.image_paths)
    assert gt.sources[0] == f"{toy / 'labels.csv'}:2"


def test_csv_reader_image_root_extra_columns_bom_and_case(tmp_path):
    for name in ("imgs/a1.png", "imgs/a2.png", "imgs/b1.png", "imgs/b2.png"):
        tiny_image(tmp_path / name)
    csv = tmp_path / "meta" / "list.csv"
    csv.parent.mkdir()
    csv.write_text("\ufeffLabel,Path,source\nb,b1.png,x\nb,b2.png,x\n\na,a1.png,y\na,a2.png,y\n")
    gt = read_class_csv(csv, image_root=tmp_path / "imgs")
    assert gt.class_names == ["a", "b"] and gt.labels.tolist() == [1, 1, 0, 0]
    assert gt.split is None and gt.image_paths[0] == tmp_path / "imgs" / "b1.png"


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def csv_dir(tmp_path) -> Path:
    for name in ("a1.png", "a2.png", "b1.png", "b2.png"):
        tiny_image(tmp_path / name)
    return tmp_path


GOOD_ROWS = "a1.png,a,train\na2.png,a,train\nb1.png,b,val\nb2.png,b,val\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "path,split\n" + GOOD_ROWS,
            r"list.csv:1: the header .* lacks the column\(s\) label. The first line must name",
        ),
        ("", r"list.csv is empty: its first line must name the columns"),
        (
            "path,label,split\na1.png,a,train\nmissing.png,a,train\nb1.png,b,val\nb2.png,b,val\n",
            r"list.csv:3: image .*missing.png does not exist.*dataset.image_root=DIR",
        ),
        (
            "path,label,split\na1.png,,train\na2.png,a,train\nb1.png,b,val\nb2.png,b,val\n",
            r"list.csv:2: empty label",
        ),
        ("path,label,split\na1.png,a\n" + GOOD_ROWS, r"list.csv:2: 2 fields where the header has 3"),
        (
            "path,label,split\na1.png,a,training\na2.png,a,train\nb1.png,b,val\nb2.png,b,val\n",
            r"list.csv:2: split 'training' is not one of train, val, test",
        ),
        (
            "path,label\na1.png,a\na1.png,a\nb1.png,b\nb2.png,b\n",
            r"list.csv:3: a1.png is listed again \(first on line 2\)",
        ),
        (
            "path,label\na1.png,a\nb1.png,b\nb2.png,b\n",
            r"at least 2 images .*label 'a' has 1 image \(.*list.csv:2\).*Add rows for these labels",
        ),
        ("path,label\na1.png,a\na2.png,a\n", r"has 1 class \(a\): retrieval by class needs at least 2"),
    ],
)
def test_bad_csv_names_file_line_and_fix(csv_dir, text, expected):
    with pytest.raises(DatasetError, match=expected):
        read_class_csv(write_csv(csv_dir / "list.csv", text))


@pytest.mark.parametrize("data", [b"PK\x03\x04\x14\x00\x06\x00\xff\xfe", "path,label\n".encode("utf-16")])
def test_a_binary_file_given_as_csv_is_named_not_a_traceback(csv_dir, data):
    # an .xlsx (a zip), a spreadsheet's "Unicode text" (UTF-16), any binary file
    (csv_dir / "list.csv").write_bytes(data)
    with pytest.raises(DatasetError, match=r"list.csv is not a UTF-8 text CSV .*save it as CSV"):
        read_class_csv(csv_dir / "list.csv")


def test_bad_csv_lists_every_problem_at_once(csv_dir):
    text = "path,label\nnope1.png,a\nnope2.png,a\nb1.png,\nb2.png,b\n"
    message = str(pytest.raises(DatasetError, read_class_csv, write_csv(csv_dir / "list.csv", text)).value)
    assert message.startswith("3 bad row(s)") and all(f"list.csv:{n}" in message for n in (2, 3, 4))


def test_missing_csv_and_unset_paths(tmp_path):
    with pytest.raises(DatasetError, match=r"nothing.csv does not exist \(dataset.csv=FILE\)"):
        read_class_csv(tmp_path / "nothing.csv")
    with pytest.raises(DatasetError, match=r"dataset=csv needs dataset.csv=FILE.*dataset=toy_classes"):
        read_class_csv(None)
    with pytest.raises(DatasetError, match=r"dataset=folder needs dataset.root=DIR.*dataset=toy_classes"):
        read_class_folders(None)


def test_bad_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"class folder root .*nowhere does not exist"):
        read_class_folders(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"has no class sub-folders: put each class's images in"):
        read_class_folders(tmp_path / "empty")
    for name in ("a/1.png", "a/2.png", "b/1.png", "c/1.png"):
        tiny_image(tmp_path / "set" / name)
    (tmp_path / "set" / "d").mkdir()
    message = str(pytest.raises(DatasetError, read_class_folders, tmp_path / "set").value)
    assert re.search(
        r"at least 2 images .*set/b has 1; .*set/c has 1; .*set/d has 0\. "
        r"Add images to these folders or remove them",
        message,
    ), message


# ------------------------------------------------------------------------------ datamodule
def datamodule(items, **kwargs) -> ClassDataModule:
    kwargs = {"image_size": 32, "classes_per_batch": 3, "images_per_class": 2, "num_workers": 0, **kwargs}
    dm = ClassDataModule(lambda: items, "test", **kwargs)
    dm.setup()
    return dm


def test_split_by_image_keeps_classes_and_two_training_images(toy):
    gt = read_class_folders(toy)
    train, val = split_items(gt, 0.25, "image", seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(gt)))
    assert np.array_equal(np.bincount(gt.labels[val]), [2] * N_CLASSES)  # 25 % of 8
    assert np.array_equal(train, split_items(gt, 0.25, "image", seed=3)[0])  # seeded
    assert not np.array_equal(train, split_items(gt, 0.25, "image", seed=4)[0])
    small = gt.subset(np.flatnonzero(np.isin(np.arange(len(gt)), [0, 1, 2, 8, 9, 10, 11, 12])))
    train, _ = split_items(small, 0.9, "image", seed=0)
    assert (np.bincount(small.labels[train]) >= 2).all()


def test_split_by_class_holds_out_whole_classes(toy):
    gt = read_class_folders(toy)
    train, val = split_items(gt, 0.34, "class", seed=0)
    assert len(set(gt.labels[val])) == 2 and not set(gt.labels[train]) & set(gt.labels[val])
    with pytest.raises(DatasetError, match=r"split_by='folders': use one of image, class"):
        split_items(gt, 0.2, "folders", seed=0)


def test_split_column_and_eval_split(toy):
    gt = read_class_csv(toy / "labels.csv")
    dm = datamodule(gt)
    assert len(dm.train_gt) == N_CLASSES * 6 and len(dm.eval_gt) == N_CLASSES * 2
    assert set(dm.train_gt.split) == {"train"} and not dm.evaluates_on_training_anchors
    with pytest.raises(
        DatasetError, match=r"no rows have split 'test' .*dataset.eval_split=val\|test\|train"
    ):
        datamodule(gt, eval_split="test")
    on_train = datamodule(gt, eval_split="train")
    assert on_train.evaluates_on_training_anchors and len(on_train.eval_gt) == N_CLASSES * 6


def test_loaders_yield_pk_batches_and_the_gallery(toy):
    dm = datamodule(read_class_folders(toy), val_fraction=0.25, seed=1)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 3, 32, 32)
    assert sorted(np.bincount(labels.numpy()).tolist())[-3:] == [2, 2, 2]  # P=3 classes × K=2
    (gallery,) = dm.val_dataloader()
    images, indices = next(iter(gallery))
    assert len(gallery.dataset) == len(dm.eval_gt) == 12 and indices.tolist()[:3] == [0, 1, 2]
    assert not dm.evaluates_on_training_anchors


def test_val_fraction_zero_evaluates_on_training_images_and_says_so(toy):
    dm = datamodule(read_class_folders(toy), val_fraction=0.0)
    assert len(dm.eval_gt) == len(dm.train_gt) == N_CLASSES * PER_CLASS
    assert dm.evaluates_on_training_anchors


def test_no_evaluation_positives_is_an_error(tmp_path):
    for name in ("a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png", "b/3.png"):
        tiny_image(tmp_path / name)
    with pytest.raises(DatasetError, match=r"no class has 2 images among the 2 evaluation images"):
        datamodule(read_class_folders(tmp_path), val_fraction=0.34)


@pytest.mark.parametrize(
    "dataset,batch_miner,miner",
    [
        ("folder", "all", "NoneType"),
        ("csv", "batch_hard", "BatchHardMiner"),
        ("folder", "semi_hard", "TripletMarginMiner"),
    ],
)
def test_configs_build_the_class_module_and_datamodule(toy, dataset, batch_miner, miner):
    source = f"dataset.root={toy}" if dataset == "folder" else f"dataset.csv={toy / 'labels.csv'}"
    cfg = compose_cfg("train.yaml", [f"dataset={dataset}", source, f"batch_miner={batch_miner}"])
    dm, model = instantiate(cfg.dataset), instantiate(cfg.model)
    dm.setup()
    assert isinstance(dm, ClassDataModule) and len(dm.eval_gt) == N_CLASSES * 2
    assert isinstance(model, ClassMetricModule) and cfg.model.net.backbone.name == "tf_efficientnet_lite0"
    assert type(model.miner).__name__ == miner
    if batch_miner == "semi_hard":
        assert model.miner.margin == cfg.model.loss.margin


# ------------------------------------------------------------------------------ end to end
def class_run(root: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.image_size=32",
        "dataset.num_workers=0",
        f"paths.log_dir={tmp / 'logs'}",
        "logger=csv",
        *extra,
    ]


def test_fast_dev_run_on_a_class_folder(toy, tmp_path):
    result = run_ok("train.py", *class_run(toy, tmp_path), "debug=fast", cwd=tmp_path)
    assert "fast_dev_run" in result.stdout + result.stderr


def test_class_set_with_landmark_miner_is_refused(toy, tmp_path):
    """Class sets compose no ``mining`` group (they mine inside their batches: batch_miner=...),
    so Hydra itself refuses the option, before anything is built (its exit code: 1)."""
    result = run("train.py", *class_run(toy, tmp_path), "mining=ssim", "debug=fast", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Could not override 'mining'. No match in the defaults list." in result.stderr


@pytest.mark.slow
def test_short_training_run_reports_recall_at_1(toy, tmp_path):
    """24 batch-hard steps at 32 px. Evaluated on the training images themselves
    (val_fraction=0, flagged as optimistic): there a few steps clearly lift the ranking,
    while held-out numbers on so small a set would need a longer run to be reliable."""
    result = run_ok(
        "train.py",
        *class_run(toy, tmp_path),
        "batch_miner=batch_hard",
        "trainer.max_epochs=3",
        "dataset.batches_per_epoch=8",
        "dataset.val_fraction=0",
        "model.optimizer.lr=1e-3",
        cwd=tmp_path,
    )
    assert re.search(r"R@1 untrained \(ImageNet\) \d\.\d{4} -> trained \d\.\d{4}", result.stdout), (
        result.stdout[-2000:]
    )
    assert "numbers are optimistic" in result.stdout
    run_dir = next((tmp_path / "logs" / "train" / "runs").iterdir())
    results = json.loads((run_dir / "metrics.json").read_text())["results"]
    assert {"mAP", "R@1", "P@5", "mAP@10"} <= results["trained"].keys()
    assert results["trained"]["mAP"] > results["untrained"]["mAP"] + 0.2, results
    assert results["trained"]["R@1"] > results["untrained"]["R@1"], results
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/mAP", "val/R@1", "val/P@5", "train/triplets"} <= set(header)


@pytest.mark.slow
def test_ddp_gathers_the_gallery_and_trains_on_per_rank_pk_batches(tmp_path):
    """Two CPU processes: the 15-image gallery is split 8 + 8 (one padded duplicate), gathered
    and de-duplicated, so the untrained metrics equal a single process's; each rank trains on
    its own P×K batches."""
    root = write_toy_classes(tmp_path / "data", n_classes=5, per_class=7, size=32)
    common = [
        *class_run(root, tmp_path),
        "dataset.val_fraction=0.45",
        "dataset.classes_per_batch=2",
        "dataset.images_per_class=2",
        "dataset.batches_per_epoch=4",
        "trainer.max_epochs=1",
    ]
    single = run(
        "train.py",
        *common,
        "train=false",
        "evaluate_after=false",
        f"paths.log_dir={tmp_path / 'single'}",
        cwd=tmp_path,
    )
    ddp = run(
        "train.py",
        *common,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",
        f"paths.log_dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
    )
    for result in (single, ddp):
        assert result.returncode == 0, result.stderr[-3000:]
    assert "15 evaluation images" in single.stderr + single.stdout

    def results(log_dir: str) -> dict:
        run_dir = next((tmp_path / log_dir / "train" / "runs").iterdir())
        return json.loads((run_dir / "metrics.json").read_text())["results"]

    assert results("ddp")["untrained"] == pytest.approx(results("single")["untrained"], abs=1e-6)
    assert "R@1" in results("ddp")["trained"]
