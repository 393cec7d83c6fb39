"""SIDE on hand-built data: guidance direction, seeded clustering, the time classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmem.attacks.side import (
    TimeClassifier,
    guidance_fn,
    surrogate_labels,
    train_time_classifier,
)
from diffmem.diffusion.denoiser import Denoiser
from diffmem.diffusion.process import NoiseProcess
from diffmem.diffusion.sampler import sample


def blobs(seed=0, per=30):
    """Three well-separated kinds of image: left-bright, right-bright, top-bright."""
    rng = np.random.default_rng(seed)
    out, truth = [], []
    for c in range(3):
        base = np.zeros((28, 28))
        if c == 0:
            base[:, :10] = 200
        elif c == 1:
            base[:, -10:] = 200
        else:
            base[:10, :] = 200
        for _ in range(per):
            out.append(np.clip(base + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8))
            truth.append(c)
    return np.stack(out), np.array(truth)


def test_clustering_is_deterministic_and_finds_the_groups():
    images, truth = blobs()
    a = surrogate_labels(images, 3, pca_dims=8, seed=5)
    b = surrogate_labels(images, 3, pca_dims=8, seed=5)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["sizes"].tolist() == [30, 30, 30]
    for c in range(3):  # each true group maps to exactly one cluster
        assert len(np.unique(a["labels"][truth == c])) == 1
    with pytest.raises(ValueError, match="exceeds the 90 generated images"):
        surrogate_labels(images, 100, pca_dims=8, seed=0)


class ToyEps(torch.nn.Module):
    """The exact ε of standard-normal data: x_t ~ N(0, I) at every t, so ε = sqrt(1−ᾱ_t)·x_t."""

    def __init__(self, process):
        super().__init__()
        self.acp = process.alphas_cumprod()

    def forward(self, x, t):
        a = self.acp[t].view(-1, 1, 1, 1)
        return type("Out", (), {"sample": (1 - a).sqrt() * x})()


class LinearClassifier(torch.nn.Module):
    """Two classes: logit of class 0 is +mean(x), of class 1 is −mean(x)."""

    def forward(self, x, t):
        m = x.mean(dim=(1, 2, 3)) * 50
        return torch.stack([m, -m], dim=1)


@pytest.mark.parametrize("target,sign", [(0, 1.0), (1, -1.0)])
def test_guidance_moves_samples_toward_the_class(target, sign):
    process = NoiseProcess(num_train_timesteps=100)
    model = ToyEps(process)
    y = torch.full((64,), target)
    kw = dict(shape=(1, 8, 8), sampler="ddim", steps=20, batch_size=64, seed=0, progress=False)
    plain = sample(Denoiser(model, process), process, 64, **kw).astype(float)
    guided = sample(Denoiser(model, process), process,
                    64, guidance=guidance_fn(LinearClassifier(), y),
                    guidance_scale=3.0, **kw).astype(float)
    shift = guided.mean() - plain.mean()
    assert sign * shift > 5, shift  # uint8 units; class 0 wants brighter, class 1 darker


@pytest.mark.parametrize("kind", ["ddpm", "subvp"])
def test_time_classifier_learns_separable_clusters(kind):
    images, truth = blobs(per=40)
    process = NoiseProcess(num_train_timesteps=100, kind=kind)
    cfg = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
           "steps": 60, "batch_size": 32, "learning_rate": 2e-3}
    net, metrics = train_time_classifier(images, truth, process, cfg, seed=0, device="cpu",
                                         progress=False)
    assert isinstance(net, TimeClassifier)
    low_noise = metrics["accuracy_by_t"][0]["accuracy"]
    assert metrics["chance"] == pytest.approx(1 / 3)  # three clusters
    assert low_noise > 0.8  # far above chance on held-out members at the lowest noise
