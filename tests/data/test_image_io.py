"""Every kind of image file decodes to 8-bit RGB; damaged and oversized files are refused,
and a dataset indexes around them with a warning that names them."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.data import image_checks
from retrieval.data.class_formats import read_class_folders
from retrieval.data.image_checks import decode_problem, find_undecodable
from retrieval.data.image_io import image_problem, load_rgb
from retrieval.data.landmark_formats import load_classic_ground_truth
from tests.helpers.vgg import write_vgg

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image, **params) -> Path:
    image.save(path, **params)
    return path


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "gray_png", "palette_alpha_png", "rgba_png", "gray16_png"])
def test_every_mode_loads_as_rgb(tmp_path, kind):
    base = Image.fromarray(RGB)
    gray = RGB.mean(axis=2).astype(np.uint8)
    path, expected = {
        "cmyk_jpeg": (lambda: (_save(tmp_path / "a.jpg", base.convert("CMYK"), quality=100), RGB)),
        "gray_png": (lambda: (_save(tmp_path / "a.png", Image.fromarray(gray)), np.dstack([gray] * 3))),
        "palette_alpha_png": (
            lambda: (
                _save(tmp_path / "a.png", base.convert("P"), transparency=0),
                np.asarray(base.convert("P").convert("RGB")),
            )
        ),
        "rgba_png": (lambda: (_save(tmp_path / "a.png", base.convert("RGBA")), RGB)),
        # 16-bit: Pillow's convert("RGB") clips at 255; we scale 0..65535 to 0..255
        "gray16_png": (
            lambda: (
                _save(tmp_path / "a.png", Image.fromarray(gray.astype(np.uint16) * 257)),
                np.dstack([gray] * 3),
            )
        ),
    }[kind]()
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (32, 24)
    tolerance = 12 if kind == "cmyk_jpeg" else 1  # JPEG is lossy
    assert np.abs(np.asarray(image, dtype=int) - expected.astype(int)).mean() <= tolerance


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header announcing width x height pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    return path


# 500 MP: over the 400 MP limit (Pillow only warns); 900 MP: over twice it (Pillow refuses)
@pytest.mark.parametrize("width,height", [(20_000, 25_000), (30_000, 30_000)])
def test_decompression_bombs_are_refused_not_decoded(tmp_path, width, height):
    bomb = _huge_png(tmp_path / "bomb.png", width, height)
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(bomb)
    assert "pixel limit" in image_problem(bomb)


def test_damaged_files_are_diagnosed(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "good.jpg").write_bytes(buffer.getvalue())
    assert "truncated" in image_problem(tmp_path / "cut.jpg")
    assert image_problem(tmp_path / "empty.jpg") == "empty file"
    assert "cannot identify" in image_problem(tmp_path / "text.jpg")
    assert image_problem(tmp_path / "good.jpg") is None


def test_paris_corrupt_images_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    root = write_vgg(tmp_path / "paris6k", nested=True, prefix="")
    (root / "jpg" / "paris" / "random" / "random_000001.jpg").write_bytes(b"")  # a distractor
    junk = root / "jpg" / "paris" / "arch" / "arch_000003.jpg"  # junk of the arch queries
    junk.write_bytes(junk.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        gt = load_classic_ground_truth(root, name="paris6k")
    assert "skipped 2 unreadable image(s)" in caplog.text
    assert "random_000001 (empty file)" in caplog.text and "arch_000003 (truncated" in caplog.text
    assert "random_000001" not in gt.image_names and "arch_000003" not in gt.image_names
    assert len(gt.image_names) == 9
    arch = gt.queries[0]
    assert arch.junk.size == 0 and arch.good.size == 2  # the damaged junk image left the lists


def test_an_unreadable_query_image_is_an_error_naming_it(tmp_path):
    root = write_vgg(tmp_path / "oxford5k")
    (root / "jpg" / "arch_000000.jpg").write_text("garbage")
    with pytest.raises(
        Exception, match="arch_1_query.txt:1 names query image 'arch_000000', which is unreadable"
    ):
        load_classic_ground_truth(root, name="oxford5k")


def _damaged_jpeg(path: Path) -> Path:
    """A JPEG whose entropy-coded data is overwritten in the middle: header and end marker
    intact, as a bad sector or a flipped download leaves it (this damage makes Pillow raise
    "broken data stream"; some other byte patterns libjpeg decodes with a warning only)."""
    smooth = np.linspace(0, 255, 256)[None, :, None] * np.ones((192, 1, 3))
    pixels = (smooth * 0.7 + np.random.default_rng(1).normal(0, 30, smooth.shape)).clip(0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_jpeg_with_damaged_data_is_found_by_decoding_once(tmp_path, monkeypatch):
    damaged = _damaged_jpeg(tmp_path / "damaged.jpg")
    good = _save(tmp_path / "good.jpg", Image.fromarray(RGB))
    assert image_problem(damaged) is None  # the header check alone lets it through
    with pytest.raises(OSError):
        load_rgb(damaged)
    assert decode_problem(damaged).startswith("damaged image data")
    assert find_undecodable([damaged, good], tmp_path) == {damaged: decode_problem(damaged)}

    decoded: list[Path] = []

    def counting(path: Path) -> str | None:
        decoded.append(path)
        return decode_problem(path)

    monkeypatch.setattr(image_checks, "decode_problem", counting)
    assert list(find_undecodable([damaged, good], tmp_path)) == [damaged]
    assert decoded == []  # remembered: nothing decoded again
    _save(good, Image.fromarray(RGB[::-1]), quality=50)  # a changed file is checked again
    assert list(find_undecodable([damaged, good], tmp_path)) == [damaged] and decoded == [good]
    image_checks.checks_file(tmp_path).write_text("{not json")  # a damaged record: check all again
    assert list(find_undecodable([damaged, good], tmp_path)) == [damaged] and len(decoded) == 3


def test_damaged_jpegs_leave_landmark_and_class_sets_with_a_warning(tmp_path, caplog):
    root = write_vgg(tmp_path / "oxford5k")
    _damaged_jpeg(root / "jpg" / "random_000001.jpg")
    classes = tmp_path / "classes"
    for label in ("cats", "dogs"):
        for i in range(3):
            (classes / label).mkdir(parents=True, exist_ok=True)
            _save(classes / label / f"{i}.jpg", Image.fromarray(RGB))
    _damaged_jpeg(classes / "dogs" / "1.jpg")
    with caplog.at_level(logging.WARNING):
        landmarks = load_classic_ground_truth(root, name="oxford5k")
        folder = read_class_folders(classes)
    assert "random_000001" not in landmarks.image_names
    assert landmarks.skipped and landmarks.skipped[0].startswith("random_000001 (damaged image data")
    assert "dogs/1.jpg" not in folder.image_names and len(folder.image_names) == 5
    assert (
        "random_000001 (damaged image data" in caplog.text and "dogs/1.jpg (damaged image data" in caplog.text
    )
