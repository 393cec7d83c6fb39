"""Membership inference on denoisers whose answer is known: the exact denoiser of the training
images (a model that memorized them) and of the whole population (one that generalises)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmem.attacks.membership import attack, denoising_losses
from diffmem.device import to_tensor
from diffmem.diffusion.process import NoiseProcess


def oracle_eps(process: NoiseProcess, images: np.ndarray):
    """ε̂ of the exact posterior mean E[x_0 | x_t] when x_0 is uniform on ``images``."""
    x = to_tensor(images).flatten(1).double()
    m_all, s_all = process.coefficients64()

    def eps_fn(x_t, t):
        m, s = m_all[t].view(-1, 1), s_all[t].view(-1, 1)
        flat = x_t.flatten(1).double()
        logits = -((flat[:, None, :] - m[:, :, None] * x[None]) ** 2).sum(-1) / (2 * s**2)
        x0 = torch.softmax(logits, dim=1) @ x
        return ((flat - m * x0) / s).float().view_as(x_t)

    return eps_fn


@pytest.fixture(scope="module")
def sets(data_root):
    f = np.load(data_root / "breastmnist.npz")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(f["train_images"]))
    return f["train_images"][idx[:32]], f["train_images"][idx[32:96]]


@pytest.mark.parametrize("knows_unseen,low,high", [(False, 0.9, 1.0), (True, 0.35, 0.65)])
def test_loss_attack_auc_of_a_memorizer_and_a_generaliser(sets, knows_unseen, low, high):
    members, unseen = sets
    process = NoiseProcess(num_train_timesteps=100)
    world = np.concatenate([members, unseen]) if knows_unseen else members
    eps_fn = oracle_eps(process, world)
    kw = dict(draws=2, seed=0, batch_size=64)
    fr = [0.05, 0.1, 0.3]
    res = attack(denoising_losses(eps_fn, process, members, fr, **kw),
                 denoising_losses(eps_fn, process, unseen, fr, **kw), seed=0, t_fracs=fr)
    assert low <= res["effect"] <= high, res["effect"]
    if knows_unseen:  # chance: the interval holds 0.5 and nothing is "significant"
        assert res["ci_low"] < 0.5 < res["ci_high"] and res["p_value"] > 0.05
    else:
        assert res["ci_low"] > 0.8 and res["p_value"] < 1e-6 and res["tpr"] > 0.5


def test_every_image_sees_the_same_noise(sets):
    """Losses do not depend on batching, so members and non-members are scored alike."""
    members, _ = sets
    process = NoiseProcess(num_train_timesteps=100)
    eps_fn = oracle_eps(process, members[:8])
    a = denoising_losses(eps_fn, process, members[:12], [0.1], 2, 3, batch_size=5)
    b = denoising_losses(eps_fn, process, members[:12], [0.1], 2, 3, batch_size=12)
    np.testing.assert_allclose(a, b, rtol=1e-5)
