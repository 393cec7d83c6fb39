"""Fingerprint audit logic on stand-ins with known answers, and the classifier trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmem.audit import binom_cdf, binomial_p_values, boundary_search, wilson_interval
from diffmem.classifier import (
    binary_metrics,
    build_resnet,
    predict_logits,
    saf_task,
    stamp_discs,
    train_classifier,
)
from diffmem.data import load_medmnist


def test_binomial_p_values_by_hand():
    # P(X <= 0 | n=10, p=0.1) = 0.9^10
    assert binom_cdf(0, 10, 0.1) == pytest.approx(0.9**10, rel=1e-12)
    # n=5, p=1/2: P(X <= 2) = (1 + 5 + 10) / 32, P(X >= 2) = 1 - (1 + 5) / 32
    pv = binomial_p_values(2, 5, 0.5)
    assert pv["p_value_less"] == pytest.approx(16 / 32)
    assert pv["p_value_greater"] == pytest.approx(26 / 32)
    # no reproductions in 150,000 samples of a 5,000-image model: expected 30, p = (1-1/5000)^150000
    pv = binomial_p_values(0, 150_000, 1 / 5000)
    assert pv["expected"] == pytest.approx(30)
    assert pv["p_value_less"] == pytest.approx(math.exp(150_000 * math.log1p(-1 / 5000)))
    assert pv["p_value_greater"] == 1.0
    # the paper's BreastMNIST: 57 reproductions where 91.6 were expected; P(X <= 57) is tiny
    assert binomial_p_values(57, 50_000, 1 / 546)["p_value_less"] < 1e-3


def test_wilson_interval_contains_the_estimate_and_is_not_degenerate_at_zero():
    lo, hi = wilson_interval(np.array([0, 8, 16]), 16)
    assert lo[0] == 0 and 0.1 < hi[0] < 0.3
    assert lo[1] < 0.5 < hi[1]
    assert hi[2] == pytest.approx(1.0) and lo[2] > 0.7


T = 1000
TARGET = torch.zeros(1, 1, 8, 8)
TARGET[..., 2:5, 2:5] = 1.0


def stand_in(t_c: int, *, ramp: bool = False, seed: int = 0):
    """A 'model' that returns x_SAF for t < t_c and noise above; ramp: P(return) falls linearly."""
    gen = torch.Generator().manual_seed(seed)

    def noise_fn(x0, t):
        return x0 + 0.0 * t.view(-1, 1, 1, 1)  # the stand-in ignores the noised input

    def reverse_fn(x_t, t):
        if ramp:
            keep = torch.rand(len(t), generator=gen) < (1 - t.float() / t_c).clamp(min=0)
        else:
            keep = t < t_c
        noise = torch.randn(x_t.shape, generator=gen)
        return torch.where(keep.view(-1, 1, 1, 1), TARGET.expand_as(x_t), noise)

    def accept_fn(x0):
        return (x0 - TARGET).abs().flatten(1).mean(1) < 0.05

    return noise_fn, reverse_fn, accept_fn


@pytest.mark.parametrize("t_c", [1, 137, 500, 999, 1000])
def test_exhaustive_finds_the_known_boundary(t_c):
    res = boundary_search(TARGET, T, 16, *stand_in(t_c), method="exhaustive", t_step=1)
    assert res["t_star"] == t_c - 1
    assert res["rho"] == pytest.approx((t_c - 1) / T)
    assert (res["p_hat"][res["t"] < t_c] == 1).all() and (res["p_hat"][res["t"] >= t_c] == 0).all()
    # upper Darboux area of a 0/1 step: every interval touching a positive end counts
    assert res["upper_darboux_area"] == pytest.approx(min(t_c, T - 1) / T, abs=1e-9)


@pytest.mark.parametrize("t_c", [1, 137, 500, 999, 1000])
@pytest.mark.parametrize("k", [1, 8])
def test_bisection_agrees_with_exhaustive(t_c, k):
    ex = boundary_search(TARGET, T, 16, *stand_in(t_c), method="exhaustive", t_step=1)
    bi = boundary_search(TARGET, T, 16, *stand_in(t_c), method="bisection",
                         points_per_round=k, max_rounds=64)
    assert bi["t_star"] == ex["t_star"]
    assert bi["evaluations"] < 80 and bi["evaluations"] < ex["evaluations"] / 10


def test_coarse_grid_brackets_the_boundary_and_noisy_p_hat_falls():
    res = boundary_search(TARGET, T, 64, *stand_in(600, ramp=True), method="exhaustive",
                          t_step=50)
    p = res["p_hat"]
    assert p[0] > 0.9 and p[-1] == 0
    assert res["t_star"] < 600
    assert np.corrcoef(res["t"], p)[0, 1] < -0.9
    assert (res["ci_low"] <= p).all() and (p <= res["ci_high"]).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown boundary search method"):
        boundary_search(TARGET, T, 2, *stand_in(5), method="golden")


def test_stamp_discs_only_where_asked():
    x = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    apply = torch.tensor([True, False, True, False, True, False])
    out = stamp_discs(x, apply, 3.5, 0.5, torch.Generator().manual_seed(0))
    changed = (out != 0).flatten(1).any(1)
    assert changed.tolist() == apply.tolist()
    assert set(out.unique().tolist()) == {0, 128}
    assert (out != 0).flatten(1).sum(1)[0] == 37  # a radius-3.5 disc covers 37 pixels


def test_saf_classifier_beats_chance_on_held_out_images(data_root):
    torch.manual_seed(0)
    arrays = load_medmnist(data_root / "breastmnist.npz", "breastmnist", 28)
    task = saf_task(arrays["train_images"][:300], arrays["test_images"], 3.5, 0.5,
                    train_rate=0.5, val_rate=0.5, noise_std=0.05, augmix=True, device="cpu",
                    seed=0)
    net = build_resnet(18, 1)
    untrained = binary_metrics(predict_logits(net, task.val_x), task.val_y)["accuracy"]
    m = train_classifier(net, task, steps=80, batch_size=32, lr=1e-3, eval_every=20,
                         patience=10, name="C_SAF", progress=False)
    assert m["n"] == 156 and 50 < m["positives"] < 106
    assert m["accuracy"] > 0.75, m  # chance is 0.5 on this balanced held-out set
    assert m["accuracy"] > untrained + 0.15


def test_disc_strength_at_the_known_place():
    """1 for x_SAF, 0 for the clean original, ≈ α for a disc blended in at strength α, for grey
    and colour images."""
    from diffmem.audit import disc_strength
    from diffmem.data import SAF

    rng = np.random.default_rng(0)
    for shape in ((28, 28), (28, 28, 3)):
        original = rng.integers(0, 256, shape, dtype=np.uint8)
        saf = SAF(10, 12, 3.5, 0.5)
        stamped = saf.stamp(original)
        mask = saf.mask(28)
        blends = [np.round(a * stamped.astype(float) + (1 - a) * original).astype(np.uint8)
                  for a in (0.3, 0.7)]
        s = disc_strength(np.stack([stamped, original, *blends]), stamped, original, mask)
        np.testing.assert_allclose(s, [1.0, 0.0, 0.3, 0.7], atol=0.02)
