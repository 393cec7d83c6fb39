"""A real model that copies the way medical training recipes make models copy: a tiny diffusers
U-Net trained on a handful of BreastMNIST images, each shown at a random rotation and zoom every
step (as MONAI's ``RandAffine`` or torchvision's ``RandomAffine`` would), until its samples are
those images turned and zoomed. The truth of each sample comes from an oracle that knows the
augmentation: its best match to a training image over a rotation × zoom grid, against unseen
images' 99th percentile of the same score."""

from __future__ import annotations

import numpy as np

from diffmem.metrics.similarity import Matching

N_TRAIN, SIZE, MAX_ANGLE = 8, 16, 15.0
MATCHING = Matching(shift=2, mirror=True)  # the workflow's default pixel match


def _small(images: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.tensor(images, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def images(data_root) -> dict:
    """Training images (the last of the train split, which no other test trains on), training
    images of another draw (the negative control's), and the whole split at the model's size
    for the nulls: ``split`` (the train split), ``heldout`` (val + test), and the indices of
    the two training sets in ``split``."""
    from diffmem.data.duplicates import near_duplicate_groups

    with np.load(data_root / "breastmnist.npz") as f:
        tr = f["train_images"]
        heldout = np.concatenate([f["val_images"], f["test_images"]])
    split, heldout = _small(tr), _small(heldout)
    n = len(split)
    train_idx, other_idx = np.arange(n - N_TRAIN, n), np.arange(n - 2 * N_TRAIN, n - N_TRAIN)
    # near-duplicate groups at the model's size, by the workflow's default rule
    g = near_duplicate_groups(split, heldout, metric="rms", threshold=5.0, max_diameter=None,
                              matching=MATCHING)
    return {"train": split[train_idx], "other_train": split[other_idx], "split": split,
            "heldout": heldout, "train_idx": train_idx, "other_idx": other_idx,
            "duplicates": {k: g[k] for k in ("train_group", "heldout_group", "pairs")}}


def null_of(d: dict, train_idx: np.ndarray, net, seed: int = 1) -> tuple[dict, np.ndarray]:
    """The null a run of the workflow would build for these training images
    (:func:`diffmem.metrics.null.run_null_pool`): every held-out and unused train-split image
    that is neither in a training image's near-duplicate group (the default rule: rms ≤ 5 at
    the best shift ≤ 2 px and mirror) nor a twin of one by both eyes, in two seeded halves; and
    the training images' groups."""
    from diffmem.attacks.copies import embed, eye_twins, twin_threshold
    from diffmem.metrics.null import run_null_pool
    from diffmem.stages.config import COPIES_DEFAULTS

    train = d["split"][train_idx]
    cfg = dict(COPIES_DEFAULTS)
    threshold = twin_threshold(net, train, cfg, seed=seed)["twin_threshold"]
    train_emb = embed(net, train, "cpu")
    unused = np.setdiff1d(np.arange(len(d["split"])), train_idx)
    return run_null_pool(
        train_indices=train_idx, heldout=d["heldout"],
        unused={"images": d["split"][unused], "indices": unused}, duplicates=d["duplicates"],
        cfg={"null_max_images": 10000, "seed": seed},
        eye_twin=lambda x: eye_twins(train, train_emb, x, embed(net, x, "cpu"),
                                     threshold=threshold, matching=MATCHING,
                                     pixel_cosine=float(cfg["twin_pixel_cosine"])))


def _affine(x, angle_deg, zoom):
    import torch
    import torch.nn.functional as F

    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / zoom, torch.sin(a) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_model(train: np.ndarray, steps: int = 2500, seed: int = 0):
    """The U-Net (ε, DDPM T = 100, β up to 0.2) and its noise process, trained with a random
    rotation in ±MAX_ANGLE and zoom in [0.9, 1.1] drawn per image and step."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel

    from diffmem.diffusion.process import NoiseProcess

    torch.manual_seed(seed)
    x = torch.tensor(train, dtype=torch.float32)[:, None] / 127.5 - 1
    unet = UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1,
                       block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    process = NoiseProcess(num_train_timesteps=100, beta_end=0.2)
    coef = process.coefficients()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (16,), generator=gen)]
        angle = (torch.rand(len(xb), generator=gen) * 2 - 1) * MAX_ANGLE
        zoom = 0.9 + 0.2 * torch.rand(len(xb), generator=gen)
        xb = _affine(xb, angle, zoom)
        noise = torch.randn(xb.shape, generator=gen)
        t = torch.randint(0, 100, (len(xb),), generator=gen)
        loss = F.mse_loss(unet(process.add_noise(xb, noise, t, coef), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    return unet.eval(), process


def oracle(samples: np.ndarray, train: np.ndarray, unseen: np.ndarray) -> dict:
    """Each sample's best cosine (mean-centred pixels) with any training image over a grid of
    rotations (±20° in steps of 2.5°) and zooms (0.85–1.15), the angle that gave it, and whether
    it is a copy: above the 99th percentile of unseen images' same score (``unseen_score``)."""
    import torch

    angles = np.arange(-20, 20.01, 2.5)
    zooms = np.arange(0.85, 1.151, 0.05)
    x = torch.tensor(train, dtype=torch.float32)[:, None] / 127.5 - 1
    views, which = [], []
    for a in angles:
        for z in zooms:
            v = _affine(x, torch.full((len(x),), float(a)), torch.full((len(x),), float(z)))
            views.append(v[:, 0].reshape(len(x), -1).numpy())
            which += [(a, i) for i in range(len(x))]
    ref = np.concatenate(views)
    ref = ref - ref.mean(1, keepdims=True)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True) + 1e-8

    def best(imgs):
        q = imgs.reshape(len(imgs), -1).astype(np.float64)
        q -= q.mean(1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-8
        s = q @ ref.T
        j = s.argmax(1)
        return s.max(1), np.array([which[k][0] for k in j]), np.array([which[k][1] for k in j])

    s_unseen, _, _ = best(unseen)
    s, angle, source = best(samples)
    cut = float(np.quantile(s_unseen, 0.99))
    return {"score": s, "angle": angle, "source": source, "copy": s > cut, "cut": cut,
            "unseen_score": s_unseen}

