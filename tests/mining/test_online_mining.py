"""P×K sampling and in-batch mining: the sampler's batches, the configured pml miners against
brute-force selections on hand-made embeddings, the class module's loss, and the config
errors for miners that do not fit the dataset."""

from __future__ import annotations

import functools
import io
from itertools import product

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from retrieval.datamodules.negative_pools import EpochNegativePoolSource
from retrieval.datamodules.samplers import PKSampler
from retrieval.evaluation.class_metrics import recall_at_k
from retrieval.mining.in_batch import mine_triplets
from retrieval.mining.model_negatives import CurrentModelNegatives
from retrieval.mining.pools import random_negative_pools, ssim_negative_pools
from retrieval.models.losses import squared_euclidean
from retrieval.training.class_metric_module import ClassMetricModule
from tests.helpers.configs import compose_cfg

# class sizes 1 (never sampled: no positive), 2 and 3 (< K: with replacement), 6, 9
LABELS = np.repeat(np.arange(6), [1, 2, 3, 6, 9, 4])


# ---------------------------------------------------------------------------------- sampler
def test_pk_batches_hold_p_classes_times_k_images():
    sampler = PKSampler(LABELS, classes_per_batch=3, images_per_class=4, batches_per_epoch=50, seed=1)
    batches = sampler.batches()
    assert len(batches) == 50 and len(sampler) == 50 * 12 and sampler.batch_size == 12
    assert list(sampler) == np.concatenate(batches).tolist()
    for batch in batches:
        classes, counts = np.unique(LABELS[batch], return_counts=True)
        assert len(classes) == 3 and (counts == 4).all() and 0 not in classes
        for c in classes:
            taken = batch[LABELS[batch] == c]
            if (LABELS == c).sum() >= 4:  # without replacement where the class allows it
                assert len(set(taken.tolist())) == 4
    seen = np.unique(LABELS[np.concatenate(batches)])
    assert seen.tolist() == [1, 2, 3, 4, 5]  # every class with a positive, uniformly drawn


def test_pk_draw_is_a_function_of_seed_and_epoch():
    def draw(seed: int, epoch: int) -> list[int]:
        sampler = PKSampler(LABELS, 2, 2, 10, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 0) != draw(0, 1) and draw(0, 0) != draw(1, 0)


