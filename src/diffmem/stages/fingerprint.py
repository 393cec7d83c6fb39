"""Stages of rules/fingerprint.smk: the adversary classifiers, the reproduction count, the
boundary search from the target and its controls, the detector check and Tables 1/2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..attacks.boundary import boundary_sampler, search_queries, walk_back_summary
from ..attacks.fingerprint.classifiers import (
    build_resnet,
    classify,
    id_task,
    load_pair,
    not_twins_of,
    saf_task,
    train_classifier,
)
from ..attacks.fingerprint.target import (
    disc_strength,
    mae_to,
    pixel_reproduction,
    select_controls,
)
from ..device import as_nchw_uint8, gpu_peak_gib, normalise, resolve_device, to_uint8
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import reverse
from ..diffusion.unet import load_model
from ..io import (
    atomic_path,
    load_json,
    load_npz,
    save_csv,
    save_figure,
    save_json,
    save_safetensors,
)
from ..metrics.similarity import PLAIN_PIXELS, Matching
from ..metrics.stats import binomial_p_values, corrected_rate, upper_darboux, wilson
from ..plotting import plt


def train_fingerprint_classifiers_stage(*, train_npz: str, target_npz: str, target_json: str,
                                        heldout_npz: str, cfg: dict, seed: int, device: str,
                                        out_saf: str, out_id: str, out_meta: str,
                                        progress: bool = True) -> dict:
    """Train C_SAF and C_ID for one run; write both weights and one metrics JSON."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    train = load_npz(train_npz)["images"]
    tgt = load_npz(target_npz)
    info = load_json(target_json)
    heldout = load_npz(heldout_npz)["images"]
    radius, grey = info["saf"]["radius"], info["saf"]["grey"]
    others = np.delete(train, info["target_position"], axis=0)  # clean training images
    # C_ID's negatives must not hold x*'s near-duplicates (other frames of the same patient):
    # as negatives they would teach the classifier that x* is not x*
    limit = float(info.get("max_twin_similarity", 0.95))
    match = Matching(**info["matching"]) if "matching" in info else PLAIN_PIXELS
    others = not_twins_of(tgt["original"], others, limit, match)
    id_heldout = not_twins_of(tgt["original"], heldout, limit, match)
    channels = 1 if train.ndim == 3 else train.shape[-1]
    common = dict(noise_std=cfg["noise_std"], augmix=cfg["augmix"], device=dev)
    fit = dict(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["learning_rate"],
               eval_every=cfg["eval_every"], patience=cfg["patience"], progress=progress)
    out = {"depth": cfg["depth"], "in_channels": channels, "num_classes": 1, "seed": seed}

    saf = saf_task(others, heldout, radius, grey, train_rate=cfg["saf"]["train_rate"],
                   val_rate=cfg["saf"]["val_rate"], seed=seed,
                   alpha_min=cfg["saf"].get("alpha_min", 1.0),
                   blur_sigma=cfg["saf"].get("blur_sigma", 0.0), **common)
    c_saf = build_resnet(cfg["depth"], channels).to(dev)
    out["c_saf"] = train_classifier(c_saf, saf, name="C_SAF", **fit)

    ident = id_task(tgt["original"], others, id_heldout, radius, grey,
                    positive_rate=cfg["id"]["positive_rate"],
                    train_saf_rate=cfg["id"]["train_saf_rate"],
                    val_saf_rate=cfg["id"]["val_saf_rate"], mask_rate=cfg["id"]["mask_rate"],
                    val_size=max(2 * len(heldout), 256), seed=seed + 7, **common)
    c_id = build_resnet(cfg["depth"], channels).to(dev)
    out["c_id"] = train_classifier(c_id, ident, name="C_ID", **fit)

    save_safetensors(out_saf, c_saf.state_dict())
    save_safetensors(out_id, c_id.state_dict())
    save_json(out_meta, out)
    return out


