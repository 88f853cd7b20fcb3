"""Downloading GLDv2 (CSVs + tar shards verified by their published md5 lists) and revisitop's
1M distractors against a local HTTP server serving generated files in the published layouts
(cvdfoundation/google-landmark README.md and download-dataset.sh; filipradenovic/revisitop
python/download.py). Offline: the server and guard are test_download's."""

from __future__ import annotations

import hashlib
import json

import pytest

from retrieval.data.gldv2_format import read_gldv2
from retrieval.data.r1m_format import load_revisited_with_distractors
from retrieval.utils.errors import DatasetError
from tests.acquisition import test_download as local_server
from tests.acquisition.test_download import gnd_pkl, oxford_files, requested, run, table_for
from tests.helpers.large_sets import (
    gldv2_ids,
    gldv2_layout,
    gldv2_metadata,
    gldv2_shards,
    r1m_archives,
    r1m_names,
)
from tests.helpers.runs import run_script

# the local HTTP server and the guard that fails any connection elsewhere (autouse)
server, _only_localhost = local_server.server, local_server._only_localhost

CLEAN = gldv2_ids(6, 3)
IDS = [i for ids in CLEAN.values() for i in ids]


def gldv2_files(shards: int = 3) -> dict[str, bytes]:
    return gldv2_metadata(CLEAN, {}) | gldv2_shards(IDS, shards)


def test_gldv2_shards_are_verified_by_their_md5_lists_unpacked_into_train_and_read(tmp_path, server):
    server.files |= gldv2_files()
    table = table_for(server.files, pin=False)  # only the md5 lists vouch for the shards
    report, out = run("gldv2", tmp_path, server, table, shards=2)

    folder = tmp_path / "gldv2"
    assert report.downloaded == [
        "train.csv",
        "train_clean.csv",
        "train_attribution.csv",
        "train_label_to_category.csv",
        "md5.images_000.txt",
        "images_000.tar",
        "md5.images_001.txt",
        "images_001.tar",
    ]
    assert (folder / "train_clean.csv").read_bytes() == server.files["train_clean.csv"]
    assert (folder / "md5sum" / "md5.images_001.txt").is_file()
    on_disk = sorted(p.relative_to(folder / "train").as_posix() for p in (folder / "train").rglob("*.jpg"))
    in_shards = sorted(gldv2_layout(i) for n, i in enumerate(IDS) if n % 3 < 2)
    assert on_disk == in_shards
    assert (folder / "shards" / "images_000.txt").read_text().split() == sorted(
        gldv2_layout(i) for n, i in enumerate(IDS) if n % 3 == 0
    )
    manifest = json.loads((folder / ".download.json").read_text())["files"]
    assert manifest["images_000.tar"]["md5"] == hashlib.md5(server.files["images_000.tar"]).hexdigest()
    assert "dataset=gldv2" in out and not list((folder / "archives").iterdir())

    gt = read_gldv2(folder, "clean", val_fraction=0.34)  # the CSV lists all; 2 of 3 shards are here
    assert sorted(gt.image_names) == sorted(i for n, i in enumerate(IDS) if n % 3 < 2)

    server.requests.clear()  # again: nothing to do; one more shard: only its two files
    assert run("gldv2", tmp_path, server, table, shards=2)[0].downloaded == [] and not server.requests
    more, _ = run("gldv2", tmp_path, server, table, shards=[2])
    assert more.downloaded == ["md5.images_002.txt", "images_002.tar"]
    assert requested(server) == ["md5.images_002.txt", "images_002.tar"]
    assert len(read_gldv2(folder, "clean").image_names) == len(IDS)


def test_a_shard_whose_md5_differs_from_its_published_list_is_refused_and_deleted(tmp_path, server):
    files = gldv2_files(1)
    files["md5.images_000.txt"] = f"{'0' * 32}  images_000.tar\n".encode()
    server.files |= files
    with pytest.raises(DatasetError) as error:
        run("gldv2", tmp_path, server, table_for(files, pin=False), shards=1)
    message = str(error.value)
    assert "images_000.tar failed verification: expected md5 " + "0" * 32 in message
    assert hashlib.md5(files["images_000.tar"]).hexdigest() in message and "md5.images_000.txt" in message
    folder = tmp_path / "gldv2"
    assert not (folder / "archives" / "images_000.tar").exists() and not (folder / "train").exists()

    files["md5.images_000.txt"] = b"<html>not found</html>\n"  # not an md5sum file at all
    server.files |= files
    with pytest.raises(DatasetError, match="holds no md5 sum"):
        run("gldv2", tmp_path / "fresh", server, table_for(files, pin=False), shards=1)
    assert not (
        tmp_path / "fresh" / "gldv2" / "md5sum" / "md5.images_000.txt"
    ).exists()  # fetched again next time


def test_shard_choices_are_checked(tmp_path, server):
    table = table_for({}, pin=False)
    with pytest.raises(DatasetError, match="oxford5k is not sharded"):
        run("oxford5k", tmp_path, server, table, shards=2)
    with pytest.raises(DatasetError, match=r"numbered 0..499; \[500\]"):
        run("gldv2", tmp_path, server, table, shards=[500])
    with pytest.raises(DatasetError, match=r"has 100 shards; give 1..100"):
        run("revisitop1m", tmp_path, server, table, shards=0)


def test_roxford5k_r1m_downloads_both_parts_and_reads_the_distractors(tmp_path, server):
    names = r1m_names(12)
    server.files |= oxford_files() | {"gnd_roxford5k.pkl": gnd_pkl()} | r1m_archives(names, 3)
    table = table_for(server.files)
    report, _ = run("roxford5k+r1m", tmp_path, server, table, shards=2)
    assert report.folder == tmp_path / "revisitop1m"
    assert report.downloaded == ["revisitop1m.txt", "revisitop1m.1.tar.gz", "revisitop1m.2.tar.gz"]
    assert (tmp_path / "revisitop1m" / "jpg" / names[0]).is_file()  # archives unpack into jpg/
    gt = load_revisited_with_distractors(tmp_path / "roxford5k", "roxford5k", tmp_path / "revisitop1m")
    assert gt.image_names[6:] == [n for k, n in enumerate(names) if k % 3 < 2]  # shards 1 and 2
    assert gt.distractors.offset == 6 and len(gt.queries) == 2


@pytest.mark.slow  # a subprocess: the command line as a user types it (Hydra parses the '+')
def test_the_command_line_takes_a_plus_name_and_shards(tmp_path, server):
    names = r1m_names(6)
    files = oxford_files() | {"gnd_roxford5k.pkl": gnd_pkl()} | r1m_archives(names, 2)
    server.files |= files
    for name, data in files.items():  # the real pins are for the real archives: drop them in by hand
        if name.startswith("oxbuild"):
            (tmp_path / "roxford5k" / "archives").mkdir(parents=True)
            (tmp_path / "roxford5k" / "archives" / name).write_bytes(data)
    result = run_script(
        "-m",
        "retrieval.pipelines.download",
        "dataset=roxford5k+r1m",
        "shards=1",
        f"paths.data_dir={tmp_path}",
        f"mirror={server.url}",
        "ignore_pinned=true",
        "quiet=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "revisitop1m" / "shards").iterdir()) == ["revisitop1m.1.txt"]
    listing = run_script("-m", "retrieval.pipelines.download", cwd=tmp_path).stdout
    for source in (
        "train_clean.csv",
        "md5.images_000.txt",
        "images_000.tar",
        "revisitop1m.txt",
        "revisitop1m.1.tar.gz",
    ):
        assert source in listing
