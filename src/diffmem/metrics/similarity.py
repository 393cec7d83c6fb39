"""Similarities and nearest neighbours: how close is an image to its nearest training image?

Similarities (higher = closer), on images flattened to D pixels:

* ``cosine``: cosine of mean-centred pixels (each image minus its mean, unit norm). Brightness
  and contrast do not matter; the shape does.
* ``l2``: SIDE's normalised ℓ2 for low-resolution images, 1 − ‖a − b‖₂ / sqrt(D) on pixels in
  [0, 1] (1 = identical, 0 = as far apart as a black and a white image).
* ``rms`` (near-duplicate search only): minus the RMS pixel difference in grey levels (0..255).

Every audit finds its nearest images here (plain sampling, SIDE, the null, the near-duplicate
groups, the target's and controls' uniqueness filters), so a number and its null are always
computed by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

SIMILARITIES = ("cosine", "l2")


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
                      chunk: int = 2048) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first query index, similarity block (q, len(refs))) chunk by chunk."""
    dev = torch.device(device)
    # float64 on the CPU; on a GPU float32, with distances taken after subtracting the
    # references' mean image (it leaves them unchanged and shrinks the norms that cancel)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    r_np = _features(refs, kind)
    shift = r_np.mean(0, keepdims=True) if kind != "cosine" else 0.0
    r = torch.as_tensor(r_np - shift, device=dev, dtype=dtype)
    r_sq = (r ** 2).sum(1)
    dim = r.shape[1]
    for i in range(0, len(queries), chunk):
        q = torch.as_tensor(_features(queries[i:i + chunk], kind) - shift, device=dev,
                            dtype=dtype)
        if kind == "cosine":
            yield i, (q @ r.T).float()
            continue
        d2 = (q ** 2).sum(1, keepdim=True) + r_sq[None] - 2 * q @ r.T
        rms = (d2.clamp(min=0) / dim).sqrt().float()
        yield i, (1 - rms) if kind == "l2" else -rms


def nearest(queries: np.ndarray, refs: np.ndarray, *, kind: str = "cosine", top_k: int = 50,
            device="cpu", chunk: int = 2048, mirror: bool = False) -> dict:
    """The ``top_k`` most similar reference images of every query (descending). With
    ``kind="l2"`` the ℓ2 distances (pixels in [0, 1]) are (1 − sim)·sqrt(D).

    ``mirror``: a reference also matches in its left-right mirror image (a model trained with
    random flips saw both); the similarity to reference j is then the larger of the two.
    Mirroring the query instead of the reference gives the same similarity."""
    k = min(top_k, len(refs))
    sims, idx = [], []
    if mirror:
        flipped = similarity_blocks(mirrored(queries), refs, kind, device, chunk)
    else:
        flipped = None
    for _, s in similarity_blocks(queries, refs, kind, device, chunk):
        if flipped is not None:
            s = torch.maximum(s, next(flipped)[1])
        top = s.topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    return {"sim": torch.cat(sims).numpy() if sims else np.zeros((0, k), np.float32),
            "index": torch.cat(idx).numpy() if idx else np.zeros((0, k), np.int64),
            "kind": kind}


def nearest_other(queries: np.ndarray, pool: np.ndarray, own: np.ndarray, *,
                  kind: str = "cosine", device="cpu", mirror: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, index) of each query's most similar pool image other than its own copy in
    the pool (``own[i]``, its index there; an exact duplicate at another index still counts)."""
    nn_ = nearest(queries, pool, kind=kind, top_k=2, device=device, mirror=mirror)
    col = (nn_["index"][:, 0] == np.asarray(own)).astype(int)
    rows = np.arange(len(col))
    return nn_["sim"][rows, col], nn_["index"][rows, col]


def subset(nn_: dict, rows) -> dict:
    """The nearest-neighbour record of a subset of the queries."""
    return {k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in nn_.items()}


def mirrored(images: np.ndarray) -> np.ndarray:
    """Left-right mirror images (N, H, W[, C]): what a random-flip training pipeline shows."""
    return np.ascontiguousarray(images[:, :, ::-1])
