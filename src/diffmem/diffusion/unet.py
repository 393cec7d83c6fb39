"""The denoiser: a ``diffusers.UNet2DModel`` with its config saved next to safetensors weights,
so the file pair alone says what it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..io import atomic_path, load_safetensors, save_safetensors


def build_unet(cfg: dict, image_size: int, channels: int):
    """A ``diffusers.UNet2DModel`` from the config's ``model`` section."""
    from diffusers import UNet2DModel

    blocks = list(cfg["block_out_channels"])
    levels = len(blocks)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1}: "
                         f"model.block_out_channels has too many levels ({levels})")
    attn = set(cfg.get("attention_levels", []))
    down = [("AttnDownBlock2D" if i in attn else "DownBlock2D") for i in range(levels)]
    up = [("AttnUpBlock2D" if i in attn else "UpBlock2D") for i in reversed(range(levels))]
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(blocks), layers_per_block=int(cfg["layers_per_block"]),
        down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)),
        dropout=float(cfg.get("dropout", 0.0)),
    )


def save_model(model, weights_path: str | os.PathLike, config_path: str | os.PathLike,
               extra: dict | None = None, autoencoder=None) -> None:
    """Weights as safetensors, the diffusers config (plus ``extra``) as JSON beside them. A latent
    model's autoencoder goes into the same file under the ``autoencoder.`` prefix (its config
    and the ``latent`` block are in ``extra``), so no rule's inputs change."""
    # a diffusers U-Net's config; a MONAI network has none: its arguments come in ``extra``
    cfg = {k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")}
    cfg = json.loads(json.dumps(cfg, default=list))
    state = dict(model.state_dict())
    if autoencoder is not None:
        if not (extra or {}).get("latent"):
            raise ValueError("a latent model's settings need their 'latent' block")
        state |= {f"{AE_PREFIX}{k}": v for k, v in autoencoder.state_dict().items()}
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps({"unet": cfg, **(extra or {})}, indent=2, sort_keys=True,
                                  default=list))
    save_safetensors(weights_path, state)


AE_PREFIX = "autoencoder."


def load_model(weights_path: str | os.PathLike, config_path: str | os.PathLike,
               device: torch.device | str = "cpu"):
    """The :class:`~diffmem.diffusion.denoiser.Denoiser` of a saved model: the U-Net rebuilt from
    its JSON config, safetensors weights (no pickle) loaded strictly, and the noise process of
    its ``diffusion`` settings; a :class:`~diffmem.diffusion.denoiser.LatentDenoiser` with its
    autoencoder when the JSON has a ``latent`` block; and the JSON."""
    import diffusers
    from diffusers import UNet2DModel

    from .denoiser import Denoiser, LatentDenoiser
    from .process import NoiseProcess

    meta = json.loads(Path(config_path).read_text())
    monai = meta.get("unet_class", "").startswith("monai.")
    if monai:  # a MONAI bundle's networks, built from their checked arguments
        from .monai_bundle import build

        net = build(meta["unet_class"].split(".", 1)[1], meta["unet"])
    else:
        net = UNet2DModel.from_config(meta["unet"])
    state, _ = load_safetensors(weights_path)
    ae_state = {k[len(AE_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(AE_PREFIX)}
    net.load_state_dict(state, strict=True)
    process = NoiseProcess.from_config(meta["diffusion"])
    latent = meta.get("latent")
    if not latent:
        if ae_state:
            raise ValueError(f"{weights_path} holds autoencoder tensors but {config_path} has "
                             f"no 'latent' block")
        return Denoiser(net, process).to(device).eval(), meta
    ae_cfg = {k: v for k, v in meta["autoencoder"].items() if not k.startswith("_")}
    if latent["kind"].startswith("monai."):
        from .monai_bundle import build

        ae = build(latent["kind"].split(".", 1)[1], ae_cfg)
    else:
        ae = getattr(diffusers, latent["kind"]).from_config(ae_cfg)
    ae.load_state_dict(ae_state, strict=True)
    model = LatentDenoiser(net, process, ae, kind=latent["kind"], scale=latent["scale"],
                           shift=latent.get("shift", 0.0), clip=bool(latent.get("clip", False)),
                           intensity=latent.get("intensity_range", (-1.0, 1.0)),
                           latent_shape=latent["shape"])
    return model.to(device).eval(), meta


def image_shape(meta: dict) -> tuple[int, int, int]:
    """(C, H, W) of the images a saved model makes (a latent model's: its decoder's)."""
    latent = meta.get("latent")
    if latent:
        return latent["channels"], latent["image_size"], latent["image_size"]
    u = meta["unet"]
    return u["in_channels"], u["sample_size"], u["sample_size"]  # a pixel model: diffusers


def process_shape(meta: dict) -> tuple[int, int, int]:
    """(C, H, W) of what the process runs on: the images, or a latent model's latents."""
    latent = meta.get("latent")
    if latent:
        return tuple(latent["shape"])
    return image_shape(meta)
