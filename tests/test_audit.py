"""Fingerprint audit logic on stand-ins with known answers, and the classifier trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmem.attacks.boundary import boundary_search
from diffmem.attacks.fingerprint.classifiers import (
    binary_metrics,
    build_resnet,
    predict_logits,
    saf_task,
    stamp_discs,
    train_classifier,
)
from diffmem.data.medmnist import load_medmnist
from diffmem.diffusion.denoiser import Denoiser
from diffmem.metrics.stats import binom_cdf, binomial_p_values, wilson_interval


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


def test_a_trained_classifier_reports_the_metrics_of_the_weights_it_keeps():
    """Early stopping keeps the best evaluation's weights (batch-norm statistics too) and
    returns that evaluation's metrics: they equal a fresh pass of the kept network."""
    from diffmem.attacks.fingerprint.classifiers import TaskData

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    calls = []

    def make_batch(n, flip_after=7):
        y = torch.rand(n, generator=gen) < 0.5
        x = torch.randn(n, 1, 8, 8, generator=gen) + y.view(n, 1, 1, 1) * 0.3
        calls.append(n)
        # the last training batches are labelled backwards, so the last weights are worse than
        # an earlier evaluation's, however the arithmetic rounds (threads change it)
        return x, (y ^ (len(calls) > flip_after)).float()

    val_x, val_y = make_batch(64, flip_after=10**6)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 1))
    m = train_classifier(net, TaskData(make_batch, val_x, val_y), steps=12, batch_size=16,
                         lr=0.3, eval_every=2, patience=100, name="toy", progress=False)
    assert m["best_step"] < 12  # trained on past its best: the last weights are not the kept
    fresh = binary_metrics(predict_logits(net, val_x), val_y)
    assert {k: m[k] for k in fresh} == fresh
    kept = next(h for h in m["history"] if h["step"] == m["best_step"])
    assert {k: kept[k] for k in fresh} == fresh and len(m["history"]) == 6


def test_disc_strength_at_the_known_place():
    """1 for x_SAF, 0 for the clean original, ≈ α for a disc blended in at strength α, for grey
    and colour images."""
    from diffmem.attacks.fingerprint.target import SAF, disc_strength

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


# ----------------------------------------------------------------------------- issue: controls
def test_detector_selection_prefers_recall_over_always_no():
    """On a 10 %-positive validation set, always "no" is 90 % accurate; a detector that finds
    most discs at some false alarms is less accurate but is the one early stopping must keep."""
    from diffmem.attacks.fingerprint.classifiers import binary_metrics, selection_key

    y = torch.zeros(200)
    y[:20] = 1
    always_no = torch.full((200,), -5.0)
    finder = torch.full((200,), -1.0)
    finder[:16] = 1.0            # 16 of 20 discs found
    finder[20:50] = 0.5          # 30 false alarms
    m_no = binary_metrics(always_no, y) | {"val_loss": 0.3}
    m_find = binary_metrics(finder, y) | {"val_loss": 0.5}
    assert m_no["accuracy"] > m_find["accuracy"] and m_no["recall"] == 0
    assert m_no["auc"] == 0.5 and m_find["auc"] > 0.8
    assert selection_key(m_find) > selection_key(m_no)


def test_t50_is_robust_to_one_late_false_accept():
    from diffmem.metrics.stats import t50, t50_interval

    ts = np.arange(0, 1000, 100)
    k = np.array([16, 16, 15, 12, 4, 0, 0, 0, 1, 0])  # one false accept at t = 800
    assert 0.3 < t50(ts, k, 16, 1000) < 0.4
    lo, hi = t50_interval(ts, k, 16, 1000, boot=200)
    assert lo <= t50(ts, k, 16, 1000) <= hi and hi < 0.5
    # all-or-nothing levels still give an interval, not a point
    step = np.array([16] * 4 + [0] * 6)
    lo, hi = t50_interval(ts, step, 16, 1000, boot=200)
    assert hi - lo > 0
    assert t50(ts, np.zeros(10), 16, 1000) == 0.0 and t50(ts, np.full(10, 16), 16, 1000) == 0.9