def detect_reproductions_stage(*, samples_npz: str, target_npz: str, target_json: str, c_saf: str,
                               c_id: str, classifiers_json: str, threshold: float, device: str,
                               out_csv: str, out_json: str, out_png: str, max_shown: int = 40,
                               heldout_npz: str | None = None) -> dict:
    dev = resolve_device(device)
    nets, _ = load_pair(c_saf, c_id, classifiers_json, dev)
    samples = load_npz(samples_npz)["images"]
    tgt = load_npz(target_npz)
    info = load_json(target_json)
    x = normalise(as_nchw_uint8(samples, dev))
    p_saf, p_id = (p.cpu().numpy() for p in classify(nets, x))
    saf_pos, id_pos = p_saf > threshold, p_id > threshold
    both = saf_pos & id_pos
    ref = tgt["saf"].astype(np.float32) / 255.0
    flat = samples.reshape(len(samples), -1).astype(np.float32) / 255.0
    mae = mae_to(samples, tgt["saf"])
    mse = ((flat - ref.reshape(1, -1)) ** 2).mean(1)
    strength = disc_strength(samples, tgt["saf"], tgt["original"], tgt["mask"])
    # near-copies of x_SAF by the pixel test (disc at its place, closer to x_SAF than any unseen
    # image), listed and shown whether or not a classifier fired
    pixel = np.zeros(len(samples), bool)
    if heldout_npz:
        bar = float(mae_to(load_npz(heldout_npz)["images"], tgt["saf"]).min())
        pixel = pixel_reproduction(samples, tgt["saf"], tgt["original"], tgt["mask"], bar)
    flagged = np.nonzero(saf_pos | id_pos | pixel)[0]
    df = pd.DataFrame({"sample": flagged, "p_saf": p_saf[flagged], "p_id": p_id[flagged],
                       "saf_positive": saf_pos[flagged], "id_positive": id_pos[flagged],
                       "reproduction": both[flagged], "mae": mae[flagged], "mse": mse[flagged],
                       "disc_strength": strength[flagged], "pixel_near_copy": pixel[flagged]})
    save_csv(out_csv, df)
    n_train, k_samples, k = int(info["n_train"]), len(samples), int(both.sum())
    summary = {
        "samples": k_samples, "n_train": n_train, "threshold": threshold,
        "saf_positive": int(saf_pos.sum()), "id_positive": int(id_pos.sum()),
        "reproductions": k, "rate": k / max(k_samples, 1), "null_rate": 1 / n_train,
        **binomial_p_values(k, k_samples, 1 / n_train),
        "mae_reproductions": float(mae[both].mean()) if k else None,
        "mse_reproductions": float(mse[both].mean()) if k else None,
        "nearest_mae_all_samples": float(mae.min()) if len(mae) else None,
        # ID+ samples whose disc pixels are nearer x_SAF than x* (a pixel test at the known
        # place): near-copies of x_SAF that C_SAF may have missed
        "id_positive_with_disc": int((id_pos & (strength >= 0.5)).sum()),
        "pixel_near_copies": int(pixel.sum()),
        "pixel_near_copies_missed": int((pixel & ~both).sum()),
    }
    save_json(out_json, summary)
    _flagged_figure(samples, tgt["saf"], flagged, both, saf_pos, mae, strength, out_png,
                    max_shown, pixel, id_pos)
    return summary


