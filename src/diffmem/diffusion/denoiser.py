"""The model object every stage receives: one denoiser interface, whatever the network.

A stage (sampling, the boundary search, membership inference, SIDE) never asks what kind of
model it holds; it asks the :class:`Denoiser`:

* :meth:`Denoiser.output` — the network's prediction at model time ``time`` (ε, or v for a
  v-prediction model: :func:`diffmem.diffusion.sampler.as_eps` turns either into ε̂);
  :meth:`Denoiser.eps` — ε̂ at grid steps ``t``. Both take a ``label``: an unconditional model
  refuses one; a class-conditional model will take it here.
* :meth:`Denoiser.encode` / :meth:`Denoiser.decode` — images to the space the process runs in
  and back: the identity for a pixel model; a latent model's autoencoder.
* ``clip`` — whether x̂₀ is clipped to [-1, 1] at each reverse step (images in [-1, 1]: yes;
  latents: no, they are clipped after decoding).
"""

from __future__ import annotations

import numpy as np
import torch

from .process import NoiseProcess


class Denoiser(torch.nn.Module):
    """A pixel-space, unconditional denoiser: ``net`` (a ``diffusers.UNet2DModel`` or any module
    whose call returns an object with ``.sample``) and the noise process it was trained on."""

    latent = False

    def __init__(self, net: torch.nn.Module, process: NoiseProcess, *, clip: bool = True):
        super().__init__()
        self.net, self.process, self.clip = net, process, clip

    def output(self, x: torch.Tensor, time: torch.Tensor, label=None) -> torch.Tensor:
        """The network's prediction at model time ``time`` (:meth:`NoiseProcess.model_time`)."""
        if label is not None:
            raise ValueError("this denoiser is unconditional: label must be None")
        out = self.net(x, time)
        return getattr(out, "sample", out)  # diffusers wraps its output; MONAI's is a tensor

    def eps(self, x: torch.Tensor, t: torch.Tensor, label=None, *,
            autocast: bool = False) -> torch.Tensor:
        """ε̂(x_t, t) at grid steps ``t``, whatever the network predicts."""
        from .sampler import predict_eps

        if label is not None:
            raise ValueError("this denoiser is unconditional: label must be None")
        return predict_eps(self, self.process, x, t, autocast)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the process's space (a pixel model's is the images')."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The process's space back to images in [-1, 1]."""
        return z


class LatentDenoiser(Denoiser):
    """A latent model: the U-Net's process runs on z = scale · (E(x) − shift), the autoencoder's
    latents, and images are D(z / scale + shift).

    * :meth:`encode`: for an ``AutoencoderKL`` the posterior mean (``latent_dist.mode()``), as
      CopyMark and the SimA authors encode members of latent models; for a ``VQModel`` the
      pre-quantization latents (``encode(x).latents``), the decoder quantizing, as diffusers'
      LDMPipeline decodes what its U-Net samples.
    * ``clip``: whether the scheduler clips x̂₀ (``clip_sample``; latent schedulers set it
      false): latents are otherwise unclipped, and images are clipped after decoding.
    * MONAI's networks (``kind`` ``monai.AutoencoderKL`` / ``monai.VQVAE``): the posterior mean
      ``z_mu`` of ``encode``, or a VQVAE's quantized latents (``encode_stage_2_inputs``, what
      MONAI's LatentDiffusionInferer trains the U-Net on); decoding through
      ``decode_stage_2_outputs`` (a VQVAE quantizes there), as that inferer decodes.
      ``intensity``: the range the autoencoder reads and writes images in (diffusers' [-1, 1];
      MONAI's pipelines [0, 1]), mapped from and to the audit's [-1, 1].
    """

    latent = True

    def __init__(self, net: torch.nn.Module, process: NoiseProcess, autoencoder: torch.nn.Module,
                 *, kind: str, scale: float, shift: float = 0.0, clip: bool = False,
                 intensity=(-1.0, 1.0), latent_shape=None):
        super().__init__(net, process, clip=clip)
        self.autoencoder, self.kind = autoencoder, kind
        self.scale, self.shift = float(scale), float(shift)
        self.lo, self.hi = (float(v) for v in intensity)
        if latent_shape is None:
            size = net.config.sample_size
            size = int(size[0] if isinstance(size, (list, tuple)) else size)
            latent_shape = (int(net.config.in_channels), size, size)
        self.latent_shape = tuple(int(s) for s in latent_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if (self.lo, self.hi) != (-1.0, 1.0):
            x = self.lo + (x + 1) / 2 * (self.hi - self.lo)
        x = x.to(next(self.autoencoder.parameters()).dtype)
        if self.kind == "monai.AutoencoderKL":
            z = self.autoencoder.encode(x)[0]  # (z_mu, z_sigma): the posterior mean
        elif self.kind == "monai.VQVAE":  # quantized, as MONAI's LatentDiffusionInferer trains
            z = self.autoencoder.encode_stage_2_inputs(x)
        else:
            out = self.autoencoder.encode(x)
            z = out.latent_dist.mode() if self.kind == "AutoencoderKL" else out.latents
        return ((z - self.shift) * self.scale).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scale + self.shift
        if self.kind.startswith("monai."):
            img = self.autoencoder.decode_stage_2_outputs(z)
        else:
            img = self.autoencoder.decode(z).sample
        img = img.float()
        if (self.lo, self.hi) != (-1.0, 1.0):
            img = (img - self.lo) / (self.hi - self.lo) * 2 - 1
        return img.clamp(-1, 1)


def encode_images(model: Denoiser, images: np.ndarray, device, batch_size: int = 256):
    """uint8 images → what the model's process runs on: the images themselves for a pixel model
    (unchanged, uint8), float32 latents z = scale · E(x) for a latent one."""
    if not model.latent:
        return images
    from ..device import to_tensor

    out = [model.encode(to_tensor(images[i:i + batch_size], device)).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *model.latent_shape), np.float32)


def reconstruct(model: Denoiser, images: np.ndarray, device, batch_size: int = 256):
    """D(E(x)) as uint8 images: what the images look like through a latent model's autoencoder
    (the images themselves for a pixel model)."""
    if not model.latent:
        return images
    from ..device import to_tensor, to_uint8

    out = [to_uint8(model.decode(model.encode(to_tensor(images[i:i + batch_size], device))))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else images[:0]
