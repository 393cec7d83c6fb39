"""Stage of rules/membership.smk: ``membership``, can training images be told from unseen ones?
(see :mod:`diffmem.attacks.membership`)."""

from __future__ import annotations

import numpy as np

from ..attacks.membership import attack, denoising_losses
from ..device import resolve_device
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import predict_eps
from ..diffusion.unet import load_model
from ..io import load_npz, save_figure, save_json
from ..metrics.null import run_null_pool
from ..metrics.stats import untested
from ..plotting import plt


def membership_stage(*, weights: str, model_config: str, train_npz: str, heldout_npz: str,
                     unused_npz: str, duplicates_npz: str | None, cfg: dict, scoring: dict,
                     device: str, bf16: bool, out_json: str, out_png: str) -> dict:

    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    autocast = bf16 and dev.type == "cuda"
    tr = load_npz(train_npz)
    heldout = load_npz(heldout_npz)["images"]
    unused = load_npz(unused_npz)
    pool, _ = run_null_pool(
        train_indices=tr["indices"], heldout=heldout, unused=unused,
        duplicates=load_npz(duplicates_npz) if duplicates_npz else None, cfg=scoring)
    rng = np.random.default_rng(int(cfg.get("seed", 5)))
    cap = int(cfg.get("max_images", 2000))
    members = tr["images"]
    members = members[np.sort(rng.choice(len(members), cap, replace=False))] \
        if len(members) > cap else members
    non = pool["images"]
    non = non[np.sort(rng.choice(len(non), cap, replace=False))] if len(non) > cap else non
    t_fracs = [float(f) for f in cfg.get("t_fractions", [0.02, 0.05, 0.1])]

    def eps_fn(x_t, t):
        return predict_eps(model, process, x_t, t, autocast)

    kw = dict(draws=int(cfg.get("draws", 4)), seed=int(cfg.get("seed", 5)),
              batch_size=int(cfg.get("batch_size", 512)), device=dev)
    m_loss = denoising_losses(eps_fn, process, members, t_fracs, **kw)
    n_loss = denoising_losses(eps_fn, process, non, t_fracs, **kw)
    # without unseen images there is nothing to tell training images from: the members'
    # losses are reported and the question stays open
    res = attack(m_loss, n_loss, seed=int(cfg.get("seed", 5)), t_fracs=t_fracs) if len(non) \
        else untested(None, len(members), "no unseen images to tell training images from") \
        | {"tpr": None, "auc_by_t": []}
    summary = res | {
        "question": "can training images be told from unseen ones?",
        "statistic": "AUC of the loss attack (−denoising loss at t/T = "
                     + ", ".join(f"{f:g}" for f in t_fracs) + "), training vs unseen images",
        "test": "one-sided Mann–Whitney U; stratified bootstrap 95 % interval",
        "margin": float(cfg.get("margin", 0.05)), "null_effect": 0.5,
        "n": int(len(members)), "null_n": int(len(non)),
        "members": int(len(members)), "nonmembers": int(len(non)), "draws": kw["draws"],
        "t_fractions": t_fracs, "null": pool["counts"],
        "mean_loss_members": float(m_loss.mean()),
        "mean_loss_nonmembers": float(n_loss.mean()) if len(non) else None,
    }
    save_json(out_json, summary)
    _figure(m_loss.mean(1), n_loss.mean(1), summary, out_png)
    return summary


def _figure(m_loss, n_loss, s, path):
    if not len(n_loss):
        fig, ax = plt.subplots(figsize=(5, 3.3))
        ax.hist(m_loss, bins=40, histtype="step", lw=2, label="training")
        ax.set_xlabel("denoising loss (mean over t and draws)")
        ax.set_ylabel("images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.suptitle(f"loss attack: {s['members']} training images and no unseen image: no "
                     f"null, no attack", fontsize=8)
        save_figure(fig, path)
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    bins = np.linspace(min(m_loss.min(), n_loss.min()), max(m_loss.max(), n_loss.max()), 40)
    axes[0].hist(n_loss, bins=bins, density=True, alpha=0.6, color="0.6", label="unseen (null)")
    axes[0].hist(m_loss, bins=bins, density=True, histtype="step", lw=2, label="training")
    axes[0].set_xlabel("denoising loss (mean over t and draws)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    pos, neg = -m_loss, -n_loss
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = [(pos >= t).mean() for t in thr]
    fpr = [(neg >= t).mean() for t in thr]
    axes[1].plot([0, *fpr, 1], [0, *tpr, 1], lw=1.5, label=f"AUC {s['effect']:.3f} "
                 f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
    axes[1].plot([0, 1], [0, 1], ls=":", color="0.4", label="chance")
    axes[1].set_xlabel("false-positive rate (unseen flagged)")
    axes[1].set_ylabel("true-positive rate (training flagged)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"loss attack: {s['members']} training vs {s['nonmembers']} unseen images; "
                 f"TPR {s['tpr']:.3f} at FPR {s['fpr_achieved']:.3f}", fontsize=8)
    save_figure(fig, path)
