"""The fingerprinted target: the SAF, a unique target image, the pixel tests at the SAF's known
place, and the unseen controls matched to the target for the boundary search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import DataError
from ...metrics.similarity import PLAIN_PIXELS, Matching, nearest, nearest_other


@dataclass(frozen=True)
class SAF:
    """A synthetic anatomic fingerprint: a constant grey disc, wholly inside the image."""

    cy: int
    cx: int
    radius: float
    grey: float  # in [0, 1]

    def mask(self, size: int) -> np.ndarray:
        yy, xx = np.mgrid[:size, :size]
        return (yy - self.cy) ** 2 + (xx - self.cx) ** 2 <= self.radius**2

    def stamp(self, image: np.ndarray) -> np.ndarray:
        """Return a copy of a uint8 (H, W) or (H, W, C) image with the disc stamped on it."""
        out = image.copy()
        out[self.mask(image.shape[0])] = np.uint8(round(self.grey * 255))
        return out


def random_saf(rng: np.random.Generator, size: int, radius: float, grey: float) -> SAF:
    """Draw a disc centre so that every disc pixel lies inside the image (a margin of ⌈r⌉)."""
    margin = int(np.ceil(radius))
    if 2 * margin >= size:
        raise DataError(f"SAF radius {radius} does not fit in a {size}x{size} image")
    cy, cx = rng.integers(margin, size - margin, size=2)
    return SAF(int(cy), int(cx), float(radius), float(grey))


def unique_target(train_all: np.ndarray, heldout: np.ndarray, indices: np.ndarray,
                  rng: np.random.Generator, max_twin_similarity: float,
                  chunk: int = 256, matching: Matching = PLAIN_PIXELS) -> tuple[int, dict]:
    """A seeded target among the subset whose most similar other image in train ∪ held-out (clean
    images, Pearson correlation = cosine of mean-centred pixels, at the best transform of
    ``matching``) is below ``max_twin_similarity``; returns its position in the subset and that
    nearest image.

    A target with a near-identical twin cannot test reproduction of one image: the model learns
    the patient from the clean twins and reproduces it without the disc (seed 0 on BreastMNIST
    drew an image with three frames at Pearson 0.999, 0.995 and 0.991)."""

    pool = np.concatenate([train_all, heldout])
    order = rng.permutation(len(indices))
    for start in range(0, len(order), chunk):
        pos = order[start:start + chunk]
        sims, idx = nearest_other(train_all[indices[pos]], pool, indices[pos],
                                  matching=matching)
        for p, sim, i in zip(pos, sims, idx, strict=True):
            if sim < max_twin_similarity:
                i = int(i)
                where = ("train", i) if i < len(train_all) else ("heldout", i - len(train_all))
                return int(p), {"split": where[0], "index": where[1], "similarity": float(sim)}
    raise DataError(f"no training image is unique: every image of the subset has another image "
                    f"in train ∪ held-out at Pearson similarity ≥ saf.max_twin_similarity = "
                    f"{max_twin_similarity}; raise it (at most 1)")


def disc_strength(samples: np.ndarray, saf: np.ndarray, original: np.ndarray,
                  mask: np.ndarray) -> np.ndarray:
    """How much of the SAF each sample carries at the SAF's known place, in [0, 1].

    Inside the disc, d_saf = mean |y − x_SAF| and d_orig = mean |y − x*| (x* the clean
    original); strength = d_orig / (d_orig + d_saf): 1 where the disc is reproduced exactly,
    0 where the sample shows the clean original there, ~α for a disc blended in at strength α.
    A pixel test that needs the auditor's knowledge of the disc, reported beside the
    classifiers (whose C_SAF must find discs anywhere) to show faint discs C_SAF misses.
    """
    m = mask.astype(bool)
    y = samples.astype(np.float32)[:, m]  # (N, disc pixels[, C])
    y = y.reshape(len(samples), -1)
    d_saf = np.abs(y - saf.astype(np.float32)[m].reshape(1, -1)).mean(1)
    d_orig = np.abs(y - original.astype(np.float32)[m].reshape(1, -1)).mean(1)
    return d_orig / np.maximum(d_orig + d_saf, 1e-6)


def pixel_reproduction(images: np.ndarray, saf: np.ndarray, original: np.ndarray,
                       mask: np.ndarray, mae_bar: float) -> np.ndarray:
    """Ground truth of the detector check: the image carries the disc at the SAF's place
    (:func:`disc_strength` ≥ 0.5) and is closer to x_SAF (MAE, [0, 1] pixels) than any unseen
    real image is (``mae_bar``)."""
    strength = disc_strength(images, saf, original, mask)
    return (strength >= 0.5) & (mae_to(images, saf) < mae_bar)


def mae_to(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return np.abs(flat - ref.reshape(1, -1).astype(np.float32) / 255.0).mean(1)


def select_controls(original: np.ndarray, train: np.ndarray, target_pos: int,
                    heldout: np.ndarray, others: np.ndarray, k: int, limit: float,
                    device="cpu", matching: Matching = PLAIN_PIXELS) -> dict:
    """``k`` held-out images to run the boundary search from beside the target.

    Candidates pass the target's uniqueness filter (no other image of train ∪ unused train ∪
    held-out at Pearson ≥ ``limit``) and are matched to the target on their similarity to the
    nearest training image (the target's: to the training images other than x_SAF), closest
    first, so target and controls are equally typical of the training set. Similarities are
    the best over ``matching``'s transforms, as the target's own filter."""
    rest = np.delete(train, target_pos, axis=0)
    kw = dict(kind="cosine", device=device, matching=matching)
    target_nn = float(nearest(original[None], rest, top_k=1, **kw)["sim"][0, 0])
    pool = np.concatenate([train, others, heldout])
    own = len(train) + len(others) + np.arange(len(heldout))
    twin_sim, _ = nearest_other(heldout, pool, own, **kw)
    candidates = np.flatnonzero(twin_sim < limit)
    nn_train = nearest(heldout[candidates], train, top_k=1, **kw)["sim"][:, 0]
    order = np.argsort(np.abs(nn_train - target_nn), kind="stable")[:k]
    return {"heldout_index": candidates[order], "nn_similarity": nn_train[order],
            "target_nn_similarity": target_nn, "candidates": int(len(candidates))}
