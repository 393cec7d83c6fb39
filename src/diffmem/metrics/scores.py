"""Memorization scores of generated images beside their null, and the tests behind the verdict.

Scored sets: plain samples, SIDE's images at every guidance scale, SIDE at its best scale on
held-out cluster halves, the null (unseen real images, see
:func:`diffmem.metrics.null.null_pool`) and, for reference, every held-out image (twins of
training images included). Each set gets, for each similarity (cosine of mean-centred pixels and
SIDE's normalised ℓ2): AMS on the low/mid/high bands (calibrated on the other half of the null),
UMS and Carlini's distinct extractions at one common size (the smallest set's; mean over random
subsets), Carlini's extraction rate and the mean nearest-training similarity.

Primary statistics (one per question, uncorrected; the README names them):

* ``plain_copies``: excess share of plain samples in the high band over unseen images, p̂_gen −
  p̂_null, one-sided Fisher exact test, Newcombe 95 % interval; beside it the excess its
  yes-rule detects with 80 % power at these sizes (``detectable_rate``: a "no" needs it at or
  below the margin) and a one-sided Mann–Whitney test that the samples are *less* like the
  training images than unseen images (``unlike_p_value``: "samples unlike the training data").
  Every pixel similarity is matched at its best shift and mirror
  (:class:`~diffmem.metrics.similarity.Matching`); the plain pixel match is scored beside it as
  the ``pixel`` rows. With the learned copy eye (``embed``, an embedding trained on the training
  images only) and unseen images, the high band is that of ``combined``: per (generated,
  training) pair the larger of the two eyes' calibration-CDF values
  (:func:`~diffmem.metrics.similarity.combined_nearest`); "unlike" then asks each eye
  (Bonferroni), and the pixel match's answer alone is kept beside (``plain_copies_pixel``).
* ``side_extracts_more``: UMS in the high band (distinct training groups per image) of SIDE at
  its best scale minus plain sampling's, on equally many images. The best scale is chosen on one
  half of each cluster's SIDE images and scored on the other half, against as many plain
  samples; one-sided permutation test, bootstrap 95 % interval.

Every other p-value (other bands, Carlini's rate, the nearest-similarity AUC of Meehan et al.
2020's data-copying test, every scale against the null, the other similarity) is adjusted by
Holm within the run.

Without any unseen image (an imported model given no held-out images) every set is still scored,
the bands come from the training images themselves
(:func:`diffmem.metrics.memorization.reference_bands`), ``plain_copies`` is reported with the
answer "inconclusive (no null)", no secondary test is run, and SIDE against plain sampling
(which needs no unseen image) is tested as usual.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .memorization import (
    BAND_NAMES,
    band_intervals,
    calibrate_bands,
    carlini_extracted,
    equal_size,
    fixed_bands,
    in_band,
    reference_bands,
    set_scores,
)
from .similarity import (
    EMBEDDING,
    EYES,
    PLAIN_PIXELS,
    SIMILARITIES,
    EyeCalibration,
    Matching,
    combined_nearest,
    embedding_nearest,
    nearest,
    subset,
)
from .stats import (
    auc_test,
    detectable_rate,
    holm,
    less_similar,
    permutation_test,
    rate_excess,
    untested,
    wilson,
)

PLAIN, SIDE, SIDE_BEST = "plain sampling", "SIDE", "SIDE best scale (held-out half)"
GENERATED = "generated images"  # a folder of a generator's images, audited without its model
NULL, HELDOUT = "unseen real images (null)", "held-out real images (all, twins included)"


def cluster_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split image rows into two halves within each cluster (seeded): select, evaluate."""
    rng = np.random.default_rng(seed)
    sel, ev = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        sel.append(rows[: len(rows) // 2])
        ev.append(rows[len(rows) // 2:])
    return np.sort(np.concatenate(sel)), np.sort(np.concatenate(ev))


# the pixel similarities every set is scored under: the two matched at their best transform,
# then the plain pixel match, reported beside them (``pixel``: cosine, no transform). With the
# learned copy eye two more: ``embedding`` (its cosine) and ``combined`` (both eyes per pair,
# the verdict's, :func:`~diffmem.metrics.similarity.combined_nearest`)
KINDS = (*SIMILARITIES, "pixel")
COMBINED = "combined"


class Scorer:
    """Nearest training images of every set under each similarity, and per-set scores.

    ``cfg["matching"]`` (the config's section; an imported model trained with random flips
    always mirrors) sets the transforms the two verdict similarities are the best over.
    ``embed`` (images → L2-normalised embeddings, the copy eye trained on these training
    images) adds the ``embedding`` kind, and once :meth:`calibrate` has seen the null's
    calibration half, the ``combined`` kind."""

    def __init__(self, train: np.ndarray, groups: np.ndarray, cfg: dict, device,
                 embed=None):
        self.train, self.groups, self.cfg, self.device = train, groups, cfg, device
        self.k = max(int(cfg.get("top_k", 50)), int(cfg["carlini"]["n"]))
        self.matching = Matching.from_config(cfg.get("matching"), train.shape[1])
        self.dim = self.matching.compared_pixels(train.shape[1:])
        self.edges: dict[str, list] = {}
        self.pixel_kind = cfg.get("similarity", "cosine")  # the pixel eye of ``combined``
        self.embed = embed
        self.train_emb = embed(train) if embed is not None else None
        self.cal: EyeCalibration | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        extra = ((EMBEDDING,) if self.embed is not None else ()) + \
            ((COMBINED,) if self.cal is not None else ())
        return KINDS + extra

    def how(self, kind: str) -> tuple[str, Matching]:
        """(similarity, matching) of a scored pixel kind."""
        return ("cosine", PLAIN_PIXELS) if kind == "pixel" else (kind, self.matching)

    def nn(self, images: np.ndarray) -> dict:
        """Every kind's nearest training images (``combined`` once calibrated)."""
        out = {}
        for kind in KINDS:
            sim, matching = self.how(kind)
            out[kind] = nearest(images, self.train, kind=sim, top_k=self.k, device=self.device,
                                matching=matching)
        if self.embed is not None:
            q = self.embed(images)
            out[EMBEDDING] = embedding_nearest(q, self.train_emb, top_k=self.k,
                                               device=self.device)
            if self.cal is not None:
                out[COMBINED] = combined_nearest(
                    images, self.train, q, self.train_emb, self.cal, kind=self.pixel_kind,
                    matching=self.matching, top_k=self.k, device=self.device)
        return out

    def calibrate(self, images: np.ndarray, nns: dict) -> None:
        """Read both eyes' calibration from the null's calibration half (``images`` and their
        :meth:`nn`), and add their own, leave-one-out, combined scores to ``nns``."""
        self.cal = EyeCalibration(nns[self.pixel_kind]["sim"][:, 0],
                                  nns[EMBEDDING]["sim"][:, 0])
        nns[COMBINED] = combined_nearest(
            images, self.train, self.embed(images), self.train_emb, self.cal,
            kind=self.pixel_kind, matching=self.matching, top_k=self.k, device=self.device,
            own=np.arange(len(images)))

    def carlini_view(self, nns: dict) -> dict:
        n = int(self.cfg["carlini"]["n"])
        l2 = nns["l2"]
        return {"l2_nearest": (1 - l2["sim"][:, :n]) * math.sqrt(self.dim),
                "index": l2["index"]}

    def scores(self, nns: dict, kind: str, rows=None) -> dict:
        view = nns if rows is None else {k: subset(v, rows) for k, v in nns.items()}
        return set_scores(view[kind], self.carlini_view(view), self.groups, self.edges[kind],
                          self.cfg["carlini"])


def score_run(*, train: np.ndarray, groups: np.ndarray, plain: np.ndarray,
              side_sets: dict[float, tuple[np.ndarray, np.ndarray]], pool: dict,
              heldout: np.ndarray | None, cfg: dict, device="cpu", label: str = PLAIN,
              question: str = "does plain sampling copy training images?",
              null_nns: dict | None = None, embed=None) -> dict:
    """Score every set beside the null and run the tests (see the module docstring).

    ``plain`` is the generated set the copy question is asked of, named ``label`` (plain
    samples of a model, or a folder of generated images); ``null_nns`` (:func:`null_neighbours`
    of the pool, for these training images, settings and ``embed``) skips recomputing them when
    many sets are scored against one null. SIDE's sets (``side_sets``) come with a model's plain
    samples (``label`` left as it is). ``embed``: the copy eye (images → embeddings) trained on
    these training images; with unseen images the verdict's similarity is then ``combined``."""
    rng = np.random.default_rng(int(cfg.get("seed", 4)))
    scorer = Scorer(train, groups, cfg, device, embed=embed)
    pixel = scorer.pixel_kind
    # no unseen image at all (an imported model without held-out images): every score is
    # reported, none is tested against a null, and the bands come from the training images
    no_null = len(pool["score"]) == 0
    null_part = {}
    if not no_null:
        if null_nns is None:
            null_nns = null_neighbours(scorer, pool)
        else:
            scorer.cal = null_nns.get("cal")
        null_part[NULL], cal = null_nns["score"], null_nns["calibrate"]
    primary = COMBINED if scorer.cal is not None else pixel
    nns = {label: scorer.nn(plain), **null_part}
    quantiles, tail = cfg.get("band_quantiles", [0.5, 0.9, 0.99]), int(cfg.get("min_tail", 5))
    bands = {}
    for kind in scorer.kinds:
        fixed = cfg.get("fixed_bands") if kind == pixel else None
        if fixed:
            bands[kind] = fixed_bands(fixed)
        elif no_null and kind == EMBEDDING:
            # training images are one another's negatives in the embedding: their similarities
            # to each other cannot stand in for a null, so the embedding gets no bands
            bands[kind] = {"edges": None, "kind": "none (no unseen images to calibrate the "
                                                  "embedding on)"}
        elif no_null:
            sim, matching = scorer.how(kind)
            bands[kind] = reference_bands(train, groups, quantiles, kind=sim, min_tail=tail,
                                          device=device, matching=matching)
        else:
            bands[kind] = calibrate_bands(cal[kind]["sim"][:, 0], quantiles, tail)
            if kind == COMBINED:
                bands[kind]["kind"] += (" (both eyes: each pair's larger empirical CDF value of "
                                        "the calibration images' nearest-training similarity, "
                                        "calibration images left out of their own)")
        scorer.edges[kind] = bands[kind]["edges"]
    if heldout is not None and len(heldout):
        nns[HELDOUT] = scorer.nn(heldout)
    for s, (imgs, _) in side_sets.items():
        nns[(SIDE, s)] = scorer.nn(imgs)

    # SIDE's best scale: chosen on one half of each cluster, scored on the other
    best, selection, halves = None, {}, None
    if side_sets:
        labels = next(iter(side_sets.values()))[1]
        halves = cluster_halves(labels, int(cfg.get("seed", 4)))
        for s in side_sets:
            selection[s] = scorer.scores(nns[(SIDE, s)], primary, halves[0])["ums_high"]
        best = max(side_sets, key=lambda s: (selection[s], -s))
        nns[SIDE_BEST] = {k: subset(v, halves[1]) for k, v in nns[(SIDE, best)].items()}

    sizes = {key: len(v["cosine"]["sim"]) for key, v in nns.items()}
    m = min(sizes.values())
    repeats = int(cfg.get("subsets", 200))
    rows = []
    for key, v in nns.items():
        method, scale = (key if isinstance(key, tuple) else (key, best if key == SIDE_BEST
                                                             else None))
        for kind in scorer.kinds:
            full = scorer.scores(v, kind)
            eq = equal_size(lambda r, v=v, kind=kind: scorer.scores(v, kind, r), sizes[key], m,
                            repeats, rng)
            rows.append({"method": method, "scale": scale, "similarity": kind,
                         "images": sizes[key], "equal_size": m,
                         **{f"ams_{b}": full[f"ams_{b}"] for b in BAND_NAMES},
                         **{f"ums_{b}": eq[f"ums_{b}"] for b in BAND_NAMES},
                         "carlini_rate": full["carlini_rate"],
                         "carlini_unique": eq["carlini_unique"],
                         "mean_nn_similarity": full["mean_nn_similarity"]})
    table = pd.DataFrame(rows)

    def high_hits(key, kind=primary, band="high"):
        b = band_intervals(scorer.edges[kind])[BAND_NAMES.index(band)]
        return int(in_band(nns[key][kind]["sim"][:, 0], b).sum()), sizes[key]

    k_plain, n_plain = high_hits(label)
    alpha, margin = float(cfg.get("alpha", 0.05)), float(cfg.get("margin_copies", 0.05))
    what = "plain samples" if label == PLAIN else label

    def copy_test(kind: str) -> dict:
        if no_null:
            return untested(high_hits(label, kind)[0] / n_plain, n_plain,
                            "no unseen images to compare with")
        t = rate_excess(*high_hits(label, kind), *high_hits(NULL, kind))
        # the power of the yes-rule at these sizes: the null's rate in the high band is the
        # calibration half's share at or above its edge
        p0 = float((cal[kind]["sim"][:, 0] >= scorer.edges[kind][2]).mean())
        return t | {"detectable_rate": detectable_rate(n_plain, t["null_n"], p0, alpha=alpha),
                    "null_rate_calibration": p0, "detectable_power": 0.8}

    copies = copy_test(primary)
    if not no_null:
        # "samples unlike the training data": either eye finds the generated images less like
        # the training images than unseen images are (one-sided Mann–Whitney on each eye's
        # nearest-training similarity, Bonferroni over the eyes: either p below α/2)
        eyes = {"pixels": less_similar(nns[label][pixel]["sim"][:, 0],
                                       nns[NULL][pixel]["sim"][:, 0])}
        if EMBEDDING in scorer.kinds:
            eyes["embedding"] = less_similar(nns[label][EMBEDDING]["sim"][:, 0],
                                             nns[NULL][EMBEDDING]["sim"][:, 0])
        copies |= {"unlike_p_value": min(1.0, len(eyes) * min(eyes.values())),
                   "unlike_p_values": eyes}
    if primary == COMBINED:
        statistic = (f"excess share of {what} in the high band of both eyes ({pixel} pixel "
                     f"match and the copy embedding, per pair the more unusual) over unseen "
                     f"images (p_gen − p_null)")
    else:
        statistic = (f"excess share of {what} in the high {primary} band over unseen images "
                     f"(p_gen − p_null)")
    tests = {"plain_copies": {
        "question": question, "statistic": statistic, "similarity": primary,
        **copies, "margin": margin, "null_effect": 0.0,
        "matching": {"shift": scorer.matching.shift, "mirror": scorer.matching.mirror},
        "test": "one-sided Fisher exact; Newcombe 95 % interval; the rate detectable with 80 % "
                "power at these sizes; one-sided Mann–Whitney for samples less like the "
                "training images than unseen images" + (" (each eye, Bonferroni)" if
                                                         "unlike_p_values" in copies and len(
                                                             copies["unlike_p_values"]) > 1
                                                         else "")}}
    if primary == COMBINED:
        # the pixel match alone, as the copy question was answered before the copy eye:
        # reported beside the verdict's, not the verdict
        pix = copy_test(pixel)
        pix["unlike_p_value"] = copies["unlike_p_values"]["pixels"]
        tests["plain_copies_pixel"] = {
            "question": question + " (the pixel match alone)",
            "statistic": f"excess share of {what} in the high {pixel} band over unseen images "
                         f"(p_gen − p_null), the pixel match alone", "similarity": pixel,
            **pix, "margin": margin, "null_effect": 0.0,
            "test": "one-sided Fisher exact; Newcombe 95 % interval; reported beside the "
                    "verdict's, not the verdict"}
    if best is not None:  # SIDE against plain sampling: a comparison that needs no unseen image
        tests["side_extracts_more"] = _side_vs_plain(scorer, nns, best, primary, rng, cfg)
    secondary = [] if no_null else _secondary(scorer, nns, sizes, side_sets, primary, high_hits,
                                              cfg, label)
    return {"table": table, "bands": bands, "tests": tests, "secondary": secondary,
            "label": label, "scorer": scorer,
            "best_scale": best, "selection": selection, "equal_size": m, "nns": nns,
            "primary_similarity": primary, "top_k": scorer.k,
            "halves": None if halves is None else [len(halves[0]), len(halves[1])]}


def score_generated(*, train: np.ndarray, groups: np.ndarray, generated: np.ndarray,
                    pool: dict, cfg: dict, device="cpu", heldout: np.ndarray | None = None,
                    null_nns: dict | None = None, embed=None) -> dict:
    """A generator's images scored beside the null, without its model: the copy question only
    (membership, the walk-back and SIDE need the model). The one scoring path of a
    ``generated:`` entry and of the known-truth study's stand-ins."""
    return score_run(train=train, groups=groups, plain=generated, side_sets={}, pool=pool,
                     heldout=heldout, cfg=cfg, device=device, label=GENERATED,
                     question="do these images copy training images?", null_nns=null_nns,
                     embed=embed)


def null_neighbours(scorer: Scorer, pool: dict) -> dict:
    """:meth:`Scorer.nn` of the null's two halves (``score``, ``calibrate``), and, with the copy
    eye, both eyes' calibration (``cal``) read from the calibration half first."""
    images = pool["images"][pool["calibrate"]]
    cal = scorer.nn(images)
    if scorer.embed is not None and len(images) >= 2:
        scorer.calibrate(images, cal)
    return {"calibrate": cal, "score": scorer.nn(pool["images"][pool["score"]]),
            "cal": scorer.cal}


def per_image(res: dict, names: list[str] | None = None) -> pd.DataFrame:
    """Every generated image (plain samples; SIDE's at each scale) with its nearest training
    image under the verdict's similarity, that similarity, the transform that matched, whether
    it lies in the high band (a copy by the verdict's rule), and the plain pixel match beside
    it. With the copy eye (``combined``): which eye matched (``eye``: pixels, embedding or
    both) and both eyes' similarities to that training image."""
    primary = res["primary_similarity"]
    high = res["bands"][primary]["edges"][2]
    frames = []
    for key, v in res["nns"].items():
        if key != res["label"] and not (isinstance(key, tuple) and key[0] == SIDE):
            continue  # the null, the held-out images, SIDE's best scale (a subset of a scale)
        method, scale = (key, None) if key == res["label"] else key
        nn_, pix = v[primary], v["pixel"]
        j = nn_["index"][:, 0]
        how = [Matching.describe(nn_["transforms"][t]) for t in nn_["transform"][:, 0]]
        cols = {}
        if primary == COMBINED:
            eye = np.array(EYES)[nn_["eye"][:, 0]]
            how = [EMBEDDING if e == "embedding" else h for e, h in zip(eye, how, strict=True)]
            cols = {"eye": eye, "pixel_match_similarity": nn_["pixel_sim"][:, 0],
                    "embedding_similarity": nn_["embedding_sim"][:, 0]}
        frames.append(pd.DataFrame({
            "set": method, "scale": scale, "image": np.arange(len(j)), "nearest_train": j,
            "nearest_name": [names[i] for i in j] if names else None,
            "similarity": nn_["sim"][:, 0], "transform": how,
            "copy": nn_["sim"][:, 0] >= high, **cols,
            "pixel_similarity": pix["sim"][:, 0], "pixel_nearest_train": pix["index"][:, 0]}))
    return pd.concat(frames, ignore_index=True)


def _side_vs_plain(scorer, nns, best, primary, rng, cfg) -> dict:
    side_nn = nns[SIDE_BEST]
    n = len(side_nn[primary]["sim"])
    plain_rows = np.sort(rng.choice(len(nns[PLAIN][primary]["sim"]), n, replace=False))
    pooled = {k: {f: (np.concatenate([side_nn[k][f], nns[PLAIN][k][f][plain_rows]])
                      if isinstance(side_nn[k][f], np.ndarray) else side_nn[k][f])
                  for f in side_nn[k]} for k in side_nn}

    def ums(rows):
        return scorer.scores(pooled, primary, rows)["ums_high"]

    def diff(a, b):
        return ums(a) - ums(b)

    observed = diff(np.arange(n), np.arange(n, 2 * n))
    p = permutation_test(diff, n, n, permutations=int(cfg.get("permutations", 1000)),
                         seed=int(cfg.get("seed", 4)))
    boot = [diff(rng.choice(n, n), n + rng.choice(n, n)) for _ in range(int(cfg.get(
        "bootstrap", 500)))]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    # a percentile bootstrap collapses to [0, 0] when few images hit the band; widen it to
    # Newcombe's interval treating each UMS as distinct groups found out of n images
    v_side, v_plain = ums(np.arange(n)), ums(np.arange(n, 2 * n))
    wl_s, wu_s = wilson(min(round(v_side * n), n), n)
    wl_p, wu_p = wilson(min(round(v_plain * n), n), n)
    p_s, p_p = min(v_side, 1.0), min(v_plain, 1.0)
    lo = min(lo, observed - math.hypot(p_s - wl_s, wu_p - p_p))
    hi = max(hi, observed + math.hypot(wu_s - p_s, p_p - wl_p))
    return {"question": "does SIDE extract more than plain sampling?",
            "statistic": f"UMS in the high {primary} band, SIDE at scale {best:g} (chosen on "
                         f"the other half of each cluster) minus plain sampling, {n} images "
                         f"each",
            "effect": float(observed), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(p), "value": v_side, "null_value": v_plain, "n": n, "null_n": n,
            "margin": float(cfg.get("margin_side", 0.05)), "null_effect": 0.0,
            "test": "one-sided permutation test; 95 % interval: bootstrap, widened to Newcombe's "
                    "on counts where that is wider"}


def _secondary(scorer, nns, sizes, side_sets, primary, high_hits, cfg, label) -> list[dict]:
    out = []
    short = "plain" if label == PLAIN else label
    for band in ("low", "mid"):
        out.append({"name": f"{short} vs null: AMS {band} band ({primary})",
                    **rate_excess(*high_hits(label, primary, band),
                                  *high_hits(NULL, primary, band))})
    # the high band of every other similarity (with the copy eye: each eye alone)
    for other in [k for k in (*SIMILARITIES, EMBEDDING) if k != primary and k in scorer.kinds]:
        out.append({"name": f"{short} vs null: AMS high band ({other})",
                    **rate_excess(*high_hits(label, other), *high_hits(NULL, other))})

    def carlini_hits(key):
        view = scorer.carlini_view(nns[key])
        ex = carlini_extracted(view["l2_nearest"], cfg["carlini"]["alpha"],
                               cfg["carlini"]["delta"])
        return int(ex.sum()), len(ex)

    out.append({"name": f"{short} vs null: Carlini extraction rate",
                **rate_excess(*carlini_hits(label), *carlini_hits(NULL))})
    out.append({"name": f"{short} vs null: nearest-training {primary} similarity, AUC "
                         f"(Meehan et al. 2020)",
                **auc_test(nns[label][primary]["sim"][:, 0], nns[NULL][primary]["sim"][:, 0],
                           seed=int(cfg.get("seed", 4)), boot=200)})
    for s in side_sets:
        out.append({"name": f"SIDE scale {s:g} vs null: AMS high band ({primary})",
                    **rate_excess(*high_hits((SIDE, s)), *high_hits(NULL))})
    for row, p in zip(out, holm([r["p_value"] for r in out]), strict=True):
        row["p_holm"] = p
    return out
