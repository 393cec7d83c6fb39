"""Devices and the tensor layouts every stage shares.

* :func:`resolve_device`: ``auto`` → CUDA when present, else CPU; :func:`gpu_peak_gib`.
* Images travel as uint8 arrays (N, H, W) or (N, H, W, C) between stages; the networks see
  float tensors (N, C, H, W) in [-1, 1]: :func:`to_tensor` / :func:`to_uint8` for the DPM, and
  :func:`as_nchw_uint8` + :func:`normalise` for the classifiers (uint8 kept on the device for
  augmentation).
"""

from __future__ import annotations

import numpy as np
import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device, checked."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available; "
                           f"use device: auto or cpu")
    return dev


def gpu_peak_gib(device) -> float | None:
    """Peak memory allocated by torch on a CUDA device since the last reset, in GiB."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) → uint8 (B, H, W) for one channel, (B, H, W, C) otherwise."""
    u = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return u[:, 0] if u.shape[1] == 1 else u.transpose(0, 2, 3, 1)


def to_tensor(images: np.ndarray, device=None) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → float (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(images, device=device)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1.0


def process_tensor(images: np.ndarray, device=None) -> torch.Tensor:
    """What a model's process runs on: uint8 images through :func:`to_tensor`, or a latent
    model's latents (float (N, C, h, w), already in the process's space) as they are."""
    if images.dtype == np.uint8:
        return to_tensor(images, device)
    return torch.as_tensor(images, dtype=torch.float32, device=device)


def as_nchw_uint8(images: np.ndarray, device) -> torch.Tensor:
    x = torch.as_tensor(images, device=device)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1.0
