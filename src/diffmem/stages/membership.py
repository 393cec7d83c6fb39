"""Stages of rules/membership.smk: ``membership`` (can training images be told from unseen ones?
see :mod:`diffmem.attacks.membership`) and ``exposure`` (which training images are most exposed,
by membership and by copying together)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..attacks.membership import (
    T_GRID,
    attack,
    attack_scores,
    denoising_losses,
    select_and_score,
)
from ..device import resolve_device
from ..diffusion.denoiser import encode_images
from ..diffusion.process import NoiseProcess
from ..diffusion.unet import load_model
from ..io import load_json, load_npz, save_csv, save_figure, save_json, save_npz
from ..metrics.stats import untested
from ..plotting import plt
from .scores import load_with_null

NAMES = {"loss": "the loss attack", "sima": "SimA", "pia": "PIA"}


def membership_stage(*, weights: str, model_config: str, train_npz: str, heldout_npz: str,
                     unused_npz: str, duplicates_npz: str | None, cfg: dict, scoring: dict,
                     device: str, bf16: bool, out_json: str, out_png: str,
                     out_scores: str) -> dict:
    """Every attack at every t of the grid on the run's training images (members) and its null
    (non-members); the attack and its t chosen on one half, scored on the other; the verdict's
    statistic is the chosen attack's AUC on the scoring half. With too few images to split, the
    loss attack on every image, said so."""
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    autocast = bf16 and dev.type == "cuda"
    tr, _, pool, train_groups = load_with_null(train_npz, heldout_npz, unused_npz,
                                               duplicates_npz, scoring)
    seed = int(cfg.get("seed", 5))
    rng = np.random.default_rng(seed)
    cap = int(cfg.get("max_images", 2000))
    rows = np.arange(len(tr["images"]))
    rows = np.sort(rng.choice(rows, cap, replace=False)) if len(rows) > cap else rows
    members, member_groups = tr["images"][rows], np.asarray(train_groups)[rows]
    # non-members: the null's two halves (calibrate: selection, score: scoring), each capped
    halves = [pool[h] if len(pool[h]) <= cap // 2 else
              np.sort(rng.choice(pool[h], cap // 2, replace=False))
              for h in ("calibrate", "score")]
    non = pool["images"][np.concatenate(halves)] if len(pool["score"]) else pool["images"][:0]
    n_halves = (np.arange(len(halves[0])), len(halves[0]) + np.arange(len(halves[1])))
    # a latent model is attacked in its own space, z = scale·E(x) (the posterior mean), as
    # CopyMark and the SimA authors attack latent models; a pixel model's images as they are
    members, non = encode_images(model, members, dev), encode_images(model, non, dev)
    t_fracs = [float(f) for f in cfg.get("t_fractions", [0.02, 0.05, 0.1])]

    def eps_fn(x_t, t):
        return model.eps(x_t, t, autocast=autocast)

    kw = dict(draws=int(cfg.get("draws", 4)), seed=seed,
              batch_size=int(cfg.get("batch_size", 512)), device=dev)
    m_loss = denoising_losses(eps_fn, process, members, t_fracs, **kw)
    common = {"question": "can training images be told from unseen ones?",
              "margin": float(cfg.get("margin", 0.05)), "null_effect": 0.5,
              "members": int(len(members)), "nonmembers": int(len(non)), "draws": kw["draws"],
              "t_fractions": t_fracs, "null": pool["counts"],
              "space": (f"latents z = {model.scale:g}·E(x) of the {model.kind}"
                        if model.latent else "images"),
              "mean_loss_members": float(m_loss.mean())}
    if not len(non):  # nothing to tell training images from: reported, not tested
        summary = common | untested(None, len(members), "no unseen images to tell training "
                                                          "images from") | {
            "statistic": "AUC of the loss attack, training vs unseen images",
            "test": "none without unseen images", "attacks": {}, "chosen": None,
            "fallback": None, "tpr": None, "mean_loss_nonmembers": None}
        save_json(out_json, summary)
        save_npz(out_scores, member_rows=rows, member_score=-m_loss.mean(1),
                 nonmember_score=np.zeros(0), member_half=np.full(len(rows), "all"))
        _figure(summary, {}, None, out_png)
        return summary
    n_loss = denoising_losses(eps_fn, process, non, t_fracs, **kw)
    m_all, n_all = attack_scores(eps_fn, process, members, cfg, dev), \
        attack_scores(eps_fn, process, non, cfg, dev)
    sel = select_and_score(m_all, n_all, member_groups, n_halves, cfg)
    common["mean_loss_nonmembers"] = float(n_loss.mean())
    if sel is None:
        # too few images to choose on one half and score on the other: the baseline on all
        res = attack(m_loss, n_loss, seed=seed, t_fracs=t_fracs)
        summary = common | res | {
            "statistic": "AUC of the loss attack (−denoising loss at t/T = "
                         + ", ".join(f"{f:g}" for f in t_fracs) + "), training vs unseen "
                         "images; too few images to choose an attack on one half: the loss "
                         "attack on all of them",
            "test": "one-sided Mann–Whitney U; stratified bootstrap 95 % interval",
            "n": int(len(members)), "null_n": int(len(non)), "chosen": "loss",
            "fallback": "fewer than 10 members or 20 non-members per half: no selection, the "
                        "loss attack on every image", "attacks": {}, "halves": None}
        scores = (-m_loss.mean(1), -n_loss.mean(1))
        rocs = {"loss": scores}
        half = np.full(len(rows), "all")  # nothing was chosen on any of them
        shown = scores
    else:
        name, best = sel["chosen"], sel["attacks"][sel["chosen"]]
        j = grid_index(cfg, best["t_over_T"])
        summary = common | {k: v for k, v in best.items() if k != "selection_auc"} | {
            "statistic": f"AUC of {NAMES[name]} at t/T = {best['t_over_T']:g} (chosen on the "
                         f"other half), training vs unseen images of the scoring half",
            "test": "one-sided Mann–Whitney U; stratified bootstrap 95 % interval",
            "n": sel["halves"]["scoring"]["members"],
            "null_n": sel["halves"]["scoring"]["nonmembers"],
            "chosen": name, "chosen_t_over_T": best["t_over_T"], "fallback": None,
            "attacks": sel["attacks"], "halves": sel["halves"],
            "selection": "attack and t by AUC on the selection half (members: whole "
                         "near-duplicate groups; non-members: the null's calibration half), "
                         "ties to fewer queries, then smaller t; reported on the scoring half"}
        scores = (m_all[name][:, j], n_all[name][n_halves[1], j])
        half = np.full(len(rows), "selection")
        half[sel["member_rows"]["scoring"]] = "scoring"
        shown = (scores[0][sel["member_rows"]["scoring"]], scores[1])  # the figure's half
        rocs = {a: (m_all[a][sel["member_rows"]["scoring"], grid_index(cfg, r["t_over_T"])],
                    n_all[a][n_halves[1], grid_index(cfg, r["t_over_T"])])
                for a, r in sel["attacks"].items()}
    save_json(out_json, summary)
    # every member's score under the chosen attack (and the half it was in: the selection
    # half's helped choose the attack), and the scoring half's non-members', for the exposure
    save_npz(out_scores, member_rows=rows, member_score=scores[0], nonmember_score=scores[1],
             member_half=half)
    _figure(summary, rocs, shown, out_png)
    return summary


def grid_index(cfg: dict, t_over_T: float) -> int:
    return [float(f) for f in cfg.get("t_grid", T_GRID)].index(t_over_T)


def _roc(pos, neg):
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    return ([(neg >= t).mean() for t in thr], [(pos >= t).mean() for t in thr])


def _figure(s, rocs, scores, path):
    if scores is None:
        fig, ax = plt.subplots(figsize=(5, 3.3))
        ax.text(0.05, 0.5, f"{s['members']} training images and no unseen image:\nno null, "
                           f"no attack", fontsize=9)
        ax.axis("off")
        save_figure(fig, path)
        return
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    pos, neg = scores
    bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 40)
    axes[0].hist(neg, bins=bins, density=True, alpha=0.6, color="0.6", label="unseen (null)")
    axes[0].hist(pos, bins=bins, density=True, histtype="step", lw=2, label="training")
    axes[0].set_xlabel(f"score of {NAMES[s['chosen']]} (higher: member)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    for name, (p, n) in rocs.items():
        fpr, tpr = _roc(p, n)
        res = s["attacks"].get(name, s)
        label = f"{NAMES[name]}" + (f" t/T={res['t_over_T']:g}" if "t_over_T" in res else "") \
            + f": AUC {res['effect']:.3f}" + (" (chosen)" if name == s["chosen"] else "")
        axes[1].plot([1e-4, *np.maximum(fpr, 1e-4), 1], [0, *tpr, 1], lw=1.5, label=label)
    grid = np.logspace(-4, 0, 50)
    axes[1].plot(grid, grid, ls=":", color="0.4", label="chance")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-3 if len(neg) < 1000 else 1e-4, 1)
    axes[1].set_xlabel("false-positive rate (unseen flagged), log scale")
    axes[1].set_ylabel("true-positive rate (training flagged)")
    axes[1].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)
    half = "scoring half" if s.get("halves") else "all images"
    fig.suptitle(f"membership inference ({half}): {s['n']} training vs {s['null_n']} unseen "
                 f"images; the chosen attack's TPR {s['tpr']:.3f} at FPR "
                 f"{s['fpr_achieved']:.3f}", fontsize=8)
    save_figure(fig, path)


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Which p-values pass Benjamini–Hochberg at false-discovery rate q."""
    p = np.asarray(p, float)
    m = len(p)
    order = np.argsort(p)
    ok = p[order] <= q * np.arange(1, m + 1) / m
    passed = np.zeros(m, bool)
    if ok.any():
        passed[order[:np.flatnonzero(ok).max() + 1]] = True
    return passed


