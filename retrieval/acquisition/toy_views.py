"""One rendered view of a toy landmark: a random camera (scale, rotation, perspective,
framing), occlusion, lighting and sensor changes, and the Oxford label measured from how
much of the landmark stays visible (thresholds in :mod:`retrieval.acquisition.toy`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage.transform import estimate_transform

from retrieval.acquisition.toy_sources import Library, background, resized_to_side

GOOD_VISIBILITY, OK_VISIBILITY, MIN_VISIBLE_AREA = 0.6, 0.25, 0.02


def view_homography(
    rng: np.random.Generator, obj: tuple[int, int], canvas: tuple[int, int], query: bool
) -> np.ndarray:
    """A random camera: scale, rotation, perspective and framing, object -> view pixels.

    Queries are well framed (whole landmark, mild viewpoint change, like Oxford's query
    photos); database views range from small in a big scene to zoomed-in partial crops.
    """
    (w, h), (cw, ch) = obj, canvas
    fit = min(cw / w, ch / h)
    if query:
        scale, angle, persp, shift = fit * rng.uniform(0.6, 0.9), rng.normal(0, 4), 0.05, 0.05
    else:
        # mostly small in a large scene: the background dominates a global descriptor
        scale = fit * np.exp(rng.uniform(np.log(0.2), np.log(0.8)))
        angle, persp, shift = np.clip(rng.normal(0, 15), -45, 45), rng.uniform(0, 0.2), 0.35
    corners = rect_corners(obj)
    centred = (corners - (w / 2, h / 2)) * scale
    t = np.deg2rad(angle)
    rotated = centred @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    span = np.ptp(rotated, axis=0)
    jitter = rng.uniform(-persp, persp, (4, 2)) * span
    centre = np.array([cw, ch]) / 2 + rng.uniform(-shift, shift, 2) * (cw, ch)
    return estimate_transform("projective", corners, rotated + jitter + centre).params


def occluder(rng: np.random.Generator, quad: np.ndarray, canvas: tuple[int, int]) -> Image.Image:
    """A mask ('L', 255 = occluded) of a random blob overlapping the landmark, or empty."""
    mask = Image.new("L", canvas, 0)
    if rng.random() < 0.4:
        lo, hi = quad.min(0), quad.max(0)
        centre = quad.mean(0) + rng.uniform(-0.35, 0.35, 2) * (hi - lo)
        half = rng.uniform(0.15, 0.4, 2) * (hi - lo)
        box = (*(centre - half), *(centre + half))
        draw = ImageDraw.Draw(mask)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=255)
        mask = mask.rotate(rng.uniform(-30, 30), center=tuple(centre), resample=Image.NEAREST)
    return mask


def project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (n, 2) points through the homography ``H``."""
    p = np.c_[pts, np.ones(len(pts))] @ H.T
    return p[:, :2] / p[:, 2:]


def visibility(
    H: np.ndarray, obj: tuple[int, int], canvas: tuple[int, int], occluded: np.ndarray
) -> tuple[float, float]:
    """(fraction of the landmark visible, visible fraction of the image area).

    Counted on a 48x48 grid over the landmark's own surface, so that perspective does not
    weight near parts more than far ones.
    """
    u = (np.arange(48) + 0.5) / 48
    grid = np.stack(np.meshgrid(u * obj[0], u * obj[1]), -1).reshape(-1, 2)
    xy = project(H, grid)
    visible = (xy >= 0).all(1) & (xy[:, 0] < canvas[0]) & (xy[:, 1] < canvas[1])
    xi, yi = xy[visible].astype(int).T
    visible[visible] = occluded[yi, xi] == 0
    quad = project(H, rect_corners(obj))
    area = 0.5 * abs(
        np.dot(quad[:, 0], np.roll(quad[:, 1], 1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], 1))
    )  # shoelace
    fraction = float(visible.mean())
    return fraction, fraction * area / (canvas[0] * canvas[1])


def rect_corners(size: tuple[int, int]) -> np.ndarray:
    return np.array([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]], float)


