"""evaluate.py on ROxf+R1M: the distractors embedded once per network into a chunked,
resumable cache, concatenated after the benchmark's own images, with the metrics of an
uncached run (a generated ROxford5k + revisitop1m tree, ImageNet EfficientNet-Lite0 at 32 px)."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from retrieval.data.r1m_format import read_distractors
from retrieval.datamodules.transforms import eval_transform
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.models.inference import embed_dataset
from retrieval.pipelines.build import build_datamodule, build_model, input_normalization
from retrieval.pipelines.distractor_cache import (
    MERGED,
    DistractorCache,
    DistractorCacheError,
    cache_settings,
    distractor_vectors,
    embed_missing,
)
from retrieval.pipelines.evaluate import evaluate
from tests.helpers.configs import compose_cfg
from tests.helpers.large_sets import jpeg, r1m_names, write_r1m

N_DISTRACTORS, CHUNK, BATCH = 30, 8, 5  # batches of 5 straddle chunks of 8; the last chunk holds 6
GND = [
    {"bbx": [1.0, 2.0, 20.0, 15.0], "easy": [0, 1], "hard": [2], "junk": [3]},
    {"bbx": [0.0, 0.0, 18.0, 16.0], "easy": [4], "hard": [5], "junk": [0]},
]


def write_roxford(root: Path) -> Path:
    """gnd_roxford5k.pkl + jpg/ with random textures (as the distractors): they interleave."""
    imlist = [f"{lm}_{i:06d}" for lm in ("all_souls", "ashmolean") for i in range(1, 4)]
    qimlist = ["all_souls_000000", "ashmolean_000000"]
    (root / "jpg").mkdir(parents=True)
    for k, name in enumerate(imlist + qimlist):
        (root / "jpg" / f"{name}.jpg").write_bytes(jpeg(k, (32, 24)))
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": GND}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("r1m_eval")
    write_roxford(data / "roxford5k")
    write_r1m(data / "revisitop1m", r1m_names(N_DISTRACTORS))
    return data


def config(data: Path, out: Path, *extra: str):
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            "dataset=roxford5k+r1m",
            f"paths.data_dir={data}",
            "pooling=gem",
            "model.net.backbone.name=tf_efficientnet_lite0",
            "model.net.backbone.weights=imagenet",
            "dataset.image_size=32",
            "dataset.num_workers=0",
            "embed.device=cpu",
            f"embed.batch_size={BATCH}",
            f"distractors.chunk_size={CHUNK}",
            "embedding_plot=null",
            f"output_json={out}/metrics.json",
            *extra,
        ],
    )
    with open_dict(cfg):
        cfg.paths.cache_dir = str(out.parent / "cache")  # one cache for every run of a test
    return cfg


def counts(caplog) -> list[tuple[int, int]]:
    """(cached, embedded) of each "distractors: N cached, M embedded" line so far."""
    found = re.findall(r"distractors: (\d+) cached, (\d+) embedded", caplog.text)
    return [(int(a), int(b)) for a, b in found]


def reference(cfg) -> dict[str, float]:
    """The uncached evaluation: the whole database (benchmark + distractors) embedded in one
    pass by the datamodule's dataset, as evaluate.py did before the cache."""
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    model = build_model(cfg)
    embed = dict(batch_size=BATCH, device="cpu", bf16=False, progress=False)
    queries = embed_dataset(model, datamodule.query_dataset(), **embed)
    database = embed_dataset(model, datamodule.database_dataset(), **embed)
    assert len(database) == 6 + N_DISTRACTORS
    return evaluate_embeddings(queries, database, datamodule.eval_gt).metrics


