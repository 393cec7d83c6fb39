"""FID: the Fréchet distance by hand, the feature pipeline, and the stated skip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffmem.data.medmnist import load_medmnist
from diffmem.io import save_npz, save_safetensors
from diffmem.metrics.fid import (
    build_inception,
    frechet_distance,
    gaussian_stats,
    inception_features,
    preprocess,
)
from diffmem.stages.quality import sample_quality_stage


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # for diagonal covariances FID = |μ1 − μ2|² + Σ_i (σ1_i − σ2_i)²
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = (1 + 0 + 4) + ((1 - 2) ** 2 + (2 - 2) ** 2 + (3 - 1) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
    # a full-covariance case against scipy's matrix square root, and a singular one (rank 2 in 5
    # dimensions) where FID(X, X) must still be 0
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) @ np.diag([1, 2, 0.5, 1])
    (m1, c1), (m2, c2) = gaussian_stats(a), gaussian_stats(b)
    ref = (m1 - m2) @ (m1 - m2) + np.trace(c1 + c2 - 2 * np.real(linalg.sqrtm(c1 @ c2)))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)
    low = rng.normal(size=(3, 2)) @ rng.normal(size=(2, 5))
    stats = gaussian_stats(low)
    assert abs(frechet_distance(*stats, *stats)) < 1e-6 * np.trace(stats[1])


@pytest.fixture(scope="module")
def sets(data_root):
    images = load_medmnist(data_root / "breastmnist.npz", "breastmnist", 28)["train_images"]
    rng = np.random.default_rng(0)
    # 12 images a set: Inception at 299 px is the slow part on a CPU, and the ranking below
    # holds by orders of magnitude (FID(a, b) ≈ 200 against ≈ 8 × 10^5 under noise)
    a, b = images[:12], images[12:24]
    noisy = np.clip(b + rng.normal(0, 60, b.shape), 0, 255).astype(np.uint8)
    return a, b, noisy


def random_inception(images):
    """A seeded random Inception (no weights can be downloaded here) whose batch-norm statistics
    are calibrated on ``images``, so its features have a sane scale."""
    torch.manual_seed(0)
    net = build_inception(None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        net.train()(preprocess(images))
    return net.eval()


@pytest.fixture(scope="module")
def inception(sets):
    return random_inception(sets[0])


def test_features_rank_a_degraded_set_farther(sets, inception):
    """With a fixed Inception, another sample of the same data is closer than the same images
    under heavy noise, and a set is at distance ~0 from itself."""
    a, b, noisy = (gaussian_stats(inception_features(x, inception, "cpu", 24)) for x in sets)
    assert abs(frechet_distance(*a, *a)) < 1e-6 * np.trace(a[1])
    assert 0 < frechet_distance(*a, *b) < 0.5 * frechet_distance(*a, *noisy)


def test_fid_stage_uses_the_weights_file_and_says_when_it_skips(sets, inception, tmp_path):
    a, b, _ = sets
    for name, arr in (("s", a[:6]), ("t", b[:6]), ("h", a[6:12])):
        save_npz(tmp_path / f"{name}.npz", images=arr)
    files = dict(samples_npz=str(tmp_path / "s.npz"), train_npz=str(tmp_path / "t.npz"),
                 heldout_npz=str(tmp_path / "h.npz"), device="cpu")
    skipped = sample_quality_stage(cfg={}, out_json=str(tmp_path / "skip.json"), **files)
    assert skipped["fid_train"] is None and "fid.inception_weights" in skipped["skipped"]
    save_safetensors(tmp_path / "inc.safetensors", inception.state_dict() | {
        "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    got = sample_quality_stage(cfg={"inception_weights": str(tmp_path / "inc.safetensors")},
                               out_json=str(tmp_path / "fid.json"), **files)
    assert got["skipped"] is None
    # the stage's FIDs are the Fréchet distances of these images' features, computed here with
    # the fixture's network (the one whose weights the stage read from the file)
    feats = {k: gaussian_stats(inception_features(x, inception, "cpu", 24))
             for k, x in (("s", a[:6]), ("t", b[:6]), ("h", a[6:12]))}
    assert got["fid_train"] == pytest.approx(frechet_distance(*feats["s"], *feats["t"]),
                                             abs=1e-3)
    assert got["fid_test"] == pytest.approx(frechet_distance(*feats["s"], *feats["h"]),
                                            abs=1e-3)
    assert got["fid_train"] != got["fid_test"]
    assert "singular" in got["note"]
    assert json.loads((tmp_path / "fid.json").read_text())["fid_test"] == got["fid_test"]