def test_pk_ranks_get_disjoint_whole_batches_of_one_draw():
    single = PKSampler(LABELS, 2, 3, batches_per_epoch=8, seed=5).batches()
    ranks = [
        PKSampler(LABELS, 2, 3, batches_per_epoch=8, seed=5, num_replicas=2, rank=r).batches() for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4  # the same number of steps on every rank
    interleaved = [b for pair in zip(*ranks) for b in pair]
    assert all(np.array_equal(a, b) for a, b in zip(interleaved, single))


def test_pk_sampler_is_left_alone_by_lightning_under_ddp():
    # Lightning injects a DistributedSampler only where the loader's sampler is not one
    from torch.utils.data import DistributedSampler

    assert isinstance(PKSampler(LABELS, 2, 2), DistributedSampler)


def test_pk_sampler_refuses_impossible_batches():
    with pytest.raises(ValueError, match="only 5 classes have 2 or more images"):
        PKSampler(LABELS, 6, 2)
    with pytest.raises(ValueError, match="K >= 2"):
        PKSampler(LABELS, 2, 1)


# ------------------------------------------------------------------------------------ miners
def configured(option: str):
    """The ``batch_miner`` group's object as the model receives it (a partial that builds
    the miner), and the config."""
    cfg = compose_cfg("train.yaml", ["dataset=folder", f"batch_miner={option}"])
    return instantiate(cfg.batch_miner), cfg


def configured_miner(option: str):
    factory, cfg = configured(option)
    return factory(), cfg


def hand_made_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors in 3-D, 4 classes × 3, clustered by class but overlapping, so easy and
    hard, semi-hard and violating triplets all occur; no two distances tie."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 3))
    x = np.repeat(centres, 3, axis=0) + 0.9 * rng.normal(size=(12, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.tensor(x, dtype=torch.float32), torch.arange(4).repeat_interleave(3)


def brute_force(x: torch.Tensor, labels: torch.Tensor, keep) -> set[tuple[int, int, int]]:
    d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()  # squared Euclidean, as the configs
    n, y = len(x), labels.numpy()
    triplets = [
        (a, p, q) for a, p, q in product(range(n), repeat=3) if a != p and y[a] == y[p] and y[q] != y[a]
    ]
    return {t for t in triplets if keep(d, y, *t)}


def as_set(indices) -> set[tuple[int, int, int]]:
    return set(zip(*(i.tolist() for i in indices)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_picks_the_farthest_positive_and_nearest_negative(seed):
    x, labels = hand_made_batch(seed)
    miner, _ = configured_miner("batch_hard")

    def hardest(d, y, a, p, n):
        same, other = (y == y[a]) & (np.arange(len(y)) != a), y != y[a]
        return d[a, p] == d[a][same].max() and d[a, n] == d[a][other].min()

    expected = brute_force(x, labels, hardest)
    assert len(expected) == 12  # one triplet per anchor
    assert as_set(mine_triplets(miner, x, labels)) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_picks_negatives_beyond_the_positive_within_the_margin(seed):
    x, labels = hand_made_batch(seed)
    miner, cfg = configured_miner("semi_hard")
    margin = cfg.model.loss.margin
    expected = brute_force(x, labels, lambda d, y, a, p, n: d[a, p] < d[a, n] <= d[a, p] + margin)
    everything = brute_force(x, labels, lambda *_: True)
    assert 0 < len(expected) < len(everything)  # the selection selects
    assert as_set(mine_triplets(miner, x, labels)) == expected


def test_all_means_every_triplet_of_the_batch():
    x, labels = hand_made_batch()
    miner, _ = configured_miner("all")
    assert miner is None
    assert as_set(mine_triplets(miner, x, labels)) == brute_force(x, labels, lambda *_: True)  # 12·2·9


def test_miners_that_do_not_fit_the_dataset_are_refused():
    """Each kind of set composes only its own group: class sets have no ``mining`` (negative
    pools) and landmark sets no ``batch_miner``, so Hydra refuses the other kind's options."""
    for option in ("ssim", "current_model", "random", "batch_hard"):
        with pytest.raises(ConfigCompositionException, match=r"Could not override 'mining'"):
            compose_cfg("train.yaml", ["dataset=folder", f"mining={option}"])
    with pytest.raises(
        MissingConfigException,
        match=r"(?s)Could not find 'mining/batch_hard'.*Available options in 'mining'"
        r".*current_model.*random.*ssim",
    ):
        compose_cfg("train.yaml", ["mining=batch_hard"])
    for option in ("all", "semi_hard"):
        with pytest.raises(ConfigCompositionException, match=r"Could not override 'batch_miner'"):
            compose_cfg("train.yaml", [f"batch_miner={option}"])
    # every triplet on a class set, the landmark sets' own random pools on a landmark set
    assert configured_miner("all")[0] is None
    assert instantiate(compose_cfg("train.yaml", []).mining).func is random_negative_pools


def test_negative_pool_sources_meet_the_datamodule_contract():
    """Per-epoch sources are told apart by their protocol, not by what they are."""
    assert isinstance(CurrentModelNegatives(), EpochNegativePoolSource)
    for static in (
        functools.partial(random_negative_pools),
        functools.partial(ssim_negative_pools, top_k=5),
        instantiate(compose_cfg("train.yaml", ["mining=ssim"]).mining),
    ):
        assert not isinstance(static, EpochNegativePoolSource)
    assert isinstance(
        instantiate(compose_cfg("train.yaml", ["mining=current_model"]).mining), EpochNegativePoolSource
    )


# ------------------------------------------------------------------------------ the module
def module(miner=None, dim: int = 3, **options) -> ClassMetricModule:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(dim, 3))
    loss = nn.TripletMarginWithDistanceLoss(distance_function=squared_euclidean, margin=2.0)
    return ClassMetricModule(net, loss, functools.partial(torch.optim.Adam, lr=0.05), miner=miner, **options)


def test_training_step_applies_the_loss_to_the_mined_triplets():
    x, labels = hand_made_batch()
    # options as Hydra passes them: nested config nodes arrive as DictConfig
    m = module(configured("batch_hard")[0], compile_options=OmegaConf.create({"mode": "default"}))
    m.log = lambda *args, **kwargs: None
    loss = m.training_step((x, labels), 0)
    embeddings = m(x)
    a, p, n = mine_triplets(m.miner, embeddings, labels)
    d_ap, d_an = (((embeddings[a] - embeddings[j]) ** 2).sum(1) for j in (p, n))
    assert torch.isclose(loss, torch.relu(d_ap - d_an + 2.0).mean())
    loss.backward()
    assert m.net[1].weight.grad.abs().sum() > 0
    # checkpoints keep plain hyper-parameters only: they load with weights_only=True
    assert "miner" not in m.hparams
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["state_dict"].keys() == m.state_dict().keys()


def test_nothing_mined_gives_a_zero_loss_that_backpropagates():
    x, labels = hand_made_batch()
    m = module(configured("semi_hard")[0])
    m.miner.margin = 0.0  # no negative fits in an empty margin band
    m.log = lambda *args, **kwargs: None
    loss = m.training_step((x, labels), 0)
    loss.backward()
    assert loss.item() == 0.0 and m.net[1].weight.grad is not None


@pytest.mark.parametrize("option", ["all", "batch_hard", "semi_hard"])
def test_a_few_mined_steps_improve_recall(option):
    """Classes live in 4 of 8 input dimensions and larger noise in the other 4, so a random
    linear embedding ranks mostly by noise: mined triplet steps must learn to ignore it."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)
    signal = rng.normal(size=(8, 4))[labels] + 0.3 * rng.normal(size=(48, 4))
    x = torch.tensor(np.hstack([signal, 2.0 * rng.normal(size=(48, 4))]), dtype=torch.float32)
    m = module(configured(option)[0], dim=8)
    m.log = lambda *args, **kwargs: None

    def recall() -> float:
        e = torch.nn.functional.normalize(m(x)).detach().numpy()
        return recall_at_k(e @ e.T, labels, ks=(1,))["R@1"]

    before, optimizer = recall(), m.configure_optimizers()
    for batch in PKSampler(labels, 4, 3, batches_per_epoch=60, seed=0).batches():
        optimizer.zero_grad()
        m.training_step((x[batch], torch.as_tensor(labels[batch])), 0).backward()
        optimizer.step()
    assert recall() > before + 0.2, (before, recall())
