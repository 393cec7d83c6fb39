"""Fingerprint-audit stages: detect reproductions, boundary search, aggregate tables (Table 1/2)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from .audit import binomial_p_values, boundary_search, classify, disc_strength
from .classifier import as_nchw_uint8, load_classifier, normalise
from .diffusion import NoiseProcess, gpu_peak_gib, load_model, resolve_device, reverse
from .figures import plt
from .io import atomic_path, load_json, load_npz, save_figure, save_json


def load_pair(saf_w: str, id_w: str, meta_path: str, dev) -> tuple[list, dict]:
    """C_SAF and C_ID (weights) with their shared metadata JSON."""
    nets = [load_classifier(w, meta_path, dev)[0] for w in (saf_w, id_w)]
    return nets, load_json(meta_path)


def _csv(df: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def detect_stage(*, samples_npz: str, target_npz: str, target_json: str, c_saf: str, c_id: str,
                 classifiers_json: str, threshold: float, device: str, out_csv: str,
                 out_json: str, out_png: str, max_shown: int = 40) -> dict:
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
    mae = np.abs(flat - ref.reshape(1, -1)).mean(1)
    mse = ((flat - ref.reshape(1, -1)) ** 2).mean(1)
    strength = disc_strength(samples, tgt["saf"], tgt["original"], tgt["mask"])
    flagged = np.nonzero(saf_pos | id_pos)[0]
    df = pd.DataFrame({"sample": flagged, "p_saf": p_saf[flagged], "p_id": p_id[flagged],
                       "saf_positive": saf_pos[flagged], "id_positive": id_pos[flagged],
                       "reproduction": both[flagged], "mae": mae[flagged], "mse": mse[flagged],
                       "disc_strength": strength[flagged]})
    _csv(df, out_csv)
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
    }
    save_json(out_json, summary)
    _flagged_figure(samples, tgt["saf"], flagged, both, saf_pos, mae, strength, out_png,
                    max_shown)
    return summary


def _flagged_figure(samples, target, flagged, both, saf_pos, mae, strength, path, max_shown):
    order = sorted(flagged, key=lambda i: (not both[i], mae[i]))[:max_shown]
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
        kind = "REPRO" if both[i] else ("SAF only" if saf_pos[i] else "ID only")
        ax.set_title(f"{kind} #{i}\nMAE {mae[i]:.3f} disc {strength[i]:.2f}", fontsize=6,
                     color="green" if both[i] else "darkorange")
    fig.suptitle(f"{int(both.sum())} reproductions (both classifiers), "
                 f"{len(flagged) - int(both.sum())} flagged by one only (false-positive "
                 f"candidates, orange); disc = SAF strength at its place (1 = x_SAF's disc, "
                 f"0 = x*'s pixels)", fontsize=7)
    save_figure(fig, path)


def boundary_stage(*, weights: str, model_config: str, target_npz: str, c_saf: str, c_id: str,
                   classifiers_json: str, threshold: float, cfg: dict, sampler: str, steps: int,
                   seed: int, device: str, bf16: bool, out_csv: str, out_json: str,
                   out_png: str) -> dict:
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    nets, _ = load_pair(c_saf, c_id, classifiers_json, dev)
    x_saf = normalise(as_nchw_uint8(load_npz(target_npz)["saf"][None], dev))
    gen = torch.Generator(device=dev).manual_seed(seed)
    coef = process.coefficients(dev)
    autocast = bf16 and dev.type == "cuda"
    chunk = int(cfg.get("batch_size", 4096))

    def noise_fn(x0, t):
        return process.add_noise(x0, torch.randn(x0.shape, generator=gen, device=dev), t, coef)

    def reverse_fn(x_t, t):
        out = []
        for i in range(0, len(x_t), chunk):  # one batch per chunk: every t runs together
            out.append(reverse(model, process, x_t[i:i + chunk], t[i:i + chunk].cpu().numpy(),
                               sampler=sampler, steps=steps, generator=gen, autocast=autocast))
        return torch.cat(out)

    def accept_fn(x0):
        p_saf, p_id = classify(nets, x0)
        return (p_saf > threshold) & (p_id > threshold)

    t0 = time.perf_counter()
    res = boundary_search(x_saf, process.T, int(cfg["trajectories"]), noise_fn, reverse_fn,
                          accept_fn, method=cfg["method"], t_step=int(cfg["t_step"]),
                          points_per_round=int(cfg.get("points_per_round", 8)))
    res["seconds"] = round(time.perf_counter() - t0, 2)
    df = pd.DataFrame({"t": res["t"], "t_over_T": res["t"] / process.T, "accepted": res["k"],
                       "m": res["m"], "p_hat": res["p_hat"], "ci_low": res["ci_low"],
                       "ci_high": res["ci_high"]})
    _csv(df, out_csv)
    summary = {k: res[k] for k in ("t_star", "rho", "upper_darboux_area", "method", "m", "T",
                                   "evaluations", "rounds", "seconds")}
    summary |= {"sampler": sampler, "steps": steps, "threshold": threshold,
                "peak_gpu_gib": gpu_peak_gib(dev)}
    save_json(out_json, summary)
    _boundary_figure(df, summary, out_png)
    return summary


def _boundary_figure(df, s, path):
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.fill_between(df["t_over_T"], df["ci_low"], df["ci_high"], alpha=0.25,
                    label="95% Wilson band")
    ax.plot(df["t_over_T"], df["p_hat"], "o-", ms=3, lw=1, label=r"$\hat p_t$")
    if s["t_star"] is not None:
        ax.axvline(s["rho"], color="crimson", ls="--", label=f"ρ = t′/T = {s['rho']:.3f}")
    ax.set_xlabel("t / T (noise level the target is diffused to)")
    ax.set_ylabel("P(reverse run reproduces x_SAF)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.set_title(f"boundary search ({s['method']}, M = {s['m']}, area = "
                 f"{s['upper_darboux_area']:.3f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- aggregation
def aggregate_stage(*, runs: list, classifiers: list[str], detections: list[str],
                    boundaries: list[str], out_table1_csv: str, out_table1_md: str,
                    out_table2_csv: str, out_table2_md: str, out_png: str,
                    fids: list[str] | None = None) -> pd.DataFrame:
    """Table 1 (reproductions vs N, p-values) and Table 2 (per dataset) over all runs.

    Table 2 has the paper's FID columns (against the training and the held-out images); they
    are empty where FID was skipped (no Inception weights configured)."""
    rows = []
    fids = fids if fids is not None else [None] * len(runs)
    for (dataset, n, seed), c, d, b, f in zip(runs, classifiers, detections, boundaries, fids,
                                              strict=True):
        c, d, b = load_json(c), load_json(d), load_json(b)
        f = load_json(f) if f else {}
        rows.append({"dataset": dataset, "N": int(n), "seed": int(seed),
                     "C_SAF_acc_%": round(100 * c["c_saf"]["accuracy"], 2),
                     "C_ID_acc_%": round(100 * c["c_id"]["accuracy"], 2),
                     "samples": d["samples"], "expected_K/N": round(d["expected"], 2),
                     "SAF+": d["saf_positive"], "ID+": d["id_positive"],
                     "reproductions": d["reproductions"],
                     "ID+_with_disc": d.get("id_positive_with_disc"),
                     "p_value_rate<1/N": d["p_value_less"],
                     "p_value_rate>1/N": d["p_value_greater"],
                     "rho": round(b["rho"], 3), "darboux_area": round(b["upper_darboux_area"], 3),
                     "FID_train": f.get("fid_train"), "FID_test": f.get("fid_test")})
    df = pd.DataFrame(rows).sort_values(["dataset", "N", "seed"])
    t1 = df[["dataset", "N", "seed", "samples", "expected_K/N", "SAF+", "ID+", "reproductions",
             "ID+_with_disc", "p_value_rate<1/N", "p_value_rate>1/N"]]
    t2 = df[["dataset", "N", "seed", "C_SAF_acc_%", "C_ID_acc_%", "FID_train", "FID_test",
             "expected_K/N", "reproductions", "rho", "darboux_area"]]
    for t, csv, md in ((t1, out_table1_csv, out_table1_md), (t2, out_table2_csv, out_table2_md)):
        _csv(t, csv)
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
