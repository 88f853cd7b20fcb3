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

from tests.helpers.configs import SMALL_VGG_MODEL, compose_cfg
from tests.helpers.vgg import write_vgg

SMALL_DB = [*SMALL_VGG_MODEL, "dtype=float32"]


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


# The tiny generated VGG-layout set every test that runs a command trains on (the runs
# themselves: tests/helpers/runs.py).
@pytest.fixture(scope="session")
def tiny_landmarks(tmp_path_factory) -> Path:
    """A data dir holding ``oxford5k``: 11 images, 2 landmarks x 2 queries (write_vgg)."""
    data = tmp_path_factory.mktemp("tiny_landmarks")
    write_vgg(data / "oxford5k")
    return data
