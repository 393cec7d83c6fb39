"""SIDE: surrogate-conditional data extraction from an unconditional DPM (Chen et al. 2024).

1. Surrogate labels: the model's own samples S are clustered with k-means (scikit-learn,
   seeded) in a PCA space of mean-centred, unit-norm pixels. SIDE uses a pretrained image
   encoder for features; none can be downloaded here, and for 28×28 grey medical images the
   pixel PCA is what nearest-neighbour memorization metrics look at anyway.
2. A time-dependent classifier p_φ(y | x_t, t): the down path of a diffusers ``UNet2DModel``
   (time embedding, down blocks with the time embedding, mid block) followed by GroupNorm,
   SiLU, global average pooling and a linear layer — the encoder classifier of guided
   diffusion (Dhariwal & Nichol 2021) that SIDE also uses — trained on noised members of S.
3. Guided extraction: the shared sampler with ε̃ = ε − s·sqrt(1−ᾱ_t)·∇ log p_φ(y | x_t, t).
4. Scores: each generated image's nearest training image under the cosine similarity of
   mean-centred pixels, giving AMS (share of images with a match ≥ τ) and UMS (distinct matched
   training images per generated image) at several τ; and Carlini et al. (2023)'s relative ℓ2
   criterion, ℓ2(x̂, nn₁) / (α · mean ℓ2(x̂, nn₁..nn_n)) < δ with α = 0.5, n = 50 (as we read
   their Sec. 5.1), counted as extractions.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from .diffusion import NoiseProcess, load_model, resolve_device, sample, to_tensor
from .figures import image_grid, plt
from .io import (
    atomic_path,
    load_json,
    load_npz,
    load_safetensors,
    save_figure,
    save_json,
    save_npz,
    save_safetensors,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- features
def centred_unit(images: np.ndarray) -> np.ndarray:
    """Flatten, subtract each image's mean, scale to unit norm (float32)."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8
    return x


