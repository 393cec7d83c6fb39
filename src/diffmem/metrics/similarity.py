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
    def describe(transform: tuple[int, int, bool] | str) -> str:
        if isinstance(transform, str):  # the copy embedding's one "transform"
            return transform
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


def embedding_nearest(q_emb: np.ndarray, r_emb: np.ndarray, *, top_k: int = 50,
                      device="cpu", chunk: int = 4096) -> dict:
    """Nearest references by the cosine of precomputed L2-normalised embeddings (the learned
    copy eye, :mod:`diffmem.attacks.copies`): the same record as :func:`nearest`, one
    "transform" (the embedding)."""
    dev = torch.device(device)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    r = torch.as_tensor(np.asarray(r_emb), device=dev, dtype=dtype)
    k = min(top_k, len(r))
    sims, idx = [], []
    for i in range(0, len(q_emb), chunk):
        q = torch.as_tensor(np.asarray(q_emb[i:i + chunk]), device=dev, dtype=dtype)
        top = (q @ r.T).float().topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    sim = torch.cat(sims).numpy() if sims else np.zeros((0, k), np.float32)
    index = torch.cat(idx).numpy() if idx else np.zeros((0, k), np.int64)
    return {"sim": sim, "index": index, "transform": np.zeros_like(index),
            "transforms": [EMBEDDING], "kind": "embedding"}


EMBEDDING = "embedding"  # the one "transform" of the learned eye's matches


@dataclass(frozen=True)
class EyeCalibration:
    """The calibration half of the null under each eye: every calibration image's
    nearest-training similarity by the pixel match (``pixel``) and by the embedding
    (``embedding``), in the same order."""

    pixel: np.ndarray
    embedding: np.ndarray

    def __post_init__(self):
        if len(self.pixel) != len(self.embedding) or len(self.pixel) < 2:
            raise ValueError("both eyes' calibration similarities are needed, for the same "
                             "calibration images (at least 2)")


def combined_nearest(queries: np.ndarray, refs: np.ndarray, q_emb: np.ndarray,
                     r_emb: np.ndarray, cal: EyeCalibration, *, kind: str = "cosine",
                     matching: Matching = PLAIN_PIXELS, top_k: int = 50, device="cpu",
                     chunk: int = 1024, own: np.ndarray | None = None) -> dict:
    """Both eyes at once, per (query, reference) pair: c = max(R_pix(s_pix), R_emb(s_emb)),
    where R is the calibration images' empirical CDF of that eye's nearest-training similarity,
    R(s) = #{calibration ≤ s} / n. So each eye is read in one currency, "how unusual is this
    closeness for an image the model never saw", and a pair is as close as its more unusual eye
    says. For the calibration images themselves (``own``: their row in ``cal``, one per query)
    the CDF leaves the image out, R(s) = (#{calibration ≤ s} − [own ≤ s]) / (n − 1), so their
    scores are not in-sample.

    Returns :func:`nearest`'s record ordered by c (ties by the other eye's R), plus per pair
    ``pixel_sim``, ``embedding_sim`` (the raw similarities), ``eye`` (0: the pixel match's R is
    the larger, 1: the embedding's, 2: equal) and ``transform`` (the pixel match's)."""
    dev = torch.device(device)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    n = len(cal.pixel)
    cal_p = torch.as_tensor(np.sort(cal.pixel), device=dev, dtype=torch.float32)
    cal_e = torch.as_tensor(np.sort(cal.embedding), device=dev, dtype=torch.float32)
    r = torch.as_tensor(np.asarray(r_emb), device=dev, dtype=dtype)
    k = min(top_k, len(refs))
    keep = {name: [] for name in ("sim", "index", "transform", "pixel_sim", "embedding_sim",
                                  "eye")}
    for i, s_pix, which in similarity_blocks(queries, refs, kind, device, chunk, matching):
        rows = slice(i, i + len(s_pix))
        s_emb = (torch.as_tensor(np.asarray(q_emb[rows]), device=dev, dtype=dtype) @ r.T).float()
        c_pix = torch.searchsorted(cal_p, s_pix.contiguous(), right=True)
        c_emb = torch.searchsorted(cal_e, s_emb.contiguous(), right=True)
        denom = n
        if own is not None:  # leave the calibration image itself out of its own CDF
            o = torch.as_tensor(np.asarray(own[rows]), device=dev)
            own_p = torch.as_tensor(cal.pixel, device=dev, dtype=torch.float32)[o][:, None]
            own_e = torch.as_tensor(cal.embedding, device=dev, dtype=torch.float32)[o][:, None]
            c_pix = c_pix - (own_p <= s_pix).long()
            c_emb = c_emb - (own_e <= s_emb).long()
            denom = n - 1
        hi, lo = torch.maximum(c_pix, c_emb), torch.minimum(c_pix, c_emb)
        key = hi.double() * (n + 1) + lo.double()
        top = key.topk(k, dim=1)
        j = top.indices
        keep["sim"].append((hi.gather(1, j).double() / denom).float().cpu())
        keep["index"].append(j.cpu())
        keep["transform"].append(which.gather(1, j).cpu())
        keep["pixel_sim"].append(s_pix.gather(1, j).cpu())
        keep["embedding_sim"].append(s_emb.gather(1, j).cpu())
        cp, ce = c_pix.gather(1, j), c_emb.gather(1, j)
        keep["eye"].append(torch.where(cp > ce, 0, torch.where(ce > cp, 1, 2)).cpu())
    out = {name: (torch.cat(v).numpy() if v else np.zeros((0, k), np.float32 if name in (
        "sim", "pixel_sim", "embedding_sim") else np.int64)) for name, v in keep.items()}
    return out | {"transforms": matching.transforms(), "kind": "combined"}


def twins_of_both_eyes(queries: np.ndarray, refs: np.ndarray, q_emb: np.ndarray,
                       r_emb: np.ndarray, *, pixel_cosine: float, embedding: float,
                       matching: Matching = PLAIN_PIXELS, device="cpu",
                       chunk: int = 1024) -> np.ndarray:
    """Which queries both eyes put at one reference: cosine of mean-centred pixels (at the best
    transform of ``matching``) at least ``pixel_cosine`` *and* embedding cosine at least
    ``embedding`` with the same reference image. Brightness and contrast do not enter either,
    so this finds a patient's other frames that an RMS twin rule misses when their grey levels
    differ; the pixel condition keeps anything that is not near-identical to a training image
    out, however the embedding maps it."""
    dev = torch.device(device)
    r = torch.as_tensor(np.asarray(r_emb), device=dev, dtype=torch.float32)
    out = np.zeros(len(queries), bool)
    for i, s_pix, _ in similarity_blocks(queries, refs, "cosine", device, chunk, matching):
        rows = slice(i, i + len(s_pix))
        s_emb = torch.as_tensor(np.asarray(q_emb[rows]), device=dev, dtype=torch.float32) @ r.T
        out[rows] = ((s_pix >= pixel_cosine) & (s_emb >= embedding)).any(1).cpu().numpy()
    return out


EYES = ("pixels", "embedding", "both")  # the ``eye`` codes of :func:`combined_nearest`


def subset(nn_: dict, rows) -> dict:
    """The nearest-neighbour record of a subset of the queries."""
    return {k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in nn_.items()}


def mirrored(images: np.ndarray) -> np.ndarray:
    """Left-right mirror images (N, H, W[, C]): what a random-flip training pipeline shows."""
    return np.ascontiguousarray(images[:, :, ::-1])
