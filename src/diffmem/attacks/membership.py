"""Membership inference by the loss attack: can training images be told from unseen ones?

Each image's denoising loss ‖ε̂(m_t x + σ_t ε, t) − ε‖² is averaged over a few noise levels t
and noise draws; a training image the model memorized has a lower loss than an unseen one. The
attack's score is −loss; its AUC over members (the run's training images) against non-members
(the null of unseen real images, twins of training images excluded) and its TPR at 1 % FPR are
what MIA toolkits report. This is the baseline attack of SecMI and PIA (Matsumoto et al. 2023's
loss threshold), which both compare against; the noise levels default to small t, where those
papers find the gap between members and non-members largest.

Every image sees the same noise draws (one generator per draw, seeded), so members and
non-members differ only in the image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import to_tensor
from ..metrics.stats import auc, auc_test, tpr_at_fpr


@torch.no_grad()
def denoising_losses(eps_fn, process, images: np.ndarray, t_fracs, draws: int, seed: int,
                     batch_size: int = 512, device="cpu") -> np.ndarray:
    """Per-image loss, shape (N, len(t_fracs)): mean over ``draws`` of the ε-MSE at each t."""

    dev = torch.device(device)
    coef = process.coefficients(dev)
    ts = [min(process.T - 1, max(0, int(round(f * (process.T - 1))))) for f in t_fracs]
    out = np.zeros((len(images), len(ts)))
    shape = (1, *to_tensor(images[:1]).shape[1:])
    for d in range(draws):
        # one noise image per draw and image position, the same for members and non-members
        gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + d)
        noise_all = torch.randn((len(images), *shape[1:]), generator=gen)
        for j, t in enumerate(ts):
            for i in range(0, len(images), batch_size):
                x0 = to_tensor(images[i:i + batch_size], dev)
                noise = noise_all[i:i + batch_size].to(dev)
                tt = torch.full((len(x0),), t, device=dev, dtype=torch.long)
                x_t = process.add_noise(x0, noise, tt, coef)
                eps = eps_fn(x_t, tt)
                out[i:i + len(x0), j] += ((eps.float() - noise) ** 2).mean((1, 2, 3)).cpu().numpy()
    return out / draws


def attack(member_loss: np.ndarray, nonmember_loss: np.ndarray, *, seed: int,
           t_fracs=None) -> dict:
    """AUC (with interval and one-sided p), TPR at 1 % FPR, and the AUC at each t."""
    pos, neg = -member_loss.mean(1), -nonmember_loss.mean(1)
    res = auc_test(pos, neg, seed=seed)
    res |= tpr_at_fpr(pos, neg, 0.01)
    res["auc_by_t"] = [{"t_over_T": float(f), "auc": auc(-member_loss[:, j],
                                                            -nonmember_loss[:, j])}
                       for j, f in enumerate(t_fracs or [])]
    return res
