"""Benchmark: the training step and embedding throughput, each against a baseline timed
in the same run.

Part 1, one triplet training step (forward + triplet loss + backward + Adam step):
anchor, positive and negative through the network in ONE batched forward of 3B images
(what TripletRetrievalModule does) vs three forwards of B images. Target on a GPU: ≥1.3×.

Part 2, embedding throughput (inference, images/s): fp32 vs bf16 autocast + channels_last.
Target on H100/H200, ResNet50 at 448 px: ≥2×. On a CPU bf16 is usually slower: the bench
prints what it measures, whatever it is.

Part 3 (``--database N``): embedding N generated JPEGs from disk with the project's own
``embed_dataset`` (JPEG decode + resize in DataLoader workers, the network in bf16 on CUDA),
images/s and the time extrapolated to 5063 images (Oxford5k). Target on a GPU: ≤10 s.

    python bench/train_step.py                                   # CPU-sized defaults
    python bench/train_step.py --backbone resnet50 --size 448 --batch 16 --database 5063  # GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from retrieval.datamodules.image_datasets import ImageListDataset
from retrieval.datamodules.transforms import eval_transform
from retrieval.models.embedding import EmbeddingNetwork
from retrieval.models.inference import embed_dataset
from retrieval.models.losses import squared_euclidean
from retrieval.models.pooling import GeM


def network(backbone: str, device: torch.device) -> EmbeddingNetwork:
    return EmbeddingNetwork(timm.create_model(backbone, num_classes=0, global_pool=""), GeM()).to(device)


def timed(step: Callable[[], None], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``step`` (CUDA work synchronised before each clock read)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training_step(args, device: torch.device) -> None:
    net = network(args.backbone, device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-6)
    loss_fn = torch.nn.TripletMarginWithDistanceLoss(distance_function=squared_euclidean, margin=2.0)
    a, p, n = (torch.randn(args.batch, 3, args.size, args.size, device=device) for _ in range(3))

    def batched() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(*net(torch.cat([a, p, n])).split(args.batch)).backward()
        optimizer.step()

    def separate() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(a), net(p), net(n)).backward()
        optimizer.step()

    # interleaved rounds, so that load changes on a shared machine hit both alike
    t_sep, t_bat = [], []
    for _ in range(args.rounds):
        t_sep.append(timed(separate, device, args.repeats))
        t_bat.append(timed(batched, device, args.repeats))
    sep, bat = min(t_sep), min(t_bat)
    print(f"\n[1] triplet step, {args.backbone} {args.size}px, batch {args.batch} triplets, {device}")
    print(f"    three forwards : {sep * 1e3:9.1f} ms/step")
    print(f"    one batched    : {bat * 1e3:9.1f} ms/step   ratio {sep / bat:.2f}x (target >= 1.3x on GPU)")


def bench_embedding(args, device: torch.device) -> None:
    net = network(args.backbone, device).eval()
    images = torch.randn(args.batch * 3, 3, args.size, args.size, device=device)
    bf16_net = network(args.backbone, device).eval().to(memory_format=torch.channels_last)
    bf16_net.load_state_dict(net.state_dict())
    bf16_images = images.contiguous(memory_format=torch.channels_last)

    def fp32() -> None:
        with torch.inference_mode():
            net(images)

    def bf16() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            bf16_net(bf16_images)

    t32 = min(timed(fp32, device, args.repeats) for _ in range(args.rounds))
    t16 = min(timed(bf16, device, args.repeats) for _ in range(args.rounds))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        cosine = torch.nn.functional.cosine_similarity(net(images), bf16_net(bf16_images).float()).min()
    n = images.shape[0]
    print(f"\n[2] embedding throughput, {args.backbone} {args.size}px, batch {n}, {device}")
    print(f"    fp32                 : {n / t32:9.1f} images/s")
    print(
        f"    bf16 + channels_last : {n / t16:9.1f} images/s   ratio {t32 / t16:.2f}x "
        f"(target >= 2x on H100/H200); min cosine to fp32 {float(cosine):.4f}"
    )


def bench_database(args, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.database):  # Oxford-like JPEGs: 1024 px on the long side
            path = Path(tmp) / f"{i:05d}.jpg"
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # smooth content, realistic size
            Image.fromarray(small).resize((1024, 768), Image.BILINEAR).save(path, quality=90)
            paths.append(path)
        dataset = ImageListDataset(paths, eval_transform(args.size))
        net = network(args.backbone, device).eval()
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        embed_dataset(
            net, dataset, batch_size=args.batch * 2, num_workers=args.workers, device=device, progress=False
        )
        seconds = time.perf_counter() - start
    rate = args.database / seconds
    print(
        f"\n[3] database embedding incl. JPEG decode, {args.database} images 1024x768 -> "
        f"{args.size}px, {args.workers} workers, {device}"
    )
    print(
        f"    {rate:.1f} images/s, {seconds:.1f} s; 5063 images (Oxford5k) -> "
        f"{5063 / rate:.1f} s (target <= 10 s on GPU)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="triplets per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", type=int, default=0, help="images for part 3 (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(torch.cuda.get_device_name(device))
    bench_training_step(args, device)
    bench_embedding(args, device)
    if args.database:
        bench_database(args, device)


if __name__ == "__main__":
    main()
