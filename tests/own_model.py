"""A user's own model for the tests: a tiny diffusers U-Net trained on a few real images until it
copies them, saved with ``DDPMPipeline.save_pretrained`` beside folders of training and held-out
PNGs (28×28 files; the model works at 16×16, so the import resizes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_TRAIN, N_HELDOUT, SIZE = 4, 40, 16


def write_pngs(images: np.ndarray, folder: Path, prefix: str) -> list[str]:
    from PIL import Image

    names = []
    for i, img in enumerate(images):
        sub = folder / f"part{i % 2}"  # nested: the folder is searched recursively
        sub.mkdir(parents=True, exist_ok=True)
        if i == 0:  # one 16-bit PNG among them
            Image.fromarray(img.astype(np.uint16) * 257).save(sub / f"{prefix}{i:02d}.png")
        else:
            Image.fromarray(img).save(sub / f"{prefix}{i:02d}.png")
        names.append(f"part{i % 2}/{prefix}{i:02d}.png")
    return names


def fit_denoiser(net, x, steps: int, scheduler, T: int = 100):
    """ε-prediction training of the test fixtures' U-Nets (pixels or latents ``x``, a diffusers
    or MONAI ``net`` and scheduler): batches of 8, AdamW with a one-cycle schedule. Seeds are
    the caller's: the draws follow from its ``torch.manual_seed``."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1),
                                             pct_start=0.1)
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (8,))]
        noise = torch.randn_like(xb)
        t = torch.randint(0, T, (len(xb),))
        out = net(scheduler.add_noise(xb, noise, t), t)
        loss = F.mse_loss(getattr(out, "sample", out), noise)  # diffusers wraps, MONAI not
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    return net.eval()


def make_own_model(root: Path, data_root: Path, steps: int = 1000, seed: int = 0) -> dict:
    """Folders ``train/``, ``heldout/`` and ``model/`` under ``root``; returns their paths."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from diffmem.data.images import read_images

    with np.load(data_root / "breastmnist.npz") as f:
        train, heldout = f["train_images"][:N_TRAIN], f["val_images"][:N_HELDOUT]
    write_pngs(train, root / "train", "tr")
    write_pngs(heldout, root / "heldout", "ho")
    # train on the images as the audit will read them (resized to the model's size)
    x, _ = read_images(root / "train", size=SIZE, channels=1, resize=True)
    x = torch.tensor(x, dtype=torch.float32)[:, None] / 127.5 - 1
    torch.manual_seed(seed)
    # (16, 32) channels copy as well as (32, 64) did here (about 80 % of samples within 15 grey
    # levels RMS of a training image after 1,000 steps) in two thirds of the time
    unet = UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1,
                       block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    # T = 100 with beta up to 0.2: the chain reaches noise (signal 0.005 at its last step; the
    # default beta_end 0.02 keeps 0.60 of the image there, and diffmem refuses it)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_end=0.2)
    fit_denoiser(unet, x, steps, scheduler)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "model")
    return {"folder": str(root / "model"), "train": str(root / "train"),
            "heldout": str(root / "heldout")}