@pytest.mark.slow  # three evaluations + one uncached embedding: 7 s at load 5 on 2 cores, 95 s at load 14
def test_distractors_are_embedded_once_per_network_with_the_metrics_of_an_uncached_run(
    data, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="retrieval.pipelines.distractor_cache")
    cfg = config(data, tmp_path / "first")
    first = evaluate(cfg)
    assert counts(caplog) == [(0, N_DISTRACTORS)]
    caches = tmp_path / "cache" / "distractors" / "revisitop1m"
    (folder,) = caches.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["settings.json", MERGED]  # chunks merged
    assert len(np.load(folder / MERGED, mmap_mode="r")) == N_DISTRACTORS
    second = evaluate(config(data, tmp_path / "second"))
    assert counts(caplog) == [(0, N_DISTRACTORS), (N_DISTRACTORS, 0)]
    expected = reference(cfg)
    assert first["metrics"] == second["metrics"] == expected
    # the distractors count: with the benchmark alone every query's positives rank higher
    assert expected["M/mAP"] < 1.0

    # a stale cache: another checkpoint (a "fine-tuned" network) never reads the first's
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.ckpt")
    trained = evaluate(config(data, tmp_path / "ckpt", f"ckpt_path={tmp_path / 'model.ckpt'}"))
    assert counts(caplog)[2:] == [(0, N_DISTRACTORS)]
    assert len(list(caches.iterdir())) == 2  # both kept: one cache per network
    assert trained["metrics"] != first["metrics"]


def test_every_setting_and_the_image_list_key_the_cache(data, tmp_path):
    distractors = read_distractors(data / "revisitop1m", offset=6)
    base = {"network": "imagenet:tf_efficientnet_lite0", "scales": [1.0], "image_size": 32}

    def folder(settings=base, d=distractors, chunk=CHUNK, dtype="float32") -> Path:
        return DistractorCache.create(tmp_path, settings, d, chunk, dtype).folder

    changed_list = write_r1m(tmp_path / "other", r1m_names(N_DISTRACTORS)[:-1])
    others = [
        folder({**base, "network": "checkpoint:0123"}),
        folder({**base, "scales": [1.0, 0.5]}),
        folder({**base, "image_size": 64}),
        folder(d=read_distractors(changed_list, offset=6)),
        folder(chunk=4),
        folder(dtype="float16"),
    ]
    assert folder() == folder() and len({folder(), *others}) == 7


def test_a_killed_embedding_resumes_at_the_first_missing_chunk(data, tmp_path):
    cfg = config(data, tmp_path / "out", "embed.bf16=false")
    distractors = read_distractors(data / "revisitop1m", offset=6)
    normalization = input_normalization(cfg)
    transform = eval_transform(32, normalization)  # 32 px: a quarter of the work
    model = build_model(cfg)
    cache = DistractorCache.create(
        tmp_path / "cache", cache_settings(cfg, 32, normalization), distractors, CHUNK, "float32"
    )
    seen = []

    def dies_after_20_images(image):
        seen.append(1)
        if len(seen) > 20:
            raise KeyboardInterrupt  # a killed run: chunks 0 and 1 (16 images) are complete
        return transform(image)

    args = (distractors.paths, dies_after_20_images, BATCH, 0, "cpu", (1.0,), False)
    with pytest.raises(KeyboardInterrupt):
        embed_missing(cache, model, *args)
    assert cache.missing() == [2, 3]
    assert embed_missing(cache, model, distractors.paths, transform, *args[2:]) == N_DISTRACTORS - 2 * CHUNK
    with open_dict(cfg):
        cfg.distractors.cache_dir = None
    uncached = distractor_vectors(cfg, model, distractors, transform, 32)
    np.testing.assert_allclose(cache.vectors(), uncached, rtol=0, atol=1e-6)


def test_a_chunk_that_does_not_fit_names_the_folder_to_delete(data, tmp_path):
    distractors = read_distractors(data / "revisitop1m", offset=6)
    cache = DistractorCache.create(tmp_path, {"network": "x"}, distractors, CHUNK, "float32")
    for chunk in range(cache.n_blocks):
        cache.write(chunk, np.ones((len(cache.rows(chunk)), 4 if chunk != 2 else 5)))  # chunk 2 is 5-d
    with pytest.raises(
        DistractorCacheError, match=rf"chunk-000002\.npy .* not 8 rows of 4: delete the folder {cache.folder}"
    ):
        cache.vectors()
    assert not (cache.folder / MERGED).exists()  # nothing half-merged is left as the cache
    cache.write(2, np.ones((CHUNK, 4)))
    assert cache.vectors().shape == (N_DISTRACTORS, 4) and cache.missing() == []
