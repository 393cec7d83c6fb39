"""Memorization scores of generated images beside their null, and the tests behind the verdict.

Scored sets: plain samples, SIDE's images at every guidance scale, SIDE at its best scale on
held-out cluster halves, the null (unseen real images, see :func:`scoring.null_pool`) and,
for reference, every held-out image (twins of training images included). Each set gets, for
each similarity (cosine of mean-centred pixels and SIDE's normalised ℓ2): AMS on the low/mid/
high bands (calibrated on the other half of the null), UMS and Carlini's distinct extractions
at one common size (the smallest set's; mean over random subsets), Carlini's extraction rate
and the mean nearest-training similarity.

Primary statistics (one per question, uncorrected; the README names them):

* ``plain_copies``: excess share of plain samples in the high band over unseen images,
  p̂_gen − p̂_null, one-sided Fisher exact test, Newcombe 95 % interval.
* ``side_extracts_more``: UMS in the high band (distinct training groups per image) of SIDE at
  its best scale minus plain sampling's, on equally many images. The best scale is chosen on
  one half of each cluster's SIDE images and scored on the other half, against as many plain
  samples; one-sided permutation test, bootstrap 95 % interval.

Every other p-value (other bands, Carlini's rate, the nearest-similarity AUC of Meehan et al.
2020's data-copying test, every scale against the null, the other similarity) is adjusted by
Holm within the run.

Without any unseen image (an imported model given no held-out images) every set is still
scored, the bands come from the training images themselves (:func:`scoring.reference_bands`),
``plain_copies`` is reported with the answer "inconclusive (no null)", no secondary test is
run, and SIDE against plain sampling (which needs no unseen image) is tested as usual.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import scoring as sc
from .figures import plt
from .io import atomic_path, load_npz, save_figure, save_json

PLAIN, SIDE, SIDE_BEST = "plain sampling", "SIDE", "SIDE best scale (held-out half)"
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


class Scorer:
    """Nearest training images of every set under both similarities, and per-set scores."""

    def __init__(self, train: np.ndarray, groups: np.ndarray, cfg: dict, device):
        self.train, self.groups, self.cfg, self.device = train, groups, cfg, device
        self.k = max(int(cfg.get("top_k", 50)), int(cfg["carlini"]["n"]))
        self.dim = int(np.prod(train.shape[1:]))
        self.edges: dict[str, list] = {}

    def nn(self, images: np.ndarray) -> dict:
        # mirror: the model was trained with random flips, so a mirrored copy is a copy
        return {kind: sc.nearest(images, self.train, kind=kind, top_k=self.k,
                                 device=self.device, mirror=bool(self.cfg.get("mirror")))
                for kind in sc.SIMILARITIES}

    def carlini_view(self, nns: dict) -> dict:
        n = int(self.cfg["carlini"]["n"])
        l2 = nns["l2"]
        return {"l2_nearest": (1 - l2["sim"][:, :n]) * math.sqrt(self.dim),
                "index": l2["index"]}

    def scores(self, nns: dict, kind: str, rows=None) -> dict:
        view = nns if rows is None else {k: sc.subset(v, rows) for k, v in nns.items()}
        return sc.set_scores(view[kind], self.carlini_view(view), self.groups, self.edges[kind],
                             self.cfg["carlini"])


def score_run(*, train: np.ndarray, groups: np.ndarray, plain: np.ndarray,
              side_sets: dict[float, tuple[np.ndarray, np.ndarray]], pool: dict,
              heldout: np.ndarray | None, cfg: dict, device="cpu") -> dict:
    """Score every set beside the null and run the tests (see the module docstring)."""
    rng = np.random.default_rng(int(cfg.get("seed", 4)))
    scorer = Scorer(train, groups, cfg, device)
    primary = cfg.get("similarity", "cosine")
    # no unseen image at all (an imported model without held-out images): every score is
    # reported, none is tested against a null, and the bands come from the training images
    no_null = len(pool["score"]) == 0
    nns = {PLAIN: scorer.nn(plain)}
    if not no_null:
        nns[NULL] = scorer.nn(pool["images"][pool["score"]])
        cal = scorer.nn(pool["images"][pool["calibrate"]])
    quantiles, tail = cfg.get("band_quantiles", [0.5, 0.9, 0.99]), int(cfg.get("min_tail", 5))
    bands = {}
    for kind in sc.SIMILARITIES:
        fixed = cfg.get("fixed_bands") if kind == primary else None
        if fixed:
            bands[kind] = sc.fixed_bands(fixed)
        elif no_null:
            bands[kind] = sc.reference_bands(train, groups, quantiles, kind=kind, min_tail=tail,
                                             device=device, mirror=bool(cfg.get("mirror")))
        else:
            bands[kind] = sc.calibrate_bands(cal[kind]["sim"][:, 0], quantiles, tail)
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
        nns[SIDE_BEST] = {k: sc.subset(v, halves[1]) for k, v in nns[(SIDE, best)].items()}

    sizes = {key: len(v["cosine"]["sim"]) for key, v in nns.items()}
    m = min(sizes.values())
    repeats = int(cfg.get("subsets", 200))
    rows = []
    for key, v in nns.items():
        method, scale = (key if isinstance(key, tuple) else (key, best if key == SIDE_BEST
                                                             else None))
        for kind in sc.SIMILARITIES:
            full = scorer.scores(v, kind)
            eq = sc.equal_size(lambda r, v=v, kind=kind: scorer.scores(v, kind, r), sizes[key], m,
                               repeats, rng)
            rows.append({"method": method, "scale": scale, "similarity": kind,
                         "images": sizes[key], "equal_size": m,
                         **{f"ams_{b}": full[f"ams_{b}"] for b in sc.BAND_NAMES},
                         **{f"ums_{b}": eq[f"ums_{b}"] for b in sc.BAND_NAMES},
                         "carlini_rate": full["carlini_rate"],
                         "carlini_unique": eq["carlini_unique"],
                         "mean_nn_similarity": full["mean_nn_similarity"]})
    table = pd.DataFrame(rows)

    def high_hits(key, kind=primary, band="high"):
        b = sc.band_intervals(scorer.edges[kind])[sc.BAND_NAMES.index(band)]
        return int(sc.in_band(nns[key][kind]["sim"][:, 0], b).sum()), sizes[key]

    k_plain, n_plain = high_hits(PLAIN)
    tests = {"plain_copies": {
        "question": "does plain sampling copy training images?",
        "statistic": f"excess share of plain samples in the high {primary} band over unseen "
                     f"images (p_gen − p_null)",
        **(sc.untested(k_plain / n_plain, n_plain, "no unseen images to compare with")
           if no_null else sc.rate_excess(k_plain, n_plain, *high_hits(NULL))),
        "margin": float(cfg.get("margin_copies", 0.05)), "null_effect": 0.0,
        "test": "one-sided Fisher exact; Newcombe 95 % interval"}}
    if best is not None:  # SIDE against plain sampling: a comparison that needs no unseen image
        tests["side_extracts_more"] = _side_vs_plain(scorer, nns, best, primary, rng, cfg)
    secondary = [] if no_null else _secondary(scorer, nns, sizes, side_sets, primary, high_hits,
                                              cfg)
    return {"table": table, "bands": bands, "tests": tests, "secondary": secondary,
            "best_scale": best, "selection": selection, "equal_size": m, "nns": nns,
            "primary_similarity": primary, "top_k": scorer.k,
            "halves": None if halves is None else [len(halves[0]), len(halves[1])]}


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
    p = sc.permutation_test(diff, n, n, permutations=int(cfg.get("permutations", 1000)),
                            seed=int(cfg.get("seed", 4)))
    boot = [diff(rng.choice(n, n), n + rng.choice(n, n)) for _ in range(int(cfg.get(
        "bootstrap", 500)))]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    # a percentile bootstrap collapses to [0, 0] when few images hit the band; widen it to
    # Newcombe's interval treating each UMS as distinct groups found out of n images
    v_side, v_plain = ums(np.arange(n)), ums(np.arange(n, 2 * n))
    wl_s, wu_s = sc.wilson(min(round(v_side * n), n), n)
    wl_p, wu_p = sc.wilson(min(round(v_plain * n), n), n)
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


def _secondary(scorer, nns, sizes, side_sets, primary, high_hits, cfg) -> list[dict]:
    out = []
    other = next(k for k in sc.SIMILARITIES if k != primary)
    for band in ("low", "mid"):
        out.append({"name": f"plain vs null: AMS {band} band ({primary})",
                    **sc.rate_excess(*high_hits(PLAIN, primary, band),
                                     *high_hits(NULL, primary, band))})
    out.append({"name": f"plain vs null: AMS high band ({other})",
                **sc.rate_excess(*high_hits(PLAIN, other), *high_hits(NULL, other))})

    def carlini_hits(key):
        view = scorer.carlini_view(nns[key])
        ex = sc.carlini_extracted(view["l2_nearest"], cfg["carlini"]["alpha"],
                                  cfg["carlini"]["delta"])
        return int(ex.sum()), len(ex)

    out.append({"name": "plain vs null: Carlini extraction rate",
                **sc.rate_excess(*carlini_hits(PLAIN), *carlini_hits(NULL))})
    out.append({"name": f"plain vs null: nearest-training {primary} similarity, AUC "
                         f"(Meehan et al. 2020)",
                **sc.auc_test(nns[PLAIN][primary]["sim"][:, 0], nns[NULL][primary]["sim"][:, 0],
                              seed=int(cfg.get("seed", 4)), boot=200)})
    for s in side_sets:
        out.append({"name": f"SIDE scale {s:g} vs null: AMS high band ({primary})",
                    **sc.rate_excess(*high_hits((SIDE, s)), *high_hits(NULL))})
    for row, p in zip(out, sc.holm([r["p_value"] for r in out]), strict=True):
        row["p_holm"] = p
    return out


# ----------------------------------------------------------------------------- the stage
def scores_stage(*, train_npz: str, plain_npz: str, side_npzs: list[str], scales: list[float],
                 heldout_npz: str, unused_npz: str, duplicates_npz: str | None, cfg: dict,
                 device: str, out_csv: str, out_json: str, out_pairs_png: str,
                 out_hist_png: str, out_scale_png: str) -> dict:
    from .diffusion import resolve_device

    dev = resolve_device(device)
    tr = load_npz(train_npz)
    heldout = load_npz(heldout_npz)["images"]
    pool, groups = sc.run_null_pool(
        train_indices=tr["indices"], heldout=heldout, unused=load_npz(unused_npz),
        duplicates=load_npz(duplicates_npz) if duplicates_npz else None, cfg=cfg)
    side_sets = {}
    for s, p in zip(scales, side_npzs, strict=True):
        d = load_npz(p)
        side_sets[float(s)] = (d["images"], d["labels"])
    plain = load_npz(plain_npz)["images"]
    res = score_run(train=tr["images"], groups=groups, plain=plain,
                    side_sets=side_sets, pool=pool, heldout=heldout, cfg=cfg, device=dev)
    table = res["table"]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    summary = {
        "no_null": len(pool["score"]) == 0,
        "primary_similarity": res["primary_similarity"], "bands": res["bands"],
        "equal_size": res["equal_size"], "top_k": res["top_k"],
        "null": pool["counts"],
        "rows": table.replace({np.nan: None}).to_dict(orient="records"),
        "tests": res["tests"], "secondary": res["secondary"], "best_scale": res["best_scale"],
        "best_scale_selection_ums_high": {f"{k:g}": v for k, v in res["selection"].items()},
        "side_halves": res["halves"], "budget": min((len(v[0]) for v in side_sets.values()),
                                                    default=0),
    }
    save_json(out_json, summary)
    nns, primary = res["nns"], res["primary_similarity"]
    best = res["best_scale"]
    if best is not None:
        _pairs_figure(side_sets[best][0], tr["images"], nns[(SIDE, best)][primary], out_pairs_png,
                      f"SIDE (scale {best:g}): top pairs, generated | nearest training image")
    else:
        _pairs_figure(plain, tr["images"], nns[PLAIN][primary],
                      out_pairs_png, "plain sampling: top pairs")
    _hist_figure(nns, res["bands"][primary]["edges"], primary, out_hist_png)
    _scale_figure(table[table["similarity"] == primary], out_scale_png)
    return summary


def _pairs_figure(images, train, nn_, path, title, top: int = 12):
    order = np.argsort(-nn_["sim"][:, 0])[:top]
    fig, axes = plt.subplots(2, max(len(order), 1), figsize=(1.2 * max(len(order), 1), 2.9),
                             squeeze=False)
    cmap = "gray" if images.ndim == 3 else None
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(order):
        axes[0, j].imshow(images[i], cmap=cmap, vmin=0, vmax=255)
        axes[0, j].set_title(f"sim {nn_['sim'][i, 0]:.3f}", fontsize=7)
        axes[1, j].imshow(train[nn_["index"][i, 0]], cmap=cmap, vmin=0, vmax=255)
        axes[1, j].set_title(f"train #{nn_['index'][i, 0]}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path)


def _hist_figure(nns, edges, kind, path):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sims = {k: v[kind]["sim"][:, 0] for k, v in nns.items()}
    lo = min(float(s.min()) for s in sims.values() if len(s))
    bins = np.linspace(lo, 1, 40)
    if NULL in sims:
        ax.hist(sims[NULL], bins=bins, density=True, color="0.6", alpha=0.6, label=NULL)
    else:
        ax.text(0.02, 0.95, "no unseen images: no null", transform=ax.transAxes, fontsize=8,
                va="top")
    ax.hist(sims[PLAIN], bins=bins, density=True, histtype="step", lw=2, label=PLAIN)
    for k, s in sims.items():
        if isinstance(k, tuple):
            ax.hist(s, bins=bins, density=True, histtype="step", lw=1,
                    label=f"SIDE s={k[1]:g}")
    for e, name in zip(edges, sc.BAND_NAMES, strict=True):
        ax.axvline(e, color="crimson", ls=":", lw=1)
        ax.text(e, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=6, color="crimson")
    ax.set_xlabel(f"{kind} similarity to the nearest training image")
    ax.set_ylabel("density")
    ax.set_title("nearest-training similarity: generated vs unseen real images "
                 "(band edges dotted)", fontsize=8)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _scale_figure(df, path):
    side = df[df["method"] == SIDE].sort_values("scale")
    ref = {m: df[df["method"] == m].iloc[0] for m in (PLAIN, NULL) if (df["method"] == m).any()}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for ax, metric in zip(axes, ("ams_high", "ums_high"), strict=True):
        ax.plot(side["scale"], side[metric], "o-", label="SIDE")
        ax.axhline(ref[PLAIN][metric], ls=":", color="C1", label=PLAIN)
        if NULL in ref:
            ax.axhline(ref[NULL][metric], ls="--", color="0.4", label=NULL)
        ax.set_xlabel("guidance scale s")
        ax.set_ylabel(metric.replace("_", " ").upper())
        ax.set_title(f"{metric.replace('_', ' ').upper()} (UMS at equal sizes)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
