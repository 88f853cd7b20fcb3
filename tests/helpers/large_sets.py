"""Small trees in the exact published layouts of GLDv2 (train set) and revisitop's 1M
distractors, and their published archives (tar shards, md5sum lists), for the readers and
the downloader. Sources of the layouts: see retrieval/data/gldv2_format.py and r1m_format.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def tar(members: dict[str, bytes], gzip: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gldv2_ids(landmarks: int, per_landmark: int, seed: int = 0) -> dict[int, list[str]]:
    """landmark_id -> 16-character hex image ids (GLDv2's landmark ids are sparse integers)."""
    rng = np.random.default_rng(seed)
    return {
        int(1000 + 7 * k): [bytes(rng.integers(0, 256, 8, dtype=np.uint8)).hex() for _ in range(per_landmark)]
        for k in range(landmarks)
    }


def gldv2_layout(image_id: str) -> str:
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def gldv2_metadata(clean: dict[int, list[str]], extra: dict[int, list[str]]) -> dict[str, bytes]:
    """train.csv (id,url,landmark_id) lists clean + extra images; train_clean.csv
    (landmark_id,images) lists the clean ones, space-separated; attribution and categories too."""
    rows = [(i, lm) for lm, ids in clean.items() for i in ids] + [
        (i, lm) for lm, ids in extra.items() for i in ids
    ]

    def text(header: list[str], body: list[list[object]]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue().encode()

    return {
        "train.csv": text(
            ["id", "url", "landmark_id"], [[i, f"https://upload.wikimedia.org/{i}.jpg", lm] for i, lm in rows]
        ),
        "train_clean.csv": text(
            ["landmark_id", "images"], [[lm, " ".join(ids)] for lm, ids in clean.items()]
        ),
        "train_attribution.csv": text(
            ["id", "url", "author", "license", "title"],
            [
                [i, f"https://commons.wikimedia.org/{i}", "someone, 'quoted'", "CC-BY", "a title"]
                for i, _ in rows
            ],
        ),
        "train_label_to_category.csv": text(
            ["landmark_id", "category"],
            [[lm, f"http://commons.wikimedia.org/wiki/Category:L{lm}"] for lm in clean],
        ),
    }


def gldv2_shards(ids: list[str], shards: int) -> dict[str, bytes]:
    """images_NNN.tar (members a/b/c/<id>.jpg, as the official shards unpack into train/) and
    md5.images_NNN.txt (md5sum output) for ``ids`` dealt round-robin over ``shards``."""
    files = {}
    for k in range(shards):
        data = tar({gldv2_layout(i): jpeg(n) for n, i in enumerate(ids) if n % shards == k})
        files[f"images_{k:03d}.tar"] = data
        files[f"md5.images_{k:03d}.txt"] = f"{hashlib.md5(data).hexdigest()}  images_{k:03d}.tar\n".encode()
    return files


def write_gldv2(root: Path, clean: dict[int, list[str]], extra: dict[int, list[str]] | None = None) -> Path:
    """The unpacked layout, as the README's script leaves it: CSVs + train/a/b/c/<id>.jpg."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in gldv2_metadata(clean, extra or {}).items():
        (root / name).write_bytes(data)
    for n, image_id in enumerate(i for ids in [*clean.values(), *(extra or {}).values()] for i in ids):
        path = root / "train" / gldv2_layout(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(n))
    return root


def r1m_names(count: int, seed: int = 0) -> list[str]:
    """Distractor paths relative to jpg/, nested one folder deep."""
    rng = np.random.default_rng(seed)
    return [f"{k % 3}/{bytes(rng.integers(0, 256, 8, dtype=np.uint8)).hex()}.jpg" for k in range(count)]


def r1m_archives(names: list[str], archives: int) -> dict[str, bytes]:
    """revisitop1m.txt and revisitop1m.N.tar.gz (N from 1; members relative to jpg/)."""
    files = {"revisitop1m.txt": "".join(f"{n}\n" for n in names).encode()}
    for k in range(1, archives + 1):
        members = {n: jpeg(100 + i) for i, n in enumerate(names) if i % archives == k - 1}
        files[f"revisitop1m.{k}.tar.gz"] = tar(members, gzip=True)
    return files


def write_r1m(root: Path, names: list[str], list_names: list[str] | None = None) -> Path:
    """revisitop1m.txt (``list_names``, default ``names``) and jpg/<name> for ``names``."""
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    (root / "revisitop1m.txt").write_text("".join(f"{n}\n" for n in (list_names or names)))
    for i, name in enumerate(names):
        path = root / "jpg" / (name if Path(name).suffix else f"{name}.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(100 + i))
    return root
