"""Descriptors of a benchmark's distractors (revisitop's 1M), embedded once per network and
kept on disk, so that evaluating a checkpoint on ROxf+R1M a second time embeds no image.

A cache lives in ``<cache_dir>/<distractors name>/<key>/`` where ``key`` hashes everything
the vectors depend on: the network's identity (the checkpoint's sha256, or
``imagenet:<backbone>`` / the weight file's sha256 / the seed of a random one), the model
config, scales, image size, pixel normalisation, bf16 on CUDA, the distractor list's
fingerprint (its sha256 and which images are on disk), the chunk size and the stored dtype.
Other keys' folders are kept (one per checkpoint evaluated) and never read.

Distractor ``i`` is row ``i``. The rows are embedded in chunks of ``chunk_size`` images, one
``chunk-<n>.npy`` each, written atomically as it completes: a killed run resumes at the first
missing chunk. Once every chunk is there they are concatenated into ``vectors.npy`` (also
atomically) and deleted; it is read memory-mapped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retrieval.data.ground_truth import Distractors
from retrieval.data.image_io import load_rgb
from retrieval.datamodules.image_datasets import Transform
from retrieval.models.checkpoints import file_sha256
from retrieval.models.inference import embed_batch, embed_dataset, resolve_device
from retrieval.models.input_normalization import InputNormalization
from retrieval.pipelines.build import input_normalization
from retrieval.utils.atomic import atomic_file, write_atomic
from retrieval.utils.block_plan import BlockPlan
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

MERGED, SETTINGS = "vectors.npy", "settings.json"


class DistractorCacheError(UserFacingError):
    """A cache folder whose files do not add up (cut short or tampered with)."""


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def sha256_of(path: str | Path) -> str:
    """A file's sha256, hashed once per process while the file is unchanged."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def network_identity(cfg: DictConfig) -> str:
    """What decides the network's weights: the checkpoint, else the backbone's starting
    weights (plus the seed wherever a part is drawn at random)."""
    if cfg.ckpt_path:
        return f"checkpoint:{sha256_of(Path(cfg.ckpt_path).expanduser())}"
    backbone = cfg.model.net.backbone
    weights = str(backbone.weights)
    if weights.lower() in ("none", "null"):
        return f"random:seed={cfg.seed}"
    start = (
        f"imagenet:{backbone.name}"
        if weights == "imagenet"
        else f"file:{sha256_of(Path(weights).expanduser())}"
    )
    # a projection head on a pretrained backbone starts from the seed's draw
    return f"{start}:seed={cfg.seed}" if cfg.model.net.get("projection") else start


def cache_settings(cfg: DictConfig, image_size: int, normalization: InputNormalization) -> dict:
    """Everything a distractor's descriptor depends on besides its image."""
    bf16_cuda = bool(cfg.embed.bf16) and resolve_device(cfg.embed.device).type == "cuda"
    return {
        "network": network_identity(cfg),
        "model": OmegaConf.to_container(cfg.model.net, resolve=True),
        "scales": [float(s) for s in cfg.scales],
        "image_size": int(image_size),
        "input_normalization": normalization.to_dict(),
        "bf16_cuda": bf16_cuda,  # bf16 autocast moves descriptors by ~1e-3
    }


class _Images(Dataset):
    """Images ``rows`` of ``paths`` (built on access: a million paths are never a list)."""

    def __init__(self, paths: Sequence[Path], rows: np.ndarray, transform: Transform) -> None:
        self.paths, self.rows, self.transform = paths, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[int(self.rows[index])])), index