def exposure_stage(*, train_npz: str, scores_npz: str, membership_json: str, nearest_csv: str,
                   samples_npz: str, boundary_json: str | None, target_json: str | None,
                   q: float, out_csv: str, out_json: str, out_png: str, top: int = 8) -> dict:
    """Every training image with its membership score and empirical p-value against the
    scoring half's non-members, the plain samples (and SIDE samples) that copy it (their nearest
    training image is it, in the high band), and its walk-back t50 where the boundary search
    ran from it; how many pass Benjamini–Hochberg at ``q``; the most exposed, beside their
    closest sample."""
    tr = load_npz(train_npz)
    sc = load_npz(scores_npz)
    mem = load_json(membership_json)
    n_train = len(tr["images"])
    names = [str(n) for n in tr["names"]] if "names" in tr else [f"#{i}" for i in range(n_train)]
    score = np.full(n_train, np.nan)
    score[sc["member_rows"]] = sc["member_score"]
    half = np.full(n_train, "not scored", dtype=object)  # beyond membership.max_images
    half[sc["member_rows"]] = sc["member_half"]
    neg = np.sort(sc["nonmember_score"])
    n_neg = len(neg)
    # (1 + #{non-members at least as high}) / (n + 1): the smallest attainable is 1/(n + 1)
    p = np.full(n_train, np.nan)
    if n_neg:
        above = n_neg - np.searchsorted(neg, score[sc["member_rows"]], side="left")
        p[sc["member_rows"]] = (1 + above) / (n_neg + 1)
    near = pd.read_csv(nearest_csv)
    copies = near[near["copy"]]
    plain = copies[copies["set"] != "SIDE"].groupby("nearest_train").size()
    side = copies[copies["set"] == "SIDE"].groupby("nearest_train").size()
    t50 = np.full(n_train, np.nan)
    if boundary_json:
        b = load_json(boundary_json)
        for image in b.get("images", []):  # an imported model's chosen training images
            t50[image["train_index"]] = image["t50"]
        if target_json and not b.get("images"):  # the fingerprinted target
            t50[int(load_json(target_json)["target_position"])] = b["t50"]
    df = pd.DataFrame({"train_index": np.arange(n_train), "name": names,
                       "membership_score": score, "p_value": p, "half": half,
                       "plain_copies": plain.reindex(range(n_train), fill_value=0).to_numpy(),
                       "side_copies": side.reindex(range(n_train), fill_value=0).to_numpy(),
                       "walk_back_t50": t50})
    # Benjamini–Hochberg over the training images whose scores chose nothing: the scoring
    # half's (or all, where no attack was chosen); the selection half's p-values are listed but
    # lean low (their scores chose the attack and t), so they are not counted
    tested = ~np.isnan(p) & np.isin(half, ("scoring", "all"))
    df["bh_pass"] = False
    if tested.any():
        df.loc[tested, "bh_pass"] = benjamini_hochberg(p[tested], q)
    df = df.sort_values(["p_value", "plain_copies", "side_copies"],
                        ascending=[True, False, False], na_position="last")
    save_csv(out_csv, df)
    m = int(tested.sum())
    p_min = 1 / (n_neg + 1) if n_neg else None
    # BH rejects k images at p_min when p_min ≤ k·q/m: the simultaneous hits needed
    hits = int(math.ceil(p_min * m / q - 1e-9)) if p_min else None
    summary = {"training_images": n_train, "scored": m, "nonmembers": n_neg, "q": q,
               "attack": mem.get("chosen"), "bh_passed": int(df["bh_pass"].sum()),
               "smallest_p": p_min,
               "hits_needed_at_smallest_p": hits,
               "selection_half_listed": int((half == "selection").sum()),
               # more hits needed than images tested: no image can pass, whatever the model
               "bh_reachable": hits is not None and hits <= m,
               "copied_training_images": int((df["plain_copies"] > 0).sum()),
               "most_exposed": df.head(top).replace({np.nan: None}).to_dict(orient="records")}
    save_json(out_json, summary)
    _exposure_figure(df.head(top), tr["images"], load_npz(samples_npz)["images"], near,
                     summary, out_png)
    return summary


