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
        return self.net(x, time).sample

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
