"""Stage of rules/scores.smk: ``extraction_metrics``, every generated set scored beside the null
(:func:`diffmem.metrics.scores.score_run`), with its figures."""

from __future__ import annotations

import numpy as np

from ..attacks.copies import embed, eye_twins, load_embedding, retrieval_check, weakest
from ..device import resolve_device
from ..io import load_json, load_npz, save_csv, save_figure, save_json
from ..metrics.memorization import BAND_NAMES
from ..metrics.null import run_null_pool
from ..metrics.scores import COMBINED, NULL, PLAIN, SIDE, per_image, score_run
from ..metrics.similarity import Matching
from ..plotting import plt

# a latent model's null: what its decoder makes of unseen images (the histogram's label)
DECODED_NULL = "unseen images through the autoencoder, D(E(x))"


def extraction_metrics_stage(*, train_npz: str, plain_npz: str, side_npzs: list[str],
                             scales: list[float], heldout_npz: str, unused_npz: str,
                             duplicates_npz: str | None, cfg: dict, device: str, out_csv: str,
                             out_json: str, out_pairs_png: str, out_hist_png: str,
                             out_scale_png: str, out_nearest_csv: str,
                             embedding: str | None = None,
                             embedding_json: str | None = None,
                             raw_heldout_npz: str | None = None,
                             autoencoder_json: str | None = None) -> dict:
    """A latent model's ``heldout_npz`` is its decoder-aware null (D(E(x)) of the held-out
    images, :mod:`diffmem.attacks.autoencoder`): ``raw_heldout_npz`` (the raw images) then
    decides which of them are the copy eye's twins of a training image, so each reconstruction
    keeps its source's place in the null, and gives the raw null's copy answer, reported beside
    (``tests.plain_copies_raw_null``); ``autoencoder_json`` adds the autoencoder's own test."""
    dev = resolve_device(device)
    eye = CopyEye.load(embedding, embedding_json, dev) if embedding else None
    raw = load_npz(raw_heldout_npz)["images"] if raw_heldout_npz else None
    tr, heldout, pool, groups = load_with_null(train_npz, heldout_npz, unused_npz,
                                               duplicates_npz, cfg, eye, twin_heldout=raw)
    side_sets = {}
    for s, p in zip(scales, side_npzs, strict=True):
        d = load_npz(p)
        side_sets[float(s)] = (d["images"], d["labels"])
    plain = load_npz(plain_npz)["images"]
    res = score_run(train=tr["images"], groups=groups, plain=plain,
                    side_sets=side_sets, pool=pool, heldout=heldout, cfg=cfg, device=dev,
                    embed=eye.embed if eye else None)
    summary = write_scores(res, tr, pool, out_csv=out_csv, out_nearest_csv=out_nearest_csv,
                           out_hist_png=out_hist_png, eye=eye, cfg=cfg,
                           null_label=DECODED_NULL if raw is not None else None)
    if raw is not None:
        summary["raw_null"] = raw_null_test(tr, raw, plain, unused_npz, duplicates_npz, cfg,
                                            eye, dev)
        summary["tests"]["plain_copies_raw_null"] = summary["raw_null"]
        summary["null_kind"] = f"decoder-aware: {DECODED_NULL}"
    if autoencoder_json:
        summary["tests"]["autoencoder"] = load_json(autoencoder_json)["test"]
    summary |= {"best_scale": res["best_scale"],
                "best_scale_selection_ums_high": {f"{k:g}": v
                                                  for k, v in res["selection"].items()},
                "side_halves": res["halves"],
                "budget": min((len(v[0]) for v in side_sets.values()), default=0)}
    save_json(out_json, summary)
    nns, primary = res["nns"], res["primary_similarity"]
    best = res["best_scale"]
    if best is not None:
        pairs_figure(side_sets[best][0], tr["images"], nns[(SIDE, best)][primary], out_pairs_png,
                      f"SIDE (scale {best:g}): top pairs, generated | nearest training image")
    else:
        pairs_figure(plain, tr["images"], nns[PLAIN][primary],
                      out_pairs_png, "plain sampling: top pairs")
    _scale_figure(res["table"][res["table"]["similarity"] == primary], out_scale_png)
    return summary


