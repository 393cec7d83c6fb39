"""Copies changed the ways models change them: fixed-strength transforms of uint8 images.

A model that copies a training image rarely returns it pixel for pixel: training pipelines
rotate, zoom, crop and flip at random (MONAI's ``RandAffine``, torchvision's ``RandomAffine``),
latent models smooth what they decode, samplers leave noise. These functions make such copies
of known images for the checks whose answer is known: the known-truth study's stand-ins and the
copy eye's retrieval check per transform *family* (:data:`FAMILIES`). They are written with
``scipy.ndimage`` on purpose, apart from the copy embedding's own augmentation (``torch``
``affine_grid``, :mod:`diffmem.attacks.copies`), so a check does not reuse the code it checks.

Every function takes uint8 images (N, H, W) or (N, H, W, C) and a seeded generator and returns
uint8 images of the same shape; geometric ones fill the border from the nearest edge pixel (as
a crop of a larger image would), and draw a direction per image (a rotation's sign, a shift's
direction).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _per_image(images: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn(float image (H, W)) -> (H, W)`` to every image and channel."""
    x = images.astype(np.float64)
    out = np.empty_like(x)
    if x.ndim == 3:
        for i in range(len(x)):
            out[i] = fn(i, x[i])
    else:
        for i in range(len(x)):
            for c in range(x.shape[-1]):
                out[i, ..., c] = fn(i, x[i, ..., c])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _affine(img: np.ndarray, angle_deg: float, zoom: float, dy: float = 0.0,
            dx: float = 0.0) -> np.ndarray:
    """Rotate by ``angle_deg`` and magnify by ``zoom`` about the centre, then move by (dy, dx)
    pixels (bilinear, border from the edge)."""
    from scipy.ndimage import affine_transform

    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / zoom
    centre = (np.array(img.shape) - 1) / 2
    offset = centre - rot @ (centre + np.array([dy, dx]))
    return affine_transform(img, rot, offset=offset, order=1, mode="nearest")


def rotated(degrees: float) -> Transform:
    """Rotated by ± ``degrees`` (sign drawn per image)."""
    def fn(images, rng):
        signs = rng.choice([-1.0, 1.0], len(images))
        return _per_image(images, lambda i, im: _affine(im, signs[i] * degrees, 1.0))
    return fn


def rotated_between(low: float, high: float) -> Transform:
    """Rotated by an angle drawn uniformly from ±[low, high] degrees per image."""
    def fn(images, rng):
        angles = rng.uniform(low, high, len(images)) * rng.choice([-1.0, 1.0], len(images))
        return _per_image(images, lambda i, im: _affine(im, angles[i], 1.0))
    return fn


def zoomed(factor: float) -> Transform:
    """Magnified by ``factor`` about the centre (> 1: a central crop resized up)."""
    return lambda images, rng: _per_image(images, lambda i, im: _affine(im, 0.0, factor))


def shifted(k: int) -> Transform:
    """Moved by k pixels in a random direction (max(|dx|, |dy|) = k), the border from the edge
    (a random crop of a slightly larger image)."""
    def fn(images, rng):
        moves = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
                 if max(abs(dy), abs(dx)) == k]
        picks = [moves[j] for j in rng.integers(len(moves), size=len(images))]
        pad = ((k, k), (k, k)) + ((0, 0),) * (images.ndim - 3)
        h, w = images.shape[1:3]
        out = np.empty_like(images)
        for i, img in enumerate(images):
            dy, dx = picks[i]
            out[i] = np.pad(img, pad, mode="edge")[k - dy:k - dy + h, k - dx:k - dx + w]
        return out
    return fn


def blurred(sigma: float) -> Transform:
    """Gaussian blur of ``sigma`` pixels (a decoder's or an under-trained model's smoothing)."""
    from scipy.ndimage import gaussian_filter

    return lambda images, rng: _per_image(images, lambda i, im: gaussian_filter(
        im, sigma, mode="nearest"))


