"""The dataset downloader against a local HTTP server serving small archives with the real layout.

Everything runs offline: the server listens on 127.0.0.1 and a guard fails any test that
tries to open a connection anywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from retrieval.acquisition.archives import safe_extract
from retrieval.acquisition.datasets import DATASETS
from retrieval.acquisition.download import download_dataset
from retrieval.acquisition.fetch import FetchOptions
from retrieval.data.landmark_formats import load_classic_ground_truth, load_revisited_ground_truth
from retrieval.utils.errors import DatasetError
from tests.helpers.runs import run_script

FAST = FetchOptions(retries=2, backoff_s=0.0, timeout_s=5.0, quiet=True)
OX_IMAGES, OX_GT = "oxbuild_images-v1.tgz", "gt_files_170407.tgz"


# ------------------------------------------------------------------ a local server with Range
class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ignore_range``;
    ``server.drop_after[name] = n`` sends only n body bytes once, then closes the connection."""

    def do_GET(self) -> None:
        srv, name, wanted = self.server, self.path.lstrip("/"), self.headers.get("Range")
        srv.requests.append((name, wanted))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start, match = 0, re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and not srv.ignore_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.drop_after.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the socket closes next

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.files, httpd.requests, httpd.drop_after, httpd.ignore_range = {}, [], {}, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"a test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