class CopyEye:
    """A run's copy embedding (:mod:`diffmem.attacks.copies`), loaded strictly from its
    safetensors, with its JSON (the twin threshold among it)."""

    def __init__(self, net, meta: dict, device):
        self.net, self.meta, self.device = net, meta, device

    @classmethod
    def load(cls, weights: str, meta_json: str, device) -> CopyEye:
        net, meta = load_embedding(weights, meta_json, device)
        return cls(net, meta, device)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return embed(self.net, images, self.device)

    def twins_of(self, train: np.ndarray, matching):
        """images → which both eyes put at one training image (the eye within its twin
        threshold, the pixel match at ``copies.twin_pixel_cosine``)."""
        train_emb = self.embed(train)
        cfg = self.meta["config"]
        return lambda images: eye_twins(
            train, train_emb, images, self.embed(images), threshold=self.meta["twin_threshold"],
            pixel_cosine=float(cfg.get("twin_pixel_cosine", 0.95)), matching=matching,
            device=self.device)


def load_with_null(train_npz: str, heldout_npz: str, unused_npz: str,
                   duplicates_npz: str | None, cfg: dict, eye: CopyEye | None = None,
                   twin_heldout: np.ndarray | None = None) -> tuple:
    """A run's training and held-out files with its null: (train, held-out images, pool,
    training groups). With the copy ``eye`` its twins of training images are left out of the
    null too (:func:`diffmem.attacks.copies.twin_threshold`), judged on ``twin_heldout`` (the
    raw images of a decoded null, row for row) where given."""
    tr = load_npz(train_npz)
    return (tr, *with_null(tr, load_npz(heldout_npz)["images"], unused_npz, duplicates_npz, cfg,
                           eye, twin_heldout))


def with_null(tr: dict, heldout: np.ndarray, unused_npz: str, duplicates_npz: str | None,
              cfg: dict, eye: CopyEye | None = None,
              twin_heldout: np.ndarray | None = None) -> tuple:
    """(held-out images, pool, training groups) of :func:`load_with_null`."""
    twins = eye.twins_of(tr["images"], Matching.from_config(
        cfg.get("matching"), tr["images"].shape[1])) if eye else None
    pool, groups = run_null_pool(
        train_indices=tr["indices"], heldout=heldout, unused=load_npz(unused_npz),
        duplicates=load_npz(duplicates_npz) if duplicates_npz else None, cfg=cfg,
        eye_twin=twins, eye_heldout=twin_heldout)
    return heldout, pool, groups


def raw_null_test(tr: dict, raw: np.ndarray, plain: np.ndarray, unused_npz: str,
                  duplicates_npz: str | None, cfg: dict, eye: CopyEye | None, dev) -> dict:
    """A latent model's copy test against the raw null (unseen images not passed through the
    autoencoder), reported beside the decoder-aware answer and never the verdict's: the
    decoder's smoothing raises nearest-training similarity, so this one can say "yes" of a
    model that only smooths."""
    _, pool, groups = with_null(tr, raw, unused_npz, duplicates_npz, cfg, eye)
    res = score_run(train=tr["images"], groups=groups, plain=plain, side_sets={}, pool=pool,
                    heldout=raw, cfg=cfg, device=dev, embed=eye.embed if eye else None)
    return res["tests"]["plain_copies"] | {
        "question": "against a raw null (for comparison only: unseen images not through the "
                    "autoencoder), does plain sampling copy training images?"}