def test_rank_p_value_and_walk_back_rule():
    from diffmem.metrics.stats import rank_p_value, walks_back

    assert rank_p_value(0.6, [0.1, 0.2, 0.3, 0.2, 0.1]) == pytest.approx(1 / 6)
    assert rank_p_value(0.2, [0.1, 0.2, 0.3]) == pytest.approx(3 / 4)
    nineteen = list(np.linspace(0.1, 0.3, 19))
    assert walks_back(0.6, (0.5, 0.7), nineteen) == "yes"
    # above every control, but 1 in 3 by chance with two controls: no "yes"
    assert walks_back(0.6, (0.5, 0.7), [0.1, 0.3]) == "inconclusive"
    assert walks_back(0.25, (0.2, 0.3), [0.1, 0.3]) == "no"
    assert walks_back(0.25, (0.2, 0.35), [0.1, 0.3]) == "inconclusive"
    assert walks_back(0.4, (0.25, 0.5), [0.1, 0.3]) == "inconclusive"
    assert walks_back(0.9, (0.8, 1.0), []) == "inconclusive (no null)"


def test_bisection_checks_above_its_answer():
    """p̂_t that is zero on [200, 600) but positive again on [600, 800): the bisection's answer
    is flagged as a lower bound."""
    gen = torch.Generator().manual_seed(0)

    def reverse_fn(x_t, t):
        keep = (t < 200) | ((t >= 600) & (t < 800))
        return torch.where(keep.view(-1, 1, 1, 1), TARGET.expand_as(x_t),
                           torch.randn(x_t.shape, generator=gen))

    noise_fn, _, accept_fn = stand_in(1)
    res = boundary_search(TARGET, T, 8, noise_fn, reverse_fn, accept_fn, method="bisection",
                          points_per_round=1)
    assert res["t_star_is_lower_bound"] and res["t_star"] >= 600
    plain = boundary_search(TARGET, T, 8, *stand_in(300), method="bisection", points_per_round=2)
    assert not plain["t_star_is_lower_bound"] and plain["t_star"] == 299


@pytest.fixture(scope="module")
def control_setup(data_root):
    """A BreastMNIST run (N = 64): x_SAF, 19 matched controls, the references of the
    classifier-free acceptance test, as boundary_stage builds them."""
    from diffmem.attacks.fingerprint.target import SAF, select_controls, unique_target

    f = np.load(data_root / "breastmnist.npz")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(f["train_images"]), 64, replace=False))
    train = f["train_images"][idx].copy()
    heldout = np.concatenate([f["val_images"], f["test_images"]])
    others = np.delete(f["train_images"], idx, axis=0)
    pos, _ = unique_target(f["train_images"], heldout, idx, rng, 0.95)
    saf = SAF(12, 14, 3.5, 0.5)
    original = train[pos].copy()
    train[pos] = saf.stamp(original)
    ctl = select_controls(original, train, pos, heldout, others, 19, 0.95)
    stamped = np.stack([saf.stamp(heldout[h]) for h in ctl["heldout_index"]])
    refs = np.concatenate([train, heldout, original[None], stamped])
    n_tr, n_h = len(train), len(heldout)
    queries = [("target", train[pos], [pos, n_tr + n_h])]
    queries += [(f"control {j}", stamped[j], [n_tr + int(h), n_tr + n_h + 1 + j])
                for j, h in enumerate(ctl["heldout_index"])]
    return {"queries": queries, "refs": refs, "x_saf": train[pos], "ctl": ctl}


def _search_all(setup, noise_fn, reverse_fn, *, m=8, t_step=100, T=1000):
    from diffmem.attacks.boundary import nearest_accept
    from diffmem.device import as_nchw_uint8, normalise
    from diffmem.metrics.stats import t50, t50_interval, walks_back

    out = {}
    for name, image, members in setup["queries"]:
        group = np.zeros(len(setup["refs"]), bool)
        group[members] = True
        x = normalise(as_nchw_uint8(image[None], "cpu"))
        res = boundary_search(x, T, m, noise_fn, reverse_fn, nearest_accept(setup["refs"], group),
                              method="exhaustive", t_step=t_step)
        res["t50"] = t50(res["t"], res["k"], m, T)
        res["t50_ci"] = t50_interval(res["t"], res["k"], m, T, boot=100)
        out[name] = res
    controls = [v["t50"] for k, v in out.items() if k != "target"]
    return out, walks_back(out["target"]["t50"], out["target"]["t50_ci"], controls)


def test_controls_are_unique_and_matched(control_setup):
    ctl = control_setup["ctl"]
    assert len(ctl["heldout_index"]) == 19 and ctl["candidates"] > 19
    gap = np.abs(ctl["nn_similarity"] - ctl["target_nn_similarity"])
    assert np.all(np.diff(gap) >= 0) and gap.max() < 0.05  # the closest-matched candidates


