"""The fused Numba SSIM kernel against skimage.metrics.structural_similarity, and flat
images up to 2048**2 on both CPU paths (the float32-accumulation case)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from skimage.metrics import structural_similarity

from retrieval.mining.ssim import ssim_many_vs_many
from retrieval.mining.ssim_stats import K1
from tests.mining.test_ssim import SHAPES, TOL, image_set, quantised_images, reference

fused = pytest.importorskip("retrieval.mining.ssim_fused")


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """Compile once (~16 s of CPU on a fresh machine; ~1 s from Numba's cache), in setup."""
    assert fused.fused_kernel_works()


def scores(queries: np.ndarray, many: np.ndarray, **kw) -> np.ndarray:
    return fused.ssim_many_vs_many_fused(queries, many, 255, multichannel=many.ndim == 4, **kw)


def assert_matches(queries: np.ndarray, many: np.ndarray, got: np.ndarray) -> None:
    assert got.dtype == np.float64 and got.shape == (len(queries), len(many))
    for i, query in enumerate(queries):
        np.testing.assert_allclose(got[i], reference(query, many, 255), rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "constant", "extreme", "smooth"])
def test_fused_matches_skimage_grayscale(shape, kind):
    images = image_set(kind, shape, np.random.default_rng(0))
    assert_matches(images[:2], images, scores(images[:2], images))


@pytest.mark.parametrize("shape", [(7, 9), (33, 20), (64, 64)])
@pytest.mark.parametrize("kind", ["random", "extreme", "smooth"])
def test_fused_matches_skimage_colour(shape, kind):
    images = image_set(kind, (*shape, 3), np.random.default_rng(1))
    assert_matches(images[:2], images, scores(images[:2], images))


def test_blocks_tiles_and_threads_do_not_change_a_score():
    """More images than a group, more rows than a tile (the running sums carried across
    tiles), prepared or raw queries, 1 or 2 threads: the same numbers, bit for bit."""
    images = image_set("smooth", (fused.TILE_ROWS * 2 + 11, 29), np.random.default_rng(2), n=fused.GROUP + 5)
    prepared = fused.prepare_queries(images[:3])
    one = scores(prepared, images, threads=1)
    np.testing.assert_array_equal(scores(images[:3], images, threads=2), one)
    np.testing.assert_array_equal(scores(prepared, images[5:], threads=2), one[:, 5:])
    assert_matches(images[:3], images, one)


@settings(max_examples=20, deadline=None)
@given(images=quantised_images(max_height=40))
def test_any_size_matches_skimage(images):
    assert_matches(images[:1], images, scores(images[:1], images))


def test_bad_inputs_fail():
    images = np.zeros((2, 20, 20), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        scores(images.astype(np.float32), images)
    with pytest.raises(ValueError, match="do not match"):
        scores(images, np.zeros((2, 20, 21), np.uint8))
    with pytest.raises(ValueError, match="smaller than"):
        scores(images[:, :6], images[:, :6])


def flat_set(side: int) -> np.ndarray:
    """Constant images (7, 200) and a near-constant one (200 with a sparse grid of 201s)."""
    images = np.full((3, side, side), 200, np.uint8)
    images[0] = 7
    images[2, ::97, ::89] = 201
    return images


def constant_ssim(a: float, b: float) -> float:
    """skimage's SSIM of two constant images: variances and covariance are 0, so each
    window's value is (2ab + C1) / (a**2 + b**2 + C1)."""
    c1 = (K1 * 255) ** 2
    return (2 * a * b + c1) / (a * a + b * b + c1)


@pytest.mark.parametrize("side", [500, 1024, pytest.param(2048, marks=pytest.mark.slow)])  # 2048: 3-9 s
def test_flat_images_up_to_2048_on_both_cpu_paths(side):
    """The case that float32 accumulation got wrong (1.9e-5 at 2048**2). Pairs of constant
    images have a closed form; the near-constant image against the others is skimage's."""
    images = flat_set(side)
    near = [structural_similarity(images[2], images[j], data_range=255) for j in (0, 1)]
    expected = np.array([[1.0, constant_ssim(7, 200), near[0]], [near[0], near[1], 1.0]])
    np.testing.assert_allclose(scores(images[[0, 2]], images), expected, rtol=0, atol=TOL)
    numpy_path = ssim_many_vs_many(images[[0, 2]], images[1:2], 255, workers=1)  # its cost grows fast
    np.testing.assert_allclose(numpy_path, expected[:, 1:2], rtol=0, atol=TOL)