def write_scores(res: dict, tr: dict, pool: dict, *, out_csv: str, out_nearest_csv: str,
                 out_hist_png: str, eye: CopyEye | None = None, cfg: dict | None = None,
                 null_label: str | None = None) -> dict:
    """The files every scored run writes (the table, the per-image CSV, the similarity
    histogram beside the null) and its summary (the bands, the null's composition, the tests,
    the copy eye and its retrieval check), which the caller completes and saves."""
    table = res["table"]
    save_csv(out_csv, table)
    names = [str(n) for n in tr["names"]] if "names" in tr else None
    save_csv(out_nearest_csv, per_image(res, names))
    summary = {
        "no_null": len(pool["score"]) == 0,
        "primary_similarity": res["primary_similarity"], "bands": res["bands"],
        "equal_size": res["equal_size"], "top_k": res["top_k"],
        "null": pool["counts"], "label": res["label"],
        "rows": table.replace({np.nan: None}).to_dict(orient="records"),
        "tests": res["tests"], "secondary": res["secondary"],
    }
    if eye is not None:
        summary["copy_eye"] = copy_eye_summary(res, eye, tr["images"], cfg or {})
    primary = res["primary_similarity"]
    _hist_figure(res["nns"], res["bands"][primary]["edges"], primary, out_hist_png,
                 res["label"], null_label)
    return summary


def copy_eye_summary(res: dict, eye: CopyEye, train: np.ndarray, cfg: dict) -> dict:
    """What the copy eye is and what it can see on this run: its training, its twin threshold,
    and (with unseen images to set the bands) the retrieval check per transform family, whose
    smallest recall the copy test then cites beside its detectable rate."""
    meta = eye.meta
    out = {"encoder": meta["config"].get("encoder"), "train_images": meta["train_images"],
           "steps": meta["training"]["steps"], "final_loss": meta["training"]["final_loss"],
           "twin_threshold": meta["twin_threshold"], "twin_quantile": meta["twin_quantile"],
           "twin_pixel_cosine": float(meta["config"].get("twin_pixel_cosine", 0.95)),
           "trained_on": meta["trained_on"], "checked": False}
    scorer = res["scorer"]
    if COMBINED not in scorer.kinds:
        out["note"] = ("no unseen images: the embedding is reported without bands and the two "
                       "eyes are not combined")
        return out
    per_family = int(meta["config"].get("check_images", 64))
    rows = retrieval_check(scorer, train, per_family=per_family,
                           seed=int(cfg.get("seed", 4)))
    out |= {"checked": True, "families": rows, "images_per_family": per_family,
            **weakest(rows)}
    res["tests"]["plain_copies"] |= weakest(rows)
    return out


def pairs_figure(images, train, nn_, path, title, top: int = 12):
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
        how = Matching.describe(nn_["transforms"][nn_["transform"][i, 0]])
        axes[1, j].set_title(f"train #{nn_['index'][i, 0]}\n{how}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path)


def _hist_figure(nns, edges, kind, path, label=PLAIN, null_label=None):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sims = {k: v[kind]["sim"][:, 0] for k, v in nns.items()}
    lo = min(float(s.min()) for s in sims.values() if len(s))
    bins = np.linspace(lo, 1, 40)
    if NULL in sims:
        ax.hist(sims[NULL], bins=bins, density=True, color="0.6", alpha=0.6,
                label=f"{null_label} (null)" if null_label else NULL)
    else:
        ax.text(0.02, 0.95, "no unseen images: no null", transform=ax.transAxes, fontsize=8,
                va="top")
    ax.hist(sims[label], bins=bins, density=True, histtype="step", lw=2, label=label)
    for k, s in sims.items():
        if isinstance(k, tuple):
            ax.hist(s, bins=bins, density=True, histtype="step", lw=1,
                    label=f"SIDE s={k[1]:g}")
    for e, name in zip(edges, BAND_NAMES, strict=True):
        ax.axvline(e, color="crimson", ls=":", lw=1)
        ax.text(e, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=6, color="crimson")
    ax.set_xlabel(f"{kind} similarity to the nearest training image")
    ax.set_ylabel("density")
    ax.set_title(f"nearest-training similarity: generated vs "
                 f"{null_label or 'unseen real images'} (band edges dotted)", fontsize=8)
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