def photometric(rng: np.random.Generator, im: Image.Image, strength: float) -> Image.Image:
    """Lighting: saturation, contrast, exposure, colour cast, shading gradient, gamma."""
    x = np.asarray(im.convert("RGB"), np.float32) * (1 / 255)
    grey = x.mean(2, keepdims=True)
    saturation = 0.0 if rng.random() < 0.1 * strength else rng.uniform(1 - 0.7 * strength, 1 + 0.4 * strength)
    x = grey + (x - grey) * saturation
    mean = float(x.mean())
    gain = np.exp(rng.normal(0, 0.08 * strength, 3) + rng.uniform(-0.5, 0.35) * strength)
    h, w = x.shape[:2]
    dx, dy = rng.normal(size=2) / (w, h)
    ramp = np.arange(w, dtype=np.float32)[None] * dx + np.arange(h, dtype=np.float32)[:, None] * dy
    shading = 1 + np.float32(rng.uniform(0, 0.4) * strength) * (ramp - ramp.mean())
    x = (x - mean) * rng.uniform(1 - 0.4 * strength, 1 + 0.3 * strength) + mean
    x *= gain.astype(np.float32)
    x *= shading[..., None]
    # Gamma through a lookup table on uint8: a float power over the image costs 3x more.
    gamma = np.exp(rng.normal(0, 0.2 * strength))
    lut = np.round(np.linspace(0, 1, 256) ** gamma * 255).astype(np.uint8)
    return Image.fromarray(lut[(np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)])


def camera_noise(rng: np.random.Generator, im: Image.Image, strength: float) -> Image.Image:
    """Camera: defocus blur and sensor noise."""
    if rng.random() < 0.5 * strength:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    sigma = rng.uniform(0, 6) * strength
    noise = rng.standard_normal((im.height, im.width, 3), dtype=np.float32) * sigma
    return Image.fromarray((np.asarray(im, np.float32) + noise).clip(0, 255).astype(np.uint8))


class View(NamedTuple):
    visibility: float  # fraction of the landmark visible
    area: float  # fraction of the image the visible landmark covers
    bbox: tuple[float, float, float, float]  # the landmark's extent, clipped to the image


def render(
    rng: np.random.Generator, content: Image.Image, lib: Library, canvas: tuple[int, int], query: bool
) -> tuple[Image.Image, View]:
    """Paste a random view of ``content`` into a background; return it with its labels."""
    # Calibrated for an ImageNet network, as users start from one (EfficientNet-Lite0 + GeM,
    # 128 px, queries cropped, classic mAP): with database views at 0.5-2.2x the frame and
    # light 0.6 it scored 0.87 untrained, near the ceiling; small views (0.2-0.8x) in
    # strong light and camera changes bring it to 0.49, and 60 triplet steps of 16 lift
    # two held-out queries per landmark from 0.49 to 0.76.
    light, camera = (0.2, 0.3) if query else (1.0, 1.5)
    H = view_homography(rng, content.size, canvas, query)
    # Pre-shrink with a proper filter: PIL's perspective warp does not antialias.
    shrink = min(1.0, 1.25 * np.sqrt(abs(np.linalg.det(H[:2, :2]))))
    small = resized_to_side(content, max(2, round(max(content.size) * shrink)))
    small = photometric(rng, small, 0.5 * light).convert("RGBA")  # the landmark's own light
    inv = np.linalg.inv(H @ np.diag([1 / shrink, 1 / shrink, 1]))  # view px -> small px
    coeffs = tuple((inv / inv[2, 2]).ravel()[:8])
    warped = small.transform(canvas, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    image = background(rng, lib, canvas)
    image.paste(warped, mask=warped.getchannel("A"))
    quad = project(H, rect_corners(content.size))
    occ = Image.new("L", canvas, 0) if query else occluder(rng, quad, canvas)
    if occ.getbbox():
        image.paste(background(rng, lib, canvas), mask=occ)
    vis, area = visibility(H, content.size, canvas, np.asarray(occ))
    out = camera_noise(rng, photometric(rng, image, light), camera)
    lo, hi = np.clip(quad.min(0), 0, canvas), np.clip(quad.max(0), 0, canvas)
    return out, View(vis, area, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))


def label(view: View) -> str:
    """Oxford's classes from measured visibility (thresholds in the module docstring)."""
    if view.visibility < OK_VISIBILITY or view.area < MIN_VISIBLE_AREA:
        return "junk"
    return "good" if view.visibility >= GOOD_VISIBILITY else "ok"