def surrogate_labels(images: np.ndarray, k: int, *, pca_dims: int, seed: int) -> dict:
    """k-means cluster labels of generated images (deterministic for a seed)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if len(images) < k:
        raise ValueError(f"side.clusters = {k} exceeds the {len(images)} generated images")
    feats = centred_unit(images)
    dims = min(pca_dims, feats.shape[0], feats.shape[1])
    z = PCA(n_components=dims, random_state=seed).fit_transform(feats)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    # order clusters by size (largest first) so label 0 is the densest region
    order = np.argsort(-np.bincount(km.labels_, minlength=k), kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    labels = remap[km.labels_]
    return {"labels": labels, "sizes": np.bincount(labels, minlength=k)}


def labels_stage(*, samples_npz: str, k: int, pca_dims: int, seed: int, out_npz: str,
                 out_json: str, out_png: str, per_cluster: int = 8) -> dict:
    images = load_npz(samples_npz)["images"]
    res = surrogate_labels(images, k, pca_dims=pca_dims, seed=seed)
    save_npz(out_npz, labels=res["labels"], sizes=res["sizes"])
    save_json(out_json, {"k": k, "pca_dims": pca_dims, "seed": seed,
                         "sizes": res["sizes"].tolist(), "images": len(images)})
    rows, caps = [], []
    for c in range(k):
        members = np.nonzero(res["labels"] == c)[0][:per_cluster]
        for j in range(per_cluster):
            rows.append(images[members[j]] if j < len(members) else np.zeros_like(images[0]))
            caps.append(f"c{c} (n={res['sizes'][c]})" if j == 0 else "")
    image_grid(np.stack(rows), out_png, ncols=per_cluster, max_images=len(rows), captions=caps,
               title="surrogate clusters of generated images (one row per cluster)")
    return res


# ----------------------------------------------------------------------------- classifier
class TimeClassifier(nn.Module):
    """p_φ(y | x_t, t) from the down path of a diffusers UNet2DModel."""

    def __init__(self, num_classes: int, image_size: int, channels: int,
                 block_out_channels=(32, 64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 8):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = dict(num_classes=num_classes, image_size=image_size, channels=channels,
                           block_out_channels=list(block_out_channels),
                           layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)
        unet = UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                           block_out_channels=tuple(block_out_channels),
                           layers_per_block=layers_per_block,
                           down_block_types=("DownBlock2D",) * len(block_out_channels),
                           up_block_types=("UpBlock2D",) * len(block_out_channels),
                           norm_num_groups=norm_num_groups)
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.conv_in, self.down_blocks, self.mid_block = unet.conv_in, unet.down_blocks, \
            unet.mid_block
        width = block_out_channels[-1]
        self.head = nn.Sequential(nn.GroupNorm(norm_num_groups, width), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, emb)
        return self.head(self.mid_block(h, emb))


def train_time_classifier(images: np.ndarray, labels: np.ndarray, process: NoiseProcess,
                          cfg: dict, *, seed: int, device, progress: bool = True):
    """Cross-entropy on x_t ~ q(x_t | x), t uniform; returns the model and accuracy by t."""
    from tqdm.auto import tqdm

    dev = resolve_device(str(device))
    gen = torch.Generator(device=dev).manual_seed(seed)
    torch.manual_seed(seed)
    x_all = to_tensor(images, dev)
    y_all = torch.as_tensor(labels, device=dev)
    k = int(labels.max()) + 1
    perm = torch.randperm(len(x_all), generator=gen, device=dev)
    n_val = max(len(x_all) // 10, min(len(x_all) - 1, 8))
    val, tr = perm[:n_val], perm[n_val:]
    net = TimeClassifier(k, x_all.shape[-1], x_all.shape[1], cfg["block_out_channels"],
                         cfg.get("layers_per_block", 1), cfg.get("norm_num_groups", 8)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["learning_rate"], weight_decay=1e-4)
    coef = process.coefficients(dev)
    net.train()
    for _ in tqdm(range(int(cfg["steps"])), desc="surrogate classifier", disable=not progress,
                  mininterval=5.0):
        idx = tr[torch.randint(len(tr), (int(cfg["batch_size"]),), generator=gen, device=dev)]
        t = torch.randint(process.T, (len(idx),), generator=gen, device=dev)
        noise = torch.randn(x_all[idx].shape, generator=gen, device=dev)
        x_t = process.add_noise(x_all[idx], noise, t, coef)
        loss = nn.functional.cross_entropy(net(x_t, process.model_time(t)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    # accuracy by noise level on held-out members of S, four equal bins of t
    bins = np.linspace(0, process.T, 5).astype(int)
    acc = []
    with torch.no_grad():
        for lo, hi in zip(bins[:-1], bins[1:], strict=True):
            t = torch.randint(lo, hi, (len(val),), generator=gen, device=dev)
            noise = torch.randn(x_all[val].shape, generator=gen, device=dev)
            x_t = process.add_noise(x_all[val], noise, t, coef)
            pred = net(x_t, process.model_time(t)).argmax(1)
            acc.append({"t_from": int(lo), "t_to": int(hi),
                        "accuracy": float((pred == y_all[val]).float().mean())})
    return net, {"accuracy_by_t": acc, "chance": float(1 / k), "val_images": int(n_val),
                 "final_train_loss": float(loss.detach())}


def classifier_stage(*, samples_npz: str, labels_npz: str, model_config: str, cfg: dict,
                     seed: int, device: str, out_weights: str, out_json: str) -> dict:
    images = load_npz(samples_npz)["images"]
    labels = load_npz(labels_npz)["labels"]
    process = NoiseProcess.from_config(load_json(model_config)["diffusion"])
    net, metrics = train_time_classifier(images, labels, process, cfg, seed=seed, device=device)
    save_safetensors(out_weights, net.state_dict())
    save_json(out_json, {"config": net.config, **metrics})
    return metrics


def load_time_classifier(weights: str, meta_json: str, device) -> TimeClassifier:
    c = load_json(meta_json)["config"]
    net = TimeClassifier(c["num_classes"], c["image_size"], c["channels"],
                         c["block_out_channels"], c["layers_per_block"], c["norm_num_groups"])
    net.load_state_dict(load_safetensors(weights)[0])
    return net.to(device).eval()


# ----------------------------------------------------------------------------- extraction
def guidance_fn(net: nn.Module, y: torch.Tensor):
    """∇_{x_t} log p_φ(y | x_t, t) for the sampler's guidance hook."""

    def grad(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.detach().float().requires_grad_(True)
        logp = torch.log_softmax(net(x, t).float(), dim=1)
        sel = logp[torch.arange(len(x), device=x.device), y[: len(x)]].sum()
        return torch.autograd.grad(sel, x)[0]

    return grad


def extract_stage(*, weights: str, model_config: str, clf_weights: str, clf_json: str,
                  scale: float, per_cluster: int, sampler: str, steps: int, batch_size: int,
                  seed: int, device: str, bf16: bool, out_npz: str, out_png: str) -> dict:
    """Guided sampling toward every surrogate cluster at guidance scale ``scale``."""
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    net = load_time_classifier(clf_weights, clf_json, dev)
    k = net.config["num_classes"]
    shape = (meta["unet"]["in_channels"], meta["unet"]["sample_size"],
             meta["unet"]["sample_size"])
    # every cluster in the same batches: the guidance hook takes one target label per image
    labels = np.repeat(np.arange(k), per_cluster)
    images = []
    for start in range(0, len(labels), batch_size):
        y = torch.as_tensor(labels[start:start + batch_size], device=dev)
        images.append(sample(model, process, len(y), shape=shape, sampler=sampler, steps=steps,
                             batch_size=len(y), seed=seed * 100_003 + start, device=dev,
                             autocast=bf16 and dev.type == "cuda",
                             guidance=guidance_fn(net, y), guidance_scale=scale, progress=False))
    images = np.concatenate(images)
    save_npz(out_npz, images=images, labels=labels)
    image_grid(images[np.argsort(labels, kind="stable")], out_png, ncols=min(per_cluster, 10),
               max_images=100, title=f"SIDE samples, guidance scale {scale:g}")
    return {"images": int(len(images)), "scale": scale}


# ----------------------------------------------------------------------------- metrics
def nearest_neighbours(gen: np.ndarray, train: np.ndarray, n: int, device="cpu",
                       chunk: int = 4096) -> dict:
    """Cosine of mean-centred pixels to the nearest training image, and the ℓ2 distances
    (pixels in [0, 1]) to the n nearest training images (ascending)."""
    dev = resolve_device(str(device))
    tr = torch.as_tensor(train.reshape(len(train), -1), device=dev).float() / 255
    tr_c = torch.as_tensor(centred_unit(train), device=dev)
    tr_sq = (tr**2).sum(1)
    n = min(n, len(train))
    cos, idx, dists = [], [], []
    for i in range(0, len(gen), chunk):
        g = torch.as_tensor(gen[i:i + chunk].reshape(len(gen[i:i + chunk]), -1),
                            device=dev).float() / 255
        g_c = torch.as_tensor(centred_unit(gen[i:i + chunk]), device=dev)
        s = g_c @ tr_c.T
        best = s.max(1)
        cos.append(best.values.cpu())
        idx.append(best.indices.cpu())
        d2 = ((g**2).sum(1, keepdim=True) + tr_sq[None] - 2 * g @ tr.T).clamp(min=0)
        dists.append(d2.topk(n, dim=1, largest=False).values.sqrt().cpu())
    return {"cosine": torch.cat(cos).numpy(), "index": torch.cat(idx).numpy(),
            "l2_nearest": torch.cat(dists).numpy()}


def ams_ums(similarity: np.ndarray, index: np.ndarray, thresholds) -> dict:
    """AMS(τ) = share of images with nearest-similarity ≥ τ; UMS(τ) = distinct matched
    training images / number of images."""
    out = {}
    for tau in thresholds:
        hit = similarity >= tau
        out[f"ams@{tau:g}"] = float(hit.mean()) if len(hit) else 0.0
        out[f"ums@{tau:g}"] = float(len(np.unique(index[hit])) / max(len(hit), 1))
    return out


def carlini_extracted(l2_nearest: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Carlini et al. (2023): ℓ2 to the nearest / (α · mean ℓ2 to the n nearest) < δ."""
    ratio = l2_nearest[:, 0] / (alpha * l2_nearest.mean(1) + 1e-12)
    return ratio < delta


def score_set(images: np.ndarray, train: np.ndarray, cfg: dict, device) -> tuple[dict, dict]:
    nn_ = nearest_neighbours(images, train, int(cfg["carlini"]["n"]), device)
    ex = carlini_extracted(nn_["l2_nearest"], cfg["carlini"]["alpha"], cfg["carlini"]["delta"])
    scores = ams_ums(nn_["cosine"], nn_["index"], cfg["thresholds"])
    scores |= {"carlini_extractions": int(ex.sum()),
               "carlini_unique": int(len(np.unique(nn_["index"][ex]))),
               "mean_nn_cosine": float(nn_["cosine"].mean()), "images": int(len(images))}
    return scores, nn_


def metrics_stage(*, train_npz: str, baseline_npz: str, side_npzs: list[str],
                  scales: list[float], cfg: dict, device: str, out_csv: str, out_json: str,
                  out_pairs_png: str, out_hist_png: str, out_scale_png: str) -> pd.DataFrame:
    """AMS/UMS and Carlini extractions for SIDE at every scale and plain sampling, equal sizes."""
    train = load_npz(train_npz)["images"]
    side_sets = [load_npz(p)["images"] for p in side_npzs]
    budget = min(len(s) for s in side_sets)
    baseline_all = load_npz(baseline_npz)["images"]
    if len(baseline_all) < budget:
        raise ValueError(f"plain sampling made {len(baseline_all)} images but SIDE made {budget} "
                         f"per scale; raise sample.num_samples to at least {budget}")
    baseline = baseline_all[:budget]
    rows, nns = [], {}
    b_scores, nns["baseline"] = score_set(baseline, train, cfg, device)
    rows.append({"method": "baseline (plain sampling)", "scale": 0.0, **b_scores})
    for s, imgs in zip(scales, side_sets, strict=True):
        sc, nns[s] = score_set(imgs[:budget], train, cfg, device)
        rows.append({"method": "SIDE", "scale": float(s), **sc})
    df = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    best = df[df["method"] == "SIDE"].sort_values(f"ams@{cfg['thresholds'][-1]:g}").iloc[-1]
    save_json(out_json, {"budget": budget, "thresholds": cfg["thresholds"],
                         "rows": df.to_dict(orient="records"),
                         "best_scale": float(best["scale"])})
    best_images = side_sets[scales.index(best["scale"])][:budget]
    _pairs_figure(best_images, train, nns[best["scale"]], out_pairs_png,
                  f"SIDE (scale {best['scale']:g}): top pairs, generated | nearest training image")
    _hist_figure(nns, scales, out_hist_png)
    _scale_figure(df, cfg["thresholds"], out_scale_png)
    return df


def _pairs_figure(images, train, nn_, path, title, top: int = 12):
    order = np.argsort(-nn_["cosine"])[:top]
    fig, axes = plt.subplots(2, max(len(order), 1), figsize=(1.2 * max(len(order), 1), 2.9),
                             squeeze=False)
    cmap = "gray" if images.ndim == 3 else None
    for j, i in enumerate(order):
        axes[0, j].imshow(images[i], cmap=cmap, vmin=0, vmax=255)
        axes[0, j].set_title(f"cos {nn_['cosine'][i]:.3f}", fontsize=7)
        axes[1, j].imshow(train[nn_["index"][i]], cmap=cmap, vmin=0, vmax=255)
        axes[1, j].set_title(f"train #{nn_['index'][i]}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path)


def _hist_figure(nns, scales, path):
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    bins = np.linspace(min(v["cosine"].min() for v in nns.values()), 1, 40)
    ax.hist(nns["baseline"]["cosine"], bins=bins, alpha=0.6, label="plain sampling")
    for s in scales:
        ax.hist(nns[s]["cosine"], bins=bins, histtype="step", lw=1.5, label=f"SIDE s={s:g}")
    ax.set_xlabel("cosine similarity to the nearest training image (mean-centred pixels)")
    ax.set_ylabel("generated images")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _scale_figure(df, thresholds, path):
    side = df[df["method"] == "SIDE"].sort_values("scale")
    base = df[df["method"] != "SIDE"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for ax, metric in zip(axes, ("ams", "ums"), strict=True):
        for tau in thresholds:
            line = ax.plot(side["scale"], side[f"{metric}@{tau:g}"], "o-", label=f"τ = {tau:g}")
            ax.axhline(base[f"{metric}@{tau:g}"], ls=":", color=line[0].get_color())
        ax.set_xlabel("guidance scale s")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{metric.upper()} (dotted: plain sampling)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
