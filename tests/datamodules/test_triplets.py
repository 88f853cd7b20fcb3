"""Train/val splits (the split group) and per-epoch triplet draws."""

from __future__ import annotations

import math

import numpy as np

from retrieval.data.landmark_formats import load_classic_ground_truth
from retrieval.datamodules.triplets import draw_triplets, split_by_query, split_positives_per_query
from retrieval.mining.pools import random_negative_pools
from tests.helpers.vgg import write_vgg


def test_reference_split_partitions_each_query_80_20(tmp_path):
    gt = load_classic_ground_truth(write_vgg(tmp_path), "tiny")
    split = split_positives_per_query(gt, 0.2, seed=3)
    train, val = split.train_pairs, split.val_pairs
    assert split.evaluates_on_training_anchors
    for q, query in enumerate(gt.queries):
        t, v = train[train[:, 0] == q, 1], val[val[:, 0] == q, 1]
        assert sorted(np.concatenate([t, v]).tolist()) == query.labelled.tolist()
        assert len(v) == math.ceil(0.2 * len(query.labelled))
    again = split_positives_per_query(gt, 0.2, seed=3)
    assert np.array_equal(train, again.train_pairs) and np.array_equal(val, again.val_pairs)


def test_split_by_query_holds_out_last_queries(tmp_path):
    gt = load_classic_ground_truth(write_vgg(tmp_path), "tiny")
    split = split_by_query(gt, num_val_queries=2)
    train, val = split.train_pairs, split.val_pairs
    names = sorted(q.name for q in gt.queries)
    assert {gt.queries[q].name for q in val[:, 0]} == set(names[-2:])
    assert not set(train[:, 0]) & set(val[:, 0])


def test_negatives_come_from_the_pool_and_change_per_epoch(tmp_path):
    gt = load_classic_ground_truth(write_vgg(tmp_path), "tiny")
    pools = random_negative_pools(gt)
    for q, pool in enumerate(pools):
        assert not set(pool) & set(gt.queries[q].labelled)
        assert gt.index_of(gt.queries[q].name) not in pool
    train = split_positives_per_query(gt, 0.2, seed=0).train_pairs
    draws = [draw_triplets(train, pools, seed=1, epoch=e) for e in range(4)]
    assert np.array_equal(draws[0], draw_triplets(train, pools, seed=1, epoch=0))  # resumable
    assert any(not np.array_equal(draws[0][:, 2], d[:, 2]) for d in draws[1:])
    for triplets in draws:
        assert np.array_equal(triplets[:, :2], train)
        assert all(t[2] in pools[t[0]] for t in triplets)


def test_landmark_disjoint_split_never_trains_on_held_out_images(tmp_path):
    from retrieval.datamodules.triplets import split_by_landmark

    gt = load_classic_ground_truth(write_vgg(tmp_path), "tiny")
    split = split_by_landmark(gt, num_held_out=1)
    assert not split.evaluates_on_training_anchors
    assert {gt.queries[q].landmark for q in split.eval_queries} == {"tower"}
    held = set(split.held_out_images.tolist())
    assert held == {gt.index_of(f"tower_{i:06d}") for i in range(4)}
    assert not held & set(split.train_pairs.ravel().tolist())
    assert {gt.queries[q].landmark for q in split.train_pairs[:, 0]} == {"arch"}
    pools = [np.setdiff1d(p, split.held_out_images) for p in random_negative_pools(gt)]
    for epoch in range(3):  # negatives never come from held-out images either
        triplets = draw_triplets(split.train_pairs, pools, seed=0, epoch=epoch)
        assert not held & set(triplets.ravel().tolist())


def test_seeded_augmentations_do_not_depend_on_order_or_global_rng(tmp_path):
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from retrieval.datamodules.image_datasets import TripletDataset
    from retrieval.datamodules.transforms import train_transform

    paths = []
    for i in range(4):  # textured images, so that different crops give different pixels
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            paths[-1]
        )
    augment = [v2.RandomResizedCrop(32, scale=(0.3, 1.0)), v2.RandomHorizontalFlip()]
    triplets = np.array([[0, 1, 2], [1, 0, 3], [0, 2, 1]])

    def dataset(seed: int) -> TripletDataset:
        return TripletDataset(paths[:2], [None, None], paths, triplets, train_transform(32, augment), seed)

    forwards = [dataset(7)[i] for i in range(3)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    backwards = [dataset(7)[i] for i in reversed(range(3))][::-1]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    for a, b in zip(forwards, backwards):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(forwards[0][0], dataset(8)[0][0])  # the seed matters
