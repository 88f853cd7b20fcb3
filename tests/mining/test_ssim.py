"""Fast SSIM (NumPy and torch paths) against skimage.metrics.structural_similarity; the fused
kernel: test_ssim_fused.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from retrieval.mining.ssim import ssim_many_vs_many, ssim_one_vs_many
from retrieval.mining.ssim_stats import ImageStats
from retrieval.mining.ssim_torch import ssim_many_vs_many_torch, ssim_one_vs_many_torch

TOL = 1e-5
SHAPES = [(7, 7), (20, 13), (37, 50), (64, 64), (90, 121)]


def reference(query: np.ndarray, many: np.ndarray, data_range: float) -> np.ndarray:
    axis = -1 if query.ndim == 3 else None
    return np.array([structural_similarity(query, y, data_range=data_range, channel_axis=axis) for y in many])


def image_set(kind: str, shape: tuple[int, ...], rng: np.random.Generator, n: int = 5) -> np.ndarray:
    """Random, constant, extreme (flat black/white halves: worst case for cancellation) and
    smooth (natural-like) uint8 images; the first is the query."""
    images = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    if kind == "constant":
        images[0], images[1], images[2] = 7, 200, 7
    elif kind == "extreme":
        images[:3] = 0
        images[:3, :, shape[1] // 2 :] = 255
        images[1] = 255 - images[1]
    elif kind == "smooth":
        noise = rng.normal(128, 60, (n, *shape))
        sigma = (0, 1.5, 1.5) + (0,) * (len(shape) - 2)
        images = np.clip(gaussian_filter(noise, sigma) * 3 - 256, 0, 255).astype(np.uint8)
        images[1] = np.clip(images[0].astype(int) + rng.integers(-9, 10, shape), 0, 255)
    return images


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "constant", "extreme", "smooth"])
def test_numpy_matches_skimage_grayscale(shape, kind):
    images = image_set(kind, shape, np.random.default_rng(0))
    got = ssim_one_vs_many(images[0], images, 255)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference(images[0], images, 255), rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", [(7, 9), (33, 20), (64, 64)])
@pytest.mark.parametrize("kind", ["random", "extreme", "smooth"])
def test_numpy_matches_skimage_colour(shape, kind):
    images = image_set(kind, (*shape, 3), np.random.default_rng(1))
    np.testing.assert_allclose(
        ssim_one_vs_many(images[0], images, 255),
        reference(images[0], images, 255),
        rtol=0,
        atol=TOL,
    )


@pytest.mark.parametrize("shape", [(20, 13), (50, 37)])
def test_float_images_take_the_float64_path(shape):
    rng = np.random.default_rng(2)
    images = rng.random((4, *shape))
    images[1] = 0.25
    stats = ImageStats.compute(images)
    assert not stats.exact and stats.mean.dtype == np.float64
    np.testing.assert_allclose(
        ssim_one_vs_many(images[0], stats, 1.0),
        reference(images[0], images, 1.0),
        rtol=0,
        atol=1e-10,
    )


def test_stats_are_reusable_and_sliceable():
    images = image_set("smooth", (40, 31), np.random.default_rng(3), n=12)
    stats = ImageStats.compute(images)
    assert stats.exact and len(stats) == 12
    expected = reference(images[4], images, 255)
    scores = ssim_many_vs_many(stats[[4, 0]], stats, 255, chunk=5, workers=2)
    np.testing.assert_allclose(scores[0], expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores[1], reference(images[0], images, 255), rtol=0, atol=TOL)
    # stats of a subset, raw images and a different chunking all give the same numbers
    np.testing.assert_allclose(ssim_one_vs_many(stats[4:5], stats[3:9], 255), expected[3:9], atol=TOL)
    np.testing.assert_allclose(
        ssim_one_vs_many(images[4], images, 255, chunk=1, workers=1), expected, atol=TOL
    )
    threads = ssim_many_vs_many(stats[[4, 0]], stats, 255, chunk=5, workers=2, processes=False)
    np.testing.assert_array_equal(threads, scores)  # same arithmetic, forked or threaded
    done = []
    ssim_one_vs_many(stats[4:5], images, 255, chunk=5, progress=done.append)
    assert sorted(done) == [2, 5, 5]


@pytest.mark.parametrize("kind", ["random", "constant", "extreme", "smooth"])
@pytest.mark.parametrize("shape", [(7, 7), (37, 50), (64, 64)])
def test_torch_on_cpu_matches_skimage(shape, kind):
    """uint8: the exact float32 path, in blocks of 2 queries x 3 images (one short block)."""
    images = image_set(kind, shape, np.random.default_rng(4))
    got = ssim_many_vs_many_torch(images[:3], images, 255, device="cpu", query_batch=2, image_batch=3)
    for i in range(3):
        np.testing.assert_allclose(got[i], reference(images[i], images, 255), rtol=0, atol=TOL)


def test_torch_float_images_take_the_float64_path():
    images = np.random.default_rng(7).random((4, 20, 13))
    images[1] = 0.25
    got = ssim_one_vs_many_torch(images[0], images, 1.0, device="cpu")
    np.testing.assert_allclose(got, reference(images[0], images, 1.0), rtol=0, atol=1e-10)


def test_torch_colour_on_cpu_matches_skimage():
    images = image_set("smooth", (30, 41, 3), np.random.default_rng(5))
    got = ssim_one_vs_many_torch(images[0], images, 255, device="cpu")
    np.testing.assert_allclose(got, reference(images[0], images, 255), rtol=0, atol=TOL)


@st.composite
def quantised_images(draw, max_height: int = 30, max_width: int = 30) -> np.ndarray:
    """3 uint8 images of any size from 7 px up, with 2, 5 or 256 grey levels (flat areas and
    exact ties as well as noise), for every SSIM path's "any size matches skimage" test."""
    h, w = draw(st.integers(7, max_height)), draw(st.integers(7, max_width))
    levels = draw(st.sampled_from([2, 5, 256]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.integers(0, levels, (3, h, w)) * (255 // (levels - 1))).astype(np.uint8)


@settings(max_examples=25, deadline=None)
@given(images=quantised_images())
def test_any_size_matches_skimage(images):
    np.testing.assert_allclose(
        ssim_one_vs_many(images[0], images, 255),
        reference(images[0], images, 255),
        rtol=0,
        atol=TOL,
    )


def test_identity_scores_one_and_bad_inputs_fail():
    images = image_set("smooth", (25, 25), np.random.default_rng(6))
    assert ssim_one_vs_many(images[2], images, 255)[2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="smaller than"):
        ImageStats.compute(np.zeros((2, 6, 30), np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        ssim_one_vs_many(images[0], np.zeros((2, 25, 26), np.uint8), 255)
    with pytest.raises(ValueError, match="do not match"):  # raised in a forked worker
        ssim_one_vs_many(images[0], np.zeros((12, 25, 26), np.uint8), 255, chunk=3)
    with pytest.raises(ValueError, match="data_range"):
        ssim_one_vs_many(images[0], images, 0)
