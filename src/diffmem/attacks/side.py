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
4. Scores: :mod:`diffmem.metrics.scores` scores SIDE's images, plain samples and unseen real
   images with the one scoring module (:mod:`diffmem.metrics`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..device import process_tensor, resolve_device
from ..diffusion.process import NoiseProcess
from ..io import load_json, load_safetensors
from ..metrics.similarity import centred_unit


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
    # uint8 images, or a latent model's latents (float, already in the process's space)
    x_all = process_tensor(images, dev)
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


def load_time_classifier(weights: str, meta_json: str, device) -> TimeClassifier:
    c = load_json(meta_json)["config"]
    net = TimeClassifier(c["num_classes"], c["image_size"], c["channels"],
                         c["block_out_channels"], c["layers_per_block"], c["norm_num_groups"])
    net.load_state_dict(load_safetensors(weights)[0])
    return net.to(device).eval()


def guidance_fn(net: nn.Module, y: torch.Tensor):
    """∇_{x_t} log p_φ(y | x_t, t) for the sampler's guidance hook."""

    def grad(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.detach().float().requires_grad_(True)
        logp = torch.log_softmax(net(x, t).float(), dim=1)
        sel = logp[torch.arange(len(x), device=x.device), y[: len(x)]].sum()
        return torch.autograd.grad(sel, x)[0]

    return grad
