"""Pair losses under DDP (2 gloo processes on the CPU): the gradient DDP averages over the
processes equals the single-process gradient of the whole batch, for both ways a pair loss
gets its pairs: from labels (every pair across processes: pml's DistributedLossWrapper
gathers the embeddings) and from explicit tuples (landmark triplets: computed locally).

The network is one shared linear layer, the parameter DDP would synchronise; each process
embeds its half of the batch and the test averages the layer's gradient as DDP does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from pytorch_metric_learning.losses import ContrastiveLoss, MultiSimilarityLoss
from pytorch_metric_learning.reducers import MeanReducer

from retrieval.training.losses import PairLoss

WORLD = 2
ROWS = 6  # per process


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * ROWS, 10, generator=g)
    labels = torch.arange(WORLD * ROWS) % 3  # every class on both processes
    weight = torch.randn(10, 8, generator=g)
    return images, labels, weight


def _criteria() -> dict[str, PairLoss]:
    # a mean over all terms: the per-process means average to the whole batch's mean
    return {
        "contrastive": PairLoss(ContrastiveLoss(pos_margin=0.0, neg_margin=0.7, reducer=MeanReducer())),
        "multi_similarity": PairLoss(MultiSimilarityLoss()),
    }


def _local_tuples(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_i, p_i, n_i) over ``rows`` = 3 * T embeddings, as the triplet module lays them out."""
    t = torch.arange(rows // 3)
    return t, t + rows // 3, t + 2 * (rows // 3)


def _gradient(loss: PairLoss, images, labels, weight, tuples) -> torch.Tensor:
    w = weight.clone().requires_grad_(True)
    value = loss(F.normalize(images @ w, dim=1), labels if tuples is None else None, tuples)
    value.backward()
    return w.grad


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, labels, weight = _data()
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        results = {}
        for name, loss in _criteria().items():
            for mode, tuples in (("labels", None), ("tuples", _local_tuples(ROWS))):
                grad = _gradient(loss, images[mine], labels[mine], weight, tuples)
                dist.all_reduce(grad)  # DDP: the mean of the processes' gradients
                results[f"{name}/{mode}"] = grad / WORLD
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _single_process(name: str, mode: str) -> torch.Tensor:
    images, labels, weight = _data()
    loss = _criteria()[name]
    if mode == "labels":
        return _gradient(loss, images, labels, weight, None)
    # the same tuples as the processes', indexed into the whole batch: each process's rows
    # are its (q, p, n) blocks, so the whole batch holds both processes' tuples
    halves = [_local_tuples(ROWS) for _ in range(WORLD)]
    tuples = tuple(torch.cat([h[role] + r * ROWS for r, h in enumerate(halves)]) for role in range(3))
    return _gradient(loss, images, labels, weight, tuples)


@pytest.mark.slow  # two processes starting torch
def test_ddp_gradient_of_pair_losses_equals_the_single_process_gradient(tmp_path: Path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for key, averaged in ranks[0].items():
        assert torch.allclose(averaged, ranks[1][key])  # all-reduced: one gradient
        expected = _single_process(*key.split("/"))
        assert expected.abs().max() > 0  # the loss is not flat here: the comparison means something
        torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6, msg=key)
