"""Stage of rules/scores.smk: ``extraction_metrics``, every generated set scored beside the null
(:func:`diffmem.metrics.scores.score_run`), with its figures."""

from __future__ import annotations

import numpy as np

from ..device import resolve_device
from ..io import load_npz, save_csv, save_figure, save_json
from ..metrics.memorization import BAND_NAMES
from ..metrics.null import run_null_pool
from ..metrics.scores import NULL, PLAIN, SIDE, per_image, score_run
from ..metrics.similarity import Matching
from ..plotting import plt


def extraction_metrics_stage(*, train_npz: str, plain_npz: str, side_npzs: list[str],
                             scales: list[float], heldout_npz: str, unused_npz: str,
                             duplicates_npz: str | None, cfg: dict, device: str, out_csv: str,
                             out_json: str, out_pairs_png: str, out_hist_png: str,
                             out_scale_png: str, out_nearest_csv: str) -> dict:
    dev = resolve_device(device)
    tr, heldout, pool, groups = load_with_null(train_npz, heldout_npz, unused_npz,
                                               duplicates_npz, cfg)
    side_sets = {}
    for s, p in zip(scales, side_npzs, strict=True):
        d = load_npz(p)
        side_sets[float(s)] = (d["images"], d["labels"])
    plain = load_npz(plain_npz)["images"]
    res = score_run(train=tr["images"], groups=groups, plain=plain,
                    side_sets=side_sets, pool=pool, heldout=heldout, cfg=cfg, device=dev)
    summary = write_scores(res, tr, pool, out_csv=out_csv, out_nearest_csv=out_nearest_csv,
                           out_hist_png=out_hist_png)
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


def load_with_null(train_npz: str, heldout_npz: str, unused_npz: str,
                   duplicates_npz: str | None, cfg: dict) -> tuple:
    """A run's training and held-out files with its null: (train, held-out images, pool,
    training groups)."""
    tr = load_npz(train_npz)
    heldout = load_npz(heldout_npz)["images"]
    pool, groups = run_null_pool(
        train_indices=tr["indices"], heldout=heldout, unused=load_npz(unused_npz),
        duplicates=load_npz(duplicates_npz) if duplicates_npz else None, cfg=cfg)
    return tr, heldout, pool, groups


def write_scores(res: dict, tr: dict, pool: dict, *, out_csv: str, out_nearest_csv: str,
                 out_hist_png: str) -> dict:
    """The files every scored run writes (the table, the per-image CSV, the similarity
    histogram beside the null) and its summary (the bands, the null's composition, the tests),
    which the caller completes and saves."""
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
    primary = res["primary_similarity"]
    _hist_figure(res["nns"], res["bands"][primary]["edges"], primary, out_hist_png,
                 res["label"])
    return summary


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


def _hist_figure(nns, edges, kind, path, label=PLAIN):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sims = {k: v[kind]["sim"][:, 0] for k, v in nns.items()}
    lo = min(float(s.min()) for s in sims.values() if len(s))
    bins = np.linspace(lo, 1, 40)
    if NULL in sims:
        ax.hist(sims[NULL], bins=bins, density=True, color="0.6", alpha=0.6, label=NULL)
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