@dataclass(frozen=True)
class DistractorCache(BlockPlan):
    """``count`` distractors' vectors in chunks of ``size`` rows (see the module's doc)."""

    dtype: str  # float32 | float16

    block_name = "chunk-{:06d}.npy"

    @classmethod
    def create(
        cls, root: str | Path, settings: dict, distractors: Distractors, chunk_size: int, dtype: str
    ) -> DistractorCache:
        if chunk_size < 1 or dtype not in ("float32", "float16"):
            raise UserFacingError(
                f"distractors.chunk_size={chunk_size}, distractors.dtype={dtype}: a chunk holds at "
                f"least one image and the cache stores float32 or float16"
            )
        keyed = {
            **settings,
            "distractors": distractors.name,
            "fingerprint": distractors.fingerprint,
            "count": len(distractors),
            "chunk_size": int(chunk_size),
            "dtype": dtype,
        }
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
        cache = cls(
            Path(root).expanduser() / distractors.name / key[:32], len(distractors), chunk_size, dtype
        )
        cache.folder.mkdir(parents=True, exist_ok=True)
        if not (cache.folder / SETTINGS).is_file():  # for whoever looks in the folder
            write_atomic(cache.folder / SETTINGS, json.dumps(keyed, indent=2, default=str), fsync=False)
        return cache

    def missing(self) -> list[int]:
        """The chunks still to embed (none once merged); temporaries of killed runs removed."""
        return [] if (self.folder / MERGED).is_file() else self.prepare()

    def write(self, chunk: int, vectors: np.ndarray) -> None:
        with self.staged(chunk) as staged:
            np.save(staged, vectors.astype(self.dtype))

    def _open(self, path: Path, rows: int, dim: int | None = None) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DistractorCacheError(
                f"{path} cannot be read ({error}): delete the folder {self.folder} and evaluate again"
            ) from error
        if array.ndim != 2 or len(array) != rows or array.shape[1] != (dim or array.shape[1]):
            raise DistractorCacheError(
                f"{path} holds an array of shape {array.shape}, not {rows} rows"
                + (f" of {dim}" if dim else "")
                + f": delete the folder {self.folder} and evaluate again (it is re-embedded)"
            )
        return array

    def _merge(self, merged: Path) -> None:
        """Concatenate the chunks into ``merged`` one at a time (never all open), then delete them."""
        dim = self._open(self.path(0), len(self.rows(0))).shape[1]
        with atomic_file(merged) as staged:
            out = np.lib.format.open_memmap(staged, mode="w+", dtype=self.dtype, shape=(self.count, dim))
            for c in range(self.n_blocks):
                rows = self.rows(c)
                out[rows.start : rows.stop] = self._open(self.path(c), len(rows), dim)
            out.flush()
            del out
        for c in range(self.n_blocks):
            self.path(c).unlink(missing_ok=True)

    def vectors(self) -> np.ndarray:
        """All rows, memory-mapped; the chunks are merged into one file first if need be."""
        merged = self.folder / MERGED
        if not merged.is_file():
            try:
                self._merge(merged)
            except DistractorCacheError:
                if not merged.is_file():
                    raise  # else another evaluation merged them (and deleted them) meanwhile
        return self._open(merged, self.count)


def embed_missing(
    cache: DistractorCache,
    model: nn.Module,
    paths: Sequence[Path],
    transform: Transform,
    batch_size: int,
    num_workers: int,
    device: str,
    scales: Sequence[float],
    bf16: bool,
) -> int:
    """Embed the chunks the cache lacks, writing each as it completes; returns the images
    embedded. One loader over all of them (workers start once, not per chunk)."""
    missing = cache.missing()
    if not missing:
        return 0
    rows = np.concatenate([np.arange(cache.rows(c).start, cache.rows(c).stop) for c in missing])
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    loader = DataLoader(
        _Images(paths, rows, transform),
        batch_size=batch_size,
        shuffle=False,  # sequential: the rows arrive chunk by chunk, in order
        num_workers=num_workers,
        pin_memory=torch_device.type == "cuda",
    )
    pending, buffer, filled = iter(missing), None, 0
    chunk = next(pending)
    with Progress() as progress:
        task = progress.add_task("distractors", total=len(rows))
        for images, _ in loader:
            vectors = (
                embed_batch(model, images.to(torch_device, non_blocking=True), scales, bf16).cpu().numpy()
            )
            start = 0
            while start < len(vectors):
                if buffer is None:
                    buffer = np.empty((len(cache.rows(chunk)), vectors.shape[1]), dtype=np.float32)
                take = min(len(buffer) - filled, len(vectors) - start)
                buffer[filled : filled + take] = vectors[start : start + take]
                filled, start = filled + take, start + take
                if filled == len(buffer):
                    cache.write(chunk, buffer)
                    buffer, filled, chunk = None, 0, next(pending, -1)
            progress.advance(task, len(vectors))
    return len(rows)


def distractor_vectors(
    cfg: DictConfig,
    model: nn.Module,
    distractors: Distractors,
    transform: Transform,
    image_size: int,
) -> np.ndarray:
    """The distractors' descriptors in list order: from ``cfg.distractors.cache_dir`` (what is
    missing there embedded first), or all embedded in memory when it is null."""
    settings, scales = cfg.distractors, tuple(float(s) for s in cfg.scales)
    batch_size, workers = int(settings.batch_size), int(cfg.embed.num_workers)
    if not settings.get("cache_dir"):
        images = _Images(distractors.paths, np.arange(len(distractors)), transform)
        vectors = embed_dataset(
            model,
            images,
            batch_size,
            workers,
            cfg.embed.device,
            scales,
            description="distractors",
            bf16=cfg.embed.bf16,
        )
        log.info("distractors: 0 cached, %d embedded (no cache: distractors.cache_dir=null)", len(vectors))
        return vectors
    cache = DistractorCache.create(
        settings.cache_dir,
        cache_settings(cfg, image_size, input_normalization(cfg)),
        distractors,
        int(settings.chunk_size),
        str(settings.dtype),
    )
    embedded = embed_missing(
        cache,
        model,
        distractors.paths,
        transform,
        batch_size,
        workers,
        cfg.embed.device,
        scales,
        bf16=cfg.embed.bf16,
    )
    vectors = cache.vectors()
    log.info("distractors: %d cached, %d embedded (%s)", len(vectors) - embedded, embedded, cache.folder)
    return vectors