# ------------------------------------------------------------------ archives with the real layout
def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color=(seed * 37 % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _tgz(members: dict[str, bytes | None], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A gzip'd tar; a ``None`` value makes a directory, ``links`` maps name -> (type, target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode = (tarfile.DIRTYPE, 0o755) if data is None else (tarfile.REGTYPE, 0o644)
            info.size = 0 if data is None else len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buf.getvalue()


def _vgg_gt(landmarks: tuple[str, ...], prefix: str) -> dict[str, bytes]:
    files = {}
    for lm in landmarks:
        for k in (1, 2):
            files[f"{lm}_{k}_query.txt"] = f"{prefix}{lm}_{k - 1:06d} 10.5 5.0 30.0 20.0\n".encode()
            files[f"{lm}_{k}_good.txt"] = f"{lm}_000000\n{lm}_000001\n".encode()
            files[f"{lm}_{k}_ok.txt"] = f"{lm}_000002\n".encode()
            files[f"{lm}_{k}_junk.txt"] = f"{lm}_000003\n".encode()
    return files


def oxford_files() -> dict[str, bytes]:
    """oxbuild_images-v1.tgz is flat (all_souls_000000.jpg ...); query files use oxc1_ names."""
    names = [f"{lm}_{i:06d}" for lm in ("all_souls", "ashmolean") for i in range(4)] + ["oxford_000001"]
    return {
        OX_IMAGES: _tgz({f"{n}.jpg": _jpeg(i) for i, n in enumerate(names)}),
        OX_GT: _tgz(_vgg_gt(("all_souls", "ashmolean"), "oxc1_")),
    }


def paris_files() -> dict[str, bytes]:
    """Two archives unpacking as paris/<landmark>/paris_<landmark>_NNNNNN.jpg; one image is broken."""

    def part(landmark: str, broken: bool) -> bytes:
        members: dict[str, bytes | None] = {"paris/": None, f"paris/{landmark}/": None}
        members |= {f"paris/{landmark}/paris_{landmark}_{i:06d}.jpg": _jpeg(i) for i in range(4)}
        if broken:
            members[f"paris/{landmark}/paris_{landmark}_000099.jpg"] = b"\x00" * 40
        return _tgz(members)

    return {
        "paris_1-v1.tgz": part("defense", False),
        "paris_2-v1.tgz": part("eiffel", True),
        "paris_120310.tgz": _tgz(_vgg_gt(("paris_defense", "paris_eiffel"), "")),
    }


def gnd_pkl() -> bytes:
    imlist = [f"{lm}_{i:06d}" for lm in ("all_souls", "ashmolean") for i in range(1, 4)]
    gnd = [
        {"bbx": [1.0, 2.0, 20.0, 15.0], "easy": [0, 1], "hard": [2], "junk": []},
        {"bbx": [0.0, 0.0, 10.0, 10.0], "easy": [3], "hard": [4, 5], "junk": [0]},
    ]
    return pickle.dumps({"imlist": imlist, "qimlist": ["all_souls_000000", "ashmolean_000000"], "gnd": gnd})


def table_for(files: dict[str, bytes], pin: bool = True) -> dict:
    """DATASETS with each served file's size and sha256 pinned (or nothing pinned)."""

    def adjust(remote):
        data = files.get(remote.name)
        pinned = pin and data is not None
        return dataclasses.replace(
            remote,
            md5=None,
            size=len(data) if pinned else None,
            sha256=hashlib.sha256(data).hexdigest() if pinned else None,
        )

    return {n: dataclasses.replace(s, files=tuple(map(adjust, s.files))) for n, s in DATASETS.items()}


def run(name: str, root: Path, server, table: dict, **kwargs):
    out = io.StringIO()
    kwargs.setdefault("options", FAST)
    report = download_dataset(
        name, root, mirror=server.url, console=Console(file=out, width=300), table=table, **kwargs
    )
    return report, out.getvalue()


def requested(server) -> list[str]:
    return [name for name, _ in server.requests]


# ------------------------------------------------------------------ tests
def test_oxford_is_unpacked_into_the_loader_layout_and_a_rerun_does_nothing(tmp_path, server):
    server.files |= oxford_files()
    table = table_for(server.files)
    report, out = run("oxford5k", tmp_path, server, table)

    folder = tmp_path / "oxford5k"
    assert report.downloaded == [OX_IMAGES, OX_GT] and report.extracted == [OX_IMAGES, OX_GT]
    gt = load_classic_ground_truth(folder, "oxford5k")
    assert len(gt.image_names) == 9 and len(gt.queries) == 4
    assert (gt.queries[0].name, gt.queries[0].bbox) == ("all_souls_000000", (10.5, 5.0, 30.0, 20.0))
    assert (folder / "jpg" / "all_souls_000001.jpg").is_file()  # flat, as in the archive
    assert (folder / "gt_files" / "ashmolean_2_junk.txt").read_text() == "ashmolean_000003\n"
    assert list((folder / "archives").iterdir()) == []  # archives deleted after unpacking
    assert not list(folder.glob(".unpack-*"))
    manifest = json.loads((folder / ".download.json").read_text())["files"]
    assert manifest[OX_IMAGES]["sha256"] == hashlib.sha256(server.files[OX_IMAGES]).hexdigest()
    assert manifest[OX_GT]["placed"] == "gt_files"
    assert "9 images, 0 unreadable" in out

    server.requests.clear()
    again, out = run("oxford5k", tmp_path, server, table)
    assert (again.downloaded, again.extracted, server.requests) == ([], [], [])
    assert "nothing downloaded or extracted" in out

    # a deleted folder is noticed: only what fills it is fetched again
    for path in (folder / "gt_files").iterdir():
        path.unlink()
    (folder / "gt_files").rmdir()
    repaired, _ = run("oxford5k", tmp_path, server, table)
    assert repaired.downloaded == [OX_GT] and requested(server) == [OX_GT]
    assert len(load_classic_ground_truth(folder, "oxford5k").queries) == 4


def test_paris_keeps_its_nesting_and_reports_unreadable_images_without_deleting_them(tmp_path, server):
    server.files |= paris_files()
    report, out = run("paris6k", tmp_path, server, table_for(server.files))

    images = tmp_path / "paris6k" / "jpg" / "paris"
    assert sorted(p.name for p in images.iterdir()) == ["defense", "eiffel"]  # both archives merged
    broken = images / "eiffel" / "paris_eiffel_000099.jpg"
    assert report.image_count == 9 and report.unreadable == [broken] and broken.is_file()
    assert "1 unreadable (kept" in out and "paris_eiffel_000099.jpg" in out
    gt = load_classic_ground_truth(tmp_path / "paris6k", "paris6k")
    assert len(gt.queries) == 4 and gt.queries[0].path == images / "defense" / "paris_defense_000000.jpg"


def test_revisited_set_reuses_unpacked_classic_images(tmp_path, server):
    server.files |= oxford_files() | {"gnd_roxford5k.pkl": gnd_pkl()}
    table = table_for(server.files)
    run("oxford5k", tmp_path, server, table)
    server.requests.clear()

    report, _ = run("roxford5k", tmp_path, server, table)
    assert requested(server) == ["gnd_roxford5k.pkl"] and report.in_place == [OX_IMAGES]
    assert (tmp_path / "roxford5k" / "jpg").is_symlink()
    gt = load_revisited_ground_truth(tmp_path / "roxford5k", "roxford5k")
    assert len(gt.queries) == 2 and gt.queries[1].name == "ashmolean_000000"
    server.requests.clear()
    again, _ = run("roxford5k", tmp_path, server, table)
    assert (again.downloaded, again.extracted, server.requests) == ([], [], [])


def test_revisited_set_alone_downloads_its_own_images(tmp_path, server):
    server.files |= oxford_files() | {"gnd_roxford5k.pkl": gnd_pkl()}
    report, _ = run("roxford5k", tmp_path, server, table_for(server.files))
    assert report.downloaded == [OX_IMAGES, "gnd_roxford5k.pkl"]
    assert not (tmp_path / "roxford5k" / "jpg").is_symlink()
    assert len(load_revisited_ground_truth(tmp_path / "roxford5k", "roxford5k").image_names) == 6


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    server.files |= oxford_files()
    table = table_for(server.files)
    server.drop_after[OX_IMAGES] = 300
    no_retry = dataclasses.replace(FAST, retries=0)
    with pytest.raises(DatasetError, match="connection closed after 300 of"):
        run("oxford5k", tmp_path, server, table, options=no_retry)
    part = tmp_path / "oxford5k" / "archives" / f"{OX_IMAGES}.part"
    assert part.stat().st_size == 300

    run("oxford5k", tmp_path, server, table)  # the next run picks the .part up
    assert server.requests[:2] == [(OX_IMAGES, None), (OX_IMAGES, "bytes=300-")]
    manifest = json.loads((tmp_path / "oxford5k" / ".download.json").read_text())["files"]
    assert manifest[OX_IMAGES]["sha256"] == hashlib.sha256(server.files[OX_IMAGES]).hexdigest()
    assert len(load_classic_ground_truth(tmp_path / "oxford5k", "oxford5k").image_names) == 9


def test_a_dropped_connection_is_resumed_within_the_same_run(tmp_path, server):
    server.files |= oxford_files()
    half = len(server.files[OX_IMAGES]) // 2
    server.drop_after[OX_IMAGES] = half
    report, _ = run("oxford5k", tmp_path, server, table_for(server.files))
    assert report.downloaded == [OX_IMAGES, OX_GT]
    assert server.requests[:2] == [(OX_IMAGES, None), (OX_IMAGES, f"bytes={half}-")]


def test_a_server_ignoring_range_makes_the_download_restart(tmp_path, server):
    server.files |= oxford_files()
    server.ignore_range = True
    archives = tmp_path / "oxford5k" / "archives"
    archives.mkdir(parents=True)
    (archives / f"{OX_IMAGES}.part").write_bytes(b"stale bytes from another file")
    run("oxford5k", tmp_path, server, table_for(server.files))  # pinned sha256 passes
    assert server.requests[0] == (OX_IMAGES, "bytes=29-")  # asked to resume, got a 200
    assert len(load_classic_ground_truth(tmp_path / "oxford5k", "oxford5k").image_names) == 9


def test_a_tampered_file_is_rejected_by_checksum_and_deleted(tmp_path, server):
    genuine = oxford_files()
    table = table_for(genuine)
    tampered = bytearray(genuine[OX_GT])
    tampered[len(tampered) // 2] ^= 0xFF  # same size: only the checksum can tell
    server.files |= {OX_IMAGES: genuine[OX_IMAGES], OX_GT: bytes(tampered)}
    with pytest.raises(DatasetError) as error:
        run("oxford5k", tmp_path, server, table)
    message = str(error.value)
    assert OX_GT in message and "sha256" in message
    assert hashlib.sha256(genuine[OX_GT]).hexdigest() in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert not (tmp_path / "oxford5k" / "archives" / OX_GT).exists()
    assert not (tmp_path / "oxford5k" / "gt_files").exists()

    server.files[OX_GT] = genuine[OX_GT] + b"extra"  # a pinned size is checked before downloading
    with pytest.raises(DatasetError, match=rf"announces {len(genuine[OX_GT]) + 5} bytes.*must be"):
        run("oxford5k", tmp_path, server, table)


def test_first_download_checksums_catch_later_changes(tmp_path, server):
    server.files |= oxford_files() | {"gnd_roxford5k.pkl": gnd_pkl()}
    table = table_for(server.files, pin=False)  # as for Paris and the pickles: nothing published
    run("roxford5k", tmp_path, server, table)
    pkl = tmp_path / "roxford5k" / "gnd_roxford5k.pkl"

    pkl.write_bytes(pkl.read_bytes() + b"\x00")  # modified on disk
    with pytest.raises(DatasetError, match=r"gnd_roxford5k.pkl failed verification.*recorded"):
        run("roxford5k", tmp_path, server, table)
    assert not pkl.exists()

    server.files["gnd_roxford5k.pkl"] = gnd_pkl() + b"changed at the source"
    with pytest.raises(DatasetError, match="recorded in .*download.json at the first download"):
        run("roxford5k", tmp_path, server, table)

    server.files["gnd_roxford5k.pkl"] = gnd_pkl()
    server.requests.clear()
    run("roxford5k", tmp_path, server, table)
    assert requested(server) == ["gnd_roxford5k.pkl"] and pkl.is_file()


@pytest.mark.parametrize("evil", ["../evil.txt", "ABSOLUTE"])
def test_an_archive_with_an_escaping_member_is_refused_and_writes_nothing(tmp_path, server, evil):
    evil = str(tmp_path / "abs" / "evil.txt") if evil == "ABSOLUTE" else evil
    server.files |= {OX_IMAGES: _tgz({"all_souls_000000.jpg": _jpeg(1), evil: b"pwned"})}
    with pytest.raises(DatasetError, match="unsafe member"):
        run("oxford5k", tmp_path, server, table_for(server.files))
    folder = tmp_path / "oxford5k"
    assert list(tmp_path.rglob("evil.txt")) == []
    assert not (folder / "jpg").exists() and not list(folder.glob(".unpack-*"))
    assert not (folder / "archives" / OX_IMAGES).exists()  # a hostile archive is not kept
    assert OX_IMAGES not in json.loads((folder / ".download.json").read_text())["files"]


@pytest.fixture(params=["data filter", "manual checks only"])
def tar_filter(request, monkeypatch):
    """Run with tarfile's filter="data" and as on Pythons without it (before 3.11.4)."""
    if request.param != "data filter":
        monkeypatch.delattr(tarfile, "data_filter")


@pytest.mark.parametrize(
    "link",
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.SYMTYPE, "../outside"),
        (tarfile.SYMTYPE, "sub/../.."),
        (tarfile.LNKTYPE, "../outside"),
        (tarfile.CHRTYPE, ""),
    ],
)
def test_links_out_of_the_archive_and_device_files_are_refused(tmp_path, link, tar_filter):
    archive = tmp_path / "bad.tgz"
    archive.write_bytes(_tgz({"ok.txt": b"fine"}, links={"member": link}))
    with pytest.raises(DatasetError, match="unsafe member 'member'"):
        safe_extract(archive, tmp_path / "dest" / "scratch")
    assert not (tmp_path / "outside").exists()


def test_safe_extract_keeps_links_inside_and_rejects_garbage(tmp_path, tar_filter):
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(
        _tgz(
            {"sub/": None, "sub/a.txt": b"a", "._sub": b"mac junk"},
            links={"alias.txt": (tarfile.SYMTYPE, "sub/a.txt")},
        )
    )
    assert safe_extract(archive, tmp_path / "out") == 2
    assert (tmp_path / "out" / "alias.txt").read_text() == "a"
    assert not (tmp_path / "out" / "._sub").exists()
    (tmp_path / "garbage.tgz").write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="not a readable tar archive"):
        safe_extract(tmp_path / "garbage.tgz", tmp_path / "out2")


