"""The one scoring module: nearest neighbours, similarities, AMS/UMS on bands, Carlini's
criterion, the null of unseen real images, equal-size counts and the tests behind the verdict.

Every audit scores its images here (plain sampling, SIDE at each scale, the null, membership
inference), so a number and its null are always computed by the same code.

Similarities (higher = closer), on images flattened to D pixels:

* ``cosine``: cosine of mean-centred pixels (each image minus its mean, unit norm). Brightness
  and contrast do not matter; the shape does.
* ``l2``: SIDE's normalised ℓ2 for low-resolution images, 1 − ‖a − b‖₂ / sqrt(D) on pixels in
  [0, 1] (1 = identical, 0 = as far apart as a black and a white image).
* ``rms`` (near-duplicate search only): minus the RMS pixel difference in grey levels (0..255).

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
from collections.abc import Callable, Iterator

import numpy as np
import torch

SIMILARITIES = ("cosine", "l2")
BAND_NAMES = ("low", "mid", "high")
# the answer of a question whose score has no null (no unseen images to compare with)
NO_NULL = "inconclusive (no null)"


# ----------------------------------------------------------------------------- similarities
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
        from .images import mirror as flip

        flipped = similarity_blocks(flip(queries), refs, kind, device, chunk)
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


# ----------------------------------------------------------------------------- bands and scores
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
                    min_tail: int = 5, device="cpu", mirror: bool = False) -> dict:
    """Band edges without unseen images: quantiles of each training image's similarity to its
    nearest training image of *another* near-duplicate group (leave-one-out), capped as in
    :func:`calibrate_bands`. For exchangeable images this approximates what an unseen image
    would score, but the model saw every one of them, so it is a reference, not a null."""
    nn_ = nearest(train, train, kind=kind, top_k=min(50, len(train)), device=device,
                  mirror=mirror)
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
    """AMS and UMS (distinct training groups) of the scored images on each band."""
    out = {}
    n = len(nn_["sim"])
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


# ----------------------------------------------------------------------------- the null
def null_pool(*, heldout: np.ndarray, heldout_groups: np.ndarray, unused: np.ndarray,
              unused_groups: np.ndarray, train_groups: np.ndarray, max_images: int,
              seed: int, heldout_twin: np.ndarray | None = None,
              unused_twin: np.ndarray | None = None) -> dict:
    """Unseen real images for the null: held-out images and unused train-split images that share
    no near-duplicate group with the run's training images (nor, where ``*_twin`` flags are
    given, a direct near-duplicate pair), at most ``max_images`` (seeded), in two random halves
    of whole groups: ``calibrate`` (band edges) and ``score`` (scored like generated images).
    Whole groups, so two frames of one unseen patient never sit on both sides."""
    seen = set(np.asarray(train_groups).tolist())
    keep_h = np.array([g not in seen for g in heldout_groups], dtype=bool)
    keep_u = np.array([g not in seen for g in unused_groups], dtype=bool)
    if heldout_twin is not None:
        keep_h &= ~heldout_twin
    if unused_twin is not None:
        keep_u &= ~unused_twin
    images = np.concatenate([heldout[keep_h], unused[keep_u]]) if len(unused) else heldout[keep_h]
    groups = np.concatenate([heldout_groups[keep_h], unused_groups[keep_u]])
    source = np.array(["held-out"] * int(keep_h.sum()) + ["unused train"] * int(keep_u.sum()))
    rng = np.random.default_rng(seed)
    # a seeded order of whole groups (images of a group kept together), cut at max_images
    rank = {g: r for r, g in enumerate(rng.permutation(np.unique(groups)))}
    order = np.array(sorted(range(len(images)), key=lambda i: (rank[groups[i]], i)),
                    dtype=np.int64)[:max_images]
    cut = len(order) // 2
    while 0 < cut < len(order) and groups[order[cut]] == groups[order[cut - 1]]:
        cut += 1  # do not split a group between the halves
    half = cut
    return {"images": images, "groups": groups, "source": source,
            "calibrate": np.sort(order[:half]), "score": np.sort(order[half:]),
            "counts": {"heldout": int(len(heldout)),
                       "heldout_twins_excluded": int((~keep_h).sum()),
                       "unused_train": int(len(unused)),
                       "unused_train_twins_excluded": int((~keep_u).sum()),
                       "pool": int(len(images)), "used": int(len(order)),
                       "calibrate": int(half), "score": int(len(order) - half)}}


def run_null_pool(*, train_indices: np.ndarray, heldout: np.ndarray, unused: dict,
                  duplicates: dict | None, cfg: dict) -> tuple[dict, np.ndarray]:
    """The null of one run from its files: (pool, the run's training groups). Without a
    near-duplicate file every image is its own group (then twins are not excluded)."""
    n_h, n_u = len(heldout), len(unused["images"])
    h_twin = u_twin = None
    if duplicates is None:
        train_groups = np.arange(len(train_indices))
        h_groups, u_groups = -1 - np.arange(n_h), -1 - n_h - np.arange(n_u)
    else:
        train_groups = duplicates["train_group"][train_indices]
        h_groups = duplicates["heldout_group"]
        u_groups = duplicates["train_group"][unused["indices"]]
        if "pairs" in duplicates:  # direct near-duplicates of a training image, chains aside
            n_split = len(duplicates["train_group"])
            twin = np.zeros(n_split + n_h, bool)
            pairs = duplicates["pairs"]
            used = np.zeros(n_split + n_h, bool)
            used[np.asarray(train_indices)] = True
            twin[pairs[used[pairs[:, 0]], 1]] = True
            twin[pairs[used[pairs[:, 1]], 0]] = True
            h_twin, u_twin = twin[n_split:], twin[np.asarray(unused["indices"], dtype=np.int64)]
    pool = null_pool(heldout=heldout, heldout_groups=h_groups, unused=unused["images"],
                     unused_groups=u_groups, train_groups=train_groups,
                     max_images=int(cfg.get("null_max_images", 10000)),
                     seed=int(cfg.get("seed", 4)), heldout_twin=h_twin, unused_twin=u_twin)
    pool["counts"]["near_duplicates_excluded"] = duplicates is not None
    return pool, train_groups


# ----------------------------------------------------------------------------- tests
def wilson_interval(k, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions k/n (well-behaved at 0 and 1)."""
    k = np.asarray(k, dtype=float)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """:func:`wilson_interval` of one count; (0, 1) when there is nothing to count."""
    if n == 0:
        return 0.0, 1.0
    lo, hi = wilson_interval(k, n, z)
    return float(lo), float(hi)


def rate_excess(k1: int, n1: int, k2: int, n2: int) -> dict:
    """Is rate 1 (k1/n1) above rate 2 (k2/n2)? One-sided Fisher exact p and Newcombe's hybrid
    score 95 % interval for the difference p1 − p2."""
    from scipy.stats import fisher_exact

    p = float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater")[1]) \
        if n1 and n2 else 1.0
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"effect": d, "ci_low": lo, "ci_high": hi, "p_value": p,
            "value": p1, "null_value": p2, "n": n1, "null_n": n2}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie) (the Mann–Whitney AUC)."""
    from scipy.stats import rankdata

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))[: len(pos)]
    return float((r.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_test(pos: np.ndarray, neg: np.ndarray, *, seed: int = 0, boot: int = 1000) -> dict:
    """AUC with a one-sided Mann–Whitney p-value (positives score higher) and a 95 % stratified
    bootstrap interval."""
    from scipy.stats import mannwhitneyu

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    a = auc(pos, neg)
    p = float(mannwhitneyu(pos, neg, alternative="greater").pvalue) if len(pos) and len(neg) \
        else 1.0
    rng = np.random.default_rng(seed)
    reps = [auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(boot)]
    lo, hi = np.quantile(reps, [0.025, 0.975]) if reps else (0.0, 1.0)
    return {"effect": a, "ci_low": float(lo), "ci_high": float(hi), "p_value": p,
            "n": int(len(pos)), "null_n": int(len(neg)), "null_value": 0.5}


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> dict:
    """TPR at the threshold that flags at most ``fpr`` of the negatives, with a Wilson interval;
    with fewer than 1/fpr negatives the smallest resolvable FPR (1/n) is used and stated."""
    neg = np.sort(np.asarray(neg, float))
    allowed = max(int(math.floor(fpr * len(neg))), 1 if len(neg) < 1 / fpr else 0)
    thr = neg[len(neg) - allowed - 1] if allowed < len(neg) else -math.inf
    k = int((np.asarray(pos) > thr).sum())
    lo, hi = wilson(k, len(pos))
    return {"fpr_target": fpr, "fpr_achieved": float((neg > thr).mean()), "tpr": k / len(pos),
            "tpr_ci_low": lo, "tpr_ci_high": hi, "threshold": float(thr)}


def permutation_test(stat: Callable[[np.ndarray, np.ndarray], float], n_a: int, n_b: int, *,
                     permutations: int, seed: int) -> float:
    """One-sided p of stat(rows of A, rows of B) over random relabellings of the pooled rows
    (rows 0..n_a−1 are A, n_a..n_a+n_b−1 are B): (1 + #{perm ≥ observed}) / (R + 1)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n_a + n_b)
    observed = stat(rows[:n_a], rows[n_a:])
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(rows)
        hits += stat(p[:n_a], p[n_a:]) >= observed - 1e-12
    return (1 + hits) / (permutations + 1)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment (family-wise error), in the input order."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def untested(value, n: int, reason: str) -> dict:
    """A primary statistic without unseen images to compare with: its value is reported,
    nothing is tested, and the answer is :data:`NO_NULL`."""
    return {"value": value, "n": n, "null_value": None, "null_n": 0, "effect": None,
            "ci_low": None, "ci_high": None, "p_value": None, "answer": NO_NULL,
            "no_null": reason}


def decide(test: dict, *, alpha: float, margin: float, null_effect: float = 0.0) -> str:
    """yes: significant at ``alpha`` and the interval excludes no effect; no: the interval
    excludes an effect larger than ``margin``; otherwise inconclusive. A test without a null
    (``test["answer"]`` set to :data:`NO_NULL`) keeps that answer."""
    if test.get("answer"):
        return test["answer"]
    if test["p_value"] < alpha and test["ci_low"] > null_effect:
        return "yes"
    if test["ci_high"] < null_effect + margin:
        return "no"
    return "inconclusive"
