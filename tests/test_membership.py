"""Membership inference on denoisers whose answer is known: the exact denoiser of the training
images (a model that memorized them) and of the whole population (one that generalises)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmem.attacks.membership import attack, denoising_losses
from diffmem.device import to_tensor
from diffmem.diffusion.denoiser import Denoiser
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


class TimeNet(torch.nn.Module):
    """A deterministic stand-in network whose output depends on the input and its time input."""

    def forward(self, x, t):
        out = torch.tanh(0.7 * x + t.float().view(-1, 1, 1, 1) / 50.0)
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("cfg", [
    {"num_train_timesteps": 100, "beta_end": 0.2},
    {"num_train_timesteps": 100, "beta_end": 0.2, "prediction_type": "v_prediction"},
    {"num_train_timesteps": 100, "process": "subvp"},
])
def test_sima_and_pia_scores_are_their_papers_formulas(cfg):
    """On fixed tensors each score equals a direct computation: SimA −Σ|ε̂(x₀, t)|⁴ on the clean
    image; PIA ε₀ = ε̂(x₀, 0), x_t = m_t x₀ + σ_t ε₀, −Σ|ε̂(x_t, t) − ε₀|⁴ (the papers' code sums
    fourth powers). ε̂ is the network's output for ε models and σ_t x_t + m_t v̂ for v models;
    the network sees the model time (T − 1)·τ for sub-VP, whose σ is 1 − e^{−∫β}."""
    from diffmem.attacks.membership import pia_scores, sima_scores
    from diffmem.diffusion.sampler import predict_eps

    process = NoiseProcess.from_config(cfg)
    net = TimeNet()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)

    def eps_fn(x_t, t):
        return predict_eps(Denoiser(net, process), process, x_t, t)

    fracs = [0.1, 0.3]
    sima, pia = (f(eps_fn, process, images, fracs, batch_size=2) for f in (sima_scores,
                                                                          pia_scores))
    m_all, s_all = process.coefficients64()
    if process.kind == "subvp":  # the coefficients are the sub-VP marginal's
        tau = (torch.arange(process.T, dtype=torch.float64) + 1) / process.T
        ib = 0.1 * tau + 0.5 * (20.0 - 0.1) * tau ** 2
        torch.testing.assert_close(s_all, -torch.expm1(-ib))
    x0 = to_tensor(images).double()

    def eps_hat(x, t):  # the formula, from the network's raw output
        time = (process.T - 1) * (t + 1) / process.T if process.kind == "subvp" else t
        out = torch.tanh(0.7 * x + time / 50.0)
        if process.prediction_type == "v_prediction":
            return s_all[t] * x + m_all[t] * out
        return out

    for j, f in enumerate(fracs):
        t = int(round(f * (process.T - 1)))
        want_sima = -(eps_hat(x0, t).abs() ** 4).flatten(1).sum(1)
        eps0 = eps_hat(x0, 0)
        x_t = m_all[t] * x0 + s_all[t] * eps0
        want_pia = -((eps_hat(x_t, t) - eps0).abs() ** 4).flatten(1).sum(1)
        np.testing.assert_allclose(sima[:, j], want_sima.numpy(), rtol=1e-4)
        np.testing.assert_allclose(pia[:, j], want_pia.numpy(), rtol=1e-4)


@pytest.mark.parametrize("knows_unseen", [False, True])
def test_every_attack_finds_a_memorizer_and_not_a_generaliser(sets, knows_unseen):
    """The exact denoiser of 32 training images (a model that memorized them): every attack's
    AUC > 0.9; the exact denoiser of the whole population: about 0.5."""
    from diffmem.attacks.membership import attack_scores
    from diffmem.metrics.stats import auc

    members, unseen = sets
    process = NoiseProcess(num_train_timesteps=100, beta_end=0.2)
    eps_fn = oracle_eps(process, np.concatenate([members, unseen]) if knows_unseen else members)
    cfg = {"t_grid": [0.05, 0.1], "draws": 2, "batch_size": 64}
    pos, neg = attack_scores(eps_fn, process, members, cfg), attack_scores(eps_fn, process,
                                                                           unseen, cfg)
    for name in ("loss", "sima", "pia"):
        a = auc(pos[name][:, 1], neg[name][:, 1])
        assert (0.3 < a < 0.7) if knows_unseen else a > 0.9, (name, a)


def test_the_attack_is_chosen_on_one_half_and_scored_on_the_other():
    from diffmem.attacks.membership import select_and_score

    rng = np.random.default_rng(0)
    n_m, n_n = 40, 60
    groups = np.arange(n_m) // 2  # pairs of twins stay on one side
    strong = np.r_[rng.normal(2, 1, n_m), rng.normal(0, 1, n_n)][:, None].repeat(2, 1)
    weak = np.r_[rng.normal(0.3, 1, n_m), rng.normal(0, 1, n_n)][:, None].repeat(2, 1)
    scores = {"loss": weak, "pia": strong, "sima": strong.copy()}
    member = {k: v[:n_m] for k, v in scores.items()}
    non = {k: v[n_m:] for k, v in scores.items()}
    halves = (np.arange(30), np.arange(30, 60))
    cfg = {"t_grid": [0.1, 0.2], "draws": 4, "seed": 1}
    res = select_and_score(member, non, groups, halves, cfg)
    # SimA and PIA tie: SimA needs one query per image, PIA two; the smaller t wins
    assert res["chosen"] == "sima" and res["attacks"]["sima"]["t_over_T"] == 0.1
    sel, sco = res["member_rows"]["selection"], res["member_rows"]["scoring"]
    assert not set(sel) & set(sco) and not set(groups[sel]) & set(groups[sco])
    assert res["halves"]["scoring"] == {"members": len(sco), "nonmembers": 30}
    assert res["attacks"]["sima"]["n"] == len(sco) and "tpr_0.1%" not in res["attacks"]["sima"]
    # too few images to split: no selection (the caller falls back to the loss attack)
    few = {k: v[:12] for k, v in member.items()}
    assert select_and_score(few, non, groups[:12], halves, cfg) is None


def test_without_unseen_images_membership_is_reported_not_tested(tmp_path, sets):
    """A model entry without held-out images (so without unused ones either): the members'
    losses are reported, no attack is run, and the verdict row and the report say why. (The
    shared end-to-end run checks the same for a generated set without held-out images.)"""
    from diffmem.diffusion.unet import build_unet, save_model
    from diffmem.io import save_npz
    from diffmem.stages.membership import membership_stage
    from diffmem.stages.report import membership_section
    from diffmem.stages.verdict import _row

    torch.manual_seed(0)
    model = build_unet({"block_out_channels": [16, 32], "layers_per_block": 1,
                        "norm_num_groups": 8}, 28, 1)
    save_model(model, tmp_path / "m.safetensors", tmp_path / "m.json",
               {"diffusion": {"num_train_timesteps": 100, "beta_schedule": "linear",
                              "beta_end": 0.2}})
    train = sets[0][:12]
    save_npz(tmp_path / "train.npz", images=train, indices=np.arange(12))
    save_npz(tmp_path / "heldout.npz", images=train[:0])
    save_npz(tmp_path / "unused.npz", images=train[:0], indices=np.zeros(0, np.int64))
    s = membership_stage(weights=str(tmp_path / "m.safetensors"),
                         model_config=str(tmp_path / "m.json"),
                         train_npz=str(tmp_path / "train.npz"),
                         heldout_npz=str(tmp_path / "heldout.npz"),
                         unused_npz=str(tmp_path / "unused.npz"), duplicates_npz=None,
                         cfg={"t_grid": [0.05], "draws": 1, "seed": 5}, scoring={},
                         device="cpu", bf16=False, out_json=str(tmp_path / "membership.json"),
                         out_png=str(tmp_path / "membership.png"),
                         out_scores=str(tmp_path / "scores.npz"))
    assert s["members"] == 12 and s["nonmembers"] == 0 and s["effect"] is None
    assert s["attacks"] == {} and s["chosen"] is None and s["mean_loss_members"] > 0
    assert (tmp_path / "membership.png").stat().st_size > 0
    assert _row("model nonull", "models/nonull", None, None, s, 0.05)["answer"] == \
        "inconclusive (no null)"
    text = "\n".join(membership_section(tmp_path, tmp_path))
    assert "**Not run: no unseen images to tell training images from**" in text