def test_without_network_the_command_says_so_and_how_to_place_files(tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = run_script(
        "-m",
        "retrieval.pipelines.download",
        "dataset=oxford5k",
        f"paths.data_dir={tmp_path}",
        f"mirror={dead}",
        "quiet=true",
        "retries=3",
        cwd=tmp_path,
    )
    err = result.stderr
    assert result.returncode == 2 and "Traceback" not in err
    assert "impossible from here" in err and OX_IMAGES in err
    assert str(tmp_path / "oxford5k" / "archives") in err

    # doing what the message says: files dropped into archives/ are verified and unpacked
    files = oxford_files()
    for name, data in files.items():
        (tmp_path / "oxford5k" / "archives" / name).write_bytes(data)
    out = io.StringIO()
    report = download_dataset(
        "oxford5k", tmp_path, mirror=dead, options=FAST, table=table_for(files), console=Console(file=out)
    )
    assert report.downloaded == [] and report.extracted == [OX_IMAGES, OX_GT]
    assert len(load_classic_ground_truth(tmp_path / "oxford5k", "oxford5k").queries) == 4


def test_without_a_dataset_the_command_lists_every_dataset_with_its_size_and_sources(tmp_path):
    result = run_script("-m", "retrieval.pipelines.download", cwd=tmp_path)
    out = result.stdout
    for name in DATASETS:
        assert re.search(rf"{re.escape(name)}\s+~[\d.]+ GB", out)
    for source in (
        "oxbuild_images-v1.tgz",
        "gt_files_170407.tgz",
        "paris_1-v1.tgz",
        "paris_2-v1.tgz",
        "paris_120310.tgz",
        "gnd_roxford5k.pkl",
        "gnd_rparis6k.pkl",
    ):
        assert source in out