def _exposure_figure(top, train, samples, near, s, path):
    cols = max(len(top), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.4 * cols, 3.3), squeeze=False)
    cmap = "gray" if train.ndim == 3 else None
    for ax in axes.flat:
        ax.axis("off")
    plain = near[near["set"] != "SIDE"]
    for j, (_, r) in enumerate(top.iterrows()):
        i = int(r["train_index"])
        axes[0, j].imshow(train[i], cmap=cmap, vmin=0, vmax=255)
        p = "–" if r["p_value"] != r["p_value"] else f"{r['p_value']:.3f}"
        axes[0, j].set_title(f"train {r['name']}\np {p}, copies {int(r['plain_copies'])}",
                             fontsize=6)
        mine = plain[plain["nearest_train"] == i]
        if len(mine):
            k = mine["similarity"].idxmax()
            axes[1, j].imshow(samples[int(plain.loc[k, "image"])], cmap=cmap, vmin=0, vmax=255)
            axes[1, j].set_title(f"closest sample\nsim {plain.loc[k, 'similarity']:.3f}",
                                 fontsize=6)
        else:  # an empty slot would read as a missing image
            axes[1, j].text(0.5, 0.5, "no plain sample\nhas it as its\nnearest training image",
                            ha="center", va="center", fontsize=6, transform=axes[1, j].transAxes)
    fig.suptitle(f"most exposed training images (top) and their closest plain sample (bottom); "
                 f"{s['bh_passed']} of the {s['scored']} tested pass Benjamini–Hochberg at "
                 f"q = {s['q']:g}", fontsize=7)
    save_figure(fig, path)