def _flagged_figure(samples, target, flagged, both, saf_pos, mae, strength, path, max_shown,
                    pixel=None, id_pos=None):
    pixel = np.zeros(len(samples), bool) if pixel is None else pixel
    id_pos = np.ones(len(samples), bool) if id_pos is None else id_pos
    order = sorted(flagged, key=lambda i: (not both[i], not pixel[i], mae[i]))[:max_shown]
    n = len(order) + 1
    cols = min(n, 10)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.45 * rows), squeeze=False)
    cmap = "gray" if target.ndim == 2 else None
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(target, cmap=cmap, vmin=0, vmax=255)
    axes.flat[0].set_title("target x_SAF", fontsize=7, color="blue")
    for ax, i in zip(axes.flat[1:], order, strict=False):
        ax.imshow(samples[i], cmap=cmap, vmin=0, vmax=255)
        kind = ("REPRO" if both[i] else "SAF only" if saf_pos[i] else
                "ID only" if id_pos[i] else "pixel only")
        mark = " *" if pixel[i] else ""
        ax.set_title(f"{kind}{mark} #{i}\nMAE {mae[i]:.3f} disc {strength[i]:.2f}", fontsize=6,
                     color="green" if both[i] else ("crimson" if pixel[i] else "darkorange"))
    fig.suptitle(f"{int(both.sum())} reproductions (both classifiers), "
                 f"{len(flagged) - int(both.sum())} flagged by one only (false-positive "
                 f"candidates, orange); * red: near-copy of x_SAF by the pixel test "
                 f"({int(pixel.sum())}, {int((pixel & ~both).sum())} missed by the classifiers); "
                 f"disc = SAF strength at its place (1 = x_SAF's disc, 0 = x*'s pixels)",
                 fontsize=7)
    save_figure(fig, path)


def _dpm_and_detectors(weights, model_config, c_saf, c_id, classifiers_json, boundary: dict,
                       dev):
    """The trained DPM, its process, the boundary search's sampler and the two detectors."""
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    sampler, steps = boundary_sampler(boundary, process)
    nets, _ = load_pair(c_saf, c_id, classifiers_json, dev)
    return model, process, sampler, steps, nets


def boundary_search_stage(*, weights: str, model_config: str, target_npz: str, target_json: str,
                          train_npz: str, heldout_npz: str, unused_npz: str, c_saf: str, c_id: str,
                          classifiers_json: str, threshold: float, cfg: dict, seed: int,
                          device: str, bf16: bool, out_csv: str, out_json: str, out_png: str,
                          graphs: bool = True) -> dict:
    """The boundary search from the target and from matched control images
    (:mod:`diffmem.attacks.boundary`)."""
    dev = resolve_device(device)
    model, process, sampler, steps, nets = _dpm_and_detectors(weights, model_config, c_saf, c_id,
                                                              classifiers_json, cfg, dev)
    tgt, info = load_npz(target_npz), load_json(target_json)
    train, heldout = load_npz(train_npz)["images"], load_npz(heldout_npz)["images"]
    pos = int(info["target_position"])
    match = Matching(**info["matching"]) if "matching" in info else PLAIN_PIXELS
    ctl = select_controls(tgt["original"], train, pos, heldout, load_npz(unused_npz)["images"],
                          int(cfg.get("controls", 19)),
                          float(info.get("max_twin_similarity", 0.95)), dev, matching=match)
    mask = tgt["mask"].astype(bool)
    stamped = heldout[ctl["heldout_index"]].copy()
    stamped[:, mask] = tgt["saf"][mask]  # the same disc at the same place
    # references: the run's training set (x_SAF included), every held-out image, x*'s clean
    # original and the stamped controls
    refs = np.concatenate([train, heldout, tgt["original"][None], stamped])
    n_tr, n_h = len(train), len(heldout)
    queries = [("target", tgt["saf"], [pos, n_tr + n_h])]
    for j, h in enumerate(ctl["heldout_index"]):
        queries.append((f"control {j + 1}", stamped[j], [n_tr + int(h), n_tr + n_h + 1 + j]))

    def classifiers_accept(x0):
        p_saf, p_id = classify(nets, x0)
        return (p_saf > threshold) & (p_id > threshold)

    results, df, seconds = search_queries(
        model, process, sampler, steps, queries, refs, cfg, seed, dev, bf16,
        extra_accept={"target": classifiers_accept}, graphs=graphs)
    save_csv(out_csv, df)
    tr = results["target"]
    controls = [results[q[0]] for q in queries[1:]]
    # the paper's t′: the last t at which C_SAF ∧ C_ID accepted a run (same reverse runs)
    k_paper = tr["k_rules"][:, 1]
    t_paper = int(tr["t"][k_paper > 0].max()) if (k_paper > 0).any() else None
    area_paper = upper_darboux(tr["t"], k_paper, tr["m"], process.T)
    summary = {
        **walk_back_summary(tr, controls, process.T),
        "rule": "the output's nearest image is the query (or its clean original), and it is "
                "closer to it than the query is to any other image",
        "rho_paper": (t_paper / process.T) if t_paper is not None else 0.0,
        "t_star_paper": t_paper, "upper_darboux_area": area_paper,
        "upper_darboux_area_nearest": tr["upper_darboux_area"],
        "controls": [{"heldout_index": int(h), "nn_similarity": float(s)}
                     for h, s in zip(ctl["heldout_index"], ctl["nn_similarity"], strict=True)],
        "target_nn_similarity": ctl["target_nn_similarity"],
        "control_candidates": ctl["candidates"],
        "method": tr["method"], "m": tr["m"], "T": process.T, "evaluations": tr["evaluations"],
        "rounds": tr["rounds"], "seconds": seconds, "sampler": sampler, "steps": steps,
        "threshold": threshold, "peak_gpu_gib": gpu_peak_gib(dev),
    }
    save_json(out_json, summary)
    boundary_figure(df, summary, out_png)
    return summary


