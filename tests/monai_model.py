"""A user's own MONAI latent diffusion model for the tests, trained on CPU and saved as a MONAI
bundle is: ``configs/inference.json`` with the Model Zoo's shapes (``@`` literals, a
``_requires_``, ``$`` expressions in keys the audit does not read, GenerativeModels' target
names and ``num_channels``) and pickled ``models/*.pt`` weights, the autoencoder's in
GenerativeModels' old key layout. The audit reads it only after ``python -m diffmem.convert
monai BUNDLE OUT``.

A tiny MONAI AutoencoderKL (images in [0, 1], as MONAI pipelines have them; 2 × 8 × 8 latents of
16 × 16 images) trained on 160 BreastMNIST training images (none held out), and a
DiffusionModelUNet trained on the latents of 6 of them until it copies them; the barely trained
twin (20 steps) beside it. The latent scale factor is not in the bundle: MONAI's training
computes it (1 / std of the training latents, here about 0.28), and the entry gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .latent_model import N_TRAIN, images
from .own_model import fit_denoiser

INFERENCE = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "spatial_dims": 2,
    "image_channels": 1,
    "latent_channels": 2,
    "latent_shape": ["@latent_channels", 8, 8],
    "autoencoder_def": {
        "_target_": "generative.networks.nets.AutoencoderKL",
        "spatial_dims": "@spatial_dims", "in_channels": "@image_channels",
        "out_channels": "@image_channels", "latent_channels": "@latent_channels",
        "num_channels": [16, 32], "num_res_blocks": 1, "norm_num_groups": 8,
        "norm_eps": 1e-06, "attention_levels": [False, False],
        "with_encoder_nonlocal_attn": True, "with_decoder_nonlocal_attn": True},
    "network_def": {
        "_target_": "generative.networks.nets.DiffusionModelUNet",
        "spatial_dims": "@spatial_dims", "in_channels": "@latent_channels",
        "out_channels": "@latent_channels", "num_channels": [32, 64],
        "attention_levels": [False, False], "num_head_channels": [0, 32],
        "num_res_blocks": 1, "norm_num_groups": 8},
    "load_autoencoder_path": "$@bundle_root + '/models/model_autoencoder.pt'",
    "load_autoencoder": "$@autoencoder_def.load_state_dict(torch.load(@load_autoencoder_path))",
    "load_diffusion_path": "$@bundle_root + '/models/model.pt'",
    "load_diffusion": "$@network_def.load_state_dict(torch.load(@load_diffusion_path))",
    "noise_scheduler": {
        "_target_": "generative.networks.schedulers.DDPMScheduler",
        "_requires_": ["@load_diffusion", "@load_autoencoder"],
        "num_train_timesteps": 100, "beta_start": 0.0001, "beta_end": 0.2,
        "schedule": "linear_beta", "clip_sample": False},
    "noise": "$torch.randn([1]+@latent_shape).to(@device)",
}


def networks(seed: int = 0):
    import torch
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    torch.manual_seed(seed)
    ae = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=2,
                       channels=(16, 32), num_res_blocks=1, norm_num_groups=8,
                       attention_levels=(False, False))
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=2, channels=(32, 64),
                              attention_levels=(False, False), num_head_channels=[0, 32],
                              num_res_blocks=1, norm_num_groups=8)
    return ae, unet


def train_autoencoder(ae, x, steps: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (32,))]
        rec, mu, sigma = ae(xb)
        kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2 + 1e-8) - 1).mean()
        loss = (rec - xb).abs().mean() + 1e-6 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae.eval()


def train_unet(unet, z, steps: int, seed: int = 0):
    import torch
    from monai.networks.schedulers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=100, beta_start=0.0001, beta_end=0.2)
    torch.manual_seed(seed)
    return fit_denoiser(unet, z, steps, sched)


def old_layout(state: dict) -> dict:
    """An AutoencoderKL state dict in MONAI GenerativeModels' key layout (which MONAI's
    ``load_old_state_dict`` reads): attention tensors without ``attn.``, the output projection
    ``proj_attn``, the upsampling ``postconv`` named ``conv``."""
    out = {}
    for k, v in state.items():
        k = k.replace(".attn.out_proj.", ".proj_attn.").replace(".attn.to_", ".to_")
        out[k.replace(".postconv.", ".conv.")] = v
    assert out.keys() != state.keys()
    return out


def save_bundle(folder: Path, ae, unet) -> None:
    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs/inference.json").write_text(json.dumps(INFERENCE, indent=4))
    torch.save(old_layout(ae.state_dict()), folder / "models/model_autoencoder.pt")
    torch.save(unet.state_dict(), folder / "models/model.pt")


def make_monai_model(root: Path, data_root: Path, *, ae_steps: int = 250,
                     unet_steps: int = 900, seed: int = 0) -> dict:
    """``bundle/`` (the memorizer, as shipped: .pt weights), ``barely/`` (its U-Net trained 20
    steps) and the images (the latent fixture's) under ``root``."""
    import torch

    imgs = images(data_root)
    root.mkdir(parents=True, exist_ok=True)
    for key in ("train", "heldout"):
        np.savez(root / f"{key}.npz", images=imgs[key])
    x_ae = torch.tensor(imgs["ae"], dtype=torch.float32)[:, None] / 255.0  # MONAI's [0, 1]
    ae, unet = networks(seed)
    ae = train_autoencoder(ae, x_ae, ae_steps, seed)
    with torch.no_grad():  # MONAI's tutorials: scale_factor = 1 / std of the first latents
        scale = round(float(1 / ae.encode(x_ae)[0].std()), 4)
        z = ae.encode(x_ae[:N_TRAIN])[0] * scale
    save_bundle(root / "bundle", ae, train_unet(unet, z, unet_steps, seed))
    save_bundle(root / "barely", ae, train_unet(networks(seed)[1], z, 20, seed))
    return {"bundle": str(root / "bundle"), "barely": str(root / "barely"),
            "train": str(root / "train.npz"), "heldout": str(root / "heldout.npz"),
            "scale_factor": scale}
