"""Web app start-up: the CLI, configuration, refusals of a missing or mismatched database."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from retrieval.pipelines.app import load_service
from retrieval.pipelines.app import main as app_main
from retrieval.serving.app import AppSettings, SearchService, create_app
from retrieval.serving.app.server import ListeningServer, bind_port
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
        # refused by the database's file manifest where it has one, else by the self-check
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
        assert client.get("/api/health").json()["queries"] == 0
        listing = client.get("/api/queries").json()  # one empty page, not an error
        assert (listing["items"], listing["total"], listing["pages"]) == ([], 0, 1)
        assert "no dataset queries" in client.get("/").text and client.get("/queries/0").status_code == 404
        assert search(client, b"hello").status_code == 415  # uploads still work, and still refuse
    assert service.executor._shutdown  # the model's threads stopped with the server


# ------------------------------------------------------- settings, port, damaged files
def refusal(overrides: list[str], capsys) -> str:
    """The app's one paragraph on stderr for ``overrides`` (it must exit with code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        app_main(app_cfg(overrides))
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert exit_info.value.code == 2 and message.startswith("error: "), captured
    assert "\n" not in message and "Traceback" not in captured.err
    assert "serving" not in captured.out
    return message


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["port=99999"], "port must be between 1 and 65535, got 99999"),
        (["port=0"], "port must be >= 1"),
        (["port=abc"], "port must be a whole number, got 'abc'"),
        (["k=300"], "k=300 is over max_k=200"),
        (["k=6", "max_k=5"], "k=6 is over max_k=5"),
        (["k=0"], "k must be >= 1"),
        (["k=-3"], "k must be >= 1"),
        (["upload.keep=0"], "upload.keep must be >= 1"),
        (["upload.max_pixels=2000000000"], "upload.max_pixels=2000000000 is over"),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(tmp_path, capsys, overrides, expected):
    # the database does not exist: a refusal naming the setting shows it was checked first
    message = refusal([f"db={tmp_path / 'nope'}", *overrides], capsys)
    assert "invalid app setting" in message and expected in message, message


def test_a_busy_port_is_one_sentence_before_the_database_loads(tmp_path, capsys):
    port = free_port()
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", port))
        other_server.listen()
        message = refusal([f"db={tmp_path / 'nope'}", f"port={port}"], capsys)
    assert f"port {port} on 127.0.0.1 is already in use" in message and "port=OTHER" in message


def test_the_server_says_serving_only_once_it_listens():
    sock = bind_port("127.0.0.1", free_port())  # bound before the load; nothing listens yet
    address = sock.getsockname()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    connected = []

    def on_listening() -> None:
        with socket.create_connection(address, timeout=5):
            connected.append(True)
        server.should_exit = True

    async def app(scope, receive, send):  # never reached
        raise AssertionError

    server = ListeningServer(uvicorn.Config(app, log_level="warning", lifespan="off"), on_listening)
    sock.listen()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    thread.join(timeout=30)
    sock.close()
    assert connected == [True] and not thread.is_alive()


def test_a_truncated_whitening_file_is_one_paragraph_at_start(small_database, tmp_path, capsys):
    db = Path(shutil.copytree(small_database, tmp_path / "db"))
    whitening = db / "whitening.npz"
    whitening.write_bytes(whitening.read_bytes()[: whitening.stat().st_size // 2])
    message = refusal([f"db={db}", f"port={free_port()}"], capsys)
    assert "whitening.npz" in message and "rebuild it" in message