def boundary_figure(df, s, path):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, g in df.groupby("query", sort=False):
        target = name == "target"
        color = "C0" if target else "0.55"
        ax.fill_between(g["t_over_T"], g["ci_low"], g["ci_high"], alpha=0.2 if target else 0.07,
                        color=color)
        ax.plot(g["t_over_T"], g["p_hat"], "o-" if target else "-", ms=3,
                lw=1.6 if target else 0.8, color=color,
                label=(("training image " + s["query"]["name"]) if s.get("query_kind") else
                       "target x_SAF") if target else (name if name == "control 1" else None))
        if target and "accepted_classifiers" in g:
            ax.plot(g["t_over_T"], g["accepted_classifiers"] / g["m"], "--", lw=1, color="C1",
                    label="target, C_SAF ∧ C_ID (paper's t′)")
    ax.axvline(s["t50"], color="crimson", ls="--",
               label=f"target t50 = {s['t50']:.3f} [{s['t50_ci'][0]:.3f}, {s['t50_ci'][1]:.3f}]")
    if s["t50_control"]:
        ax.axvspan(min(s["t50_control"]), max(s["t50_control"]) + 1e-3, color="0.5", alpha=0.2,
                   label=f"controls' t50 range (rank p = {s['rank_p_value_t50']:.2f})")
    ax.set_xlabel("t / T (noise level the query is diffused to)")
    ax.set_ylabel("P(reverse run returns to the query)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.set_title(f"boundary search ({s['sampler']} {s['steps']} steps, M = {s['m']}): target vs "
                 f"{len(s['t50_control'])} unseen controls; walks back: {s['walks_back']}",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    save_figure(fig, path)


def detector_check_stage(*, weights: str, model_config: str, target_npz: str, target_json: str,
                         heldout_npz: str, samples_npz: str, c_saf: str, c_id: str,
                         classifiers_json: str, threshold: float, boundary: dict, cfg: dict,
                         seed: int, device: str, bf16: bool, out_json: str) -> dict:
    """How well C_SAF ∧ C_ID finds what it must find, against the trained DPM.

    Ground truth is the pixel test
    (:func:`~diffmem.attacks.fingerprint.target.pixel_reproduction`). Positives: the model's own
    renderings of x_SAF (x_SAF noised to a few small t and denoised with the boundary search's
    sampler) and, separately, generated samples that pass the pixel test (the recall used is the
    lower of the two); negatives: generated samples that fail it. The AND rule's recall and
    false-positive rate then correct the reproduction count
    (:func:`~diffmem.metrics.stats.corrected_rate`).
    Kept apart from the classifiers' training so a new DPM does not retrain them."""
    dev = resolve_device(device)
    model, process, sampler, steps, nets = _dpm_and_detectors(weights, model_config, c_saf, c_id,
                                                              classifiers_json, boundary, dev)
    tgt, info = load_npz(target_npz), load_json(target_json)
    heldout = load_npz(heldout_npz)["images"]
    samples = load_npz(samples_npz)["images"]
    mae_bar = float(mae_to(heldout, tgt["saf"]).min())

    def truth(images):
        return pixel_reproduction(images, tgt["saf"], tgt["original"], tgt["mask"], mae_bar)

    def detected(images):
        p_saf, p_id = classify(nets, normalise(as_nchw_uint8(images, dev)))
        return ((p_saf > threshold) & (p_id > threshold)).cpu().numpy()

    gen = torch.Generator(device=dev).manual_seed(seed)
    x_saf = normalise(as_nchw_uint8(tgt["saf"][None], dev))
    t_fracs = [float(f) for f in cfg.get("t_fractions", [0.02, 0.05, 0.1, 0.2])]
    per = int(cfg.get("renders", 32))
    ts = np.repeat([min(process.T - 1, int(round(f * process.T))) for f in t_fracs], per)
    t = torch.as_tensor(ts, device=dev)
    x_t = process.add_noise(x_saf.expand(len(t), -1, -1, -1),
                            torch.randn((len(t), *x_saf.shape[1:]), generator=gen, device=dev), t)
    renders = to_uint8(reverse(model, process, x_t, ts, sampler=sampler, steps=steps,
                               generator=gen, autocast=bf16 and dev.type == "cuda"))
    r_true, r_det = truth(renders), detected(renders)
    s_true, s_det = truth(samples), detected(samples)
    neg_det = s_det[~s_true]

    def est(k, n):
        return (k / n if n else 0.0, *wilson(k, n))

    # renderings from small t are the easy cases; where samples hold near-copies too, the
    # recall that counts is the lower of the two (by its lower bound), so the correction
    # never rests on easy cases alone
    sources = {"renderings": est(int(r_det[r_true].sum()), int(r_true.sum())),
               "samples": est(int(s_det[s_true].sum()), int(s_true.sum()))}
    used = min((k for k in sources if (r_true if k == "renderings" else s_true).any()),
               key=lambda k: sources[k][1], default="renderings")
    recall = sources[used]
    fpr = est(int(neg_det.sum()), len(neg_det))
    k, n = int(s_det.sum()), len(samples)
    summary = {
        "recall": recall[0], "recall_ci": list(recall[1:]), "recall_from": used,
        "recall_renderings": list(sources["renderings"]),
        "recall_samples": list(sources["samples"]),
        "positives": int(r_true.sum() if used == "renderings" else s_true.sum()),
        "fpr": fpr[0], "fpr_ci": list(fpr[1:]), "negatives": int(len(neg_det)),
        "pixel_positive_samples": int(s_true.sum()), "mae_bar": mae_bar,
        "renderings": [{"t_over_T": f, "renders": per,
                        "pixel_positive": int(r_true[i * per:(i + 1) * per].sum()),
                        "detected": int(r_det[i * per:(i + 1) * per].sum())}
                       for i, f in enumerate(t_fracs)],
        "reproductions_detected": k, "samples": n, "threshold": threshold,
        "sampler": sampler, "steps": steps,
        **corrected_rate(k, n, recall, fpr, 1 / int(info["n_train"])),
    }
    save_json(out_json, summary)
    return summary


def fingerprint_tables_stage(*, runs: list, classifiers: list[str], detections: list[str],
                             boundaries: list[str], out_table1_csv: str, out_table1_md: str,
                             out_table2_csv: str, out_table2_md: str, out_png: str,
                             fids: list[str] | None = None, detectors: list[str] | None = None
                             ) -> pd.DataFrame:
    """Table 1 (reproductions vs N, p-values) and Table 2 (per dataset) over all runs.

    Table 2 has the paper's FID columns (against the training and the held-out images); they
    are empty where FID was skipped (no Inception weights configured)."""
    rows = []
    fids = fids if fids is not None else [None] * len(runs)
    detectors = detectors if detectors is not None else [None] * len(runs)
    for (dataset, n, seed), c, d, b, f, q in zip(runs, classifiers, detections, boundaries, fids,
                                                 detectors, strict=True):
        c, d, b = load_json(c), load_json(d), load_json(b)
        f = load_json(f) if f else {}
        q = load_json(q) if q else {}
        rows.append({"dataset": dataset, "N": int(n), "seed": int(seed),
                     "C_SAF_acc_%": round(100 * c["c_saf"]["accuracy"], 2),
                     "C_ID_acc_%": round(100 * c["c_id"]["accuracy"], 2),
                     "C_SAF_AUC": c["c_saf"].get("auc"), "C_SAF_recall": c["c_saf"]["recall"],
                     "samples": d["samples"], "expected_K/N": round(d["expected"], 2),
                     "SAF+": d["saf_positive"], "ID+": d["id_positive"],
                     "reproductions": d["reproductions"],
                     "ID+_with_disc": d.get("id_positive_with_disc"),
                     "p_value_rate<1/N": d["p_value_less"],
                     "p_value_rate>1/N": d["p_value_greater"],
                     "AND_recall": q.get("recall"), "AND_fpr": q.get("fpr"),
                     "rate_upper_95": (q.get("rate_ci") or [None, None])[1],
                     "rate<1/N_claim": q.get("below_null"),
                     "rho": round(b["rho"], 3),
                     "rho_controls": ", ".join(f"{r:.2f}" for r in b.get("rho_control", [])),
                     "t50": round(b.get("t50", float("nan")), 3),
                     "t50_controls_max": round(max(b.get("t50_control") or [float("nan")]), 3),
                     "rank_p": b.get("rank_p_value_t50"), "walks_back": b.get("walks_back"),
                     "t_dash_paper": round(b.get("rho_paper", float("nan")), 3),
                     "darboux_area": round(b["upper_darboux_area"], 3),
                     "FID_train": f.get("fid_train"), "FID_test": f.get("fid_test")})
    df = pd.DataFrame(rows).sort_values(["dataset", "N", "seed"])
    t1 = df[["dataset", "N", "seed", "samples", "expected_K/N", "SAF+", "ID+", "reproductions",
             "ID+_with_disc", "p_value_rate<1/N", "p_value_rate>1/N", "AND_recall", "AND_fpr",
             "rate_upper_95", "rate<1/N_claim"]]
    t2 = df[["dataset", "N", "seed", "C_SAF_acc_%", "C_SAF_AUC", "C_SAF_recall", "C_ID_acc_%",
             "FID_train", "FID_test",
             "expected_K/N", "reproductions", "t_dash_paper", "rho", "rho_controls", "t50",
             "t50_controls_max", "rank_p", "walks_back", "darboux_area"]]
    for t, csv, md in ((t1, out_table1_csv, out_table1_md), (t2, out_table2_csv, out_table2_md)):
        save_csv(csv, t)
        with atomic_path(md) as tmp:
            tmp.write_text(t.to_markdown(index=False, floatfmt=".4g") + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for dataset, g in df.groupby("dataset"):
        g = g.groupby("N", as_index=False)[["reproductions", "rho"]].mean()
        axes[0].plot(g["N"], g["reproductions"], "o-", label=dataset)
        axes[1].plot(g["N"], g["rho"], "o-", label=dataset)
    axes[0].set_ylabel("reproductions (both classifiers)")
    axes[1].set_ylabel("ρ = t′/T")
    axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out_png)
    return df
