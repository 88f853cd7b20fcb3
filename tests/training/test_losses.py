"""The loss group: each option composes into the module, each kind of loss gets the inputs it
needs (landmark tuples, class labels), a classification loss's class weights are sized from
the data, trained by the optimizer with their own lr, saved in checkpoints and restored on
resume; pair losses gather across processes under DDP (pml's DistributedLossWrapper)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from pytorch_metric_learning.losses import (
    ArcFaceLoss,
    MultiSimilarityLoss,
    SubCenterArcFaceLoss,
)
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

from retrieval.models.checkpoints import CheckpointError, load_weights
from retrieval.pipelines.build import build_datamodule, build_model
from retrieval.training.class_metric_module import ClassMetricModule
from retrieval.training.losses import ClassificationLoss, PairLoss, compute_loss
from retrieval.utils.errors import UserFacingError
from tests.helpers.configs import compose_cfg
from tests.helpers.trainers import quiet_trainer

LOSSES = ["triplet", "contrastive", "multi_similarity", "arcface", "cosface", "subcenter_arcface"]
KINDS = {
    "triplet": torch.nn.TripletMarginWithDistanceLoss,
    "contrastive": PairLoss,
    "multi_similarity": PairLoss,
    "arcface": ClassificationLoss,
    "cosface": ClassificationLoss,
    "subcenter_arcface": ClassificationLoss,
}


def _unit(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dataset", ["toy", "toy_classes"])
def test_every_loss_composes_for_both_kinds_of_set(loss, dataset):
    overrides = [f"dataset={dataset}", f"loss={loss}"]
    if dataset == "toy" and KINDS[loss] is ClassificationLoss:
        overrides.append("model=landmark_classes")  # a landmark set as classes: its landmarks
    cfg = compose_cfg("train.yaml", overrides)
    assert isinstance(instantiate(cfg.model.loss), KINDS[loss])
    # evaluation rebuilds the same module (a checkpoint's loss keys must fit)
    assert compose_cfg("evaluate.yaml", overrides).model.loss == cfg.model.loss


def test_landmark_tuples_give_cirtorch_pairs():
    """(q, p, n) rows: the pairs (q, p) pulled to 0, (q, n) pushed beyond the margin; with
    the configured mean reduction, each hinge is averaged over all its pairs, then added."""
    q, p, n = _unit(4, seed=1), _unit(4, seed=2), _unit(4, seed=3)
    embeddings = torch.cat([q, p, n])
    rows = torch.arange(4)
    margin = 1.3
    cfg = compose_cfg("train.yaml", ["loss=contrastive", f"model.loss.criterion.neg_margin={margin}"])
    loss = instantiate(cfg.model.loss)
    got = compute_loss(loss, embeddings, None, (rows, rows + 4, rows + 8))
    positive = (q - p).norm(dim=1)
    negative = (margin - (q - n).norm(dim=1)).clamp(min=0)
    expected = positive.mean() + negative.mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert negative.gt(0).any() and negative.eq(0).any()  # both sides of the hinge exercised
    # the reference triplet loss on the same rows: the rows as (anchor, positive, negative)
    triplet = torch.nn.TripletMarginWithDistanceLoss(margin=2.0)
    assert compute_loss(triplet, embeddings, None, (rows, rows + 4, rows + 8)).item() == pytest.approx(
        triplet(q, p, n).item()
    )


def test_classification_loss_needs_labels_and_says_what_to_use():
    loss = ClassificationLoss(lambda **kw: ArcFaceLoss(**kw), num_classes=3, embedding_size=8)
    with pytest.raises(UserFacingError, match="model=landmark_classes"):
        compute_loss(loss, _unit(6), None, (torch.arange(2),) * 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert compute_loss(loss, _unit(6), labels).item() == pytest.approx(
        loss.criterion(_unit(6), labels).item()
    )


@pytest.mark.parametrize(("criterion", "columns"), [(ArcFaceLoss, 5), (SubCenterArcFaceLoss, 15)])
def test_class_weights_are_sized_from_a_checkpoint(criterion, columns):
    """A fresh (unsized) loss takes W's shape from the state dict it loads: 5 classes,
    3 sub-centres each for the sub-centre loss."""
    import functools

    factory = functools.partial(criterion, **({"sub_centers": 3} if columns == 15 else {}))
    trained = ClassificationLoss(factory, num_classes=5, embedding_size=8)
    assert trained.criterion.W.shape == (8, columns)
    fresh = ClassificationLoss(factory)
    assert not fresh.built and "criterion.W" in fresh.state_dict()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.built and torch.equal(fresh.criterion.W, trained.criterion.W)
    assert fresh.criterion.num_classes == trained.criterion.num_classes


def test_pair_losses_gather_under_ddp_and_run_plainly_outside():
    criterion = MultiSimilarityLoss()
    loss = PairLoss(criterion, distributed=True)
    assert isinstance(loss.gather, DistributedLossWrapper) and loss.gather.loss is criterion
    assert PairLoss(criterion, distributed=False).gather is None
    assert list(loss.state_dict()) == []  # parameter-free: no checkpoint keys, gathered or not
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outside DDP the wrapper is not called (it would warn)
        assert loss(_unit(6), labels).item() == pytest.approx(criterion(_unit(6), labels).item())
    cfg = compose_cfg("train.yaml", ["loss=contrastive", "model.loss.distributed=false"])
    assert instantiate(cfg.model.loss).gather is None


# ------------------------------------------------------------- checkpoint and resume
def _class_run(data_dir, *overrides: str, loss: str = "arcface"):
    cfg = compose_cfg(
        "train.yaml",
        [
            "dataset=toy_classes",
            f"paths.data_dir={data_dir}",
            "dataset.num_workers=0",
            "dataset.image_size=32",
            "dataset.classes_per_batch=4",
            "dataset.images_per_class=2",
            "model.net.backbone.name=resnet18",
            "model.net.backbone.weights=none",
            f"loss={loss}",
            *(["model.loss.lr=0.05"] if loss == "arcface" else []),
            "head=linear",
            "model.net.projection.out_features=16",
            *overrides,
        ],
    )
    return cfg, build_datamodule(cfg), build_model(cfg)


def _trainer(tmp_path, steps: int) -> L.Trainer:
    return quiet_trainer(steps, limit_val_batches=0, default_root_dir=tmp_path)


@pytest.mark.slow  # two short Trainer runs
def test_class_weights_train_with_their_lr_and_survive_checkpoint_and_resume(tmp_path):
    L.seed_everything(0)
    cfg, datamodule, model = _class_run(tmp_path / "data")
    assert isinstance(model, ClassMetricModule)
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(model, datamodule=datamodule)
    W = model.loss.criterion.W
    assert W.shape == (16, 10)  # head=linear's 16-d x the set's 10 classes
    optimizer = trainer.optimizers[0]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["loss"]["lr"] == pytest.approx(0.05) and groups["net"]["lr"] == pytest.approx(3e-4)
    assert any(p is W for p in groups["loss"]["params"])
    assert "exp_avg" in optimizer.state[W]  # Adam stepped the class weights
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(saved["state_dict"]["loss.criterion.W"], W.detach())
    assert [g["name"] for g in saved["optimizer_states"][0]["param_groups"]] == ["net", "loss"]

    # a fresh model (loss unsized, head lazy) takes the checkpoint's weights, W included
    _, _, fresh = _class_run(tmp_path / "data")
    load_weights(fresh, tmp_path / "last.ckpt")
    assert torch.equal(fresh.loss.criterion.W, W.detach())

    # what embeds images (evaluate, database, export) loads the network alone: a model
    # composed with another loss takes the ArcFace checkpoint and embeds as the trained one
    _, _, other_loss = _class_run(tmp_path / "data", loss="triplet")
    with pytest.raises(CheckpointError, match="unexpected: loss.criterion.W"):
        load_weights(other_loss, tmp_path / "last.ckpt")
    load_weights(other_loss, tmp_path / "last.ckpt", network_only=True)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(other_loss.eval()(images), model.eval()(images))

    # resume: the optimizer's loss group and its Adam state come back with the weights
    _, datamodule, resumed = _class_run(tmp_path / "data")
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "last.ckpt")
    assert trainer.global_step == 3  # restored, nothing left to train
    restored = trainer.optimizers[0]
    assert [g["name"] for g in restored.param_groups] == ["net", "loss"]
    W2 = resumed.loss.criterion.W
    assert torch.equal(W2, W.detach())
    assert torch.equal(restored.state[W2]["exp_avg"], optimizer.state[W]["exp_avg"])