def noisy(std: float) -> Transform:
    """Gaussian pixel noise of ``std`` grey levels."""
    return lambda images, rng: np.clip(np.round(images + rng.normal(0, std, images.shape)),
                                       0, 255).astype(np.uint8)


def gamma(g: float) -> Transform:
    """Grey levels raised to the power ``g`` on [0, 1] (a contrast curve)."""
    return lambda images, rng: np.clip(np.round(255 * (images / 255.0) ** g), 0,
                                       255).astype(np.uint8)


def down_up(factor: float) -> Transform:
    """Resampled down by ``factor`` and back up (bilinear both ways): detail a decoder loses."""
    from scipy.ndimage import zoom

    def fn(images, rng):
        def one(i, im):
            small = zoom(im, factor, order=1, mode="nearest", grid_mode=True)
            back = zoom(small, np.array(im.shape) / np.array(small.shape), order=1,
                        mode="nearest", grid_mode=True)
            return back[:im.shape[0], :im.shape[1]]
        return _per_image(images, one)
    return fn


def cropped(area: float) -> Transform:
    """A random crop keeping ``area`` of the image (same aspect), resized back to full size."""
    def fn(images, rng):
        h, w = images.shape[1:3]
        z = 1 / np.sqrt(area)
        room = (1 - 1 / z) / 2  # how far the crop's centre may move, as a share of the side
        moves = rng.uniform(-room, room, (len(images), 2)) * np.array([h, w])
        return _per_image(images, lambda i, im: _affine(im, 0.0, z, *(-moves[i] * z)))
    return fn


def mirrored_copy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right mirrored."""
    return np.ascontiguousarray(images[:, :, ::-1])


def elastic(alpha: float, sigma: float) -> Transform:
    """An elastic warp (Simard et al. 2003): every pixel moved by a smooth random field of
    ``alpha`` pixels' strength, smoothed with a Gaussian of ``sigma`` pixels."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    def fn(images, rng):
        h, w = images.shape[1:3]
        fields = [(gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha,
                   gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha)
                  for _ in range(len(images))]
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")

        def one(i, im):
            dy, dx = fields[i]
            return map_coordinates(im, [yy + dy, xx + dx], order=1, mode="nearest")
        return _per_image(images, one)
    return fn


def cutout(share: float) -> Transform:
    """A square of ``share`` of the image's area set to the image's mean grey, at a random
    place."""
    def fn(images, rng):
        h, w = images.shape[1:3]
        side = int(round(np.sqrt(share * h * w)))
        out = images.copy()
        for i in range(len(out)):
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            out[i, y:y + side, x:x + side] = np.round(images[i].mean(axis=(0, 1)))
        return out
    return fn


# The copy eye's retrieval check, one fixed-strength member per family: (name, transform,
# inside the embedding's augmentation ranges?). Those marked False the embedding never trained
# with; they are reported apart. At 28 px a pure 4-px shift is outside them (translations reach
# ±0.12 × 28 = 3.4 px; only a resized crop moves content farther, with a zoom), and so is
# γ = 0.7 (gamma spans 1/1.4 = 0.714 to 1.4).
FAMILIES: list[tuple[str, Transform, bool]] = [
    ("shifted 4 px", shifted(4), False),
    ("rotated 10°", rotated(10), True),
    ("rotated 15°", rotated(15), True),
    ("zoomed 1.2", zoomed(1.2), True),
    ("cropped to 70 % of the area", cropped(0.7), True),
    ("mirrored", mirrored_copy, True),
    ("blurred σ = 1", blurred(1.0), True),
    ("noise of 10 grey levels", noisy(10), True),
    ("gamma 0.7", gamma(0.7), False),
    ("down-up ×0.5", down_up(0.5), True),
    ("elastic warp", elastic(2.0, 3.0), False),
    ("rotated 25°", rotated(25), False),
    ("cutout of 10 %", cutout(0.1), False),
]
