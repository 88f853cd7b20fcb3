"""Shared fixtures: a small real database (a tiny VGG-layout dataset, resnet18 at 64 px),
built once per session in-process, for the serving and web-app tests."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

# The model hub is never reachable from the test machines: fail at once instead of after
# minutes of retries if a test ever asks it for weights (subprocess runs inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.test_configs import compose_cfg
from tests.test_formats import write_vgg

SMALL_DB = [
    "dataset=oxford5k",
    "pooling=gem",
    "dataset.image_size=64",
    "dataset.num_workers=0",
    "model.net.backbone.name=resnet18",
    "model.net.backbone.weights=none",
    "dtype=float32",
]


@pytest.fixture(scope="session")
def small_vgg_root(tmp_path_factory) -> Path:
    """``<data>/oxford5k``: the VGG layout (11 images, 4 queries) with distinct random
    textures, so that an image's nearest neighbour is itself."""
    data = tmp_path_factory.mktemp("vgg")
    rng = np.random.default_rng(0)
    root = write_vgg(data / "oxford5k")
    for path in sorted((root / "jpg").glob("*.jpg")):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="session")
def small_database(small_vgg_root, tmp_path_factory) -> Path:
    """A database of ``small_vgg_root`` built with a seeded random resnet18 checkpoint."""
    from retrieval.pipelines.database import build_database

    tmp = tmp_path_factory.mktemp("small_db")
    cfg = compose_cfg(
        "database.yaml", [*SMALL_DB, f"paths.data_dir={small_vgg_root.parent}", f"db_dir={tmp / 'db'}"]
    )
    torch.manual_seed(0)
    torch.save({"state_dict": instantiate(cfg.model).state_dict()}, tmp / "model.ckpt")
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp / "model.ckpt")
        cfg.paths.cache_dir = str(tmp / "cache")
    return build_database(cfg)


@pytest.fixture(scope="session")
def app_service(small_database):
    """The web app's service over ``small_database``, loaded once (model, index, ground truth)."""
    from retrieval.serving.app import AppSettings, SearchService

    service = SearchService.load(AppSettings(db=str(small_database), k=5))
    yield service
    service.close()


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on 127.0.0.1 and a free port, in a thread;
    yields its URL and stops it on exit."""
    import uvicorn

    # port 0: the OS picks a free port; the bound socket goes to uvicorn (no race for it)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def live_server(app_service) -> Iterator[str]:
    """The app over ``small_database`` on a real uvicorn server (the service outlives it)."""
    from retrieval.serving.app import create_app

    with serve_in_thread(create_app(app_service)) as url:
        yield url


# ---------------------------------------------------------------------------------------
# End-to-end runs of the entry scripts (train.py ...) as subprocesses, on a tiny generated
# VGG-layout set, for every test that runs an entry point.
# ---------------------------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(
    script: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python <repo>/<script> <overrides>`` in ``cwd`` (``script`` ``-m``: the first override
    names a module); W&B offline, its caches in ``cwd`` (offline artifacts are staged under
    the W&B data dir, which must not be the user's)."""
    wandb_env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(cwd),
        "WANDB_CACHE_DIR": str(cwd / ".wandb-cache"),
        "WANDB_DATA_DIR": str(cwd / ".wandb-data"),
        "WANDB_CONFIG_DIR": str(cwd / ".wandb-config"),
    }
    command = [sys.executable, "-m"] if script == "-m" else [sys.executable, str(REPO_ROOT / script)]
    return subprocess.run(
        [*command, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **wandb_env, **(env or {})},
    )


@pytest.fixture(scope="session")
def tiny_landmarks(tmp_path_factory) -> Path:
    """A data dir holding ``oxford5k``: 11 images, 2 landmarks x 2 queries (write_vgg)."""
    data = tmp_path_factory.mktemp("tiny_landmarks")
    write_vgg(data / "oxford5k")
    return data


# dataset=oxford5k composes the reference recipe (flatten, SSIM negatives, augmentations, 4
# accumulated steps); the small test runs pin the plain options, one override each
PLAIN_TRAINING = ["pooling=gem", "mining=random", "augmentation=none", "trainer.accumulate_grad_batches=1"]


def tiny_run(data: Path, logs: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long training run: 32 px, resnet18, one epoch."""
    return [
        f"paths.data_dir={data}",
        f"paths.log_dir={logs}",
        "dataset=oxford5k",
        *PLAIN_TRAINING,
        "dataset.image_size=32",
        "dataset.num_workers=0",
        "model.net.backbone.name=resnet18",
        "model.net.backbone.weights=none",
        "trainer.max_epochs=1",
        *extra,
    ]


def small_run(data: Path, tmp: Path) -> list[str]:
    """Overrides for a small run at 64 px (resnet18), logging under ``tmp/logs``; epochs as
    the test needs them."""
    return [
        f"paths.data_dir={data}",
        f"paths.log_dir={tmp / 'logs'}",
        "dataset=oxford5k",
        *PLAIN_TRAINING,
        "dataset.image_size=64",
        "dataset.num_workers=0",
        "model.net.backbone.name=resnet18",
        "model.net.backbone.weights=none",
    ]
