"""AMS/UMS on similarity bands and Carlini et al.'s extraction criterion.

AMS/UMS on a band [lo, hi) of similarity (SIDE, Chen et al., arXiv 2410.02467, latest version):
AMS = share of scored images whose nearest training image lies in the band; UMS = number of
distinct training images j with sim(x_i, x_j) in the band for some scored x_i, divided by the
number of scored images (so UMS can exceed AMS). We count *groups* of near-duplicate training
images rather than images, so four frames of one patient count once, and look for the j among
each image's ``top_k`` nearest training images (``top_k`` is stated in the output).

Bands are calibrated on unseen real images: a band edge at quantile q is the q-quantile of the
nearest-training similarity of unseen images (the calibration half of the null), capped so at
least ``min_tail`` calibration images lie above the high edge (the null's size cannot resolve a
rarer tail). The other half of the null is then scored like any generated set.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .similarity import PLAIN_PIXELS, Matching, nearest

BAND_NAMES = ("low", "mid", "high")


def calibrate_bands(null_sim: np.ndarray, quantiles, min_tail: int = 5) -> dict:
    """Band edges at quantiles of unseen images' nearest-training similarity.

    Each quantile is capped at 1 − min_tail/n: with n calibration images a tail rarer than
    min_tail/n cannot be told from zero, so "high" never means more than the null resolves."""
    n = len(null_sim)
    if n < 2 * min_tail:
        raise ValueError(f"{n} unseen images cannot calibrate similarity bands (need at least "
                         f"{2 * min_tail}); add held-out images or set scoring.fixed_bands")
    cap = 1 - min_tail / n
    used = [float(min(q, cap)) for q in quantiles]
    edges = [float(np.quantile(null_sim, q, method="higher")) for q in used]
    return {"edges": edges, "quantiles": [float(q) for q in quantiles], "quantiles_used": used,
            "calibration_images": int(n), "kind": "quantiles of unseen images"}


def reference_bands(train: np.ndarray, groups: np.ndarray, quantiles, *, kind: str,
                    min_tail: int = 5, device="cpu", matching: Matching = PLAIN_PIXELS) -> dict:
    """Band edges without unseen images: quantiles of each training image's similarity to its
    nearest training image of *another* near-duplicate group (leave-one-out), capped as in
    :func:`calibrate_bands`. For exchangeable images this approximates what an unseen image
    would score, but the model saw every one of them, so it is a reference, not a null."""
    nn_ = nearest(train, train, kind=kind, top_k=min(50, len(train)), device=device,
                  matching=matching)
    other = np.asarray(groups)[nn_["index"]] != np.asarray(groups)[:, None]
    has = other.any(1)
    sims = nn_["sim"][np.arange(len(train)), other.argmax(1)][has]
    try:
        bands = calibrate_bands(sims, quantiles, min_tail)
    except ValueError:
        raise ValueError(f"{len(sims)} training images with a neighbour of another group cannot "
                         f"set similarity bands without held-out images (need at least "
                         f"{2 * min_tail}); add held-out images or set scoring.fixed_bands"
                         ) from None
    return bands | {"kind": "quantiles of training images' similarity to their nearest "
                            "training image of another group (no unseen images: a reference, "
                            "not a null)"}


def fixed_bands(edges) -> dict:
    return {"edges": [float(e) for e in edges], "quantiles": None, "quantiles_used": None,
            "calibration_images": 0, "kind": "fixed"}


def band_intervals(edges) -> list[tuple[float, float]]:
    """low [e0, e1), mid [e1, e2), high [e2, ∞)."""
    e = list(edges)
    return [(e[0], e[1]), (e[1], e[2]), (e[2], math.inf)]


def in_band(sim: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return (sim >= band[0]) & (sim < band[1])


def band_scores(nn_: dict, groups: np.ndarray, edges) -> dict:
    """AMS and UMS (distinct training groups) of the scored images on each band; NaN where a
    similarity has no bands (``edges`` None: the copy embedding without unseen images)."""
    out = {}
    n = len(nn_["sim"])
    if edges is None:
        return {f"{m}_{name}": float("nan") for name in BAND_NAMES for m in ("ams", "ums")}
    for name, band in zip(BAND_NAMES, band_intervals(edges), strict=True):
        hit = in_band(nn_["sim"][:, 0], band) if n else np.zeros(0, bool)
        matched = nn_["index"][in_band(nn_["sim"], band)] if n else np.zeros(0, int)
        out[f"ams_{name}"] = float(hit.mean()) if n else 0.0
        out[f"ums_{name}"] = float(len(np.unique(groups[matched])) / n) if n else 0.0
    return out


def carlini_extracted(l2_nearest: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Carlini et al. (2023): ℓ2 to the nearest / (α · mean ℓ2 to the n nearest) < δ."""
    ratio = l2_nearest[:, 0] / (alpha * l2_nearest.mean(1) + 1e-12)
    return ratio < delta


def set_scores(nn_: dict, l2_nn: dict | None, groups: np.ndarray, edges, carlini: dict) -> dict:
    """Every per-set score of one similarity: band AMS/UMS, Carlini rate and distinct groups."""
    s = band_scores(nn_, groups, edges)
    n = len(nn_["sim"])
    s["mean_nn_similarity"] = float(nn_["sim"][:, 0].mean()) if n else float("nan")
    if l2_nn is not None:
        ex = carlini_extracted(l2_nn["l2_nearest"], carlini["alpha"], carlini["delta"]) if n \
            else np.zeros(0, bool)
        s["carlini_rate"] = float(ex.mean()) if n else 0.0
        s["carlini_unique"] = int(len(np.unique(groups[l2_nn["index"][ex, 0]]))) if n else 0
    return s


def equal_size(score_fn: Callable[[np.ndarray], dict], n: int, m: int, repeats: int,
               rng: np.random.Generator) -> dict:
    """Mean of ``score_fn(rows)`` over ``repeats`` random subsets of ``m`` of ``n`` rows (one
    evaluation when m = n): distinct counts grow with the number of images scored, so sets of
    different sizes are compared at the same size."""
    if m >= n:
        return score_fn(np.arange(n))
    runs = [score_fn(np.sort(rng.choice(n, m, replace=False))) for _ in range(repeats)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
