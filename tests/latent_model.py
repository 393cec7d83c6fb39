"""A user's own latent diffusion model for the tests, trained on CPU: a tiny diffusers
AutoencoderKL trained on 160 real images (none of them held out: an autoencoder trained on a
handful maps everything onto them, which would make "yes" right for the wrong reason) and a
U-Net on its latents trained on 6 of them until it copies them, saved as an ``LDMPipeline``
folder with ``vae/`` beside ``.npz`` files of its training and held-out images (16×16; the
autoencoder halves that, so the U-Net works on 2 × 8 × 8 latents).

The folder carries the quirks real ones have: attention tensors under their pre-0.15 names
(``query``/``key``/``value``/``proj_attn``), ``clip_sample: false`` (latent schedulers do not
clip) and no ``scaling_factor`` (diffusers' default 0.18215 is then the scale: the U-Net is
trained on latents scaled by it, as the pipeline's decode divides by it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .own_model import fit_denoiser

SIZE, N_AE, N_TRAIN, N_HELDOUT = 16, 160, 6, 40
SCALE = 0.18215  # diffusers' default, since the fixture's config has no scaling_factor


def autoencoder(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=1, out_channels=1,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                         layers_per_block=1, latent_channels=2, norm_num_groups=8,
                         sample_size=SIZE)


def unet(seed: int = 0):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=SIZE // 2, in_channels=2, out_channels=2,
                       block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def scheduler():
    from diffusers import DDPMScheduler

    # T = 100 with beta up to 0.2 reaches noise; latents are not clipped
    return DDPMScheduler(num_train_timesteps=100, beta_end=0.2, clip_sample=False)


def images(data_root: Path) -> dict:
    """The 16×16 images as the audit reads them: the autoencoder's 160 training images (the
    first 6 the U-Net's), and 40 held-out ones."""
    with np.load(data_root / "breastmnist.npz") as f:
        train, heldout = f["train_images"][:N_AE], f["val_images"][:N_HELDOUT]
    return {"ae": small(train), "train": small(train[:N_TRAIN]), "heldout": small(heldout)}


def small(a: np.ndarray) -> np.ndarray:
    """28×28 uint8 images at 16×16 (antialiased bilinear)."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(a, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def train_autoencoder(ae, x, steps: int, seed: int = 0):
    """Reconstruction (L1, as LDM's autoencoders) with a small KL term."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (32,))]
        post = ae.encode(xb).latent_dist
        rec = ae.decode(post.sample()).sample
        loss = (rec - xb).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae.eval()


def train_unet(net, z, steps: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return fit_denoiser(net, z, steps, scheduler())


def old_attention_names(path: Path) -> None:
    """Rewrite a safetensors file with attention tensors under their pre-0.15 names."""
    from safetensors.torch import load_file, save_file

    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(str(path))
    out = {}
    for k, v in state.items():
        for new, old in names.items():
            if f".attentions.0.{new}." in k:
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        out[k] = v
    assert out.keys() != state.keys()
    save_file(out, str(path))


def save_folder(folder: Path, ae, net) -> None:
    """An LDMPipeline-style folder: model_index.json, vae/, unet/, scheduler/."""
    folder.mkdir(parents=True, exist_ok=True)
    ae.save_pretrained(folder / "vae", safe_serialization=True)
    net.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler().save_pretrained(folder / "scheduler")
    cfg = json.loads((folder / "vae" / "config.json").read_text())
    del cfg["scaling_factor"]  # the real quirk: diffusers' default applies
    (folder / "vae" / "config.json").write_text(json.dumps(cfg, indent=2))
    old_attention_names(folder / "vae" / "diffusion_pytorch_model.safetensors")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))


def latents(ae, x):
    import torch

    with torch.no_grad():
        return ae.encode(x).latent_dist.mode() * SCALE


def make_latent_model(root: Path, data_root: Path, *, ae_steps: int = 250,
                      unet_steps: int = 900, seed: int = 0) -> dict:
    """``train.npz``, ``heldout.npz`` and ``model/`` (the memorizer) under ``root``, and the
    barely trained U-Net's folder ``barely/`` (same autoencoder, 20 steps)."""
    import torch

    imgs = images(data_root)
    root.mkdir(parents=True, exist_ok=True)
    for key in ("train", "heldout"):
        np.savez(root / f"{key}.npz", images=imgs[key])
    x_ae = torch.tensor(imgs["ae"], dtype=torch.float32)[:, None] / 127.5 - 1
    ae = train_autoencoder(autoencoder(seed), x_ae, ae_steps, seed)
    z = latents(ae, torch.tensor(imgs["train"], dtype=torch.float32)[:, None] / 127.5 - 1)
    save_folder(root / "model", ae, train_unet(unet(seed), z, unet_steps, seed))
    save_folder(root / "barely", ae, train_unet(unet(seed), z, 20, seed))
    return {"folder": str(root / "model"), "barely": str(root / "barely"),
            "train": str(root / "train.npz"), "heldout": str(root / "heldout.npz")}
