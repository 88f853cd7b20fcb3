"""Web app start-up: the CLI, configuration, refusals of a missing or mismatched database."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from retrieval.pipelines.app import load_service
from retrieval.pipelines.app import main as app_main
from retrieval.serving.app import AppSettings, SearchService, create_app
from retrieval.serving.database import DatabaseError
from retrieval.utils.errors import UserFacingError
from tests.helpers.server import free_port, health_of_served
from tests.serving.test_app import search


# ---------------------------------------------------------------------------- start-up
def app_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "configs"), version_base="1.3"):
        return compose("app.yaml", overrides=overrides)


def test_cli_serves_on_the_configured_port(small_database, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "retrieval.pipelines.app", f"db={small_database}", f"port={port}"]
    health, returncode, output = health_of_served([*command, "log_level=warning"], port, tmp_path)
    assert health is not None and health["images"] == 11, output
    assert returncode == 0 and "serving oxford5k (11 images, 4 queries)" in output
    assert list(tmp_path.iterdir()) == []  # no run folder, no uploads


def test_cli_refuses_a_missing_database_in_one_paragraph(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        app_main(app_cfg([f"db={tmp_path / 'nope'}"]))  # a cfg skips Hydra's parsing, nothing else
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{tmp_path / 'nope'} does not exist" in message
    assert "build one with retrieval-database build" in message
    assert "Traceback" not in message


def test_config_reaches_the_settings():
    cfg = app_cfg(["db=/x", "port=9000", "upload.max_bytes=1000", "upload.max_pixels=5"])
    settings = AppSettings.from_config(cfg)
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)
    assert (settings.max_upload_bytes, settings.max_pixels) == (1000, 5)
    with pytest.raises(UserFacingError, match="db= is required"):
        load_service(app_cfg([]))
    with pytest.raises(UserFacingError, match="ground_truth must be one of"):
        load_service(app_cfg(["db=/x", "ground_truth=yes"]))


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("embeddings", "is not the file it was built with|does not match its model: re-embedding .* cosine"),
        ("checkpoint", "was built with another checkpoint"),
        ("image_root", "the images of database .* are not at"),
    ],
)
def test_a_database_that_does_not_match_refuses_to_start(small_database, tmp_path, breakage, message):
    db = Path(shutil.copytree(small_database, tmp_path / "db"))
    settings = AppSettings(db=str(db))
    if breakage == "embeddings":  # rows reversed: image 0 now has image 10's descriptor
        np.save(db / "embeddings.npy", np.load(db / "embeddings.npy")[::-1].copy())
    elif breakage == "checkpoint":
        (tmp_path / "other.ckpt").write_bytes(b"another model")
        settings = replace(settings, ckpt_path=str(tmp_path / "other.ckpt"))
    else:
        meta = json.loads((db / "meta.json").read_text())
        (db / "meta.json").write_text(json.dumps({**meta, "image_root": str(tmp_path / "moved")}))
    with pytest.raises(DatabaseError, match=message):
        SearchService.load(settings)


def test_ground_truth_modes_and_shutdown(app_service):
    with pytest.raises(UserFacingError, match="revisited ground truth of oxford5k .* is unusable"):
        SearchService(app_service.searcher, replace(app_service.settings, ground_truth="revisited"))
    service = SearchService(app_service.searcher, replace(app_service.settings, ground_truth="none"))
    with TestClient(create_app(service)) as client:  # runs the app's start-up and shutdown
        assert client.get("/api/health").json()["queries"] == 0 and client.get("/api/queries").json() == []
        assert "no dataset queries" in client.get("/").text and client.get("/queries/0").status_code == 404
        assert search(client, b"hello").status_code == 415  # uploads still work, and still refuse
    assert service.executor._shutdown  # the model's threads stopped with the server