def test_an_oracle_of_x_saf_walks_back_and_controls_do_not(control_setup):
    """A 'model' that returns x_SAF below t0 and noise above: ρ ≈ t0/T for the target, controls
    near 0 (the oracle returns x_SAF, not them), and the verdict says it walks back."""
    from diffmem.device import as_nchw_uint8, normalise

    x_saf = normalise(as_nchw_uint8(control_setup["x_saf"][None], "cpu"))
    gen = torch.Generator().manual_seed(0)

    def noise_fn(x0, t):
        return x0

    def reverse_fn(x_t, t):
        noise = torch.rand(x_t.shape, generator=gen) * 2 - 1
        return torch.where((t < 600).view(-1, 1, 1, 1), x_saf.expand_as(x_t), noise)

    res, verdict = _search_all(control_setup, noise_fn, reverse_fn)
    assert res["target"]["rho"] == pytest.approx(0.5, abs=0.01)  # last grid t below 600
    assert 0.5 <= res["target"]["t50"] <= 0.6
    controls = [res[k] for k in res if k != "target"]
    # controls near 0: t50 = 0 and at most a stray accept of noise whose nearest image happens
    # to be the control (that one accept is all ρ = max{t : p̂_t > 0} needs to jump: the
    # reason the verdict rests on t50)
    assert all(c["t50"] == 0 and c["k"].sum() <= 2 for c in controls)
    assert verdict == "yes"


def test_an_untrained_model_does_not_walk_back(control_setup):
    """A randomly initialised U-Net through the real sampler: whatever comes back for the target
    comes back for unseen controls too; no "walks back" verdict."""
    from diffmem.diffusion.process import NoiseProcess
    from diffmem.diffusion.sampler import reverse
    from diffmem.diffusion.unet import build_unet

    torch.manual_seed(0)
    process = NoiseProcess(num_train_timesteps=100)
    model = build_unet({"block_out_channels": [16, 32], "layers_per_block": 1,
                        "norm_num_groups": 8}, 28, 1).eval()
    gen = torch.Generator().manual_seed(1)

    def noise_fn(x0, t):
        return process.add_noise(x0, torch.randn(x0.shape, generator=gen), t)

    def reverse_fn(x_t, t):
        return reverse(Denoiser(model, process), process,
                       x_t, t.numpy(), sampler="ddpm", steps=10, generator=gen)

    res, verdict = _search_all(control_setup, noise_fn, reverse_fn, m=4, t_step=20, T=100)
    assert verdict != "yes"
    assert res["target"]["t50"] <= max(res[k]["t50_ci"][1] for k in res if k != "target")


def test_the_count_interval_widens_as_recall_falls():
    """k ~ Bin(n, r·π + f·(1−π)): the less the detector finds, the less a low count says."""
    from diffmem.metrics.stats import corrected_rate

    fpr = (0.0005, 0.0001, 0.002)
    widths, claims = [], []
    for r in [(0.95, 0.9, 0.99), (0.6, 0.4, 0.8), (0.2, 0.05, 0.4), (0.0, 0.0, 0.3)]:
        res = corrected_rate(1, 10_000, r, fpr, 1 / 546)
        widths.append(res["rate_ci"][1] - res["rate_ci"][0])
        claims.append(res["below_null"])
    assert widths == sorted(widths) and widths[0] < widths[-1]
    assert claims[0] == "supported" and claims[-1] == "refused"  # unmeasured recall: no claim
    many = corrected_rate(200, 10_000, (0.9, 0.85, 0.95), fpr, 1 / 546)
    assert many["above_null"] == "supported" and many["rate_ci"][0] > 1 / 546


def test_pixel_reproduction_needs_the_disc_and_closeness():
    from diffmem.attacks.fingerprint.target import SAF, pixel_reproduction

    rng = np.random.default_rng(0)
    original = rng.integers(60, 200, (28, 28)).astype(np.uint8)
    saf = SAF(10, 12, 3.5, 0.5)
    stamped = saf.stamp(original)
    mask = saf.mask(28)
    other = rng.integers(60, 200, (28, 28)).astype(np.uint8)
    images = np.stack([stamped, original, saf.stamp(other)])
    got = pixel_reproduction(images, stamped, original, mask, mae_bar=0.05)
    assert got.tolist() == [True, False, False]  # x_SAF; no disc; disc on another image
