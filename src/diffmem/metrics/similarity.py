"""Similarities and nearest neighbours: how close is an image to its nearest training image?

Similarities (higher = closer), on images flattened to D pixels:

* ``cosine``: cosine of mean-centred pixels (each image minus its mean, unit norm). Brightness
  and contrast do not matter; the shape does.
* ``l2``: SIDE's normalised ℓ2 for low-resolution images, 1 − ‖a − b‖₂ / sqrt(D) on pixels in
  [0, 1] (1 = identical, 0 = as far apart as a black and a white image).
* ``rms`` (near-duplicate search only): minus the RMS pixel difference in grey levels (0..255).

**Matching that a small move cannot fool** (:class:`Matching`). A copy moved by one pixel is,
pixel for pixel, further from its original than unrelated images are, and a mirrored copy is
further still; models emit both (random crops and flips in training). So the similarity of a
query to a reference is the best over a small set of transforms: every shift (dx, dy) with
|dx|, |dy| ≤ s, comparing the reference's centre crop (H − 2s) × (W − 2s) with the query's window
at that offset (every transform compares the same pixels' count), and each of them on the
left-right mirrored query too. s = round(2H/28) (2 pixels at 28×28), at most 8. Every set is
matched the same way, generated images and the null alike, so bands calibrated on unseen
images stay calibrated (under "no copying", generated and unseen images are exchangeable
whatever the transform set). ``Matching()`` (no shift, no mirror) is the plain pixel match.

Every audit finds its nearest images here (plain sampling, SIDE, the null, the near-duplicate
groups, the target's and controls' uniqueness filters), so a number and its null are always
computed by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

SIMILARITIES = ("cosine", "l2")


def shift_for(size: int) -> int:
    """The default shift s for images of ``size`` pixels: round(2·size/28), at most 8."""
    return int(min(8, round(2 * size / 28)))


@dataclass(frozen=True)
class Matching:
    """The transforms a match is the best over: shifts up to ``shift`` pixels each way, and the
    left-right mirror when ``mirror`` (see the module docstring)."""

    shift: int = 0
    mirror: bool = False

    @classmethod
    def from_config(cls, cfg: dict | None, size: int) -> Matching:
        """From the config's ``matching`` section (``shift``: a number of pixels or ``auto``;
        ``mirror``) for images of ``size`` pixels."""
        cfg = cfg or {}
        shift = cfg.get("shift", "auto")
        shift = shift_for(size) if shift == "auto" else int(shift)
        if not 0 <= 2 * shift < size - 1:
            raise ValueError(f"matching.shift {shift} leaves no pixels to compare in "
                             f"{size}x{size} images; expected at most {(size - 2) // 2}")
        return cls(shift, bool(cfg.get("mirror", True)))

    def transforms(self) -> list[tuple[int, int, bool]]:
        """(dy, dx, mirrored) of every transform, the identity first."""
        s = self.shift
        shifts = sorted(((dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)),
                        key=lambda d: (abs(d[0]) + abs(d[1]), d))
        return [(dy, dx, flip) for flip in ((False, True) if self.mirror else (False,))
                for dy, dx in shifts]

    @staticmethod
    def describe(transform: tuple[int, int, bool]) -> str:
        dy, dx, flip = transform
        return ("mirrored " if flip else "") + ("as is" if (dy, dx) == (0, 0) else
                                                f"shifted dx={dx:+d} dy={dy:+d}")

    def crop(self, images: np.ndarray) -> np.ndarray:
        """The references' centre crops."""
        s = self.shift
        return images[:, s:images.shape[1] - s, s:images.shape[2] - s] if s else images

    def window(self, images: np.ndarray, transform: tuple[int, int, bool]) -> np.ndarray:
        """The queries' windows under one transform (mirror first, then the shifted window)."""
        dy, dx, flip = transform
        x = mirrored(images) if flip else images
        s, h, w = self.shift, images.shape[1], images.shape[2]
        return x[:, s + dy:h - s + dy, s + dx:w - s + dx] if s else x

    def compared_pixels(self, shape) -> int:
        """How many values one comparison covers (the crop's pixels × channels)."""
        h, w = shape[0] - 2 * self.shift, shape[1] - 2 * self.shift
        return int(h * w * (shape[2] if len(shape) > 2 else 1))


PLAIN_PIXELS = Matching()


