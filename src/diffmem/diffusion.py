"""The noise process, the denoiser and the one reverse-process sampler used everywhere.

* :class:`NoiseProcess` wraps diffusers' ``DDPMScheduler`` (the forward process q(x_t | x_0)
  and its ᾱ_t). Training, sampling, the boundary search and SIDE guidance all ask this object.
* :func:`build_unet` / :func:`save_model` / :func:`load_model`: a ``diffusers.UNet2DModel`` with
  its config saved next to safetensors weights, so the file pair alone says what it is.
* :func:`reverse` runs the learned reverse process for a batch in which every trajectory may
  start at its own step t (plain sampling starts all at the first grid step; the boundary search
  starts from x_SAF noised to many t at once) and may be steered by a guidance gradient (SIDE).

diffusers' ``scheduler.step`` accepts one scalar timestep per call, so the update formulas of
``DDPMScheduler.step`` (variance "fixed_small") and ``DDIMScheduler.step`` (η = 0, clipped-x_0
ε) are written
here once more in vectorised form over per-sample timesteps; the timestep grids come from the
diffusers schedulers' own ``set_timesteps``, and ``tests/test_diffusion.py`` checks that for a
common timestep both steps equal diffusers' to float precision.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path, load_safetensors, save_safetensors

SAMPLERS = ("ddpm", "ddim")


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device, checked."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available; "
                           f"use device: auto or cpu")
    return dev


@dataclass(frozen=True)
class NoiseProcess:
    """DDPM forward process with a β schedule; ``alphas_cumprod[t]`` is ᾱ_t for t = 0..T-1."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @classmethod
    def from_config(cls, cfg: dict) -> NoiseProcess:
        return cls(int(cfg["num_train_timesteps"]), cfg.get("beta_schedule", "linear"),
                   float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02)))

    @property
    def T(self) -> int:
        return self.num_train_timesteps

    def scheduler(self, sampler: str = "ddpm"):
        from diffusers import DDIMScheduler, DDPMScheduler

        kw = dict(num_train_timesteps=self.T, beta_schedule=self.beta_schedule,
                  beta_start=self.beta_start, beta_end=self.beta_end, clip_sample=True)
        if sampler == "ddpm":
            return DDPMScheduler(variance_type="fixed_small", **kw)
        if sampler == "ddim":
            return DDIMScheduler(set_alpha_to_one=True, **kw)
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")

    def alphas_cumprod(self, device=None) -> torch.Tensor:
        return self.scheduler("ddpm").alphas_cumprod.to(device=device, dtype=torch.float32)

    def timestep_grid(self, sampler: str, steps: int) -> np.ndarray:
        """Descending timesteps of the reverse process (diffusers' own spacing)."""
        sch = self.scheduler(sampler)
        if sampler == "ddpm" and steps >= self.T:
            return np.asarray(sch.timesteps, dtype=np.int64)
        sch.set_timesteps(steps)
        return np.asarray(sch.timesteps, dtype=np.int64)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  acp: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε (same as ``DDPMScheduler.add_noise``)."""
        acp = self.alphas_cumprod(x0.device) if acp is None else acp
        a = acp[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


# ----------------------------------------------------------------------------- the denoiser
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
               extra: dict | None = None) -> None:
    """Weights as safetensors, the diffusers config (plus ``extra``) as JSON beside them."""
    cfg = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    cfg = json.loads(json.dumps(cfg, default=list))
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps({"unet": cfg, **(extra or {})}, indent=2, sort_keys=True))
    save_safetensors(weights_path, model.state_dict())


def load_model(weights_path: str | os.PathLike, config_path: str | os.PathLike,
               device: torch.device | str = "cpu"):
    """Rebuild the U-Net from its JSON config and load safetensors weights (no pickle)."""
    from diffusers import UNet2DModel

    meta = json.loads(Path(config_path).read_text())
    model = UNet2DModel.from_config(meta["unet"])
    state, _ = load_safetensors(weights_path)
    model.load_state_dict(state)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------- the sampler
Guidance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def start_sequences(grid: np.ndarray, t_start: np.ndarray) -> np.ndarray:
    """Per-trajectory timestep sequences, right-aligned so all end on the same iteration.

    A trajectory that starts at t runs ``[t] + [g in grid if g < t]``; shorter ones are padded
    with -1 on the left (inactive). The result is ``(B, L)``; the step after the last column is
    the final one to x_0 (ᾱ_prev = 1).
    """
    grid = np.asarray(grid, dtype=np.int64)
    seqs = [np.concatenate([[t], grid[grid < t]]) for t in np.asarray(t_start, dtype=np.int64)]
    length = max(len(s) for s in seqs)
    out = np.full((len(seqs), length), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, length - len(s):] = s
    return out


def _pad_prev(seq: torch.Tensor) -> torch.Tensor:
    return torch.cat([seq[:, 1:], torch.full_like(seq[:, :1], -1)], dim=1)


@torch.no_grad()
def reverse(model, process: NoiseProcess, x: torch.Tensor, t_start, *, sampler: str = "ddim",
            steps: int = 50, generator: torch.Generator | None = None,
            guidance: Guidance | None = None, guidance_scale: float = 0.0,
            autocast: bool = False, max_batch: int | None = None) -> torch.Tensor:
    """Run the reverse process from ``x`` (B, C, H, W) at per-sample steps ``t_start`` to x_0.

    ``guidance(x_t, t)`` returns ∇_{x_t} log p(y | x_t, t); the noise prediction is then shifted
    as in classifier guidance (Dhariwal & Nichol 2021): ε̃ = ε − s·sqrt(1−ᾱ_t)·∇ log p.
    Returns x_0 clipped to [-1, 1], on ``x``'s device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    device = x.device
    t_start = np.broadcast_to(np.asarray(t_start, dtype=np.int64), (x.shape[0],))
    grid = process.timestep_grid(sampler, steps)
    seq = torch.as_tensor(start_sequences(grid, t_start), device=device)
    prev = _pad_prev(seq)
    acp = process.alphas_cumprod(device)
    one = torch.ones((), device=device)
    x = x.clone().float()
    for k in range(seq.shape[1]):
        active = seq[:, k] >= 0
        idx = active.nonzero().squeeze(1) if not bool(active.all()) else None
        xs = x if idx is None else x[idx]
        t = seq[:, k] if idx is None else seq[idx, k]
        tp = prev[:, k] if idx is None else prev[idx, k]
        eps = _predict_eps(model, xs, t, autocast, max_batch)
        a_t = acp[t].view(-1, 1, 1, 1)
        if guidance is not None and guidance_scale != 0.0:
            with torch.enable_grad():
                grad = guidance(xs, t)
            eps = eps - guidance_scale * (1 - a_t).sqrt() * grad
        a_prev = torch.where(tp >= 0, acp[tp.clamp(min=0)], one).view(-1, 1, 1, 1)
        x0 = ((xs - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        if sampler == "ddim":
            # η = 0, with ε re-derived from the clipped x_0 as guided-diffusion's ddim_sample does
            # (diffusers' use_clipped_model_output=True). diffusers' default keeps the raw ε;
            # under strong guidance x_0 clips while ε keeps moving and the step goes the wrong way.
            eps = (xs - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            xs = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        else:
            beta = 1 - a_t / a_prev
            mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + \
                   ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * xs
            var = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
            noise = torch.randn(xs.shape, generator=generator, device=device)
            xs = mean + (tp >= 0).view(-1, 1, 1, 1) * var.sqrt() * noise
        if idx is None:
            x = xs
        else:
            x[idx] = xs
    return x.clamp(-1, 1)


def _predict_eps(model, x, t, autocast, max_batch):
    chunks = [slice(0, len(x))] if not max_batch else \
        [slice(i, i + max_batch) for i in range(0, len(x), max_batch)]
    outs = []
    for s in chunks:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            outs.append(model(x[s], t[s]).sample.float())
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def sample(model, process: NoiseProcess, n: int, *, shape: tuple[int, int, int],
           sampler: str = "ddim", steps: int = 50, batch_size: int = 256, seed: int = 0,
           device: torch.device | str = "cpu", autocast: bool = False,
           guidance: Guidance | None = None, guidance_scale: float = 0.0,
           progress: bool = True) -> np.ndarray:
    """Draw ``n`` images from pure noise; returns uint8 (n, H, W) or (n, H, W, C)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    t0 = int(process.timestep_grid(sampler, steps)[0])
    out = []
    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress):
        b = min(batch_size, n - start)
        x = torch.randn((b, *shape), generator=gen, device=device)
        x0 = reverse(model, process, x, t0, sampler=sampler, steps=steps, generator=gen,
                     guidance=guidance, guidance_scale=guidance_scale, autocast=autocast)
        out.append(to_uint8(x0))
    return np.concatenate(out) if out else np.zeros((0, *shape), np.uint8)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) → uint8 (B, H, W) for one channel, (B, H, W, C) otherwise."""
    u = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return u[:, 0] if u.shape[1] == 1 else u.transpose(0, 2, 3, 1)


def to_tensor(images: np.ndarray, device=None) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → float (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(images, device=device)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1.0