def centred_unit(images: np.ndarray) -> np.ndarray:
    """Flatten, subtract each image's mean, scale to unit norm (float32)."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8
    return x


def _features(images: np.ndarray, kind: str) -> np.ndarray:
    if kind == "cosine":
        return centred_unit(images)
    x = images.reshape(len(images), -1).astype(np.float32)
    if kind == "l2":
        return x / 255.0
    if kind == "rms":
        return x
    raise ValueError(f"unknown similarity {kind!r}; expected one of {(*SIMILARITIES, 'rms')}")


def similarity_blocks(queries: np.ndarray, refs: np.ndarray, kind: str, device="cpu",
                      chunk: int = 2048, matching: Matching = PLAIN_PIXELS
                      ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (first query index, similarity block (q, len(refs)), the index into
    ``matching.transforms()`` that gave each similarity) chunk by chunk: the best over the
    transforms, which for plain matching is the one plain similarity."""
    dev = torch.device(device)
    # float64 on the CPU; on a GPU float32, with distances taken after subtracting the
    # references' mean image (it leaves them unchanged and shrinks the norms that cancel)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    r_np = _features(matching.crop(refs), kind)
    centre = r_np.mean(0, keepdims=True) if kind != "cosine" else 0.0
    r = torch.as_tensor(r_np - centre, device=dev, dtype=dtype)
    r_sq = (r ** 2).sum(1)
    dim = r.shape[1]
    transforms = matching.transforms()
    for i in range(0, len(queries), chunk):
        best = which = None
        for j, transform in enumerate(transforms):
            window = matching.window(queries[i:i + chunk], transform)
            q = torch.as_tensor(_features(window, kind) - centre, device=dev, dtype=dtype)
            if kind == "cosine":
                s = (q @ r.T).float()
            else:
                d2 = (q ** 2).sum(1, keepdim=True) + r_sq[None] - 2 * q @ r.T
                rms = (d2.clamp(min=0) / dim).sqrt().float()
                s = (1 - rms) if kind == "l2" else -rms
            if best is None:
                best, which = s, torch.zeros(s.shape, dtype=torch.int64, device=s.device)
            else:
                better = s > best
                best = torch.where(better, s, best)
                which = torch.where(better, torch.full_like(which, j), which)
        yield i, best, which


def nearest(queries: np.ndarray, refs: np.ndarray, *, kind: str = "cosine", top_k: int = 50,
            device="cpu", chunk: int = 2048, matching: Matching = PLAIN_PIXELS) -> dict:
    """The ``top_k`` most similar reference images of every query (descending), each with the
    transform of ``matching`` that matched best (``transform``, an index into ``transforms``).
    With ``kind="l2"`` the ℓ2 distances (pixels in [0, 1]) over the compared pixels are
    (1 − sim)·sqrt(``matching.compared_pixels``)."""
    k = min(top_k, len(refs))
    sims, idx, how = [], [], []
    for _, s, which in similarity_blocks(queries, refs, kind, device, chunk, matching):
        top = s.topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
        how.append(which.gather(1, top.indices).cpu())
    empty = np.zeros((0, k), np.int64)
    return {"sim": torch.cat(sims).numpy() if sims else np.zeros((0, k), np.float32),
            "index": torch.cat(idx).numpy() if idx else empty,
            "transform": torch.cat(how).numpy() if how else empty,
            "transforms": matching.transforms(), "kind": kind}


def nearest_other(queries: np.ndarray, pool: np.ndarray, own: np.ndarray, *,
                  kind: str = "cosine", device="cpu", matching: Matching = PLAIN_PIXELS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, index) of each query's most similar pool image other than its own copy in
    the pool (``own[i]``, its index there; an exact duplicate at another index still counts)."""
    nn_ = nearest(queries, pool, kind=kind, top_k=2, device=device, matching=matching)
    col = (nn_["index"][:, 0] == np.asarray(own)).astype(int)
    rows = np.arange(len(col))
    return nn_["sim"][rows, col], nn_["index"][rows, col]


def subset(nn_: dict, rows) -> dict:
    """The nearest-neighbour record of a subset of the queries."""
    return {k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in nn_.items()}


def mirrored(images: np.ndarray) -> np.ndarray:
    """Left-right mirror images (N, H, W[, C]): what a random-flip training pipeline shows."""
    return np.ascontiguousarray(images[:, :, ::-1])
